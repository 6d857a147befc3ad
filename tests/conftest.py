import pytest
import torch

from openjepa.config import Config, validate


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def tiny_config(folder, **sections) -> Config:
    """A config that trains in seconds: a 2-block ViT of width 32 on 16x16 synthetic images."""
    cfg = Config()
    cfg.data.dataset = "synthetic"
    cfg.data.synthetic_size = 64
    cfg.data.batch_size = 16
    cfg.data.crop_size = 16
    cfg.data.num_workers = 0
    cfg.mask.patch_size = 4
    cfg.mask.min_keep = 2
    cfg.meta.model_name = "vit_tiny"
    cfg.meta.pred_depth = 1
    cfg.meta.pred_emb_dim = 48
    cfg.optimization.epochs = 2
    cfg.optimization.warmup = 0.5
    cfg.logging.folder = str(folder)
    cfg.logging.log_every = 2
    cfg.logging.progress_bar = False
    cfg.logging.tensorboard = False
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return validate(cfg)
