"""Decoding images: files or bytes of any common format to float tensors [C, H, W] in [0, 1], or
JPEG bytes left encoded for the training device. Whatever cannot be decoded raises
``UnreadableImage`` naming it; its callers skip and count it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import BadInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


class DataError(BadInput):
    """A dataset that cannot be used; the message names the path and the problem."""


class UnreadableImage(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path


def to_channels(img: torch.Tensor, in_chans: int) -> torch.Tensor:
    if img.size(0) == in_chans:
        return img
    if in_chans == 1:
        weights = torch.tensor([0.299, 0.587, 0.114])[: img.size(0)]
        return (img[:3] * weights.view(-1, 1, 1)).sum(0, keepdim=True) / weights.sum()
    if img.size(0) == 1:
        return img.expand(in_chans, -1, -1).clone()
    raise DataError(f"cannot turn a {img.size(0)}-channel image into {in_chans} channels")


def check_size(path, width: int, height: int) -> None:
    """An image under 2 pixels on a side cannot be cropped and resized: unreadable for training."""
    if min(width, height) < 2:
        raise UnreadableImage(str(path), f"image of {width}x{height} pixels is too small")


def load_image(path, in_chans: int = 3, name: str | None = None) -> torch.Tensor:
    """Decode any common image (CMYK, RGBA, palette, 16-bit, grayscale) to [in_chans, H, W] in [0, 1].
    ``path``: a file name or an open binary file (``name`` then names it in errors)."""
    name = name or str(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                scale = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
                img = torch.from_numpy(arr / scale).clamp_(0, 1).unsqueeze(0)
                return to_channels(img, in_chans)
            mode = "L" if in_chans == 1 else "RGB"
            arr = np.array(im if im.mode == mode else im.convert(mode))  # one copy, writable
    except Exception as e:  # PIL raises many types for bad files; all mean "cannot decode"
        raise UnreadableImage(name, f"{type(e).__name__}: {e}") from None
    check_size(name, arr.shape[1], arr.shape[0])
    img = torch.from_numpy(arr)
    img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
    return to_channels(img.float().div_(255), in_chans)  # float of the permuted view: one pass, no copy first


@dataclass
class EncodedImage:
    """A JPEG file's bytes, left for the training device to decode (``data.decode_on_device``)."""

    data: torch.Tensor  # uint8 [file size]
    height: int
    width: int
    path: str


def read_jpeg(path: Path) -> EncodedImage | None:
    """The file's bytes and size, read from its header; None when the device decoder cannot take it
    (not a baseline/progressive JPEG in grayscale, YCbCr or RGB, e.g. CMYK), so PIL decodes it."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG" or im.mode not in ("L", "RGB"):
                return None
            width, height = im.size
    except Exception as e:  # PIL raises many types for bad files; all mean "cannot decode"
        raise UnreadableImage(str(path), f"{type(e).__name__}: {e}") from None
    check_size(path, width, height)
    return EncodedImage(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), height, width, str(path))
