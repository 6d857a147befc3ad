"""timm ``VisionTransformer`` state dicts. Our key names are timm's; with ``class_token=False,
global_pool="avg", fc_norm=False`` timm applies the final ``norm`` to every token before the
average (as our ``pooled``), so features agree. (timm's registered ``vit_*_gap_*`` models default
to ``fc_norm``, a norm after pooling: different features for the same weights.)"""

from __future__ import annotations

import json
from pathlib import Path

from ..models.vit import VisionTransformer


def timm_kwargs(encoder: VisionTransformer, num_classes: int = 0) -> dict:
    return {
        **encoder.config(),
        "qkv_bias": True,
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,
        "num_classes": num_classes,
    }


TIMM_ONLY = ("qkv_bias", "class_token", "global_pool", "fc_norm", "num_classes")


def load_timm(folder: Path) -> tuple[VisionTransformer, dict]:
    """Our encoder from a folder ``save_timm`` wrote (``timm.json`` + ``model.safetensors``), and the
    ``openjepa`` entry of its JSON (normalisation, source)."""
    from safetensors.torch import load_file

    info = json.loads((folder / "timm.json").read_text())
    encoder = VisionTransformer(**{k: v for k, v in info["kwargs"].items() if k not in TIMM_ONLY})
    state = load_file(str(folder / "model.safetensors"))
    encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    return encoder, info.get("openjepa", {})


def save_timm(encoder: VisionTransformer, out: Path, extra: dict | None = None, head=None) -> Path:
    """The encoder's state under timm's names; with ``head`` (a linear classifier on the pooled
    features) also ``head.weight`` / ``head.bias`` and ``num_classes`` in the kwargs."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().clone() for k, v in encoder.state_dict().items()}
    if head is not None:
        state.update({f"head.{k}": v.detach().contiguous().clone() for k, v in head.state_dict().items()})
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    kwargs = timm_kwargs(encoder, head.out_features if head is not None else 0)
    info = {
        "architecture": "vit_base_patch16_224",
        "kwargs": kwargs,
        **(extra or {}),
        "usage": "timm.create_model(architecture, pretrained=False, **kwargs).load_state_dict("
        "safetensors.torch.load_file('model.safetensors'))",
    }
    (out / "timm.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
