"""Decoding image files: batched on the device (nvJPEG on CUDA) for JPEGs, on the CPU for
the rest; workers that only read bytes hand them over as uint8 tensors."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["collate_encoded", "decode_images", "read_file"]


def read_file(path: str) -> torch.Tensor:
    """A file's bytes as a uint8 tensor (what ``decode_jpeg`` takes), in ordinary memory:
    ``torchvision.io.read_file`` maps the file, and a mapped tensor cannot travel back from a
    DataLoader worker (the loader hangs)."""
    data = Path(path).read_bytes()
    if not data:
        raise ValueError(f"{path}: empty image file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def collate_encoded(
    samples: Sequence[tuple[torch.Tensor, int]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Encoded images stay a list (their lengths differ); labels become one tensor."""
    return [s[0] for s in samples], torch.tensor([s[1] for s in samples], dtype=torch.long)


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_images(encoded: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode image files (uint8 byte tensors on the CPU) to RGB uint8 (3, H, W) on ``device``.

    JPEGs are decoded in one batched call on ``device`` (nvJPEG on CUDA); other formats, and
    JPEGs the device decoder refuses (CMYK, progressive on some builds), on the CPU.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    rgb = ImageReadMode.RGB
    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, d in enumerate(encoded) if _is_jpeg(d)]
    if jpegs:
        try:
            for i, img in zip(
                jpegs,
                decode_jpeg([encoded[i] for i in jpegs], mode=rgb, device=device),
                strict=True,
            ):
                out[i] = img
        except RuntimeError:  # one bad file fails the batch: decode them one by one below
            pass
    for i, img in enumerate(out):
        if img is None:
            out[i] = _decode_on_cpu(encoded[i]).to(device, non_blocking=True)
    return out  # type: ignore[return-value]


def _decode_on_cpu(data: torch.Tensor) -> torch.Tensor:
    """One image to RGB uint8 (3, H, W): torchvision's decoders, else PIL (BMP, TIFF, ...).
    16-bit PNGs are scaled to 8 bits (the CPU path's PIL conversion clips them at 255, and so
    does the PIL fallback here)."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as F

    try:
        img = decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image, UnidentifiedImageError

        try:
            pil = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode a training image ({exc})") from None
        img = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    if img.dtype != torch.uint8:
        img = F.to_dtype(img, torch.uint8, scale=True)
    return img
