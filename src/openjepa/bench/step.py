"""`openjepa bench`: time the training step on synthetic data.

The timed step is the training loop's own code (``train.accumulate``, ``train.optimizer_step``,
the loader's ``MaskCollator.masks``): masks sampled on the host, target forward, context encoder
and predictor forward, backward, AdamW, EMA. The median over several timed windows is reported,
so one noisy window does not decide. A second, synchronised pass splits the step into phases
(hooks mark the end of the target encoder, of the predictor and of AdamW). Model FLOPs follow REFERENCE.md §3: per image 3·F_enc(n_ctx) + F_enc(N) + 3·M·F_pred(n_ctx +
n_tgt) with F(n) = depth · (24·n·d² + 4·n²·d).
"""

from __future__ import annotations

import statistics
import time

import torch

from ..config import Config, ConfigError, validate
from ..data import DataError, MaskCollator, PretrainTransform, build_dataset, build_pretrain_loader, decode_batch
from ..device import autocast, resolve_device, training_bf16
from ..engine import Window, memory_mb
from ..ijepa import build_ijepa, predictor_depth
from ..masks import mask_sampler_for
from ..models.vit import resolve_size
from ..pretrain import accumulate, build_optimizer, optimizer_step, record, set_hyperparameters

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}  # bf16 dense
WIDTH_PER_HEAD = 4  # the overhead benchmark's width per head: the narrowest the 2-D sin-cos embedding allows


class SyntheticStep:
    """The training step of a config on ``batch`` synthetic images: its networks (at a width of
    ``WIDTH_PER_HEAD`` per head when ``narrow``: the overhead benchmark's), optimiser, precision,
    mask collator and images, and a pool of ``pool`` mask batches drawn beforehand and copied to the
    device, as the loader provides them. Calling it runs one step on the next batch of the pool with
    the training loop's own functions (``set_hyperparameters``, ``accumulate``, ``record``,
    ``optimizer_step``)."""

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
        self.images = torch.randn(batch, d.in_chans, d.crop_size, d.crop_size, device=self.device)
        self.batches = [self._batch(i) for i in range(pool)]

    def _batch(self, number: int) -> dict:
        masks = self.collator.masks(number, list(range(len(self.images))))
        on_device = {k: [t.to(self.device, non_blocking=True) for t in masks[k]] for k in ("context_idx", "target_idx")}
        return {"images": self.images, **on_device}

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


def block_flops(tokens: float, dim: int, depth: int) -> float:
    return depth * (24 * tokens * dim**2 + 4 * tokens**2 * dim)


