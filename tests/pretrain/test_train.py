import csv
import math

import pytest
import torch

from conftest import signal_a_training_run, tiny_config
from openjepa.checkpoint import CheckpointError, load_checkpoint
from openjepa.config import OptimizationConfig, load_config
from openjepa.engine import Schedules
from openjepa.ijepa import build_ijepa
from openjepa.pretrain import param_groups, train


def read_log(run_dir):
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_schedules_at_chosen_steps():
    o = OptimizationConfig(
        epochs=10,
        warmup=2,
        start_lr=2e-4,
        lr=1e-3,
        final_lr=1e-6,
        weight_decay=0.04,
        final_weight_decay=0.4,
        ema=[0.996, 1.0],
    )
    s = Schedules.from_config(o, steps_per_epoch=100)  # 1000 steps, 200 of warmup
    assert s.lr_at(0) == pytest.approx(2e-4 + (1 / 200) * 8e-4)  # the reference steps its counter first
    assert s.lr_at(99) == pytest.approx(2e-4 + 0.5 * 8e-4)
    assert s.lr_at(199) == pytest.approx(1e-3)  # warmup done
    assert s.lr_at(599) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # half-way through the cosine
    assert s.lr_at(999) == pytest.approx(1e-6)
    assert (
        s.wd_at(-1) == pytest.approx(0.04)
        and s.wd_at(499) == pytest.approx(0.22)
        and s.wd_at(999) == pytest.approx(0.4)
    )
    assert s.momentum_at(0) == 0.996 and s.momentum_at(500) == pytest.approx(0.998) and s.momentum_at(1000) == 1.0
    o.ipe_scale = 1.25  # the schedules stretch past the run: final values are never reached
    s = Schedules.from_config(o, steps_per_epoch=100)
    assert s.momentum_at(999) == pytest.approx(0.996 + 999 * 0.004 / 1250)
    assert s.lr_at(999) > 1e-5


def test_no_weight_decay_on_biases_and_norms(tmp_path):
    model = build_ijepa(tiny_config(tmp_path))
    decay, no_decay = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])  # biases and LayerNorm weights
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"bias", "weight"}
    assert any(names[id(p)] == "predictor.mask_token" for p in decay["params"])  # [1, 1, D], as the reference
    assert all(not p.requires_grad for p in model.target_encoder.parameters())


def test_thirty_steps_on_synthetic_images_lower_the_loss(tmp_path):
    cfg = tiny_config(tmp_path, data={"synthetic_size": 240, "batch_size": 16}, optimization={"epochs": 2, "lr": 2e-3})
    train(cfg)
    rows = read_log(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(2, 31, 2))
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:2]) / 2
    assert float(rows[-1]["momentum"]) > float(rows[0]["momentum"])
    assert (tmp_path / "config.yaml").exists() and load_config(tmp_path / "config.yaml").data.batch_size == 16


def test_resume_after_interruption_continues_exactly(tmp_path):
    straight = tiny_config(tmp_path / "straight")
    train(straight)
    interrupted = tiny_config(tmp_path / "interrupted")
    train(interrupted, max_steps=3)  # stops mid-epoch (4 steps per epoch) with a checkpoint
    assert load_checkpoint(tmp_path / "interrupted/checkpoints/latest.pt")["step"] == 3
    train(interrupted)
    a = load_checkpoint(tmp_path / "straight/checkpoints/latest.pt")
    b = load_checkpoint(tmp_path / "interrupted/checkpoints/latest.pt")
    assert a["step"] == b["step"] == 8
    for key in ("encoder", "predictor", "target_encoder"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    rows = read_log(tmp_path / "interrupted")
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 6, 8]  # header once, no repeated steps
    straight_rows = {r["step"]: r for r in read_log(tmp_path / "straight")}
    for r in rows:  # the collapse probe's readings carried by the log rows are those of the straight run
        if r["step"] in straight_rows:
            assert (r["image_rankme"], r["image_spread"]) == (
                straight_rows[r["step"]]["image_rankme"],
                straight_rows[r["step"]]["image_spread"],
            )
    assert "resuming" in (tmp_path / "interrupted/train.log").read_text()
    assert (tmp_path / "interrupted/checkpoints/epoch_0002.pt").exists()


