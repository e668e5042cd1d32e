"""Joint prediction (+JP) and structured predictions: a fine class and one group per branch.

+JP: ``p(c) ∝ softmax(fine)[c] * prod_i softmax(branch_i)[g_i[c]] ** alpha``, computed in log
space with one gather per branch (no loops over classes or samples).

For trained checkpoints, ``predict_images`` reads image files of any size and mode, converts
them as the model was trained (``load_image``) and returns one plain dict per image
(``describe_predictions``; the format is documented in the README, "Predictions (JSON)").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ssal.grouping import Grouping

__all__ = [
    "StructuredPrediction",
    "branch_log_probs",
    "describe_predictions",
    "joint_log_probs",
    "joint_predict",
    "load_image",
    "load_images",
    "predict_images",
    "predict_tensors",
    "structured_predict",
]

GroupingLike = Grouping | np.ndarray | torch.Tensor | Sequence[int]


def _index(g: GroupingLike, device: torch.device) -> torch.Tensor:
    a = g.assignment if isinstance(g, Grouping) else g
    return torch.as_tensor(
        np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=torch.long, device=device
    )


def _alphas(alpha: float | Sequence[float], n: int) -> list[float]:
    alphas = [float(alpha)] * n if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != n:
        raise ValueError(f"{len(alphas)} alphas for {n} branches")
    return alphas


def joint_log_probs(
    fine_logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    groupings: Sequence[GroupingLike],
    alpha: float | Sequence[float] = 0.3,
) -> torch.Tensor:
    """Log of the joint prediction ``(N, C)``, normalised over classes (float32)."""
    if len(branch_logits) != len(groupings):
        raise ValueError(f"{len(branch_logits)} branch outputs for {len(groupings)} groupings")
    out = torch.log_softmax(fine_logits.float(), dim=-1)
    for a, b, g in zip(_alphas(alpha, len(groupings)), branch_logits, groupings, strict=True):
        if a:
            out = out + a * branch_log_probs(b, g, out.shape[-1])
    return torch.log_softmax(out, dim=-1)


def branch_log_probs(
    branch_logits: torch.Tensor, grouping: GroupingLike, num_classes: int
) -> torch.Tensor:
    """``log softmax(branch)[g[c]]`` for every class c: ``(N, G)`` -> ``(N, C)`` (one gather)."""
    idx = _index(grouping, branch_logits.device)
    if idx.numel() != num_classes:
        raise ValueError(f"grouping covers {idx.numel()} classes, logits {num_classes}")
    return torch.log_softmax(branch_logits.float(), dim=-1).index_select(-1, idx)


def joint_predict(
    fine_logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    groupings: Sequence[GroupingLike],
    alpha: float | Sequence[float] = 0.3,
) -> torch.Tensor:
    """Joint (+JP) class probabilities ``(N, C)``; rows sum to 1; ``alpha=0`` is softmax(fine)."""
    return joint_log_probs(fine_logits, branch_logits, groupings, alpha).exp()


class StructuredPrediction(NamedTuple):
    """Per image: the fine head's answer, each branch's group, agreement and the +JP answer.

    Shapes: ``(N,)`` for fine/joint fields and ``consistent``; ``(N, B)`` for branch fields.
    """

    fine_class: torch.Tensor
    fine_prob: torch.Tensor
    branch_group: torch.Tensor
    branch_prob: torch.Tensor
    agree: torch.Tensor
    consistent: torch.Tensor
    joint_class: torch.Tensor
    joint_prob: torch.Tensor


@torch.no_grad()
def structured_predict(
    fine_logits: torch.Tensor,
    branch_logits: Sequence[torch.Tensor],
    groupings: Sequence[GroupingLike],
    alpha: float | Sequence[float] = 0.3,
) -> StructuredPrediction:
    """Fine class, each branch's group and whether it agrees with the fine class's group.

    ``consistent`` is true where every branch agrees: the paper keeps those predictions and
    sets the others aside as doubtful.
    """
    fine_p = torch.softmax(fine_logits.float(), dim=-1)
    fine_prob, fine_class = fine_p.max(dim=-1)
    n = fine_logits.shape[0]
    groups, probs, agree = [], [], []
    for b, g in zip(branch_logits, groupings, strict=True):
        p, k = torch.softmax(b.float(), dim=-1).max(dim=-1)
        groups.append(k)
        probs.append(p)
        agree.append(_index(g, k.device)[fine_class] == k)
    stack = lambda xs, dt: torch.stack(xs, 1) if xs else torch.zeros(n, 0, dtype=dt)  # noqa: E731
    agree_t = stack(agree, torch.bool)
    joint = joint_predict(fine_logits, branch_logits, groupings, alpha)
    joint_prob, joint_class = joint.max(dim=-1)
    return StructuredPrediction(
        fine_class=fine_class,
        fine_prob=fine_prob,
        branch_group=stack(groups, torch.long),
        branch_prob=stack(probs, torch.float32),
        agree=agree_t,
        consistent=agree_t.all(dim=1),
        joint_class=joint_class,
        joint_prob=joint_prob,
    )


# ------------------------------------------------------------------------ image files
IMAGE_FOLDER_DATAMODULE = "ssal.data.ImageFolderDataModule"
CROP_FRACTION = 0.875  # image-folder evaluation: resize the short side to S / 0.875, crop S


def _crops(info: dict[str, Any]) -> bool:
    """Whether the checkpoint's data were image folders (resize + centre crop) or small arrays."""
    data = info.get("data") or {}
    return data.get("class_path") == IMAGE_FOLDER_DATAMODULE


