"""Datasets: each item is (image float [C, H, W] in [0, 1], label int; -1 when unlabelled). A folder
of images, Fashion-MNIST's idx files, in-memory arrays, synthetic images, and (optional extras) tar
shards and Hugging Face datasets. ``build_dataset`` picks one from a config."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .images import IMAGE_EXTENSIONS, DataError, EncodedImage, load_image, read_jpeg, to_channels
from .index import folder_index
from .seeds import generator_for

FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "data/fashion-mnist")
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class ImageFolder(torch.utils.data.Dataset):
    """Images under ``root``, searched recursively (through a cached index: ``index.py``). With
    class sub-folders (``root/cat/x.jpg``) labels are the sorted sub-folder names; a flat folder is
    unlabelled (label -1). ``files[i]`` is a Path; ``encoded(i)`` gives JPEG files undecoded
    (``EncodedImage``), for ``decode_batch``."""

    def __init__(self, root: str | Path, in_chans: int = 3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} not found")
        self.files, self.classes, self.labels = folder_index(self.root, IMAGE_EXTENSIONS)
        self.files.root = self.root  # the folder as given (the index holds it resolved)
        if not len(self.files):
            raise DataError(f"data folder {self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """A digest of every file's name, size and modification time: what a cache of features
        computed from this folder must match (a file added, removed or rewritten changes it)."""
        digest = hashlib.sha1()
        for i, path in enumerate(self.files):
            st = path.stat()
            digest.update(f"{self.files.name(i)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.files[i], self.in_chans), int(self.labels[i])

    def encoded(self, i: int) -> tuple[torch.Tensor | EncodedImage, int]:
        """Item ``i`` with a JPEG left encoded for the training device; other files decoded."""
        path = self.files[i]
        jpeg = read_jpeg(path) if path.suffix.lower() in (".jpg", ".jpeg") else None
        return (jpeg, int(self.labels[i])) if jpeg is not None else self[i]


class ArrayDataset(torch.utils.data.Dataset):
    """In-memory images: uint8 arrays [N, H, W] or [N, H, W, C] (0-255), or float tensors
    [N, C, H, W] in [0, 1]."""

    def __init__(self, images, labels: Sequence[int] | None = None, in_chans: int | None = None):
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim != 4:
                raise DataError(f"image array must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
            scale = 255.0 if images.dtype == np.uint8 else 1.0
            images = torch.from_numpy(np.array(images, copy=not images.flags.writeable)).permute(0, 3, 1, 2)
            self.images, self.scale = images, scale
        else:
            if images.ndim != 4:
                raise DataError(f"image tensor must be [N, C, H, W], got shape {tuple(images.shape)}")
            self.images, self.scale = images, (255.0 if images.dtype == torch.uint8 else 1.0)
        if len(self.images) == 0:
            raise DataError("the image array is empty")
        self.labels = list(labels) if labels is not None else [-1] * len(self.images)
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.in_chans = in_chans or self.images.size(1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i].float() / self.scale
        return to_channels(img, self.in_chans), int(self.labels[i])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 8:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    candidates = [Path(root)] if root else [Path(d) for d in FMNIST_DIRS]
    for folder in candidates:
        if any((folder / (FMNIST_FILES["train"][0] + ext)).exists() for ext in ("", ".gz")):
            return folder
    raise DataError(
        f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))}: install "
        f"Debian's dataset-fashion-mnist, run `make data`, or put {FMNIST_FILES['train'][0]}.gz "
        f"and the other three idx files in a folder and set data.root_path to it"
    )


def fashion_mnist_arrays(root: str | Path | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    if split not in FMNIST_FILES:
        raise DataError(f"Fashion-MNIST split must be train or test, got {split!r}")
    folder = find_fashion_mnist(root)
    out = []
    for name in FMNIST_FILES[split]:
        path = next((folder / (name + ext) for ext in (".gz", "") if (folder / (name + ext)).exists()), None)
        if path is None:
            raise DataError(f"{folder / name}(.gz) not found")
        out.append(_read_idx(path))
    return out[0], out[1].astype(np.int64)


def fashion_mnist(root: str | Path | None = None, split: str = "train", in_chans: int = 1) -> ArrayDataset:
    images, labels = fashion_mnist_arrays(root, split)
    return ArrayDataset(images, labels.tolist(), in_chans)


def download_fashion_mnist(dest: str | Path = "data/fashion-mnist") -> Path:
    """Fetch the four idx files from the dataset's own source (where the network allows)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (n for split in FMNIST_FILES.values() for n in split):
        target = dest / f"{name}.gz"
        if target.exists():
            continue
        tmp = target.with_suffix(".gz.part")
        with urllib.request.urlopen(FMNIST_URL + target.name, timeout=60) as r, open(tmp, "wb") as f:
            f.write(r.read())
        os.replace(tmp, target)
    return dest


class SyntheticDataset(torch.utils.data.Dataset):
    """Smooth random images (low-resolution noise, upsampled), fixed per index; label = index % 10.
    For tests and benchmarks: structured enough for the loss to fall."""

    def __init__(self, size: int = 1024, image_size: int = 32, in_chans: int = 3, seed: int = 0):
        self.size, self.image_size, self.in_chans, self.seed = size, image_size, in_chans, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = generator_for(self.seed, i)
        low = torch.rand(1, self.in_chans, 4, 4, generator=g)
        img = F.interpolate(low, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)[0]
        return img, i % 10
