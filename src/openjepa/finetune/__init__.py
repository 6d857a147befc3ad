"""Fine-tuning on the engine: ``config`` (its settings), ``data`` (splits, augmented items),
``recipe`` (layer decay, mixup, the LP-FT head), ``run`` (the loop), ``result`` (accuracy, result.json)."""

from ..api import make_callable
from .config import FinetuneConfig, load_settings
from .data import Augmented, Splits, make_splits
from .recipe import layer_of, param_groups, probe_head
from .result import accuracy_on
from .run import LOG_COLUMNS, finetune
from .state import NOT_MATHEMATICS, FinetuneState

__all__ = [
    "FinetuneConfig",
    "load_settings",
    "Augmented",
    "Splits",
    "make_splits",
    "layer_of",
    "param_groups",
    "probe_head",
    "accuracy_on",
    "LOG_COLUMNS",
    "finetune",
    "FinetuneState",
    "NOT_MATHEMATICS",
]

make_callable(__name__, finetune)
