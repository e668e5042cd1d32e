"""Decoding image files, one rule for every reader: image files for ``ssal predict``, image
folders (CPU workers or batched on the device, nvJPEG on CUDA) and shards.

Every image's header is read first (by PIL, without decoding): formats PIL does not know,
and images over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), end in a
``ValueError`` naming the file before any pixel memory is allocated. JPEGs are decoded by
torchvision (libjpeg-turbo, or nvJPEG on the device), every other format by PIL: torchvision's
PNG decoder crashes the process on some corrupt files.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssal.errors import UserError

__all__ = [
    "collate_encoded",
    "decode_images",
    "decode_on_cpu",
    "load_pil",
    "load_rgb",
    "open_image",
    "pil_to_mode",
    "read_file",
]


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def open_image(source: str | Path | bytes, name: str | Path) -> Any:
    """Open an image with PIL, header only (``source``: a path or the file's bytes).

    Raises ``ValueError("<name>: cannot read image (...)")`` for unknown formats, unreadable
    headers and images over PIL's decompression-bomb limit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # over the limit: refused, not decoded with a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except UnidentifiedImageError:
        raise UserError(f"{name}: cannot read image (not a known image format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(
            f"{name}: cannot read image ({_reason(e)}; raise PIL.Image.MAX_IMAGE_PIXELS to allow "
            "larger images)"
        ) from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise UserError(f"{name}: cannot read image ({_reason(e)})") from None


def pil_to_mode(img: Any, in_channels: int) -> Any:
    """A PIL image in ``"L"`` (1 channel) or ``"RGB"`` (3): 16-bit scaled, EXIF applied."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode == "I":  # PIL would clip, not scale
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "I" or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("L" if in_channels == 1 else "RGB")


def load_pil(source: str | Path | bytes, in_channels: int, name: str | Path | None = None) -> Any:
    """Decode an image (a path or its bytes) into a PIL image in ``"L"`` or ``"RGB"``
    (``pil_to_mode``); ``ValueError("<name>: cannot read image (...)")`` for anything else."""
    name = source if name is None else name
    img = open_image(source, name)
    try:
        with img:
            img.load()
            return pil_to_mode(img, in_channels)
    except Exception as e:  # truncated or corrupt pixel data
        raise UserError(f"{name}: cannot read image ({_reason(e)})") from None


def load_rgb(path: str) -> Any:
    """An image file as an RGB PIL image (the loader of image-folder datasets)."""
    return load_pil(path, 3)


def read_file(path: str) -> tuple[torch.Tensor, str]:
    """A file's bytes as a uint8 tensor (what ``decode_jpeg`` takes) and its path, in ordinary
    memory: ``torchvision.io.read_file`` maps the file, and a mapped tensor cannot travel back
    from a DataLoader worker (the loader hangs)."""
    data = Path(path).read_bytes()
    if not data:
        raise UserError(f"{path}: empty image file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), path


def collate_encoded(
    samples: Sequence[tuple[tuple[torch.Tensor, str], int]],
) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Encoded images stay a list (their lengths differ); labels become one tensor; the files'
    paths come along so that a file that does not decode can be named."""
    encoded = [s[0][0] for s in samples]
    labels = torch.tensor([s[1] for s in samples], dtype=torch.long)
    return encoded, labels, [s[0][1] for s in samples]


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_on_cpu(data: torch.Tensor | bytes, in_channels: int, name: str) -> torch.Tensor:
    """One image file's bytes to uint8 ``(in_channels, H, W)`` on the CPU: JPEGs by
    torchvision, other formats by PIL (16-bit scaled to 8 bits), after the header check."""
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = data if isinstance(data, bytes) else data.numpy().tobytes()
    header = open_image(raw, name)
    if header.format == "JPEG":
        tensor = (
            data
            if isinstance(data, torch.Tensor)
            else torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        )
        mode = ImageReadMode.GRAY if in_channels == 1 else ImageReadMode.RGB
        try:
            return decode_jpeg(tensor, mode=mode)
        except RuntimeError as e:
            raise UserError(f"{name}: cannot read image ({_reason(e)})") from None
    img = np.asarray(load_pil(raw, in_channels, name))
    return torch.from_numpy(img.copy()).reshape(img.shape[0], img.shape[1], -1).permute(2, 0, 1)


def decode_images(
    encoded: Sequence[torch.Tensor], device: torch.device, names: Sequence[str] | None = None
) -> list[torch.Tensor]:
    """Decode image files (uint8 byte tensors on the CPU) to RGB uint8 (3, H, W) on ``device``.

    Every header is checked first; JPEGs are then decoded in one batched call on ``device``
    (nvJPEG on CUDA); other formats, and JPEGs the device decoder refuses (CMYK, progressive
    on some builds), on the CPU. ``names`` name the files in errors.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    names = [f"image {i} of the batch" for i in range(len(encoded))] if names is None else names
    for data, name in zip(encoded, names, strict=True):
        open_image(data.numpy().tobytes(), name).close()
    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, d in enumerate(encoded) if _is_jpeg(d)]
    if jpegs:
        try:
            for i, img in zip(
                jpegs,
                decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device),
                strict=True,
            ):
                out[i] = img
        except RuntimeError:  # one bad file fails the batch: decode them one by one below
            pass
    for i, img in enumerate(out):
        if img is None:
            out[i] = decode_on_cpu(encoded[i], 3, names[i]).to(device, non_blocking=True)
    return out  # type: ignore[return-value]
