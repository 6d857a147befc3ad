"""Pretraining: set-up, then the engine's loop, then done.

Schedules are pure functions of the step, and every batch is a pure function of (seed, batch
number), so a resumed run needs only the weights, the optimiser state and the step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..config import Config, ConfigError, validate
from ..data import (
    DataError,
    build_dataset,
    build_pretrain_loader,
    check_readable,
    close_loader,
    decode_batch,
)
from ..device import autocast, resolve_device, training_bf16
from ..dino import build_dino
from ..distributed import World, init_distributed
from ..engine import (
    Checkpointer,
    CSVLog,
    Hook,
    Schedules,
    TrainingError,
    Window,
    check_run_dir,
    make_run_dir,
    memory_mb,
    progress_bar,
    run_steps,
    setup_logging,
    tensorboard,
    write_atomic,
    write_held_log,
)
from ..ijepa import build_ijepa, resolve_config
from ..masks import mask_sampler_for
from .objective import pretrain_inputs
from .probes import CollapseProbe, CollapseWatch, Monitor
from .state import checkpoint_state, init_source, load_init, prepare_init, restore_state, scaled_lrs, shard
from .step import accumulate, build_optimizer, optimizer_step, record, set_hyperparameters

log = logging.getLogger("openjepa")

LOG_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "target_std",
    "image_rankme",
    "image_spread",
    "probe_step",
    "lr",
    "wd",
    "momentum",
    "context_tokens",
    "target_tokens",
    "img_per_s",
    "mem_mb",
    "skipped_images",
    "elapsed_s",
)


def train(cfg: Config, max_steps: int | None = None, dataset: torch.utils.data.Dataset | None = None) -> Path:
    """Pretrain as ``cfg`` says; resume from ``<folder>/checkpoints/latest.pt`` if present.
    ``max_steps`` stops (with a checkpoint) after that many optimiser steps in total, for tests
    and interrupted runs. ``dataset`` (any dataset of (image [C, H, W] in [0, 1], label), e.g.
    ``openjepa.data.ArrayDataset``) replaces the one the config names. Returns the run directory."""
    cfg = resolve_config(validate(cfg))
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
    # the reference keeps the checkpoint meta.read_checkpoint names in the run folder: that one file may be there
    check_run_dir(Path(cfg.logging.folder), allow=(str(cfg.meta.read_checkpoint),) if cfg.meta.load_checkpoint else ())
    resumes = (Path(cfg.logging.folder) / "checkpoints" / "latest.pt").exists()
    source = None if resumes else init_source(cfg)  # a run resuming its own checkpoint does not read it again
    init = prepare_init(source, cfg) if source is not None else None  # checked before anything is written
    if dataset is None:
        dataset = build_dataset(cfg.data)  # fails on a missing or empty data folder before anything is written
    check_readable(dataset, f"data.dataset={cfg.data.dataset} {cfg.data.root_path}".rstrip())
    world = init_distributed(cfg.meta.device)
    try:
        return _train(cfg, dataset, world, max_steps, init)
    finally:
        world.close()


def _train(cfg: Config, dataset, world: World, max_steps: int | None, init: dict | None) -> Path:
    d, meta, o, lg = cfg.data, cfg.meta, cfg.optimization, cfg.logging
    device = resolve_device(meta.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    images_per_step = d.batch_size * world.size * o.accum_steps
    micro_per_epoch = len(dataset) // (d.batch_size * world.size) // o.accum_steps * o.accum_steps
    if micro_per_epoch == 0:
        raise DataError(
            f"the dataset has {len(dataset)} images, fewer than one optimiser step of "
            f"{images_per_step} (data.batch_size x processes x optimization.accum_steps)"
        )
    steps_per_epoch = micro_per_epoch // o.accum_steps
    total_steps = o.epochs * steps_per_epoch
    try:
        sampler = mask_sampler_for(cfg)
    except ValueError as e:
        raise ConfigError(f"mask: {e}") from None

    run_dir = Path(lg.folder)
    checkpoints = Checkpointer(run_dir / "checkpoints", lg.keep_last)
    resuming = checkpoints.latest.exists()
    if world.main:
        make_run_dir(run_dir)
    # A resume that is refused writes nothing: train.log is opened once the checkpoint is accepted.
    setup_logging(run_dir if world.main and not resuming else None, hold=world.main and resuming)
    schedules = Schedules.from_config(scaled_lrs(o, images_per_step, report=False), steps_per_epoch)
    torch.manual_seed(meta.seed)
    build = build_dino if meta.objective == "dino" else build_ijepa  # meta.objective: the model, then its inputs
    model = build(cfg, schedules.total_steps).to(device)
    if world.size > 1 and device.type == "cuda":  # a BatchNorm (DINO's head option) sees every GPU's batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if init is not None:
        load_init(model, init)
    elif meta.init_from or (meta.load_checkpoint and meta.read_checkpoint):
        log.info("this run has its own checkpoint: meta.init_from / read_checkpoint is not read again")
    sharded = shard(model, world, meta.fsdp)
    optimizer = build_optimizer(model, o)
    state = checkpoints.load_latest()
    start_step, resumed_probe = (
        restore_state(state, checkpoints.latest, model, optimizer, cfg, sharded, images_per_step)
        if state is not None
        else (0, {})
    )
    del state
    if resuming and world.main:
        write_held_log(run_dir)
    scaled_lrs(o, images_per_step, world.main)  # the global batch beside the recipe's, in the log
    if start_step:
        log.info("resuming %s from step %d (epoch %d)", checkpoints.latest, start_step, start_step // steps_per_epoch)
    if world.main:
        write_atomic(run_dir / "config.yaml", cfg.dump())
    stop_step = min(total_steps, max_steps) if max_steps is not None else total_steps
    if start_step >= stop_step:
        log.info("nothing to do: the run is at step %d of %d", start_step, stop_step)
        return run_dir

    transform, collate = pretrain_inputs(cfg)
    loader = build_pretrain_loader(
        dataset,
        transform,
        sampler,
        d.batch_size,
        micro_per_epoch,
        start_step * o.accum_steps,
        stop_step * o.accum_steps,
        meta.seed,
        d.num_workers,
        d.pin_mem and device.type == "cuda",
        world.rank,
        world.size,
        d.decode_on_device,
        cfg.mask.pack_group,
        collate,
    )
    bf16 = training_bf16(meta, device)
    log.info(
        "training %s on %s%s: %d images, %d steps/epoch of %d images (%d per process x %d processes x %d "
        "micro-batches), steps %d..%d, run dir %s",
        meta.model_name,
        device,
        " (bf16 autocast)" if bf16 else " (fp32)",
        len(dataset),
        steps_per_epoch,
        images_per_step,
        d.batch_size,
        world.size,
        o.accum_steps,
        start_step,
        stop_step,
        run_dir,
    )
    step_model = model
    if world.size > 1 and not sharded:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )

    batches = iter(loader)
    bar = progress_bar(stop_step, start_step, lg.progress_bar and world.main)
    writer = tensorboard(run_dir / "tensorboard" / lg.write_tag, start_step, lg.tensorboard) if world.main else None
    # A stream (tar shards) has no random access: the checks use its first readable images instead.
    check_images = max(lg.collapse_images if lg.collapse_every else 0, lg.monitor_images if lg.monitor_every else 0)
    check_data = (
        dataset.head(check_images, d.crop_size)
        if hasattr(dataset, "head") and check_images and (world.main or sharded)
        else dataset
    )
    # Under FSDP the target encoder's forward is collective: every process runs the checks, process 0 writes.
    monitor = (
        Monitor(cfg, check_data, run_dir, start_step, writer, world.main)
        if lg.monitor_every and (world.main or sharded)
        else None
    )
    probe = CollapseProbe(cfg, check_data, world.main) if lg.collapse_every and (world.main or sharded) else None
    if probe is not None and start_step == 0:
        probe.check(model.target_encoder, 0)  # the random encoder's reading, to compare with
    elif probe is not None:
        probe.resume(resumed_probe)  # log rows carry the newest reading, as in an uninterrupted run

    amp = autocast(device, bf16)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    window, skips, t0 = Window(device, world), _Skips(o.skip_nonfinite_steps, checkpoints.latest), time.perf_counter()
    csv_log = CSVLog(run_dir / "log.csv", start_step, LOG_COLUMNS) if world.main else None
    watch = CollapseWatch()
    epoch_log = {"steps": 0, "trained": 0, "read": 0, "skipped": 0}  # this session's part of the epoch
    masked = meta.objective == "ijepa"  # DINO's views have no masks: the token columns stay empty

    def step_fn(step: int) -> None:
        lr, wd, momentum = schedules.lr_at(step), schedules.wd_at(step), schedules.momentum_at(step)
        set_hyperparameters(optimizer, lr, wd)
        micro = []
        for _ in range(o.accum_steps):
            batch = skips.count_images(decode_batch(next(batches), transform, device, d.in_chans))
            epoch_log["skipped"] += len(batch["skipped"])
            epoch_log["read"] += 0 if batch["images"] is None else len(batch["images"])
            # All processes skip a micro-batch together when one has no readable image in it: a process
            # that skipped alone would leave the others waiting in the gradient all-reduce.
            if world.any(batch["images"] is None, device):
                if batch["images"] is not None:
                    log.warning(
                        "micro-batch %d skipped on every process: another process had no readable "
                        "image in its share of it",
                        batch["batch"],
                    )
                continue
            micro.append(batch)
        results = accumulate(step_model, micro, device, amp, 1.0 / o.accum_steps, step)
        epoch_log["steps"] += 1
        epoch_log["trained"] += len(micro)
        # Only with skipping on is the loss read back every step (a host sync) to decide.
        if o.skip_nonfinite_steps and world.any(not all(bool(r[0].isfinite()) for r in results), device):
            optimizer.zero_grad(set_to_none=True)
            skips.nonfinite_step(step + 1)
        else:
            record(window, results, masked)
            optimizer_step(model, optimizer, params, o.clip_grad, momentum)
        bar.update(1)

    def check_finite(tick) -> None:  # never log or checkpoint past a non-finite loss
        kept = checkpoints.latest if checkpoints.latest.exists() else "(none yet)"
        window.check_finite(
            f"non-finite loss before step {tick.step}; stopping. The last good checkpoint {kept} is kept"
        )

    def log_row(tick) -> None:
        step = tick.step - 1
        sums = window.read()
        n = max(sums["batches"], 1)
        row = {
            "step": tick.step,
            "epoch": round(tick.step / steps_per_epoch, 4),
            "loss": (sums["loss"] or 0.0),
            "target_std": sums.get("target_std", 0.0) / n,
            "lr": schedules.lr_at(step),
            "wd": schedules.wd_at(step),
            "momentum": schedules.momentum_at(step),
            "context_tokens": sums.get("context_tokens", 0) / n if masked else "",
            "target_tokens": sums.get("target_tokens", 0) / n if masked else "",
            "img_per_s": sums["img_per_s"],
            "mem_mb": round(memory_mb(device), 1),
            "skipped_images": skips.images,
            "elapsed_s": round(time.perf_counter() - t0, 2),
            **(probe.latest if probe is not None else CollapseProbe.EMPTY),
        }
        if world.main:
            _write_row(row, csv_log, writer, watch, bar)

    def save(tick) -> None:
        state = checkpoint_state(
            model, optimizer, tick.step, tick.epoch, cfg, sharded, images_per_step
        )  # collective under FSDP
        if not world.main:
            return
        if probe is not None:
            state["collapse_probe"] = probe.state()
        checkpoints.save(state)
        if tick.epoch_end and (tick.epoch % lg.checkpoint_every == 0 or tick.step == total_steps):
            checkpoints.save_periodic(state, tick.epoch)

    def end_epoch(tick) -> None:  # an epoch that had nothing to learn from stops the run
        whole = epoch_log["steps"] == steps_per_epoch
        if whole and not epoch_log["trained"]:
            kept = checkpoints.latest if checkpoints.latest.exists() else "(none yet)"
            raise DataError(
                f"epoch {tick.epoch} had no readable image ({epoch_log['skipped']} unreadable): nothing was learned; "
                f"stopping. The last checkpoint {kept} is kept"
            )
        if epoch_log["skipped"] > epoch_log["read"]:
            log.warning(
                "MOST IMAGES ARE UNREADABLE: epoch %d read %d image(s) and skipped %d that cannot be decoded "
                "(train.log names them); the run learns from the rest only",
                tick.epoch,
                epoch_log["read"],
                epoch_log["skipped"],
            )
        epoch_log.update(steps=0, trained=0, read=0, skipped=0)

    hooks = [
        Hook(check_finite, lambda t: t.save or t.step % lg.log_every == 0, "all"),
        Hook(end_epoch, lambda t: t.epoch_end, "all"),
    ]
    if probe is not None:
        hooks.append(
            Hook(
                lambda t: probe.check(model.target_encoder, t.step),
                lambda t: t.step % lg.collapse_every == 0 or t.step == total_steps,
                "shards",
            )
        )
    hooks.append(Hook(log_row, lambda t: t.step % lg.log_every == 0 or t.last, "all"))
    if monitor is not None:
        hooks.append(
            Hook(
                lambda t: monitor.check(model.target_encoder, amp, t.step, t.epoch),
                lambda t: t.epoch_end and t.epoch % lg.monitor_every == 0,
                "shards",
            )
        )
    hooks.append(Hook(save, lambda t: t.save, "shards"))
    run_steps(
        step_fn,
        start_step,
        stop_step,
        steps_per_epoch,
        hooks,
        world,
        device,
        checkpoints.latest,
        sharded,
        lg.checkpoint_every_steps,
        closers=(lambda: close_loader(batches), bar.close, writer.close if writer is not None else (lambda: None)),
    )
    log.info("stopped at step %d of %d; checkpoint %s", stop_step, total_steps, checkpoints.latest)
    return run_dir


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
            log.warning(
                "skipped %d unreadable image(s) (%d so far), e.g. %s",
                len(batch["skipped"]),
                self.images,
                batch["skipped"][0],
            )
        return batch

    def nonfinite_step(self, step: int) -> None:
        self.steps += 1
        log.warning("non-finite loss at step %d: step skipped (%d of at most %d)", step, self.steps, self.limit)
        if self.steps > self.limit:
            raise TrainingError(
                f"more than optimization.skip_nonfinite_steps={self.limit} steps had a non-finite "
                f"loss (the last at step {step}); stopping. The last good checkpoint {self.latest} "
                f"is kept"
            )


def _write_row(row: dict, csv_log: CSVLog, writer, watch: CollapseWatch, bar) -> None:
    csv_log.append(row)
    if watch.update(row["target_std"]):
        log.warning(
            "the representation may be collapsing: target_std %.4f at step %d, down from %.4f at the first "
            "log; lower the learning rate or raise the EMA momentum",
            row["target_std"],
            row["step"],
            watch.first,
        )
    if writer is not None:
        for key in LOG_COLUMNS[2:-1]:
            if row[key] != "" and key != "probe_step":
                writer.add_scalar(f"train/{key}", row[key], row["step"])
    postfix = {"loss": f"{row['loss']:.4f}", "img_s": f"{row['img_per_s']:.0f}"}
    if row["image_rankme"] != "":
        postfix["spread"] = f"{row['image_spread']:.3f}"  # the collapse probe's: falls when the features collapse
        postfix["rankme"] = f"{row['image_rankme']:.1f}"
    bar.set_postfix(**postfix)
