"""What a pretraining checkpoint holds and how a run gets its weights back: its own ``latest.pt``
(resume), or another checkpoint's networks (``meta.init_from``: a new run started from them)."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch

from ..checkpoint import PRETRAIN_FORMAT, CheckpointError
from ..config import Config, ConfigError
from ..distributed import World, gather_full_state, load_full_state, shard_ijepa
from ..engine.checkpointer import sections, warn_changed
from ..ijepa import IJEPA, build_ijepa

log = logging.getLogger("openjepa")

# Settings that change how a run is computed, not what: a resume may change them without a warning.
NOT_MATHEMATICS = frozenset(
    {"logging", "meta.fsdp", "data.num_workers", "data.pin_mem", "optimization.allow_batch_change"}
)


def checkpoint_state(
    model: IJEPA,
    optimizer,
    step: int,
    epoch: int,
    cfg: Config,
    sharded: bool = False,
    images_per_step: int | None = None,
) -> dict:
    """What a checkpoint holds. ``sharded`` (FSDP): collective, the full state gathered on process
    0 and {} returned elsewhere; the layout is the same either way. ``images_per_step``: the global
    batch (data.batch_size x processes x optimization.accum_steps), checked on resume."""
    if sharded:
        weights = gather_full_state(model, optimizer)
        if not weights:
            return {}
    else:
        weights = {**model.checkpoint_entries(), "opt": optimizer.state_dict()}
    return {
        "format": PRETRAIN_FORMAT,
        "version": 1,
        "step": step,
        "epoch": epoch,
        **weights,
        "config": cfg.to_dict(),
        "images_per_step": images_per_step,
    }


def restore_state(
    state: dict,
    path: Path,
    model: IJEPA,
    optimizer,
    cfg: Config,
    sharded: bool = False,
    images_per_step: int | None = None,
) -> tuple[int, dict]:
    """Load the checkpoint ``state`` (read from ``path``) into the model and optimiser; (its step,
    the collapse probe's state).

    ``images_per_step`` (this run's global batch per optimiser step) is compared with the one the
    checkpoint was written at: a different one would silently change the steps per epoch, the
    schedules and the data order, so it is an error unless ``optimization.allow_batch_change``,
    which converts the step so that the images seen (and the schedules' position) are kept."""
    saved_batch = state.get("images_per_step")
    batch_changed = images_per_step is not None and saved_batch is not None and saved_batch != images_per_step
    if batch_changed and not cfg.optimization.allow_batch_change:
        raise ConfigError(
            f"checkpoint {path} was written at a global batch of {saved_batch} images per optimiser step; this "
            f"run has {images_per_step} (data.batch_size x processes x optimization.accum_steps). Resume with "
            f"settings that give {saved_batch} images per step (e.g. fewer processes and a larger "
            f"data.batch_size or optimization.accum_steps), or set optimization.allow_batch_change=true to "
            f"continue at {images_per_step}: the step is then converted to keep the images seen"
        )
    refuse_other_network(state.get("config", {}), cfg, path)
    try:
        if sharded:
            load_full_state(model, optimizer, state)
        else:
            model.load_checkpoint_entries(state)
            optimizer.load_state_dict(state["opt"])
        step = int(state["step"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not match this config ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if batch_changed:
        converted = step * saved_batch // images_per_step
        log.warning(
            "optimization.allow_batch_change: the checkpoint's %d steps of %d images continue as step %d of "
            "%d images (the images seen and the schedules' position kept; the data order within the "
            "epoch and the optimiser's state follow the old batch)",
            step,
            saved_batch,
            converted,
            images_per_step,
        )
        step = converted
    warn_changed(sections(state.get("config", {})), sections(cfg.to_dict()), NOT_MATHEMATICS)
    return step, state.get("collapse_probe", {})


ARCHITECTURE = ("meta.model_name", "mask.patch_size", "data.crop_size", "data.in_chans", "meta.pred_depth",
                "meta.pred_emb_dim", "meta.target", "meta.objective")  # fmt: skip


def refuse_other_network(saved: dict, cfg: Config, path: Path) -> None:
    """CheckpointError naming the setting when the checkpoint's networks are of another shape than
    this config's (model size, patch, crop, channels, predictor): its weights cannot be resumed."""
    saved, now = sections(saved), sections(cfg.to_dict())
    for key in ARCHITECTURE:
        if key in saved and key in now and saved[key] != now[key]:
            raise CheckpointError(
                f"checkpoint {path} does not match this config: it was trained with {key}={saved[key]}, this run "
                f"has {key}={now[key]}, and its weights do not fit. Resume with the checkpoint's settings, or start a new run in another logging.folder "
                f"(meta.init_from={path} starts one from its weights)"
            )


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
        raise ConfigError(
            f"meta.read_checkpoint {meta.read_checkpoint} not found (looked for {' and '.join(map(str, candidates))})"
        )
    return found


def prepare_init(path: Path, cfg: Config) -> dict:
    """The states ``meta.init_from`` gives each network, their position embeddings interpolated to
    this config's grid, checked tensor by tensor against the networks the config builds (a mismatch
    names the tensor). ``predictor`` is None when the source has none (an exported encoder)."""
    from ..interop import init_states
    from ..models.vit import interpolate_pos_embed

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
            raise ConfigError(
                f"meta.init_from {path} {what} that this config's network "
                f"{'needs' if missing else 'does not have'}: is it of another model size or depth "
                f"(meta.model_name, meta.pred_depth)?"
            )
        for name, want in expected.items():
            if tuple(state[name].shape) != tuple(want.shape):
                raise ConfigError(
                    f"meta.init_from {path}: tensor {key}.{name} is {tuple(state[name].shape)} there but "
                    f"{tuple(want.shape)} for this config (meta.model_name, meta.pred_emb_dim, "
                    f"mask.patch_size, data.in_chans must match the checkpoint's)"
                )
        out[key] = state
    return {"path": str(path), "format": fmt, "states": out}


def load_init(model: IJEPA, init: dict) -> None:
    """Copy ``prepare_init``'s states into a freshly built model, and say what was taken."""
    fresh = init["states"]["predictor"] is None
    for key, state in init["states"].items():
        if state is not None:
            getattr(model, key).load_state_dict(state)
    init["states"].clear()  # the copies are in the model now: not held for the whole run
    log.info(
        "initialised from %s (%s checkpoint): encoder, target encoder%s; new optimiser state and schedules",
        init["path"],
        init["format"],
        " and a fresh predictor (the source has none)" if fresh else " and predictor",
    )


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
            log.info(
                "global batch %d images per step (optimization.reference_batch not set: the LR %g is used as given)",
                images_per_step,
                o.lr,
            )
        elif factor != 1.0:
            log.info(
                "global batch %d, the recipe's reference batch %d: LRs scaled %s by %.4g (lr %g -> %g)",
                images_per_step,
                ref,
                o.lr_scaling,
                factor,
                o.lr,
                o.lr * factor,
            )
        elif images_per_step != ref:
            log.warning(
                "global batch %d images per step, but the recipe's LR %g was set for %d "
                "(optimization.reference_batch); the LR is not scaled (optimization.lr_scaling=none)",
                images_per_step,
                o.lr,
                ref,
            )
        else:
            log.info("global batch %d images per step, the recipe's reference batch", images_per_step)
    if factor == 1.0:
        return o
    return dataclasses.replace(o, start_lr=o.start_lr * factor, lr=o.lr * factor, final_lr=o.final_lr * factor)


def shard(model: IJEPA, world: World, fsdp: bool) -> bool:
    """FSDP when ``meta.fsdp`` asks and there are processes to shard over; True if sharded."""
    if fsdp and world.size > 1:
        local, total = shard_ijepa(model)
        log.info("FSDP over %d processes: this process holds %d of the %d parameter elements", world.size, local, total)
        return True
    if fsdp:
        log.info("meta.fsdp: one process, nothing to shard")
    return False
