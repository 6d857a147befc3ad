"""Diffusion for the generative decoder: the cosine noise schedule (Nichol & Dhariwal, 2021) in
continuous time, the velocity target (Salimans & Ho, 2022) and DDIM sampling (Song et al., 2021)
with ``eta`` > 0, so that samples of one condition differ.

Images live in [-1, 1]. At time t in [0, 1] a clean image x0 and noise e give
x_t = sqrt(a(t)) x0 + sqrt(1 - a(t)) e, where a(t) ("alpha bar") falls from 1 at t = 0 to about
0 at t = 1. The network predicts the velocity v = sqrt(a) e - sqrt(1 - a) x0, from which both x0
and e follow; its loss is the mean squared error of v.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

OFFSET = 0.008  # the cosine schedule's s: keeps the noise at t = 0 from being exactly zero in sqrt(1 - a)
MIN_ALPHA_BAR = 1e-5  # a(1) is 0 in the formula; the sampler starts from (almost) pure noise


def alpha_bar(t: torch.Tensor) -> torch.Tensor:
    """a(t) = cos²((t + s) / (1 + s) · π/2) / cos²(s / (1 + s) · π/2), kept in [MIN_ALPHA_BAR, 1]."""
    f = torch.cos((t.double() + OFFSET) / (1 + OFFSET) * math.pi / 2) ** 2
    f0 = math.cos(OFFSET / (1 + OFFSET) * math.pi / 2) ** 2
    return (f / f0).clamp(MIN_ALPHA_BAR, 1.0).to(torch.float32)


def _per_image(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    a = _per_image(alpha_bar(t), x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def velocity(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    a = _per_image(alpha_bar(t), x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def diffusion_loss(
    denoiser: Callable, x0: torch.Tensor, features: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """The velocity's mean squared error at times ``t`` [B] with ``noise`` (both drawn by the caller,
    from the step's seed: the loss is a pure function of its arguments)."""
    prediction = denoiser(add_noise(x0, t, noise), t.to(x0.device), features)
    return F.mse_loss(prediction.float(), velocity(x0, t, noise).float())


@torch.no_grad()
def sample(
    denoiser: Callable,
    features: torch.Tensor,
    shape: tuple[int, ...],
    steps: int = 25,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images [B, C, H, W] in [-1, 1] drawn for ``features`` [B, N, D] in ``steps`` DDIM steps from
    t = 1 to t = 0. ``eta`` = 0 is deterministic DDIM, 1 draws fresh noise at every step as
    ancestral sampling does. All noise comes from ``generator`` on the CPU (the same draws on any
    device); at each step the predicted x0 is clipped to [-1, 1] and the noise recomputed from it."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = features.device
    x = torch.randn(shape, generator=generator).to(device)
    times = torch.linspace(1.0, 0.0, steps + 1)
    alphas = alpha_bar(times)
    for i in range(steps):
        a_t, a_s = float(alphas[i]), float(alphas[i + 1])
        t = torch.full((shape[0],), float(times[i]), device=device)
        v = denoiser(x, t, features).float()
        x0 = (math.sqrt(a_t) * x - math.sqrt(1 - a_t) * v).clamp(-1.0, 1.0)
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt(max((1 - a_s) / (1 - a_t) * (1 - a_t / a_s), 0.0))
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator).to(device)
    return x.clamp(-1.0, 1.0)
