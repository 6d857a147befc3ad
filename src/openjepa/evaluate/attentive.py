"""Attentive probe (V-JEPA's image evaluation): one cross-attention block whose single learned
query attends over the frozen patch features, then a linear classifier. Trained with AdamW on the
cached patch tokens; the epoch count is chosen on the validation split."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..engine.schedules import warmup_cosine
from ..models.heads import AttentiveProbe
from .linear import accuracy, stratified_split


@torch.no_grad()
def _predict(probe: AttentiveProbe, tokens: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([probe(tokens[i : i + batch_size].float()) for i in range(0, len(tokens), batch_size)])


def attentive_probe(
    train_tokens: torch.Tensor,
    train_y: torch.Tensor,
    test_tokens: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 4,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    fit, val = stratified_split(train_y, val_fraction, seed)
    torch.manual_seed(seed)
    probe = AttentiveProbe(train_tokens.size(-1), num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    steps, step = epochs * math.ceil(len(fit) / batch_size), 0
    best = (-1.0, 0, None)
    for epoch in range(epochs):
        probe.train()
        order = fit[torch.randperm(len(fit), generator=g)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, lr, lr, 0.0, 0, steps)
            loss = F.cross_entropy(probe(train_tokens[idx].float()), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        probe.eval()
        val_acc = accuracy(_predict(probe, train_tokens[val]), train_y[val])
        if val_acc > best[0]:
            best = (val_acc, epoch + 1, {k: v.clone() for k, v in probe.state_dict().items()})
    probe.load_state_dict(best[2])
    return {
        "test_acc": accuracy(_predict(probe, test_tokens), test_y),
        "val_acc": best[0],
        "epoch": best[1],
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
    }
