import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from openjepa.checkpoint import load_checkpoint
from openjepa.train import train

from conftest import tiny_config

SRC = str(Path(__file__).parents[1] / "src")


def losses(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_two_process_ddp_matches_one_process_at_the_same_global_batch_and_resumes_on_one(tmp_path):
    two = tiny_config(tmp_path / "two", data={"batch_size": 8}, logging={"log_every": 1})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "openjepa.cli", "train", str(tmp_path / "two.yaml"), "--max-steps", "4"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "16 images (8 per process x 2 processes" in (tmp_path / "two/train.log").read_text()

    one = tiny_config(tmp_path / "one", data={"batch_size": 16}, logging={"log_every": 1})
    train(one)  # 8 steps, one process, global batch 16
    reference = losses(tmp_path / "one")
    for step, loss in losses(tmp_path / "two").items():
        assert abs(loss - reference[step]) < 1e-4 * reference[step], (step, loss, reference[step])

    # the checkpoint written by 2 processes resumes in 1 at the same global batch
    resumed = tiny_config(tmp_path / "two", data={"batch_size": 16}, logging={"log_every": 1})
    train(resumed)
    a = load_checkpoint(tmp_path / "one/checkpoints/latest.pt")
    b = load_checkpoint(tmp_path / "two/checkpoints/latest.pt")
    assert a["step"] == b["step"] == 8
    for name, value in a["target_encoder"].items():
        torch.testing.assert_close(b["target_encoder"][name], value, atol=1e-4, rtol=1e-3)
    for step, loss in losses(tmp_path / "two").items():
        assert abs(loss - reference[step]) < 1e-3 * reference[step], (step, loss, reference[step])