def test_unreadable_checkpoint_is_an_error_not_a_restart(tmp_path):
    cfg = tiny_config(tmp_path)
    train(cfg, max_steps=2)
    latest = tmp_path / "checkpoints/latest.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="latest.pt cannot be read"):
        train(cfg)
    assert latest.read_bytes() == data[: len(data) // 2]  # left as found for the user to inspect
    assert [int(r["step"]) for r in read_log(tmp_path)] == [2]


def test_checkpoint_of_another_model_is_refused(tmp_path):
    train(tiny_config(tmp_path), max_steps=1)
    with pytest.raises(CheckpointError, match="does not match this config"):
        train(tiny_config(tmp_path, meta={"pred_emb_dim": 96}))


def test_gradient_accumulation_and_clipping_run(tmp_path):
    cfg = tiny_config(tmp_path, optimization={"accum_steps": 2, "clip_grad": 1.0})
    train(cfg)
    assert load_checkpoint(tmp_path / "checkpoints/latest.pt")["step"] == 4  # 64 images / (16 x 2) x 2 epochs


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from openjepa.engine import TrainingError
    from openjepa.ijepa import IJEPA

    calls = {"n": 0}
    real_loss = IJEPA.forward_loss

    def poisoned(self, prediction, target):
        calls["n"] += 1
        loss = real_loss(self, prediction, target)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(IJEPA, "forward_loss", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss before step 6"):
        train(tiny_config(tmp_path, logging={"log_every": 2, "progress_bar": False, "tensorboard": False}))
    state = load_checkpoint(tmp_path / "checkpoints/latest.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["encoder"].values())
    assert [int(r["step"]) for r in read_log(tmp_path)] == [2, 4]


def test_target_std_measures_spread_and_the_watch_flags_collapse_once():
    from openjepa.pretrain import CollapseWatch, target_std

    spread = torch.randn(4, 2, 8, 16)
    collapsed = torch.randn(1, 1, 1, 16).expand(4, 2, 8, 16) + 1e-3 * torch.randn(4, 2, 8, 16)
    assert 0.8 < target_std(spread) < 1.2 and target_std(collapsed) < 0.01
    watch = CollapseWatch(ratio=0.3)
    flags = [watch.update(s) for s in (0.34, 0.30, 0.25, 0.11, 0.09, 0.05, 0.01)]
    assert flags == [False, False, False, False, True, False, False]


def test_sigterm_saves_a_complete_checkpoint_and_exits_75_then_resumes_exactly(tmp_path):
    """With a loader worker, which ignores SIGTERM: the run still exits (it used to save, then hang
    at exit waiting for the worker)."""
    import signal

    code, err, cfg = signal_a_training_run(tmp_path, signal.SIGTERM)
    assert code == 75, err
    assert "SIGTERM received" in err.splitlines()[-1]
    stopped = load_checkpoint(tmp_path / "run/checkpoints/latest.pt")
    step = stopped["step"]
    assert 2 <= step < 800
    train(cfg, max_steps=step + 2)
    straight = tiny_config(tmp_path / "straight", optimization={"epochs": 200})
    train(straight, max_steps=step + 2)
    a = load_checkpoint(tmp_path / "run/checkpoints/latest.pt")
    b = load_checkpoint(tmp_path / "straight/checkpoints/latest.pt")
    assert all(torch.equal(v, b["encoder"][k]) for k, v in a["encoder"].items())


def test_truncated_latest_names_the_newest_periodic_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, logging={"checkpoint_every": 1, "progress_bar": False, "tensorboard": False})
    train(cfg, max_steps=6)
    latest = tmp_path / "checkpoints/latest.pt"
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="newest periodic checkpoint is .*epoch_0001.pt"):
        train(cfg)


def test_kill_9_at_a_random_moment_then_resume_is_bitwise_identical(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    import yaml

    settings = {
        "optimization": {"epochs": 6},
        "logging": {"checkpoint_every_steps": 1, "progress_bar": False, "tensorboard": False},
    }
    cfg = tiny_config(tmp_path / "run", **settings)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "openjepa.cli", "train", str(tmp_path / "c.yaml")], stderr=subprocess.DEVNULL
    )
    latest = tmp_path / "run/checkpoints/latest.pt"
    deadline = time.time() + 60
    while time.time() < deadline and not latest.exists():
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # somewhere in the middle of a step or of a save
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = load_checkpoint(latest)["step"]  # complete: the atomic save never leaves half a file
    assert killed_at < 24 or proc.returncode == 0
    train(cfg)
    train(tiny_config(tmp_path / "straight", **settings))
    a = load_checkpoint(latest)
    b = load_checkpoint(tmp_path / "straight/checkpoints/latest.pt")
    assert a["step"] == b["step"] == 24
    for key in ("encoder", "predictor", "target_encoder"):
        assert all(torch.equal(v, b[key][k]) for k, v in a[key].items()), key


