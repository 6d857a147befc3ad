"""Low-shot linear probing: the linear probe on 1% and 10% of the training labels, each on three
class-balanced subsets drawn from fixed seeds; mean and standard deviation over the subsets."""

from __future__ import annotations

import statistics

import torch

from .linear import linear_probe

FRACTIONS = (0.01, 0.1)
SEEDS = (0, 1, 2)


def lowshot_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices holding ``fraction`` of every class (at least two of each, so a validation
    split can be carved); a pure function of (labels, fraction, seed)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"low-shot fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n = min(len(idx), max(2, round(fraction * len(idx))))
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(chosen).sort().values


def lowshot_eval(train_x, train_y, test_x, test_y, fractions=FRACTIONS, seeds=SEEDS, **kwargs) -> dict:
    out = {}
    for fraction in fractions:
        accs = []
        for seed in seeds:
            subset = lowshot_subset(train_y, fraction, seed)
            accs.append(
                linear_probe(train_x[subset], train_y[subset], test_x, test_y, val_fraction=0.2, seed=seed, **kwargs)[
                    "test_acc"
                ]
            )
        out[f"{fraction:g}"] = {
            "mean": statistics.fmean(accs),
            "std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
            "accs": accs,
            "labels_per_subset": len(lowshot_subset(train_y, fraction, seeds[0])),
        }
    return out
