"""The one rule for AdamW's parameter groups: weight decay on matrices and kernels, none on biases,
norms and other 1-D parameters (nor on parameters named in ``no_decay``); with ``layer_of``, one
group per (layer, decay) whose LR is scaled by layer-wise decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def decays(name: str, p: torch.Tensor, no_decay: tuple[str, ...] = ()) -> bool:
    return p.ndim > 1 and not name.endswith(".bias") and not any(name.endswith(n) for n in no_decay)


def decay_groups(
    named_params: Iterable[tuple[str, torch.Tensor]],
    weight_decay: float | None = None,
    layer_of: Callable[[str], int] | None = None,
    layers: int = 0,
    layer_decay: float = 1.0,
    no_decay: tuple[str, ...] = (),
) -> list[dict]:
    """Groups of the trainable ``named_params``. Without ``layer_of``: [decayed, not decayed], the
    reference's order (the decayed group takes the optimiser's default weight decay, the other 0).
    With ``layer_of`` (name -> layer, 0 .. ``layers``): groups in (layer, decayed) order, each with
    ``lr_scale`` = layer_decay ** (layers - layer) and ``weight_decay`` (``weight_decay`` or 0)."""
    groups: dict[tuple[int, bool], list] = {}
    for name, p in named_params:
        if p.requires_grad:
            key = (layer_of(name) if layer_of else 0, decays(name, p, no_decay))
            groups.setdefault(key, []).append(p)
    if layer_of is None:
        return [
            {"params": groups.get((0, True), []), "decay": True},
            {"params": groups.get((0, False), []), "decay": False, "weight_decay": 0.0},
        ]
    return [
        {
            "params": params,
            "decay": decay,
            "lr_scale": layer_decay ** (layers - layer),
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (layer, decay), params in sorted(groups.items())
    ]
