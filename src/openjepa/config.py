"""Typed configuration: dataclasses with defaults, YAML files, dotted overrides, validation.

The sections and key names are those of the reference repository (data / logging / mask / meta /
optimization), so its YAML files load unchanged; our additions live in the same sections. Any
unknown or mistyped key is an error that names it and the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import BadInput

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DATASETS = ("folder", "fashion_mnist", "synthetic", "webdataset", "huggingface")
LOSSES = ("smooth_l1", "l2")
TARGETS = ("representations", "pixels")
LR_SCALING = ("none", "linear", "sqrt")


class ConfigError(BadInput):
    """A configuration that cannot run; the message names the key and the problem."""


@dataclass
class DataConfig:
    dataset: str = "folder"  # folder | fashion_mnist | synthetic | webdataset | huggingface
    # folder: root_path / image_folder; fashion_mnist: the idx files ("" = search); webdataset: a brace
    # pattern or list of tar shards (or pipe: commands); huggingface: a save_to_disk folder or Parquet/Arrow files
    root_path: str | list[str] = ""
    image_folder: str = ""
    samples_per_epoch: int = 0  # webdataset: the samples one epoch reads (schedules and resume need it)
    shuffle_buffer: int = 1000  # webdataset: samples held by each loader worker's shuffle buffer
    image_key: str = ""  # huggingface: the image column ("" = the one column of images)
    label_key: str = ""  # huggingface: the label column ("" = 'label' or 'labels' where present; else unlabelled)
    split: str = "train"  # huggingface: the split of a DatasetDict folder
    synthetic_size: int = 1024  # images in the synthetic dataset (random blobs; for tests and benchmarks)
    batch_size: int = 128  # per process
    crop_size: int = 224
    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    in_chans: int = 3
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 4
    pin_mem: bool = True
    use_horizontal_flip: bool = False
    decode_on_device: bool = False  # folder datasets: JPEGs decoded on the training device (torchvision)
    # Accepted for reference configs; I-JEPA uses no other augmentation, so they must stay off.
    use_gaussian_blur: bool = False
    use_color_distortion: bool = False
    color_jitter_strength: float = 0.0


@dataclass
class MaskConfig:
    strategy: str = "multiblock"  # multiblock | block | rasterized | random (the paper's Table 6)
    reference_sampler: bool = False  # reproduce the reference sampler's exact (biased) behaviour
    options: dict = field(default_factory=dict)  # extra options of the block/rasterized/random samplers
    patch_size: int = 16
    num_enc_masks: int = 1
    enc_mask_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    num_pred_masks: int = 4
    pred_mask_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])
    aspect_ratio: list[float] = field(default_factory=lambda: [0.75, 1.5])
    min_keep: int = 10
    allow_overlap: bool = False
    # Masks are drawn and packed (contexts cut to the group's shortest) in groups of this many images
    # of the global batch: the reference's 128 images per GPU, whatever the batch or process count.
    pack_group: int = 128


@dataclass
class MetaConfig:
    model_name: str = "vit_base"
    pred_depth: int | None = None  # None: the paper's depth for model_name (6 up to ViT-B, 12 for L/H, 16 for g)
    pred_emb_dim: int = 384
    loss: str = "smooth_l1"  # smooth_l1 (reference code) | l2 (paper text)
    target: str = "representations"  # representations | pixels (the paper's Table 7 ablation)
    target_layers: int = 1  # targets: the mean of the target encoder's last k blocks, each layer-normed (data2vec); 1 = the paper's
    use_bfloat16: bool = True  # bf16 autocast on CUDA
    cpu_bfloat16: bool | str = "auto"  # bf16 autocast on CPU too; auto: where the CPU has AMX / AVX512-BF16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Opt-in terms against collapse on the pooled context features (regularizers.py); 0 = off, the paper's method.
    variance_weight: float = 0.0  # C-JEPA / VICReg variance hinge
    variance_gamma: float = 1.0  # the standard deviation the hinge asks of each dimension
    covariance_weight: float = 0.0  # C-JEPA / VICReg off-diagonal covariance
    sigreg_weight: float = 0.0  # LeJEPA's SIGReg (Epps-Pulley on random 1-D projections)
    sigreg_slices: int = 256  # random directions per step
    invariance_weight: float = 0.0  # C-JEPA's invariance of the mean: pooled context vs the target encoder's pooled output
    regularizer_final: float = 1.0  # the weights' multiplier at the end of training, by a cosine from 1; 1 = constant
    seed: int = 0
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (token counts marked dynamic: no recompiles)
    fsdp: bool = False  # under torchrun: shard encoder, target encoder and predictor with FSDP (fully_shard)
    # Start a new run from a checkpoint (ours, the reference's .pth.tar, a fine-tuned or exported
    # encoder): its networks, with new optimiser state and schedules. A run that has its own
    # checkpoints/latest.pt resumes from it and ignores this.
    init_from: str = ""
    # The reference's spelling of init_from: load_checkpoint true and read_checkpoint the file (found in
    # logging.folder, as the reference looks for it, or as given). load_checkpoint alone: resume (always done).
    load_checkpoint: bool = False
    read_checkpoint: str | None = None
    copy_data: bool = False


@dataclass
class OptimizationConfig:
    epochs: int = 300
    warmup: float = 40  # epochs of linear LR warmup from start_lr to lr
    start_lr: float = 2e-4
    lr: float = 1e-3
    final_lr: float = 1e-6
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema: list[float] = field(default_factory=lambda: [0.996, 1.0])
    ipe_scale: float = 1.0  # schedules span ipe_scale x epochs x iterations-per-epoch steps
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    accum_steps: int = 1  # micro-batches per optimiser step
    fused_adamw: bool = True  # torch's fused AdamW kernel (one kernel for all parameters; CPU and CUDA); false: foreach
    skip_nonfinite_steps: int = 0  # skip up to N steps whose loss is not finite (else: stop at the first)
    # The global batch (images per optimiser step) the LRs were set for; the log compares it with the run's.
    reference_batch: int | None = None
    lr_scaling: str = "none"  # none | linear | sqrt: scale start_lr, lr, final_lr by global / reference batch
    allow_batch_change: bool = False  # resume a checkpoint written at another global batch (step converted)


@dataclass
class LoggingConfig:
    folder: str = "runs/ijepa"  # the run directory
    write_tag: str = "jepa"  # accepted for reference configs; names the TensorBoard run
    log_every: int = 10  # steps between host read-backs of the loss (log.csv, TensorBoard, progress bar)
    checkpoint_every: int = 10  # epochs between kept checkpoints (latest.pt is written every epoch)
    checkpoint_every_steps: int = 0  # also refresh latest.pt every N steps; 0 = off
    keep_last: int = 0  # periodic checkpoints kept (the newest); 0 = all
    tensorboard: bool = True
    progress_bar: bool = True
    monitor_every: int = 0  # epochs between kNN / RankMe checks of the target encoder (monitor.csv); 0 = off
    monitor_images: int = 2000  # the fixed labelled subset those checks use
    collapse_every: int = 100  # steps between collapse probes (and one at step 0); 0 = off
    collapse_images: int = 256  # the fixed batch the collapse probe encodes


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_types(section: str) -> dict[str, object]:
    cls = {f.name: f.default_factory for f in dataclasses.fields(Config)}[section]
    return typing.get_type_hints(cls)


def _unknown(kind: str, name: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; valid: {', '.join(valid)}"
    return ConfigError(f"unknown {kind} {name!r}{hint}")


_SCALARS = {bool: ((bool,), "true or false"), int: ((int,), "an integer"), float: ((int, float), "a number"),
            str: ((str,), "a string"), dict: ((dict,), "a mapping")}


def _coerce(key: str, value, hint):
    """Check ``value`` against the type ``hint``; return it converted (int -> float, tuple -> list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):  # the first type that takes the value
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key} must be {' or '.join(_SCALARS[a][1] for a in args if a in _SCALARS)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if hint not in _SCALARS:
        raise TypeError(f"unsupported config type {hint} for {key}")
    accepted, what = _SCALARS[hint]
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {what}, got {value!r}")
    if hint is float and not math.isfinite(value):  # YAML reads .nan and .inf as numbers
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value) if hint is float else value


