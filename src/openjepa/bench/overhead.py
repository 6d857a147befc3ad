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
from ..device import training_bf16
from ..ijepa import predictor_depth
from ..masks import mask_sampler_for
from ..models.vit import resolve_size
from .counting import StepCount
from .step import WIDTH_PER_HEAD, SyntheticStep


def time_alternately(steps: dict, n: int, windows: int, warmup: int, sync=lambda: None) -> dict[int, list[float]]:
    """{batch: ms per step of each window} of the step functions ``steps`` ({batch: step}), after
    ``warmup`` steps each, timed window by window in turn (``n`` steps a window) so that drift hits
    all alike."""

    def window(step, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            step()
        sync()
        return (time.perf_counter() - start) / max(count, 1) * 1e3

    for step in steps.values():
        window(step, warmup)
    times: dict[int, list[float]] = {b: [] for b in steps}
    for _ in range(windows):
        for b, step in steps.items():
            times[b].append(window(step, n))
    return times


def fixed_cost(ms: dict[int, float], small: int, large: int) -> float:
    """The time per step at batch 0, extrapolated linearly from the medians at two batch sizes."""
    return ms[small] - (ms[large] - ms[small]) * small / (large - small)


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
    runs = {b: SyntheticStep(cfg, b) for b in batches}
    times = time_alternately(runs, steps, windows, warmup, runs[small].sync)
    ms = {b: statistics.median(t) for b, t in times.items()}
    fixed = fixed_cost(ms, small, large)

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
