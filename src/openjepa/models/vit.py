"""The I-JEPA Vision Transformer encoder: no CLS token, fixed 2-D sin-cos position embedding.

Reads top-down: position embedding, attention, MLP, block, the size table, then the encoder.
Parameter names follow the reference implementation (``patch_embed.proj``, ``blocks.{i}.attn.qkv``
...) so reference checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-6


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    if len(x) == 1:
        return (int(x[0]), int(x[0]))
    return (int(x[0]), int(x[1]))


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[len(positions), dim]: sin of positions * omega in the first half, cos in the second."""
    if dim % 2:
        raise ValueError(f"sin-cos position embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """[H*W, dim] in raster order; the first half of the channels encodes the column, the second
    the row (the layout of the reference code and MAE, so loaded weights agree)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    emb = torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1)
    return emb.float()


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], idx [B, K] (flat patch indices) -> [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.size(-1)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)  # fused rows: q, k, v
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(attend(q, k, v).transpose(1, 2).reshape(B, N, D))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA. On the CPU, bf16 inputs that need a gradient attend in fp32: torch's CPU flash-attention
    backward in bf16 took 30 ms a call against 2 ms in fp32 (torch 2.14, AMX Xeon; half of a bf16
    training step), while the matmuls around it keep their bf16 speed."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled() and q.requires_grad:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: in training, each sample's residual branch is dropped with probability
    ``rate`` and the kept ones scaled by 1 / (1 - rate); the identity otherwise (and at rate 0,
    drawing nothing from the random stream)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.size(0),) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block; ``drop_rate`` (stochastic depth, fine-tuning only) is 0 in pretraining."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.drop_rate = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_rate, self.training)


def interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """A position embedding [1, H*W, D] of a ``grid`` (H, W) brought to ``new_grid`` by bicubic
    interpolation (no CLS token to set aside)."""
    pos2d = pos.reshape(1, *grid, -1).permute(0, 3, 1, 2)
    pos2d = F.interpolate(pos2d.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    return pos2d.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(pos.dtype)


def compile_blocks(blocks: nn.ModuleList, **options) -> None:
    """``torch.compile`` each block in place (regional compilation: the blocks share one compiled
    graph per input signature, and compiling takes the time of one block, not of the network).
    The token count varies with the masks from step to step; at the first change dynamo marks it
    dynamic (a symbol), so there is one graph for the target encoder, one for the context encoder
    and one for the predictor, whatever the lengths, instead of a recompilation per new length."""
    for blk in blocks:
        blk.compile(**options)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    for blk in blocks:
        if grad_checkpointing and x.requires_grad:
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The reference's initialisation: trunc-normal(std) for every Linear and Conv weight, zero
    biases, LayerNorm weight 1 and bias 0. As in the reference the truncation bounds are absolute
    (+-2), so at std 0.02 nothing is truncated in practice."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ViTSize:
    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    predictor_depth: int = 6  # the paper's predictor depth for this encoder


VIT_SIZES: dict[str, ViTSize] = {
    "vit_tiny": ViTSize(192, 12, 3),
    "vit_small": ViTSize(384, 12, 6),
    "vit_base": ViTSize(768, 12, 12),
    "vit_large": ViTSize(1024, 24, 16, predictor_depth=12),
    "vit_huge": ViTSize(1280, 32, 16, predictor_depth=12),
    "vit_giant": ViTSize(1408, 40, 16, mlp_ratio=48 / 11, predictor_depth=16),  # MLP hidden 6144
}


def resolve_size(name: str) -> ViTSize:
    key = name if name.startswith("vit_") else f"vit_{name}"
    if key not in VIT_SIZES:
        raise ValueError(f"unknown model size {name!r}; known: {', '.join(VIT_SIZES)}")
    return VIT_SIZES[key]


class VisionTransformer(nn.Module):
    """ViT encoder. ``forward(images, keep_idx=None)`` returns patch features [B, N or K, D] after
    the final LayerNorm; with ``keep_idx`` [B, K] only those patches (flat raster indices) are
    encoded, gathered after the position embedding is added."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        for side in self.img_size:
            if side % patch_size:
                raise ValueError(f"patch size {patch_size} does not divide image size {self.img_size}")
        self.grid = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid).unsqueeze(0))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.grad_checkpointing = False
        init_weights(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly from 0 at the first block to ``rate`` at the last (as
        DeiT, BEiT and MAE fine-tune); 0 turns it off."""
        depth = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            blk.drop_rate = rate * i / max(depth - 1, 1)

    def config(self) -> dict:
        """The constructor arguments that rebuild this encoder (JSON-ready)."""
        return {
            "img_size": list(self.img_size),
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.embed_dim,
            "depth": len(self.blocks),
            "num_heads": self.num_heads,
            "mlp_ratio": self.blocks[0].mlp.fc1.out_features / self.embed_dim,
        }

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embedding for a ``grid`` of patches: the stored one at the training grid,
        else bicubic interpolation of it (there is no CLS token to set aside)."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        return interpolate_pos_embed(self.pos_embed, self.grid, grid)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] (any size divisible by the patch) -> tokens [B, N, D] with position
        embedding added."""
        H, W = images.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {(H, W)} is not divisible by the patch size {self.patch_size}")
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        return x + self.pos_embed_for((H // self.patch_size, W // self.patch_size)).to(x.dtype)

    def forward(
        self, images: torch.Tensor, keep_idx: torch.Tensor | None = None, layers: int | list[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """With ``layers`` (as in ``intermediates``): the chosen blocks' outputs instead, without the
        final norm, as a list. They are taken here, in ``forward``, so that FSDP gathers the weights."""
        x = self.patchify(images)
        if keep_idx is not None:
            x = gather_tokens(x, keep_idx)
        if layers is None:
            return self.norm(run_blocks(self.blocks, x, self.grad_checkpointing))
        depth = len(self.blocks)
        wanted = list(range(depth - layers, depth)) if isinstance(layers, int) else [i % depth for i in layers]
        if (
            not wanted
            or any(not 0 <= i < depth for i in wanted)
            or (isinstance(layers, int) and not 0 < layers <= depth)
        ):
            raise ValueError(f"layers must pick blocks of 0..{depth - 1}, got {layers}")
        outputs = {}
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            x = outputs[i] = blk(x)
        return [outputs[i] for i in wanted]

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """[B, D]: the mean of the patch features (the paper's evaluation features)."""
        return self(images).mean(1)

    def intermediates(
        self, images: torch.Tensor, layers: int | list[int] = 1, norm: bool = False
    ) -> list[torch.Tensor]:
        """Outputs [B, N, D] of chosen blocks: ``layers`` an int n (the last n blocks) or a list of
        block indices (negative counts from the end). ``norm`` applies the final LayerNorm to each."""
        outputs = self(images, layers=layers)
        return [self.norm(x) for x in outputs] if norm else outputs


def build_encoder(
    model_name: str = "vit_base",
    img_size: int | tuple[int, int] = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    width: int | None = None,
) -> VisionTransformer:
    """The encoder of a named size; ``width`` replaces its width (depth and heads kept)."""
    s = resolve_size(model_name)
    return VisionTransformer(img_size, patch_size, in_chans, width or s.dim, s.depth, s.heads, s.mlp_ratio)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "VisionTransformer",
    "Block",
    "drop_path",
    "VIT_SIZES",
    "ViTSize",
    "build_encoder",
    "resolve_size",
    "sincos_pos_embed_2d",
    "interpolate_pos_embed",
    "gather_tokens",
    "init_weights",
    "count_params",
]
