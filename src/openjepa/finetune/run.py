"""End-to-end fine-tuning of a pretrained encoder with a classification head, on the engine.

The recipe of MAE / BEiT fine-tuning, scaled down to the data users bring: AdamW with layer-wise
LR decay (the patch embedding learns slowest, the head fastest), linear warmup then cosine, drop
path, label smoothing, gradient clipping, the random resized crop and flip; mixup / CutMix and
RandAugment through timm when asked. bf16 autocast on GPUs and on CPUs with native bf16.

A run directory (``--out``) holds ``checkpoints/latest.pt`` (every epoch, and when a stop signal
arrives), ``checkpoints/best.pt`` (the epoch with the best validation accuracy), ``log.csv``,
``train.log``, TensorBoard events and ``result.json``. Starting the same command again resumes
exactly: every random choice (data order, crops, RandAugment, mixup, drop path) is drawn from
(seed, epoch, step[, position]), never from a global stream carried across steps.

Splits: the validation split that picks the best epoch is never the one reported. A folder with
``train/``, ``val/`` and ``test/`` uses them as such; otherwise (``train/`` + ``val/``, or
Fashion-MNIST's train / test) ``val_fraction`` of the training split, stratified, is held out to
pick the epoch and the other split is the test.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

from ..checkpoint import FINETUNE_FORMAT, CheckpointError
from ..data import DataError, NumberedBatches, PretrainTransform, check_readable, close_loader, seed_for
from ..data.seeds import FT_DROP_PATH, FT_MIXUP, FT_ORDER, FT_SPLIT
from ..data.transforms import per_channel
from ..device import autocast, resolve_device, resolve_precision
from ..distributed import World
from ..engine import (
    Checkpointer,
    CSVLog,
    Hook,
    Window,
    check_run_dir,
    make_run_dir,
    progress_bar,
    run_steps,
    setup_logging,
    tensorboard,
    warmup_cosine,
    write_atomic,
    write_held_log,
)
from ..evaluate import random_encoder
from ..evaluate.features import collate_readable, warn_skipped
from ..models.heads import Classifier
from .config import FinetuneConfig
from .data import Augmented, Splits, make_splits
from .recipe import mixup_for, param_groups, probe_head
from .result import accuracy_on, write_result
from .state import FinetuneState

log = logging.getLogger("openjepa")
LOG_COLUMNS = ("step", "epoch", "loss", "train_acc", "val_acc", "lr", "img_per_s", "skipped_images", "elapsed_s")


def finetune(
    checkpoint: str | Path,
    out: str | Path,
    data: str = "fashion_mnist",
    ft: FinetuneConfig | None = None,
    data_root: str | None = None,
) -> dict:
    """Fine-tune the encoder of ``checkpoint`` (any format ``load_encoder`` reads) with a new head on
    ``data`` (``fashion_mnist``, a folder with ``train/`` and ``val/`` [and ``test/``] of class
    folders, or a DatasetDict folder) in the run directory ``out``; resume it when ``out`` holds a
    run of this kind. Returns the result written to ``out/result.json``. The caller's random
    streams (torch, numpy, Python) are left as they were."""
    from ..interop import load_encoder

    ft = (ft or FinetuneConfig()).validate()
    run_dir = Path(out)
    check_run_dir(run_dir, "--out", kind="finetune")
    device = resolve_device(ft.device, "finetune device")
    checkpoints = Checkpointer(run_dir / "checkpoints")
    state = checkpoints.load_latest()
    if state is not None and state.get("format") != FINETUNE_FORMAT:
        raise CheckpointError(
            f"{checkpoints.latest} is not a fine-tuning checkpoint: --out is the run directory of "
            f"another kind of run; give a new folder"
        )
    encoder = load_encoder(checkpoint, ft.which)
    splits = make_splits(data, encoder.in_chans, data_root, ft)  # every refusal before the run folder is made
    check_readable(torch.utils.data.Subset(splits.train, splits.fit.tolist()), f"the training split of {data}")
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            return _finetune(checkpoint, run_dir, data, ft, encoder, splits, device, state, checkpoints)
    finally:
        np.random.set_state(np_state)


def _finetune(
    checkpoint,
    run_dir: Path,
    data: str,
    ft: FinetuneConfig,
    encoder,
    splits: Splits,
    device,
    state,
    checkpoints: Checkpointer,
) -> dict:
    torch.manual_seed(seed_for(ft.seed, FT_SPLIT))
    if ft.random_init:
        encoder = random_encoder(encoder, ft.seed)
    model = Classifier(encoder, splits.classes, ft.head)
    model.encoder.set_drop_path(ft.drop_path)
    model.to(device)
    batch = min(ft.batch_size, len(splits.fit))
    if (ft.mixup or ft.cutmix) and batch % 2:
        batch -= 1
    lr = ft.blr * batch / 256  # the batch the run takes (fewer labelled images than batch_size: all of them)
    optimizer = torch.optim.AdamW(param_groups(model, ft.weight_decay, ft.layer_decay), lr=lr, betas=(0.9, 0.999))
    steps_per_epoch = max(1, len(splits.fit) // batch)
    total, warmup = ft.epochs * steps_per_epoch, round(ft.warmup_epochs * steps_per_epoch)
    source = {"checkpoint": str(checkpoint), "which": ft.which, "random_init": ft.random_init}
    settings = dataclasses.asdict(ft)
    run = FinetuneState(checkpoints, model, steps_per_epoch, settings, source, data)
    start, best, history, elapsed = 0, {"epoch": 0, "val_acc": -1.0}, [], 0.0
    if state is not None:  # before anything is written: a refused resume leaves the run as it was
        setup_logging(None, hold=True)
        start, best, history, elapsed = run.restore(state, optimizer)
    make_run_dir(run_dir, "--out", kind="finetune")
    if state is None:
        setup_logging(run_dir)
    else:
        write_held_log(run_dir)
        log.info(
            "resuming %s at epoch %d, step %d of the epoch",
            checkpoints.latest,
            start // steps_per_epoch,
            start % steps_per_epoch,
        )
    if warmup >= total:  # the LR would only ever rise
        log.warning(
            "warmup_epochs=%g is the whole run of %d epoch(s): warming up over its first tenth instead",
            ft.warmup_epochs,
            ft.epochs,
        )
        warmup = total // 10
    resumed = state is not None
    del state
    write_atomic(
        run_dir / "settings.yaml", yaml.safe_dump({"source": source, "data": data, **settings}, sort_keys=False)
    )
    precision = resolve_precision(ft.precision, device)
    amp = autocast(device, precision == "bf16")
    if splits.unlabelled:
        log.warning("%d training item(s) have no label (-1) and are left out", splits.unlabelled)
    if not resumed and ft.head_init == "probe" and ft.head == "linear":
        probe = probe_head(model, splits, ft, precision)
        log.info(
            "the head starts as a linear probe of the frozen encoder (LP-FT): validation accuracy %.2f%% "
            "(lr %g, weight decay %g, %d steps; logits divided by %.3g); it is epoch 0, the one to beat",
            100 * probe["val_acc"],
            probe["lr"],
            probe["wd"],
            probe["steps"],
            probe["temperature"],
        )
        best = {"epoch": 0, "val_acc": probe["val_acc"]}  # best.pt is never worse than the probe on validation
        history.append({"epoch": 0, "val_acc": probe["val_acc"], "loss": None, "elapsed_s": 0.0})
        run.save("best.pt", None, 0, best, history, 0.0)
    log.info(
        "fine-tuning %s (%s encoder%s) on %s: %d labelled training images (of %d), %d validation%s, %d test; "
        "%d classes, %d steps/epoch of %d, %d epochs, lr %.3g, %s on %s, run dir %s",
        checkpoint,
        ft.which,
        ", re-initialised" if ft.random_init else "",
        data,
        len(splits.fit),
        len(splits.train),
        len(splits.val),
        " (held out of the labelled training images)" if splits.held_out else "",
        len(splits.test),
        len(splits.classes),
        steps_per_epoch,
        batch,
        ft.epochs,
        lr,
        precision,
        device,
        run_dir,
    )

    transform = PretrainTransform(
        model.img_size[0],
        ft.crop_scale,
        per_channel(model.mean, model.in_chans),
        per_channel(model.std, model.in_chans),
        ft.hflip,
    )
    order = NumberedBatches(
        len(splits.train), batch, steps_per_epoch, start, total, ft.seed, indices=splits.fit, stream=FT_ORDER
    )
    batches = iter(
        torch.utils.data.DataLoader(
            Augmented(splits.train, transform, ft.randaug, ft.seed),
            batch_sampler=order,
            num_workers=ft.num_workers,
            collate_fn=collate_readable,
        )
    )
    mixup = mixup_for(ft, len(splits.classes))
    criterion = nn.CrossEntropyLoss(label_smoothing=ft.label_smoothing)
    csv_log = CSVLog(run_dir / "log.csv", start, LOG_COLUMNS)
    writer = tensorboard(run_dir / "tensorboard", start, ft.tensorboard)
    bar = progress_bar(total, start, ft.progress_bar)
    window, skipped, t0 = Window(device), set(), time.perf_counter() - elapsed  # elapsed: earlier sessions' time
    epoch_log = {"trained": 0, "resumed_at": start % steps_per_epoch, "validation_warned": False}

    def lr_at(step: int) -> float:  # the engine's warmup + cosine, after the step as every loop counts it
        return warmup_cosine(step + 1, 0.0, lr, ft.min_lr, warmup, total)

    model.train()

    def step_fn(step: int) -> None:
        epoch, b = divmod(step, steps_per_epoch)
        images, labels, unreadable = next(batches)
        if unreadable:
            skipped.update(unreadable)
            warn_skipped(f"fine-tuning, epoch {epoch + 1}", unreadable)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step) * group["lr_scale"]
        if images is not None and (mixup is None or len(images) >= 2):
            loss, correct = _step(model, optimizer, images, labels, device, amp, criterion, mixup, ft, epoch, b)
            window.add(loss, len(labels), **({} if correct is None else {"correct": correct}))
            epoch_log["trained"] += 1
        bar.update(1)

    def row(tick) -> dict:
        window.check_finite(
            f"non-finite loss before step {tick.step}; stopping (lower blr, or keep clip_grad on). "
            f"checkpoints/latest.pt holds the last finished epoch"
        )
        sums = window.read()
        scored = sums["images"] and sums["counts"].get("correct", 0) == sums["batches"]
        return {
            "step": tick.step,
            "epoch": tick.epoch if tick.epoch_end else round(tick.step / steps_per_epoch, 4),
            "loss": sums["loss"] and round(sums["loss"], 5),
            "train_acc": round(sums["correct"] / sums["images"], 5) if scored else "",
            "val_acc": "",
            "lr": lr_at(tick.step - 1),
            "img_per_s": round(sums["img_per_s"], 1),
            "skipped_images": len(skipped),
            "elapsed_s": round(time.perf_counter() - t0, 2),
        }

    def log_row(tick) -> None:
        _write_row(csv_log, writer, row(tick))

    def end_epoch(tick) -> None:
        nonlocal best
        if not epoch_log["trained"] and epoch_log["resumed_at"] == 0:
            raise DataError(f"epoch {tick.epoch} had no readable training image ({len(skipped)} unreadable)")
        epoch_log.update(trained=0, resumed_at=0)
        values = row(tick)
        val_acc = None
        if tick.epoch % ft.eval_every == 0 or tick.epoch == ft.epochs:
            val_acc, _, val_skipped = accuracy_on(model, splits.val, device, amp, ft.eval_batch_size, ft.num_workers)
            model.train()
            if not epoch_log["validation_warned"]:
                warn_skipped("fine-tuning, validation split", val_skipped)
                epoch_log["validation_warned"] = True
            values["val_acc"] = round(val_acc, 5)
            values["elapsed_s"] = round(time.perf_counter() - t0, 2)
        _write_row(csv_log, writer, values)
        history.append(
            {"epoch": tick.epoch, "val_acc": val_acc, "loss": values["loss"], "elapsed_s": values["elapsed_s"]}
        )
        improved = val_acc is not None and val_acc > best["val_acc"]
        if improved:
            best = {"epoch": tick.epoch, "val_acc": val_acc}
            run.save("best.pt", None, tick.step, best, history, values["elapsed_s"])
        shown = f", validation accuracy {100 * val_acc:.2f}%" if val_acc is not None else ""
        log.info(
            "epoch %d: loss %.4f%s%s",
            tick.epoch,
            values["loss"] or float("nan"),
            shown,
            " (best so far: best.pt)"
            if improved
            else f" (best: epoch {best['epoch']})"
            if best["epoch"] or history[0]["epoch"] == 0
            else "",
        )
        bar.set_postfix(loss=f"{values['loss'] or float('nan'):.4f}", best=f"{100 * best['val_acc']:.1f}")

    def save(tick) -> None:
        elapsed = history[-1]["elapsed_s"] if tick.epoch_end else time.perf_counter() - t0
        run.save("latest.pt", optimizer, tick.step, best, history, elapsed)

    hooks = [
        Hook(log_row, lambda t: t.step % ft.log_every == 0 and not t.epoch_end),  # an epoch's last: below
        Hook(end_epoch, lambda t: t.epoch_end),
        Hook(save, lambda t: t.save),
    ]
    run_steps(
        step_fn,
        start,
        total,
        steps_per_epoch,
        hooks,
        World(),
        device,
        checkpoints.latest,
        closers=(lambda: close_loader(batches), bar.close, writer.close if writer is not None else (lambda: None)),
    )
    return write_result(
        run_dir,
        model,
        splits,
        device,
        amp,
        ft,
        settings,
        source,
        data,
        best,
        history,
        batch,
        steps_per_epoch,
        sorted(skipped),
    )


def _step(model, optimizer, images, labels, device, amp, criterion, mixup, ft, epoch, b):
    """One optimiser step; (the loss on the device, correct predictions or None under mixup)."""
    torch.manual_seed(seed_for(ft.seed, FT_DROP_PATH, epoch, b))  # drop path: a pure function of the step
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    targets = labels
    if mixup is not None:
        if len(images) % 2:
            images, labels = images[:-1], labels[:-1]
        np.random.seed(seed_for(ft.seed, FT_MIXUP, epoch, b) % 2**32)  # timm's Mixup draws from numpy's stream
        images, targets = mixup(images, labels)
    with amp:
        logits = model(images)
    logits = logits.float()
    loss = criterion(logits, targets) if mixup is None else torch.sum(-targets * F.log_softmax(logits, -1), -1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if ft.clip_grad > 0:
        nn.utils.clip_grad_norm_(model.parameters(), ft.clip_grad)
    optimizer.step()
    correct = None if mixup is not None else (logits.detach().argmax(-1) == labels).sum()
    return loss.detach(), correct


def _write_row(csv_log: CSVLog, writer, row: dict) -> None:
    csv_log.append(row)
    if writer is not None:
        for key in ("loss", "train_acc", "val_acc", "lr", "img_per_s"):
            if row[key] not in ("", None):
                writer.add_scalar(f"finetune/{key}", row[key], row["step"])
