"""Reuse: load encoders from any checkpoint format we know, export them for other tools.

Formats read: our training and fine-tuning checkpoints, the reference repository's ``.pth.tar``
files, Hugging Face ``IJepaModel`` / ``IJepaForImageClassification`` folders, and our timm and
safetensors exports. A fine-tuning checkpoint (``best.pt``) is a classifier: ``load_classifier``
gives it whole, ``load_encoder`` its fine-tuned encoder, and ``export_encoder`` writes it with its
head (``IJepaForImageClassification`` with the class names; timm with ``num_classes``). Nothing is
unpickled beyond tensors and plain containers (``torch.load(weights_only=True)`` or safetensors).

Which encoder: a checkpoint holds the context encoder (``encoder``) and its EMA, the target
encoder. The paper evaluates the target encoder, so ``which="target"`` is the default; the
Hugging Face and timm converters of Meta's weights take the context encoder instead.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import FINETUNE_FORMAT, PRETRAIN_FORMAT, CheckpointError, load_checkpoint
from ..config import IMAGENET_MEAN, IMAGENET_STD, Config, from_dict
from ..data import normalize, resize_center_crop, to_channels
from ..errors import check_writable_folder, set_default_mode
from ..ijepa import IJEPA, build_ijepa
from ..models.heads import Classifier
from ..models.predictor import Predictor
from ..models.vit import VisionTransformer, build_encoder
from .hf import classifier_head_hf, load_hf, read_hf_state, save_hf
from .official import build_encoder_from_state, build_predictor_from_state, is_reference, strip_prefix
from .timm import load_timm, save_timm

ENTRY = {"target": "target_encoder", "context": "encoder"}
FORMAT_NAMES = {"finetune": "fine-tuned classifier", "hf": "Hugging Face export", "timm": "timm export",
                "safetensors": "safetensors export"}  # fmt: skip
FORMATS = ("hf", "timm", "safetensors")


def _read(path: Path) -> tuple[str, object]:
    """(format, contents): 'openjepa' / 'reference' (a dict of states), or 'hf' / 'safetensors' (a folder)."""
    if path.is_dir():
        if (path / "encoder.json").exists():
            return "safetensors", path
        if (path / "timm.json").exists():
            return "timm", path
        if (path / "config.json").exists():
            return "hf", path
        raise CheckpointError(
            f"{path} is neither a Hugging Face folder (config.json) nor an openjepa "
            f"safetensors or timm export (encoder.json, timm.json)"
        )
    obj = load_checkpoint(path)
    if obj.get("format") == PRETRAIN_FORMAT:
        return "openjepa", obj
    if obj.get("format") == FINETUNE_FORMAT:
        return "finetune", obj
    obj = {
        k: strip_prefix(v) if k in ("encoder", "target_encoder", "predictor") and isinstance(v, dict) else v
        for k, v in obj.items()
    }
    if is_reference(obj):
        return "reference", obj
    raise CheckpointError(
        f"{path} is not a checkpoint openjepa knows (ours, the reference's .pth.tar, "
        f"a Hugging Face IJepaModel folder, or an openjepa safetensors export)"
    )


def _state(obj: dict, key: str, path: Path) -> dict:
    if key not in obj or obj[key] is None:
        raise CheckpointError(f"{path} holds no {key!r} entry")
    return obj[key]


def load_encoder(path: str | Path, which: str = "target") -> VisionTransformer:
    """An encoder in eval mode: ``encoder(images)`` -> patch features [B, N, D] after the final
    norm, ``encoder.pooled(images)`` -> [B, D], ``encoder.intermediates(images, layers)``.
    ``which`` is 'target' (the EMA encoder, the paper's choice) or 'context'; a fine-tuning
    checkpoint or an exported folder holds one encoder and ignores it. ``encoder.mean`` /
    ``encoder.std`` are the normalisation it was trained with (see ``preprocess``)."""
    if which not in ENTRY:
        raise ValueError(f"which must be 'target' or 'context', got {which!r}")
    path = Path(path)
    return _encoder_of(*_read(path), path, which)


def encoder_of_checkpoint(state: dict, path: str | Path, which: str = "target") -> VisionTransformer:
    """``load_encoder`` on a training checkpoint already read with ``load_checkpoint`` (``path``
    names it in errors): one read of the file for a caller that needs its config too."""
    if which not in ENTRY:
        raise ValueError(f"which must be 'target' or 'context', got {which!r}")
    if state.get("format") != PRETRAIN_FORMAT:
        raise CheckpointError(f"{path} is not an openjepa training checkpoint")
    return _encoder_of("openjepa", state, Path(path), which)


def _encoder_of(fmt: str, obj, path: Path, which: str) -> VisionTransformer:
    """load_encoder on what ``_read(path)`` returned."""
    if which == "context" and fmt not in ("openjepa", "reference"):
        raise CheckpointError(
            f"{path} holds one encoder (a {FORMAT_NAMES.get(fmt, fmt)}): --which context names the context encoder "
            f"of a pretraining checkpoint; leave it at target"
        )
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        if fmt == "openjepa":
            cfg = from_dict(obj["config"])
            encoder = build_encoder(cfg.meta.model_name, cfg.data.crop_size, cfg.mask.patch_size, cfg.data.in_chans)
            encoder.load_state_dict(_state(obj, ENTRY[which], path))
            mean, std = cfg.data.mean, cfg.data.std
        elif fmt == "reference":
            encoder = build_encoder_from_state(_state(obj, ENTRY[which], path))
        elif fmt == "finetune":
            encoder = _classifier_from(obj, path).encoder
            mean, std = encoder.mean, encoder.std
        elif fmt == "hf":
            encoder = load_hf(path)
            info = json.loads((path / "config.json").read_text()).get("openjepa", {})
            mean, std = info.get("mean", mean), info.get("std", std)
        elif fmt == "timm":
            encoder, info = load_timm(path)
            mean, std = info.get("mean", mean), info.get("std", std)
        else:
            from safetensors.torch import load_file

            info = json.loads((path / "encoder.json").read_text())
            encoder = VisionTransformer(**info["encoder"])
            encoder.load_state_dict(load_file(str(path / "encoder.safetensors")))
            mean, std = info.get("mean", mean), info.get("std", std)
    except (KeyError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path}: cannot build an encoder ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    encoder.mean, encoder.std = list(mean), list(std)
    return encoder.eval()


def _eager(cfg: Config) -> Config:
    """The config to rebuild a trained model for use: ``meta.compile`` said how training ran, and
    compiling on a user's first call (a minute on a CPU) is not what loading should do."""
    cfg = copy.deepcopy(cfg)
    cfg.meta.compile = False
    return cfg


def _refuse_other_objective(obj: dict, path: Path) -> None:
    """A training checkpoint of another objective (``meta.objective: dino``) has encoders but no predictor."""
    objective = (obj.get("config") or {}).get("meta", {}).get("objective", "ijepa")
    if objective != "ijepa":
        raise CheckpointError(
            f"{path} is a meta.objective: {objective} checkpoint: it has no predictor (load_encoder reads its encoders)"
        )


def load_predictor(path: str | Path) -> Predictor:
    """The predictor of our checkpoints or the reference's, e.g. to continue pretraining."""
    path = Path(path)
    fmt, obj = _read(path)
    if fmt not in ("openjepa", "reference"):
        raise CheckpointError(f"{path} is an exported encoder; only training checkpoints hold a predictor")
    if fmt == "openjepa":
        _refuse_other_objective(obj, path)
    try:
        if fmt == "openjepa":
            with torch.device("meta"):
                predictor = build_ijepa(_eager(from_dict(obj["config"]))).predictor
            predictor = predictor.to_empty(device="cpu")
            predictor.load_state_dict(_state(obj, "predictor", path))
            return predictor.eval()
        return build_predictor_from_state(_state(obj, "predictor", path), _state(obj, "encoder", path)).eval()
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot build the predictor ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None


def load_ijepa(path: str | Path) -> tuple[IJEPA, Config]:
    """The whole model of one of our training checkpoints (context and target encoders,
    predictor) in eval mode, with its config: for pictures of what it learned, or to inspect it."""
    path = Path(path)
    fmt, obj = _read(path)
    if fmt != "openjepa":
        raise CheckpointError(f"{path} is not an openjepa training checkpoint; only those hold the whole model")
    _refuse_other_objective(obj, path)
    try:
        cfg = from_dict(obj["config"])
        model = build_ijepa(_eager(cfg))
        for key in ("encoder", "predictor", "target_encoder"):
            getattr(model, key).load_state_dict(_state(obj, key, path))
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot build the model ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    return model.eval(), cfg


def export_encoder(path: str | Path, fmt: str, out: str | Path, which: str = "target") -> Path:
    """Write the encoder of ``path`` to the new folder ``out`` as 'hf' (a folder for
    ``transformers.IJepaModel.from_pretrained``), 'timm' (a state dict and the ``timm.create_model``
    arguments) or 'safetensors' (the encoder and a JSON with everything needed to rebuild it)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"export folder {out} is a file: give a new folder")
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"export folder {out} already exists and is not empty; choose a new one")
    check_writable_folder(out, "export folder")
    if which not in ENTRY:
        raise ValueError(f"which must be 'target' or 'context', got {which!r}")
    path = Path(path)
    kind, obj = _read(path)  # once: a checkpoint can be large
    classifier = _classifier_of(kind, obj, path) if kind == "finetune" else None
    if classifier is not None and classifier.head_type != "linear" and fmt != "safetensors":
        raise CheckpointError(
            f"{path} has an attentive-pooling head, which {fmt} has no model for; export it as "
            f"safetensors (openjepa.load_classifier reads it back), or fine-tune with head=linear"
        )
    if classifier is not None and which == "context":
        _encoder_of(kind, obj, path, which)  # refused: a classifier holds one encoder
    encoder = classifier.encoder if classifier is not None else _encoder_of(kind, obj, path, which)
    info = {
        "source": str(path),
        "which": which if classifier is None else "finetuned",
        "mean": encoder.mean,
        "std": encoder.std,
    }
    if classifier is not None:
        info["classes"] = classifier.classes
    if fmt == "hf":
        save_hf(encoder, out, {"openjepa": info}, classifier_head_hf(classifier) if classifier is not None else None)
    elif fmt == "timm":
        save_timm(encoder, out, {"openjepa": info}, classifier.head if classifier is not None else None)
    else:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(out / "encoder.safetensors"))
        if classifier is not None:
            save_file(
                {k: v.contiguous() for k, v in classifier.head.state_dict().items()}, str(out / "head.safetensors")
            )
            info["head"] = classifier.head_type
        (out / "encoder.json").write_text(json.dumps({"encoder": encoder.config(), **info}, indent=2) + "\n")
    set_default_mode(*(p for p in out.iterdir() if p.is_file()))  # safetensors writes 0600: others could not read
    return out


def _classifier_from(obj: dict, path: Path):
    classifier = Classifier.from_config(obj["classifier"])
    classifier.load_state_dict(obj["model"])
    return classifier


def load_classifier(path: str | Path):
    """A fine-tuned classifier (``models.heads.Classifier``, eval mode): ``model(images)`` -> logits,
    ``model.classes`` their names, ``model.mean`` / ``model.std`` its normalisation (``preprocess(images,
    model.encoder)`` prepares a batch). Reads ``openjepa finetune``'s checkpoints (``best.pt``,
    ``latest.pt``) and their exports (Hugging Face ``IJepaForImageClassification``, timm with a head,
    safetensors)."""
    path = Path(path)
    return _classifier_of(*_read(path), path)


def _classifier_of(fmt: str, obj, path: Path):
    """load_classifier on what ``_read(path)`` returned."""
    try:
        if fmt == "finetune":
            return _classifier_from(obj, path).eval()
        if fmt in ("openjepa", "reference"):
            raise CheckpointError(
                f"{path} is a pretraining checkpoint: it has no classifier head; fine-tune it "
                f"first (openjepa finetune {path} ...)"
            )
        encoder = load_encoder(path)
        if fmt == "hf":
            config = json.loads((path / "config.json").read_text())
            if "IJepaForImageClassification" not in config.get("architectures", []):
                raise CheckpointError(f"{path} is an encoder (IJepaModel) without a classifier head")
            labels = config["id2label"]
            classifier = Classifier(encoder, [labels[str(i)] for i in range(len(labels))])
            state = read_hf_state(path)
            classifier.head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
        else:
            info = json.loads((path / ("timm.json" if fmt == "timm" else "encoder.json")).read_text())
            classes = info.get("openjepa", info).get("classes")
            if not classes:
                raise CheckpointError(f"{path} is an encoder export without a classifier head")
            from safetensors.torch import load_file

            head = info.get("head", "linear")
            classifier = Classifier(encoder, classes, head)
            if fmt == "timm":
                state = load_file(str(path / "model.safetensors"))
                classifier.head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
            else:
                classifier.head.load_state_dict(load_file(str(path / "head.safetensors")))
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"{path}: cannot build the classifier ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    classifier.mean, classifier.std = encoder.mean, encoder.std
    return classifier.eval()


def init_states(path: str | Path) -> tuple[str, dict]:
    """What ``meta.init_from`` starts a run from: (format, {"encoder", "target_encoder", "predictor":
    state dict or None}) in our parameter names. A training checkpoint (ours, the reference's) gives
    all three; a fine-tuned or exported encoder gives that one encoder as both encoders and no
    predictor."""
    path = Path(path)
    fmt, obj = _read(path)
    if fmt in ("openjepa", "reference"):
        states = {key: obj.get(key) for key in ("encoder", "target_encoder", "predictor")}
        if states["encoder"] is None:
            raise CheckpointError(f"{path} holds no 'encoder' entry")
        if states["target_encoder"] is None:
            states["target_encoder"] = states["encoder"]
        return fmt, states
    encoder = load_encoder(path).state_dict()
    return fmt, {"encoder": encoder, "target_encoder": encoder, "predictor": None}


def preprocess(images, encoder: VisionTransformer, size: int | None = None) -> torch.Tensor:
    """PIL images, uint8 arrays [H, W(, C)] or float tensors [C, H, W] in [0, 1] -> a normalised
    batch [B, C, S, S] for ``encoder``: shorter side resized to S (the encoder's training size by
    default), centre crop, the checkpoint's mean and std."""
    size = size or encoder.img_size[0]
    batch = []
    for img in images if isinstance(images, (list, tuple)) else [images]:
        if not isinstance(img, torch.Tensor):
            arr = np.asarray(img, dtype=np.float32) / 255.0
            img = torch.from_numpy(arr).unsqueeze(0) if arr.ndim == 2 else torch.from_numpy(arr).permute(2, 0, 1)
        img = to_channels(img[:3] if img.size(0) == 4 else img, encoder.in_chans).unsqueeze(0)
        batch.append(resize_center_crop(img, (size, size))[0])
    return normalize(torch.stack(batch), encoder.mean, encoder.std)


__all__ = [
    "load_encoder",
    "encoder_of_checkpoint",
    "load_predictor",
    "load_ijepa",
    "load_classifier",
    "export_encoder",
    "init_states",
    "preprocess",
    "FORMATS",
]