def _hint(section: str, key: str):
    """The type of ``section.key``; unknown names are a ConfigError naming the closest valid one."""
    if section not in SECTIONS:
        raise _unknown("config section", section, list(SECTIONS))
    hints = _section_types(section)
    if key not in hints:
        raise _unknown(f"key in section {section!r}", key, list(hints))
    return hints[key]


def _set(cfg: Config, section: str, key: str, value) -> None:
    setattr(getattr(cfg, section), key, _coerce(f"{section}.{key}", value, _hint(section, key)))


def from_dict(raw: dict, cfg: Config | None = None) -> Config:
    cfg = cfg or Config()
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise _unknown("config section", str(section), list(SECTIONS))
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} must be a mapping of keys")
        for key, value in values.items():
            _set(cfg, section, str(key), value)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last,
    so a second ``data:`` section would silently replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys given after it override it
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                  f"keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _count_hashes(value) -> int:
    if isinstance(value, str):
        return value.count("#")
    if isinstance(value, dict):
        return sum(_count_hashes(k) + _count_hashes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_count_hashes(v) for v in value)
    return 0


def _override_value(item: str, text: str, hint):
    """An override's value, parsed as YAML. A `` #`` would start a YAML comment and silently cut
    the value: a string key keeps the text whole (``logging.folder=/data/run #1``); for any other
    key it is an error."""
    if not text.strip():
        return ""  # `key=` sets an empty string
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e.problem})") from None
    except ConfigError as e:
        raise ConfigError(f"override {item!r}: {e}") from None
    if text.count("#") > _count_hashes(value):  # a '#' the value lost: YAML took it for a comment
        if hint is str or str in typing.get_args(hint):
            return text
        raise ConfigError(f"override {item!r}: '#' starts a YAML comment, which would cut the value; remove it")
    return value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``lr=1e-3``, ``ema=[0.99,1]``)."""
    for item in overrides:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        _set(cfg, section, key, _override_value(item, text, _hint(section, key)))
    return cfg


def apply_field_overrides(obj, overrides: list[str], what: str):
    """``key=value`` strings (``what.key=value`` too) onto the dataclass ``obj`` of one section's worth of
    settings (e.g. fine-tuning's), typed and checked as the config's keys are."""
    hints = typing.get_type_hints(type(obj))
    for item in overrides:
        name, sep, text = item.partition("=")
        key = name.strip().removeprefix(f"{what}.")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in hints:
            raise _unknown(f"{what} setting", key, list(hints))
        setattr(obj, key, _coerce(f"{what} {key}", _override_value(item, text, hints[key]), hints[key]))
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (ours or a reference one), then the overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config {path} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}): is it a YAML file?") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        try:
            from_dict(raw, cfg)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def _check_pair(key: str, value: list[float], low: float, high: float) -> None:
    if len(value) != 2 or not (low < value[0] <= value[1] <= high):
        raise ConfigError(f"{key} must be [min, max] with {low} < min <= max <= {high}, got {value}")


def validate(cfg: Config) -> Config:
    """Reject impossible values before any compute is spent."""
    from .models.vit import VIT_SIZES, resolve_size

    d, m, meta, o, log = cfg.data, cfg.mask, cfg.meta, cfg.optimization, cfg.logging
    if d.dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {d.dataset!r}")
    for key in ("batch_size", "crop_size", "in_chans", "synthetic_size"):
        if getattr(d, key) < 1:
            raise ConfigError(f"data.{key} must be at least 1, got {getattr(d, key)}")
    if d.decode_on_device:
        import importlib.util

        if d.dataset != "folder":
            raise ConfigError(f"data.decode_on_device decodes the JPEG files of a folder dataset; "
                              f"data.dataset is {d.dataset!r}")
        if importlib.util.find_spec("torchvision") is None:
            raise ConfigError("data.decode_on_device needs torchvision (pip install 'openjepa[jpeg]')")
    if d.dataset != "webdataset" and not isinstance(d.root_path, str):
        raise ConfigError(f"data.root_path is a list only for data.dataset=webdataset (shards); got {d.root_path}")
    if d.dataset == "webdataset" and d.samples_per_epoch < 1:
        raise ConfigError("data.dataset=webdataset needs data.samples_per_epoch: the samples one epoch reads "
                          "(at most the samples its shards hold), for the schedules and exact resume")
    if d.shuffle_buffer < 1 or d.samples_per_epoch < 0:
        raise ConfigError(f"data.shuffle_buffer must be >= 1 and data.samples_per_epoch >= 0, got "
                          f"{d.shuffle_buffer} and {d.samples_per_epoch}")
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
            raise ConfigError(f"data.{key}: I-JEPA uses no augmentation beyond the random resized crop "
                              f"(and optional flip); set it to false")
    if d.color_jitter_strength != 0:
        raise ConfigError("data.color_jitter_strength must be 0: I-JEPA uses no colour augmentation")
    if m.patch_size < 1 or d.crop_size % m.patch_size:
        raise ConfigError(f"mask.patch_size {m.patch_size} does not divide data.crop_size {d.crop_size}")
    from .masks import SAMPLERS

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
    try:
        size = resolve_size(meta.model_name)
    except ValueError:
        raise ConfigError(f"meta.model_name {meta.model_name!r} is not one of {', '.join(VIT_SIZES)}") from None
    from .ijepa import predictor_depth

    meta.pred_depth = predictor_depth(meta)  # null: the paper's depth for this size, written into config.yaml
    if meta.pred_depth < 1 or meta.pred_emb_dim < 1 or meta.pred_emb_dim % size.heads or meta.pred_emb_dim % 4:
        raise ConfigError(f"meta.pred_emb_dim must be a positive multiple of 4 and of the encoder's "
                          f"{size.heads} heads, and meta.pred_depth positive; got {meta.pred_emb_dim}, {meta.pred_depth}")
    if isinstance(meta.cpu_bfloat16, str) and meta.cpu_bfloat16 != "auto":
        raise ConfigError(f"meta.cpu_bfloat16 must be true, false or auto, got {meta.cpu_bfloat16!r}")
    if meta.loss not in LOSSES:
        raise ConfigError(f"meta.loss must be one of {', '.join(LOSSES)}, got {meta.loss!r}")
    if meta.target not in TARGETS:
        raise ConfigError(f"meta.target must be one of {', '.join(TARGETS)}, got {meta.target!r}")
    if not (isinstance(meta.target_layers, int) and 1 <= meta.target_layers <= size.depth):
        raise ConfigError(f"meta.target_layers must be a whole number from 1 to {meta.model_name}'s {size.depth} "
                          f"blocks, got {meta.target_layers!r}")
    if meta.target_layers > 1 and meta.target == "pixels":
        raise ConfigError("meta.target_layers averages the target encoder's blocks; it has no meaning with "
                          "meta.target: pixels")
    for key in ("variance_weight", "covariance_weight", "sigreg_weight", "variance_gamma", "invariance_weight"):
        value = getattr(meta, key)
        if not (value >= 0 and value != float("inf")):
            raise ConfigError(f"meta.{key} must be a finite number >= 0, got {value}")
    if (meta.variance_weight or meta.covariance_weight or meta.sigreg_weight) and d.batch_size < 2:
        raise ConfigError("the collapse regularisers measure spread across images: data.batch_size must be >= 2")
    if meta.invariance_weight and (meta.target == "pixels" or meta.target_layers > 1):
        raise ConfigError("meta.invariance_weight compares the pooled context with the target encoder's pooled output: "
                          "it needs meta.target: representations and meta.target_layers: 1")
    if not 0.0 <= meta.regularizer_final <= 1.0:
        raise ConfigError(f"meta.regularizer_final must be between 0 and 1 (the weights' multiplier at the end of "
                          f"training), got {meta.regularizer_final}")
    if meta.sigreg_slices < 1:
        raise ConfigError(f"meta.sigreg_slices must be at least 1, got {meta.sigreg_slices}")
    if meta.init_from and meta.load_checkpoint and meta.read_checkpoint:
        raise ConfigError(f"meta.init_from ({meta.init_from}) and meta.read_checkpoint ({meta.read_checkpoint}) "
                          f"both name a checkpoint to start from; keep one")
    if o.epochs < 1:
        raise ConfigError(f"optimization.epochs must be at least 1, got {o.epochs}")
    if o.lr_scaling not in LR_SCALING:
        raise ConfigError(f"optimization.lr_scaling must be one of {', '.join(LR_SCALING)}, got {o.lr_scaling!r}")
    if o.reference_batch is not None and o.reference_batch < 1:
        raise ConfigError(f"optimization.reference_batch must be at least 1 image, got {o.reference_batch}")
    if o.lr_scaling != "none" and o.reference_batch is None:
        raise ConfigError(f"optimization.lr_scaling={o.lr_scaling} scales the LR by the global batch over "
                          f"optimization.reference_batch, which is not set")
    if o.warmup < 0 or o.ipe_scale <= 0:
        raise ConfigError("optimization.warmup must be >= 0 and optimization.ipe_scale > 0")
    for key in ("start_lr", "lr", "final_lr", "weight_decay", "final_weight_decay", "clip_grad"):
        if getattr(o, key) < 0:
            raise ConfigError(f"optimization.{key} must be >= 0, got {getattr(o, key)}")
    _check_pair("optimization.ema", o.ema, -1e-12, 1.0)
    if o.accum_steps < 1 or o.skip_nonfinite_steps < 0:
        raise ConfigError(f"optimization.accum_steps must be >= 1 and optimization.skip_nonfinite_steps >= 0, "
                          f"got {o.accum_steps} and {o.skip_nonfinite_steps}")
    if log.log_every < 1 or log.checkpoint_every < 1 or log.checkpoint_every_steps < 0 or log.keep_last < 0:
        raise ConfigError("logging.log_every and logging.checkpoint_every must be >= 1, "
                          "logging.checkpoint_every_steps and logging.keep_last >= 0")
    if log.collapse_every < 0 or log.collapse_images < 16:
        raise ConfigError(f"logging.collapse_every must be >= 0 and logging.collapse_images >= 16, "
                          f"got {log.collapse_every} and {log.collapse_images}")
    if log.monitor_every < 0 or (log.monitor_every and log.monitor_images < 10):
        raise ConfigError(f"logging.monitor_every must be >= 0 and logging.monitor_images >= 10, "
                          f"got {log.monitor_every} and {log.monitor_images}")
    return cfg
