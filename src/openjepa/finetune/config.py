"""Every setting of a fine-tuning run, typed and checked as the pretraining config's keys are."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..config import ConfigError, apply_field_overrides
from ..models.heads import HEADS


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (``key=value`` overrides on the command line)."""

    epochs: int = 10
    batch_size: int = 128
    blr: float = 1e-3  # base LR per 256 images: lr = blr * batch_size / 256 (MAE's convention)
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # block i of L gets layer_decay ** (L + 1 - (i + 1)) of the LR; the head all of it
    # stochastic depth at the last block (linear from 0 at the first); MAE uses 0.1 over 100 ImageNet epochs, but on
    # a short run it only shakes the features the probe's head was fitted to (BENCHMARKS.md): off by default
    drop_path: float = 0.0
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max gradient norm; 0 = off
    mixup: float = 0.0  # mixup's alpha (timm); 0 = off
    cutmix: float = 0.0  # CutMix's alpha (timm); 0 = off
    randaug: str = ""  # timm RandAugment, e.g. rand-m9-mstd0.5-inc1; "" = off
    # Mild by default, as I-JEPA's own pretraining (no flip): a stronger crop or a flip moves the features of an
    # encoder that never saw them far enough to undo the probe's head (Fashion-MNIST, BENCHMARKS.md)
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    hflip: bool = False
    head: str = "linear"  # linear (pooled features, exports to HF / timm) | attentive
    head_init: str = "probe"  # probe: the linear head starts as a linear probe of the frozen features (LP-FT) | zero
    labels_fraction: float = 1.0  # the fraction of the training split's labels used (stratified)
    val_fraction: float = 0.1  # held out of the training split to pick the best epoch (no separate val/)
    which: str = "target"  # the checkpoint's target (EMA) or context encoder
    random_init: bool = False  # the baseline: the same architecture, freshly initialised
    seed: int = 0
    num_workers: int = 2
    eval_batch_size: int = 256
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16 | bf16 | fp32
    device: str = "auto"
    eval_every: int = 1  # epochs between validations (the last epoch is always validated); best.pt is chosen among them
    log_every: int = 50
    progress_bar: bool = True
    tensorboard: bool = True

    def validate(self) -> FinetuneConfig:
        for key in ("epochs", "batch_size", "eval_batch_size", "log_every", "eval_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune {key} must be at least 1, got {getattr(self, key)}")
        for key in ("blr", "min_lr", "warmup_epochs", "weight_decay", "clip_grad", "mixup", "cutmix"):
            if getattr(self, key) < 0:
                raise ConfigError(f"finetune {key} must be >= 0, got {getattr(self, key)}")
        for key in ("drop_path", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"finetune {key} must be in [0, 1), got {getattr(self, key)}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"finetune layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 < self.labels_fraction <= 1:
            raise ConfigError(f"finetune labels_fraction must be in (0, 1], got {self.labels_fraction}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"finetune val_fraction must be in (0, 1), got {self.val_fraction}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"finetune crop_scale must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        if self.head not in HEADS:
            raise ConfigError(f"finetune head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head_init not in ("probe", "zero"):
            raise ConfigError(f"finetune head_init must be probe or zero, got {self.head_init!r}")
        if self.which not in ("target", "context"):
            raise ConfigError(f"finetune which must be 'target' or 'context', got {self.which!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"finetune precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.num_workers < 0:
            raise ConfigError(f"finetune num_workers must be >= 0, got {self.num_workers}")
        if (self.mixup or self.cutmix or self.randaug) and timm_or_none() is None:
            raise ConfigError("finetune mixup / cutmix / randaug use timm: pip install 'openjepa[timm]'")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ConfigError(
                f"mixup and CutMix pair each image with another: batch_size must be even, got {self.batch_size}"
            )
        if self.randaug:
            try:
                randaugment(self.randaug, 224, 3)
            except Exception as e:  # timm's parser raises bare asserts and KeyErrors
                raise ConfigError(
                    f"finetune randaug {self.randaug!r} is not a timm RandAugment setting "
                    f"(e.g. rand-m9-mstd0.5-inc1): {type(e).__name__} {e}"
                ) from None
        return self


def timm_or_none():
    try:
        import timm
    except ImportError:
        return None
    return timm


def randaugment(spec: str, size: int, channels: int):
    from timm.data.auto_augment import rand_augment_transform

    fill = 128 if channels == 1 else (124, 116, 104)  # the fill of shifted / rotated areas: mid-grey
    return rand_augment_transform(spec, {"translate_const": int(size * 0.45), "img_mean": fill})


def load_settings(overrides: list[str] | None = None, **settings) -> FinetuneConfig:
    """Defaults, then keyword settings (the command line's flags), then ``key=value`` overrides; validated."""
    ft = FinetuneConfig()
    for key, value in settings.items():
        if value is not None:
            apply_field_overrides(ft, [f"{key}={json.dumps(value)}"], "finetune")
    return apply_field_overrides(ft, overrides or [], "finetune").validate()
