"""Heads on a pretrained encoder: the attentive-pooling probe, and the classifier fine-tuning makes.

'linear' (the classifier's default) averages the patch features (after the encoder's final norm)
and applies one linear layer: the paper's choice, and exactly what
``transformers.IJepaForImageClassification`` and timm's ``VisionTransformer(global_pool="avg",
fc_norm=False)`` compute, so it exports to both. 'attentive' pools with one learned query attending
over the patch features (``AttentiveProbe``, V-JEPA's image evaluation): often better on frozen
features, and only ours to load.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .vit import VisionTransformer

HEADS = ("linear", "attentive")


class AttentiveProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, num_heads: int = 4, mlp_ratio: float = 2.0):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)
        x = self.query.expand(len(tokens), -1, -1)
        x = x + self.attn(x, kv, kv, need_weights=False)[0]
        x = x + self.mlp(self.norm_mlp(x))
        return self.head(self.norm_out(x[:, 0]))


class Classifier(nn.Module):
    """``forward(images [B, C, H, W])`` -> logits [B, classes]. ``classes`` names the outputs in
    order; ``mean`` / ``std`` are the normalisation the encoder expects (see ``interop.preprocess``)."""

    def __init__(self, encoder: VisionTransformer, classes: list[str], head: str = "linear"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if len(classes) < 2:
            raise ValueError(f"a classifier needs at least two classes, got {list(classes)}")
        self.encoder, self.head_type, self.classes = encoder, head, [str(c) for c in classes]
        if head == "linear":
            self.head = nn.Linear(encoder.embed_dim, len(classes))
            nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head: logits start near 0
            nn.init.zeros_(self.head.bias)
        else:
            self.head = AttentiveProbe(encoder.embed_dim, len(classes))
        self.mean = list(getattr(encoder, "mean", None) or [])
        self.std = list(getattr(encoder, "std", None) or [])

    @property
    def img_size(self) -> tuple[int, int]:
        return self.encoder.img_size

    @property
    def in_chans(self) -> int:
        return self.encoder.in_chans

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(images)
        return self.head(tokens.mean(1) if self.head_type == "linear" else tokens)

    def config(self) -> dict:
        """What rebuilds this classifier (JSON-ready): ``Classifier.from_config``."""
        return {
            "encoder": self.encoder.config(),
            "head": self.head_type,
            "classes": self.classes,
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_config(cls, config: dict) -> Classifier:
        encoder = VisionTransformer(**config["encoder"])
        encoder.mean, encoder.std = list(config["mean"]), list(config["std"])
        return cls(encoder, config["classes"], config["head"])
