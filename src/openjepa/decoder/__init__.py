"""The generative decoder (the paper's Fig. 6): a conditional diffusion model fitted on a run's
frozen representations, to draw what the predictor predicts for hidden blocks. ``settings``
(its settings), ``data`` (the split, the features, the hidden blocks), ``run`` (the fit, on the
engine), ``state`` (its checkpoint in RUN/decoder), ``imagine`` (samples under three conditions)."""

from .data import (
    context_condition,
    draw_hidden,
    fill_predictions,
    hidden_positions,
    read_images,
    split,
    target_grid,
    to_unit,
)
from .imagine import CONDITIONS, Imagined, conditions, imagine_images
from .run import LOG_COLUMNS, fit_decoder
from .settings import NOT_MATHEMATICS, DecoderSettings
from .state import FOLDER, load_decoder, run_checkpoint

__all__ = [
    "context_condition",
    "draw_hidden",
    "hidden_positions",
    "read_images",
    "split",
    "target_grid",
    "to_unit",
    "CONDITIONS",
    "Imagined",
    "conditions",
    "fill_predictions",
    "imagine_images",
    "LOG_COLUMNS",
    "fit_decoder",
    "NOT_MATHEMATICS",
    "DecoderSettings",
    "FOLDER",
    "load_decoder",
    "run_checkpoint",
]