def test_keep_last_keeps_the_newest_periodic_checkpoints(tmp_path):
    train(
        tiny_config(
            tmp_path,
            optimization={"epochs": 4},
            logging={"checkpoint_every": 1, "keep_last": 2, "progress_bar": False, "tensorboard": False},
        )
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0004.pt"]


def test_skip_nonfinite_steps_skips_up_to_the_limit(tmp_path, monkeypatch):
    from openjepa.engine import TrainingError
    from openjepa.ijepa import IJEPA

    real_loss, calls = IJEPA.forward_loss, {"n": 0}

    def poisoned(self, prediction, target):
        calls["n"] += 1
        loss = real_loss(self, prediction, target)
        return loss * float("nan") if calls["n"] in (3, 6) else loss

    monkeypatch.setattr(IJEPA, "forward_loss", poisoned)
    train(tiny_config(tmp_path / "a", optimization={"skip_nonfinite_steps": 2}))
    state = load_checkpoint(tmp_path / "a/checkpoints/latest.pt")
    assert state["step"] == 8 and all(torch.isfinite(v).all() for v in state["encoder"].values())
    assert all(math.isfinite(float(r["loss"])) for r in read_log(tmp_path / "a"))
    assert (tmp_path / "a/train.log").read_text().count("step skipped") == 2
    calls["n"] = 0
    with pytest.raises(TrainingError, match="more than optimization.skip_nonfinite_steps=1"):
        train(tiny_config(tmp_path / "b", optimization={"skip_nonfinite_steps": 1}))


def test_collapse_probe_reads_the_random_encoder_at_step_0_then_every_n_steps(tmp_path):
    train(tiny_config(tmp_path, logging={"collapse_every": 4, "collapse_images": 32, "log_every": 2}))
    log = (tmp_path / "train.log").read_text()
    assert "collapse probe at step 0" in log and "the random initial encoder" in log
    assert "collapse probe at step 4" in log and "collapse probe at step 8" in log
    assert "collapse probe at step 2" not in log
    rows = read_log(tmp_path)
    readings = [(r["image_rankme"], r["image_spread"]) for r in rows]
    # rows at steps 2, 4, 6, 8 carry the readings of the probes at steps 0, 4, 4, 8
    assert readings[0] != ("", "") and readings[0] != readings[1] == readings[2] != readings[3]
    assert [r["probe_step"] for r in rows] == ["0", "4", "4", "8"]
    assert all(float(rank) > 0 and 0 < float(spread) <= 1 for rank, spread in readings)
    off = tiny_config(tmp_path / "off", logging={"collapse_every": 0})
    train(off)
    assert all(r["image_rankme"] == "" for r in read_log(tmp_path / "off"))


def test_image_dependence_sees_features_that_ignore_the_image():
    from openjepa.evaluate.monitor import image_dependence

    g = torch.Generator().manual_seed(0)
    mean = 10 * torch.randn(64, generator=g)
    rich = torch.randn(500, 64, generator=g)
    three = torch.randn(500, 3, generator=g) @ torch.randn(3, 64, generator=g)
    assert image_dependence(rich)["image_rankme"] > 50 and image_dependence(rich)["image_spread"] > 0.95
    assert 2.0 < image_dependence(mean + three)["image_rankme"] <= 3.0  # three directions of variation
    assert image_dependence(mean + 1e-3 * rich)["image_spread"] < 1e-3  # position-like: the same vector for all
    assert image_dependence(mean.expand(500, 64)) == {"image_rankme": 0.0, "image_spread": 0.0}


def test_collapse_probe_warns_once_below_its_floors_but_not_at_step_0(tmp_path, caplog):
    import logging

    from openjepa.data import ArrayDataset
    from openjepa.pretrain import CollapseProbe

    class Constant(torch.nn.Module):  # an encoder whose output ignores the image
        img_size, patch_size = (16, 16), 4

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8))

        def forward(self, x):
            return self.weight.expand(len(x), 16, 8) + 0 * x.mean()

    images = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    probe = CollapseProbe(
        tiny_config(tmp_path, logging={"collapse_images": 32}), ArrayDataset(images, torch.zeros(40, dtype=torch.long))
    )
    caplog.set_level(logging.INFO, logger="openjepa")
    for step in (0, 10, 20):
        assert probe.check(Constant(), step) == {"image_rankme": 0.0, "image_spread": 0.0, "probe_step": step}
    assert caplog.text.count("the features are collapsing") == 1 and "at step 10" in caplog.text
    warning = next(r.getMessage() for r in caplog.records if "collapsing" in r.getMessage())
    assert (
        "image_rankme 0.0 is under the floor of 4" in warning and "image_spread" not in warning
    )  # only the floor crossed
    assert "turn on meta.variance_weight" in warning  # the advice fits a run without a regulariser
    assert CollapseProbe.reasons({"image_rankme": 9.0, "image_spread": 0.02}, {"image_spread": 0.05}) == [
        "image_spread 0.020 is under 0.5 x the random encoder's 0.050 at step 0: the features depend on the image "
        "less than a random network's do"
    ]
    regularised = CollapseProbe(
        tiny_config(tmp_path, meta={"variance_weight": 1.0}), ArrayDataset(images, torch.zeros(40, dtype=torch.long))
    )
    assert "raise the regularisers' weights" in regularised.advice and "turn on" not in regularised.advice
    first = {"image_rankme": 10.0, "image_spread": 0.05}  # the spread floor is half the step-0 reading
    assert CollapseProbe.collapsed({"image_rankme": 9.0, "image_spread": 0.02}, first)
    assert not CollapseProbe.collapsed({"image_rankme": 9.0, "image_spread": 0.03}, first)
    assert CollapseProbe.collapsed({"image_rankme": 3.0, "image_spread": 0.3}, first)