def flops_per_image(cfg: Config, context_tokens: float, target_tokens: float, num_targets: int) -> float:
    size = resolve_size(cfg.meta.model_name)
    n = (cfg.data.crop_size // cfg.mask.patch_size) ** 2
    enc = 3 * block_flops(context_tokens, size.dim, size.depth) + block_flops(n, size.dim, size.depth)
    pred = (
        3 * num_targets * block_flops(context_tokens + target_tokens, cfg.meta.pred_emb_dim, predictor_depth(cfg.meta))
    )
    return enc + pred


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def bench(cfg: Config, steps: int = 10, windows: int = 3, warmup: int = 3, peak: float | None = None) -> dict:
    validate(cfg)
    if cfg.meta.objective != "ijepa":
        raise ConfigError(f"openjepa bench times I-JEPA's step; meta.objective {cfg.meta.objective} is not timed yet")
    B = cfg.data.batch_size
    rig = SyntheticStep(cfg, B, pool=0, narrow=False)  # masks are drawn inside the timed step here
    device, model, optimizer, params, collator, images, amp = (
        rig.device,
        rig.model,
        rig.optimizer,
        rig.params,
        rig.collator,
        rig.images,
        rig.amp,
    )
    cuda = device.type == "cuda"
    tokens, count = [], iter(range(10**9))
    names = ("masks", "target", "context", "backward", "optimizer", "ema")
    phases, marks, split = {k: [] for k in names}, {}, [False]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def mark(name: str):
        if split[0]:
            sync()
            marks[name] = time.perf_counter()  # the last call wins: the predictor runs once per mask group

    # The step is the training loop's own (train.accumulate, train.optimizer_step); when split, hooks
    # mark the end of the target forward, of the predictor (the loss and any regulariser are timed
    # with the backward) and of AdamW.
    model.target_encoder.register_forward_hook(lambda *_: mark("target"))
    model.predictor.register_forward_hook(lambda *_: mark("context"))
    optimizer.register_step_post_hook(lambda *_: mark("optimizer"))

    def step(timed_phases: bool = False):
        split[0] = timed_phases
        marks.clear()
        marks["start"] = time.perf_counter()
        batch = {"images": images, **collator.masks(next(count), list(range(B)))}
        tokens.append(
            (
                sum(c.size(0) * c.size(1) for c in batch["context_idx"]) / B,
                sum(t.size(0) * t.size(2) for t in batch["target_idx"]) / B,
                batch["target_idx"][0].size(1),
            )
        )
        mark("masks")
        accumulate(model, [batch], device, amp, 1.0)
        mark("backward")
        optimizer_step(model, optimizer, params, cfg.optimization.clip_grad, 0.996)
        mark("ema")
        if timed_phases:
            previous = marks["start"]
            for name in names:
                now = marks.get(name, previous)  # pixel targets: no target encoder, a 0 ms phase
                phases[name].append(now - previous)
                previous = now

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timed = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        timed.append((time.perf_counter() - start) / steps)
    for _ in range(steps):
        step(timed_phases=True)
    step_s = statistics.median(timed)
    kc, kt, m = (statistics.mean(t[i] for t in tokens) for i in range(3))
    flops = flops_per_image(cfg, kc, kt, round(m))
    peak = peak or peak_tflops(device)
    result = {
        "impl": "openjepa",
        "img_per_s": round(B / step_s, 1),
        "step_ms": round(step_s * 1e3, 2),
        "peak_mem_mb": round(memory_mb(device), 1),
        "gflop_per_img": round(flops / 1e9, 3),
        "phases_ms": {k: round(statistics.median(v) * 1e3, 2) for k, v in phases.items()},
        "context_tokens": round(kc, 1),
        "target_tokens": round(kt, 1),
        "windows_ms": [round(t * 1e3, 2) for t in timed],
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "batch": B,
        "model": cfg.meta.model_name,
        "torch": torch.__version__,
    }
    if peak:
        result["mfu"] = round(flops * B / step_s / (peak * 1e12), 4)
    return result


def bench_loader(cfg: Config, batches: int = 20, workers: tuple[int, ...] = (0, 1, 2), warmup: int = 2) -> dict:
    """The input pipeline alone, on the config's own data: read, decode, random resized crop,
    normalise, stack, and the masks of each batch, through the training loop's loader (workers
    started once); with ``data.decode_on_device`` the JPEG decoding and cropping on the device
    (``meta.device``) is timed with it. Returns images/s for each worker count, images/s per
    worker, and the mask sampler's cost alone in microseconds per image."""
    validate(cfg)
    d, device = cfg.data, resolve_device(cfg.meta.device)
    dataset = build_dataset(d)
    sampler, transform = mask_sampler_for(cfg), PretrainTransform.from_config(d)
    per_epoch = len(dataset) // d.batch_size
    if per_epoch < 1:
        raise DataError(f"the dataset has {len(dataset)} images, fewer than one batch of {d.batch_size}")
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(batches):
        sampler(d.batch_size, generator)
    masks_us = (time.perf_counter() - start) / batches / d.batch_size * 1e6
    result = {
        "impl": "openjepa-loader",
        "dataset": d.dataset,
        "images": len(dataset),
        "decode_on": str(device) if d.decode_on_device else "workers",
        "batch": d.batch_size,
        "crop_size": d.crop_size,
        "masks_us_per_img": round(masks_us, 2),
        "img_per_s": {},
        "img_per_s_per_worker": {},
    }
    for n in workers:
        loader = build_pretrain_loader(
            dataset,
            transform,
            sampler,
            d.batch_size,
            per_epoch,
            0,
            warmup + batches,
            cfg.meta.seed,
            n,
            encoded=d.decode_on_device,
            pack_group=cfg.mask.pack_group,
        )
        it = iter(loader)
        for _ in range(warmup):  # worker start-up and the first prefetches are not the steady state
            next(it)
        start, images = time.perf_counter(), 0
        for batch in it:
            batch = decode_batch(batch, transform, device, d.in_chans)  # data.decode_on_device: timed too
            images += 0 if batch["images"] is None else len(batch["images"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = images / (time.perf_counter() - start)
        result["img_per_s"][n] = round(rate, 1)
        result["img_per_s_per_worker"][n] = round(rate / max(n, 1), 1)
    return result
