"""The paper's backbones and the registry of named SSAL models."""

from ssal.backbones import external  # noqa: F401 - registers timm/... and torchvision/...
from ssal.backbones.densenet import DenseNetBC
from ssal.backbones.registry import (
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    register_model,
)
from ssal.backbones.resnet import PreActResNet, resnet50_imagenet
from ssal.backbones.small import SmallCNN
from ssal.backbones.wrn import WideResNet

__all__ = [
    "DenseNetBC",
    "ModelEntry",
    "PreActResNet",
    "SmallCNN",
    "WideResNet",
    "create_model",
    "get_entry",
    "list_models",
    "register_model",
    "resnet50_imagenet",
]
