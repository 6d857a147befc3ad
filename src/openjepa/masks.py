"""Mask samplers: which patches the context encoder sees and which target blocks are predicted.

``build_mask_sampler(name, grid=(H, W), **options)`` returns a callable
``sampler(batch_size, generator=None) -> (context_idx [B, Kc], target_idx [B, M, Kt])`` of flat
raster patch indices, sorted within each row. The four strategies are those of the paper's Table 6:

- ``multiblock`` (I-JEPA): M target blocks (scale 0.15-0.2, aspect 0.75-1.5) and one context
  block (scale 0.85-1.0, square) with every target removed.
- ``block``: one large target block, the context its complement.
- ``rasterized``: the grid cut into quadrants, one the context, the other three targets.
- ``random``: i.i.d. random patches as the target (as MAE), the rest the context.

Every strategy builds boolean masks on the grid, vectorised over the batch, then packs them into
index tensors of one length per batch. Where lengths differ, tokens are dropped uniformly at
random, never the last ones in raster order: the reference sampler's cut piles the context into
the top rows (its issue #60). Block corners are uniform over every valid position, the last row
and column included (the reference never reaches them: its PR #40).

``multiblock`` with ``reference=True`` reproduces the reference sampler instead, RNG call for RNG
call, for comparison; it is biased and should not be used for training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import BadInput


class MaskError(BadInput):
    """Mask settings that cannot be sampled on the grid; the message names the setting."""


Grid = tuple[int, int]
MaskSampler = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_MAX_CONTEXT_TRIES = 20
_MAX_TARGET_TRIES = 100


def _check_range(name: str, value, low: float, high: float) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise MaskError(f"{name} must be a pair [min, max], got {value!r}") from None
    if not (low < lo <= hi <= high) or not math.isfinite(hi):
        raise MaskError(f"{name} must satisfy {low} < min <= max <= {high}, got [{lo}, {hi}]")
    return lo, hi


def block_size(grid: Grid, scale: float, aspect: float) -> tuple[int, int]:
    """(h, w) of a block covering ``scale`` of the grid with height/width ``aspect``, rounded to
    whole patches and kept inside the grid."""
    area = scale * grid[0] * grid[1]
    h = int(round(math.sqrt(area * aspect)))
    w = int(round(math.sqrt(area / aspect)))
    return min(max(h, 1), grid[0]), min(max(w, 1), grid[1])


def _uniform(low_high: tuple[float, float], generator: torch.Generator | None) -> float:
    lo, hi = low_high
    return lo + float(torch.rand((), generator=generator)) * (hi - lo)


def place_blocks(
    batch: int, count: int, size: tuple[int, int], grid: Grid, generator: torch.Generator | None
) -> torch.Tensor:
    """[batch, count, H, W] boolean masks of h x w blocks, each corner uniform over all
    (H - h + 1) x (W - w + 1) valid positions."""
    (h, w), (H, W) = size, grid
    top = torch.randint(0, H - h + 1, (batch, count, 1), generator=generator)
    left = torch.randint(0, W - w + 1, (batch, count, 1), generator=generator)
    rows, cols = torch.arange(H), torch.arange(W)
    in_rows = (rows >= top) & (rows < top + h)
    in_cols = (cols >= left) & (cols < left + w)
    return in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)


def pack(masks: torch.Tensor, generator: torch.Generator | None, bucket: int = 0) -> torch.Tensor:
    """Boolean masks [B, K, N] -> sorted flat indices [B, K, L], L the smallest count (with ``bucket``,
    rounded down to a multiple of it when that leaves at least one bucket); masks with more than L
    patches keep a uniformly random subset of L."""
    counts = masks.sum(-1)
    length = int(counts.min())
    if length == 0:
        raise MaskError("a mask is empty; the mask settings leave no patch to keep")
    if bucket and length >= bucket:
        length -= length % bucket
    if bool((counts == length).all()):
        return masks.nonzero()[:, -1].reshape(*masks.shape[:-1], length)
    keys = torch.rand(masks.shape, generator=generator).masked_fill_(~masks, 2.0)
    return keys.argsort(dim=-1)[..., :length].sort(dim=-1).values


class MultiBlockSampler:
    """I-JEPA's multi-block masking. One target size and one context size are drawn per batch
    (targets are then whole blocks of one length, so no target patch is ever dropped); scale and
    aspect ratio are drawn independently (the reference draws both from one number).

    ``bucket`` (0: off) rounds the context length down to a multiple of that many tokens, dropping
    a uniformly random further few (fewer than ``bucket``) from each context, so that the step sees
    a few lengths (static shapes for a compiled or CUDA-graph step). Targets keep their whole blocks:
    their lengths are the products h x w the scale and aspect ranges allow, already few."""

    def __init__(
        self,
        grid: Grid,
        num_targets: int = 4,
        target_scale=(0.15, 0.2),
        target_aspect=(0.75, 1.5),
        context_scale=(0.85, 1.0),
        context_aspect=(1.0, 1.0),
        min_keep: int = 10,
        allow_overlap: bool = False,
        bucket: int = 0,
    ):
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_patches = self.grid[0] * self.grid[1]
        if not 0 <= bucket < self.num_patches:
            raise MaskError(f"bucket must be in [0, {self.num_patches}) tokens for a {self.grid} grid, got {bucket}")
        self.bucket = int(bucket)
        if num_targets < 1:
            raise MaskError(f"num_targets must be at least 1, got {num_targets}")
        self.num_targets = int(num_targets)
        self.target_scale = _check_range("target_scale", target_scale, 0.0, 1.0)
        self.target_aspect = _check_range("target_aspect", target_aspect, 0.0, math.inf)
        self.context_scale = _check_range("context_scale", context_scale, 0.0, 1.0)
        self.context_aspect = _check_range("context_aspect", context_aspect, 0.0, math.inf)
        if not 1 <= min_keep < self.num_patches:
            raise MaskError(f"min_keep must be in [1, {self.num_patches}) for a {self.grid} grid, got {min_keep}")
        self.min_keep = int(min_keep)
        self.allow_overlap = bool(allow_overlap)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None):
        B, grid, g = batch_size, self.grid, generator
        t_size = block_size(grid, _uniform(self.target_scale, g), _uniform(self.target_aspect, g))
        c_size = block_size(grid, _uniform(self.context_scale, g), _uniform(self.context_aspect, g))
        targets = place_blocks(B, self.num_targets, t_size, grid, g)
        context = self._context(targets, c_size, g)
        for _ in range(_MAX_TARGET_TRIES):
            bad = context.flatten(1).sum(1) < self.min_keep
            if not bad.any():
                break
            n = int(bad.sum())  # these targets leave too little room: draw them and their context again
            targets[bad] = place_blocks(n, self.num_targets, t_size, grid, g)
            context[bad] = self._context(targets[bad], c_size, g)
        else:
            raise MaskError(
                f"could not place a context of min_keep={self.min_keep} patches beside "
                f"{self.num_targets} targets of {t_size} on a {grid} grid; "
                f"lower min_keep or the target scale"
            )
        target_idx = pack(targets.flatten(2), g)
        context_idx = pack(context.flatten(1).unsqueeze(1), g, self.bucket).squeeze(1)
        return context_idx, target_idx

    def _context(self, targets: torch.Tensor, size: tuple[int, int], g) -> torch.Tensor:
        """A context block per sample minus the targets, re-placed where it keeps < min_keep."""
        free = ~targets.any(1) if not self.allow_overlap else torch.ones_like(targets[:, 0])
        context = place_blocks(len(targets), 1, size, self.grid, g)[:, 0] & free
        for _ in range(_MAX_CONTEXT_TRIES):
            bad = context.flatten(1).sum(1) < self.min_keep
            if not bad.any():
                break
            context[bad] = place_blocks(int(bad.sum()), 1, size, self.grid, g)[:, 0] & free[bad]
        return context


class BlockSampler:
    """Table 6 'block': one large target block; the context is everything else."""

    def __init__(self, grid: Grid, target_scale=(0.55, 0.65), target_aspect=(0.75, 1.5), min_keep: int = 10):
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_targets = 1
        self.target_scale = _check_range("target_scale", target_scale, 0.0, 1.0)
        self.target_aspect = _check_range("target_aspect", target_aspect, 0.0, math.inf)
        self.min_keep = int(min_keep)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None):
        g = generator
        size = block_size(self.grid, _uniform(self.target_scale, g), _uniform(self.target_aspect, g))
        target = place_blocks(batch_size, 1, size, self.grid, g)
        if (~target[0, 0]).sum() < self.min_keep:
            raise MaskError(
                f"a target block of {size} on a {self.grid} grid leaves fewer than "
                f"min_keep={self.min_keep} context patches; lower target_scale"
            )
        return pack((~target).flatten(2), g).squeeze(1), pack(target.flatten(2), g)


class RasterizedSampler:
    """Table 6 'rasterized': the grid cut into four quadrants; a random one is the context, the
    other three are the targets."""

    def __init__(self, grid: Grid):
        self.grid = (int(grid[0]), int(grid[1]))
        if min(self.grid) < 2:
            raise MaskError(f"rasterized masking needs a grid of at least 2x2, got {self.grid}")
        self.num_targets = 3
        H, W = self.grid
        rows, cols = torch.arange(H).unsqueeze(1), torch.arange(W).unsqueeze(0)
        quadrant = (rows >= H // 2).long() * 2 + (cols >= W // 2).long()
        self.quadrants = torch.stack([quadrant == q for q in range(4)]).flatten(1)  # [4, N]

    def __call__(self, batch_size: int, generator: torch.Generator | None = None):
        context_q = torch.randint(0, 4, (batch_size,), generator=generator)
        others = torch.stack([torch.tensor([q for q in range(4) if q != c]) for c in range(4)])
        context = self.quadrants[context_q].unsqueeze(1)
        targets = self.quadrants[others[context_q]]
        return pack(context, generator).squeeze(1), pack(targets, generator)


class RandomSampler:
    """Table 6 'random': a ``target_ratio`` share of patches drawn i.i.d. as one target set."""

    def __init__(self, grid: Grid, target_ratio: float = 0.6):
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_targets = 1
        n = self.grid[0] * self.grid[1]
        self.num_target_patches = int(round(target_ratio * n))
        if not 0 < self.num_target_patches < n:
            raise MaskError(f"target_ratio must leave at least one target and one context patch, got {target_ratio}")

    def __call__(self, batch_size: int, generator: torch.Generator | None = None):
        n = self.grid[0] * self.grid[1]
        order = torch.rand(batch_size, n, generator=generator).argsort(dim=1)
        target_idx = order[:, : self.num_target_patches].sort(dim=1).values.unsqueeze(1)
        context_idx = order[:, self.num_target_patches :].sort(dim=1).values
        return context_idx, target_idx


class ReferenceMultiBlockSampler:
    """The reference repository's MaskCollator, reproduced call for call: block sizes from a
    generator seeded with a batch counter, one uniform number for both scale and aspect ratio,
    corners from the given generator (the global RNG when None) with an exclusive upper bound, the
    context relaxed after 20 failed tries, and every mask cut to the batch's shortest by dropping
    its last tokens in raster order. For comparison only."""

    def __init__(
        self,
        grid: Grid,
        num_targets: int = 4,
        target_scale=(0.15, 0.2),
        target_aspect=(0.75, 1.5),
        context_scale=(0.85, 1.0),
        context_aspect=(1.0, 1.0),
        min_keep: int = 10,
        allow_overlap: bool = False,
    ):
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_targets = num_targets
        self.target_scale, self.target_aspect = tuple(target_scale), tuple(target_aspect)
        self.context_scale, self.context_aspect = tuple(context_scale), tuple(context_aspect)
        self.min_keep = min_keep
        self.allow_overlap = allow_overlap
        self.counter = -1

    def seek(self, batch: int) -> None:
        """The next call draws its block sizes as the reference's call for batch ``batch`` does: its
        counter is shared by the loader's workers and wound forward on resume, so it is the batch
        number (the collator seeks before each call, whatever worker or resume it runs in)."""
        self.counter = int(batch) - 1

    def _size(self, g: torch.Generator, scale, aspect_range) -> tuple[int, int]:
        u = torch.rand(1, generator=g).item()
        keep = int(self.grid[0] * self.grid[1] * (scale[0] + u * (scale[1] - scale[0])))
        aspect = aspect_range[0] + u * (aspect_range[1] - aspect_range[0])
        h, w = int(round(math.sqrt(keep * aspect))), int(round(math.sqrt(keep / aspect)))
        return min(h, self.grid[0] - 1), min(w, self.grid[1] - 1)

    def _block(self, size, generator, taken=None):
        """A block's flat indices (ascending) and its set of cells. ``taken``: the target blocks'
        cell sets, removed from this block (the reference multiplies by their complements); after
        every ``_MAX_CONTEXT_TRIES`` failed tries one fewer of them is removed, the last first.
        Plain Python on index lists: the same draws and results as the reference's tensor masks,
        at a fraction of their per-call cost."""
        (h, w), (H, W) = size, self.grid
        taken = taken or []
        removed = set().union(*taken)
        tries, timeout = 0, _MAX_CONTEXT_TRIES
        while True:
            top = int(torch.randint(0, H - h, (1,), generator=generator))
            left = int(torch.randint(0, W - w, (1,), generator=generator))
            cells = [r * W + c for r in range(top, top + h) for c in range(left, left + w)]
            idx = [i for i in cells if i not in removed] if removed else cells
            if len(idx) > self.min_keep:
                break
            timeout -= 1
            if timeout == 0:
                tries, timeout = tries + 1, _MAX_CONTEXT_TRIES
                removed = set().union(*taken[: max(len(taken) - tries, 0)])
        return idx, set(cells)

    def __call__(self, batch_size: int, generator: torch.Generator | None = None):
        self.counter += 1
        g = torch.Generator().manual_seed(self.counter)
        t_size = self._size(g, self.target_scale, self.target_aspect)
        c_size = self._size(g, self.context_scale, (1.0, 1.0))
        targets, contexts = [], []
        for _ in range(batch_size):
            blocks = [self._block(t_size, generator) for _ in range(self.num_targets)]
            targets.append([b[0] for b in blocks])
            taken = None if self.allow_overlap else [b[1] for b in blocks]
            contexts.append(self._block(c_size, generator, taken)[0])
        kt = min(len(t) for ts in targets for t in ts)
        kc = min(len(c) for c in contexts)
        target_idx = torch.tensor([[t[:kt] for t in ts] for ts in targets], dtype=torch.long)
        return torch.tensor([c[:kc] for c in contexts], dtype=torch.long), target_idx


SAMPLERS = {
    "multiblock": MultiBlockSampler,
    "block": BlockSampler,
    "rasterized": RasterizedSampler,
    "random": RandomSampler,
}


def masks_per_image(sampler: MaskSampler, n: int, generator: torch.Generator | None = None) -> list:
    """[(context_idx [1, Kc], target_idx [1, M, Kt])] for ``n`` images, each drawn alone from
    ``generator``. One draw for a batch cuts every context to the batch's shortest (what training
    needs: one tensor); a figure or a measurement shows each image with its own mask."""
    return [sampler(1, generator) for _ in range(n)]


def build_mask_sampler(name: str, grid: Grid, reference: bool = False, **options) -> MaskSampler:
    """A sampler by strategy name; ``reference=True`` (multiblock only) gives the reference
    repository's sampler. Unknown names or options raise MaskError (a ValueError) naming them."""
    if name not in SAMPLERS:
        raise MaskError(f"unknown mask strategy {name!r}; choose one of {', '.join(SAMPLERS)}")
    if reference and name != "multiblock":
        raise MaskError("reference=True reproduces the reference multiblock sampler only")
    cls = ReferenceMultiBlockSampler if reference else SAMPLERS[name]
    try:
        return cls(tuple(grid), **options)
    except TypeError as e:
        raise MaskError(f"mask strategy {name!r}: {e}") from None


def mask_sampler_for(cfg) -> MaskSampler:
    """The sampler a config's ``mask`` section describes, on its grid (``data.crop_size`` over
    ``mask.patch_size`` patches a side)."""
    m, grid = cfg.mask, (cfg.data.crop_size // cfg.mask.patch_size,) * 2
    if m.strategy == "block":
        return build_mask_sampler("block", grid, **{"min_keep": m.min_keep, **m.options})
    if m.strategy != "multiblock":
        return build_mask_sampler(m.strategy, grid, **m.options)
    return build_mask_sampler(
        "multiblock",
        grid,
        reference=m.reference_sampler,
        num_targets=m.num_pred_masks,
        target_scale=m.pred_mask_scale,
        target_aspect=m.aspect_ratio,
        context_scale=m.enc_mask_scale,
        min_keep=m.min_keep,
        allow_overlap=m.allow_overlap,
        **({"bucket": m.bucket} if m.bucket else {}),
        **m.options,
    )
