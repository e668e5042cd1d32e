"""Images to structured predictions, without any training engine.

``predict_images`` reads image files of any size and mode, turns them into the model's input
exactly as its card says (``ModelCard.preprocessing``: normalisation, resize and crop) and
returns one plain dict per image (``describe_predictions``; the format is documented
in the README, "Predictions (JSON)"). ``predict_tensors`` does the same for a batch.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssal.card import ModelCard, Preprocessing
from ssal.checkpoint import (
    EXPORT_CARD,
    EXPORT_ONNX,
    EXPORT_WEIGHTS,
    load_checkpoint,
    onnx_heads,
    read_card,
)
from ssal.data.decoding import load_pil
from ssal.data.transforms import normalize
from ssal.errors import UserError
from ssal.files import squeeze
from ssal.grouping import Grouping
from ssal.model import SSALOutput
from ssal.predict import GroupingLike, group_index, joint_predict, structured_predict

__all__ = [
    "IMAGE_SUFFIXES",
    "OnnxModel",
    "describe_predictions",
    "find_images",
    "iter_predictions",
    "load_image",
    "load_images",
    "load_model",
    "predict_images",
    "predict_tensors",
]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``paths``: files as given, folders searched recursively for files
    with an image suffix (``IMAGE_SUFFIXES``), and glob patterns (``**`` too) expanded; sorted
    within each folder or pattern. A path that names nothing is a ``FileNotFoundError``."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.exists() or not glob.has_magic(str(raw)):
            found.append(path)  # a missing plain file is reported when it is read
        else:
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {raw}")
            found += [m for m in matches if m.is_file()]
    return found


class OnnxModel:
    """An ``ssal export --format onnx`` model run by onnxruntime, called like an ``SSALModel``:
    ``model(images (N, C, H, W))`` returns ``SSALOutput`` (on the CPU).

    ``heads``: the output names, fine logits first; ``widths``: the number of columns each must
    have (classes, then each grouping's groups), checked on every call when given. A file
    onnxruntime cannot load, a model without those outputs and a run that fails or returns
    other shapes raise ``ValueError`` naming the file."""

    def __init__(
        self, path: str | Path, heads: Sequence[str], widths: Sequence[int] | None = None
    ) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UserError("ONNX models run with onnxruntime: pip install 'ssal[onnx]'") from None
        self.path, self.heads = Path(path), list(heads)
        self.widths = None if widths is None else list(widths)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # fatal only: failures become ssal's one-line errors
        self.quiet = onnxruntime.RunOptions()
        self.quiet.log_severity_level = 4
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime's own error types for a bad file
            raise UserError(f"{path}: not a loadable ONNX model ({_brief(e)})") from None
        outputs = {o.name for o in self.session.get_outputs()}
        if len(self.session.get_inputs()) != 1 or not set(self.heads) <= outputs:
            raise UserError(
                f"{path}: the ONNX model does not have one input and the outputs "
                f"{', '.join(self.heads)}"
            )
        self.num_branches = len(self.heads) - 1

    def eval(self) -> OnnxModel:
        return self

    def to(self, *args: Any, **kwargs: Any) -> OnnxModel:
        return self  # onnxruntime runs where its session was made

    def __call__(self, images: torch.Tensor) -> SSALOutput:
        feed = {self.session.get_inputs()[0].name: images.detach().cpu().float().numpy()}
        try:
            outs = self.session.run(self.heads, feed, self.quiet)
        except Exception as e:  # onnxruntime's own error types: shapes, types, allocation
            raise UserError(f"{self.path}: the ONNX model failed to run ({_brief(e)})") from None
        n = len(images)
        for i, out in enumerate(outs):
            width = None if self.widths is None else self.widths[i]
            if not (
                isinstance(out, np.ndarray)
                and out.dtype.kind == "f"
                and out.ndim == 2
                and out.shape[0] == n
                and (width is None or out.shape[1] == width)
            ):
                shape = getattr(out, "shape", type(out).__name__)
                raise UserError(
                    f"{self.path}: output {self.heads[i]} has shape {shape}, expected "
                    f"({n}, {width if width is not None else 'K'}) numbers"
                )
        tensors = [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in outs]
        return SSALOutput(tensors[0], tuple(tensors[1:]))


def _brief(e: BaseException) -> str:
    return squeeze(e)[:160] or type(e).__name__


def load_model(path: str | Path) -> tuple[Any, ModelCard]:
    """A model and its card from a checkpoint, an ``ssal export`` folder (weights as
    safetensors) or an ONNX export (a folder with ``model.onnx``, or the file itself).

    ``ssal.json`` of an ONNX export is checked as a checkpoint's card is, and its
    ``onnx_heads`` must name the fine logits and one output per grouping."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    onnx = path if path.suffix == ".onnx" else folder / EXPORT_ONNX
    is_onnx = path.suffix == ".onnx" or (
        path.is_dir() and onnx.is_file() and not (folder / EXPORT_WEIGHTS).is_file()
    )
    if not is_onnx:
        return load_checkpoint(path)
    card = read_card(folder, onnx.name)
    heads = onnx_heads(len(card.groupings))
    if card.onnx_heads != tuple(heads):
        raise UserError(
            f"{folder / EXPORT_CARD}: onnx_heads must be {heads} (one output per grouping)"
        )
    widths = [card.num_classes, *(g.num_groups for g in card.groupings)]
    return OnnxModel(onnx, heads, widths), card


def load_image(
    path: str | Path,
    in_channels: int,
    size: Sequence[int],
    preprocessing: Preprocessing | None = None,
) -> torch.Tensor:
    """Read one image file into a uint8 ``(in_channels, H, W)`` tensor, as the model was fed.

    Any mode PIL reads (grey, RGB, RGBA, palette, 16-bit, ...) becomes ``"L"`` or ``"RGB"``;
    EXIF orientation is applied; then ``preprocessing``'s resize and crop (by default a plain
    resize to ``size = (H, W)``). Raises ``FileNotFoundError`` or
    ``ValueError("<file>: cannot read image (...)")``, also for images over PIL's
    decompression-bomb limit (``ssal.data.decoding``).
    """
    from torchvision.transforms.v2 import functional as F

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if in_channels not in (1, 3):
        raise UserError(f"models with {in_channels} input channels cannot read image files")
    img = load_pil(path, in_channels)
    img = (preprocessing or Preprocessing.plain(in_channels)).resize_image(img, size)
    return F.pil_to_tensor(img)


def load_images(paths: Sequence[str | Path], card: ModelCard) -> torch.Tensor:
    """Read image files for a model (``card`` from ``load_checkpoint``): uint8 (N, C, H, W)."""
    c, h, w = card.input_size
    return torch.stack([load_image(p, c, (h, w), card.preprocessing) for p in paths])


def _name(names: Sequence[str] | None, c: int) -> str:
    return str(names[c]) if names is not None and c < len(names) else str(c)


def _grouping_name(g: GroupingLike, i: int) -> str:
    return g.name if isinstance(g, Grouping) and g.name else f"grouping {i + 1}"


def _top(
    values: torch.Tensor, indices: torch.Tensor, names: Sequence[str] | None
) -> list[dict[str, Any]]:
    return [
        {"class": int(c), "name": _name(names, int(c)), "prob": float(p)}
        for p, c in zip(values.tolist(), indices.tolist(), strict=True)
    ]


@torch.no_grad()
def describe_predictions(
    fine_logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    groupings: Sequence[GroupingLike],
    class_names: Sequence[str] | None = None,
    alpha: float = 0.3,
    top_k: int = 1,
) -> list[dict[str, Any]]:
    """Structured predictions as plain dicts (JSON-ready), one per row of ``fine_logits (N, C)``.

    Each holds ``fine`` and ``joint`` (class, name, prob and the ``top`` ``top_k`` classes),
    ``branches`` (per branch: grouping, group, member class names, prob and whether it
    ``agrees`` with the fine class's group) and ``consistent`` (every branch agrees).
    """
    if top_k < 1:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    joint = joint_predict(fine_logits, branch_logits, groupings, alpha)
    s = structured_predict(fine_logits, branch_logits, groupings, alpha, joint)
    k = min(top_k, fine_logits.shape[-1])
    fine_top = torch.softmax(fine_logits.float(), dim=-1).topk(k, dim=-1)
    joint_top = joint.topk(k, dim=-1)
    assignments = [group_index(g).cpu() for g in groupings]
    records = []
    for n in range(fine_logits.shape[0]):
        fine_c, joint_c = int(s.fine_class[n]), int(s.joint_class[n])
        branches = []
        for i, a in enumerate(assignments):
            group = int(s.branch_group[n, i])
            members = torch.nonzero(a == group).flatten().tolist()
            branches.append(
                {
                    "branch": i + 1,
                    "grouping": _grouping_name(groupings[i], i),
                    "group": group,
                    "members": [_name(class_names, c) for c in members],
                    "prob": float(s.branch_prob[n, i]),
                    "agrees": bool(s.agree[n, i]),
                }
            )
        records.append(
            {
                "fine": {
                    "class": fine_c,
                    "name": _name(class_names, fine_c),
                    "prob": float(s.fine_prob[n]),
                    "top": _top(fine_top.values[n], fine_top.indices[n], class_names),
                },
                "branches": branches,
                "consistent": bool(s.consistent[n]),
                "joint": {
                    "class": joint_c,
                    "name": _name(class_names, joint_c),
                    "prob": float(s.joint_prob[n]),
                    "alpha": float(alpha),
                    "top": _top(joint_top.values[n], joint_top.indices[n], class_names),
                },
            }
        )
    return records


@torch.no_grad()
def predict_tensors(
    model: torch.nn.Module,
    card: ModelCard,
    images: torch.Tensor,
    alpha: float | None = None,
    top_k: int = 1,
) -> list[dict[str, Any]]:
    """Structured predictions of a carded model for a batch ``(N, C, H, W)``.

    ``uint8`` images are normalised with the card's mean and std first; floating images are
    taken as already normalised. ``alpha`` defaults to the card's.
    """
    if images.ndim != 4:
        raise UserError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}")
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    images = images.to(device)
    if not images.is_floating_point():
        prep = card.preprocessing
        images = normalize(images, list(prep.mean), list(prep.std))
    out = model(images)
    return describe_predictions(
        out.logits.cpu(),
        [b.cpu() for b in out.branch_logits],
        card.groupings,
        card.class_names,
        card.alpha if alpha is None else float(alpha),
        top_k,
    )