def test_collapse_probe_leaves_out_unreadable_images(tmp_path, caplog):
    import logging

    from openjepa.data import ArrayDataset, UnreadableImage
    from openjepa.pretrain import CollapseProbe

    class SomeBroken(ArrayDataset):
        def __getitem__(self, i):
            if i % 4 == 0:
                raise UnreadableImage(f"img{i}.png", "truncated")
            return super().__getitem__(i)

    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = tiny_config(tmp_path, logging={"collapse_images": 64})
    probe = CollapseProbe(cfg, SomeBroken(images, torch.zeros(64, dtype=torch.long)))
    caplog.set_level(logging.INFO, logger="openjepa")
    reading = probe.check(build_ijepa(cfg).target_encoder, 0)
    assert reading["image_rankme"] > 0 and len(probe.images) == 48
    assert "collapse probe: skipped 16 of 64 image(s) that cannot be read: img" in caplog.text


def test_resuming_at_another_global_batch_is_refused_unless_allowed_then_keeps_the_images_seen(tmp_path):
    """A checkpoint written at 8 images per step, resumed at 16: an error naming both numbers and how
    to go on, nothing changed on disk; with optimization.allow_batch_change the step is converted (4
    steps of 8 = 2 steps of 16) and the run continues there, with a warning."""
    from openjepa.config import ConfigError

    train(tiny_config(tmp_path, data={"batch_size": 8}), max_steps=4)
    latest = tmp_path / "checkpoints/latest.pt"
    before = latest.read_bytes()
    assert load_checkpoint(latest)["images_per_step"] == 8
    with pytest.raises(
        ConfigError,
        match=r"global batch of 8 images per optimiser step; this run has 16.*"
        r"allow_batch_change=true",
    ):
        train(tiny_config(tmp_path, data={"batch_size": 8}, optimization={"accum_steps": 2}))
    assert latest.read_bytes() == before
    train(tiny_config(tmp_path, data={"batch_size": 16}, optimization={"allow_batch_change": True}), max_steps=3)
    assert [int(r["step"]) for r in read_log(tmp_path)][-1] == 3
    log = (tmp_path / "train.log").read_text()
    assert "continue as step 2 of 16 images" in log and "resuming" in log


