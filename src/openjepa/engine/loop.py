"""The loop every training task runs on: steps, then hooks, then a checkpoint, then a stop.

``run_steps`` calls the task's ``step_fn(step)`` for each optimiser step; after it, the ``Hook``s
whose ``when`` holds for that point (logging, probes, validation, the checkpoint) run in the order
given. The loop decides the save points (every epoch's end, the last step, a stop signal, every
``save_every`` steps) and owns the one stop path: a stop signal is acted on only after the hooks
and the checkpoint of that step, on every process at the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..distributed import World
from .signals import StopSignals


@dataclass(frozen=True)
class Tick:
    """Where the loop is after a step: ``step`` optimiser steps done."""

    step: int
    epoch: int  # whole epochs done
    epoch_end: bool  # this step finished an epoch
    last: bool  # the last step of this call (the run's end, or max_steps)
    stopping: bool  # a stop signal arrived: after the hooks and the checkpoint, the run stops
    save: bool  # a save point (epoch end, last step, stop signal, or every save_every steps)


@dataclass(frozen=True)
class Hook:
    """``fn(tick)`` after the steps where ``when(tick)`` holds. ``where`` says which processes run
    it: 'main' (process 0 alone), 'all' (every process: it communicates, e.g. averages the loss), or
    'shards' (every process when the model is sharded under FSDP, whose forward and state gathering
    are collective; process 0 alone otherwise)."""

    fn: Callable[[Tick], None]
    when: Callable[[Tick], bool]
    where: str = "main"

    def runs_here(self, world: World, sharded: bool) -> bool:
        return world.main or self.where == "all" or (self.where == "shards" and sharded)


def run_steps(
    step_fn: Callable[[int], None],
    start: int,
    stop: int,
    steps_per_epoch: int,
    hooks: list[Hook],
    world: World,
    device: torch.device,
    latest: Path,
    sharded: bool = False,
    save_every: int = 0,
    closers: tuple[Callable[[], None], ...] = (),
) -> None:
    """Steps ``start .. stop - 1``, each followed by its hooks. A stop signal (SIGTERM, SIGUSR1,
    SIGUSR2, Ctrl-C) makes that step a save point; after its hooks the run raises ``Preempted``
    naming ``latest``. ``closers`` run however the loop ends (loader workers, progress bar, writers)."""
    signals = StopSignals()
    try:
        for step in range(start, stop):
            step_fn(step)
            done = step + 1
            epoch_end = done % steps_per_epoch == 0
            stopping = world.any(signals.received is not None, device)
            save = epoch_end or done == stop or stopping or bool(save_every and done % save_every == 0)
            tick = Tick(done, done // steps_per_epoch, epoch_end, done == stop, stopping, save)
            for hook in hooks:
                if hook.when(tick) and hook.runs_here(world, sharded):
                    hook.fn(tick)
            if stopping:
                signals.stop(latest, f"step {done}")
    finally:
        signals.restore()
        for close in closers:
            close()
