"""A grid of linear heads on every token of frozen patch features ([N, h, w, D]), trained together
in one pass: the engine of the dense probes (``dense``). As ``linear`` does for pooled features,
each (learning rate, weight decay) of the grid gets its own head, all heads share the batches and
one matrix product, and the caller chooses one on held-out images; tokens are standardised by the
statistics of the images the heads are fitted on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.images import DataError


@dataclass
class TokenStats:
    """The per-feature mean and standard deviation (never below 1e-6) of a set of tokens."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, tokens: torch.Tensor, chunk: int = 256) -> TokenStats:
        total = squares = 0.0
        for i in range(0, len(tokens), chunk):  # in chunks: a float64 copy of every token would not fit
            x = tokens[i : i + chunk].reshape(-1, tokens.size(-1)).double()
            total, squares = total + x.sum(0), squares + x.square().sum(0)
        n = tokens[..., 0].numel()
        mean = total / n
        var = (squares / n - mean.square()).clamp_min(0) * n / max(n - 1, 1)
        return cls(mean.float(), var.sqrt().float().clamp_min(1e-6))

    def apply(self, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
        return (tokens.to(device).float() - self.mean.to(device)) / self.std.to(device)


def image_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, val) image indices: a seeded random ``val_fraction`` (at least one image) held out."""
    if n < 2:
        raise DataError(f"the training set ({n} image) is too small to hold out images for choosing the head")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    return order[n_val:].sort().values, order[:n_val].sort().values


def image_batches(indices: torch.Tensor, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` batches of ``indices``, in passes of fresh random order."""
    batch_size = min(batch_size, len(indices))
    order, pos = indices[torch.randperm(len(indices), generator=generator)], 0
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = indices[torch.randperm(len(indices), generator=generator)], 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def apply_heads(x: torch.Tensor, weights: torch.Tensor, biases: torch.Tensor) -> torch.Tensor:
    """Tokens [B, h, w, D], heads [G, D, O] and [G, O] -> [G, B, h, w, O], all heads in one GEMM."""
    heads, dim, outputs = weights.shape
    flat = x.reshape(-1, dim) @ weights.permute(1, 0, 2).reshape(dim, heads * outputs)
    return (flat.view(*x.shape[:-1], heads, outputs) + biases).movedim(-2, 0)


def train_grid(
    tokens: torch.Tensor,
    fit: torch.Tensor,
    outputs: int,
    loss_of,
    lrs,
    wds,
    steps: int,
    batch_size: int,
    seed: int,
    stats: TokenStats,
    device: torch.device,
):
    """One linear head (D -> ``outputs`` per token) per (lr, wd), trained together: AdamW with a
    cosine schedule, weight decay on the weights only, zero start. ``loss_of(out [G, B, h, w, O],
    idx)`` is the heads' summed loss on the images ``idx`` (heads share nothing, so each gets its
    own gradient). Returns weights [G, D, O], biases [G, O] and the grid."""
    grid = [(lr, wd) for lr in lrs for wd in wds]
    weights = [torch.zeros(tokens.size(-1), outputs, device=device, requires_grad=True) for _ in grid]
    biases = [torch.zeros(outputs, device=device, requires_grad=True) for _ in grid]
    opt = torch.optim.AdamW(
        [{"params": [w], "lr": lr, "weight_decay": wd} for w, (lr, wd) in zip(weights, grid)]
        + [{"params": [b], "lr": lr, "weight_decay": 0.0} for b, (lr, _) in zip(biases, grid)]
    )
    base_lrs = [group["lr"] for group in opt.param_groups]
    batches = image_batches(fit, batch_size, steps, torch.Generator().manual_seed(seed))
    for step, idx in enumerate(batches):
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        out = apply_heads(stats.apply(tokens[idx], device), torch.stack(weights), torch.stack(biases))
        opt.zero_grad(set_to_none=True)
        loss_of(out, idx).backward()
        opt.step()
    return torch.stack(weights).detach(), torch.stack(biases).detach(), grid


@torch.no_grad()
def head_outputs(
    tokens: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    biases: torch.Tensor,
    stats: TokenStats,
    device: torch.device,
    batch_size: int,
):
    """(idx, [G, B, h, w, O]) for the images ``indices``, a batch at a time."""
    for i in range(0, len(indices), batch_size):
        idx = indices[i : i + batch_size]
        yield idx, apply_heads(stats.apply(tokens[idx], device), weights, biases)


def grid_report(name: str, grid, values) -> dict:
    return {f"grid_val_{name}": {f"lr={lr:g},wd={wd:g}": round(v, 4) for (lr, wd), v in zip(grid, values)}}
