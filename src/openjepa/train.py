"""The pretraining loop: set-up, resume, loop (schedules -> step -> EMA), log, checkpoint.

Schedules are pure functions of the step, and every batch is a pure function of (seed, batch
number), so a resumed run needs only the weights, the optimiser state and the step.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, CorruptCheckpoint, atomic_save, load_checkpoint
from .config import Config, ConfigError, validate
from .data import DataError, PretrainTransform, build_dataset, build_pretrain_loader, decode_batch, per_channel
from .device import resolve_device
from .distributed import World, gather_full_state, init_distributed, load_full_state, shard_ijepa
from .errors import check_writable_folder
from .ijepa import IJEPA, build_ijepa
from .masks import build_mask_sampler
from .regularizers import CollapseRegularizer

log = logging.getLogger("openjepa")

LOG_COLUMNS = ("step", "epoch", "loss", "target_std", "image_rankme", "image_spread", "probe_step", "lr", "wd", "momentum",
               "context_tokens", "target_tokens", "img_per_s", "mem_mb", "skipped_images", "elapsed_s")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


class Preempted(RuntimeError):
    """SIGTERM, SIGUSR1, SIGUSR2 or SIGINT (Ctrl-C) arrived; the run saved latest.pt at the next step
    boundary and stopped. ``signum`` says which."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Records SIGTERM / SIGUSR1 (what SLURM sends before pre-emption) and SIGUSR2 (what submitit
    asks SLURM to send before a time-out) instead of dying mid-step. ``hand_on`` then passes the
    signal to the handler that was there before (submitit's requeues the job), once the checkpoint
    is saved. SIGINT (Ctrl-C) is treated the same way; a second one aborts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.frame = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.received is not None:  # a stop is already pending: Ctrl-C now aborts without waiting
                raise KeyboardInterrupt
            log.warning("Ctrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again to abort "
                        "without saving)")
        elif self.received is not None:
            return  # the first signal decides (e.g. SLURM's SIGUSR1, whose handler requeues the job)
        self.received, self.frame = signum, frame

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def hand_on(self) -> None:
        """Restore the previous handlers and call the one for the received signal when it is a
        Python function (submitit's checkpoint-and-requeue); a default or ignored disposition is
        left alone: the caller stops the run."""
        if self.received in (None, signal.SIGINT):  # Python's own SIGINT handler would raise KeyboardInterrupt
            return
        handler = self.previous.get(self.received)
        self.restore()
        if callable(handler):
            handler(self.received, self.frame)

    def stop(self, latest: Path, where: str) -> None:
        """After ``latest`` is saved: log it, hand the signal on (submitit requeues the job, which
        resumes from ``latest``) and raise Preempted. ``where`` says where the run stopped."""
        received = self.received or signal.SIGTERM
        name = signal.Signals(received).name
        log.info("%s: saved %s at %s and stopped; start the same command again to resume", name, latest, where)
        self.hand_on()
        raise Preempted(f"{name} received: checkpoint {latest} saved at {where}; rerun to resume", received)


@dataclass(frozen=True)
class Schedules:
    """The reference's schedules, as functions of the 0-based optimiser step: LR linear warmup
    from start_lr to lr, then cosine to final_lr; weight decay cosine from weight_decay to
    final_weight_decay; EMA momentum linear from ema[0] to ema[1]. LR and WD are evaluated at
    step + 1 and the momentum at step, as the reference's step counters do."""

    start_lr: float
    lr: float
    final_lr: float
    warmup_steps: int
    total_steps: int  # ipe_scale x epochs x steps per epoch
    wd: float
    final_wd: float
    ema_start: float
    ema_end: float

    @classmethod
    def from_config(cls, o, steps_per_epoch: int) -> "Schedules":
        total = int(o.ipe_scale * o.epochs * steps_per_epoch)
        return cls(o.start_lr, o.lr, o.final_lr, int(o.warmup * steps_per_epoch), total,
                   o.weight_decay, o.final_weight_decay, o.ema[0], o.ema[1])

    def lr_at(self, step: int) -> float:
        s = step + 1
        if s < self.warmup_steps:
            return self.start_lr + s / max(1, self.warmup_steps) * (self.lr - self.start_lr)
        progress = (s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(self.final_lr, self.final_lr + (self.lr - self.final_lr) * 0.5 * (1 + math.cos(math.pi * progress)))

    def wd_at(self, step: int) -> float:
        progress = (step + 1) / max(1, self.total_steps)
        wd = self.final_wd + (self.wd - self.final_wd) * 0.5 * (1 + math.cos(math.pi * progress))
        return max(self.final_wd, wd) if self.final_wd <= self.wd else min(self.final_wd, wd)

    def momentum_at(self, step: int) -> float:
        return min(self.ema_end, self.ema_start + step * (self.ema_end - self.ema_start) / max(1, self.total_steps))


def param_groups(model: IJEPA) -> list[dict]:
    """AdamW groups: weight decay on matrices and kernels; none on biases and 1-D parameters."""
    decay, no_decay = [], []
    for module in (model.encoder, model.predictor):
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]


def build_optimizer(model: IJEPA, o) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; ``optimization.fused_adamw`` picks torch's fused kernel
    (the same update, computed in one kernel per device instead of one loop per tensor list)."""
    return torch.optim.AdamW(param_groups(model), lr=o.start_lr, weight_decay=o.weight_decay,
                             **({"fused": True} if o.fused_adamw else {}))


def memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup_logging(run_dir: Path | None) -> None:
    """stderr and run_dir/train.log; None (a rank other than 0): warnings to stderr only."""
    log.setLevel(logging.INFO if run_dir is not None else logging.WARNING)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False


class CSVLog:
    """A CSV log (log.csv, monitor.csv): the header written once; a resumed run appends, dropping
    rows past its step. ``rows`` holds the rows kept."""

    def __init__(self, path: Path, resume_step: int, columns=LOG_COLUMNS):
        self.path, self.columns = path, columns
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        else:
            self.rows = []
        with open(path, "w", newline="") as f:  # rewrite without rows from after the checkpoint
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)


def checkpoint_state(model: IJEPA, optimizer, step: int, epoch: int, cfg: Config, sharded: bool = False,
                     images_per_step: int | None = None) -> dict:
    """What a checkpoint holds. ``sharded`` (FSDP): collective, the full state gathered on process
    0 and {} returned elsewhere; the layout is the same either way. ``images_per_step``: the global
    batch (data.batch_size x processes x optimization.accum_steps), checked on resume."""
    if sharded:
        weights = gather_full_state(model, optimizer)
        if not weights:
            return {}
    else:
        weights = {"encoder": model.encoder.state_dict(), "predictor": model.predictor.state_dict(),
                   "target_encoder": model.target_encoder.state_dict(), "opt": optimizer.state_dict()}
    return {"format": "openjepa", "version": 1, "step": step, "epoch": epoch, **weights, "config": cfg.to_dict(),
            "images_per_step": images_per_step}


# Settings that change how a run is computed, not what: a resume may change them without a warning.
NOT_MATHEMATICS = {"meta.fsdp", "data.num_workers", "data.pin_mem", "optimization.allow_batch_change"}


def restore_state(path: Path, model: IJEPA, optimizer, cfg: Config, sharded: bool = False,
                  images_per_step: int | None = None) -> tuple[int, dict]:
    """Load ``path`` into the model and optimiser; (its step, the collapse probe's state).

    ``images_per_step`` (this run's global batch per optimiser step) is compared with the one the
    checkpoint was written at: a different one would silently change the steps per epoch, the
    schedules and the data order, so it is an error unless ``optimization.allow_batch_change``,
    which converts the step so that the images seen (and the schedules' position) are kept."""
    state = load_checkpoint(path)
    saved_batch = state.get("images_per_step")
    batch_changed = images_per_step is not None and saved_batch is not None and saved_batch != images_per_step
    if batch_changed:
        if not cfg.optimization.allow_batch_change:
            raise ConfigError(
                f"checkpoint {path} was written at a global batch of {saved_batch} images per optimiser step; this "
                f"run has {images_per_step} (data.batch_size x processes x optimization.accum_steps). Resume with "
                f"settings that give {saved_batch} images per step (e.g. fewer processes and a larger "
                f"data.batch_size or optimization.accum_steps), or set optimization.allow_batch_change=true to "
                f"continue at {images_per_step}: the step is then converted to keep the images seen")
    try:
        if sharded:
            load_full_state(model, optimizer, state)
        else:
            for key in ("encoder", "predictor", "target_encoder"):
                getattr(model, key).load_state_dict(state[key])
            optimizer.load_state_dict(state["opt"])
        step = int(state["step"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this config "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if batch_changed:
        converted = step * saved_batch // images_per_step
        log.warning("optimization.allow_batch_change: the checkpoint's %d steps of %d images continue as step %d of "
                    "%d images (the images seen and the schedules' position kept; the data order within the "
                    "epoch and the optimiser's state follow the old batch)", step, saved_batch, converted,
                    images_per_step)
        step = converted
    saved, now = state.get("config", {}), cfg.to_dict()
    changed = [f"{sec}.{key}" for sec, values in now.items() if sec != "logging"
               for key, value in values.items()
               if saved.get(sec, {}).get(key, value) != value and f"{sec}.{key}" not in NOT_MATHEMATICS]
    if changed:
        log.warning("resuming with changed settings (%s): the run is no longer one uninterrupted run",
                    ", ".join(changed))
    return step, state.get("collapse_probe", {})


def train(cfg: Config, max_steps: int | None = None, dataset: torch.utils.data.Dataset | None = None) -> Path:
    """Pretrain as ``cfg`` says; resume from ``<folder>/checkpoints/latest.pt`` if present.
    ``max_steps`` stops (with a checkpoint) after that many optimiser steps in total, for tests
    and interrupted runs. ``dataset`` (any dataset of (image [C, H, W] in [0, 1], label), e.g.
    ``openjepa.data.ArrayDataset``) replaces the one the config names. Returns the run directory."""
    validate(cfg)
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    # the reference keeps the checkpoint meta.read_checkpoint names in the run folder: that one file may be there
    check_run_dir(Path(cfg.logging.folder), allow=(str(cfg.meta.read_checkpoint),) if cfg.meta.load_checkpoint else ())
    resumes = (Path(cfg.logging.folder) / "checkpoints" / "latest.pt").exists()
    source = None if resumes else init_source(cfg)  # a run resuming its own checkpoint does not read it again
    init = prepare_init(source, cfg) if source is not None else None  # checked before anything is written
    if dataset is None:
        dataset = build_dataset(cfg.data)  # fails on a missing or empty data folder before anything is written
    world = init_distributed(cfg.meta.device)
    try:
        return _train(cfg, dataset, world, max_steps, init)
    finally:
        world.close()


def init_source(cfg: Config) -> Path | None:
    """The checkpoint a new run starts from: ``meta.init_from``, or the reference's spelling
    (``meta.load_checkpoint: true`` with ``meta.read_checkpoint``, a file the reference looks for in
    ``logging.folder``; also accepted as given). None when neither is set."""
    meta = cfg.meta
    if meta.init_from:
        path = Path(meta.init_from)
        if not path.exists():
            raise ConfigError(f"meta.init_from {path} not found")
        return path
    if not (meta.load_checkpoint and meta.read_checkpoint):
        return None
    candidates = [Path(cfg.logging.folder) / meta.read_checkpoint, Path(meta.read_checkpoint)]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise ConfigError(f"meta.read_checkpoint {meta.read_checkpoint} not found (looked for "
                          f"{' and '.join(map(str, candidates))})")
    return found


def prepare_init(path: Path, cfg: Config) -> dict:
    """The states ``meta.init_from`` gives each network, their position embeddings interpolated to
    this config's grid, checked tensor by tensor against the networks the config builds (a mismatch
    names the tensor). ``predictor`` is None when the source has none (an exported encoder)."""
    from .interop import init_states
    from .models.vit import interpolate_pos_embed

    fmt, states = init_states(path)
    with torch.device("meta"):
        shapes = build_ijepa(cfg)
    out = {}
    for key, state in states.items():
        if state is None:
            out[key] = None
            continue
        expected, state = getattr(shapes, key).state_dict(), dict(state)
        for name in ("pos_embed", "predictor_pos_embed"):
            have, want = state.get(name), expected.get(name)
            if have is not None and want is not None and have.shape != want.shape and have.shape[-1] == want.shape[-1]:
                side, new_side = math.isqrt(have.shape[1]), math.isqrt(want.shape[1])
                if side * side == have.shape[1] and new_side * new_side == want.shape[1]:
                    state[name] = interpolate_pos_embed(have, (side, side), (new_side, new_side))
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            what = f"has no tensor {key}.{missing[0]}" if missing else f"has a tensor {key}.{extra[0]}"
            raise ConfigError(f"meta.init_from {path} {what} that this config's network "
                              f"{'needs' if missing else 'does not have'}: is it of another model size or depth "
                              f"(meta.model_name, meta.pred_depth)?")
        for name, want in expected.items():
            if tuple(state[name].shape) != tuple(want.shape):
                raise ConfigError(f"meta.init_from {path}: tensor {key}.{name} is {tuple(state[name].shape)} there but "
                                  f"{tuple(want.shape)} for this config (meta.model_name, meta.pred_emb_dim, "
                                  f"mask.patch_size, data.in_chans must match the checkpoint's)")
        out[key] = state
    return {"path": str(path), "format": fmt, "states": out}


def load_init(model: IJEPA, init: dict) -> None:
    """Copy ``prepare_init``'s states into a freshly built model, and say what was taken."""
    fresh = init["states"]["predictor"] is None
    for key, state in init["states"].items():
        if state is not None:
            getattr(model, key).load_state_dict(state)
    init["states"].clear()  # the copies are in the model now: not held for the whole run
    log.info("initialised from %s (%s checkpoint): encoder, target encoder%s; new optimiser state and schedules",
             init["path"], init["format"],
             " and a fresh predictor (the source has none)" if fresh else " and predictor")


def _train(cfg: Config, dataset, world: World, max_steps: int | None, init: dict | None = None) -> Path:
    d, meta, o, lg = cfg.data, cfg.meta, cfg.optimization, cfg.logging
    device = resolve_device(meta.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    global_batch = d.batch_size * world.size
    images_per_step = global_batch * o.accum_steps
    micro_per_epoch = len(dataset) // global_batch // o.accum_steps * o.accum_steps
    if micro_per_epoch == 0:
        raise DataError(f"the dataset has {len(dataset)} images, fewer than one optimiser step of "
                        f"{images_per_step} (data.batch_size x processes x optimization.accum_steps)")
    steps_per_epoch = micro_per_epoch // o.accum_steps
    total_steps = o.epochs * steps_per_epoch
    try:
        sampler = mask_sampler_for(cfg)
    except ValueError as e:
        raise ConfigError(f"mask: {e}") from None

    run_dir = Path(lg.folder)
    ckpt_dir = run_dir / "checkpoints"
    if world.main:
        make_run_dir(run_dir)
    _setup_logging(run_dir if world.main else None)
    torch.manual_seed(meta.seed)
    model = build_ijepa(cfg).to(device)
    if init is not None:
        load_init(model, init)
    elif meta.init_from or (meta.load_checkpoint and meta.read_checkpoint):
        log.info("this run has its own checkpoint: meta.init_from / read_checkpoint is not read again")
    sharded = _shard(model, world, meta.fsdp)
    optimizer = build_optimizer(model, o)
    schedules = Schedules.from_config(scaled_lrs(o, images_per_step, world.main), steps_per_epoch)
    if model.regularizer is not None:  # meta.regularizer_final: the weights' cosine runs over the whole schedule
        model.regularizer.total_steps = schedules.total_steps
    latest = ckpt_dir / "latest.pt"
    start_step, resumed_probe = _resume(latest, model, optimizer, cfg, sharded, images_per_step)
    if start_step:
        log.info("resuming %s from step %d (epoch %d)", latest, start_step, start_step // steps_per_epoch)
    if world.main:
        atomic_save_text(run_dir / "config.yaml", cfg)
    stop_step = min(total_steps, max_steps) if max_steps is not None else total_steps
    if start_step >= stop_step:
        log.info("nothing to do: the run is at step %d of %d", start_step, stop_step)
        return run_dir

    transform = PretrainTransform.from_config(d)
    loader = build_pretrain_loader(dataset, transform, sampler, d.batch_size, micro_per_epoch,
                                   start_step * o.accum_steps, stop_step * o.accum_steps, meta.seed,
                                   d.num_workers, d.pin_mem and device.type == "cuda", world.rank, world.size,
                                   d.decode_on_device, cfg.mask.pack_group)
    autocast = autocast_for(meta, device)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    csv_log = CSVLog(run_dir / "log.csv", start_step) if world.main else None
    writer = _tensorboard(run_dir, lg, start_step) if world.main else None
    bar = tqdm(total=stop_step, initial=start_step, disable=not (lg.progress_bar and world.main), unit="step",
               dynamic_ncols=True)
    log.info("training %s on %s%s: %d images, %d steps/epoch of %d images (%d per process x %d processes x %d "
             "micro-batches), steps %d..%d, run dir %s", meta.model_name, device,
             " (bf16 autocast)" if bf16_autocast(meta, device) else " (fp32)", len(dataset), steps_per_epoch,
             images_per_step, d.batch_size, world.size, o.accum_steps, start_step, stop_step, run_dir)
    step_model = model
    if world.size > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                             broadcast_buffers=False)

    batches = iter(loader)
    window, watch = _Window(device, world), CollapseWatch()
    # A stream (tar shards) has no random access: the checks use its first readable images instead.
    check_images = max(lg.collapse_images if lg.collapse_every else 0, lg.monitor_images if lg.monitor_every else 0)
    check_data = dataset.head(check_images, d.crop_size) \
        if hasattr(dataset, "head") and check_images and (world.main or sharded) else dataset
    # Under FSDP the target encoder's forward is collective: every process runs the monitor, process 0 writes.
    monitor = Monitor(cfg, check_data, run_dir, start_step, writer, world.main) \
        if lg.monitor_every and (world.main or sharded) else None
    # The collapse probe's forward is collective under FSDP too: every process runs it, process 0 reports.
    probe = CollapseProbe(cfg, check_data, world.main) if lg.collapse_every and (world.main or sharded) else None
    if probe is not None and start_step == 0:
        probe.check(model.target_encoder, 0)  # the random encoder's reading, to compare with
    elif probe is not None:
        probe.resume(resumed_probe)  # log rows carry the newest reading, as in an uninterrupted run
    skips, t0 = _Skips(o.skip_nonfinite_steps, latest), time.perf_counter()
    signals = StopSignals()
    try:
        for step in range(start_step, stop_step):
            lr, wd, momentum = schedules.lr_at(step), schedules.wd_at(step), schedules.momentum_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group["decay"]:
                    group["weight_decay"] = wd
            micro = []
            for _ in range(o.accum_steps):
                batch = skips.count_images(decode_batch(next(batches), transform, device, d.in_chans))
                # All processes skip a micro-batch together when one has no readable image in it: a process
                # that skipped alone would leave the others waiting in the gradient all-reduce.
                if world.any(batch["images"] is None, device):
                    if batch["images"] is not None:
                        log.warning("micro-batch %d skipped on every process: another process had no readable "
                                    "image in its share of it", batch["batch"])
                    continue
                micro.append(batch)
            results = accumulate(step_model, micro, device, autocast, 1.0 / o.accum_steps, step)
            # Only with skipping on is the loss read back every step (a host sync) to decide.
            if o.skip_nonfinite_steps and world.any(not all(bool(r[0].isfinite()) for r in results), device):
                optimizer.zero_grad(set_to_none=True)
                skips.nonfinite_step(step + 1)
            else:
                for loss, std, counts in results:
                    window.add(loss, std, *counts)
                optimizer_step(model, optimizer, params, o.clip_grad, momentum)
            bar.update(1)

            done = step + 1
            epoch_end = done % steps_per_epoch == 0
            stop_now = world.any(signals.received is not None, device)
            save_now = (epoch_end or done == stop_step or stop_now
                        or (lg.checkpoint_every_steps and done % lg.checkpoint_every_steps == 0))
            if save_now or done % lg.log_every == 0:
                window.check_finite(done, latest)  # never log or checkpoint past a non-finite loss
            if probe is not None and (done % lg.collapse_every == 0 or done == total_steps):
                probe.check(model.target_encoder, done)
            if done % lg.log_every == 0 or done == stop_step:
                row = window.read(done, done / steps_per_epoch, lr, wd, momentum, skips.images, time.perf_counter() - t0)
                row.update(probe.latest if probe is not None else CollapseProbe.EMPTY)
                _log_row(row, csv_log, writer, watch if world.main else None, bar)
            if monitor is not None and epoch_end and (done // steps_per_epoch) % lg.monitor_every == 0:
                monitor.check(model.target_encoder, autocast, done, done // steps_per_epoch)
            if save_now and (world.main or sharded):
                epoch = done // steps_per_epoch
                state = checkpoint_state(model, optimizer, done, epoch, cfg, sharded,  # collective under FSDP
                                         images_per_step)
                if world.main and probe is not None:
                    state["collapse_probe"] = probe.state()
                if world.main:
                    _save(state, ckpt_dir, lg, periodic=epoch_end and (epoch % lg.checkpoint_every == 0
                                                                         or done == total_steps))
            if stop_now:
                signals.stop(latest, f"step {done}")
    finally:
        signals.restore()
        _close_loader(batches)
        bar.close()
        if writer is not None:
            writer.close()
    log.info("stopped at step %d of %d; checkpoint %s", stop_step, total_steps, latest)
    return run_dir


RUN_MARKER = ".openjepa-run"  # written into every run directory: what makes a folder one of ours


def is_run_dir(folder: Path) -> bool:
    """One of our run directories: the marker, or (runs from before the marker) a checkpoint in
    checkpoints/ (an empty checkpoints/ folder is common in other tools' folders)."""
    return (folder / RUN_MARKER).is_file() or any((folder / "checkpoints").glob("*.pt"))


def check_run_dir(run_dir: Path, what: str = "logging.folder", allow: tuple[str, ...] = ()) -> None:
    """A run directory (``what``: ``logging.folder``, or a command's ``--out``) must be a folder that
    does not exist yet, an empty one (but for the names in ``allow``), or one of our runs (which is
    resumed). A folder holding anything else is the user's and is never written into."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{what} {run_dir} is a file, not a folder")
    if not run_dir.is_dir():
        check_writable_folder(run_dir, what)
        return
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {run_dir} cannot be written (no permission)")
    if is_run_dir(run_dir):
        return
    found = sorted(p.name for p in run_dir.iterdir() if p.name not in allow)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(f"{what} {run_dir} holds files that are not an openjepa run ({shown}); "
                          f"give a new or empty folder (a run never writes into a folder it did not make)")


def make_run_dir(run_dir: Path, what: str = "logging.folder") -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = run_dir / RUN_MARKER
        if not marker.exists():
            marker.write_text(f"openjepa run directory (openjepa {_version()})\n")
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {run_dir} cannot be written: {e.strerror or e}") from None


def _version() -> str:
    from . import __version__
    return __version__


def scaled_lrs(o, images_per_step: int, report: bool = True):
    """The optimisation settings with start_lr, lr and final_lr scaled as ``optimization.lr_scaling``
    says (by the global batch over ``optimization.reference_batch``: linearly, or by its square
    root); logs the global batch beside the reference one, with a warning when they differ and the
    LR is not scaled."""
    ref = o.reference_batch
    factor = 1.0
    if ref is not None and o.lr_scaling != "none":
        factor = images_per_step / ref if o.lr_scaling == "linear" else math.sqrt(images_per_step / ref)
    if report:
        if ref is None:
            log.info("global batch %d images per step (optimization.reference_batch not set: the LR %g is used as "
                     "given)", images_per_step, o.lr)
        elif factor != 1.0:
            log.info("global batch %d, the recipe's reference batch %d: LRs scaled %s by %.4g (lr %g -> %g)",
                     images_per_step, ref, o.lr_scaling, factor, o.lr, o.lr * factor)
        elif images_per_step != ref:
            log.warning("global batch %d images per step, but the recipe's LR %g was set for %d "
                        "(optimization.reference_batch); the LR is not scaled (optimization.lr_scaling=none)",
                        images_per_step, o.lr, ref)
        else:
            log.info("global batch %d images per step, the recipe's reference batch", images_per_step)
    if factor == 1.0:
        return o
    return dataclasses.replace(o, start_lr=o.start_lr * factor, lr=o.lr * factor, final_lr=o.final_lr * factor)


def _close_loader(batches) -> None:
    """Stop the loader's worker processes now. They ignore SIGTERM (the main process acts on it at a
    step boundary), so left to the interpreter's exit, multiprocessing would send them a SIGTERM
    they ignore and wait for them forever: a pre-empted run saved its checkpoint, then hung."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process loader iterator
    if shutdown is not None:
        shutdown()


def _shard(model: IJEPA, world: World, fsdp: bool) -> bool:
    """FSDP when ``meta.fsdp`` asks and there are processes to shard over; True if sharded."""
    if fsdp and world.size > 1:
        local, total = shard_ijepa(model)
        log.info("FSDP over %d processes: this process holds %d of the %d parameter elements", world.size, local, total)
        return True
    if fsdp:
        log.info("meta.fsdp: one process, nothing to shard")
    return False


def _resume(latest: Path, model: IJEPA, optimizer, cfg: Config, sharded: bool,
            images_per_step: int | None = None) -> tuple[int, dict]:
    """The step ``latest.pt`` holds (its state loaded) and its collapse-probe state, or (0, {}) when
    there is none. A checkpoint that cannot be used is an error naming it; a corrupt one also names
    the newest periodic one to fall back on."""
    if not latest.exists():
        return 0, {}
    try:
        return restore_state(latest, model, optimizer, cfg, sharded, images_per_step)
    except CorruptCheckpoint as e:
        periodic = sorted(latest.parent.glob("epoch_*.pt"))
        hint = f"; the newest periodic checkpoint is {periodic[-1]}: copy it over latest.pt to resume from it" \
            if periodic else ""
        raise CheckpointError(f"{e}{hint}") from None


class _Skips:
    """Counts what the run skipped: unreadable images (logged with an example) and, when
    ``optimization.skip_nonfinite_steps`` allows, steps whose loss was not finite (an error past
    the limit)."""

    def __init__(self, limit: int, latest: Path):
        self.limit, self.latest = limit, latest
        self.images = self.steps = 0

    def count_images(self, batch: dict) -> dict:
        if batch["skipped"]:
            self.images += len(batch["skipped"])
            log.warning("skipped %d unreadable image(s) (%d so far), e.g. %s", len(batch["skipped"]), self.images,
                        batch["skipped"][0])
        return batch

    def nonfinite_step(self, step: int) -> None:
        self.steps += 1
        log.warning("non-finite loss at step %d: step skipped (%d of at most %d)", step, self.steps, self.limit)
        if self.steps > self.limit:
            raise TrainingError(f"more than optimization.skip_nonfinite_steps={self.limit} steps had a non-finite "
                                f"loss (the last at step {step}); stopping. The last good checkpoint {self.latest} "
                                f"is kept")


def _log_row(row: dict, csv_log: CSVLog | None, writer, watch: CollapseWatch | None, bar) -> None:
    if csv_log is not None:
        csv_log.append(row)
    if watch is not None and watch.update(row["target_std"]):
        log.warning("the representation may be collapsing: target_std %.4f at step %d, down from %.4f at the first "
                    "log; lower the learning rate or raise the EMA momentum", row["target_std"], row["step"], watch.first)
    if writer is not None:
        for key in LOG_COLUMNS[2:-1]:
            if row[key] != "" and key != "probe_step":
                writer.add_scalar(f"train/{key}", row[key], row["step"])
    postfix = {"loss": f"{row['loss']:.4f}", "img_s": f"{row['img_per_s']:.0f}"}
    if row["image_rankme"] != "":
        postfix["spread"] = f"{row['image_spread']:.3f}"  # the collapse probe's: falls when the features collapse
        postfix["rankme"] = f"{row['image_rankme']:.1f}"
    bar.set_postfix(**postfix)


def _save(state: dict, ckpt_dir: Path, lg, periodic: bool) -> None:
    """latest.pt always; with ``periodic`` also epoch_NNNN.pt, keeping the newest ``logging.keep_last``."""
    atomic_save(state, ckpt_dir / "latest.pt")
    if periodic:
        atomic_save(state, ckpt_dir / f"epoch_{state['epoch']:04d}.pt")
        for old in sorted(ckpt_dir.glob("epoch_*.pt"))[:-lg.keep_last] if lg.keep_last else []:
            old.unlink()


def mask_sampler_for(cfg: Config):
    m, grid = cfg.mask, (cfg.data.crop_size // cfg.mask.patch_size,) * 2
    if m.strategy == "block":
        return build_mask_sampler("block", grid, **{"min_keep": m.min_keep, **m.options})
    if m.strategy != "multiblock":
        return build_mask_sampler(m.strategy, grid, **m.options)
    return build_mask_sampler("multiblock", grid, reference=m.reference_sampler, num_targets=m.num_pred_masks,
                              target_scale=m.pred_mask_scale, target_aspect=m.aspect_ratio,
                              context_scale=m.enc_mask_scale, min_keep=m.min_keep,
                              allow_overlap=m.allow_overlap, **m.options)


def autocast_for(meta, device: torch.device):
    """bf16 autocast on CUDA (``meta.use_bfloat16``, no GradScaler: bf16 has fp32's range) and,
    when ``meta.cpu_bfloat16`` asks, on CPU (``auto``: where the CPU has native bf16 matmuls, AMX or
    AVX512-BF16); plain fp32 otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast(meta, device))


def bf16_autocast(meta, device: torch.device) -> bool:
    """Whether a run on ``device`` trains under bf16 autocast: ``meta.use_bfloat16`` on CUDA;
    ``meta.cpu_bfloat16`` on CPU, ``auto`` resolved to this CPU's capability (BENCHMARKS.md: about
    1.9x the fp32 step on an AMX Xeon, accuracy within 0.2 linear points at equal steps)."""
    if device.type == "cuda":
        return meta.use_bfloat16
    if meta.cpu_bfloat16 == "auto":
        from . import device as machine  # looked up per call: tests replace it
        return machine.cpu_has_fast_bf16()
    return bool(meta.cpu_bfloat16)


def forward_backward(model: nn.Module, batch: dict, device: torch.device, autocast, scale: float, step: int = 0):
    """One micro-batch: the loss and its gradient (scaled for accumulation). Returns the loss, the
    target spread and the (images, context tokens, target tokens) counts (tokens per image, averaged
    over the batch's mask groups), the tensors left on the device."""
    images = batch["images"].to(device, non_blocking=True)
    context_idx, target_idx = batch["context_idx"], batch["target_idx"]
    if isinstance(context_idx, torch.Tensor):
        context_idx, target_idx = [context_idx], [target_idx]
    context_idx = [c.to(device, non_blocking=True) for c in context_idx]
    target_idx = [t.to(device, non_blocking=True) for t in target_idx]
    with autocast:
        loss, targets = model(images, context_idx, target_idx, return_target=True, step=step)
    (loss * scale).backward()
    n = len(images)
    tokens = (sum(c.size(0) * c.size(1) for c in context_idx) / n,
              sum(t.size(0) * t.size(1) * t.size(2) for t in target_idx) / n)
    return loss.detach(), target_std(targets), (n, *tokens)


def accumulate(step_model: nn.Module, micro: list[dict], device: torch.device, autocast, scale: float,
               step: int = 0) -> list:
    """Forward and backward over one optimiser step's micro-batches, the gradients summed. Across
    processes they are synchronised once, with the last micro-batch: DDP's ``no_sync`` and FSDP's
    ``set_requires_gradient_sync(False)`` hold back the all-reduce (or reduce-scatter) before it.
    Returns forward_backward's result for each micro-batch."""
    results = []
    for i, batch in enumerate(micro):
        with gradient_sync(step_model, i == len(micro) - 1):
            results.append(forward_backward(step_model, batch, device, autocast, scale, step))
    return results


def optimizer_step(model: IJEPA, optimizer, params: list, clip_grad: float, momentum: float) -> None:
    """After the step's gradients: clip (when ``clip_grad`` > 0), AdamW, and the EMA of the target."""
    if clip_grad > 0:
        nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_target(momentum)


@contextlib.contextmanager
def gradient_sync(step_model: nn.Module, sync: bool):
    """Gradients communicated across processes in this backward only when ``sync``."""
    if sync:
        yield
        return
    if hasattr(step_model, "no_sync"):  # DDP
        with step_model.no_sync():
            yield
        return
    sharded = [m for m in step_model.children() if hasattr(m, "set_requires_gradient_sync")]  # FSDP (fully_shard)
    for module in sharded:
        module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        for module in sharded:
            module.set_requires_gradient_sync(True)


class _Window:
    """Sums the loss on the device between log points: one host read-back per window."""

    def __init__(self, device: torch.device, world: World):
        self.device, self.world = device, world
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self._reset()

    def check_finite(self, step: int, latest: Path) -> None:
        if self.world.any(not bool(self.finite), self.device):
            raise TrainingError(f"non-finite loss before step {step}; stopping. The last good checkpoint "
                                f"{latest if latest.exists() else '(none yet)'} is kept")

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.std_sum = torch.zeros((), device=self.device)
        self.batches = self.images = self.context = self.target = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, std: torch.Tensor, images: int, context_tokens: int, target_tokens: int) -> None:
        self.loss_sum += loss.float()
        self.std_sum += std
        self.finite &= torch.isfinite(loss)
        self.batches += 1
        self.images += images
        self.context += context_tokens
        self.target += target_tokens

    def read(self, step, epoch, lr, wd, momentum, skipped, elapsed) -> dict:
        n = max(self.batches, 1)
        self.world.mean(self.loss_sum)
        self.world.mean(self.std_sum)
        row = {"step": step, "epoch": round(epoch, 4), "loss": float(self.loss_sum) / n,
               "target_std": float(self.std_sum) / n, "lr": lr, "wd": wd,
               "momentum": momentum, "context_tokens": self.context / n, "target_tokens": self.target / n,
               "img_per_s": self.images * self.world.size / max(time.perf_counter() - self.start, 1e-9),
               "mem_mb": round(memory_mb(self.device), 1), "skipped_images": skipped, "elapsed_s": round(elapsed, 2)}
        self._reset()
        return row


class CollapseWatch:
    """Flags (once) a target_std below ``ratio`` times its first logged value."""

    def __init__(self, ratio: float = 0.3):
        self.ratio, self.first, self.warned = ratio, None, False

    def update(self, std: float) -> bool:
        if self.first is None:
            self.first = std
            return False
        if self.warned or std >= self.ratio * self.first:
            return False
        self.warned = True
        return True


class CollapseProbe:
    """At step 0 and every ``logging.collapse_every`` steps: how much the target encoder's pooled
    features depend on the image, on a fixed batch of ``logging.collapse_images`` training images.

    - ``image_rankme``: RankMe of the pooled features after removing their mean over the batch, the
      effective number of directions in which images differ (``evaluate.rankme`` on centred features);
    - ``image_spread``: the spread of the pooled features across images relative to their size,
      sqrt(mean per-dimension variance / mean square): 0 when every image gives the same vector.

    Per-token statistics (``target_std``) cannot see the collapse that matters here: features that
    encode the patch's position and not the image still spread across tokens. The step-0 reading is
    the random encoder's, whose pooled features are mostly the position embeddings' average (ViT-Tiny
    on Fashion-MNIST: image_spread 0.053). A later ``image_spread`` below ``SPREAD_RATIO`` times that
    reading, or an ``image_rankme`` below ``RANKME_FLOOR``, is logged as a warning (once per run):
    the features depend on the image less than a random network's do. The readings go to log.csv,
    TensorBoard and the progress bar."""

    RANKME_FLOOR, SPREAD_RATIO = 4.0, 0.5
    EMPTY = {"image_rankme": "", "image_spread": "", "probe_step": ""}

    def __init__(self, cfg: Config, dataset, main: bool = True):
        from .evaluate.monitor import monitor_subset

        d = cfg.data
        self.dataset, self.main = dataset, main
        self.indices = monitor_subset(len(dataset), cfg.logging.collapse_images, cfg.meta.seed + 1)
        self.mean, self.std = per_channel(d.mean, d.in_chans), per_channel(d.std, d.in_chans)
        self.images, self.loaded = None, False  # read once, at the first check
        self.latest = dict(self.EMPTY)
        self.first: dict | None = None  # the step-0 reading
        self.warned = False
        self.advice = ("Lower the learning rate, or raise the regularisers' weights"
                       if CollapseRegularizer.from_config(cfg.meta).active else
                       "Lower the learning rate, or turn on meta.variance_weight / meta.covariance_weight")

    def state(self) -> dict:
        return {"latest": self.latest, "first": self.first, "warned": self.warned}

    def resume(self, state: dict) -> None:
        self.latest = dict(state.get("latest", self.EMPTY))
        self.first, self.warned = state.get("first"), bool(state.get("warned", False))

    @classmethod
    def reasons(cls, reading: dict, first: dict | None) -> list[str]:
        """Which floors the reading is under, in words: image_rankme under RANKME_FLOOR, image_spread
        under SPREAD_RATIO times the step-0 reading (none: not collapsed)."""
        why = []
        if reading["image_rankme"] < cls.RANKME_FLOOR:
            why.append(f"image_rankme {reading['image_rankme']:.1f} is under the floor of {cls.RANKME_FLOOR:.0f}: "
                       f"the pooled features vary along only a few directions")
        if first is not None and reading["image_spread"] < cls.SPREAD_RATIO * first["image_spread"]:
            why.append(f"image_spread {reading['image_spread']:.3f} is under {cls.SPREAD_RATIO:g} x the random "
                       f"encoder's {first['image_spread']:.3f} at step 0: the features depend on the image less than "
                       f"a random network's do")
        return why

    @classmethod
    def collapsed(cls, reading: dict, first: dict | None) -> bool:
        return bool(cls.reasons(reading, first))

    def check(self, encoder: nn.Module, step: int) -> dict:
        """Read the probe (in fp32 whatever the run's autocast: bf16 rounding alone adds directions
        to a RankMe of nearly identical features)."""
        from .evaluate.monitor import collapse_statistics, fixed_batch

        if not self.loaded:
            self.images = fixed_batch(self.dataset, self.indices, encoder.img_size)  # skipped ones are logged
            self.loaded = True
        if self.images is None or len(self.images) < 2:
            return self.latest  # nothing to measure a spread on
        fp32 = torch.autocast(next(encoder.parameters()).device.type, enabled=False)
        stats = collapse_statistics(encoder, self.images, self.mean, self.std, fp32)
        self.latest = {**{key: round(value, 4) for key, value in stats.items()}, "probe_step": step}
        if not self.main:
            return self.latest
        if step == 0:
            self.first = self.latest
        log.info("collapse probe at step %d: image_rankme %.1f, image_spread %.3f%s", step, stats["image_rankme"],
                 stats["image_spread"], " (the random initial encoder)" if step == 0 else "")
        if step > 0 and not self.warned and self.collapsed(self.latest, self.first):
            self.warned = True
            log.warning("the features are collapsing: at step %d, on the target encoder's pooled features of %d images, "
                        "%s. %s (see the README's Collapse section)", step, len(self.images),
                        "; and ".join(self.reasons(self.latest, self.first)), self.advice)
        return self.latest


class Monitor:
    """Every ``logging.monitor_every`` epochs: kNN accuracy, RankMe and feature spread of the
    target encoder on a fixed subset (see ``evaluate.monitor``), to monitor.csv and TensorBoard,
    with a warning when RankMe or the spread falls below half its first value."""

    def __init__(self, cfg: Config, dataset, run_dir: Path, start_step: int, writer, main: bool = True):
        from .evaluate.monitor import MONITOR_COLUMNS, monitor_subset

        d = cfg.data
        self.dataset, self.writer, self.columns = dataset, writer, MONITOR_COLUMNS
        self.indices = monitor_subset(len(dataset), cfg.logging.monitor_images, cfg.meta.seed)
        self.mean, self.std = per_channel(d.mean, d.in_chans), per_channel(d.std, d.in_chans)
        self.log = CSVLog(run_dir / "monitor.csv", start_step, MONITOR_COLUMNS) if main else None
        rows = self.log.rows if main else []
        self.first = {k: float(rows[0][k]) for k in ("rankme", "feature_std")} if rows else None
        self.warned = False

    def check(self, encoder: nn.Module, autocast, step: int, epoch: int) -> dict:
        from .evaluate.monitor import monitor

        t0 = time.perf_counter()
        row = {"step": step, "epoch": epoch, **monitor(encoder, self.dataset, self.indices, self.mean, self.std, autocast)}
        if self.log is None:  # a process other than 0 under FSDP: it took part in the forward passes
            return row
        self.log.append(row)
        if self.writer is not None:
            for key in self.columns[2:]:
                if row[key] is not None:
                    self.writer.add_scalar(f"monitor/{key}", row[key], step)
        knn = "n/a (no labels)" if row["knn_acc"] is None else f"{100 * row['knn_acc']:.1f}%"
        log.info("monitor at epoch %d: kNN@20 %s, RankMe %.1f, feature_std %.4f (%.1f s)", epoch, knn, row["rankme"],
                 row["feature_std"], time.perf_counter() - t0)
        if self.first is None:
            self.first = {k: row[k] for k in ("rankme", "feature_std")}
        elif not self.warned and any(row[k] < 0.5 * self.first[k] for k in self.first):
            self.warned = True
            log.warning("the representation may be collapsing: RankMe %.1f (first %.1f), feature_std %.4f (first %.4f) "
                        "at epoch %d", row["rankme"], self.first["rankme"], row["feature_std"],
                        self.first["feature_std"], epoch)
        return row


def target_std(target) -> torch.Tensor:
    """Spread of the target features across tokens and images: the per-dimension standard
    deviation, averaged over dimensions. It falls towards 0 when the representation collapses
    (every patch mapped to the same vector), even while the loss looks healthy."""
    targets = [target] if isinstance(target, torch.Tensor) else target
    return torch.cat([t.detach().float().flatten(0, -2) for t in targets]).std(0).mean()


def _tensorboard(run_dir: Path, lg, start_step: int):
    if not lg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir / "tensorboard" / lg.write_tag), purge_step=start_step or None)


def atomic_save_text(path: Path, cfg: Config) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    cfg.save(tmp)
    tmp.replace(path)
