"""The one checkpoint and export schema: what a trained SSAL model carries, written and read here.

A checkpoint written by ``ssal fit`` is Lightning's dict with, under ``"ssal"``, everything
evaluation and inference need as plain values (so it loads with ``torch.load(weights_only=True)``
and nothing is unpickled): the model name and its branch positions and layouts, the groupings,
alpha, class names, the preprocessing the model expects (normalisation, resize and crop, as
data) and the data settings it was trained on. ``ssal export`` writes the same description as
``ssal.json`` beside the weights as safetensors. This module knows nothing of Lightning.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ssal.backbones import create_model
from ssal.data.transforms import eval_resize
from ssal.files import read_json, write_json
from ssal.grouping import Grouping
from ssal.model import SSALModel

__all__ = [
    "CHECKPOINT_KEY",
    "EXPORT_INFO",
    "EXPORT_ONNX",
    "EXPORT_WEIGHTS",
    "check_description",
    "describe_model",
    "export_checkpoint",
    "groupings_of",
    "load_checkpoint",
    "onnx_heads",
    "preprocessing_of",
    "read_checkpoint",
    "read_export_info",
    "set_checkpoint_alpha",
]

CHECKPOINT_KEY = "ssal"
EXPORT_WEIGHTS, EXPORT_INFO, EXPORT_ONNX = "model.safetensors", "ssal.json", "model.onnx"
SCHEMA_VERSION = 3
_LEGACY_CROPPING = "ssal.data.ImageFolderDataModule"  # version 1 named only the datamodule
# version 3: the paper's model names build the authors' networks


def describe_model(
    net: SSALModel,
    model: str,
    num_classes: int,
    branch_weights: Sequence[float],
    alpha: float,
    class_names: Sequence[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    input_size: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The ``"ssal"`` section of a checkpoint (and ``ssal.json`` of an export), plain values.

    ``input_size``: ``[C, H, W]`` of the images the model was trained on (default: the
    network's own, its registry entry's); inference and ONNX exports feed images of that size.

    ``preprocessing``: ``mean``/``std`` (per channel, [0, 1] scale) and how an image becomes
    the model's input: ``resize`` (the short side, then a centre ``crop`` ``[H, W]``) or, when
    both are ``None``, a resize to the model's input size. ``data``: the datamodule's class
    path and arguments, so evaluation can rebuild the splits.
    """
    return {
        "schema": SCHEMA_VERSION,
        "model": model,
        "num_classes": int(num_classes),
        "in_channels": net.input_size[0],
        "input_size": [int(v) for v in (input_size or net.input_size)],
        "positions": list(net.positions),
        "layouts": list(net.layouts),
        "groupings": [g.to_dict() for g in net.groupings],
        "branch_weights": [float(w) for w in branch_weights],
        "alpha": float(alpha),
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": preprocessing,
        "data": data,
    }


def groupings_of(info: dict[str, Any]) -> list[Grouping]:
    """The groupings of a model description (``Grouping`` objects pass through)."""
    return [g if isinstance(g, Grouping) else Grouping.from_dict(g) for g in info["groupings"]]


def preprocessing_of(info: dict[str, Any]) -> dict[str, Any]:
    """How images become the model's input: ``mean``, ``std``, ``resize``, ``crop``.

    Checkpoints of schema 1 stored only the normalisation and the datamodule's name; for them
    image folders meant a resize to ``S / 0.875`` and a centre crop of ``S``.
    """
    c, h, w = (int(v) for v in info["input_size"])
    prep = info.get("preprocessing")
    if prep:
        return {"resize": None, "crop": None, **prep}
    norm = info.get("normalization") or {}
    crop = (info.get("data") or {}).get("class_path") == _LEGACY_CROPPING
    return {
        "mean": norm.get("mean", [0.0] * c),
        "std": norm.get("std", [1.0] * c),
        "resize": eval_resize(h) if crop else None,
        "crop": [h, w] if crop else None,
    }


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise ValueError(f"{path}: not a loadable checkpoint ({_reason(path, e)})") from None
    if not isinstance(ckpt, dict) or CHECKPOINT_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not an ssal checkpoint (no '{CHECKPOINT_KEY}' section)")
    return ckpt


def _reason(path: Path, e: BaseException) -> str:
    """Why torch could not load ``path``, in a few words (never its advice to unpickle)."""
    text = " ".join(str(e).split())
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


def read_export_info(folder: Path, weights: str = EXPORT_WEIGHTS) -> dict[str, Any]:
    """``ssal.json`` of an export folder that also holds ``weights``, as a dict (unchecked:
    ``check_description`` says whether it is usable)."""
    info_path = folder / EXPORT_INFO
    for p in (info_path, folder / weights):
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: not an ssal export (missing {p.name})")
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise ValueError(f"{info_path}: not an ssal model description")
    return info


