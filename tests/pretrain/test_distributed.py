import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from conftest import tiny_config
from openjepa.checkpoint import load_checkpoint
from openjepa.pretrain import train

SRC = str(Path(__file__).parents[2] / "src")


def losses(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def assert_same_final_target(run_a, run_b, step):
    a, b = (load_checkpoint(run / "checkpoints/latest.pt") for run in (run_a, run_b))
    assert a["step"] == b["step"] == step
    for name, value in a["target_encoder"].items():
        torch.testing.assert_close(b["target_encoder"][name], value, atol=1e-4, rtol=1e-3)


def test_two_process_ddp_matches_one_process_at_the_same_global_batch_and_resumes_on_one(tmp_path):
    """Masks packed in groups of 4 images: 2 per process, 4 in the one process's batch of 16."""
    two = tiny_config(tmp_path / "two", data={"batch_size": 8}, logging={"log_every": 1}, mask={"pack_group": 4})
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "openjepa.cli",
            "train",
            str(tmp_path / "two.yaml"),
            "--max-steps",
            "4",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "16 images (8 per process x 2 processes" in (tmp_path / "two/train.log").read_text()

    one = tiny_config(tmp_path / "one", data={"batch_size": 16}, logging={"log_every": 1}, mask={"pack_group": 4})
    train(one)  # 8 steps, one process, global batch 16 (4 mask groups of 4 images)
    reference = losses(tmp_path / "one")
    for step, loss in losses(tmp_path / "two").items():
        assert abs(loss - reference[step]) < 1e-4 * reference[step], (step, loss, reference[step])

    # the checkpoint written by 2 processes resumes in 1 at the same global batch
    resumed = tiny_config(tmp_path / "two", data={"batch_size": 16}, logging={"log_every": 1}, mask={"pack_group": 4})
    train(resumed)
    assert_same_final_target(tmp_path / "one", tmp_path / "two", step=8)
    for step, loss in losses(tmp_path / "two").items():
        assert abs(loss - reference[step]) < 1e-3 * reference[step], (step, loss, reference[step])


def test_two_process_fsdp_matches_one_process_and_its_checkpoint_resumes_unsharded(tmp_path):
    """FSDP (fully_shard over gloo on the CPU): the same losses as one process at the same global
    batch, the EMA target (sharded like the encoder) ends equal to one process's, and the checkpoint
    has the unsharded layout, so one process resumes it. The targets average the last 2 blocks
    (meta.target_layers): the sharded target encoder's weights must be gathered for that too."""
    two = tiny_config(
        tmp_path / "two",
        data={"batch_size": 8},
        logging={"log_every": 1},
        meta={"fsdp": True, "target_layers": 2},
        optimization={"ema": [0.5, 1.0]},  # a target that moves: the EMA is checked
        mask={"pack_group": 4},
    )  # two mask groups per process: the sharded encoder runs twice

    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for stop in (2, 4):  # the second run resumes under FSDP: the full checkpoint is sharded on load
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "openjepa.cli",
                "train",
                str(tmp_path / "two.yaml"),
                "--max-steps",
                str(stop),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "two/train.log").read_text()
    assert "resuming" in log
    local, total = map(int, re.search(r"this process holds (\d+) of the (\d+) parameter", log).groups())
    assert total / 2 <= local < total / 2 + 1000  # half of every tensor, rounded up per tensor

    one = tiny_config(
        tmp_path / "one",
        data={"batch_size": 16},
        logging={"log_every": 1},
        meta={"target_layers": 2},
        optimization={"ema": [0.5, 1.0]},
        mask={"pack_group": 4},
    )
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

    train(
        tiny_config(
            tmp_path / "two",
            data={"batch_size": 16},
            logging={"log_every": 1},
            meta={"target_layers": 2},
            optimization={"ema": [0.5, 1.0]},
            mask={"pack_group": 4},
        )
    )  # resume, unsharded
    train(one)
    assert_same_final_target(tmp_path / "one", tmp_path / "two", step=8)


def torchrun(args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_gradient_accumulation_synchronises_once_per_optimiser_step():
    """DDP (counted by a communication hook) and FSDP (its gradient reductions counted): a step of 3
    micro-batches communicates the gradients as often as a step of 1, and the processes still end
    with the same gradients."""
    import json

    worker = str(Path(__file__).parents[1] / "sync_worker.py")
    for mode in ("ddp", "fsdp"):
        counts = {}
        for accum in (1, 3):
            done = torchrun([worker, mode, str(accum)])
            assert done.returncode == 0, done.stderr[-2000:]
            result = json.loads(done.stdout.strip().splitlines()[-1])
            assert result["grads_equal"], (mode, accum)
            counts[accum] = result["calls"]
        assert counts[1] > 0 and counts[3] == counts[1], (mode, counts)


def test_a_process_whose_whole_micro_batch_is_unreadable_does_not_hang_the_others(tmp_path):
    """Rank 1's share of micro-batch 1 is all broken files: every process skips that micro-batch
    together (before, rank 1 skipped it alone and rank 0 waited in the all-reduce until killed)."""
    import numpy as np
    from PIL import Image

    from openjepa.data import ORDER, ImageFolder, generator_for

    data = tmp_path / "images"
    data.mkdir()
    for i in range(16):
        Image.fromarray(np.full((16, 16), 10 * i, dtype=np.uint8)).save(data / f"{i:02d}.png")
    files = ImageFolder(data).files
    order = torch.randperm(16, generator=generator_for(0, ORDER, 0))  # epoch 0's order (meta.seed 0)
    batch, per_process, world, rank = 1, 2, 2, 1
    first = (batch * world + rank) * per_process
    for i in order[first : first + per_process]:
        files[int(i)].write_bytes(b"not a png")
    cfg = tiny_config(
        tmp_path / "run", data={"dataset": "folder", "root_path": str(data), "batch_size": 2}, logging={"log_every": 1}
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    done = torchrun(["-m", "openjepa.cli", "train", str(tmp_path / "c.yaml"), "--max-steps", "3"], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "run/train.log").read_text()
    assert "micro-batch 1 skipped on every process" in log
    assert load_checkpoint(tmp_path / "run/checkpoints/latest.pt")["step"] == 3


def test_init_distributed_follows_meta_device(monkeypatch):
    """meta.device=cpu under torchrun joins with gloo and claims no GPU, even where CUDA is visible;
    on CUDA each process takes its LOCAL_RANK's GPU and NCCL."""
    import torch.distributed as dist

    from openjepa import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_backend", lambda: calls[-1][1])
    monkeypatch.setattr(dist, "new_group", lambda backend: "host")
    world = distributed.init_distributed("cpu")
    assert calls == [("init", "gloo")] and world.rank == 1 and world.size == 2
    calls.clear()
    for device in ("auto", "cuda"):
        distributed.init_distributed(device)
    assert calls == [("set_device", 1), ("init", "nccl")] * 2
