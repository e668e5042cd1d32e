"""Evaluate a trained model as the paper does: one copy of each workflow, no training engine.

- ``evaluate_model``: +TR, +JP, per-branch and set-aside figures over a loader, streaming
  (counts, never logits, so ImageNet-sized sets fit);
- ``choose_alpha``: alpha from the held-out split (never the test set);
- ``evaluate_split_pair``: alpha on the held-out split, then the test split at that alpha;
- ``heldout_confusion`` and ``groupings_from_model``: the paper's groupings from a model's
  confusion on the held-out split;
- ``evaluate_run`` and ``evaluate_runs``: run folders' checkpoints evaluated as the paper
  does, with the per-image answers the report's analysis needs (``RunResult``); the report
  only renders them.

``data`` arguments follow the datamodule protocol (``heldout_dataloader()``,
``test_dataloader()``, ``prepare_batch(images, train)``, ``num_classes``); a run's data comes
from ``data_for(card)`` (the caller rebuilds or reuses datamodules: this layer never imports
the training engine). Loops report progress through ``track(iterable, description, total)``
when one is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ssal.card import ModelCard
from ssal.checkpoint import load_checkpoint
from ssal.grouping import Grouping, groupings_from_confusion
from ssal.model import SSALModel, SSALOutput
from ssal.predict import structured_predict
from ssal.runs import RunSource, find_runs, read_metrics_csv
from ssal.scores import ALPHA_GRID, batch_counts, count_shapes, figures

__all__ = [
    "AlphaEvaluation",
    "DataFor",
    "EvalData",
    "OnBatch",
    "RunResult",
    "Track",
    "choose_alpha",
    "evaluate_model",
    "evaluate_run",
    "evaluate_runs",
    "evaluate_split_pair",
    "groupings_from_model",
    "heldout_confusion",
]

Track = Callable[[Iterable, str, int | None], Iterable]
"""Wraps a loader to show progress: ``track(loader, description, total)``."""
OnBatch = Callable[[SSALOutput, torch.Tensor], None]
"""Sees every batch's output and labels."""

MIN_HELDOUT_FOR_ALPHA = 500  # fewer held-out images pick alpha from a curve too noisy to trust


class EvalData(Protocol):
    """What evaluation needs of a datamodule."""

    num_classes: int

    def heldout_dataloader(self) -> Iterable: ...
    def test_dataloader(self) -> Iterable: ...
    def prepare_batch(self, images: torch.Tensor, train: bool = False) -> torch.Tensor: ...


@torch.no_grad()
def evaluate_model(
    model: SSALModel,
    loader: Iterable,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    alpha: float,
    device: torch.device | str = "cpu",
    description: str = "evaluating",
    track: Track | None = None,
    on_batch: OnBatch | None = None,
) -> dict[str, Any]:
    """Fine (+TR), joint (+JP at ``alpha`` and over ``ALPHA_GRID``), branch and set-aside
    figures, and the fine head's confusion matrix, over every batch of ``loader``.

    ``prepare`` turns a raw batch of images on ``device`` into the model's input (conversion
    and normalisation as in training, without augmentation). ``on_batch(output, labels)`` sees
    every batch's output. Image batches run in channels_last (convolutions pick their
    channels_last kernels from the input); the model's weights are never converted: the
    model is moved to ``device`` and otherwise left as it came (memory format, and train or
    eval mode: it runs in eval mode).
    """
    device = torch.device(device)
    was_training = model.training
    model = model.to(device).eval()
    groups = [g.to(device) for g in model.group_indices]
    shapes = count_shapes(num_classes, len(groups), len(ALPHA_GRID), confusion=True)
    sums = {k: torch.zeros(s, dtype=torch.long, device=device) for k, s in shapes.items()}
    total = len(loader) if hasattr(loader, "__len__") else None
    batches = track(loader, description, total) if track is not None else loader
    try:
        for images, labels in batches:
            x = prepare(images.to(device, non_blocking=True))
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            out = model(x)
            for k, v in batch_counts(out.logits, out.branch_logits, labels, groups, alpha).items():
                sums[k] += v
            if on_batch is not None:
                on_batch(out, labels)
    finally:
        model.train(was_training)
    return figures(sums, alpha)


