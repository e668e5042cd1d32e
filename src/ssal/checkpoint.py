"""Checkpoints and exports: the model card and the weights, written and read here.

A checkpoint written by ``ssal fit`` is Lightning's dict with, under ``"ssal"``, the model's
card (``ssal.card.ModelCard.to_dict()``: plain values, so it loads with
``torch.load(weights_only=True)`` and nothing is unpickled). ``ssal export`` writes the same
card as ``ssal.json`` beside the weights as safetensors (or the whole model as ONNX). Every
reader checks the card (``ModelCard.from_dict``) and, on the ``meta`` device, that the weights
fit it before anything is allocated. This module knows nothing of Lightning.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from ssal.card import ModelCard
from ssal.errors import UserError
from ssal.files import read_json, squeeze, write_json
from ssal.model import SSALModel, group_index_name

__all__ = [
    "CHECKPOINT_KEY",
    "EXPORT_CARD",
    "EXPORT_ONNX",
    "EXPORT_WEIGHTS",
    "export_checkpoint",
    "load_checkpoint",
    "onnx_heads",
    "read_card",
    "read_checkpoint",
    "set_checkpoint_alpha",
]

CHECKPOINT_KEY = "ssal"
EXPORT_WEIGHTS, EXPORT_CARD, EXPORT_ONNX = "model.safetensors", "ssal.json", "model.onnx"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise UserError(f"{path}: not a loadable checkpoint ({_reason(path, e)})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an ssal checkpoint (no '{CHECKPOINT_KEY}' section)")
    return ckpt


def _reason(path: Path, e: BaseException) -> str:
    """Why torch could not load ``path``, in a few words (never its advice to unpickle)."""
    text = squeeze(e)
    refused = re.search(r"(unsupported GLOBAL \S+|Unsupported global: GLOBAL \S+)", text)
    if refused:
        name = refused.group(1).split()[-1]
        return f"refused: it would unpickle {name}, which can run code"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        return "not a PyTorch checkpoint file"
    if "central directory" in text or "zip archive" in text or isinstance(e, EOFError):
        return "truncated or corrupt"
    if "Weights only load failed" in text:
        return "it holds something other than tensors and plain values; refused"
    return "truncated or corrupt"


def _is_export(path: Path) -> bool:
    return path.is_dir() or path.name in (EXPORT_CARD, EXPORT_WEIGHTS, EXPORT_ONNX)


def _export_card(folder: Path, weights: str) -> ModelCard:
    """The checked card of an export folder that also holds ``weights``."""
    card_path = folder / EXPORT_CARD
    for p in (card_path, folder / weights):
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: not an ssal export (missing {p.name})")
    return ModelCard.from_dict(read_json(card_path), card_path)


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _checkpoint_card(path: Path, ckpt: dict[str, Any]) -> ModelCard:
    """The checked card of a loaded checkpoint, with its file, epoch and step."""
    card = ModelCard.from_dict(ckpt[CHECKPOINT_KEY], path)
    return dataclasses.replace(
        card,
        checkpoint=str(path),
        epoch=_count(ckpt.get("epoch")),
        global_step=_count(ckpt.get("global_step")),
    )


def read_card(path: str | Path, weights: str | None = None) -> ModelCard:
    """The checked card of a checkpoint or an ``ssal export`` folder, without building the
    model. An export's ``ssal.json`` must sit beside ``weights`` (a file name; default
    ``model.safetensors``, or ``model.onnx`` where only that is there)."""
    path = Path(path)
    if weights is None and not _is_export(path):
        return _checkpoint_card(path, read_checkpoint(path))
    folder = path if path.is_dir() else path.parent
    if weights is None:
        onnx_only = (folder / EXPORT_ONNX).is_file() and not (folder / EXPORT_WEIGHTS).is_file()
        weights = EXPORT_ONNX if onnx_only else EXPORT_WEIGHTS
    return _export_card(folder, weights)


def _read_export(folder: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """An ``ssal export`` folder: its card and weights as safetensors (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if (folder / EXPORT_ONNX).is_file() and not (folder / EXPORT_WEIGHTS).is_file():
        raise UserError(
            f"{folder}: an ONNX export, which only `ssal predict` runs; evaluate, report and "
            "group need the checkpoint, or a weights export (ssal export without --format onnx)"
        )
    card, weights = _export_card(folder, EXPORT_WEIGHTS), folder / EXPORT_WEIGHTS
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights}: not a loadable safetensors file ({e})") from None
    return card, {f"net.{k}": v for k, v in state.items()}


