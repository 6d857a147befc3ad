"""RankMe (Garrido et al., 2023): the effective rank of a feature matrix, exp of the entropy of
its normalised singular values. Near the dimension for spread-out features; near 1 when the
representation has collapsed."""

from __future__ import annotations

import torch


@torch.no_grad()
def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def feature_std(features: torch.Tensor) -> float:
    """Per-dimension standard deviation of L2-normalised features, averaged: 1/sqrt(D) when
    spread evenly, 0 when every input maps to the same vector."""
    return float(torch.nn.functional.normalize(features.double(), dim=1).std(0).mean())
