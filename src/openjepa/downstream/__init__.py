"""Downstream use of a pretrained encoder: end-to-end fine-tuning with a classification head
(``finetune``), the classifier it makes (``Classifier``; ``interop.load_classifier`` reads it back)
and pooled embeddings of a folder of images (``embed``)."""
from .classifier import HEADS, Classifier
from .embed import embed
from .finetune import FinetuneConfig, finetune, load_settings

__all__ = ["Classifier", "HEADS", "FinetuneConfig", "finetune", "load_settings", "embed"]
