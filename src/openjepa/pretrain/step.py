"""Pretraining's step: forward and backward over the step's micro-batches (gradients synchronised
once across processes), then clipping, AdamW and the EMA of the target encoder."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..engine.optim import decay_groups
from ..ijepa import IJEPA


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups of the networks the optimiser trains, the parameters that take a gradient (I-JEPA's
    encoder and predictor, DINO's student encoder and head; not the EMA targets), in the model's
    order (``engine.optim``'s rule): weight decay on matrices and kernels, none on biases and 1-D
    parameters."""
    return decay_groups((name, p) for name, p in model.named_parameters() if p.requires_grad)


def build_optimizer(model: IJEPA, o) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``optimization.fused_adamw`` picks torch's fused kernel
    (the same update, computed in one kernel per device instead of one loop per tensor list)."""
    return torch.optim.AdamW(
        param_groups(model), lr=o.start_lr, weight_decay=o.weight_decay, **({"fused": True} if o.fused_adamw else {})
    )


def target_std(target) -> torch.Tensor:
    """Spread of the target features across tokens and images: the per-dimension standard
    deviation, averaged over dimensions. It falls towards 0 when the representation collapses
    (every patch mapped to the same vector), even while the loss looks healthy."""
    targets = [target] if isinstance(target, torch.Tensor) else target
    return torch.cat([t.detach().float().flatten(0, -2) for t in targets]).std(0).mean()


def forward_backward(model: nn.Module, batch: dict, device: torch.device, autocast, scale: float, step: int = 0):
    """One micro-batch: the loss and its gradient (scaled for accumulation). Returns the loss, the
    target spread and the (images, context tokens, target tokens) counts (tokens per image, averaged
    over the batch's mask groups), the tensors left on the device. A batch without masks (DINO's
    views) goes to ``views_forward_backward``."""
    if "context_idx" not in batch:
        return views_forward_backward(model, batch, device, autocast, scale, step)
    images = batch["images"].to(device, non_blocking=True)
    context_idx, target_idx = batch["context_idx"], batch["target_idx"]
    if isinstance(context_idx, torch.Tensor):
        context_idx, target_idx = [context_idx], [target_idx]
    context_idx = [c.to(device, non_blocking=True) for c in context_idx]
    target_idx = [t.to(device, non_blocking=True) for t in target_idx]
    with autocast:
        loss, targets = model(images, context_idx, target_idx, return_target=True, step=step)
    (loss * scale).backward()
    n = len(images)
    tokens = (
        sum(c.size(0) * c.size(1) for c in context_idx) / n,
        sum(t.size(0) * t.size(1) * t.size(2) for t in target_idx) / n,
    )
    return loss.detach(), target_std(targets), (n, *tokens)


def views_forward_backward(model: nn.Module, batch: dict, device: torch.device, autocast, scale: float, step: int = 0):
    """``forward_backward`` on a micro-batch of views without masks (``meta.objective: dino``):
    ``images`` [B, 2, C, H, W] and ``local_images`` [B, n, C, h, w]; there are no tokens to count
    (None, None)."""
    images = batch["images"].to(device, non_blocking=True)
    local_images = batch["local_images"].to(device, non_blocking=True)
    with autocast:
        loss, targets = model(images, local_images, return_target=True, step=step)
    (loss * scale).backward()
    return loss.detach(), target_std(targets), (len(images), None, None)


def accumulate(
    step_model: nn.Module, micro: list[dict], device: torch.device, autocast, scale: float, step: int = 0
) -> list:
    """Forward and backward over one optimiser step's micro-batches, the gradients summed. Across
    processes they are synchronised once, with the last micro-batch: DDP's ``no_sync`` and FSDP's
    ``set_requires_gradient_sync(False)`` hold back the all-reduce (or reduce-scatter) before it.
    Returns forward_backward's result for each micro-batch."""
    results = []
    for i, batch in enumerate(micro):
        with gradient_sync(step_model, i == len(micro) - 1):
            results.append(forward_backward(step_model, batch, device, autocast, scale, step))
    return results


def set_hyperparameters(optimizer, lr: float, wd: float) -> None:
    """The step's learning rate on every group, its weight decay on the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["decay"]:
            group["weight_decay"] = wd


def record(window, results: list, masked: bool) -> None:
    """``accumulate``'s results into the loss window (device tensors: no read-back); the token
    counts only for masked objectives."""
    for loss, std, (n, context, target) in results:
        tokens = {"context_tokens": context, "target_tokens": target} if masked else {}
        window.add(loss, n, target_std=std, **tokens)


def optimizer_step(model: IJEPA, optimizer, params: list, clip_grad: float, momentum: float) -> None:
    """After the step's gradients: clip (when ``clip_grad`` > 0), AdamW, and the EMA of the target."""
    if clip_grad > 0:
        nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_target(momentum)


@contextlib.contextmanager
def gradient_sync(step_model: nn.Module, sync: bool):
    """Gradients communicated across processes in this backward only when ``sync``."""
    if sync:
        yield
        return
    if hasattr(step_model, "no_sync"):  # DDP
        with step_model.no_sync():
            yield
        return
    sharded = [m for m in step_model.children() if hasattr(m, "set_requires_gradient_sync")]  # FSDP (fully_shard)
    for module in sharded:
        module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        for module in sharded:
            module.set_requires_gradient_sync(True)
