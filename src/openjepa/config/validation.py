"""Validation: impossible values are refused before any compute is spent. It only checks: nothing
here changes the config."""

from __future__ import annotations

from ..errors import ConfigError
from ..masks import SAMPLERS
from ..models.vit import VIT_SIZES, resolve_size
from .schema import (
    COMPILE_MODES,
    DATASETS,
    LOSSES,
    LR_SCALING,
    OBJECTIVES,
    SCENE_TASKS,
    TARGETS,
    Config,
    DataConfig,
    MetaConfig,
)

DINO_KEYS = tuple(key for key in vars(MetaConfig()) if key.startswith("dino_"))
# What DINO does not use: I-JEPA's training signal and crop. A changed value is refused, not ignored.
IJEPA_ONLY = (
    ("meta", "loss"),
    ("meta", "target"),
    ("meta", "target_layers"),
    ("meta", "variance_weight"),
    ("meta", "covariance_weight"),
    ("meta", "sigreg_weight"),
    ("meta", "invariance_weight"),
    ("data", "crop_scale"),
    ("data", "use_horizontal_flip"),
)


def _check_pair(key: str, value: list[float], low: float, high: float) -> None:
    if len(value) != 2 or not (low < value[0] <= value[1] <= high):
        raise ConfigError(f"{key} must be [min, max] with {low} < min <= max <= {high}, got {value}")


