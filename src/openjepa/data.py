"""Datasets, the pretraining transform, and the loader that feeds (images, masks) batches.

Every random choice of the input pipeline (data order, crop, flip, masks) is drawn from a
generator seeded by (seed, what, micro-batch number[, position]), never from a worker's global
RNG. A batch therefore depends only on the seed and its number: the same on 0 or 8 workers, and
a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import logging
import os
import signal
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import BadInput

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "data/fashion-mnist")
FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                  "Bag", "Ankle boot")


class DataError(BadInput):
    """A dataset that cannot be used; the message names the path and the problem."""


class UnreadableImage(Exception):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, stream, step, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(*parts))


# Streams of randomness, one per use, so that changing one never shifts another.
ORDER, CROP, MASK = 1, 2, 3


# ---------------------------------------------------------------------------------------------
# Datasets: each returns (image float [C, H, W] in [0, 1], label int; -1 when unlabelled)
# ---------------------------------------------------------------------------------------------

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


def load_image(path: str | Path, in_chans: int = 3) -> torch.Tensor:
    """Decode any common image (CMYK, RGBA, palette, 16-bit, grayscale) to [in_chans, H, W] in [0, 1]."""
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
        raise UnreadableImage(str(path), f"{type(e).__name__}: {e}") from None
    check_size(path, arr.shape[1], arr.shape[0])
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


class ImageFolder(torch.utils.data.Dataset):
    """Images under ``root``, searched recursively. With class sub-folders (``root/cat/x.jpg``)
    labels are the sorted sub-folder names; a flat folder is unlabelled (label -1). ``encoded(i)``
    gives JPEG files undecoded (``EncodedImage``), for ``decode_batch``."""

    def __init__(self, root: str | Path, in_chans: int = 3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} not found")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise DataError(f"data folder {self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        subdirs = sorted({p.relative_to(self.root).parts[0] for p in self.files if len(p.relative_to(self.root).parts) > 1})
        self.classes = subdirs if subdirs and all(len(p.relative_to(self.root).parts) > 1 for p in self.files) else []
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = [index[p.relative_to(self.root).parts[0]] if self.classes else -1 for p in self.files]
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.files)

    def fingerprint(self) -> str:
        """A digest of every file's name, size and modification time: what a cache of features
        computed from this folder must match (a file added, removed or rewritten changes it)."""
        digest = hashlib.sha1()
        for path in self.files:
            st = path.stat()
            digest.update(f"{path.relative_to(self.root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.files[i], self.in_chans), self.labels[i]

    def encoded(self, i: int) -> tuple[torch.Tensor | EncodedImage, int]:
        """Item ``i`` with a JPEG left encoded for the training device; other files decoded."""
        path = self.files[i]
        jpeg = read_jpeg(path) if path.suffix.lower() in (".jpg", ".jpeg") else None
        return (jpeg, self.labels[i]) if jpeg is not None else self[i]


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
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    candidates = [Path(root)] if root else [Path(d) for d in FMNIST_DIRS]
    for folder in candidates:
        if any((folder / (FMNIST_FILES["train"][0] + ext)).exists() for ext in ("", ".gz")):
            return folder
    raise DataError(f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))}: install "
                    f"Debian's dataset-fashion-mnist, run `make data`, or put {FMNIST_FILES['train'][0]}.gz "
                    f"and the other three idx files in a folder and set data.root_path to it")


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


# ---------------------------------------------------------------------------------------------
# The pretraining transform: random resized crop (+ optional flip), normalisation
# ---------------------------------------------------------------------------------------------

def crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
             generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect ``ratio``
    (w/h, sampled log-uniformly); after 10 misses, the central crop of the closest aspect."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(scale[0], scale[1], generator=generator))
        aspect = float(torch.exp(torch.empty((), dtype=torch.float64).uniform_(*log_ratio.tolist(), generator=generator)))
        w = int(round((target * aspect) ** 0.5))
        h = int(round((target / aspect) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=16)
def _channel_stats(mean: tuple, std: tuple, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as [C, 1, 1] tensors, made once per device: copying a host list to a GPU
    waits for the GPU's queue to drain, which the training step must not do per image."""
    return (torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1))


def per_channel(values: list[float], channels: int) -> list[float]:
    return values * channels if len(values) == 1 else values


