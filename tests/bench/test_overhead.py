"""The host's share of the step (issue 41): the counters see what they claim to, the training step
body reads nothing back from the device, and `openjepa bench --overhead` reports both."""

import json

import pytest
import torch

from openjepa.bench.counting import StepCount
from openjepa.bench.step import SyntheticStep
from openjepa.cli import main
from openjepa.config import load_config

TINY = [
    "data.dataset=synthetic",
    "data.batch_size=4",
    "data.crop_size=16",
    "mask.patch_size=4",
    "mask.min_keep=2",
    "meta.model_name=vit_tiny",
    "meta.pred_depth=2",
    "meta.device=cpu",
]


@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.sum().item(),
        lambda t: bool(t.sum() > 0),
        lambda t: float(t.max()),
        lambda t: t.tolist(),
        lambda t: t.nonzero(),
        lambda t: t[t > 0],
        lambda t: t.masked_select(t > 0),
        lambda t: torch.unique(t),
        lambda t: t.repeat_interleave(torch.tensor([1, 2, 1])),
        lambda t: t.cpu(),
    ],
)
def test_each_kind_of_device_read_is_counted_as_a_sync(read):
    t = torch.tensor([1.0, -2.0, 3.0])
    with StepCount() as count:
        read(t)
    assert sum(count.syncs.values()) >= 1, count.syncs


def test_arithmetic_and_views_are_not_syncs_and_views_launch_nothing():
    t = torch.randn(4, 6, requires_grad=True)
    with StepCount() as count:
        y = (t @ t.T).relu().view(-1)[:5].sum()
        y.backward()
        t.repeat_interleave(2, dim=0)  # repeats given as a number: the size is known without a read
    assert not count.syncs
    d = count.dispatch
    assert d.kernels["mm"] >= 3  # forward, and both gradients
    assert "view" in d.ops and "view" not in d.kernels
    assert sum(d.kernels.values()) < sum(d.ops.values())


def test_a_host_counter_of_the_optimiser_is_not_a_sync():
    step = torch.tensor(3.0)
    with StepCount(host=(step,)) as count:
        step.item()
    assert not count.syncs
    assert not count.dispatch.kernels  # nor a kernel: the value never leaves the host


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["meta.variance_weight=1.0", "meta.covariance_weight=0.04"],  # the CPU recipe's terms
        ["meta.sigreg_weight=0.05", "meta.sigreg_slices=8"],
        ["meta.target=pixels"],
        ["meta.cpu_bfloat16=true"],
        ["optimization.fused_adamw=false"],
    ],
    ids=["plain", "variance-covariance", "sigreg", "pixels", "bf16", "foreach-adamw"],
)
def test_the_training_step_body_reads_nothing_back_from_the_device(overrides):
    """Between log rows the step never waits for the device: no value read back and no output whose
    size depends on the data, in the forward, the backward, clipping, AdamW or the EMA."""
    cfg = load_config(None, [*TINY, "optimization.clip_grad=1.0", *overrides])
    step = SyntheticStep(cfg, batch=4, pool=2)
    step()  # the optimiser's state is made in the first step
    with StepCount(step.host_tensors()) as count:
        step()
        step()
    assert not count.syncs, f"host syncs in the step body: {dict(count.syncs)}"
    assert count.summary(2)["kernels_per_step"] > 50


def test_a_read_back_slipped_into_the_step_is_caught(monkeypatch):
    import openjepa.bench.step as overhead  # where the synthetic step looks its functions up

    cfg = load_config(None, TINY)
    step = SyntheticStep(cfg, batch=2, pool=1)
    step()
    original = overhead.record

    def record_and_print(window, results, masked):
        original(window, results, masked)
        float(results[0][0])  # what a per-step loss print would do

    monkeypatch.setattr(overhead, "record", record_and_print)
    with StepCount(step.host_tensors()) as count:
        step()
    assert sum(count.syncs.values()) == 1


def test_overhead_prints_times_counts_and_no_syncs_as_json(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("meta: {seed: 0}\n")
    args = ["bench", str(config), *TINY, "--overhead", "--steps", "2", "--windows", "1", "--warmup", "1"]
    assert main([*args, "--batches", "1,2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["mode"] == "overhead" and result["shapes"]["width"] == 12  # 4 per head, ViT-Tiny's 3 heads
    assert result["shapes"]["pred_depth"] == 2 and result["shapes"]["tokens"] == 16
    assert set(result["step_ms"]) == {"1", "2"} and all(v > 0 for v in result["step_ms"].values())
    assert result["syncs_per_step"] == 0
    assert 0 < result["kernels_per_step"] < result["ops_per_step"]
    assert result["masks_ms_per_batch"] > 0 and result["batch_for_masks"] == 4
    assert "host syncs per step" in out[-2]


def test_the_overhead_step_is_the_training_loops_own():
    import openjepa.bench.step as overhead  # the synthetic step's module
    import openjepa.pretrain.step as step

    for name in ("set_hyperparameters", "accumulate", "record", "optimizer_step"):
        assert getattr(overhead, name) is getattr(step, name), name
