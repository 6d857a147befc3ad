"""Seeds of the input pipeline. Every random choice (data order, crop, flip, masks) is drawn from a
generator seeded by (seed, stream, micro-batch number[, position]), never from a worker's global
RNG: a batch depends only on the seed and its number, the same on 0 or 8 workers, and a resumed run
sees exactly the batches an uninterrupted one would."""
from __future__ import annotations

import numpy as np
import torch


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, stream, step, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_for(*parts))


# Streams of randomness, one per use, so that changing one never shifts another.
ORDER, CROP, MASK = 1, 2, 3
