"""Fitting the generative decoder on a pretraining run, on the engine.

The run's networks are frozen. On ``settings.images`` of the run's own images (never the
held-out ones: ``decoder.data``) the target features are computed once; then each step draws a
batch, diffusion times and noise, and (for ``unknown_prob`` of the images) target blocks from the
run's own mask sampler whose features are replaced by the learned unknown vector, and takes one
AdamW step on the velocity loss. An exponential average of the weights is what samples.

Everything lives in ``RUN/decoder/``: ``checkpoints/latest.pt``, ``log.csv``, ``train.log``,
``settings.yaml``. Calling ``fit_decoder`` again resumes exactly where it stopped: each random draw
is a pure function of (seed, stream, epoch or step), and the features of the same images are the same.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from ..data.seeds import DEC_HIDE, DEC_INIT, DEC_NOISE, DEC_ORDER, generator_for, seed_for
from ..data.transforms import prepare
from ..device import autocast, resolve_device, resolve_precision
from ..distributed import World
from ..engine import (
    CSVLog,
    Hook,
    Window,
    check_run_dir,
    decay_groups,
    make_run_dir,
    progress_bar,
    run_steps,
    setup_logging,
    tensorboard,
    warmup_cosine,
    write_atomic,
)
from ..errors import BadInput, ConfigError
from ..masks import mask_sampler_for
from ..models.decoder import Denoiser
from ..models.diffusion import diffusion_loss
from .data import (
    context_condition,
    draw_hidden,
    fill_predictions,
    hidden_positions,
    read_images,
    split,
    target_grid,
    to_unit,
)
from .settings import DecoderSettings
from .state import FOLDER, checkpointer, fingerprint, read_state, restore_state, run_checkpoint, save_state

log = logging.getLogger("openjepa")
LOG_COLUMNS = ("step", "epoch", "loss", "lr", "img_per_s", "elapsed_s")


def fit_decoder(
    run_dir: str | Path, settings: DecoderSettings | None = None, max_steps: int | None = None, model=None
) -> Path:
    """Fit (or resume fitting) the decoder of the pretraining run ``run_dir``; returns RUN/decoder.
    ``settings`` default to those of the decoder's checkpoint when there is one, else to
    ``DecoderSettings()``. ``max_steps`` stops (with a checkpoint) after that many steps in all.
    ``model`` is the run's (model, cfg) when the caller has loaded it. The caller's random streams
    are left as they were."""
    from ..interop import load_ijepa

    latest = run_checkpoint(run_dir)
    folder = Path(run_dir) / FOLDER
    check_run_dir(folder, "the decoder folder", kind="decoder")
    checkpoints = checkpointer(run_dir)
    state = read_state(checkpoints)
    if settings is None:
        settings = DecoderSettings.from_dict(state["settings"]) if state is not None else DecoderSettings()
    settings = settings.validate()
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError(f"max_steps must be a whole number of at least 1, got {max_steps!r}")
    model, cfg = model if model is not None else load_ijepa(latest)
    if cfg.meta.target == "pixels":
        raise BadInput(f"{run_dir} predicts pixels, not representations: there are no features to decode")
    device = resolve_device(settings.device, "decoder setting device")
    stop = min(settings.steps, max_steps) if max_steps is not None else settings.steps
    if state is not None and int(state["step"]) >= stop:
        log.info("nothing to do: the decoder of %s is at step %d of %d", run_dir, int(state["step"]), stop)
        return folder
    fit_data, _ = split(cfg, settings.images, settings.seed)  # the data is found before anything is written
    make_run_dir(folder, "the decoder folder", kind="decoder")
    setup_logging(folder)
    devices = [device.index or 0] if device.type == "cuda" else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            _fit(model.eval().requires_grad_(False), cfg, fit_data, settings, device, state, checkpoints, max_steps)
    finally:
        np.random.set_state(np_state)
    return folder


def _fit(model, cfg, fit_data, settings: DecoderSettings, device, state, checkpoints, max_steps) -> None:
    s, folder = settings, checkpoints.folder.parent
    images, _ = read_images(*fit_data, cfg.data.crop_size)
    t0 = time.perf_counter()
    model.to(device)
    features = target_grid(model, images, cfg.data.mean, cfg.data.std, device)
    log.info("target features of %d images in %.1f s", len(images), time.perf_counter() - t0)
    encoder = model.target_encoder
    torch.manual_seed(seed_for(s.seed, DEC_INIT))
    denoiser = Denoiser(encoder.in_chans, encoder.img_size, encoder.grid, features.size(-1), s.widths, s.cond_dim)
    denoiser.to(device)
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    optimizer = torch.optim.AdamW(
        decay_groups(denoiser.named_parameters()), lr=s.lr, betas=(0.9, 0.999), weight_decay=s.weight_decay
    )
    source = {
        "checkpoint": str(Path(folder).parent / "checkpoints" / "latest.pt"),
        "target_encoder": fingerprint(encoder),
    }
    start, elapsed = (
        (0, 0.0) if state is None else restore_state(state, checkpoints.latest, denoiser, ema, optimizer, s, source)
    )
    if state is not None:
        log.info("resuming %s at step %d", checkpoints.latest, start)
    del state
    write_atomic(folder / "settings.yaml", yaml.safe_dump({"source": source, **s.to_dict()}, sort_keys=False))
    batch = min(s.batch_size, len(images))
    steps_per_epoch = len(images) // batch
    stop = min(s.steps, max_steps) if max_steps is not None else s.steps  # above start: fit_decoder checked
    log.info(
        "fitting the decoder (%d parameters) on %d images of %s: steps %d..%d of %d, batch %d, on %s",
        sum(p.numel() for p in denoiser.parameters()),
        len(images),
        cfg.data.dataset,
        start,
        stop,
        s.steps,
        batch,
        device,
    )
    sampler, tokens = mask_sampler_for(cfg), features.size(1)
    amp = autocast(device, resolve_precision(s.precision, device) == "bf16")
    params, averaged = list(denoiser.parameters()), list(ema.parameters())
    orders: dict[int, torch.Tensor] = {}
    window, t0 = Window(device), time.perf_counter() - elapsed
    csv_log = CSVLog(folder / "log.csv", start, LOG_COLUMNS)
    writer = tensorboard(folder / "tensorboard", start, s.tensorboard)
    bar = progress_bar(stop, start, s.progress_bar)

    warmup = s.warmup_steps
    if warmup > s.steps // 4:  # the LR would spend most of the fit rising
        warmup = s.steps // 10
        log.warning("warmup_steps=%d for a fit of %d steps: warming up over %d", s.warmup_steps, s.steps, warmup)

    def lr_at(step: int) -> float:
        return warmup_cosine(step + 1, 0.0, s.lr, s.min_lr, warmup, s.steps)

    def condition_of(idx, context_idx, target_idx, hidden, predicted) -> torch.Tensor:
        """The batch's features, with the ``hidden`` images' target blocks hidden (``settings.condition``)
        and the ``predicted`` ones' filled by the predictor."""
        grid = features[idx].to(device).float()
        rows = hidden.nonzero().flatten()
        if not len(rows):
            return grid
        context_idx, target_idx, predicted = context_idx[rows].to(device), target_idx[rows].to(device), predicted[rows]
        x = None
        if s.condition == "context" or predicted.any():
            x = prepare(to_unit(images[idx[rows]]), encoder, cfg.data.mean, cfg.data.std).to(device)
        if s.condition == "full":
            seen = denoiser.condition(grid[rows], hidden_positions(target_idx, tokens).to(device))
        else:
            seen = context_condition(model, denoiser, x, context_idx)
        if predicted.any():
            sub = predicted.nonzero().flatten().to(device)
            c, t = context_idx[sub], target_idx[sub]
            guesses = model.predictor(model.encoder(x[sub], c), c, t).float()
            seen = seen.index_put((sub,), fill_predictions(seen[sub], t, guesses))
        return grid.index_put((rows.to(device),), seen)

    def step_fn(step: int) -> None:
        epoch, b = divmod(step, steps_per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = torch.randperm(len(images), generator=generator_for(s.seed, DEC_ORDER, epoch))
        idx = orders[epoch][b * batch : (b + 1) * batch]
        x0 = (images[idx].float() / 127.5 - 1.0).to(device)
        g = generator_for(s.seed, DEC_NOISE, step)
        t, noise = torch.rand(len(idx), generator=g), torch.randn(x0.shape, generator=g).to(device)
        masks = draw_hidden(sampler, len(idx), s.unknown_prob, s.predictor_prob, generator_for(s.seed, DEC_HIDE, step))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with amp:
            loss = diffusion_loss(denoiser, x0, condition_of(idx, *masks), t, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if s.clip_grad > 0:
            nn.utils.clip_grad_norm_(params, s.clip_grad)
        optimizer.step()
        with torch.no_grad():  # the average warms up: early steps are not averaged with the initial weights
            torch._foreach_lerp_(averaged, params, 1.0 - min(s.ema, (1 + step) / (10 + step)))
        window.add(loss.detach(), len(idx))
        bar.update(1)

    def log_row(tick) -> None:
        window.check_finite(f"non-finite decoder loss before step {tick.step}; stopping (lower lr)")
        sums = window.read()
        row = {
            "step": tick.step,
            "epoch": round(tick.step / steps_per_epoch, 4),
            "loss": round(sums["loss"], 6),
            "lr": lr_at(tick.step - 1),
            "img_per_s": round(sums["img_per_s"], 1),
            "elapsed_s": round(time.perf_counter() - t0, 2),
        }
        csv_log.append(row)
        if writer is not None:
            for key in ("loss", "lr", "img_per_s"):
                writer.add_scalar(f"decoder/{key}", row[key], row["step"])
        bar.set_postfix(loss=f"{row['loss']:.4f}")

    def save(tick) -> None:
        window.check_finite(f"non-finite decoder loss before step {tick.step}; stopping (lower lr)")
        save_state(checkpoints, denoiser, ema, optimizer, tick.step, s, source, time.perf_counter() - t0)

    hooks = [
        Hook(log_row, lambda t: t.step % s.log_every == 0 or t.last),
        Hook(save, lambda t: t.save),
    ]
    run_steps(
        step_fn,
        start,
        stop,
        steps_per_epoch,
        hooks,
        World(),
        device,
        checkpoints.latest,
        save_every=s.save_every,
        closers=(bar.close, writer.close if writer is not None else (lambda: None)),
    )
    log.info("decoder at step %d of %d: %s", stop, s.steps, checkpoints.latest)
