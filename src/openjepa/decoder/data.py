"""What the decoder fits on and is shown: the run's own images, split into those it fits on and
held-out ones it never sees; their features (the run's training targets); the hidden blocks.

Held-out images come from the data's test split where it has one (Fashion-MNIST); otherwise a
seeded tenth of the images (at most ``HELD_OUT``) is set aside before the fitting images are
drawn from the rest. Either way the split is a pure function of the seed and the data's size.
"""

from __future__ import annotations

import torch

from ..data import DataError, build_dataset, fashion_mnist
from ..data.seeds import DEC_SPLIT, generator_for
from ..data.transforms import prepare
from ..evaluate.features import nothing_readable, read_batches, warn_skipped

HELD_OUT = 1000  # at most this many images set aside when the data has no test split


def _source(cfg, wanted: int):
    """(the dataset to fit on, its held-out dataset or None when it has no test split)."""
    d = cfg.data
    if d.dataset == "fashion_mnist":
        return fashion_mnist(d.root_path or None, "train", d.in_chans), fashion_mnist(
            d.root_path or None, "test", d.in_chans
        )
    dataset = build_dataset(d)
    if hasattr(dataset, "head"):  # a stream (tar shards): its first readable images
        dataset = dataset.head(wanted + HELD_OUT, d.crop_size)
    if len(dataset) < 2:
        raise DataError(f"the run's data has {len(dataset)} image(s): the decoder needs some to fit and one to show")
    return dataset, None


def split(cfg, images: int, seed: int) -> tuple[tuple, tuple]:
    """((dataset, indices it fits on), (dataset, held-out indices in a seeded order))."""
    train, test = _source(cfg, images)
    order = torch.randperm(len(train), generator=generator_for(seed, DEC_SPLIT, 0))
    if test is not None:
        held = torch.randperm(len(test), generator=generator_for(seed, DEC_SPLIT, 1))
        return (train, order[:images]), (test, held)
    n_held = max(1, min(HELD_OUT, len(train) // 10))
    return (train, order[n_held:][:images]), (train, order[:n_held])


def read_images(dataset, indices, size: int, n: int | None = None, batch_size: int = 256):
    """(uint8 images [n', C, size, size], labels [n']) of the readable images at ``indices`` (the
    first ``n`` readable ones when given); unreadable ones are named in the log and left out."""
    images, labels, skipped = [], [], []
    wanted = len(indices) if n is None else n
    for batch, y, unreadable in read_batches(dataset, (size, size), indices, batch_size):
        skipped.extend(unreadable)
        if batch is not None:
            images.append(batch.mul(255).round().clamp(0, 255).to(torch.uint8))
            labels.append(y)
        if sum(len(b) for b in images) >= wanted:
            break
    warn_skipped("decoder images", skipped)
    if not images:
        raise nothing_readable(dataset, skipped)
    return torch.cat(images)[:wanted], torch.cat(labels)[:wanted]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1]."""
    return images.float() / 255.0


@torch.no_grad()
def target_grid(model, images: torch.Tensor, mean, std, device, batch_size: int = 256) -> torch.Tensor:
    """The run's training targets (``IJEPA.target_features``: the target encoder's output,
    layer-normed) of ``images`` [n, C, H, W] (uint8 or in [0, 1]): [n, N, D] float16 on the CPU."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        x = to_unit(x) if x.dtype == torch.uint8 else x.float()
        x = prepare(x, model.target_encoder, mean, std).to(device)
        out.append(model.target_features(x).float().cpu().half())
    return torch.cat(out)


def hidden_positions(target_idx: torch.Tensor, tokens: int) -> torch.Tensor:
    """[B, N] bool: the patches in any of the target blocks ``target_idx`` [B, M, Kt]."""
    hidden = torch.zeros(target_idx.size(0), tokens, dtype=torch.bool)
    return hidden.scatter_(1, target_idx.flatten(1).cpu(), True)


def draw_hidden(sampler, batch: int, prob: float, predictor_prob: float, generator: torch.Generator):
    """(context_idx [B, Kc], target_idx [B, M, Kt], hidden [B], predicted [B]) with a mask the run's
    sampler draws for the batch; ``hidden``: the images whose target blocks are hidden (each with
    probability ``prob``); ``predicted``: those of them whose blocks carry the predictor's outputs
    rather than the unknown vector (with probability ``predictor_prob``). All draws from ``generator``."""
    context_idx, target_idx = sampler(batch, generator)
    hidden = torch.rand(batch, generator=generator) < prob
    return context_idx, target_idx, hidden, hidden & (torch.rand(batch, generator=generator) < predictor_prob)


def context_condition(model, denoiser, x: torch.Tensor, context_idx: torch.Tensor) -> torch.Tensor:
    """[B, N, D]: the learned unknown vector everywhere but the context patches ``context_idx``
    [B, Kc], which carry the training targets the target encoder computes from them alone (the
    images ``x`` are the encoder's input)."""
    features = model.target_features(x, keep_idx=context_idx).float()
    tokens = denoiser.grid[0] * denoiser.grid[1]
    unknown = denoiser.unknown.to(features.dtype).expand(len(x), tokens, -1)
    return unknown.scatter(1, context_idx[..., None].expand(-1, -1, features.size(-1)), features)


def fill_predictions(features: torch.Tensor, target_idx: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """features [B, N, D] with each patch of the target blocks ``target_idx`` [B, M, Kt] replaced
    by the mean of its predictions [B, M, Kt, D]."""
    B, N, D = features.shape
    idx = target_idx.flatten(1).to(features.device)
    sums = torch.zeros_like(features).scatter_add_(
        1, idx[..., None].expand(-1, -1, D), predictions.flatten(1, 2).to(features.dtype)
    )
    counts = torch.zeros(B, N, 1, dtype=features.dtype, device=features.device)
    counts.scatter_add_(1, idx[..., None], torch.ones(B, idx.size(1), 1, dtype=features.dtype, device=features.device))
    return torch.where(counts > 0, sums / counts.clamp_min(1), features)
