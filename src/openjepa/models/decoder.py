"""The generative decoder's network: a small U-Net that denoises an image conditioned on a grid of
patch representations (the paper's Fig. 6 uses RCDM, a diffusion model conditioned on
representations; this is a small one of that kind, written for CPUs and small images).

The condition is the target encoder's layer-normed patch features [B, N, D] on the patch grid.
They enter in two ways: as a map (projected to a few channels, mixed with their neighbours on
the grid, upsampled to each resolution and added inside every residual block, so each pixel
sees the features of its own patch), and pooled (added to the timestep embedding that scales
and shifts every block's normalisation: what the whole image is). Positions whose features are
hidden carry the learned ``unknown`` vector instead (``condition``), so one network draws an
image from all the features, or fills the hidden blocks itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of diffusion times ``t`` [B] in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv; the condition map added; normalisation scaled and shifted by the
    embedding (adaptive GroupNorm); SiLU, 3x3 conv; a residual connection."""

    def __init__(self, channels_in: int, channels: int, emb_dim: int, cond_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(channels_in), nn.Conv2d(channels_in, channels, 3, padding=1)
        self.cond = nn.Conv2d(cond_dim, channels, 1)
        self.emb = nn.Linear(emb_dim, 2 * channels)
        self.norm2, self.conv2 = _norm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels, 1) if channels_in != channels else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.cond(cond)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Denoiser(nn.Module):
    """``forward(noisy [B, C, H, W], t [B], features [B, N, D])`` -> the predicted velocity
    (``models.diffusion``) [B, C, H, W]. ``grid`` is the patch grid (gh, gw) of the features, whose
    patches tile ``img_size``; ``widths`` the channels at each resolution (halved between levels)."""

    def __init__(
        self,
        in_chans: int,
        img_size: tuple[int, int],
        grid: tuple[int, int],
        feature_dim: int,
        widths: tuple[int, ...] = (32, 64, 64),
        cond_dim: int = 32,
    ):
        super().__init__()
        if img_size[0] % grid[0] or img_size[1] % grid[1]:
            raise ValueError(f"the patch grid {grid} does not tile the image size {img_size}")
        self.in_chans, self.img_size, self.grid, self.feature_dim = in_chans, tuple(img_size), tuple(grid), feature_dim
        self.widths, self.cond_dim = tuple(widths), cond_dim
        self.unknown = nn.Parameter(torch.zeros(feature_dim))  # what a hidden position carries
        emb_dim = 4 * widths[0]
        self.time_mlp = nn.Sequential(nn.Linear(widths[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.pooled = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, emb_dim))
        self.cond_in = nn.Sequential(
            nn.Conv2d(feature_dim, cond_dim, 1), nn.SiLU(), nn.Conv2d(cond_dim, cond_dim, 3, padding=1)
        )
        self.stem = nn.Conv2d(in_chans + cond_dim, widths[0], 3, padding=1)
        self.down, self.resample_down = nn.ModuleList(), nn.ModuleList()
        channels = widths[0]
        for level, width in enumerate(widths):
            self.down.append(ResBlock(channels, width, emb_dim, cond_dim))
            channels = width
            if level < len(widths) - 1:
                self.resample_down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = nn.ModuleList([ResBlock(channels, channels, emb_dim, cond_dim) for _ in range(2)])
        self.up, self.resample_up = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            self.up.append(ResBlock(channels + widths[level], widths[level], emb_dim, cond_dim))
            channels = widths[level]
            if level > 0:
                self.resample_up.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.out = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, in_chans, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def config(self) -> dict:
        """The constructor's arguments: what a checkpoint needs to rebuild the network."""
        return {
            "in_chans": self.in_chans,
            "img_size": list(self.img_size),
            "grid": list(self.grid),
            "feature_dim": self.feature_dim,
            "widths": list(self.widths),
            "cond_dim": self.cond_dim,
        }

    def condition(self, features: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, N, D] with the positions where ``hidden`` [B, N] (bool) holds replaced by the
        learned ``unknown`` vector."""
        if hidden is None:
            return features
        return torch.where(hidden[..., None], self.unknown.to(features.dtype), features)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        B, _, H, W = noisy.shape
        if (H, W) != self.img_size:
            raise ValueError(f"the denoiser draws {self.img_size} images, got {(H, W)}")
        levels = len(self.widths) - 1
        pad_h, pad_w = -H % 2**levels, -W % 2**levels  # every level halves the size: pad to a multiple
        grid = features.transpose(1, 2).reshape(B, self.feature_dim, *self.grid)
        cond = F.interpolate(self.cond_in(grid.to(noisy.dtype)), size=(H, W), mode="nearest")
        cond = F.pad(cond, (0, pad_w, 0, pad_h))
        emb = self.time_mlp(timestep_embedding(t, self.widths[0]).to(noisy.dtype))
        emb = F.silu(emb + self.pooled(features.mean(1).to(noisy.dtype)))
        x = self.stem(torch.cat([F.pad(noisy, (0, pad_w, 0, pad_h)), cond], dim=1))
        conds, skips = [cond], []
        for level, block in enumerate(self.down):
            x = block(x, emb, conds[-1])
            skips.append(x)
            if level < levels:
                x = self.resample_down[level](x)
                conds.append(F.avg_pool2d(conds[-1], 2))
        for block in self.middle:
            x = block(x, emb, conds[-1])
        for i, block in enumerate(self.up):
            level = levels - i
            x = block(torch.cat([x, skips[level]], dim=1), emb, conds[level])
            if level > 0:
                x = self.resample_up[i](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.out(x)[..., :H, :W]
