"""A folder of ImageNet-sized JPEGs (500x375, quality 90, smooth colour plus noise) for the loader
benchmark: ``python bench/make_jpegs.py DIR --n 1024``. Existing files are kept."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    args = p.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = args.size
    for i in range(args.n):
        path = folder / f"{i:05d}.jpg"
        low = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        noise = rng.integers(-20, 20, (h, w, 3))
        if path.exists():
            continue
        smooth = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC)).astype(np.int16)
        Image.fromarray((smooth + noise).clip(0, 255).astype(np.uint8)).save(path, quality=90)


if __name__ == "__main__":
    main()
