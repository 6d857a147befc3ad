"""End-to-end fine-tuning of a pretrained encoder with a classification head.

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
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError, atomic_save, load_checkpoint
from ..config import ConfigError, apply_field_overrides
from ..data import FMNIST_CLASSES, DataError, ImageFolder, PretrainTransform, UnreadableImage, generator_for, seed_for
from ..data.transforms import normalize, per_channel
from ..device import resolve_device
from ..evaluate import load_eval_data, random_encoder
from ..evaluate.features import collate_readable, read_batches, resolve_precision, warn_skipped
from ..evaluate.linear import stratified_split
from ..train import CSVLog, StopSignals, TrainingError, _setup_logging, check_run_dir, make_run_dir
from .classifier import HEADS, Classifier

log = logging.getLogger("openjepa")
FORMAT = "openjepa-finetune"
LOG_COLUMNS = ("step", "epoch", "loss", "train_acc", "val_acc", "lr", "img_per_s", "skipped_images", "elapsed_s")
# Streams of randomness (see data.seeds), apart from pretraining's.
ORDER, AUGMENT, RANDAUG, DROP, MIX, SPLIT = 11, 12, 13, 14, 15, 16


@dataclass
class FinetuneConfig:
    """Every setting of a fine-tuning run (``key=value`` overrides on the command line)."""

    epochs: int = 10
    batch_size: int = 128
    blr: float = 1e-3  # base LR per 256 images: lr = blr * batch_size / 256 (MAE's convention)
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # block i of L gets layer_decay ** (L + 1 - (i + 1)) of the LR; the head all of it
    # stochastic depth at the last block (linear from 0 at the first); MAE uses 0.1 over 100 ImageNet epochs, but on
    # a short run it only shakes the features the probe's head was fitted to (BENCHMARKS.md): off by default
    drop_path: float = 0.0
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max gradient norm; 0 = off
    mixup: float = 0.0  # mixup's alpha (timm); 0 = off
    cutmix: float = 0.0  # CutMix's alpha (timm); 0 = off
    randaug: str = ""  # timm RandAugment, e.g. rand-m9-mstd0.5-inc1; "" = off
    # Mild by default, as I-JEPA's own pretraining (no flip): a stronger crop or a flip moves the features of an
    # encoder that never saw them far enough to undo the probe's head (Fashion-MNIST, BENCHMARKS.md)
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    hflip: bool = False
    head: str = "linear"  # linear (pooled features, exports to HF / timm) | attentive
    head_init: str = "probe"  # probe: the linear head starts as a linear probe of the frozen features (LP-FT) | zero
    labels_fraction: float = 1.0  # the fraction of the training split's labels used (stratified)
    val_fraction: float = 0.1  # held out of the training split to pick the best epoch (no separate val/)
    which: str = "target"  # the checkpoint's target (EMA) or context encoder
    random_init: bool = False  # the baseline: the same architecture, freshly initialised
    seed: int = 0
    num_workers: int = 2
    eval_batch_size: int = 256
    precision: str = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16 | bf16 | fp32
    device: str = "auto"
    eval_every: int = 1  # epochs between validations (the last epoch is always validated); best.pt is chosen among them
    log_every: int = 50
    progress_bar: bool = True
    tensorboard: bool = True

    def validate(self) -> "FinetuneConfig":
        for key in ("epochs", "batch_size", "eval_batch_size", "log_every", "eval_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune {key} must be at least 1, got {getattr(self, key)}")
        for key in ("blr", "min_lr", "warmup_epochs", "weight_decay", "clip_grad", "mixup", "cutmix"):
            if getattr(self, key) < 0:
                raise ConfigError(f"finetune {key} must be >= 0, got {getattr(self, key)}")
        for key in ("drop_path", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"finetune {key} must be in [0, 1), got {getattr(self, key)}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"finetune layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 < self.labels_fraction <= 1:
            raise ConfigError(f"finetune labels_fraction must be in (0, 1], got {self.labels_fraction}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"finetune val_fraction must be in (0, 1), got {self.val_fraction}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"finetune crop_scale must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        if self.head not in HEADS:
            raise ConfigError(f"finetune head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head_init not in ("probe", "zero"):
            raise ConfigError(f"finetune head_init must be probe or zero, got {self.head_init!r}")
        if self.which not in ("target", "context"):
            raise ConfigError(f"finetune which must be 'target' or 'context', got {self.which!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"finetune precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.num_workers < 0:
            raise ConfigError(f"finetune num_workers must be >= 0, got {self.num_workers}")
        if (self.mixup or self.cutmix or self.randaug) and _timm() is None:
            raise ConfigError("finetune mixup / cutmix / randaug use timm: pip install 'openjepa[timm]'")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ConfigError(f"mixup and CutMix pair each image with another: batch_size must be even, "
                              f"got {self.batch_size}")
        if self.randaug:
            try:
                _randaugment(self.randaug, 224, 3)
            except Exception as e:  # timm's parser raises bare asserts and KeyErrors
                raise ConfigError(f"finetune randaug {self.randaug!r} is not a timm RandAugment setting "
                                  f"(e.g. rand-m9-mstd0.5-inc1): {type(e).__name__} {e}") from None
        return self


def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


def _randaugment(spec: str, size: int, channels: int):
    from timm.data.auto_augment import rand_augment_transform

    fill = 128 if channels == 1 else (124, 116, 104)  # the fill of shifted / rotated areas: mid-grey
    return rand_augment_transform(spec, {"translate_const": int(size * 0.45), "img_mean": fill})


# --------------------------------------------------------------------------- data

def labels_of(dataset) -> torch.Tensor:
    """The labels of a dataset without decoding its images where it keeps them (folders, arrays,
    Hugging Face datasets)."""
    labels = getattr(dataset, "labels", None)
    if labels is None and getattr(dataset, "label_key", None):
        labels = dataset.ds[dataset.label_key]
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return torch.as_tensor(np.asarray(labels, dtype=np.int64))


def classes_of(dataset, data: str, labels: torch.Tensor) -> list[str]:
    names = getattr(dataset, "classes", None)
    if names:
        return [str(c) for c in names]
    if data == "fashion_mnist":
        return list(FMNIST_CLASSES)
    return [str(i) for i in range(int(labels.max()) + 1)]


def subset_per_class(labels: torch.Tensor, indices: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """``fraction`` of ``indices`` class by class (at least one of each class), sorted."""
    g = generator_for(seed, SPLIT)
    keep = []
    for c in labels[indices].unique():
        idx = indices[labels[indices] == c]
        n = max(1, round(fraction * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values


@dataclass
class Splits:
    train: object  # the dataset the fit and (when held out) val indices point into
    fit: torch.Tensor  # indices of the labelled training images trained on
    val: object  # a dataset
    test: object
    classes: list[str]
    held_out: bool  # val carved out of the labelled training images
    unlabelled: int  # training items without a label (-1), left out


def _named_splits(data: str, in_chans: int):
    """(train, val, test) when ``data`` names a split to choose the epoch on and another to report:
    a folder with train/, val/ and test/ class folders, or a DatasetDict folder with train, validation
    (or val) and test splits; None otherwise."""
    from ..data.hf import HFImages, is_hf_folder

    folder = Path(data)
    if data == "fashion_mnist" or not folder.is_dir():
        return None
    if is_hf_folder(folder):
        names = json.loads((folder / "dataset_dict.json").read_text()).get("splits", []) \
            if (folder / "dataset_dict.json").exists() else []
        val = next((n for n in ("validation", "val") if n in names), None)
        if "train" not in names or val is None or "test" not in names:
            return None
        return tuple(HFImages(folder, name, in_chans=in_chans) for name in ("train", val, "test"))
    if all((folder / n).is_dir() for n in ("train", "val", "test")):
        return tuple(ImageFolder(folder / n, in_chans) for n in ("train", "val", "test"))
    return None


def make_splits(data: str, in_chans: int, root: str | None, ft: FinetuneConfig) -> Splits:
    """The labelled training images (``labels_fraction`` of the training split's, class by class),
    the split that picks the best epoch and the split reported. Without a named validation split,
    ``val_fraction`` of the labelled images (at least one per class) is held out for it, so a low-shot
    run chooses its epoch with the labels it was given and no others."""
    named = _named_splits(data, in_chans)
    if named:
        train, val, test = named
    else:
        (train, test), val = load_eval_data(data, in_chans, root), None
    labels = labels_of(train)
    classes = classes_of(train, data, labels)
    if len(classes) < 2:
        raise DataError(f"{data} has {len(classes)} class(es): a classifier needs at least two")
    for name, split in (("validation", val), ("test", test)):
        if split is None:
            continue
        if getattr(split, "classes", None) and getattr(train, "classes", None) and split.classes != train.classes:
            raise DataError(f"{data}: the training and {name} splits have different classes")
        found = labels_of(split)
        if (found < 0).any() or (found >= len(classes)).any():
            raise DataError(f"{data}: the {name} split has {int((found < 0).sum())} unlabelled item(s) and "
                            f"{int((found >= len(classes)).sum())} with a label outside the {len(classes)} classes: "
                            f"every image scored needs its label")
    if (labels >= len(classes)).any():
        raise DataError(f"{data}: training labels outside the {len(classes)} classes ({int(labels.max())})")
    labelled = (labels >= 0).nonzero().flatten()
    if len(labelled) < 2:
        raise DataError(f"{data}: the training split has {len(labelled)} labelled image(s)")
    if ft.labels_fraction < 1:
        labelled = subset_per_class(labels, labelled, ft.labels_fraction, ft.seed)
    fit = labelled
    if val is None:  # held out of the labelled images: the epoch is chosen with the labels the run was given
        part_fit, part_val = stratified_split(labels[labelled], ft.val_fraction, seed_for(ft.seed, SPLIT) % 2**31)
        if not len(part_val) or not len(part_fit):
            raise DataError(f"{data}: {len(labelled)} labelled training image(s) are too few to hold out a "
                            f"validation split; give more labels, or a val/ folder")
        fit, val = labelled[part_fit], torch.utils.data.Subset(train, labelled[part_val].tolist())
    return Splits(train, fit, val, test, classes, named is None, int((labels < 0).sum()))


class Augmented(torch.utils.data.Dataset):
    """Training items at keys (index, epoch, position): the image through RandAugment (when on) and
    the random resized crop, flip and normalisation, every choice drawn from (seed, epoch,
    position); an unreadable image becomes (None, its path) for ``collate_readable``."""

    def __init__(self, dataset, transform: PretrainTransform, randaug: str, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.randaug = _randaugment(randaug, transform.crop_size, len(transform.mean)) if randaug else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, epoch, position = key
        try:
            img, label = self.dataset[i]
        except UnreadableImage as e:
            return None, e.path
        if self.randaug is not None:
            img = self._randaug(img, seed_for(self.seed, RANDAUG, epoch, position))
        return self.transform(img, generator_for(self.seed, AUGMENT, epoch, position)), label

    def _randaug(self, img: torch.Tensor, seed: int) -> torch.Tensor:
        from PIL import Image

        # timm draws the ops from numpy's stream and their magnitudes from Python's: both seeded per image,
        # then given back as they were
        state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
            out = np.asarray(self.randaug(pil), dtype=np.float32) / 255.0
        finally:
            random.setstate(state)
            np.random.set_state(np_state)
        out = torch.from_numpy(out)
        return out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1)


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch from batch ``start``: a permutation of ``indices`` drawn from (seed,
    epoch), ``steps`` batches of ``batch`` keys (index, epoch, position)."""

    def __init__(self, indices: torch.Tensor, batch: int, steps: int, epoch: int, start: int, seed: int):
        self.indices, self.batch, self.steps, self.epoch, self.start, self.seed = indices, batch, steps, epoch, start, seed

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        order = self.indices[torch.randperm(len(self.indices), generator=generator_for(self.seed, ORDER, self.epoch))]
        for b in range(self.start, self.steps):
            yield [(int(order[p]), self.epoch, p) for p in range(b * self.batch, (b + 1) * self.batch)]


# --------------------------------------------------------------------------- optimisation

def param_groups(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups by (layer, decay): layer 0 is the patch embedding, block i is layer i + 1, the
    final norm and the head layer L + 1, whose LR scale is 1; layer l gets layer_decay ** (L + 1 - l).
    No weight decay on biases, norms and the attentive head's query (1-D parameters)."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("encoder.patch_embed"):
            layer = 0
        elif name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = depth + 1
        decay = p.ndim > 1 and not name.endswith(".bias") and not name.endswith("query")
        group = groups.setdefault((layer, decay), {"params": [], "lr_scale": layer_decay ** (depth + 1 - layer),
                                                   "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def lr_at(step: int, base: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup from 0 over ``warmup`` steps, then cosine from ``base`` to ``min_lr`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _mixup(ft: FinetuneConfig, num_classes: int):
    if not (ft.mixup or ft.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, label_smoothing=ft.label_smoothing,
                 num_classes=num_classes)


# --------------------------------------------------------------------------- the head's start

PROBE_STEPS = 2000


@torch.no_grad()
def probe_head(model: Classifier, splits: "Splits", ft: FinetuneConfig, precision: str) -> dict:
    """LP-FT (Kumar et al., ICLR 2022): before fine-tuning, fit the linear head on the frozen
    encoder's pooled features of the labelled training images (``evaluate.linear``'s grid of
    learning rates and weight decays on standardised features, the head chosen on the validation
    split), then fold the standardisation into the head's weights, so the classifier is still one
    linear layer on the mean of the patch features. Fine-tuning then starts from a head that already
    agrees with the features instead of a random one whose gradients first disturb them."""
    from ..evaluate.features import extract
    from ..evaluate.linear import accuracy, feature_stats, train_heads

    model.eval()
    fit = extract(model.encoder, torch.utils.data.Subset(splits.train, splits.fit.tolist()), ft.eval_batch_size,
                  num_workers=ft.num_workers, progress=False, precision=precision, last4=False)
    val = extract(model.encoder, splits.val, ft.eval_batch_size, num_workers=ft.num_workers, progress=False,
                  precision=precision, last4=False)
    mean, std = feature_stats(fit.pooled)
    val_x = (val.pooled - mean) / std
    with torch.enable_grad():
        w, b, grid = train_heads((fit.pooled - mean) / std, fit.labels, len(model.classes), steps=PROBE_STEPS,
                                 seed=ft.seed)
    scores = [accuracy(val_x @ w[h] + b[h], val.labels) for h in range(len(grid))]
    best = max(range(len(grid)), key=lambda h: scores[h])
    # A probe's logits are far too confident for the fine-tuning loss (label smoothing): their gradients would
    # first tear the features down. Temperature scaling (Guo et al., 2017) on the validation split, against the
    # loss fine-tuning will use, starts the head at that loss's own scale.
    logits = val_x @ w[best] + b[best]
    temps = torch.logspace(-1, 3, 81)
    losses = [F.cross_entropy(logits / t, val.labels, label_smoothing=ft.label_smoothing).item() for t in temps]
    temp = float(temps[min(range(len(temps)), key=losses.__getitem__)])
    weight = w[best] / std[:, None]  # x_std @ W + b  ==  x @ (W / std) + (b - (mean / std) @ W)
    model.head.weight.copy_(weight.T / temp)
    model.head.bias.copy_((b[best] - (mean / std) @ w[best]) / temp)
    model.train()
    return {"val_acc": scores[best], "lr": grid[best][0], "wd": grid[best][1], "steps": PROBE_STEPS,
            "temperature": round(temp, 3)}


# --------------------------------------------------------------------------- evaluation

@torch.inference_mode()
def accuracy_on(model: Classifier, dataset, device: torch.device, autocast, batch_size: int = 256,
                num_workers: int = 0) -> tuple[float, int, list[str]]:
    """(top-1 accuracy, images scored, paths of the unreadable ones left out) of ``model`` on
    ``dataset`` (resized and centre-cropped to its size)."""
    model.eval()
    mean, std = per_channel(model.mean, model.in_chans), per_channel(model.std, model.in_chans)
    correct, seen, skipped = 0, 0, []
    for images, labels, unreadable in read_batches(dataset, model.img_size, batch_size=batch_size,
                                                   num_workers=num_workers):
        skipped += unreadable
        if images is None:
            continue
        with autocast:
            logits = model(normalize(images.float(), mean, std).to(device))
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        seen += len(labels)
    if not seen:
        raise DataError(f"no image of the evaluation split can be read ({len(skipped)} unreadable)")
    return correct / seen, seen, skipped


# --------------------------------------------------------------------------- the run

def load_settings(overrides: list[str] | None = None, **settings) -> FinetuneConfig:
    """Defaults, then keyword settings (the command line's flags), then ``key=value`` overrides; validated."""
    ft = FinetuneConfig()
    for key, value in settings.items():
        if value is not None:
            apply_field_overrides(ft, [f"{key}={json.dumps(value)}"], "finetune")
    return apply_field_overrides(ft, overrides or [], "finetune").validate()


def finetune(checkpoint: str | Path, out: str | Path, data: str = "fashion_mnist", ft: FinetuneConfig | None = None,
             data_root: str | None = None) -> dict:
    """Fine-tune the encoder of ``checkpoint`` (any format ``load_encoder`` reads) with a new head on
    ``data`` (``fashion_mnist``, a folder with ``train/`` and ``val/`` [and ``test/``] of class
    folders, or a DatasetDict folder) in the run directory ``out``; resume it when ``out`` holds a
    run of this kind. Returns the result written to ``out/result.json``. The caller's random
    streams (torch, numpy, Python) are left as they were."""
    from ..interop import load_encoder

    ft = (ft or FinetuneConfig()).validate()
    run_dir = Path(out)
    check_run_dir(run_dir, "--out")
    device = resolve_device(ft.device, "finetune device")
    latest = run_dir / "checkpoints" / "latest.pt"
    state = _load_state(latest) if latest.exists() else None
    encoder = load_encoder(checkpoint, ft.which)
    splits = make_splits(data, encoder.in_chans, data_root, ft)  # every refusal before the run folder is made
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            return _finetune(checkpoint, run_dir, data, ft, encoder, splits, device, state)
    finally:
        np.random.set_state(np_state)


def _finetune(checkpoint, run_dir: Path, data: str, ft: FinetuneConfig, encoder, splits: Splits, device, state):
    torch.manual_seed(seed_for(ft.seed, SPLIT))
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
    make_run_dir(run_dir, "--out")
    _setup_logging(run_dir)
    if warmup >= total:  # the LR would only ever rise
        log.warning("warmup_epochs=%g is the whole run of %d epoch(s): warming up over its first tenth instead",
                    ft.warmup_epochs, ft.epochs)
        warmup = total // 10
    source = {"checkpoint": str(checkpoint), "which": ft.which, "random_init": ft.random_init}
    settings = dataclasses.asdict(ft)
    latest = run_dir / "checkpoints" / "latest.pt"
    epoch, position, best, history, elapsed = 0, 0, {"epoch": 0, "val_acc": -1.0}, [], 0.0
    if state is not None:
        epoch, position, best, history, elapsed = _restore(state, model, optimizer, settings, source, data, latest)
        log.info("resuming %s at epoch %d, step %d of the epoch", latest, epoch, position)
    (run_dir / "settings.yaml").write_text(yaml.safe_dump({"source": source, "data": data, **settings}, sort_keys=False))
    precision = resolve_precision(ft.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if splits.unlabelled:
        log.warning("%d training item(s) have no label (-1) and are left out", splits.unlabelled)
    run = (run_dir, settings, source, data)
    if state is None and ft.head_init == "probe" and ft.head == "linear":
        probe = probe_head(model, splits, ft, precision)
        log.info("the head starts as a linear probe of the frozen encoder (LP-FT): validation accuracy %.2f%% "
                 "(lr %g, weight decay %g, %d steps; logits divided by %.3g); it is epoch 0, the one to beat",
                 100 * probe["val_acc"], probe["lr"], probe["wd"], probe["steps"], probe["temperature"])
        best = {"epoch": 0, "val_acc": probe["val_acc"]}  # best.pt is never worse than the probe on validation
        history.append({"epoch": 0, "val_acc": probe["val_acc"], "loss": None, "elapsed_s": 0.0})
        _save(run, "best.pt", model, None, 0, 0, best, history, 0.0)
    log.info("fine-tuning %s (%s encoder%s) on %s: %d labelled training images (of %d), %d validation%s, %d test; "
             "%d classes, %d steps/epoch of %d, %d epochs, lr %.3g, %s on %s, run dir %s", checkpoint, ft.which,
             ", re-initialised" if ft.random_init else "", data, len(splits.fit), len(splits.train), len(splits.val),
             " (held out of the labelled training images)" if splits.held_out else "", len(splits.test),
             len(splits.classes), steps_per_epoch, batch, ft.epochs, lr, precision, device, run_dir)

    transform = PretrainTransform(model.img_size[0], ft.crop_scale, per_channel(model.mean, model.in_chans),
                                  per_channel(model.std, model.in_chans), ft.hflip)
    train_set = Augmented(splits.train, transform, ft.randaug, ft.seed)
    mixup = _mixup(ft, len(splits.classes))
    criterion = nn.CrossEntropyLoss(label_smoothing=ft.label_smoothing)
    csv_log = CSVLog(run_dir / "log.csv", epoch * steps_per_epoch + position, LOG_COLUMNS)
    writer = None
    if ft.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=(epoch * steps_per_epoch + position) or None)
    bar = tqdm(total=total, initial=epoch * steps_per_epoch + position, disable=not ft.progress_bar, unit="step",
               dynamic_ncols=True)
    signals = StopSignals()
    skipped, t0 = set(), time.perf_counter() - elapsed  # elapsed: the time of earlier sessions
    window, warned_val = _Window(), False
    step_lr = lr_at(max(epoch * steps_per_epoch + position - 1, 0), lr, ft.min_lr, warmup, total)
    try:
        while epoch < ft.epochs:
            model.train()
            loader = torch.utils.data.DataLoader(
                train_set, batch_sampler=EpochBatches(splits.fit, batch, steps_per_epoch, epoch, position, ft.seed),
                num_workers=ft.num_workers, collate_fn=collate_readable)
            for b, (images, labels, unreadable) in enumerate(loader, start=position):
                step = epoch * steps_per_epoch + b
                if unreadable:
                    skipped.update(unreadable)
                    warn_skipped(f"fine-tuning, epoch {epoch + 1}", unreadable)
                step_lr = lr_at(step, lr, ft.min_lr, warmup, total)
                for group in optimizer.param_groups:
                    group["lr"] = step_lr * group["lr_scale"]
                if images is not None and (mixup is None or len(images) >= 2):
                    loss, correct = _step(model, optimizer, images, labels, device, autocast, criterion, mixup, ft,
                                          epoch, b)
                    window.add(loss, correct, len(labels), correct is not None)
                bar.update(1)
                done = step + 1
                last = b + 1 == steps_per_epoch
                if done % ft.log_every == 0 and not last:  # an epoch's last step: the epoch's row below
                    _log(csv_log, writer, window.read(done, done / steps_per_epoch, step_lr, len(skipped),
                                                      time.perf_counter() - t0))
                if signals.received is not None and not last:  # on the last step: after the epoch's checkpoint
                    _save(run, "latest.pt", model, optimizer, epoch, b + 1, best, history, time.perf_counter() - t0)
                    signals.stop(latest, f"epoch {epoch}, step {b + 1} of the epoch")
            if not window.batches and position == 0:
                raise DataError(f"epoch {epoch + 1} had no readable training image ({len(skipped)} unreadable)")
            position = 0
            epoch += 1
            row = window.read(epoch * steps_per_epoch, epoch, step_lr, len(skipped), time.perf_counter() - t0)
            val_acc = None
            if epoch % ft.eval_every == 0 or epoch == ft.epochs:
                val_acc, _, val_skipped = accuracy_on(model, splits.val, device, autocast, ft.eval_batch_size,
                                                      ft.num_workers)
                if not warned_val:
                    warn_skipped("fine-tuning, validation split", val_skipped)
                    warned_val = True
                row["val_acc"] = round(val_acc, 5)
                row["elapsed_s"] = round(time.perf_counter() - t0, 2)
            _log(csv_log, writer, row)
            history.append({"epoch": epoch, "val_acc": val_acc, "loss": row["loss"], "elapsed_s": row["elapsed_s"]})
            improved = val_acc is not None and val_acc > best["val_acc"]
            if improved:
                best = {"epoch": epoch, "val_acc": val_acc}
                _save(run, "best.pt", model, None, epoch, 0, best, history, row["elapsed_s"])
            _save(run, "latest.pt", model, optimizer, epoch, 0, best, history, row["elapsed_s"])
            shown = f", validation accuracy {100 * val_acc:.2f}%" if val_acc is not None else ""
            log.info("epoch %d: loss %.4f%s%s", epoch, row["loss"] or float("nan"), shown,
                     " (best so far: best.pt)" if improved else
                     f" (best: epoch {best['epoch']})" if best["epoch"] or history[0]["epoch"] == 0 else "")
            bar.set_postfix(loss=f"{row['loss'] or float('nan'):.4f}", best=f"{100 * best['val_acc']:.1f}")
            if signals.received is not None:
                signals.stop(latest, f"the end of epoch {epoch}")
    finally:
        signals.restore()
        bar.close()
        if writer is not None:
            writer.close()
    return _result(run_dir, model, splits, device, autocast, ft, settings, source, data, best, history, batch,
                   steps_per_epoch, sorted(skipped))


def _step(model, optimizer, images, labels, device, autocast, criterion, mixup, ft, epoch, b):
    """One optimiser step; (the loss on the device, correct predictions or None under mixup)."""
    torch.manual_seed(seed_for(ft.seed, DROP, epoch, b))  # drop path: a pure function of the step
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    targets = labels
    if mixup is not None:
        if len(images) % 2:
            images, labels = images[:-1], labels[:-1]
        np.random.seed(seed_for(ft.seed, MIX, epoch, b) % 2**32)  # timm's Mixup draws from numpy's stream
        images, targets = mixup(images, labels)
    with autocast:
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


class _Window:
    """Sums between log rows on the device: one host read-back per row."""

    def __init__(self):
        self.loss = self.correct = None
        self.batches = self.images = 0
        self.scored = True
        self.start = time.perf_counter()

    def add(self, loss, correct, n: int, scored: bool) -> None:
        self.loss = loss if self.loss is None else self.loss + loss
        if scored:
            self.correct = correct if self.correct is None else self.correct + correct
        self.scored &= scored
        self.batches += 1
        self.images += n

    def read(self, step, epoch, lr, skipped, elapsed) -> dict:
        loss = float(self.loss) / self.batches if self.batches else None
        if loss is not None and not math.isfinite(loss):
            raise TrainingError(f"non-finite loss before step {step}; stopping (lower blr, or keep clip_grad on). "
                                f"checkpoints/latest.pt holds the last finished epoch")
        row = {"step": step, "epoch": round(epoch, 4), "loss": loss and round(loss, 5),
               "train_acc": round(float(self.correct) / self.images, 5) if self.scored and self.images else "",
               "val_acc": "", "lr": lr, "skipped_images": skipped,
               "img_per_s": round(self.images / max(time.perf_counter() - self.start, 1e-9), 1),
               "elapsed_s": round(elapsed, 2)}
        self.__init__()
        return row


def _log(csv_log, writer, row: dict) -> None:
    csv_log.append(row)
    if writer is not None:
        for key in ("loss", "train_acc", "val_acc", "lr", "img_per_s"):
            if row[key] not in ("", None):
                writer.add_scalar(f"finetune/{key}", row[key], row["step"])


def _save(run: tuple, name: str, model: Classifier, optimizer, epoch: int, position: int, best: dict,
          history: list, elapsed: float) -> None:
    run_dir, settings, source, data = run
    state = {"format": FORMAT, "version": 1, "classifier": model.config(), "model": model.state_dict(),
             "epoch": epoch, "position": position, "best": best, "history": history, "settings": settings,
             "source": source, "data": data, "elapsed_s": elapsed}
    if optimizer is not None:
        state["opt"] = optimizer.state_dict()
    atomic_save(state, run_dir / "checkpoints" / name)


def _load_state(path: Path) -> dict:
    state = load_checkpoint(path)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fine-tuning checkpoint: --out is the run directory of another "
                              f"kind of run; give a new folder")
    return state


def _restore(state: dict, model: Classifier, optimizer, settings: dict, source: dict, data: str, path: Path):
    changed = [k for k in settings if k not in ("num_workers", "progress_bar", "tensorboard", "log_every",
                                                "eval_batch_size", "device", "eval_every")
               and state["settings"].get(k, settings[k]) != settings[k]]
    if state.get("source") != source or state.get("data") != data:
        changed.append("the checkpoint or data")
    if changed:
        log.warning("resuming with changed settings (%s): the run is no longer one uninterrupted run", ", ".join(changed))
    try:
        model.load_state_dict(state["model"])
        groups = [(g["lr_scale"], g["weight_decay"]) for g in optimizer.param_groups]
        optimizer.load_state_dict(state["opt"])
        for group, (scale, decay) in zip(optimizer.param_groups, groups):  # this run's settings, not the saved ones
            group["lr_scale"], group["weight_decay"] = scale, decay
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} does not match this fine-tuning run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]}); give a new --out") from None
    return (int(state["epoch"]), int(state["position"]), dict(state["best"]), list(state["history"]),
            float(state.get("elapsed_s", 0.0)))