@dataclass
class PretrainTransform:
    crop_size: int
    crop_scale: Sequence[float] = (0.3, 1.0)
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    horizontal_flip: bool = False
    ratio: Sequence[float] = (3 / 4, 4 / 3)

    @classmethod
    def from_config(cls, d) -> "PretrainTransform":
        """The transform a ``DataConfig`` describes (one mean/std value is used for every channel)."""
        return cls(d.crop_size, d.crop_scale, per_channel(d.mean, d.in_chans), per_channel(d.std, d.in_chans),
                   d.use_horizontal_flip)

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(img, self.plan(img.size(1), img.size(2), generator))

    def plan(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int, bool]:
        """The random choices for an image of that size: crop (top, left, h, w) and flip."""
        box = crop_box(height, width, self.crop_scale, self.ratio, generator)
        return (*box, self.horizontal_flip and bool(torch.rand((), generator=generator) < 0.5))

    def apply(self, img: torch.Tensor, plan: tuple[int, int, int, int, bool]) -> torch.Tensor:
        """Crop, resize, flip and normalise ``img`` [C, H, W] in [0, 1], on whatever device it is."""
        top, left, h, w, flip = plan
        img = img[:, top:top + h, left:left + w].unsqueeze(0)
        img = F.interpolate(img, size=(self.crop_size, self.crop_size), mode="bilinear",
                            align_corners=False, antialias=True)[0]
        if flip:
            img = img.flip(-1)
        mean, std = _channel_stats(tuple(self.mean), tuple(self.std), img.dtype, img.device)
        return (img - mean) / std


# ---------------------------------------------------------------------------------------------
# The loader: numbered micro-batches, transform per sample, masks in the collate
# ---------------------------------------------------------------------------------------------