def validate(cfg: Config) -> Config:
    """Reject impossible values before any compute is spent."""
    d, m, meta, o, log = cfg.data, cfg.mask, cfg.meta, cfg.optimization, cfg.logging
    if d.dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {d.dataset!r}")
    for key in ("batch_size", "crop_size", "in_chans", "synthetic_size", "scenes_size"):
        if getattr(d, key) < 1:
            raise ConfigError(f"data.{key} must be at least 1, got {getattr(d, key)}")
    if d.decode_on_device:
        import importlib.util

        if d.dataset != "folder":
            raise ConfigError(
                f"data.decode_on_device decodes the JPEG files of a folder dataset; data.dataset is {d.dataset!r}"
            )
        if importlib.util.find_spec("torchvision") is None:
            raise ConfigError("data.decode_on_device needs torchvision (pip install 'openjepa[jpeg]')")
    if d.dataset != "webdataset" and not isinstance(d.root_path, str):
        raise ConfigError(f"data.root_path is a list only for data.dataset=webdataset (shards); got {d.root_path}")
    if d.dataset == "webdataset" and d.samples_per_epoch < 1:
        raise ConfigError(
            "data.dataset=webdataset needs data.samples_per_epoch: the samples one epoch reads "
            "(at most the samples its shards hold), for the schedules and exact resume"
        )
    if d.shuffle_buffer < 1 or d.samples_per_epoch < 0:
        raise ConfigError(
            f"data.shuffle_buffer must be >= 1 and data.samples_per_epoch >= 0, got "
            f"{d.shuffle_buffer} and {d.samples_per_epoch}"
        )
    if d.dataset == "scenes" and (d.scenes_task not in SCENE_TASKS or d.in_chans not in (1, 3) or d.crop_size < 8):
        raise ConfigError(
            f"data.dataset=scenes draws 1- or 3-channel scenes of at least 8 px for data.scenes_task "
            f"{' | '.join(SCENE_TASKS)}; got data.scenes_task={d.scenes_task!r}, data.in_chans={d.in_chans}, "
            f"data.crop_size={d.crop_size}"
        )
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
    _check_pair("data.crop_scale", d.crop_scale, 0.0, 1.0)
    for key in ("mean", "std"):
        if len(getattr(d, key)) not in (1, d.in_chans):
            raise ConfigError(f"data.{key} needs 1 or data.in_chans={d.in_chans} values, got {getattr(d, key)}")
    if any(s <= 0 for s in d.std):
        raise ConfigError(f"data.std must be positive, got {d.std}")
    for key in ("use_gaussian_blur", "use_color_distortion"):
        if getattr(d, key):
            raise ConfigError(
                f"data.{key}: I-JEPA uses no augmentation beyond the random resized crop "
                f"(and optional flip); set it to false"
            )
    if d.color_jitter_strength != 0:
        raise ConfigError("data.color_jitter_strength must be 0: I-JEPA uses no colour augmentation")
    if m.patch_size < 1 or d.crop_size % m.patch_size:
        raise ConfigError(f"mask.patch_size {m.patch_size} does not divide data.crop_size {d.crop_size}")
    if m.strategy not in SAMPLERS:
        raise ConfigError(f"mask.strategy must be one of {', '.join(SAMPLERS)}, got {m.strategy!r}")
    if m.reference_sampler and m.strategy != "multiblock":
        raise ConfigError("mask.reference_sampler reproduces the reference multiblock sampler only")
    if m.num_enc_masks != 1:
        raise ConfigError(f"mask.num_enc_masks must be 1 (one context block), got {m.num_enc_masks}")
    if m.num_pred_masks < 1:
        raise ConfigError(f"mask.num_pred_masks must be at least 1, got {m.num_pred_masks}")
    _check_pair("mask.enc_mask_scale", m.enc_mask_scale, 0.0, 1.0)
    _check_pair("mask.pred_mask_scale", m.pred_mask_scale, 0.0, 1.0)
    _check_pair("mask.aspect_ratio", m.aspect_ratio, 0.0, float("inf"))
    if m.pack_group < 1:
        raise ConfigError(f"mask.pack_group must be at least 1 image, got {m.pack_group}")
    grid = (d.crop_size // m.patch_size) ** 2
    if not 1 <= m.min_keep < grid:
        raise ConfigError(f"mask.min_keep must be in [1, {grid}) for a {grid}-patch grid, got {m.min_keep}")
    if not isinstance(m.bucket, int) or isinstance(m.bucket, bool) or not 0 <= m.bucket < grid:
        raise ConfigError(f"mask.bucket must be a whole number of tokens from 0 (off) to {grid - 1}, got {m.bucket!r}")
    if m.bucket and (m.strategy != "multiblock" or m.reference_sampler):
        raise ConfigError(
            "mask.bucket rounds the multiblock sampler's context lengths; it does nothing with "
            f"mask.strategy {m.strategy}{' and mask.reference_sampler' if m.reference_sampler else ''}"
        )
    if meta.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"meta.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {meta.compile_mode!r}")
    if meta.compile_mode != "default" and not meta.compile:
        raise ConfigError(f"meta.compile_mode {meta.compile_mode} does nothing without meta.compile: true")
    try:
        size = resolve_size(meta.model_name)
    except ValueError:
        raise ConfigError(f"meta.model_name {meta.model_name!r} is not one of {', '.join(VIT_SIZES)}") from None
    # meta.pred_depth null: the paper's depth for this size, resolved where the model is built
    if (
        (meta.pred_depth is not None and meta.pred_depth < 1)
        or meta.pred_emb_dim < 1
        or meta.pred_emb_dim % size.heads
        or meta.pred_emb_dim % 4
    ):
        raise ConfigError(
            f"meta.pred_emb_dim must be a positive multiple of 4 and of the encoder's "
            f"{size.heads} heads, and meta.pred_depth positive; got {meta.pred_emb_dim}, {meta.pred_depth}"
        )
    if isinstance(meta.cpu_bfloat16, str) and meta.cpu_bfloat16 != "auto":
        raise ConfigError(f"meta.cpu_bfloat16 must be true, false or auto, got {meta.cpu_bfloat16!r}")
    if meta.loss not in LOSSES:
        raise ConfigError(f"meta.loss must be one of {', '.join(LOSSES)}, got {meta.loss!r}")
    if meta.target not in TARGETS:
        raise ConfigError(f"meta.target must be one of {', '.join(TARGETS)}, got {meta.target!r}")
    if not (isinstance(meta.target_layers, int) and 1 <= meta.target_layers <= size.depth):
        raise ConfigError(
            f"meta.target_layers must be a whole number from 1 to {meta.model_name}'s {size.depth} "
            f"blocks, got {meta.target_layers!r}"
        )
    if meta.target_layers > 1 and meta.target == "pixels":
        raise ConfigError(
            "meta.target_layers averages the target encoder's blocks; it has no meaning with meta.target: pixels"
        )
    for key in ("variance_weight", "covariance_weight", "sigreg_weight", "variance_gamma", "invariance_weight"):
        value = getattr(meta, key)
        if not (value >= 0 and value != float("inf")):
            raise ConfigError(f"meta.{key} must be a finite number >= 0, got {value}")
    if (meta.variance_weight or meta.covariance_weight or meta.sigreg_weight) and d.batch_size < 2:
        raise ConfigError("the collapse regularisers measure spread across images: data.batch_size must be >= 2")
    if meta.invariance_weight and (meta.target == "pixels" or meta.target_layers > 1):
        raise ConfigError(
            "meta.invariance_weight compares the pooled context with the target encoder's pooled output: "
            "it needs meta.target: representations and meta.target_layers: 1"
        )
    if not 0.0 <= meta.regularizer_final <= 1.0:
        raise ConfigError(
            f"meta.regularizer_final must be between 0 and 1 (the weights' multiplier at the end of "
            f"training), got {meta.regularizer_final}"
        )
    if meta.sigreg_slices < 1:
        raise ConfigError(f"meta.sigreg_slices must be at least 1, got {meta.sigreg_slices}")
    if meta.read_checkpoint and not meta.load_checkpoint:
        raise ConfigError(
            f"meta.read_checkpoint ({meta.read_checkpoint}) is read only with meta.load_checkpoint: true (the "
            f"reference's spelling of meta.init_from); set that, or give the file as meta.init_from"
        )
    if meta.init_from and meta.load_checkpoint and meta.read_checkpoint:
        raise ConfigError(
            f"meta.init_from ({meta.init_from}) and meta.read_checkpoint ({meta.read_checkpoint}) "
            f"both name a checkpoint to start from; keep one"
        )
    if o.epochs < 1:
        raise ConfigError(f"optimization.epochs must be at least 1, got {o.epochs}")
    if o.lr_scaling not in LR_SCALING:
        raise ConfigError(f"optimization.lr_scaling must be one of {', '.join(LR_SCALING)}, got {o.lr_scaling!r}")
    if o.reference_batch is not None and o.reference_batch < 1:
        raise ConfigError(f"optimization.reference_batch must be at least 1 image, got {o.reference_batch}")
    if o.lr_scaling != "none" and o.reference_batch is None:
        raise ConfigError(
            f"optimization.lr_scaling={o.lr_scaling} scales the LR by the global batch over "
            f"optimization.reference_batch, which is not set"
        )
    if o.warmup < 0 or o.ipe_scale <= 0:
        raise ConfigError("optimization.warmup must be >= 0 and optimization.ipe_scale > 0")
    for key in ("start_lr", "lr", "final_lr", "weight_decay", "final_weight_decay", "clip_grad"):
        if getattr(o, key) < 0:
            raise ConfigError(f"optimization.{key} must be >= 0, got {getattr(o, key)}")
    _check_pair("optimization.ema", o.ema, -1e-12, 1.0)
    if o.accum_steps < 1 or o.skip_nonfinite_steps < 0:
        raise ConfigError(
            f"optimization.accum_steps must be >= 1 and optimization.skip_nonfinite_steps >= 0, "
            f"got {o.accum_steps} and {o.skip_nonfinite_steps}"
        )
    if log.log_every < 1 or log.checkpoint_every < 1 or log.checkpoint_every_steps < 0 or log.keep_last < 0:
        raise ConfigError(
            "logging.log_every and logging.checkpoint_every must be >= 1, "
            "logging.checkpoint_every_steps and logging.keep_last >= 0"
        )
    if log.collapse_every < 0 or log.collapse_images < 16:
        raise ConfigError(
            f"logging.collapse_every must be >= 0 and logging.collapse_images >= 16, "
            f"got {log.collapse_every} and {log.collapse_images}"
        )
    if log.monitor_every < 0 or (log.monitor_every and log.monitor_images < 10):
        raise ConfigError(
            f"logging.monitor_every must be >= 0 and logging.monitor_images >= 10, "
            f"got {log.monitor_every} and {log.monitor_images}"
        )
    _check_objective(cfg)
    return cfg