def _read_export(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An ``ssal export`` folder: weights as safetensors (no pickle) and a JSON description."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info, weights = read_export_info(folder), folder / EXPORT_WEIGHTS
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: not a loadable safetensors file ({e})") from None
    return info, {f"net.{k}": v for k, v in state.items()}


MAX_INPUT_SIDE = 4096
"""Largest image side a model description may ask inputs to be resized or cropped to."""


def _is_int(v: Any, low: int = 1, high: int | None = None) -> bool:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
    return ok and (high is None or v <= high)


def _numbers(v: Any, n: int) -> bool:
    return (
        isinstance(v, list)
        and len(v) == n
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        and all(math.isfinite(x) for x in v)
    )


def _strings(v: Any) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v))


def _preprocessing_problem(prep: Any, channels: int) -> str | None:
    if prep is None or prep == {}:
        return None
    if not isinstance(prep, dict):
        return "preprocessing must be a mapping"
    for key in ("mean", "std"):
        if key in prep and not _numbers(prep[key], channels):
            return f"preprocessing {key} must hold {channels} numbers"
    if "std" in prep and min(prep["std"]) <= 0:
        return "preprocessing std must be positive"
    if prep.get("resize") is not None and not _is_int(prep["resize"], 1, MAX_INPUT_SIDE):
        return f"preprocessing resize must be a side of 1..{MAX_INPUT_SIDE} pixels"
    crop = prep.get("crop")
    if crop is not None and not (
        isinstance(crop, list)
        and len(crop) == 2
        and all(_is_int(c, 1, MAX_INPUT_SIDE) for c in crop)
    ):
        return f"preprocessing crop must be [H, W] of 1..{MAX_INPUT_SIDE} pixels"
    return None


def _description_problem(info: dict[str, Any]) -> str | None:
    """What makes a model description unusable, or None (types and sizes, before building)."""
    if not isinstance(info.get("model"), str) or not _is_int(info.get("num_classes")):
        return "model must be a name and num_classes a positive count"
    size, channels = info.get("input_size"), info.get("in_channels")
    if not (isinstance(size, list) and len(size) == 3 and _is_int(channels, 1, 4)):
        return "input_size must be [C, H, W] with in_channels C of 1..4"
    if size[0] != channels or not all(_is_int(v, 1, MAX_INPUT_SIDE) for v in size[1:]):
        return f"input_size must be [{channels}, H, W] with sides of 1..{MAX_INPUT_SIDE} pixels"
    if not (_strings(info.get("positions")) and _strings(info.get("layouts"))):
        return "positions and layouts must be lists of names"
    groupings = info.get("groupings")
    if not isinstance(groupings, list) or not all(
        isinstance(g, Grouping) or (isinstance(g, dict) and "assignment" in g) for g in groupings
    ):
        return "groupings must be a list of groupings"
    alpha = info.get("alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        return "alpha must be a number"
    names = info.get("class_names")
    if not _strings(names) or (names is not None and len(names) != info["num_classes"]):
        return f"class_names must list the {info['num_classes']} classes' names"
    if info.get("data") is not None and not isinstance(info["data"], dict):
        return "data must be a mapping"
    norm = info.get("normalization")
    if norm is not None and _preprocessing_problem(norm, channels):
        return "normalization must hold mean and std per channel"
    return _preprocessing_problem(info.get("preprocessing"), channels)


def _square_side(size: Sequence[int]) -> int | None:
    """The side of ``[C, H, W]`` where H == W (what a backbone built for one size takes)."""
    return int(size[-1]) if int(size[-2]) == int(size[-1]) else None


def _build(info: dict[str, Any], groupings: list[Grouping]) -> SSALModel:
    model = create_model(
        info["model"],
        info["num_classes"],
        groupings or None,
        in_channels=info["in_channels"],
        positions=info["positions"] or None,
        layouts=info["layouts"] or None,
        image_size=_square_side(info["input_size"]),
    )
    model.input_size = tuple(int(v) for v in info["input_size"])  # the size it trained at
    return model


def check_description(path: str | Path, info: Any) -> list[Grouping]:
    """The groupings of a model description read from ``path``, after checking its values'
    types and sizes (nothing is built); ``ValueError`` naming ``path`` and the problem."""
    if not isinstance(info, dict):
        raise ValueError(f"{path}: the model description is not a mapping")
    problem = _description_problem(info)
    if problem:
        raise ValueError(f"{path}: the model description is unusable ({problem})")
    try:
        groupings = groupings_of(info)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: the model description lacks or garbles {e}") from None
    except ValueError as e:  # a grouping's assignment
        raise ValueError(f"{path}: {e}") from None
    for g in groupings:
        if g.num_classes != info["num_classes"]:
            raise ValueError(
                f"{path}: grouping {g.name!r} covers {g.num_classes} classes, the model "
                f"{info['num_classes']}"
            )
    return groupings


def _model_of(
    path: Path, info: dict[str, Any], state_dict: Any
) -> tuple[SSALModel, list[Grouping]]:
    """Build the described model and load its weights, after checking on the ``meta`` device
    (nothing allocated) that every weight is a tensor of the shape the model expects."""
    groupings = check_description(path, info)
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise ValueError(f"{path}: the weights are not a mapping of names to tensors")
    state = {k[4:]: v for k, v in state_dict.items() if k.startswith("net.")}
    try:
        with torch.device("meta"):
            skeleton = _build(info, groupings)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"{path}: the model description lacks or garbles {e}") from None
    except ValueError as e:  # groupings, positions or layouts that do not fit the model
        raise ValueError(f"{path}: {e}") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if given != expected or len(state) != len(given):
        wrong = sorted(
            set(expected) ^ set(state) | {k for k in given if given[k] != expected.get(k)}
        )
        raise ValueError(
            f"{path}: weights do not fit {info['model']} (missing, unexpected or misshapen: "
            f"{', '.join(wrong[:3]) or 'non-tensor values'})"
        )
    for i, g in enumerate(groupings):  # the weights repeat each grouping as a buffer
        index = state[f"group_index_{i}"]
        if not torch.equal(index.double(), torch.as_tensor(g.assignment).double()):
            raise ValueError(
                f"{path}: the weights' group_index_{i} disagrees with grouping {g.name!r} of "
                "the model description"
            )
    model = _build(info, groupings)
    model.load_state_dict(state)
    return model, groupings


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[SSALModel, dict[str, Any]]:
    """Rebuild the trained ``SSALModel`` from a checkpoint or an ``ssal export`` folder.

    Returns the model (eval mode) and its description: model name, ``groupings`` (as
    ``Grouping``), alpha, class names, ``preprocessing`` and data settings, epoch and step.
    A description or weights that do not fit raise ``ValueError`` naming the file, before
    anything the size of the description's claims is allocated.
    """
    path = Path(path)
    if path.is_dir() or path.name in (EXPORT_INFO, EXPORT_WEIGHTS):
        info, state_dict = _read_export(path if path.is_dir() else path.parent)
        ckpt: dict[str, Any] = {}
    else:
        ckpt = read_checkpoint(path, map_location)
        info, state_dict = ckpt[CHECKPOINT_KEY], ckpt["state_dict"]
    model, groupings = _model_of(path, info, state_dict)
    info = dict(info)
    info["preprocessing"] = preprocessing_of(info)
    info["groupings"] = groupings
    info["epoch"] = ckpt.get("epoch", info.get("epoch"))
    info["global_step"] = ckpt.get("global_step", info.get("global_step"))
    return model.eval(), info


