import numpy as np
import pytest
import torch
from PIL import Image

from openjepa.config import Config, validate


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """Folder indexes and other caches of the tests stay out of the user's ~/.cache."""
    import os

    os.environ["OPENJEPA_CACHE"] = str(tmp_path_factory.mktemp("openjepa-cache"))
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf-datasets-cache"))


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
    cfg.meta.cpu_bfloat16 = False  # the same arithmetic on every CPU (auto would follow the machine)
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


def labelled_folder(root, n_per_class=12, size=16, channels=1, vary=False):
    """train/ and val/ of two classes a probe can tell apart: bright top half vs bright bottom half.
    ``vary``: widths differ from image to image (size .. size + 4), as in a real folder."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(("top", "bottom")):
            (root / split / name).mkdir(parents=True)
            for i in range(n_per_class):
                img = rng.integers(0, 60, (size, size + (2 * (i % 3) if vary else 0)), dtype=np.uint8)
                img[(0 if c == 0 else size // 2) : (size // 2 if c == 0 else size)] += 150
                Image.fromarray(np.stack([img] * 3, -1) if channels == 3 else img).save(
                    root / split / name / f"{i}.png"
                )
    return root


def signal_a_training_run(tmp_path, signum):
    """Train ``tmp_path/run`` in a subprocess (one loader worker) until log.csv has two rows, then
    send ``signum``; returns (exit code, stderr, the config)."""
    import subprocess
    import sys
    import time

    import yaml

    cfg = tiny_config(
        tmp_path / "run",
        optimization={"epochs": 200},
        logging={"log_every": 1, "progress_bar": False},
        data={"num_workers": 1},
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "openjepa.cli", "train", str(tmp_path / "c.yaml")], stderr=subprocess.PIPE, text=True
    )
    log_csv = tmp_path / "run/log.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not log_csv.exists() or len(log_csv.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, cfg