def _check_objective(cfg: Config) -> None:
    """``meta.objective`` known; the settings of the other objective left at their defaults."""
    d, meta = cfg.data, cfg.meta
    if meta.objective not in OBJECTIVES:
        raise ConfigError(f"meta.objective must be one of {', '.join(OBJECTIVES)}, got {meta.objective!r}")
    if meta.objective == "ijepa":
        for key in DINO_KEYS:
            if getattr(meta, key) != getattr(MetaConfig(), key):
                raise ConfigError(f"meta.{key} is a setting of meta.objective: dino; this run's objective is ijepa")
        return
    defaults = {"meta": MetaConfig(), "data": DataConfig()}
    for section, key in IJEPA_ONLY:
        if getattr(getattr(cfg, section), key) != getattr(defaults[section], key):
            raise ConfigError(
                f"{section}.{key} is an I-JEPA setting that meta.objective: dino does not use; leave it at "
                f"its default {getattr(defaults[section], key)!r} (DINO's views have their own crops and flips)"
            )
    for name, on in (
        ("meta.fsdp", meta.fsdp),
        ("meta.init_from", meta.init_from or (meta.load_checkpoint and meta.read_checkpoint)),
        ("data.decode_on_device", d.decode_on_device),
    ):
        if on:
            raise ConfigError(f"{name} is not supported with meta.objective: dino yet")
    if d.in_chans not in (1, 3):
        raise ConfigError(f"meta.objective: dino jitters 1- or 3-channel images; data.in_chans is {d.in_chans}")
    if meta.dino_out_dim < 1 or meta.dino_hidden < 1:
        raise ConfigError(
            f"meta.dino_out_dim and meta.dino_hidden must be at least 1, got {meta.dino_out_dim} and {meta.dino_hidden}"
        )
    if meta.dino_local_crops < 0:
        raise ConfigError(f"meta.dino_local_crops must be >= 0 (0: global views only), got {meta.dino_local_crops}")
    patch = cfg.mask.patch_size
    if meta.dino_local_size < 0 or meta.dino_local_size % patch or meta.dino_local_size > d.crop_size:
        raise ConfigError(
            f"meta.dino_local_size must be a multiple of mask.patch_size {patch} up to data.crop_size "
            f"{d.crop_size} (0: 96/224 of it), got {meta.dino_local_size}"
        )
    for key in ("dino_teacher_temp", "dino_warmup_teacher_temp"):
        if not getattr(meta, key) > 0:
            raise ConfigError(f"meta.{key} must be > 0, got {getattr(meta, key)}")
    if not 0.0 <= meta.dino_teacher_temp_warmup <= 1.0:
        raise ConfigError(
            f"meta.dino_teacher_temp_warmup is a fraction of the run, from 0 to 1; got {meta.dino_teacher_temp_warmup}"
        )
