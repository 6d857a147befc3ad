"""Frozen features for the probes: one pass over a dataset gives the average-pooled last layer,
the concatenation of the average-pooled last 4 layers (the paper's ViT-H protocol) and,
on request, the patch tokens (for the attentive probe). Cached on disk, keyed by the encoder and
the dataset, so that every probe of an evaluation reuses one pass.

Unreadable images (``data.UnreadableImage``) are skipped, with their labels, everywhere a dataset is
read outside training (the features, the pixel baseline, the monitor, the pictures): ``read_batches``
gives batches of the readable images and the paths of the others; ``warn_skipped`` names them in the
log. A split with no readable image is a ``DataError`` naming its folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, atomic_save, load_checkpoint
from ..data.images import DataError, UnreadableImage
from ..data.transforms import Resized, prepare
from ..device import resolve_precision
from ..models.vit import VisionTransformer

CACHE_VERSION = 2  # 2: the features remember the unreadable files they skipped
SHOWN = 3  # unreadable paths named in a log line
log = logging.getLogger("openjepa")


class Readable(torch.utils.data.Dataset):
    """``dataset``'s items (brought to ``size`` by ``Resized`` when given), with an image that cannot
    be decoded turned into the marker (None, its path), which ``collate_readable`` drops."""

    def __init__(self, dataset, size: tuple[int, int] | None = None):
        self.dataset = Resized(dataset, size) if size is not None else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return self.dataset[i]
        except UnreadableImage as e:
            return None, e.path


def collate_readable(items: list) -> tuple[torch.Tensor | None, torch.Tensor, list[str]]:
    """(images [B', C, H, W] of the readable items, or None if there is none; their labels [B'];
    the paths of the unreadable ones): a label leaves with its image."""
    good = [(img, label) for img, label in items if img is not None]
    skipped = [str(path) for img, path in items if img is None]
    images = torch.stack([img for img, _ in good]) if good else None
    return images, torch.as_tensor([int(label) for _, label in good], dtype=torch.long), skipped


def read_batches(
    dataset, size: tuple[int, int] | None = None, indices=None, batch_size: int = 256, num_workers: int = 0
) -> torch.utils.data.DataLoader:
    """Batches (images, labels, skipped paths) of ``dataset`` (the items at ``indices``, in that
    order, else all) through ``Readable`` and ``collate_readable``; ``images`` is None for a batch
    with no readable image."""
    return torch.utils.data.DataLoader(
        Readable(dataset, size),
        batch_size=batch_size,
        shuffle=False,
        sampler=None if indices is None else [int(i) for i in indices],
        num_workers=num_workers,
        collate_fn=collate_readable,
    )


def source_of(dataset, skipped=()) -> str:
    """The folder a dataset reads (through wrappers such as ``Subset`` or ``Resized``), else the
    common folder of its ``skipped`` files, else its type."""
    ds = dataset
    while ds is not None:
        if getattr(ds, "root", None) is not None:
            return str(ds.root)
        ds = getattr(ds, "dataset", None)
    if skipped:
        return os.path.commonpath([os.path.dirname(p) or "." for p in skipped])
    return type(dataset).__name__


def warn_skipped(what: str, skipped, total: int | None = None) -> None:
    """One warning naming the first few ``skipped`` paths and their count ("of ``total``")."""
    if skipped:
        of = f" of {total}" if total is not None else ""
        more = f" and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else ""
        log.warning(
            "%s: skipped %d%s image(s) that cannot be read: %s%s",
            what,
            len(skipped),
            of,
            ", ".join(map(str, skipped[:SHOWN])),
            more,
        )


def nothing_readable(dataset, skipped) -> DataError:
    """The error for a dataset none of whose images can be read (``skipped``: all of them)."""
    example = f" (e.g. {skipped[0]})" if skipped else ""
    return DataError(f"no image of {source_of(dataset, skipped)} can be read: {len(skipped)} unreadable{example}")


@dataclass
class Features:
    """``pooled`` [N, D], ``last4`` [N, 4D] (float32), ``patches`` [N, T, D] (float16) or None, ``labels`` [N]
    of the N readable images; ``skipped``: the paths of the unreadable ones, left out."""

    pooled: torch.Tensor
    last4: torch.Tensor
    patches: torch.Tensor | None
    labels: torch.Tensor
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


@torch.inference_mode()
def extract(
    encoder: VisionTransformer,
    dataset,
    batch_size: int = 256,
    patches: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
    precision: str = "fp32",
    last4: bool = True,
) -> Features:
    """Run the frozen ``encoder`` over ``dataset`` (items (image [C, H, W] in [0, 1], label)) in
    order; ``precision`` 'bf16' runs it under bf16 autocast (features are returned in fp32).
    ``last4=False`` keeps the last layer only (``Features.last4`` then holds the pooled features).
    Unreadable images are left out with their labels and listed in ``skipped``; DataError if
    none can be read."""
    encoder.eval()
    device = next(encoder.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")
    loader = read_batches(dataset, encoder.img_size, batch_size=batch_size, num_workers=num_workers)
    pooled, fours, tokens, labels, skipped = [], [], [], [], []
    for images, y, unreadable in tqdm(loader, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True):
        skipped += unreadable
        if images is None:
            continue
        x = prepare(images.float(), encoder).to(device)
        with autocast:
            layers = encoder.intermediates(x, layers=min(4 if last4 else 1, len(encoder.blocks)), norm=True)
        pooled.append(layers[-1].mean(1).float().cpu())
        if last4:
            fours.append(torch.cat([z.mean(1) for z in layers], dim=1).float().cpu())
        if patches:
            tokens.append(layers[-1].to(torch.float16).cpu())
        labels.append(y)
    if not labels:
        raise nothing_readable(dataset, skipped)
    pooled = torch.cat(pooled)
    return Features(
        pooled,
        torch.cat(fours) if last4 else pooled,
        torch.cat(tokens) if patches else None,
        torch.cat(labels),
        skipped,
    )


def pixel_features(dataset, size: tuple[int, int], batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels at ``size`` (the encoder's input size), flattened [N, C*H*W], and labels of the
    readable images (as ``extract``, unreadable ones left out): the input of the
    logistic-regression baseline."""
    xs, ys, skipped = [], [], []
    for images, y, unreadable in read_batches(dataset, size, batch_size=batch_size):
        skipped += unreadable
        if images is not None:
            xs.append(images.flatten(1).float())
            ys.append(y)
    if not xs:
        raise nothing_readable(dataset, skipped)
    return torch.cat(xs), torch.cat(ys)


