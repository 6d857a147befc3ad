"""Schedules as pure functions of the step: a resumed run needs only the step to be where it was.

One warmup + cosine rule serves every loop. Its argument is the number of optimiser steps taken
*after* this one (``step + 1``), as the reference's schedulers are stepped before use: the first
step already has a non-zero LR, and the last one reaches the final value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_cosine(t: float, start: float, peak: float, final: float, warmup: int, total: int) -> float:
    """Linear from ``start`` to ``peak`` over ``warmup`` steps, then a cosine from ``peak`` to
    ``final`` at ``total``, held there after it."""
    if t < warmup:
        return start + t / max(1, warmup) * (peak - start)
    progress = min((t - warmup) / max(1, total - warmup), 1.0)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))


def linear(t: float, start: float, end: float, total: int) -> float:
    """From ``start`` at 0 to ``end`` at ``total``, held there after it."""
    return start + min(t / max(1, total), 1.0) * (end - start)


@dataclass(frozen=True)
class Schedules:
    """Pretraining's schedules, as functions of the 0-based optimiser step: LR linear warmup from
    start_lr to lr, then cosine to final_lr; weight decay cosine from weight_decay to
    final_weight_decay; EMA momentum linear from ema[0] to ema[1]. LR and WD are evaluated at
    step + 1 and the momentum at step, as the reference's step counters do."""

    start_lr: float
    lr: float
    final_lr: float
    warmup_steps: int
    total_steps: int  # ipe_scale x epochs x steps per epoch
    wd: float
    final_wd: float
    ema_start: float
    ema_end: float

    @classmethod
    def from_config(cls, o, steps_per_epoch: int) -> Schedules:
        """From the ``optimization`` section ``o``."""
        total = int(o.ipe_scale * o.epochs * steps_per_epoch)
        return cls(
            o.start_lr,
            o.lr,
            o.final_lr,
            int(o.warmup * steps_per_epoch),
            total,
            o.weight_decay,
            o.final_weight_decay,
            o.ema[0],
            o.ema[1],
        )

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step + 1, self.start_lr, self.lr, self.final_lr, self.warmup_steps, self.total_steps)

    def wd_at(self, step: int) -> float:
        return warmup_cosine(step + 1, self.wd, self.wd, self.final_wd, 0, self.total_steps)

    def momentum_at(self, step: int) -> float:
        return linear(step, self.ema_start, self.ema_end, self.total_steps)
