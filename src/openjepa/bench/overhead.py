"""`openjepa bench CONFIG --overhead`: what the training step costs its host, measured on any
machine. A GPU is kept busy only when the host issues work faster than the GPU finishes it; the
host's part is what a step costs when its arithmetic is made negligible. So the step runs here
with the config's depths, heads, token counts, masks, optimiser groups and EMA, but a width of 4
per head (ViT-B/16: 48 instead of 768), and

- its time per step is read at two batch sizes and extrapolated to batch 0 (the intercept: the
  fixed cost per step, whatever the arithmetic left at that width);
- the operators it dispatches, the kernel-like ones among them and the host syncs are counted
  (``counting``: forward, backward, AdamW and EMA; a sync is a read of a device value or an
  output whose size depends on the data);
- drawing the batch's masks is timed apart (the loader's workers do it during training).

The step is the training loop's own: ``set_hyperparameters``, ``accumulate``, ``record`` and
``optimizer_step`` of ``pretrain.step``, with masks drawn before the step as the loader does.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..config import Config, ConfigError, validate
from ..data import MaskCollator
from ..device import autocast, resolve_device, training_bf16
from ..engine import Window
from ..ijepa import build_ijepa, predictor_depth
from ..masks import mask_sampler_for
from ..models.vit import resolve_size
from ..pretrain import accumulate, build_optimizer, optimizer_step, record, set_hyperparameters
from .counting import StepCount

WIDTH_PER_HEAD = 4  # the narrowest width the 2-D sin-cos embedding allows per head


class OverheadStep:
    """The training step on ``batch`` images at a negligible width (``narrow``; else the config's),
    with a pool of masks drawn beforehand (cycled, so every step has masks ready as the loader
    provides them)."""

    def __init__(self, cfg: Config, batch: int, pool: int = 8, narrow: bool = True):
        self.device = resolve_device(cfg.meta.device)
        heads = resolve_size(cfg.meta.model_name).heads
        torch.manual_seed(cfg.meta.seed)
        self.model = build_ijepa(cfg, width=WIDTH_PER_HEAD * heads if narrow else None).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optimization)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.amp = autocast(self.device, training_bf16(cfg.meta, self.device))
        self.window = Window(self.device)
        self.clip, self.steps = cfg.optimization.clip_grad, 0
        d = cfg.data
        self.collator = MaskCollator(mask_sampler_for(cfg), cfg.meta.seed, batch, group=cfg.mask.pack_group)
        images = torch.randn(batch, d.in_chans, d.crop_size, d.crop_size, device=self.device)
        self.batches = [self._batch(images, i) for i in range(pool)]

    def _batch(self, images: torch.Tensor, number: int) -> dict:
        masks = self.collator.masks(number, list(range(len(images))))
        on_device = {k: [t.to(self.device, non_blocking=True) for t in masks[k]] for k in ("context_idx", "target_idx")}
        return {"images": images, **on_device}

    def __call__(self) -> None:
        step, self.steps = self.steps, self.steps + 1
        set_hyperparameters(self.optimizer, 1e-4, 0.04)
        results = accumulate(self.model, [self.batches[step % len(self.batches)]], self.device, self.amp, 1.0, step)
        record(self.window, results, masked=True)
        optimizer_step(self.model, self.optimizer, self.params, self.clip, 0.996)

    def host_tensors(self) -> tuple[torch.Tensor, ...]:
        """Optimiser step counters that live on the host whatever the device (not fused AdamW's)."""
        return tuple(s["step"] for s in self.optimizer.state.values() if "step" in s and s["step"].device.type == "cpu")

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _timed(step: OverheadStep, steps: int, windows: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    step.sync()
    out = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        step.sync()
        out.append((time.perf_counter() - start) / steps * 1e3)
    return out


def overhead(
    cfg: Config, steps: int = 20, windows: int = 3, warmup: int = 3, batches: tuple[int, int] = (1, 4)
) -> dict:
    """The host's cost of the config's training step (see the module's text). Both batch sizes
    are timed alternately, window by window, so that drift hits both alike."""
    validate(cfg)
    if cfg.meta.objective != "ijepa":
        raise ConfigError(f"openjepa bench times I-JEPA's step; meta.objective {cfg.meta.objective} is not timed yet")
    small, large = batches
    if not 0 < small < large:
        raise ConfigError(f"--batches needs two batch sizes of 1 or more, the first smaller; got {small} and {large}")
    runs = {b: OverheadStep(cfg, b) for b in batches}
    times: dict[int, list[float]] = {b: [] for b in batches}
    for b in batches:
        _timed(runs[b], 1, 1, warmup)
    for _ in range(windows):
        for b in batches:
            times[b] += _timed(runs[b], steps, 1, 0)
    ms = {b: statistics.median(t) for b, t in times.items()}
    fixed = ms[small] - (ms[large] - ms[small]) * small / (large - small)

    count_step = runs[small]
    with StepCount(count_step.host_tensors()) as count:
        for _ in range(steps):
            count_step()

    full = cfg.data.batch_size
    collator = MaskCollator(mask_sampler_for(cfg), cfg.meta.seed, full, group=cfg.mask.pack_group)
    start = time.perf_counter()
    for i in range(steps):
        collator.masks(i, list(range(full)))
    masks_ms = (time.perf_counter() - start) / steps * 1e3

    size, device = resolve_size(cfg.meta.model_name), count_step.device
    return {
        "impl": "openjepa",
        "mode": "overhead",
        "model": cfg.meta.model_name,
        "shapes": {
            "depth": size.depth,
            "heads": size.heads,
            "pred_depth": predictor_depth(cfg.meta),
            "tokens": (cfg.data.crop_size // cfg.mask.patch_size) ** 2,
            "width": WIDTH_PER_HEAD * size.heads,
        },
        "overhead_ms": round(fixed, 2),
        "step_ms": {str(b): round(v, 2) for b, v in ms.items()},
        "windows_ms": {str(b): [round(v, 2) for v in t] for b, t in times.items()},
        **count.summary(steps),
        "masks_ms_per_batch": round(masks_ms, 2),
        "batch_for_masks": full,
        "precision": "bf16" if training_bf16(cfg.meta, device) else "fp32",
        "fused_adamw": cfg.optimization.fused_adamw,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
