"""Frozen features for the probes: one pass over a dataset gives the average-pooled last layer,
the concatenation of the average-pooled last 4 layers (the paper's ViT-H protocol) and,
on request, the patch tokens (for the attentive probe). Cached on disk, keyed by the encoder and
the dataset, so that every probe of an evaluation reuses one pass."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, atomic_save, load_checkpoint
from ..data.transforms import Resized, prepare
from ..device import cpu_has_fast_bf16
from ..models.vit import VisionTransformer

CACHE_VERSION = 1
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()) else "fp32"


@dataclass
class Features:
    """``pooled`` [N, D], ``last4`` [N, 4D] (float32), ``patches`` [N, T, D] (float16) or None, ``labels`` [N]."""

    pooled: torch.Tensor
    last4: torch.Tensor
    patches: torch.Tensor | None
    labels: torch.Tensor

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


@torch.inference_mode()
def extract(encoder: VisionTransformer, dataset, batch_size: int = 256, patches: bool = False,
            num_workers: int = 0, progress: bool = True, desc: str = "features", precision: str = "fp32") -> Features:
    """Run the frozen ``encoder`` over ``dataset`` (items (image [C, H, W] in [0, 1], label)) in
    order; ``precision`` 'bf16' runs it under bf16 autocast (features are returned in fp32)."""
    encoder.eval()
    device = next(encoder.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device) == "bf16")
    loader = torch.utils.data.DataLoader(Resized(dataset, encoder.img_size), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    pooled, last4, tokens, labels = [], [], [], []
    for images, y in tqdm(loader, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True):
        x = prepare(images.float(), encoder).to(device)
        with autocast:
            layers = encoder.intermediates(x, layers=min(4, len(encoder.blocks)), norm=True)
        pooled.append(layers[-1].mean(1).float().cpu())
        last4.append(torch.cat([z.mean(1) for z in layers], dim=1).float().cpu())
        if patches:
            tokens.append(layers[-1].to(torch.float16).cpu())
        labels.append(torch.as_tensor(y, dtype=torch.long))
    return Features(torch.cat(pooled), torch.cat(last4), torch.cat(tokens) if patches else None, torch.cat(labels))


def pixel_features(dataset, size: tuple[int, int], batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels at ``size`` (the encoder's input size), flattened [N, C*H*W], and labels: the
    input of the logistic-regression baseline."""
    loader = torch.utils.data.DataLoader(Resized(dataset, size), batch_size=batch_size, shuffle=False)
    xs, ys = zip(*[(images.flatten(1).float(), torch.as_tensor(y, dtype=torch.long)) for images, y in loader])
    return torch.cat(xs), torch.cat(ys)


def file_key(path: str | Path) -> dict:
    """What identifies a checkpoint file's contents cheaply: its path, size and modification time."""
    path = Path(path).resolve()
    if path.is_dir():  # an exported folder: its files' sizes and times
        return {"path": str(path), "files": sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                                   for p in path.iterdir() if p.is_file())}
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_path(cache_dir: str | Path, **key) -> Path:
    digest = hashlib.sha1(json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir) / f"features_{digest[:16]}.pt"


def cached_extract(encoder: VisionTransformer, dataset, cache_file: Path | None, patches: bool = False,
                   **kwargs) -> Features:
    """``extract`` through a cache file: reused when it holds what is asked (patch tokens
    included when ``patches``), rewritten (atomically) otherwise. A corrupt cache file is ignored."""
    if cache_file is not None and cache_file.exists():
        try:
            state = load_checkpoint(cache_file)
            if not patches or "patches" in state:
                return Features(state["pooled"], state["last4"], state.get("patches"), state["labels"])
        except (CheckpointError, KeyError):
            pass
    feats = extract(encoder, dataset, patches=patches, **kwargs)
    if cache_file is not None:
        os.makedirs(cache_file.parent, exist_ok=True)
        atomic_save(feats.to_dict(), cache_file)
    return feats
