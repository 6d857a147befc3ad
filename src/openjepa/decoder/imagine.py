"""What the predictor imagines, decoded: for images with the run's target blocks hidden, samples
of the decoder under three conditions that differ only inside the hidden blocks.

- ``target``: the target encoder's features everywhere (how well the decoder reconstructs);
- ``predicted``: inside the hidden blocks, the predictor's outputs from the context (what it imagines);
- ``control``: inside the hidden blocks, the learned unknown vector (the decoder's own guess).

Around the hidden blocks the decoder sees what its fit saw (``DecoderSettings.condition``): the
target features of the whole image, or those of the context computed from it alone.

The predictor is trained to hit ``IJEPA.target_features`` (the target encoder's output,
layer-normed: ``forward_loss(predictor(...), gather_targets(target_features))``), so its outputs go
into the grid as they are, with no further norm. A patch in two target blocks takes the mean of
its two predictions. The three conditions share their noise (sample k of an image starts from
the same draws under each), so their differences are the conditions', not the noise's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.seeds import DEC_FIGURE, generator_for
from ..data.transforms import prepare
from ..masks import masks_per_image
from ..models.diffusion import sample
from .data import context_condition, fill_predictions, hidden_positions

CONDITIONS = ("target", "predicted", "control")


@dataclass
class Imagined:
    """``images`` [B, C, H, W] in [0, 1]; ``context`` / ``hidden`` [B, N] bool on the patch grid;
    ``samples[condition]`` [B, K, C, H, W] in [0, 1]; ``grid`` and ``patch_size`` of the patches."""

    images: torch.Tensor
    context: torch.Tensor
    hidden: torch.Tensor
    samples: dict[str, torch.Tensor]
    grid: tuple[int, int]
    patch_size: int

    def pixel_mask(self, which: torch.Tensor | None = None) -> torch.Tensor:
        """[B, H, W] bool: the pixels of the patches where ``which`` [B, N] holds (default: hidden)."""
        which = self.hidden if which is None else which
        p = self.patch_size
        cells = which.reshape(len(which), *self.grid)
        return cells.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)


@torch.no_grad()
def conditions(
    model, denoiser, images: torch.Tensor, mean, std, context_idx, target_idx, condition: str = "full"
) -> dict[str, torch.Tensor]:
    """The three condition grids [B, N, D] for ``images`` [B, C, H, W] in [0, 1] with the blocks
    ``target_idx`` hidden; ``model`` the frozen run. ``condition`` (``DecoderSettings.condition``):
    around the hidden blocks, the features of the whole image ('full') or those the target encoder
    computes from the context alone, with the unknown vector outside the context ('context')."""
    device = next(model.parameters()).device
    x = prepare(images, model.target_encoder, mean, std).to(device)
    context_idx, target_idx = context_idx.to(device), target_idx.to(device)
    features = model.target_features(x).float()
    predictions = model.predictor(model.encoder(x, context_idx), context_idx, target_idx).float()
    if condition == "context":
        seen = context_condition(model, denoiser, x, context_idx)
    else:
        seen = denoiser.condition(features, hidden_positions(target_idx, features.size(1)).to(device))
    return {"target": features, "predicted": fill_predictions(seen, target_idx, predictions), "control": seen}


@torch.no_grad()
def imagine_images(
    model,
    denoiser,
    images: torch.Tensor,
    mean,
    std,
    sampler,
    samples: int = 3,
    seed: int = 0,
    steps: int = 25,
    eta: float = 1.0,
    condition: str = "full",
    chunk: int = 256,
) -> Imagined:
    """``samples`` decoded images per condition for each of ``images`` [B, C, H, W] in [0, 1], with
    target blocks drawn by the run's ``sampler`` for each image alone (as one batch, every context
    would be cut to the batch's shortest); masks and noise are drawn from ``seed`` alone.
    ``steps``, ``eta``, ``condition``: the decoder's settings (``DecoderSettings``)."""
    masks = masks_per_image(sampler, len(images), generator_for(seed, DEC_FIGURE, 0))
    per_image = [conditions(model, denoiser, images[i : i + 1], mean, std, *m, condition) for i, m in enumerate(masks)]
    grids = {name: torch.cat([grid[name] for grid in per_image]) for name in CONDITIONS}
    denoiser = denoiser.to(next(iter(grids.values())).device)
    out = {}
    per_chunk = max(1, chunk // samples)
    for name in CONDITIONS:
        drawn = []
        for c, start in enumerate(range(0, len(images), per_chunk)):
            grid = grids[name][start : start + per_chunk].repeat_interleave(samples, dim=0)
            g = generator_for(seed, DEC_FIGURE, 1, c)  # the same draws for every condition
            x = sample(denoiser, grid, (len(grid), *images.shape[1:]), steps, eta, g)
            drawn.append(((x.float().cpu() + 1) / 2).reshape(-1, samples, *images.shape[1:]))
        out[name] = torch.cat(drawn)
    tokens = grids["target"].size(1)
    context = torch.cat([hidden_positions(c[:, None], tokens) for c, _ in masks])
    hidden = torch.cat([hidden_positions(t, tokens) for _, t in masks])
    return Imagined(images, context, hidden, out, denoiser.grid, images.size(-1) // denoiser.grid[1])
