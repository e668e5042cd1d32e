"""Write an ImageNet-like folder of JPEGs for timing: ``OUT/{train,val}/<class>/*.jpg``.

Each image is a smooth random field with fine noise, 500 x 375 by default (ImageNet's typical
size), saved at JPEG quality 90, so a file is about as large, and as slow to decode, as an
ImageNet photo (~110 KB). Written by all CPU cores in parallel.
Usage: ``python benchmarks/jpeg_folder.py OUT [CLASSES] [TRAIN_PER_CLASS] [VAL_PER_CLASS]``.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (500, 375)


def write_class(args: tuple[Path, int, int, int]) -> int:
    """Write one class's train and val images; returns the bytes written."""
    root, cls, n_train, n_val = args
    rng = np.random.default_rng(cls)
    written = 0
    for split, n in (("train", n_train), ("val", n_val)):
        folder = root / split / f"c{cls:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            coarse = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)
            img = Image.fromarray(coarse).resize(SIZE, Image.BICUBIC)
            pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 18, (*SIZE[::-1], 3))
            path = folder / f"{i}.jpg"
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
            written += path.stat().st_size
    return written


def main() -> None:
    root = Path(sys.argv[1])
    classes, n_train, n_val = (
        int(a) for a in (sys.argv[2:] + ["1000", "10", "1"][len(sys.argv) - 2 :])
    )
    with ProcessPoolExecutor() as pool:
        total = sum(pool.map(write_class, [(root, c, n_train, n_val) for c in range(classes)]))
    n = classes * (n_train + n_val)
    print(f"{root}: {n} JPEGs of {SIZE[0]}x{SIZE[1]}, {total / n / 1024:.0f} KB each on average")


if __name__ == "__main__":
    main()
