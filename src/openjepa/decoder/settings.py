"""The generative decoder's settings: the network, the fit and the sampler."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError

# Settings a resume may change without a warning: they change how the fit runs or is shown, not what it computes.
NOT_MATHEMATICS = frozenset({"log_every", "save_every", "device", "progress_bar", "tensorboard", "sample_steps", "eta"})


@dataclass
class DecoderSettings:
    steps: int = 1500  # optimiser steps of the fit (about 15 minutes on 2 CPU cores at 28 px)
    batch_size: int = 64
    lr: float = 1e-3  # AdamW, linear warmup then cosine to min_lr
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clip_grad: float = 1.0  # 0 = off
    ema: float = 0.999  # the sampled network is this exponential average of the fitted one; 0 = the fitted one
    widths: tuple[int, ...] = (32, 64, 64)  # the U-Net's channels at each resolution
    cond_dim: int = 32  # channels of the projected feature map
    unknown_prob: float = 0.5  # share of training images whose target blocks are hidden (the learned unknown vector)
    # Of those, the share whose hidden blocks carry the predictor's outputs instead, so that the decoder
    # learns to read them (they are smoother than the target features it fits on: a regression's mean).
    predictor_prob: float = 0.0
    # What the decoder sees around hidden blocks. full: the target encoder's features of the whole image
    # (the issue's design; they can carry the hidden blocks' content through its attention). context: the
    # features of the context patches computed from them alone, the unknown vector everywhere else (the
    # decoder sees what the predictor saw, no more). Target features everywhere are drawn either way.
    condition: str = "full"
    images: int = 10000  # training images the decoder fits on (their features are computed once, kept in memory)
    seed: int = 0
    sample_steps: int = 25  # DDIM steps of a sample
    eta: float = 1.0  # DDIM's noise: 0 deterministic, 1 ancestral (samples of one condition differ)
    precision: str = "fp32"  # fp32, bf16 or auto (bf16 on GPUs and CPUs with native bf16)
    log_every: int = 50
    save_every: int = 500  # steps between checkpoints (and at every pass over the images, and at the end)
    device: str = "auto"
    progress_bar: bool = True
    tensorboard: bool = False

    def validate(self) -> DecoderSettings:
        positive = ("steps", "batch_size", "images", "sample_steps", "log_every", "cond_dim")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"decoder setting {name} must be a whole number of at least 1, got {value!r}")
        for name in ("warmup_steps", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"decoder setting {name} must be a whole number of at least 0, got {value!r}")
        for name, low, high in (
            ("unknown_prob", 0.0, 1.0),
            ("predictor_prob", 0.0, 1.0),
            ("ema", 0.0, 1.0),
            ("eta", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"decoder setting {name} must be between {low} and {high}, got {value!r}")
        for name in ("lr", "min_lr", "weight_decay", "clip_grad"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"decoder setting {name} must be a number of at least 0, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"decoder setting lr must be above 0, got {self.lr!r}")
        self.widths = tuple(self.widths)
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigError(f"decoder setting widths must be channel counts of at least 1, got {list(self.widths)}")
        if self.condition not in ("full", "context"):
            raise ConfigError(f"decoder setting condition must be full or context, got {self.condition!r}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"decoder setting precision must be fp32, bf16 or auto, got {self.precision!r}")
        return self

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, values: dict) -> DecoderSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown decoder setting(s): {', '.join(unknown)}")
        return cls(**values).validate()
