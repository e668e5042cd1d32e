"""small-cnn: the demo's network for Fashion-MNIST-sized images, with the demo's recipe."""

from __future__ import annotations

from ssal.backbones.entry import Branches, ModelEntry, Network, Paper
from ssal.backbones.registry import register_model
from ssal.backbones.small import SmallCNN

__all__ = ["SMALL_CNN_RECIPE"]

# small-cnn on Fashion-MNIST (the demo; configs/fashion-mnist/small-cnn_*.yaml hold the same):
# SSALModule arguments.
SMALL_CNN_RECIPE = {
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "warmup_epochs": 1,
    "schedule_interval": "step",
    "channels_last": True,  # measured faster on two CPU cores for this network (benchmarks/)
}


@register_model("small-cnn")
def small_cnn() -> ModelEntry:
    """The demo's 6-conv CNN; its run is the demo's (3 epochs of Fashion-MNIST)."""
    return ModelEntry(
        name="small-cnn",
        network=Network(SmallCNN, (1, 28, 28)),
        branches=Branches(
            positions=("stage1", "stage2", "stage3"),
            layouts=("cbr(32,3,2) gap", "cbr(48,3,2) gap", "cbr(64,3) gap"),
            weights=(1.0, 1.0, 1.0),
            alpha=0.3,
        ),
        paper=Paper(
            ((1, -1), (2, -1), (3, -1)), groups=(2, 3, 5), classes=10, run=(3, 54000, 10000)
        ),
        description="6-conv CNN for Fashion-MNIST-sized images (the demo's network)",
        reference="ours",
        recipe=dict(SMALL_CNN_RECIPE),
    )
