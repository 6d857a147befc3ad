"""Fine-tuning on the engine: ``config`` (its settings), ``data`` (splits, augmented items),
``recipe`` (layer decay, mixup, the LP-FT head), ``run`` (the loop), ``result`` (accuracy, result.json)."""

import sys
import types

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


class _CallablePackage(types.ModuleType):
    """``openjepa.finetune`` names both this package and its function: once the package is imported,
    the name holds the package, so calling it calls the function."""

    def __call__(self, *args, **kwargs):
        return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
