"""openjepa: I-JEPA pretraining, evaluation and reuse on PyTorch."""
from .config import Config, ConfigError, load_config
from .evaluate import evaluate
from .ijepa import IJEPA, build_ijepa
from .interop import export_encoder, load_classifier, load_encoder, load_ijepa, load_predictor, preprocess
from .downstream import Classifier, embed, finetune
from .masks import build_mask_sampler
from .models.predictor import Predictor
from .models.vit import VIT_SIZES, VisionTransformer, build_encoder
from .train import train
from .viz import write_report

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "IJEPA", "build_ijepa", "build_mask_sampler", "Predictor",
           "VIT_SIZES", "VisionTransformer", "build_encoder", "train", "load_encoder", "load_ijepa", "load_predictor",
           "export_encoder", "preprocess", "evaluate", "write_report", "load_classifier", "Classifier", "finetune",
           "embed", "__version__"]