def choose_alpha(heldout: Mapping[str, Any]) -> float:
    """The alpha of the grid with the best +JP accuracy on the held-out split (the smallest
    of equals: the least weight on the branches that does as well)."""
    curve = heldout["joint_accuracy_by_alpha"]
    best = max(curve.values())
    return min(float(a) for a, v in curve.items() if v == best)


@dataclass
class AlphaEvaluation:
    """Held-out figures (``None`` without branches or with a given alpha), the alpha used on
    the test split and where it came from, the test figures, and any warning to show."""

    heldout: dict[str, Any] | None
    alpha: float
    alpha_source: str
    test: dict[str, Any]
    warnings: list[str]


def evaluate_split_pair(
    model: SSALModel,
    data: EvalData,
    default_alpha: float,
    alpha: float | None = None,
    device: torch.device | str = "cpu",
    track: Track | None = None,
    test_hook: Callable[[float], OnBatch] | None = None,
    heldout: Mapping[str, Any] | None = None,
    name: str = "",
) -> AlphaEvaluation:
    """The paper's evaluation: alpha chosen on the held-out split (SSAL models, unless
    ``alpha`` is given), then the test split at that alpha.

    ``default_alpha``: the alpha the held-out pass reports its +JP at (the model's own);
    ``heldout``: figures already computed there (saves a pass); ``test_hook(alpha)`` returns
    a per-batch hook for the test pass (per-image outputs at the chosen alpha).
    """
    prefix = f"{name}: " if name else ""
    n = data.num_classes
    warnings: list[str] = []

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return data.prepare_batch(x, False)

    held = dict(heldout) if heldout is not None else None
    if not model.num_branches:
        chosen, source = 0.0, "no branches"
    elif alpha is not None:
        chosen, source = float(alpha), "given"
    else:
        if held is None:
            held = evaluate_model(
                model,
                data.heldout_dataloader(),
                prepare,
                n,
                default_alpha,
                device,
                f"{prefix}held-out split",
                track,
            )
        chosen, source = choose_alpha(held), "held-out split"
        if held["num_samples"] < MIN_HELDOUT_FOR_ALPHA:
            warnings.append(
                f"alpha {chosen:g}{f' of run {name}' if name else ''} was chosen on only "
                f"{held['num_samples']} held-out "
                f"images; with fewer than {MIN_HELDOUT_FOR_ALPHA} the choice is noisy (hold out "
                "more, or give --alpha)"
            )
    hook = test_hook(chosen) if test_hook is not None else None
    test = evaluate_model(
        model,
        data.test_dataloader(),
        prepare,
        n,
        chosen,
        device,
        f"{prefix}test split",
        track,
        hook,
    )
    return AlphaEvaluation(held, chosen, source, test, warnings)


def heldout_confusion(
    model: SSALModel,
    loader: Iterable,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int,
    device: torch.device | str = "cpu",
    track: Track | None = None,
) -> np.ndarray:
    """The fine head's ``(C, C)`` confusion matrix (rows: true class) on ``loader``."""
    result = evaluate_model(
        model, loader, prepare, num_classes, 0.0, device, "confusion on the held-out split", track
    )
    return np.asarray(result["confusion"], dtype=np.int64)


def groupings_from_model(
    model: SSALModel,
    data: EvalData,
    sizes: Sequence[int],
    mode: str = "similar",
    size_margin: float = 1.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    track: Track | None = None,
) -> tuple[list[Grouping], np.ndarray]:
    """The paper's groupings: group the model's confusion on the held-out split (never the
    test set) into each of ``sizes`` groups. Returns the groupings and the confusion."""
    confusion = heldout_confusion(
        model,
        data.heldout_dataloader(),
        lambda x: data.prepare_batch(x, False),
        data.num_classes,
        device,
        track,
    )
    groupings = groupings_from_confusion(confusion, sizes, mode, size_margin, seed)  # type: ignore[arg-type]
    return groupings, confusion


