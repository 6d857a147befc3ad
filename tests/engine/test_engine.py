"""The loop skeleton both training tasks run on: hooks and save points, the stop path, the window
of device-side sums, the checkpointer, the schedules and the parameter-group rule."""

import logging
import math
import signal

import pytest
import torch

from openjepa.distributed import World
from openjepa.engine import (
    Checkpointer,
    Hook,
    Preempted,
    TrainingError,
    Window,
    decay_groups,
    linear,
    run_steps,
    warmup_cosine,
    warn_changed,
)

CPU = torch.device("cpu")


def test_hooks_run_in_order_after_each_step_and_save_points_are_the_loops():
    seen = []
    hooks = [
        Hook(lambda t: seen.append(("log", t.step)), lambda t: t.step % 2 == 0),
        Hook(lambda t: seen.append(("epoch", t.step, t.epoch)), lambda t: t.epoch_end),
        Hook(lambda t: seen.append(("save", t.step)), lambda t: t.save),
    ]
    run_steps(lambda step: seen.append(("step", step)), 1, 8, 3, hooks, World(), CPU, latest=None, save_every=5)
    steps = [e[1] for e in seen if e[0] == "step"]
    assert steps == list(range(1, 8))  # steps start..stop-1; a tick counts the steps done
    assert [e[1] for e in seen if e[0] == "save"] == [3, 5, 6, 8]  # epoch ends 3, 6; every 5; the last, 8
    assert [e[1:] for e in seen if e[0] == "epoch"] == [(3, 1), (6, 2)]
    i = seen.index(("step", 5))  # after step index 5 (tick 6): log, epoch end, then save, in the hooks' order
    assert seen[i + 1 : i + 4] == [("log", 6), ("epoch", 6, 2), ("save", 6)]


def test_a_stop_signal_saves_at_that_step_then_raises_and_the_closers_run(tmp_path):
    seen, closed = [], []

    def step_fn(step):
        seen.append(step)
        if step == 2:
            signal.raise_signal(signal.SIGUSR1)  # arrives mid-step: acted on after this step's hooks

    hooks = [Hook(lambda t: seen.append(("save", t.step, t.stopping)), lambda t: t.save)]
    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(Preempted, match=r"SIGUSR1 received: .* saved at step 3"):
        run_steps(step_fn, 0, 100, 50, hooks, World(), CPU, tmp_path / "latest.pt", closers=(lambda: closed.append(1),))
    assert seen == [0, 1, 2, ("save", 3, True)]  # no step after the signal's
    assert closed == [1] and signal.getsignal(signal.SIGUSR1) == previous  # handlers given back


def test_closers_run_when_a_step_fails():
    closed = []

    def failing(step):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_steps(failing, 0, 3, 3, [], World(), CPU, latest=None, closers=(lambda: closed.append(1),))
    assert closed == [1]


def test_a_hook_for_the_main_process_skips_the_others_unless_sharded():
    other = World(rank=1, size=2)
    assert not Hook(print, bool).runs_here(other, sharded=True)
    assert Hook(print, bool, "all").runs_here(other, sharded=False)
    assert not Hook(print, bool, "shards").runs_here(other, sharded=False)
    assert Hook(print, bool, "shards").runs_here(other, sharded=True)


def test_the_window_reads_once_per_row_and_its_finiteness_check_sticks():
    window = Window(CPU)
    window.add(torch.tensor(1.0), 4, correct=torch.tensor(3), tokens=5.0)
    window.add(torch.tensor(3.0), 4, tokens=7.0)
    row = window.read()
    assert row["loss"] == 2.0 and row["images"] == 8 and row["batches"] == 2  # the loss per batch, images summed
    assert row["correct"] == 3.0 and row["counts"] == {"correct": 1, "tokens": 2} and row["tokens"] == 12.0
    assert row["img_per_s"] > 0
    assert window.read()["loss"] is None  # reset: no batch since
    window.add(torch.tensor(float("nan")), 1)
    window.read()
    window.add(torch.tensor(1.0), 1)  # a finite loss later does not clear it
    with pytest.raises(TrainingError, match="stop here"):
        window.check_finite("stop here")


def test_the_checkpointer_keeps_the_newest_periodic_files_and_names_one_when_latest_is_corrupt(tmp_path):
    ckpt = Checkpointer(tmp_path, keep_last=2)
    assert ckpt.load_latest() is None
    for epoch in range(1, 5):
        ckpt.save({"epoch": epoch})
        ckpt.save_periodic({"epoch": epoch}, epoch)
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0004.pt"]
    assert ckpt.load_latest() == {"epoch": 4}
    ckpt.latest.write_bytes(ckpt.latest.read_bytes()[:50])  # truncated, as a crash mid-copy leaves it
    with pytest.raises(ValueError, match="epoch_0004.pt: copy it over latest.pt"):
        ckpt.load_latest()


def test_one_warmup_cosine_rule():
    values = [warmup_cosine(t, 0.1, 1.0, 0.01, 10, 110) for t in range(0, 121)]
    assert values[0] == 0.1 and values[5] == pytest.approx(0.55) and values[10] == 1.0
    assert values[60] == pytest.approx(0.01 + 0.99 * 0.5) and values[110] == pytest.approx(0.01)
    assert values[120] == values[110]  # held at the end value past the end
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # the cosine only falls
    assert warmup_cosine(0, 0.04, 0.04, 0.4, 0, 100) == pytest.approx(0.04)  # no warmup: a plain cosine from its start
    assert linear(50, 0.996, 1.0, 100) == pytest.approx(0.998) and linear(150, 0.996, 1.0, 100) == 1.0
    assert math.isclose(warmup_cosine(25, 1.0, 1.0, 0.1, 0, 100), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_one_parameter_group_rule():
    net = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 4), "b": torch.nn.LayerNorm(4), "head": torch.nn.Linear(4, 2)})
    net.register_parameter("query", torch.nn.Parameter(torch.zeros(1, 1, 4)))
    decay, plain = decay_groups(net.named_parameters())  # the reference's two groups, decayed first
    names = {id(p): n for n, p in net.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["query", "a.weight", "head.weight"]
    assert plain["weight_decay"] == 0.0 and "weight_decay" not in decay  # the optimiser's default decays
    groups = decay_groups(
        net.named_parameters(), 0.05, lambda n: 0 if n.startswith("a.") else 1, 1, 0.5, no_decay=("query",)
    )
    scales = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert scales["a.weight"] == (0.5, 0.05) and scales["a.bias"] == (0.5, 0.0) and scales["query"] == (1.0, 0.0)
    assert scales["head.weight"] == (1.0, 0.05)
    assert [(g["lr_scale"], g["decay"]) for g in groups] == [(0.5, False), (0.5, True), (1.0, False), (1.0, True)]


def test_changed_settings_are_named_but_not_those_that_only_change_how(caplog):
    caplog.set_level(logging.WARNING, "openjepa")
    logging.getLogger("openjepa").propagate = True
    saved = {"data.batch_size": 8, "data.num_workers": 2, "logging.folder": "a", "meta.seed": 0}
    now = {"data.batch_size": 16, "data.num_workers": 4, "logging.folder": "b", "meta.seed": 0, "meta.new": 1}
    assert warn_changed(saved, now, {"data.num_workers", "logging"}) == ["data.batch_size"]
    assert "resuming with changed settings (data.batch_size)" in caplog.text
