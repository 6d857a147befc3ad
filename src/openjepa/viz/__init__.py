"""Pictures of a run: masks, curves, feature maps, predictor retrievals, decoded
imaginations (``decoded``: a generative decoder on frozen features), and the HTML report."""

from .curves import curves_png
from .decoded import decoded_figure
from .decoded import imagine as imagine_decoded
from .features import feature_figure, feature_figure_for, pca_rgb, pick_images, sample_images, similarity_map
from .imagine import build_bank, imagination_figure, imagine, retrieve
from .masks import STRATEGIES, mask_grid, mask_overlay, patch_labels
from .report import write_report

__all__ = [
    "curves_png",
    "decoded_figure",
    "imagine_decoded",
    "feature_figure",
    "feature_figure_for",
    "pca_rgb",
    "pick_images",
    "sample_images",
    "similarity_map",
    "build_bank",
    "imagination_figure",
    "imagine",
    "retrieve",
    "STRATEGIES",
    "mask_grid",
    "mask_overlay",
    "patch_labels",
    "write_report",
]