def _model_of(path: Path, card: ModelCard, state_dict: Any) -> SSALModel:
    """Build the carded model and load its weights, after checking on the ``meta`` device
    (nothing allocated) that every weight is a tensor of the shape the model expects."""
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise UserError(f"{path}: the weights are not a mapping of names to tensors")
    state = {k[4:]: v for k, v in state_dict.items() if k.startswith("net.")}
    try:
        with torch.device("meta"):
            skeleton = card.build()
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"{path}: the model card does not build ({squeeze(e)})") from None
    except ValueError as e:  # groupings, positions or layouts that do not fit the model
        raise UserError(f"{path}: {squeeze(e)}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if given != expected or len(state) != len(given):
        wrong = sorted(
            set(expected) ^ set(state) | {k for k in given if given[k] != expected.get(k)}
        )
        raise UserError(
            f"{path}: weights do not fit {card.model} (missing, unexpected or misshapen: "
            f"{', '.join(wrong[:3]) or 'non-tensor values'})"
        )
    for i, g in enumerate(card.groupings):  # the weights repeat each grouping as a buffer
        name = group_index_name(i)
        if not torch.equal(state[name].double(), torch.as_tensor(g.assignment).double()):
            raise UserError(
                f"{path}: the weights' {name} disagrees with grouping {g.name!r} of the model card"
            )
    model = card.build()
    model.load_state_dict(state)
    return model


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SSALModel, ModelCard]:
    """Rebuild the trained ``SSALModel`` (eval mode) and its card from a checkpoint or an
    ``ssal export`` folder. A card or weights that do not fit raise ``ValueError`` naming the
    file, before anything the size of the card's claims is allocated."""
    path = Path(path)
    if _is_export(path):
        card, state_dict = _read_export(path if path.is_dir() else path.parent)
    else:
        ckpt = read_checkpoint(path, map_location)
        card, state_dict = _checkpoint_card(path, ckpt), ckpt["state_dict"]
    return _model_of(path, card, state_dict).eval(), card


def _save_atomically(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def set_checkpoint_alpha(path: str | Path, alpha: float, chosen_on: str) -> None:
    """Store a tuned alpha, and where it was chosen, in a checkpoint's card (atomically), so
    evaluation and predict use it."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    card = ModelCard.from_dict(ckpt[CHECKPOINT_KEY], path)
    tuned = dataclasses.replace(card, alpha=float(alpha), alpha_chosen_on=chosen_on)
    ckpt[CHECKPOINT_KEY] = tuned.to_dict()
    _save_atomically(ckpt, path)


def export_checkpoint(path: str | Path, out: str | Path, format: str = "safetensors") -> Path:
    """Write a checkpoint's model for sharing: its card as ``ssal.json`` beside the weights as
    ``model.safetensors`` (loads with ``load_checkpoint(out)``, nothing unpickled) or, with
    ``format="onnx"``, the whole model as ``model.onnx`` (``onnx_heads``: one named output per
    head, any batch size; runs with onnxruntime, see ``ssal.inference.load_model``). Files are
    readable by all.

    The checkpoint is checked as ``load_checkpoint`` checks it before anything is written, and
    the weights go through a temporary file: an export that fails leaves no file behind."""
    if format not in ("safetensors", "onnx"):
        raise UserError(f"export format must be safetensors or onnx, got {format!r}")
    path = Path(path)
    ckpt = read_checkpoint(path)
    card = _checkpoint_card(path, ckpt)
    model = _model_of(path, card, ckpt["state_dict"])
    if format == "onnx":
        card = dataclasses.replace(card, onnx_heads=tuple(onnx_heads(model.num_branches)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = EXPORT_ONNX if format == "onnx" else EXPORT_WEIGHTS
    target, tmp = out / name, out / f".{name}.tmp"
    try:
        if format == "onnx":
            _export_onnx(model, tmp)
        else:
            from safetensors.torch import save_file

            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp), metadata={"format": "pt", "model": card.model})
        tmp.chmod(0o644)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    write_json(out / EXPORT_CARD, card.to_dict())
    return out


def onnx_heads(num_branches: int) -> list[str]:
    """Output names of an ONNX export: the fine logits, then each branch's."""
    return ["logits", *(f"branch{i + 1}" for i in range(num_branches))]


class _Heads(torch.nn.Module):
    """An SSAL model whose forward returns a tuple of tensors (what ONNX exports)."""

    def __init__(self, model: SSALModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return (out.logits, *out.branch_logits)


def _export_onnx(model: SSALModel, target: Path) -> None:
    """``torch.onnx.export`` (torch.export based) with a dynamic batch dimension."""
    try:
        import onnxscript  # noqa: F401 - the exporter needs it
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxscript: pip install 'ssal[onnx]'") from None
    heads = _Heads(model.eval()).eval()
    example = torch.zeros(2, *model.input_size)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        heads,
        (example,),
        str(target),
        input_names=["images"],
        output_names=onnx_heads(model.num_branches),
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,  # one file (models under 2 GB)
        verbose=False,
    )
