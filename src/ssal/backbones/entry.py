"""What a registry entry says about a named model, as plain data: how its backbone is built
(``Network``), where its SSAL branches go and how they weigh (``Branches``), and the setting
and numbers of the paper or code it comes from (``Paper``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

__all__ = ["Branches", "ModelEntry", "Network", "Paper"]


@dataclass(frozen=True)
class Network:
    """The backbone: its builder (called with ``num_classes``, ``in_channels`` and keyword
    arguments) and the input it is made for."""

    build: Callable[..., nn.Module]
    input_size: tuple[int, int, int]
    # builder arguments that apply only when the model has SSAL branches
    ssal_build: Mapping[str, object] = field(default_factory=dict)
    # builds the backbone with its published weights (``num_classes``, ``in_channels``)
    pretrained_build: Callable[..., nn.Module] | None = None
    # the backbone is built for one image size: its builders take ``image_size``
    sized: bool = False


@dataclass(frozen=True)
class Branches:
    """The SSAL branches: module names they read, their layouts (one per position, or one for
    all), their loss weights and the joint prediction's alpha."""

    positions: tuple[str, ...]
    layouts: tuple[str, ...]
    weights: tuple[float, ...]
    alpha: float


@dataclass(frozen=True)
class Paper:
    """The setting a model is described at (the paper's, for the paper's models) and the
    published numbers: the paper's positions ``(stage, k)``, groups per branch, classes, its
    table's parameters in millions and the authors' code's exact counts (baseline, with
    branches), and its run, for projections: (epochs, training images, test images)."""

    positions: tuple[tuple[int, int], ...] = ()
    groups: tuple[int, ...] = (20, 33, 50)
    classes: int = 100
    params: tuple[float, float] | None = None
    authors_params: tuple[int, int] | None = None
    authors_count: Literal["keras", "torch"] = "keras"
    run: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A named model: its backbone, its SSAL branches, the paper's facts about it, whose
    definition it is (``reference``: the authors' code, a paper, or ours) and the training
    settings a workflow uses for it (``recipe``: the demo's, for small-cnn)."""

    name: str
    network: Network
    branches: Branches
    paper: Paper = Paper()
    description: str = ""
    reference: str = ""
    recipe: Mapping[str, object] = field(default_factory=dict)

    def group_sizes(self, num_classes: int) -> tuple[int, ...]:
        """Groups per branch for ``num_classes`` classes: the paper's sizes where they fit,
        else about C/5, C/3 and C/2 (the paper's proportions for CIFAR-100 and ImageNet)."""
        if max(self.paper.groups) < num_classes:
            return tuple(self.paper.groups)
        return tuple(max(2, min(num_classes - 1, round(num_classes / d))) for d in (5, 3, 2))

    def branch_weights(self, num_branches: int, given: Sequence[float] | None = None) -> list:
        """Loss weights of the ``num_branches`` deepest branches (``given`` overrides)."""
        weights = list(given or self.branches.weights)
        return weights[len(weights) - num_branches :] if num_branches else []
