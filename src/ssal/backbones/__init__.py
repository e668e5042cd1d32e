"""The paper's backbones and the registry of named SSAL models.

``registry`` maps names to entries (``entry``: plain data), ``families`` registers them (one
module per family), ``factory`` builds a model from its entry, ``summary`` counts its
parameters."""

from ssal.backbones import families  # noqa: F401 - registers every family's entries
from ssal.backbones.densenet import DenseNetBC
from ssal.backbones.entry import Branches, ModelEntry, Network, Paper
from ssal.backbones.factory import create_model, default_groupings
from ssal.backbones.registry import (
    get_entry,
    list_families,
    list_models,
    register_family,
    register_model,
)
from ssal.backbones.resnet import PreActResNet, resnet50_imagenet
from ssal.backbones.small import SmallCNN
from ssal.backbones.summary import model_summary
from ssal.backbones.wrn import WideResNet

__all__ = [
    "Branches",
    "DenseNetBC",
    "ModelEntry",
    "Network",
    "Paper",
    "PreActResNet",
    "SmallCNN",
    "WideResNet",
    "create_model",
    "default_groupings",
    "get_entry",
    "list_families",
    "list_models",
    "model_summary",
    "register_family",
    "register_model",
    "resnet50_imagenet",
]
