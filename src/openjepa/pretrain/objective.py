"""The inputs of the pretraining objective a config selects (``meta.objective``; ``run`` builds its
model): the loader's transform and collate. The engine, the loop, the data sources, the optimiser
and the schedules are the same for every objective."""

from __future__ import annotations

from ..config import Config
from ..data import PretrainTransform
from ..data.augment import MultiCropTransform, collate_views


def pretrain_inputs(cfg: Config) -> tuple:
    """(transform, collate) of the loader: I-JEPA's crop with masks drawn in the collate (None: the
    loader's ``MaskCollator``), or DINO's multi-crop views stacked without masks."""
    if cfg.meta.objective == "dino":
        return MultiCropTransform.from_config(cfg), collate_views
    return PretrainTransform.from_config(cfg.data), None
