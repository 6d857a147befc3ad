"""Seeds, and the one registry of random streams. Every random choice (data order, crop, flip,
masks, fine-tuning's augmentations, the regularisers' random directions) is drawn from a generator
seeded by (seed, stream, step or batch number[, position]), never from a worker's global RNG: a
batch depends only on the seed and its number, the same on 0 or 8 workers, and a resumed run sees
exactly the batches an uninterrupted one would."""

from __future__ import annotations

import numpy as np
import torch


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, stream, step, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(*parts))


# The streams, one per use, so that changing one never shifts another. A number, once given, is
# never reused: checkpoints resume with the same draws.
ORDER, CROP, MASK = 1, 2, 3  # pretraining: the epoch's permutation, each image's crop, each group's masks
SHUFFLE = 4  # tar shards: each loader slot's shuffle buffer
SCENES = 5  # the procedural scenes: each scene from (seed, SCENES, index)
FT_ORDER, FT_AUGMENT, FT_RANDAUG, FT_DROP_PATH, FT_MIXUP, FT_SPLIT = 11, 12, 13, 14, 15, 16  # fine-tuning
SIGREG = 21  # the SIGReg regulariser's random directions, per step
# the generative decoder (openjepa.decoder): its split of the data, each epoch's order, each step's
# diffusion times and noise, each step's hidden blocks, the figure's masks and samples, its initial weights
DEC_SPLIT, DEC_ORDER, DEC_NOISE, DEC_HIDE, DEC_FIGURE, DEC_INIT = 31, 32, 33, 34, 35, 36
DINO_VIEWS = 41  # DINO's multi-crop views: every crop and photometric draw of an image, per (batch, index)


def stream_of(transform) -> int:
    """The stream a pretraining transform draws each image's choices from: its own where it names
    one (DINO's views: ``DINO_VIEWS``), else the crop's."""
    return getattr(transform, "stream", CROP)
