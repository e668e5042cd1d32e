"""Image transforms: the paper's shift/flip augmentation, normalisation, and the evaluation
resize and crop rule (the only copy: data modules, shards and inference all use it).

Batched tensor transforms run on whatever device the batch is on; torch only, plus
torchvision for resizing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ssal.errors import UserError

__all__ = [
    "EVAL_CROP_FRACTION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAD_MODES",
    "SHIFT_DRAWS",
    "check_shift_options",
    "eval_resize",
    "folder_transforms",
    "normalize",
    "random_resized_crop_box",
    "resize_for_model",
    "shift_flip",
]

IMAGENET_MEAN: list[float] = [0.485, 0.456, 0.406]
IMAGENET_STD: list[float] = [0.229, 0.224, 0.225]


SHIFT_DRAWS = ("uniform", "keras")
PAD_MODES = ("reflect", "symmetric")


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-(size-1), 2*(size-1)] into [0, size) by reflection without repeating
    the edge (``dcb|abcd|cba``, numpy's ``reflect``)."""
    last = size - 1
    return last - (last - index.abs()).abs()


def _symmetric(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-size, 2*size) into [0, size) by reflection repeating the edge
    (``dcba|abcd|dcba``, numpy's ``symmetric``, Keras/scipy's ``reflect``)."""
    index = torch.where(index < 0, -index - 1, index)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def check_shift_options(shift_draw: str, pad_mode: str) -> None:
    """``ValueError`` unless ``shift_draw`` is in ``SHIFT_DRAWS`` and ``pad_mode`` in
    ``PAD_MODES``."""
    if shift_draw not in SHIFT_DRAWS or pad_mode not in PAD_MODES:
        raise UserError(
            f"shift_draw must be one of {SHIFT_DRAWS} and pad_mode one of {PAD_MODES}, got "
            f"{shift_draw!r} and {pad_mode!r}"
        )


def _draw_shifts(
    n: int, max_shift: int, draw: str, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """``n`` shifts: uniform in ``[-max_shift, max_shift]``, or as Keras draws an integer shift
    range: a magnitude uniform in ``0..max_shift-1`` with a random sign."""
    if draw == "uniform":
        return torch.randint(-max_shift, max_shift + 1, (n,), generator=generator, device=device)
    magnitude = torch.randint(0, max(1, max_shift), (n,), generator=generator, device=device)
    sign = torch.randint(0, 2, (n,), generator=generator, device=device) * 2 - 1
    return magnitude * sign


def shift_flip(
    images: torch.Tensor,
    max_shift: int = 5,
    flip: bool = True,
    generator: torch.Generator | None = None,
    shift_draw: str = "uniform",
    pad_mode: str = "reflect",
) -> torch.Tensor:
    """Randomly shift and then horizontally flip every image of a batch, independently.

    Each image (N, C, H, W) moves by a shift drawn per axis: ``shift_draw="uniform"`` draws it
    uniformly from ``[-max_shift, max_shift]``; ``"keras"`` as Keras' ``ImageDataGenerator``
    draws an integer ``width_shift_range=max_shift``: a magnitude in ``0..max_shift-1`` with a
    random sign (so 0 is twice as likely as each other shift, and ``max_shift`` never
    happens). The pixels that come in from outside are the image mirrored at its border:
    ``pad_mode="reflect"`` without repeating the edge pixel (numpy's ``reflect``),
    ``"symmetric"`` repeating it (numpy's ``symmetric``; Keras' ``fill_mode="reflect"``). Then
    a left-right flip with probability 0.5. Runs as one gather on the tensor's device; works
    for any dtype. ``generator`` may live on the CPU or on the images' device.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    if images.ndim != 4:
        raise UserError(f"shift_flip needs a batch (N, C, H, W), got shape {tuple(images.shape)}")
    if max_shift < 0:
        raise UserError(f"max_shift must be >= 0, got {max_shift}")
    check_shift_options(shift_draw, pad_mode)
    n, c, h, w = images.shape
    if max_shift >= min(h, w):
        raise UserError(
            f"max_shift={max_shift} must be smaller than the image size {h}x{w} for reflect padding"
        )
    if n == 0 or (max_shift == 0 and not flip):
        return images.clone()
    device = images.device
    rng_device = generator.device if generator is not None else device
    rows = _draw_shifts(n, max_shift, shift_draw, generator, rng_device).to(device)
    cols = _draw_shifts(n, max_shift, shift_draw, generator, rng_device).to(device)
    rows = rows[:, None] + torch.arange(h, device=device)  # (n, h) source rows
    cols = cols[:, None] + torch.arange(w, device=device)  # (n, w)
    if flip:
        flipped = torch.rand(n, generator=generator, device=rng_device).to(device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    mirror = _reflect if pad_mode == "reflect" else _symmetric
    rows, cols = mirror(rows, h), mirror(cols, w)
    source = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, source).view(n, c, h, w)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Return ``(images / 255 - mean) / std`` per channel as a float tensor.

    ``images`` is (N, C, H, W) uint8, or float on the same 0..255 scale; ``mean``/``std`` have
    C entries on the [0, 1] scale. Floating inputs keep their dtype, integers become float32.
    """
    if images.ndim != 4:
        raise UserError(f"normalize needs a batch (N, C, H, W), got shape {tuple(images.shape)}")
    dtype = images.dtype if images.is_floating_point() else torch.float32
    channels = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=dtype, device=images.device).flatten()
    std_t = torch.as_tensor(std, dtype=dtype, device=images.device).flatten()
    if len(mean_t) != channels or len(std_t) != channels:
        raise UserError(
            f"mean and std need {channels} values (one per channel), got {len(mean_t)} and "
            f"{len(std_t)}"
        )
    scale = (1.0 / (255.0 * std_t)).view(1, channels, 1, 1)
    shift = (mean_t / std_t).view(1, channels, 1, 1)
    return images.to(dtype) * scale - shift


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop (torchvision's
    ``RandomResizedCrop`` rule: area share in ``scale``, log-uniform aspect ``ratio``, 10 tries
    then a centre crop), drawn from ``generator``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    aspect = width / height
    if aspect < min(ratio):
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# --------------------------------------------------------------------------- evaluation
EVAL_CROP_FRACTION = 0.875
"""Image-folder evaluation: resize the short side to ``S / 0.875``, then take the centre S x S."""


def eval_resize(size: int) -> int:
    """The short side an image is resized to before its centre ``size`` crop is taken."""
    return int(size / EVAL_CROP_FRACTION)


def resize_for_model(
    img: Any, size: tuple[int, int], resize: int | None = None, crop: Sequence[int] | None = None
) -> Any:
    """Resize a PIL image or ``(C, H, W)`` tensor for a model of input ``size = (H, W)``: its
    short side to ``resize`` and a centre ``crop`` (default ``size``), or, without ``resize``,
    straight to ``size`` (``ssal.card.Preprocessing``)."""
    from torchvision.transforms.v2 import functional as F

    if resize:
        img = F.resize(img, [int(resize)], antialias=True)
        return F.center_crop(img, [int(s) for s in (crop or size)])
    return F.resize(img, [int(size[0]), int(size[1])], antialias=True)


def folder_transforms(
    size: int,
    train: bool,
    to_tensor: bool = True,
    crop_scale: Sequence[float] = (0.08, 1.0),
    color_jitter: Sequence[float] | None = None,
) -> Any:
    """Per-image torchvision transforms for image folders. Training: RandomResizedCrop (area
    share in ``crop_scale``), colour jitter (``color_jitter``: brightness, contrast, saturation
    and optionally hue, as torchvision's ``ColorJitter``; the authors' ImageNet runs use 0.4,
    0.4, 0.4) and a horizontal flip; otherwise the evaluation resize + centre crop; uint8
    tensors out."""
    from torchvision.transforms import v2

    if train:
        steps = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)]
        if color_jitter:
            steps.append(v2.ColorJitter(*color_jitter))
        steps.append(v2.RandomHorizontalFlip())
    else:
        steps = [v2.Resize(eval_resize(size), antialias=True), v2.CenterCrop(size)]
    if to_tensor:
        steps += [v2.ToImage(), v2.ToDtype(torch.uint8, scale=True), v2.ToPureTensor()]
    return v2.Compose(steps)
