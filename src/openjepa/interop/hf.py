"""Hugging Face ``IJepaModel`` folders (config.json + model.safetensors): our encoder's weights
under its names, q/k/v split from our fused qkv."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint
from ..models.vit import LAYER_NORM_EPS, VisionTransformer

# ours -> Hugging Face, per block (qkv is split separately)
BLOCK_NAMES = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
TOP_NAMES = {
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}


def hf_config(encoder: VisionTransformer) -> dict:
    if encoder.img_size[0] != encoder.img_size[1]:
        raise ValueError(f"Hugging Face IJepaModel takes square images; this encoder's are {encoder.img_size}")
    return {
        "architectures": ["IJepaModel"],
        "model_type": "ijepa",
        "hidden_size": encoder.embed_dim,
        "num_hidden_layers": len(encoder.blocks),
        "num_attention_heads": encoder.num_heads,
        "intermediate_size": encoder.blocks[0].mlp.fc1.out_features,
        "image_size": encoder.img_size[0],
        "patch_size": encoder.patch_size,
        "num_channels": encoder.in_chans,
        "layer_norm_eps": LAYER_NORM_EPS,
        "qkv_bias": encoder.blocks[0].attn.qkv.bias is not None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
    }


def to_hf(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key in TOP_NAMES:
            out[TOP_NAMES[key]] = value
            continue
        _, i, rest = key.split(".", 2)
        layer = f"encoder.layer.{i}"
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{layer}.attention.attention.{name}.{kind}"] = part
        else:
            module, kind = rest.rsplit(".", 1)
            out[f"{layer}.{BLOCK_NAMES[module]}.{kind}"] = value
    return {k: v.contiguous().clone() for k, v in out.items()}


def from_hf(state: dict) -> dict:
    state = {k.removeprefix("ijepa."): v for k, v in state.items() if not k.startswith(("pooler.", "classifier."))}
    top = {v: k for k, v in TOP_NAMES.items()}
    block = {v: k for k, v in BLOCK_NAMES.items()}
    out, qkv = {}, {}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        _, _, i, rest = key.split(".", 3)
        if rest.startswith("attention.attention."):
            _, _, name, kind = rest.split(".")
            qkv.setdefault((i, kind), {})[name] = value
        else:
            module, kind = rest.rsplit(".", 1)
            out[f"blocks.{i}.{block[module]}.{kind}"] = value
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def classifier_head_hf(classifier) -> dict:
    """The parts of an ``IJepaForImageClassification`` beside the encoder: its class names and the
    linear head (applied to the mean of the patch features, as ours)."""
    return {"classes": classifier.classes, "weight": classifier.head.weight, "bias": classifier.head.bias}


def save_hf(encoder: VisionTransformer, out: Path, extra: dict | None = None, head: dict | None = None) -> Path:
    """An ``IJepaModel`` folder, or with ``head`` (``classifier_head_hf``) an
    ``IJepaForImageClassification`` one: the encoder under ``ijepa.``, ``classifier.*``, and
    ``id2label`` / ``label2id`` from the class names."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = {**hf_config(encoder), **(extra or {})}
    state = to_hf(encoder.state_dict())
    if head is not None:
        config["architectures"] = ["IJepaForImageClassification"]
        config["id2label"] = {str(i): name for i, name in enumerate(head["classes"])}
        config["label2id"] = {name: i for i, name in enumerate(head["classes"])}
        state = {
            **{f"ijepa.{k}": v for k, v in state.items()},
            "classifier.weight": head["weight"].detach().contiguous().clone(),
            "classifier.bias": head["bias"].detach().contiguous().clone(),
        }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def read_hf_state(folder: Path) -> dict:
    """The tensors of a Hugging Face folder (safetensors, or a weights-only ``pytorch_model.bin``)."""
    weights = folder / "model.safetensors"
    if weights.exists():
        from safetensors.torch import load_file

        return load_file(str(weights))
    if (folder / "pytorch_model.bin").exists():
        return load_checkpoint(folder / "pytorch_model.bin")  # weights only, refusals named as everywhere
    raise ValueError(f"{folder} has no model.safetensors or pytorch_model.bin")


def load_hf(folder: Path) -> VisionTransformer:
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "ijepa":
        raise ValueError(f"{folder}/config.json is model_type {config.get('model_type')!r}, not 'ijepa'")
    state = read_hf_state(folder)
    encoder = VisionTransformer(
        config["image_size"],
        config["patch_size"],
        config.get("num_channels", 3),
        config["hidden_size"],
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["intermediate_size"] / config["hidden_size"],
        config.get("qkv_bias", True),
    )
    encoder.load_state_dict(from_hf(state))
    return encoder