def file_key(path: str | Path) -> dict:
    """What identifies a checkpoint file's contents cheaply: its path, size and modification time."""
    path = Path(path).resolve()
    if path.is_dir():  # an exported folder: its files' sizes and times
        return {
            "path": str(path),
            "files": sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()),
        }
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_path(cache_dir: str | Path, **key) -> Path:
    digest = hashlib.sha1(json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir) / f"features_{digest[:16]}.pt"


def cached_extract(
    encoder: VisionTransformer, dataset, cache_file: Path | None, patches: bool = False, **kwargs
) -> Features:
    """``extract`` through a cache file: reused when it holds what is asked (patch tokens
    included when ``patches``), rewritten (atomically) otherwise. A corrupt cache file is ignored."""
    if cache_file is not None and cache_file.exists():
        try:
            state = load_checkpoint(cache_file)
            if not patches or "patches" in state:
                return Features(
                    state["pooled"],
                    state["last4"],
                    state.get("patches"),
                    state["labels"],
                    list(state.get("skipped", [])),
                )
        except (CheckpointError, KeyError):
            pass
    feats = extract(encoder, dataset, patches=patches, **kwargs)
    if cache_file is not None:
        os.makedirs(cache_file.parent, exist_ok=True)
        atomic_save(feats.to_dict(), cache_file)
    return feats