def _result(run_dir, model, splits, device, autocast, ft, settings, source, data, best, history, batch,
            steps_per_epoch, skipped_train: list[str]) -> dict:
    """Test accuracy of the last epoch's weights and of best.pt's, and everything about the run."""
    from ..evaluate import hardware

    last_acc, _, _ = accuracy_on(model, splits.test, device, autocast, ft.eval_batch_size, ft.num_workers)
    best_path = run_dir / "checkpoints" / "best.pt"
    if best_path.exists():
        model.load_state_dict(load_checkpoint(best_path)["model"])
    else:  # removed by hand: the last weights are all there is to report
        log.warning("%s is missing: reporting the last epoch's weights as the result", best_path)
        best = {"epoch": None, "val_acc": None}
    test_acc, test_n, test_skipped = accuracy_on(model, splits.test, device, autocast, ft.eval_batch_size,
                                                 ft.num_workers)
    warn_skipped("fine-tuning, test split", test_skipped)
    train_s = history[-1]["elapsed_s"] if history else 0.0
    record = {"test_acc": round(test_acc, 5), "test_acc_last": round(last_acc, 5), "best_epoch": best["epoch"],
              "val_acc": best["val_acc"], "history": history, "classes": splits.classes,
              "sizes": {"train_labelled": len(splits.fit), "train_split": len(splits.train), "val": len(splits.val),
                        "test_scored": test_n, "val_held_out_of_train": splits.held_out,
                        "train_unlabelled_left_out": splits.unlabelled},
              "skipped": {"train": skipped_train[:100], "train_count": len(skipped_train), "test": test_skipped[:100],
                          "test_count": len(test_skipped)},
              "steps_per_epoch": steps_per_epoch, "batch": batch, "source": source, "data": data,
              "settings": settings, "train_minutes": round(train_s / 60, 2),
              "hardware": hardware(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    tmp = run_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(run_dir / "result.json")
    log.info("test accuracy %.2f%% (best.pt, epoch %s of %d; the last epoch's weights: %.2f%%); %s",
             100 * test_acc, best["epoch"], ft.epochs, 100 * last_acc, run_dir / "result.json")
    return record


__all__ = ["FinetuneConfig", "finetune", "load_settings", "param_groups", "lr_at", "accuracy_on", "make_splits",
           "Augmented", "EpochBatches"]
