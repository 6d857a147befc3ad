"""The loop skeleton every training task runs on: run folders, stop signals, checkpoints, metrics,
schedules, parameter groups and ``run_steps``. Pretraining and fine-tuning are two step functions
on it (``openjepa.pretrain``, ``openjepa.finetune``)."""

from .checkpointer import Checkpointer, sections, warn_changed
from .loop import Hook, Tick, run_steps
from .metrics import CSVLog, Window, memory_mb, progress_bar, setup_logging, tensorboard, write_held_log
from .optim import decay_groups
from .rundir import RUN_MARKER, check_output, check_run_dir, is_run_dir, make_run_dir, run_kind, write_atomic
from .schedules import Schedules, linear, warmup_cosine
from .signals import Preempted, StopSignals, TrainingError

__all__ = [
    "Checkpointer",
    "sections",
    "warn_changed",
    "Hook",
    "Tick",
    "run_steps",
    "CSVLog",
    "Window",
    "memory_mb",
    "progress_bar",
    "setup_logging",
    "tensorboard",
    "write_held_log",
    "decay_groups",
    "RUN_MARKER",
    "check_output",
    "check_run_dir",
    "run_kind",
    "is_run_dir",
    "make_run_dir",
    "write_atomic",
    "Schedules",
    "linear",
    "warmup_cosine",
    "Preempted",
    "StopSignals",
    "TrainingError",
]
