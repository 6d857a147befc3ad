"""The I-JEPA predictor: a narrow ViT that predicts the representation of one target block at a
time from the context tokens.

For every target block it builds one sequence: the context tokens (projected to the predictor
width, plus the predictor's own position embedding at the context positions) followed by mask
tokens carrying the position embedding of that block's patches. The outputs at the mask tokens,
projected back to the encoder width, are the prediction. Names follow the reference code.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .vit import LAYER_NORM_EPS, Block, gather_tokens, init_weights, run_blocks, sincos_pos_embed_2d


class Predictor(nn.Module):
    def __init__(
        self,
        grid: tuple[int, int],
        embed_dim: int,
        predictor_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_dim: int | None = None,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.embed_dim = embed_dim
        self.out_dim = out_dim or embed_dim
        self.predictor_embed = nn.Linear(embed_dim, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.register_buffer("predictor_pos_embed", sincos_pos_embed_2d(predictor_dim, self.grid).unsqueeze(0))
        self.predictor_blocks = nn.ModuleList(Block(predictor_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(predictor_dim, eps=LAYER_NORM_EPS)
        self.predictor_proj = nn.Linear(predictor_dim, self.out_dim)
        self.grad_checkpointing = False
        init_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-2.0, b=2.0)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """context [B, Kc, D] (encoder output at ``context_idx`` [B, Kc]), target_idx [B, M, Kt]
        -> predictions [B, M, Kt, out_dim]."""
        B, M, Kt = target_idx.shape
        Kc = context.size(1)
        pos = self.predictor_pos_embed.expand(B, -1, -1).to(context.dtype)
        x = self.predictor_embed(context) + gather_tokens(pos, context_idx)  # [B, Kc, P]
        x = x.unsqueeze(1).expand(-1, M, -1, -1).reshape(B * M, Kc, -1)  # one sequence per block
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, target_idx.reshape(B, M * Kt))
        x = torch.cat([x, queries.reshape(B * M, Kt, -1)], dim=1)
        x = run_blocks(self.predictor_blocks, x, self.grad_checkpointing)
        x = self.predictor_proj(self.predictor_norm(x[:, Kc:]))
        return x.reshape(B, M, Kt, -1)
