"""Opt-in terms against (dimensional) collapse, added to the I-JEPA loss; all off by default.

All act on the context encoder's output averaged over its tokens, one vector per image: a
representation that stops depending on the image (every image mapped to the same pooled vector,
patch features that encode position only) is exactly what they penalise. Per-token statistics
cannot see that collapse, since position alone gives tokens spread.

- ``variance_covariance``: C-JEPA's terms (Mo & Tong, NeurIPS 2024), as VICReg's: a hinge that
  keeps each dimension's standard deviation across images at least ``gamma``, and the sum of the
  squared off-diagonal covariances divided by the width.
- ``invariance_loss``: C-JEPA's third VICReg term, the invariance of the mean: the squared distance
  between the context's pooled features (the vector the other terms see) and the target encoder's
  output on the whole image averaged over its tokens (no gradient: the vector a probe reads). It asks
  the pooled feature of a masked view to be that of the full image, which no per-token prediction
  asks; the variance/covariance terms on the same vector keep that from being met by a constant.
- ``sigreg``: LeJEPA's SIGReg (Balestriero & LeCun, 2025): the Epps-Pulley statistic of random
  1-D projections of the embeddings against a standard Gaussian; the directions are drawn anew
  every step from (seed, step), so every process uses the same ones.

The weights can decay over training (``meta.regularizer_final``): the sum is multiplied by a factor
that follows a cosine from 1 at step 0 to ``final`` at the schedule's last step, so a term that
keeps early training from collapsing need not keep pushing spread into unused directions later.

Under several processes the statistics are taken over the global batch: embeddings are gathered
with a gather whose backward sums each process's gradient, so that, after DDP averages the
parameter gradients, N processes train exactly as one process at the same global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .data.seeds import SIGREG, generator_for
from .engine.schedules import warmup_cosine


class _AllGather(torch.autograd.Function):
    """All processes' equal-shaped ``z`` -> a tuple of them, in rank order. Backward: each process's
    loss is the same function of the whole batch, so the gradient of its own rows is the sum over the
    processes of what each one's loss sends them (DDP then averages, as for any parameter)."""

    @staticmethod
    def forward(ctx, z):
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        summed = torch.stack(grads)
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