def iter_predictions(
    model: torch.nn.Module,
    card: ModelCard,
    paths: Sequence[str | Path],
    alpha: float | None = None,
    top_k: int = 1,
    batch_size: int = 64,
    skip: Callable[[Path, str], None] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """``predict_images`` batch by batch (one list of records per ``batch_size`` files).

    An unreadable file raises ``ValueError``, or, with ``skip``, is reported to
    ``skip(path, reason)`` and left out.
    """
    c, h, w = card.input_size
    for start in range(0, len(paths), batch_size):
        files, images = [], []
        for p in paths[start : start + batch_size]:
            try:
                images.append(load_image(p, c, (h, w), card.preprocessing))
            except (ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
                if skip is None:
                    raise
                skip(Path(p), str(e))
                continue
            files.append(p)
        if files:
            batch = predict_tensors(model, card, torch.stack(images), alpha, top_k)
            yield [{"file": str(p), **r} for p, r in zip(files, batch, strict=True)]


def predict_images(
    model: torch.nn.Module,
    card: ModelCard,
    paths: Sequence[str | Path],
    alpha: float | None = None,
    top_k: int = 1,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Structured predictions for image files (``describe_predictions`` plus ``"file"``).

    Files are read and converted as the model was trained (``load_image``), ``batch_size`` at
    a time; an unreadable file raises ``ValueError`` naming it.
    """
    return [
        r for batch in iter_predictions(model, card, paths, alpha, top_k, batch_size) for r in batch
    ]
