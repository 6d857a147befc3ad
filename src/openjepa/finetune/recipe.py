"""Fine-tuning's recipe: layer-wise LR decay over the optimiser's groups, mixup / CutMix, and the
head's start as a linear probe of the frozen features (LP-FT)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine.optim import decay_groups
from ..evaluate.features import extract
from ..evaluate.linear import accuracy, feature_stats, train_heads
from ..models.heads import Classifier
from .config import FinetuneConfig
from .data import Splits


def layer_of(depth: int):
    """Parameter name -> layer: 0 the patch embedding, i + 1 block i, depth + 1 the final norm and the head."""

    def layer(name: str) -> int:
        if name.startswith("encoder.patch_embed"):
            return 0
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        return depth + 1

    return layer


def param_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups by (layer, decay) (``engine.optim``'s rule): layer l of L + 1 gets
    layer_decay ** (L + 1 - l) of the LR, the head all of it. No weight decay on biases, norms and
    the attentive head's query."""
    depth = len(model.encoder.blocks)
    return decay_groups(
        model.named_parameters(), weight_decay, layer_of(depth), depth + 1, layer_decay, no_decay=("query",)
    )


def mixup_for(ft: FinetuneConfig, num_classes: int):
    if not (ft.mixup or ft.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, label_smoothing=ft.label_smoothing, num_classes=num_classes
    )


PROBE_STEPS = 2000


@torch.no_grad()
def probe_head(model: Classifier, splits: Splits, ft: FinetuneConfig, precision: str) -> dict:
    """LP-FT (Kumar et al., ICLR 2022): before fine-tuning, fit the linear head on the frozen
    encoder's pooled features of the labelled training images (``evaluate.linear``'s grid of
    learning rates and weight decays on standardised features, the head chosen on the validation
    split), then fold the standardisation into the head's weights, so the classifier is still one
    linear layer on the mean of the patch features. Fine-tuning then starts from a head that already
    agrees with the features instead of a random one whose gradients first disturb them."""
    model.eval()
    fit = extract(
        model.encoder,
        torch.utils.data.Subset(splits.train, splits.fit.tolist()),
        ft.eval_batch_size,
        num_workers=ft.num_workers,
        progress=False,
        precision=precision,
        last4=False,
    )
    val = extract(
        model.encoder,
        splits.val,
        ft.eval_batch_size,
        num_workers=ft.num_workers,
        progress=False,
        precision=precision,
        last4=False,
    )
    mean, std = feature_stats(fit.pooled)
    val_x = (val.pooled - mean) / std
    with torch.enable_grad():
        w, b, grid = train_heads(
            (fit.pooled - mean) / std, fit.labels, len(model.classes), steps=PROBE_STEPS, seed=ft.seed
        )
    scores = [accuracy(val_x @ w[h] + b[h], val.labels) for h in range(len(grid))]
    best = max(range(len(grid)), key=lambda h: scores[h])
    # A probe's logits are far too confident for the fine-tuning loss (label smoothing): their gradients would
    # first tear the features down. Temperature scaling (Guo et al., 2017) on the validation split, against the
    # loss fine-tuning will use, starts the head at that loss's own scale.
    logits = val_x @ w[best] + b[best]
    temps = torch.logspace(-1, 3, 81)
    losses = [F.cross_entropy(logits / t, val.labels, label_smoothing=ft.label_smoothing).item() for t in temps]
    temp = float(temps[min(range(len(temps)), key=losses.__getitem__)])
    weight = w[best] / std[:, None]  # x_std @ W + b  ==  x @ (W / std) + (b - (mean / std) @ W)
    model.head.weight.copy_(weight.T / temp)
    model.head.bias.copy_((b[best] - (mean / std) @ w[best]) / temp)
    model.train()
    return {
        "val_acc": scores[best],
        "lr": grid[best][0],
        "wd": grid[best][1],
        "steps": PROBE_STEPS,
        "temperature": round(temp, 3),
    }
