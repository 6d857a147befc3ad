"""The reference repository's checkpoints (``*.pth.tar``): ``encoder`` / ``target_encoder`` /
``predictor`` state dicts with ``module.`` prefixes, key names as ours. Sizes are inferred from
the tensors; the number of heads (not stored) from the width, by the size table."""

from __future__ import annotations

import math

from ..models.predictor import Predictor
from ..models.vit import VIT_SIZES, VisionTransformer

HEADS_BY_WIDTH = {s.dim: s.heads for s in VIT_SIZES.values()}


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def is_reference(obj: dict) -> bool:
    return (
        "format" not in obj
        and isinstance(obj.get("encoder"), dict)
        and any(k.endswith("patch_embed.proj.weight") for k in obj["encoder"])
    )


def _count(state: dict, prefix: str) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(prefix)})


def encoder_spec(state: dict, heads: int | None = None) -> dict:
    """Constructor arguments of ``VisionTransformer`` for an encoder state dict (square grids)."""
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    side = math.isqrt(state["pos_embed"].shape[1])
    if side * side != state["pos_embed"].shape[1]:
        raise ValueError(f"pos_embed of {state['pos_embed'].shape[1]} positions is not a square grid")
    heads = heads or HEADS_BY_WIDTH.get(dim, max(dim // 64, 1))
    return {
        "img_size": side * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "embed_dim": dim,
        "depth": _count(state, "blocks."),
        "num_heads": heads,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim,
    }


def build_encoder_from_state(state: dict, heads: int | None = None) -> VisionTransformer:
    encoder = VisionTransformer(**encoder_spec(state, heads))
    encoder.load_state_dict(state)
    return encoder


def build_predictor_from_state(state: dict, encoder_state: dict, heads: int | None = None) -> Predictor:
    spec = encoder_spec(encoder_state, heads)
    grid = (spec["img_size"] // spec["patch_size"],) * 2
    width = state["predictor_embed.weight"].shape[0]
    predictor = Predictor(
        grid,
        spec["embed_dim"],
        width,
        _count(state, "predictor_blocks."),
        spec["num_heads"],
        state["predictor_blocks.0.mlp.fc1.weight"].shape[0] / width,
        out_dim=state["predictor_proj.weight"].shape[0],
    )
    predictor.load_state_dict(state)
    return predictor


__all__ = ["strip_prefix", "is_reference", "encoder_spec", "build_encoder_from_state", "build_predictor_from_state"]