def gather_batch(z: torch.Tensor) -> torch.Tensor:
    """[B_r, D] on each process r -> [sum of B_r, D], differentiable; ``z`` itself on one process.
    Processes may hold different counts (images skipped as unreadable): each pads to the largest
    and the padding is cut away after the gather. (Our own autograd gather: PyTorch's
    ``torch.distributed.nn.functional.all_gather`` is deprecated, and a process that had run its
    backward aborted now and then at exit, 3 runs in 40 under gloo, after its work was done.)"""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    counts = [torch.zeros(1, dtype=torch.long, device=z.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([len(z)], device=z.device))
    counts = [int(c) for c in counts]
    padded = F.pad(z, (0, 0, 0, max(counts) - len(z))).contiguous()
    return torch.cat([part[:n] for part, n in zip(_AllGather.apply(padded), counts)], dim=0)


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """mean over dimensions of relu(gamma - sqrt(var + eps)), var across the batch (unbiased).
    ``eps`` keeps the gradient finite when a dimension is constant; 0 for fewer than 2 rows."""
    if len(z) < 2:
        return z.sum() * 0
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Sum of the squared off-diagonal entries of the batch covariance, divided by the width (0 for
    fewer than 2 rows)."""
    n, d = z.shape
    if n < 2:
        return z.sum() * 0
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)
    off = cov - torch.diag_embed(torch.diagonal(cov))
    return off.pow(2).sum() / d


def invariance_loss(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images and dimensions of (z - target)^2; ``target`` [N, D] is treated as fixed."""
    return (z - target.detach()).square().mean()


def random_directions(dim: int, slices: int, seed: int, step: int, device, dtype=torch.float32) -> torch.Tensor:
    """[dim, slices] unit vectors, a pure function of (seed, step): the same on every process."""
    g = generator_for(seed, SIGREG, step)
    a = torch.randn(dim, slices, generator=g)
    return (a / a.norm(dim=0, keepdim=True)).to(device=device, dtype=dtype)


def epps_pulley(x: torch.Tensor, t_max: float = 3.0, knots: int = 17) -> torch.Tensor:
    """Epps-Pulley statistic of each column of ``x`` [N, K] against N(0, 1), [K]:

        N * integral over t of |phi_N(t) - exp(-t^2/2)|^2 * exp(-t^2/2) dt,

    phi_N the empirical characteristic function of the column. The integrand is even in t, so it is
    integrated over [0, t_max] by the trapezoid rule on ``knots`` points and doubled."""
    n = x.size(0)
    t = torch.linspace(0.0, t_max, knots, device=x.device, dtype=torch.float32)
    weights = torch.full_like(t, t_max / (knots - 1))
    weights[0] = weights[-1] = weights[0] / 2
    window = torch.exp(-t.square() / 2)  # the Gaussian window, also the target's characteristic function
    xt = x.float().unsqueeze(-1) * t  # [N, K, T]
    real, imag = torch.cos(xt).mean(0), torch.sin(xt).mean(0)  # [K, T]
    err = (real - window).square() + imag.square()
    return n * 2 * (err * window * weights).sum(-1)


def sigreg(
    z: torch.Tensor, seed: int, step: int, slices: int = 256, t_max: float = 3.0, knots: int = 17
) -> torch.Tensor:
    """Mean Epps-Pulley statistic of ``slices`` random 1-D projections of ``z`` [N, D]."""
    directions = random_directions(z.size(1), slices, seed, step, z.device)
    return epps_pulley(z.float() @ directions, t_max, knots).mean()


class CollapseRegularizer:
    """The weighted sum of the terms a config turns on (``meta.variance_weight``,
    ``meta.covariance_weight``, ``meta.sigreg_weight``, ``meta.invariance_weight``), on the pooled
    context features."""

    def __init__(
        self,
        variance_weight: float = 0.0,
        covariance_weight: float = 0.0,
        variance_gamma: float = 1.0,
        sigreg_weight: float = 0.0,
        sigreg_slices: int = 256,
        seed: int = 0,
        final: float = 1.0,
        total_steps: int = 0,
        invariance_weight: float = 0.0,
    ):
        self.variance_weight, self.covariance_weight, self.variance_gamma = (
            variance_weight,
            covariance_weight,
            variance_gamma,
        )
        self.invariance_weight = invariance_weight
        self.sigreg_weight, self.sigreg_slices, self.seed = sigreg_weight, sigreg_slices, seed
        self.final, self.total_steps = final, total_steps  # total_steps 0: no schedule known, factor 1

    @classmethod
    def from_config(cls, meta, total_steps: int = 0) -> CollapseRegularizer:
        """The terms ``meta`` turns on; ``total_steps``: the run's schedule length, which
        ``meta.regularizer_final``'s cosine spans (0: unknown, the weights stay constant)."""
        return cls(
            meta.variance_weight,
            meta.covariance_weight,
            meta.variance_gamma,
            meta.sigreg_weight,
            meta.sigreg_slices,
            meta.seed,
            meta.regularizer_final,
            total_steps,
            meta.invariance_weight,
        )

    def factor(self, step: int) -> float:
        """The weights' multiplier at this step: cosine from 1 at step 0 to ``final`` at ``total_steps``."""
        if self.final == 1.0 or self.total_steps <= 0:
            return 1.0
        return warmup_cosine(max(0, step), 1.0, 1.0, self.final, 0, self.total_steps)

    @property
    def active(self) -> bool:
        return bool(self.variance_weight or self.covariance_weight or self.sigreg_weight or self.invariance_weight)

    def __call__(self, context, step: int, target=None) -> torch.Tensor:
        """context [B, Kc, D] (the context encoder's output), or a list of such for groups of images
        whose contexts differ in length -> the weighted regulariser over all of them, a scalar.
        ``target`` [B, D] (all groups' images, in order): the target encoder's output on each whole
        image averaged over its tokens, which the invariance term needs (and only it)."""
        groups = [context] if isinstance(context, torch.Tensor) else list(context)
        if self.invariance_weight and target is None:
            raise ValueError("the invariance term needs the target encoder's pooled output (target=...)")
        with torch.autocast(groups[0].device.type, enabled=False):  # statistics in fp32, whatever the step's autocast
            pooled = gather_batch(torch.cat([c.float().mean(dim=1) for c in groups]))
            total = self._terms(pooled, step)
            if self.invariance_weight:
                # over the global batch like the other terms, so uneven shares still give one process's loss
                total = total + self.invariance_weight * invariance_loss(pooled, gather_batch(target.float()))
            return self.factor(step) * total

    def _terms(self, z: torch.Tensor, step: int) -> torch.Tensor:
        total = z.new_zeros(())
        if self.variance_weight:
            total = total + self.variance_weight * variance_loss(z, self.variance_gamma)
        if self.covariance_weight:
            total = total + self.covariance_weight * covariance_loss(z)
        if self.sigreg_weight:
            total = total + self.sigreg_weight * sigreg(z, self.seed, step, self.sigreg_slices)
        return total
