"""The numbers the dense probes report, accumulated over a whole set (sums, then ratios), so that
a batch at a time gives the same result as all at once.

- Segmentation: a confusion matrix of pixel counts (pixels labelled ``IGNORE`` left out); each
  class's IoU is its intersection over its union, both summed over every image; mIoU is the mean
  over the classes with a non-empty union, i.e. those in the labels or in the predictions (a
  class in neither has no IoU to average, as mmseg's nan-mean); pixel accuracy over labelled
  pixels.
- Depth: over every valid pixel (ground truth finite and above 0) of the set, pooled rather than
  averaged per image: RMSE in the depth's units, AbsRel = mean |pred - gt| / gt, and delta1 = the
  share with max(pred / gt, gt / pred) < 1.25.
"""

from __future__ import annotations

import math

import torch

from ..data.dense_folder import IGNORE


def valid_depth(depth: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(depth) & (depth > 0)


def seg_confusion(pred: torch.Tensor, seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] pixel counts (row: label, column: prediction) of any batch of maps; 255 left out."""
    keep = seg != IGNORE
    pairs = seg[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(pairs, minlength=num_classes**2).view(num_classes, num_classes)


def seg_scores(confusion: torch.Tensor) -> dict:
    """mIoU over the classes with a non-empty union (see the module's note), per-class IoU (None
    where the union is empty) and pixel accuracy, from a confusion matrix summed over a set."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    scored = union > 0
    iou = torch.where(scored, hits / union.clamp_min(1), torch.nan)
    return {
        "miou": iou[scored].mean().item() if scored.any() else math.nan,
        "pixel_acc": (hits.sum() / confusion.sum().clamp_min(1)).item(),
        "per_class_iou": [None if math.isnan(v) else v for v in iou.tolist()],
        "classes_scored": int(scored.sum()),
    }


def depth_sums(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """[4] sums over the valid pixels of a batch: squared error, absolute relative error, delta1
    hits, pixels. A prediction at or below 0 is never a delta1 hit."""
    valid = valid_depth(depth)
    p, d = pred[valid].double(), depth[valid].double()
    positive = p.clamp_min(1e-12)
    ratio = torch.maximum(positive / d, d / positive)
    return torch.stack(
        [
            (p - d).square().sum(),
            ((p - d).abs() / d).sum(),
            (ratio < 1.25).sum().double(),
            torch.tensor(float(len(d)), dtype=torch.float64),
        ]
    )


def depth_scores(sums: torch.Tensor) -> dict:
    n = sums[3].item()
    if n == 0:
        return {"rmse": math.nan, "abs_rel": math.nan, "delta1": math.nan, "valid_pixels": 0}
    return {
        "rmse": math.sqrt(sums[0].item() / n),
        "abs_rel": sums[1].item() / n,
        "delta1": sums[2].item() / n,
        "valid_pixels": int(n),
    }