class NumberedBatches(torch.utils.data.Sampler):
    """Yields micro-batches ``start .. total-1`` as lists of (dataset index, batch number). Batch b
    is slice ``b % per_epoch`` of epoch ``b // per_epoch``'s permutation, drawn from (seed, epoch);
    rank r of w takes the r-th of w consecutive slices."""

    def __init__(self, dataset_size: int, batch_size: int, per_epoch: int, start: int, total: int,
                 seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.per_epoch = dataset_size, batch_size, per_epoch
        self.start, self.total, self.seed = start, total, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        epoch, order = -1, None
        for b in range(self.start, self.total):
            if b // self.per_epoch != epoch:
                epoch = b // self.per_epoch
                order = torch.randperm(self.n, generator=generator_for(self.seed, ORDER, epoch))
            first = ((b % self.per_epoch) * self.world_size + self.rank) * self.batch_size
            yield [(int(i), b) for i in order[first:first + self.batch_size]]


class NumberedDataset(torch.utils.data.Dataset):
    """Looks up (index, batch number); applies the transform with a generator from
    (seed, batch number, index). An image that cannot be decoded comes back as None, to be
    skipped and counted by the collate. With ``encoded`` (and a dataset that offers it), JPEGs
    stay encoded with their crop drawn, for ``decode_batch`` on the device."""

    def __init__(self, base: torch.utils.data.Dataset, transform: Callable, seed: int, encoded: bool = False):
        self.base, self.transform, self.seed = base, transform, seed
        self.read = base.encoded if encoded and hasattr(base, "encoded") else base.__getitem__

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, batch = key
        try:
            img, _ = self.read(index)
        except UnreadableImage as e:
            return None, e.path
        generator = generator_for(self.seed, CROP, batch, index)
        if isinstance(img, EncodedImage):  # the same random draws; applied after decoding on the device
            return (img, self.transform.plan(img.height, img.width, generator)), batch
        return self.transform(img, generator), batch


class MaskCollator:
    """Stacks a micro-batch and samples its masks. Masks are drawn and packed (every context cut to
    the shortest of its group, every target to the shortest target) in consecutive groups of
    ``group`` images of the global batch (``mask.pack_group``: the paper's 128 images per GPU), each
    group from a generator of (seed, batch number, group), so the context statistics do not depend
    on the global batch or the number of processes. A process draws only the groups its slice of the
    global batch overlaps; N processes see exactly the masks of one process at the same global
    batch, and an image's masks do not depend on which of its neighbours were skipped.

    The batch holds one (context_idx, target_idx) pair per group present, in image order:
    ``context_idx`` and ``target_idx`` are lists, ``group_sizes`` the images of each."""

    def __init__(self, sampler: Callable, seed: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 group: int = 128):
        if group < 1:
            raise DataError(f"the pack group must hold at least one image, got {group}")
        self.sampler, self.seed, self.group = sampler, seed, group
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size

    def masks(self, batch: int, positions: list[int]) -> dict:
        """The masks of the images at these global positions of batch ``batch`` (ascending):
        ``context_idx`` and ``target_idx`` (one tensor per group) and ``group_sizes``."""
        contexts, targets, sizes = [], [], []
        seek = getattr(self.sampler, "seek", None)  # the reference sampler: block sizes from the batch number
        for g in sorted({p // self.group for p in positions}):
            if seek is not None:  # before every group, as the reference's counter before every GPU's batch
                seek(batch)
            context_idx, target_idx = self.sampler(self.group, generator_for(self.seed, MASK, batch, g))
            rows = torch.tensor([p - g * self.group for p in positions if p // self.group == g])
            contexts.append(context_idx[rows])
            targets.append(target_idx[rows])
            sizes.append(len(rows))
        return {"context_idx": contexts, "target_idx": targets, "group_sizes": sizes}

    def __call__(self, items: list) -> dict:
        good = [img for img, _ in items if img is not None]
        skipped = [path for img, path in items if img is None]
        batch = next((b for img, b in items if img is not None), -1)
        if not good:
            return {"images": None, "batch": batch, "skipped": skipped}
        first = self.rank * self.batch_size  # this process's first image in the global batch
        positions = [first + i for i, (img, _) in enumerate(items) if img is not None]
        encoded = any(isinstance(img, tuple) for img in good)
        return {"images": good if encoded else torch.stack(good), "encoded": encoded, **self.masks(batch, positions),
                "batch": batch, "skipped": skipped}


def select_rows(batch: dict, keep: list[int]) -> dict:
    """The batch's masks for the images at ``keep`` (ascending indices into the batch); groups
    left empty are dropped."""
    contexts, targets, sizes, start = [], [], [], 0
    for c, t, n in zip(batch["context_idx"], batch["target_idx"], batch["group_sizes"]):
        rows = torch.tensor([i - start for i in keep if start <= i < start + n], dtype=torch.long)
        if len(rows):
            contexts.append(c[rows])
            targets.append(t[rows])
            sizes.append(len(rows))
        start += n
    return {"context_idx": contexts, "target_idx": targets, "group_sizes": sizes}


def decode_batch(batch: dict, transform: PretrainTransform, device: torch.device, in_chans: int = 3) -> dict:
    """Finish a batch whose JPEGs were left encoded: decode them together on ``device``
    (``torchvision.io.decode_jpeg``: nvJPEG on CUDA), then crop, resize, flip and normalise there
    with the crops drawn in the loader. Images decoded on the host already pass through. An image
    the device decoder rejects is decoded by PIL instead; one nothing can decode is skipped with
    its masks, and counted."""
    if not batch.get("encoded"):
        return batch
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if in_chans == 1 else ImageReadMode.RGB
    items = batch["images"]
    jpegs = [i for i, item in enumerate(items) if isinstance(item, tuple)]
    try:
        decoded = dict(zip(jpegs, decode_jpeg([items[i][0].data for i in jpegs], mode=mode, device=device)))
    except RuntimeError:  # one bad file fails the whole call: decode one by one to find it
        decoded = {}
        for i in jpegs:
            try:
                decoded[i] = decode_jpeg(items[i][0].data, mode=mode, device=device)
            except RuntimeError:
                pass
    images, keep, skipped = [], [], list(batch["skipped"])
    for i, item in enumerate(items):
        if not isinstance(item, tuple):
            images.append(item.to(device, non_blocking=True))
        else:
            jpeg, plan = item
            try:
                img = decoded[i].float().div_(255) if i in decoded else load_image(jpeg.path, in_chans).to(device)
            except UnreadableImage:
                skipped.append(jpeg.path)
                continue
            images.append(transform.apply(to_channels(img, in_chans), plan))
        keep.append(i)
    out = {**batch, "encoded": False, "skipped": skipped}
    if not images:
        return {**out, "images": None}
    return {**out, "images": torch.stack(images), **select_rows(batch, keep)}


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM / SIGUSR1 / SIGUSR2 and SIGINT (Ctrl-C reaches the whole process
    group) to the main process, which saves and stops at a step boundary; a worker killed first
    would break the batch the main process still needs."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def build_dataset(data_cfg, split: str = "train") -> torch.utils.data.Dataset:
    """The dataset a config names. Raises DataError (naming the path) before any compute is spent."""
    d = data_cfg
    if d.dataset == "fashion_mnist":
        return fashion_mnist(d.root_path or None, split, d.in_chans)
    if d.dataset == "synthetic":
        return SyntheticDataset(d.synthetic_size, d.crop_size, d.in_chans)
    root = Path(d.root_path) / d.image_folder if d.image_folder else Path(d.root_path or ".")
    return ImageFolder(root, d.in_chans)


def build_pretrain_loader(dataset, transform, sampler, batch_size: int, per_epoch: int, start: int, total: int,
                          seed: int, num_workers: int = 0, pin_memory: bool = False,
                          rank: int = 0, world_size: int = 1, encoded: bool = False,
                          pack_group: int = 128) -> torch.utils.data.DataLoader:
    """One loader for the whole run (workers start once), from micro-batch ``start`` on.
    ``encoded`` (``data.decode_on_device``): JPEGs reach the training loop undecoded.
    ``pack_group``: images per mask group (``MaskCollator``)."""
    batches = NumberedBatches(len(dataset), batch_size, per_epoch, start, total, seed, rank, world_size)
    return torch.utils.data.DataLoader(
        NumberedDataset(dataset, transform, seed, encoded), batch_sampler=batches,
        collate_fn=MaskCollator(sampler, seed, batch_size, rank, world_size, pack_group),
        num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
        worker_init_fn=_ignore_stop_signals if num_workers else None)
