"""Pretraining on the engine: ``run`` (set-up, then the loop), ``step`` (forward, backward,
AdamW, EMA), ``state`` (checkpoints, resume, ``meta.init_from``), ``probes`` (collapse probe,
monitor)."""

from .probes import CollapseProbe, CollapseWatch, Monitor
from .run import LOG_COLUMNS, train
from .state import NOT_MATHEMATICS, checkpoint_state, restore_state
from .step import (
    accumulate,
    build_optimizer,
    forward_backward,
    optimizer_step,
    param_groups,
    record,
    set_hyperparameters,
    target_std,
)

__all__ = [
    "train",
    "LOG_COLUMNS",
    "CollapseProbe",
    "CollapseWatch",
    "Monitor",
    "NOT_MATHEMATICS",
    "checkpoint_state",
    "restore_state",
    "accumulate",
    "build_optimizer",
    "forward_backward",
    "optimizer_step",
    "param_groups",
    "record",
    "set_hyperparameters",
    "target_std",
]