# ------------------------------------------------------------------------------ run folders
DataFor = Callable[[ModelCard], EvalData]
"""The set-up data to evaluate a card's model on (``ssal.data.registry.datamodule_rebuilder``
rebuilds the card's own; ``lambda card: dm`` reuses one)."""

_PER_IMAGE = ("fine_class", "fine_prob", "branch_group", "joint_class")


class _PerImage:
    """Collects, batch by batch, the per-image answers the analysis needs (never logits)."""

    def __init__(self, groups: Sequence[torch.Tensor], alpha: float) -> None:
        self.groups, self.alpha = groups, alpha
        self.parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*_PER_IMAGE, "labels")}

    def __call__(self, out: SSALOutput, labels: torch.Tensor) -> None:
        groups = [g.to(labels.device) for g in self.groups]
        s = structured_predict(out.logits, out.branch_logits, groups, self.alpha)
        for key in _PER_IMAGE:
            self.parts[key].append(getattr(s, key).cpu())
        self.parts["labels"].append(labels.cpu())

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: torch.cat(v).numpy() for k, v in self.parts.items()}


@dataclass
class RunResult:
    """A run evaluated: its card, test (and held-out) figures, the alpha used on the test
    split and where it came from, per-image outputs on the test split (``fine_class``,
    ``fine_prob``, ``branch_group``, ``joint_class``, ``labels``), its training log
    (``metrics.csv``) and any warning to show."""

    source: RunSource
    card: ModelCard
    test: dict[str, Any]
    outputs: dict[str, np.ndarray]
    heldout: dict[str, Any] | None = None
    alpha: float = 0.0
    alpha_source: str = "checkpoint"
    log: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def groupings(self) -> list[Grouping]:
        return list(self.card.groupings)

    @property
    def class_names(self) -> list[str]:
        return list(self.card.names)


def evaluate_run(
    source: RunSource,
    data_for: DataFor,
    device: torch.device | str | None = None,
    alpha: float | None = None,
    heldout: Mapping[str, Any] | None = None,
    track: Track | None = None,
) -> RunResult:
    """Evaluate one run's checkpoint (held-out split first, then test split) on
    ``data_for(card)``, keeping the per-image answers of the test split.

    SSAL runs: the held-out split gives accuracy against alpha and, unless ``alpha`` is given,
    the alpha used on the test split (``heldout`` may pass figures already computed there).
    """
    model, card = load_checkpoint(source.checkpoint)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    collectors: list[_PerImage] = []

    def per_image(chosen: float) -> OnBatch:
        collectors.append(_PerImage(model.group_indices, chosen))
        return collectors[-1]

    ev = evaluate_split_pair(
        model, data_for(card), card.alpha, alpha, dev, track, per_image, heldout, source.name
    )
    log = read_metrics_csv(source.metrics_csv) if source.metrics_csv else {}
    return RunResult(
        source,
        card,
        ev.test,
        collectors[-1].arrays(),
        ev.heldout,
        ev.alpha,
        ev.alpha_source,
        log,
        ev.warnings,
    )


def evaluate_runs(
    paths: Sequence[str | Path],
    data_for: DataFor,
    device: torch.device | str | None = None,
    alpha: float | None = None,
    heldout: Mapping[str, Mapping[str, Any] | None] | None = None,
    track: Track | None = None,
) -> list[RunResult]:
    """Evaluate the runs in ``paths`` (run folders or checkpoints, ``ssal.runs.find_runs``)
    as ``evaluate_run`` does; ``heldout`` maps run names to figures already computed on the
    held-out split."""
    return [
        evaluate_run(s, data_for, device, alpha, (heldout or {}).get(s.name), track)
        for s in find_runs(paths)
    ]
