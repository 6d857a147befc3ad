"""Dense probes on frozen patch tokens: linear semantic segmentation and linear depth.

The data: ``dense_features`` (the frozen encoder's patch tokens, or the raw pixels, with the
targets at the encoder's input size).

The heads. Each probe is linear on every token (standardised by the statistics of the training
tokens), a grid of AdamW learning rates x weight decays trained together in one pass
(``patch_heads``, as ``linear`` does for pooled features), chosen on a held-out tenth of the
training images; only that head is scored on the test set. Deterministic for a seed.

- ``seg_probe``: a 1x1 convolution to class logits, upsampled bilinearly to the label size (as
  DINOv2's linear head), per-pixel cross-entropy ignoring 255; chosen on the held-out mIoU
  (``dense_scores``: summed over the set, averaged over the classes in the labels or the
  predictions), reported with per-class IoU and pixel accuracy. Bilinear logits suit labels that
  follow objects, not patches: a pixel at a patch's edge takes (p - 1) / 2p of its logits (7/16
  at p = 8) from the neighbouring token, so labels constant over each patch are missed at its edges.
- ``depth_probe``: each token predicts the depth of each of its p x p pixels (p * p outputs laid
  back as the patch), so the head reads one token per pixel and never blends neighbours; L2 on
  standardised log-depth (``target="log"``, or ``"linear"``: depth itself) over valid pixels;
  chosen on the held-out RMSE, reported with AbsRel and delta1 (``dense_scores``: pooled over
  every valid test pixel, RMSE in the depth's units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.dense_folder import IGNORE
from ..data.images import DataError
from .dense_scores import depth_scores, depth_sums, seg_confusion, seg_scores, valid_depth
from .linear import probe_steps
from .patch_heads import TokenStats, grid_report, head_outputs, image_split, train_grid

LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# Weight decay is off unless asked for (``wds=``): each image gives thousands of labelled pixels,
# and every extra head costs a full-resolution map of logits per image at every step.
WDS = (0.0,)
# Each image is thousands of labelled pixels, so fewer passes than the pooled probe's 100; 10 is
# a starting point not yet measured on real data (the planted tests converge within 150 steps).
# MIN_STEPS keeps small sets from stopping after a handful of steps.
EPOCHS, MIN_STEPS = 10, 300


def check_shapes(tokens: torch.Tensor, maps: torch.Tensor, what: str) -> None:
    if tokens.ndim != 4 or maps.ndim != 3 or len(tokens) != len(maps):
        raise ValueError(
            f"{what}: tokens must be [N, h, w, D] and maps [N, H, W] of the same N, got "
            f"{tuple(tokens.shape)} and {tuple(maps.shape)}"
        )


# --- segmentation ------------------------------------------------------------------------------


def linear_resize_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """[n_out, n_in]: ``F.interpolate``'s linear resize along one axis (align_corners=False) as a
    matrix. Two small products resize logits exactly as bilinear ``interpolate`` does, several times
    faster to train through on a CPU (its backward pass is the slow part)."""
    return F.interpolate(torch.eye(n_in, device=device)[None], size=n_out, mode="linear", align_corners=False)[0].T


def seg_logits(out: torch.Tensor, size) -> torch.Tensor:
    """Head outputs [G, B, h, w, C] -> logits [G, B, C, *size], upsampled bilinearly."""
    rows = linear_resize_matrix(out.size(2), size[0], out.device)
    cols = linear_resize_matrix(out.size(3), size[1], out.device)
    return rows @ out.permute(0, 1, 4, 2, 3) @ cols.T


def seg_confusions(tokens, seg, indices, weights, biases, stats, device, batch_size) -> torch.Tensor:
    """[G, C, C] confusion of each head over the images ``indices``."""
    heads, classes = biases.shape
    total = torch.zeros(heads, classes, classes, dtype=torch.long)
    for idx, out in head_outputs(tokens, indices, weights, biases, stats, device, batch_size):
        pred = seg_logits(out, seg.shape[-2:]).argmax(2).cpu()
        for h in range(heads):
            total[h] += seg_confusion(pred[h], seg[idx], classes)
    return total


def check_labels(seg: torch.Tensor, num_classes: int, what: str) -> None:
    if not 1 <= num_classes <= IGNORE:
        raise ValueError(f"num_classes must be 1..{IGNORE} (label {IGNORE} means ignore), got {num_classes}")
    bad = seg[(seg != IGNORE) & (seg >= num_classes)]
    if len(bad):
        raise DataError(
            f"{what} seg labels hold class {int(bad.max())}, not below num_classes={num_classes} ({IGNORE} = ignore)"
        )


def pick_head(scores: list[float], higher_is_better: bool, nothing: str) -> int:
    """The grid's head with the best held-out score; a NaN score (nothing to score on) never wins,
    and all NaN is a DataError (``nothing`` says why)."""
    if all(math.isnan(v) for v in scores):
        raise DataError(f"{nothing} to choose the head on")
    sign = 1.0 if higher_is_better else -1.0
    return max(range(len(scores)), key=lambda h: -math.inf if math.isnan(scores[h]) else sign * scores[h])


def first_outputs(tokens: torch.Tensor, show: int, weight, bias, stats, device) -> torch.Tensor:
    """One head's outputs on the first ``show`` images (the figure's predictions)."""
    first = torch.arange(min(show, len(tokens)))
    ((_, out),) = head_outputs(tokens, first, weight, bias, stats, device, len(first))
    return out


def seg_probe(
    train_tokens: torch.Tensor,
    train_seg: torch.Tensor,
    test_tokens: torch.Tensor,
    test_seg: torch.Tensor,
    num_classes: int,
    lrs=LRS,
    wds=WDS,
    steps: int | None = None,
    batch_size: int = 16,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | None = None,
    show: int = 0,
) -> dict:
    """Linear segmentation (see the module's note): tokens [N, h, w, D], labels [N, H, W] (255 =
    ignore). ``steps`` defaults to ``EPOCHS`` passes (at least ``MIN_STEPS``). Returns the test
    mIoU, per-class IoU and pixel accuracy of the head with the best held-out mIoU, and the grid;
    with ``show`` also ``predictions``, the class maps [show, H, W] of the first test images.
    A step holds heads x ``batch_size`` x classes x H x W logits (and their gradients): lower
    ``batch_size`` or the grid for many classes at a large size."""
    check_shapes(train_tokens, train_seg, "train")
    check_shapes(test_tokens, test_seg, "test")
    check_labels(train_seg, num_classes, "training")
    check_labels(test_seg, num_classes, "test")
    device = device or train_tokens.device
    fit, val = image_split(len(train_tokens), val_fraction, seed)
    stats = TokenStats.of(train_tokens[fit])
    steps = steps or probe_steps(len(fit), batch_size, EPOCHS, MIN_STEPS)

    def loss_of(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        labels = train_seg[idx].long().to(device)
        logits = seg_logits(out, labels.shape[-2:]).flatten(0, 1)
        loss = F.cross_entropy(logits, labels.repeat(len(out), 1, 1), ignore_index=IGNORE, reduction="sum")
        return loss / (labels != IGNORE).sum().clamp_min(1)

    weights, biases, grid = train_grid(
        train_tokens, fit, num_classes, loss_of, lrs, wds, steps, batch_size, seed, stats, device
    )
    val_miou = [
        seg_scores(c)["miou"]
        for c in seg_confusions(train_tokens, train_seg, val, weights, biases, stats, device, batch_size)
    ]
    best = pick_head(val_miou, True, f"the {len(val)} held-out training image(s) have no labelled pixel")
    confusion = seg_confusions(
        test_tokens,
        test_seg,
        torch.arange(len(test_tokens)),
        weights[best : best + 1],
        biases[best : best + 1],
        stats,
        device,
        batch_size,
    )[0]
    result = {
        **seg_scores(confusion),
        "val_miou": val_miou[best],
        "lr": grid[best][0],
        "wd": grid[best][1],
        "steps": steps,
        "train_size": len(fit),
        "val_size": len(val),
        **grid_report("miou", grid, val_miou),
    }
    if show:
        out = first_outputs(test_tokens, show, weights[best : best + 1], biases[best : best + 1], stats, device)
        result["predictions"] = seg_logits(out, test_seg.shape[-2:])[0].argmax(1).to(torch.uint8).cpu()
    return result


# --- depth -------------------------------------------------------------------------------------


def patch_pixels(out: torch.Tensor, patch: int) -> torch.Tensor:
    """Head outputs [G, B, h, w, p*p] -> depth maps [G, B, h*p, w*p], each token's outputs laid
    back over its patch in (row, column) order, as ``raw_pixel_tokens`` reads a patch."""
    heads, batch, h, w, _ = out.shape
    return (
        out.view(heads, batch, h, w, patch, patch).permute(0, 1, 2, 4, 3, 5).reshape(heads, batch, h * patch, w * patch)
    )


@dataclass
class DepthTarget:
    """What the head predicts: log-depth or depth, standardised by the training pixels."""

    log: bool
    mean: float
    std: float

    @classmethod
    def of(cls, depth: torch.Tensor, target: str) -> DepthTarget:
        if target not in ("log", "linear"):
            raise ValueError(f"depth target must be 'log' or 'linear', got {target!r}")
        values = depth[valid_depth(depth)].double()
        if not len(values):
            raise DataError("the training depth maps hold no valid pixel (all 0 or non-finite)")
        values = values.log() if target == "log" else values
        return cls(target == "log", values.mean().item(), max(values.std().nan_to_num(0).item(), 1e-6))

    def encode(self, depth: torch.Tensor) -> torch.Tensor:
        value = depth.clamp_min(1e-12).log() if self.log else depth
        return (value - self.mean) / self.std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        value = z * self.std + self.mean
        return value.exp() if self.log else value


def depth_errors(tokens, depth, indices, weights, biases, stats, target: DepthTarget, device, batch_size):
    """[G, 4] ``depth_sums`` of each head over the images ``indices``."""
    patch = depth.size(-1) // tokens.size(2)
    total = torch.zeros(len(weights), 4, dtype=torch.float64)
    for idx, out in head_outputs(tokens, indices, weights, biases, stats, device, batch_size):
        pred = target.decode(patch_pixels(out, patch)).cpu()
        for h in range(len(weights)):
            total[h] += depth_sums(pred[h], depth[idx])
    return total


def check_depth_grid(tokens: torch.Tensor, depth: torch.Tensor, what: str) -> int:
    """The patch size p with depth maps of h*p x w*p pixels (targets at the encoder's input size)."""
    (h, w), (height, width) = tokens.shape[1:3], depth.shape[-2:]
    if height % h or width % w or height // h != width // w:
        raise ValueError(f"{what}: depth maps of {height}x{width} are not a {h}x{w} token grid of square patches")
    return height // h


def depth_probe(
    train_tokens: torch.Tensor,
    train_depth: torch.Tensor,
    test_tokens: torch.Tensor,
    test_depth: torch.Tensor,
    target: str = "log",
    lrs=LRS,
    wds=WDS,
    steps: int | None = None,
    batch_size: int = 16,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | None = None,
    show: int = 0,
) -> dict:
    """Linear depth (see the module's note): tokens [N, h, w, D], depth [N, h*p, w*p] (0 or
    non-finite = invalid). Returns the test RMSE, AbsRel and delta1 of the head with the best
    held-out RMSE, and the grid; with ``show`` also ``predictions``, the depth maps [show, H, W]
    of the first test images."""
    check_shapes(train_tokens, train_depth, "train")
    check_shapes(test_tokens, test_depth, "test")
    patch = check_depth_grid(train_tokens, train_depth, "train")
    if check_depth_grid(test_tokens, test_depth, "test") != patch:
        raise ValueError("train and test depth maps must have the same patch size")
    device = device or train_tokens.device
    fit, val = image_split(len(train_tokens), val_fraction, seed)
    stats, scale = TokenStats.of(train_tokens[fit]), DepthTarget.of(train_depth[fit], target)
    steps = steps or probe_steps(len(fit), batch_size, EPOCHS, MIN_STEPS)

    def loss_of(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        depth = train_depth[idx].to(device)
        valid = valid_depth(depth)
        error = (patch_pixels(out, patch) - scale.encode(torch.where(valid, depth, 1.0))).square()
        return (error * valid).sum() / valid.sum().clamp_min(1)

    weights, biases, grid = train_grid(
        train_tokens, fit, patch * patch, loss_of, lrs, wds, steps, batch_size, seed, stats, device
    )
    val_rmse = [
        depth_scores(s)["rmse"]
        for s in depth_errors(train_tokens, train_depth, val, weights, biases, stats, scale, device, batch_size)
    ]
    best = pick_head(val_rmse, False, f"the {len(val)} held-out training image(s) have no valid depth")
    sums = depth_errors(
        test_tokens,
        test_depth,
        torch.arange(len(test_tokens)),
        weights[best : best + 1],
        biases[best : best + 1],
        stats,
        scale,
        device,
        batch_size,
    )[0]
    result = {
        **depth_scores(sums),
        "val_rmse": val_rmse[best],
        "lr": grid[best][0],
        "wd": grid[best][1],
        "target": target,
        "steps": steps,
        "train_size": len(fit),
        "val_size": len(val),
        **grid_report("rmse", grid, val_rmse),
    }
    if show:
        out = first_outputs(test_tokens, show, weights[best : best + 1], biases[best : best + 1], stats, device)
        result["predictions"] = scale.decode(patch_pixels(out, patch))[0].float().cpu()
    return result
