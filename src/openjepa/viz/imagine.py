"""What the predictor "imagines" — by retrieval, not generation: for a masked target block, each
predicted token is matched to its nearest neighbour in a bank of real patch features (the
target encoder's layer-normed output, the space the predictor is trained to hit), and that
neighbour's pixels are pasted into the hole. Good retrievals mean the prediction carries the
block's content; the pixels shown were never produced by the model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..data.transforms import prepare
from ..ijepa import image_patches
from ..masks import masks_per_image
from .masks import to_rgb

GREY = 0.5


def unpatch(patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[N, C, p, p] -> [C, gh*p, gw*p]."""
    N, C, p, _ = patches.shape
    return patches.reshape(grid[0], grid[1], C, p, p).permute(2, 0, 3, 1, 4).reshape(C, grid[0] * p, grid[1] * p)


@torch.no_grad()
def build_bank(model, images: torch.Tensor, mean, std, batch_size: int = 256):
    """(features [n*N, D], pixels [n*N, C, p, p]) of every patch of ``images`` [n, C, H, W] in [0, 1];
    the features are ``model``'s training targets (``IJEPA.target_features``, whatever its
    ``target_layers``), the space its predictor is trained to hit."""
    encoder = model.target_encoder
    feats = torch.cat(
        [
            model.target_features(prepare(images[i : i + batch_size], encoder, mean, std)).flatten(0, 1)
            for i in range(0, len(images), batch_size)
        ]
    )
    return feats, image_patches(images, encoder.patch_size).flatten(0, 1)


def retrieve(bank: torch.Tensor, queries: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index of the nearest bank row (squared L2) for each query row."""
    sq = (bank.double() ** 2).sum(1)
    out = [
        (sq - 2 * queries[i : i + chunk].double() @ bank.double().T).argmin(1) for i in range(0, len(queries), chunk)
    ]
    return torch.cat(out)


@torch.no_grad()
def imagine(model, images: torch.Tensor, mean, std, sampler, bank_feats, bank_pixels, seed: int = 0) -> list:
    """For each image [C, H, W] in [0, 1]: (image, context, imagination, truth) as [C, H, W]
    tensors; the first target block of the image's own mask (``masks_per_image``: ``sampler``
    from ``seed``) is the hole."""
    encoder = model.encoder
    grid, p = encoder.grid, encoder.patch_size
    rows = []
    for img, (ctx, tgt) in zip(images, masks_per_image(sampler, len(images), torch.Generator().manual_seed(seed))):
        block = tgt[:, :1]
        pred = model.forward_context(prepare(img[None], encoder, mean, std), ctx, block)  # [1, 1, Kt, D]
        hit, ctx, tgt = retrieve(bank_feats, pred.flatten(0, 2)), ctx[0], block[0, 0]
        own = image_patches(img[None], p)[0]
        context = torch.full_like(own, GREY)
        context[ctx] = own[ctx]
        imagined, truth = context.clone(), context.clone()
        imagined[tgt] = bank_pixels[hit]
        truth[tgt] = own[tgt]
        rows.append([img, unpatch(context, grid), unpatch(imagined, grid), unpatch(truth, grid)])
    return rows


def imagination_figure(rows: list, scale: int = 4) -> Image.Image:
    """One row per image: image | masked context | retrieved "imagination" | truth."""
    H, W = rows[0][0].shape[-2:]
    tile_w, tile_h, pad = W * scale, H * scale, 4
    canvas = Image.new("RGB", (4 * (tile_w + pad), len(rows) * (tile_h + pad)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            im = Image.fromarray(np.rint(to_rgb(tile)).astype(np.uint8)).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(im, (c * (tile_w + pad), r * (tile_h + pad)))
    return canvas