def test_lr_follows_the_global_batch_only_when_asked(tmp_path):
    """optimization.lr_scaling against optimization.reference_batch: linear doubles the LR for twice
    the batch, sqrt multiplies it by 1.414, none keeps it and warns in the log."""
    from openjepa.config import ConfigError

    peak = {}
    for rule in ("none", "linear", "sqrt"):
        run = tmp_path / rule
        train(
            tiny_config(
                run,
                optimization={"reference_batch": 8, "lr_scaling": rule, "warmup": 0.0, "final_lr": 0.0},
                logging={"log_every": 1},
            ),
            max_steps=1,
        )
        peak[rule] = float(read_log(run)[0]["lr"])
    assert peak["linear"] == pytest.approx(2 * peak["none"]) and peak["sqrt"] == pytest.approx(
        math.sqrt(2) * peak["none"]
    )
    assert "the recipe's LR 0.001 was set for 8" in (tmp_path / "none/train.log").read_text()
    with pytest.raises(ConfigError, match="reference_batch, which is not set"):
        tiny_config(tmp_path / "x", optimization={"lr_scaling": "linear"})
    with pytest.raises(ConfigError, match="lr_scaling must be one of"):
        tiny_config(tmp_path / "x", optimization={"lr_scaling": "cubic"})


def test_sigusr2_saves_then_hands_the_signal_to_the_previous_handler(tmp_path):
    """submitit asks SLURM for SIGUSR2 before a time-out and requeues the job from its handler: the
    run finishes its step, saves latest.pt, and only then calls that handler."""
    import os
    import signal

    from openjepa.data import SyntheticDataset
    from openjepa.engine import Preempted

    class SignalsAt(SyntheticDataset):  # sends SIGUSR2 while the loader reads an image of the 3rd batch
        def __getitem__(self, i):
            reads[0] += 1
            if reads[0] == 2 * 16 + 1:
                os.kill(os.getpid(), signal.SIGUSR2)
            return super().__getitem__(i)

    reads, seen = [0], []
    previous = signal.signal(
        signal.SIGUSR2,
        lambda signum, frame: seen.append((signum, load_checkpoint(tmp_path / "checkpoints/latest.pt")["step"])),
    )
    try:
        cfg = tiny_config(tmp_path, logging={"collapse_every": 0})  # only the loader reads images
        with pytest.raises(Preempted, match="SIGUSR2 received"):
            train(cfg, dataset=SignalsAt(64, 16, 3))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [(signal.SIGUSR2, 3)]  # called once, after the checkpoint of the step it arrived in


def test_a_checkpoint_that_cannot_be_opened_is_not_called_corrupt(tmp_path, monkeypatch):
    """An I/O or permission error names itself, and no hint to copy a periodic checkpoint over it
    (that hint is for a truncated file); checkpoints load memory-mapped."""
    cfg = tiny_config(tmp_path, logging={"checkpoint_every": 1})
    train(cfg, max_steps=4)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("mmap")) or real_load(*a, **k))
    assert load_checkpoint(tmp_path / "checkpoints/latest.pt")["step"] == 4 and loads == [True]

    def denied(*args, **kwargs):  # what opening a file without read permission raises (root ignores chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError) as err:
        train(cfg)
    assert "Permission denied" in str(err.value)
    assert "corrupt" not in str(err.value) and "copy it over" not in str(err.value)