def set_checkpoint_alpha(path: str | Path, alpha: float, chosen_on: str) -> None:
    """Store a tuned alpha in a checkpoint (atomically), so evaluation and predict use it."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    ckpt[CHECKPOINT_KEY]["alpha"] = float(alpha)
    ckpt[CHECKPOINT_KEY]["alpha_chosen_on"] = chosen_on
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def export_checkpoint(path: str | Path, out: str | Path, format: str = "safetensors") -> Path:
    """Write a checkpoint's model for sharing: ``ssal.json`` (model, groupings, alpha, class
    names, preprocessing) beside the weights as ``model.safetensors`` (loads with
    ``load_checkpoint(out)``, nothing unpickled) or, with ``format="onnx"``, the whole model as
    ``model.onnx`` (``onnx_heads``: one named output per head, any batch size; runs with
    onnxruntime, see ``ssal.inference.load_model``). Files are readable by all.

    The checkpoint is checked as ``load_checkpoint`` checks it before anything is written, and
    the weights go through a temporary file: an export that fails leaves no file behind."""
    if format not in ("safetensors", "onnx"):
        raise ValueError(f"export format must be safetensors or onnx, got {format!r}")
    path = Path(path)
    ckpt = read_checkpoint(path)
    model, _ = _model_of(path, ckpt[CHECKPOINT_KEY], ckpt["state_dict"])
    info = dict(ckpt[CHECKPOINT_KEY])
    info.update(epoch=ckpt.get("epoch"), global_step=ckpt.get("global_step"), source=str(path))
    if format == "onnx":
        info["onnx_heads"] = onnx_heads(model.num_branches)
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the model description is not plain JSON values ({e})") from None
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
            save_file(state, str(tmp), metadata={"format": "pt", "model": str(info["model"])})
        tmp.chmod(0o644)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    write_json(out / EXPORT_INFO, info)
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
        raise ValueError(
            "ONNX export needs onnx and onnxscript: pip install 'ssal[onnx]'"
        ) from None
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
