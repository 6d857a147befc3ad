"""The mask picture: images with the context and the target blocks drawn over them, one row per
strategy (the look of the paper's masking figure), so mask settings can be checked before
spending GPU hours. Target block m is tinted with TARGET_COLOURS[m]; context patches keep the
image; patches in neither are darkened."""

from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..masks import mask_sampler_for

STRATEGIES = ("multiblock", "block", "rasterized", "random")
TARGET_COLOURS = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
    ],
    dtype=np.float64,
)
ALPHA = 0.6  # weight of a target colour over the image
DARK = 0.25  # brightness kept by patches that are neither context nor target
NEITHER, CONTEXT = -2, -1


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] (1 or 3 channels) -> [H, W, 3] float64 in 0..255."""
    img = image.detach().float().clamp(0, 1)
    img = img.expand(3, -1, -1) if img.size(0) == 1 else img[:3]
    return img.permute(1, 2, 0).double().numpy() * 255.0


def patch_labels(grid: tuple[int, int], context_idx: torch.Tensor, target_idx: torch.Tensor) -> np.ndarray:
    """[gh, gw] ints: NEITHER, CONTEXT, or the index m of the (last) target block holding the patch."""
    labels = np.full(grid[0] * grid[1], NEITHER)
    labels[context_idx.numpy()] = CONTEXT
    for m, block in enumerate(target_idx):
        labels[block.numpy()] = m
    return labels.reshape(grid)


def mask_overlay(
    image: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor, patch_size: int, scale: int = 1
) -> np.ndarray:
    """One image [C, H, W] with its masks ([Kc], [M, Kt]) drawn: uint8 [H*scale, W*scale, 3]."""
    rgb = to_rgb(image)
    grid = (rgb.shape[0] // patch_size, rgb.shape[1] // patch_size)
    labels = np.kron(patch_labels(grid, context_idx, target_idx), np.ones((patch_size, patch_size), dtype=int))
    out = rgb.copy()
    out[labels == NEITHER] *= DARK
    for m in range(len(target_idx)):
        hit = labels == m
        out[hit] = (1 - ALPHA) * rgb[hit] + ALPHA * TARGET_COLOURS[m % len(TARGET_COLOURS)]
    out = np.rint(out).astype(np.uint8)
    return np.kron(out, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else out


def sampler_for(cfg, strategy: str):
    cfg = copy.deepcopy(cfg)
    if strategy != cfg.mask.strategy:
        cfg.mask.options = {}
    cfg.mask.strategy = strategy
    return mask_sampler_for(cfg)


def mask_grid(
    images: torch.Tensor, cfg, strategies=STRATEGIES, seed: int = 0, scale: int = 4, label_width: int = 90
) -> Image.Image:
    """Images [B, C, S, S] in [0, 1] (S = cfg.data.crop_size) with masks from each strategy of
    ``cfg``'s mask settings, drawn from ``seed``: one row per strategy, its name on the left."""
    size, pad = images.size(-1) * scale, 4
    canvas = Image.new("RGB", (label_width + len(images) * (size + pad), len(strategies) * (size + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, strategy in enumerate(strategies):
        context_idx, target_idx = sampler_for(cfg, strategy)(len(images), torch.Generator().manual_seed(seed))
        y = row * (size + pad)
        draw.text((4, y + size // 2 - 6), strategy, fill="black")
        for col, image in enumerate(images):
            tile = mask_overlay(image, context_idx[col], target_idx[col], cfg.mask.patch_size, scale)
            canvas.paste(Image.fromarray(tile), (label_width + col * (size + pad), y))
    return canvas
