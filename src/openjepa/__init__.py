"""openjepa: I-JEPA pretraining, evaluation and reuse on PyTorch.

The public API is loaded lazily (PEP 562): ``import openjepa`` is cheap, and importing one part
(``openjepa.data``, say) never imports training, fine-tuning, evaluation or the pictures.
"""

from importlib import import_module

from .version import __version__

_API = {
    "Config": "config",
    "ConfigError": "config",
    "load_config": "config",
    "IJEPA": "ijepa",
    "build_ijepa": "ijepa",
    "build_mask_sampler": "masks",
    "Predictor": "models.predictor",
    "VIT_SIZES": "models.vit",
    "VisionTransformer": "models.vit",
    "build_encoder": "models.vit",
    "Classifier": "models.heads",
    "train": "pretrain",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "embed": "evaluate.embed",
    "load_encoder": "interop",
    "load_ijepa": "interop",
    "load_predictor": "interop",
    "export_encoder": "interop",
    "preprocess": "interop",
    "load_classifier": "interop",
    "write_report": "viz",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'openjepa' has no attribute {name!r}")
    module = import_module(f".{_API[name]}", __name__)
    # evaluate and finetune are packages whose call runs their function: the name keeps the package,
    # so `import openjepa.evaluate.linear` and `openjepa.evaluate(...)` both work
    value = module if name in ("evaluate", "finetune") else getattr(module, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
