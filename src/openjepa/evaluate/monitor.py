"""Online monitoring during pretraining: on a fixed labelled subset of the training data, the
kNN accuracy of the target encoder's pooled features (first 80% as the bank, last 20% as
queries), their effective rank (RankMe) and their spread. Collapse shows here before it shows
in the loss. Unreadable images are left out (``features.read_batches``) and named in the log."""

from __future__ import annotations

import torch

from ..data.transforms import prepare
from .features import read_batches, warn_skipped
from .knn import knn_predict
from .rankme import feature_std, rankme

MONITOR_COLUMNS = ("step", "epoch", "knn_acc", "rankme", "feature_std")


def monitor_subset(dataset_size: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(dataset_size, generator=g)[: min(n, dataset_size)]


@torch.no_grad()
def pooled_features(encoder, batches, mean, std, autocast) -> torch.Tensor:
    """The encoder's average-pooled output [N, D] (fp32, on the CPU) for an iterable of image batches
    [B, C, H, W] in [0, 1], run in eval mode (the encoder's mode is restored after); [0, 0] for no batch."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    feats = []
    for images in batches:
        x = prepare(images.float(), encoder, mean, std).to(device)
        with autocast:
            feats.append(encoder(x).mean(1).float().cpu())
    encoder.train(was_training)
    return torch.cat(feats) if feats else torch.empty(0, 0)


def monitor(encoder, dataset, indices: torch.Tensor, mean, std, autocast, batch_size: int = 256) -> dict:
    """kNN accuracy at k=20 (None when the data has no labels), RankMe and feature_std, on the
    readable images at ``indices`` (unreadable ones are named in the log; NaN if none is readable)."""
    labels, skipped = [], []

    def batches():  # read a batch at a time, keeping the labels of the readable images
        for images, y, unreadable in read_batches(dataset, encoder.img_size, indices, batch_size):
            skipped.extend(unreadable)
            if images is not None:
                labels.append(y)
                yield images

    x = pooled_features(encoder, batches(), mean, std, autocast)
    warn_skipped("monitor", skipped, len(indices))
    if not len(x):
        return {"knn_acc": None, "rankme": float("nan"), "feature_std": float("nan")}
    y = torch.cat(labels)
    cut = int(0.8 * len(x))
    knn_acc = None
    if (y >= 0).all() and 0 < cut < len(x):
        knn_acc = (knn_predict(x[:cut], y[:cut], x[cut:], ks=(20,))[20] == y[cut:]).float().mean().item()
    return {"knn_acc": knn_acc, "rankme": rankme(x), "feature_std": feature_std(x)}


def fixed_batch(dataset, indices: torch.Tensor, size) -> torch.Tensor | None:
    """The readable images at ``indices``, each brought to ``size``, as one float batch [N, C, H, W]
    (None if none is readable); the unreadable ones are named in the log."""
    images, skipped = [], []
    for batch, _, unreadable in read_batches(dataset, size, indices):
        skipped += unreadable
        if batch is not None:
            images.append(batch)
    warn_skipped("collapse probe", skipped, len(indices))
    return torch.cat(images).float() if images else None


def collapse_statistics(encoder, images: torch.Tensor, mean, std, autocast, batch_size: int = 256) -> dict:
    """How much the pooled features of ``images`` depend on the image (see ``train.CollapseProbe``)."""
    return image_dependence(pooled_features(encoder, images.split(batch_size), mean, std, autocast))


def image_dependence(pooled: torch.Tensor) -> dict:
    """image_rankme (RankMe of the centred features) and image_spread (sqrt of the mean
    per-dimension variance over the mean square) of pooled features [N, D]."""
    pooled = pooled.double()
    centred = pooled - pooled.mean(0)
    spread = (centred.square().mean() / pooled.square().mean().clamp_min(1e-30)).sqrt()
    identical = bool(centred.abs().max() == 0)  # RankMe of a zero matrix is undefined: no direction at all
    return {"image_rankme": 0.0 if identical else rankme(centred), "image_spread": float(spread)}
