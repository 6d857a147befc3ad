import csv
import os
import re
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


def assert_same_final_target(run_a, run_b, step):
    a, b = (load_checkpoint(run / "checkpoints/latest.pt") for run in (run_a, run_b))
    assert a["step"] == b["step"] == step
    for name, value in a["target_encoder"].items():
        torch.testing.assert_close(b["target_encoder"][name], value, atol=1e-4, rtol=1e-3)


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
    assert_same_final_target(tmp_path / "one", tmp_path / "two", step=8)
    for step, loss in losses(tmp_path / "two").items():
        assert abs(loss - reference[step]) < 1e-3 * reference[step], (step, loss, reference[step])


def test_two_process_fsdp_matches_one_process_and_its_checkpoint_resumes_unsharded(tmp_path):
    """FSDP (fully_shard over gloo on the CPU): the same losses as one process at the same global
    batch, the EMA target (sharded like the encoder) ends equal to one process's, and the checkpoint
    has the unsharded layout, so one process resumes it."""
    two = tiny_config(tmp_path / "two", data={"batch_size": 8}, logging={"log_every": 1}, meta={"fsdp": True},
                      optimization={"ema": [0.5, 1.0]})  # a target that moves: the EMA is checked
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for stop in (2, 4):  # the second run resumes under FSDP: the full checkpoint is sharded on load
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "openjepa.cli", "train", str(tmp_path / "two.yaml"), "--max-steps", str(stop)],
                              env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "two/train.log").read_text()
    assert "resuming" in log
    local, total = map(int, re.search(r"this process holds (\d+) of the (\d+) parameter", log).groups())
    assert total / 2 <= local < total / 2 + 1000  # half of every tensor, rounded up per tensor

    one = tiny_config(tmp_path / "one", data={"batch_size": 16}, logging={"log_every": 1},
                      optimization={"ema": [0.5, 1.0]})
    train(one, max_steps=4)
    for step, loss in losses(tmp_path / "one").items():
        assert abs(loss - losses(tmp_path / "two")[step]) < 1e-4 * loss, step
    a = load_checkpoint(tmp_path / "one/checkpoints/latest.pt")
    b = load_checkpoint(tmp_path / "two/checkpoints/latest.pt")
    for key in ("encoder", "predictor", "target_encoder"):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            torch.testing.assert_close(b[key][name], value, atol=1e-5, rtol=1e-4, msg=f"{key}.{name}")
    def groups(opt):  # a resumed optimizer may hold betas as a list instead of a tuple: same values
        return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in opt["param_groups"]]

    assert groups(a["opt"]) == groups(b["opt"])
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    for i, s in a["opt"]["state"].items():
        torch.testing.assert_close(b["opt"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"], atol=1e-9, rtol=1e-3)

    train(tiny_config(tmp_path / "two", data={"batch_size": 16}, logging={"log_every": 1},
                      optimization={"ema": [0.5, 1.0]}))  # resume, unsharded
    train(one)
    assert_same_final_target(tmp_path / "one", tmp_path / "two", step=8)