def load_image(
    path: str | Path, in_channels: int, size: Sequence[int], crop: bool = False
) -> torch.Tensor:
    """Read one image file into a uint8 ``(in_channels, H, W)`` tensor, as in training.

    Any mode PIL reads (grey, RGB, RGBA, palette, ...) becomes ``"L"`` (1 channel) or
    ``"RGB"`` (3); 16-bit grey is scaled to 8 bits; EXIF orientation is applied.
    ``crop=False`` (CIFAR, Fashion-MNIST) resizes to ``size = (H, W)``; ``crop=True`` (image
    folders) resizes the short side to ``H / 0.875`` and takes the centre ``(H, W)`` crop, as
    ``ImageFolderDataModule`` evaluates.
    Raises ``FileNotFoundError`` or ``ValueError("<file>: cannot read image (...)")``.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if in_channels not in (1, 3):
        raise ValueError(f"models with {in_channels} input channels cannot read image files")
    h, w = int(size[0]), int(size[1])
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16") or img.mode == "I":  # PIL would clip, not scale
                a = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode != "I" or a.max() > 255 else 255.0
                img = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8))
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            img = img.convert("L" if in_channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{path}: cannot read image (not a known image format)") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, ...
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: cannot read image ({reason})") from None
    if crop:
        img = F.resize(img, [int(h / CROP_FRACTION)], antialias=True)
        img = F.center_crop(img, [h, w])
    else:
        img = F.resize(img, [h, w], antialias=True)
    return F.pil_to_tensor(img)


def load_images(paths: Sequence[str | Path], info: dict[str, Any]) -> torch.Tensor:
    """Read image files for a checkpoint (``info`` from ``load_checkpoint``): uint8 (N, C, H, W)."""
    c, h, w = (int(v) for v in info["input_size"])
    crop = _crops(info)
    return torch.stack([load_image(p, c, (h, w), crop) for p in paths])


def _name(names: Sequence[str] | None, c: int) -> str:
    return str(names[c]) if names is not None and c < len(names) else str(c)


def _grouping_name(g: GroupingLike, i: int) -> str:
    return g.name if isinstance(g, Grouping) and g.name else f"grouping {i + 1}"


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
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    s = structured_predict(fine_logits, branch_logits, groupings, alpha)
    k = min(top_k, fine_logits.shape[-1])
    fine_top = torch.softmax(fine_logits.float(), dim=-1).topk(k, dim=-1)
    joint_top = joint_predict(fine_logits, branch_logits, groupings, alpha).topk(k, dim=-1)
    assignments = [_index(g, torch.device("cpu")) for g in groupings]

    def top(values: torch.Tensor, indices: torch.Tensor) -> list[dict[str, Any]]:
        return [
            {"class": int(c), "name": _name(class_names, int(c)), "prob": float(p)}
            for p, c in zip(values.tolist(), indices.tolist(), strict=True)
        ]

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
                    "top": top(fine_top.values[n], fine_top.indices[n]),
                },
                "branches": branches,
                "consistent": bool(s.consistent[n]),
                "joint": {
                    "class": joint_c,
                    "name": _name(class_names, joint_c),
                    "prob": float(s.joint_prob[n]),
                    "alpha": float(alpha),
                    "top": top(joint_top.values[n], joint_top.indices[n]),
                },
            }
        )
    return records


@torch.no_grad()
def predict_tensors(
    model: torch.nn.Module,
    info: dict[str, Any],
    images: torch.Tensor,
    alpha: float | None = None,
    top_k: int = 1,
) -> list[dict[str, Any]]:
    """Structured predictions of a checkpoint's model for a batch ``(N, C, H, W)``.

    ``uint8`` images are normalised with the checkpoint's mean and std first; floating images
    are taken as already normalised. ``alpha`` defaults to the checkpoint's.
    """
    from ssal.data import normalize

    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, C, H, W), got shape {tuple(images.shape)}")
    device = next(model.parameters()).device
    images = images.to(device)
    if not images.is_floating_point():
        norm = info.get("normalization") or {}
        c = images.shape[1]
        images = normalize(images, norm.get("mean", [0.0] * c), norm.get("std", [1.0] * c))
    out = model(images)
    return describe_predictions(
        out.logits.cpu(),
        [b.cpu() for b in out.branch_logits],
        info.get("groupings") or [],
        info.get("class_names"),
        float(info.get("alpha", 0.0) if alpha is None else alpha),
        top_k,
    )


def predict_images(
    model: torch.nn.Module,
    info: dict[str, Any],
    paths: Sequence[str | Path],
    alpha: float | None = None,
    top_k: int = 1,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Structured predictions for image files (``describe_predictions`` plus ``"file"``).

    Files are read and converted as the model was trained (``load_image``), ``batch_size`` at
    a time; an unreadable file raises ``ValueError`` naming it.
    """
    records: list[dict[str, Any]] = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        batch = predict_tensors(model, info, load_images(chunk, info), alpha, top_k)
        records.extend({"file": str(p), **r} for p, r in zip(chunk, batch, strict=True))
    return records
