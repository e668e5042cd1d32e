"""ssal: Self-Supervised Autogenous Learning for PyTorch image classifiers.

Auxiliary branches at intermediate depths predict coarse groupings of the classes derived from
the classifier's own confusions; all heads combine at inference (joint prediction).
"""

from ssal.backbones import create_model, get_entry, list_models
from ssal.checkpoint import load_checkpoint
from ssal.grouping import (
    Grouping,
    cifar100_superclasses,
    group_classes,
    load_groupings,
    save_groupings,
)
from ssal.inference import predict_images
from ssal.layouts import build_branch, parse_layout
from ssal.loss import SSALLoss
from ssal.model import BranchSpec, SSALModel, SSALOutput
from ssal.predict import joint_predict, structured_predict

__version__ = "0.1.0"

__all__ = [
    "BranchSpec",
    "Grouping",
    "SSALLoss",
    "SSALModel",
    "SSALOutput",
    "build_branch",
    "cifar100_superclasses",
    "create_model",
    "get_entry",
    "group_classes",
    "joint_predict",
    "list_models",
    "load_checkpoint",
    "load_groupings",
    "parse_layout",
    "predict_images",
    "save_groupings",
    "structured_predict",
]
