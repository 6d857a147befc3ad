"""Weighted k-nearest-neighbour classifier on frozen features (cosine similarity, votes
weighted by exp(similarity / T)), as used by DINO and the JEPA papers for monitoring."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KS = (10, 20, 100, 200)


@torch.no_grad()
def knn_predict(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    ks=KS,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> dict[int, torch.Tensor]:
    """Predicted labels of ``test_x`` for each k (k larger than the bank is clipped to it)."""
    num_classes = num_classes or int(train_y.max()) + 1
    bank, queries = F.normalize(train_x.float(), dim=1), F.normalize(test_x.float(), dim=1)
    k_max = min(max(ks), len(bank))
    preds = {k: [] for k in ks}
    for start in range(0, len(queries), chunk):
        sim, idx = (queries[start : start + chunk] @ bank.T).topk(k_max, dim=1)  # sorted, most similar first
        votes = F.one_hot(train_y[idx], num_classes).float() * (sim / temperature).exp().unsqueeze(-1)
        for k in ks:
            preds[k].append(votes[:, : min(k, k_max)].sum(1).argmax(1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_eval(train_x, train_y, test_x, test_y, ks=KS, temperature: float = 0.07) -> dict:
    """Accuracy at each k smaller than the training set (k of every image is a majority vote, not
    kNN); the others are listed under ``skipped_k``."""
    kept = [k for k in ks if k < len(train_x)]
    preds = (
        knn_predict(train_x, train_y, test_x, kept, temperature, int(max(train_y.max(), test_y.max())) + 1)
        if kept
        else {}
    )
    out = {"temperature": temperature, **{f"k={k}": (p == test_y).float().mean().item() for k, p in preds.items()}}
    skipped = [k for k in ks if k not in kept]
    return {**out, "skipped_k": skipped} if skipped else out
