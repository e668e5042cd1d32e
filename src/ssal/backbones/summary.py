"""Parameter counts of a named model, as PyTorch and as Keras count them, beside the paper's
and the authors' numbers (what ``ssal models`` shows)."""

from __future__ import annotations

from collections.abc import Sequence

from ssal.backbones.factory import create_model, default_groupings
from ssal.backbones.registry import get_entry
from ssal.conventions import keras_parameter_count, torch_parameter_count

__all__ = ["model_summary"]


def model_summary(
    name: str, num_classes: int | None = None, groups: Sequence[int] | None = None
) -> dict:
    """Parameter counts of ``name`` as a baseline and with SSAL branches, as PyTorch counts
    them (trainable) and as Keras does (plus batch norm's moving statistics: the paper's
    table's convention), counted on the meta device (nothing is allocated); its positions,
    layouts and the paper's and the authors' numbers. Classes and groups default to the
    paper's setting of the model."""
    import torch

    entry = get_entry(name)
    paper, branches = entry.paper, entry.branches
    classes = num_classes or paper.classes
    groups = list(groups or paper.groups)
    with torch.device("meta"):
        base = create_model(name, classes)
        full = create_model(name, classes, default_groupings(classes, groups))
    row = {
        "name": name,
        "description": entry.description,
        "reference": entry.reference,
        "num_classes": classes,
        "groups": groups,
        "input_size": list(entry.network.input_size),
        "params_baseline": torch_parameter_count(base),
        "params_ssal": torch_parameter_count(full),
        "params_branches": torch_parameter_count(full.branches),
        "params_baseline_keras": keras_parameter_count(base),
        "params_ssal_keras": keras_parameter_count(full),
        "positions": list(branches.positions),
        "paper_positions": [list(p) for p in paper.positions],
        "layouts": list(branches.layouts),
        "branch_weights": list(branches.weights),
        "alpha": branches.alpha,
    }
    if paper.params:
        row["paper_params_baseline"] = int(paper.params[0] * 1e6)
        row["paper_params_ssal"] = int(paper.params[1] * 1e6)
    if paper.authors_params:
        row["authors_params_baseline"], row["authors_params_ssal"] = paper.authors_params
        row["authors_count"] = paper.authors_count
    return row
