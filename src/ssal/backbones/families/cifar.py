"""What the paper's CIFAR models share: their input, their run, the branch layouts of the wide
networks, and how the authors' Keras layers and the paper's positions become entries' data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ssal.backbones.entry import Branches

__all__ = [
    "AUTHORS_KERAS",
    "CIFAR_INPUT",
    "CIFAR_RUN",
    "WIDE_LAYOUTS",
    "keras_branches",
    "keras_layouts",
    "module_positions",
]

AUTHORS_KERAS = "authors' Keras code"
CIFAR_INPUT = (3, 32, 32)
# The paper's CIFAR runs: 80 epochs (DenseNet 100) over the training part, the test set each
# epoch: (epochs, training images, test images).
CIFAR_RUN = (80, 45000, 10000)
# The paper's branch layouts for the wide networks (WRN, SE-WRN, DenseNet).
WIDE_LAYOUTS = (
    "cbr(128,5,2) cbr(128,3) cbr cbr inception inception gap",
    "cbr(128,5) cbr(128,3) cbr cbr gap dense(768)",
    "cbr(128,3) cbr(128,3) inception inception gap",
)


def keras_layouts(layouts: Sequence[str]) -> tuple[str, ...]:
    """The same layouts made with the authors' Keras layers (``ssal.layouts.STYLES``)."""
    return tuple(f"keras: {layout}" for layout in layouts)


def keras_branches(branches: Branches) -> Branches:
    """The same branches made with the authors' Keras layers (their networks' branches)."""
    return replace(branches, layouts=keras_layouts(branches.layouts))


def module_positions(
    position: Callable[[int, int], str], paper: Sequence[tuple[int, int]]
) -> tuple[str, ...]:
    """The module names of the paper's positions ``(stage, k)`` in a backbone whose
    ``position`` names them."""
    return tuple(position(stage, k) for stage, k in paper)
