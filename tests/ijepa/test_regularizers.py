"""The opt-in collapse regularisers: each equals a slow formula written out, stays finite on a
collapsed batch, and gives the same loss and gradient on 1 and 2 processes."""

import cmath
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from openjepa.config import ConfigError, load_config
from openjepa.ijepa import IJEPA, build_ijepa
from openjepa.regularizers import (
    CollapseRegularizer,
    covariance_loss,
    epps_pulley,
    invariance_loss,
    random_directions,
    sigreg,
    variance_loss,
)

SRC = str(Path(__file__).parents[2] / "src")


def batch(n=12, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.7 + 0.3


def test_variance_and_covariance_equal_the_formulas_written_out():
    z = batch()
    n, d = z.shape
    cols = [[float(z[i, j]) for i in range(n)] for j in range(d)]
    means = [sum(c) / n for c in cols]
    var = [sum((x - m) ** 2 for x in c) / (n - 1) for c, m in zip(cols, means)]
    expected_var = sum(max(0.0, 1.0 - math.sqrt(v + 1e-4)) for v in var) / d
    cov = [
        [sum((cols[a][i] - means[a]) * (cols[b][i] - means[b]) for i in range(n)) / (n - 1) for b in range(d)]
        for a in range(d)
    ]
    expected_cov = sum(cov[a][b] ** 2 for a in range(d) for b in range(d) if a != b) / d
    assert variance_loss(z).item() == pytest.approx(expected_var, rel=1e-9)
    assert covariance_loss(z).item() == pytest.approx(expected_cov, rel=1e-9)
    assert variance_loss(z * 10).item() == 0.0  # every dimension already spread beyond gamma


def test_epps_pulley_equals_the_integral_written_out():
    x = batch(n=9, d=3)
    knots, t_max = 17, 3.0
    ts = [t_max * k / (knots - 1) for k in range(knots)]
    for j in range(3):
        values = []
        for t in ts:  # |phi_N(t) - phi(t)|^2 w(t), phi_N with complex exponentials
            ecf = sum(cmath.exp(1j * t * float(v)) for v in x[:, j]) / len(x)
            values.append(abs(ecf - math.exp(-t * t / 2)) ** 2 * math.exp(-t * t / 2))
        h = t_max / (knots - 1)
        half = h * (sum(values) - (values[0] + values[-1]) / 2)  # trapezoid on [0, t_max]
        expected = len(x) * 2 * half
        assert epps_pulley(x)[j].item() == pytest.approx(expected, rel=1e-5)


def test_sigreg_is_small_for_gaussian_embeddings_and_large_for_collapsed_ones():
    gaussian = torch.randn(512, 16, generator=torch.Generator().manual_seed(1))
    collapsed = torch.randn(512, 16, generator=torch.Generator().manual_seed(2)) * 0.01 + 1.0
    low, high = sigreg(gaussian, seed=0, step=0), sigreg(collapsed, seed=0, step=0)
    assert low < 2.0 and high > 50 * low  # a Gaussian sample's expected statistic is about 1.05


def test_directions_are_a_function_of_seed_and_step():
    a = random_directions(8, 4, seed=3, step=10, device="cpu")
    torch.testing.assert_close(a, random_directions(8, 4, seed=3, step=10, device="cpu"), rtol=0, atol=0)
    assert not torch.allclose(a, random_directions(8, 4, seed=3, step=11, device="cpu"))
    torch.testing.assert_close(a.norm(dim=0), torch.ones(4))


def test_invariance_equals_the_formula_written_out_and_leaves_the_target_alone():
    g = torch.Generator().manual_seed(3)
    context = torch.randn(4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    expected = 0.0
    for b in range(4):  # per image: average the context's tokens, squared distance to the pooled target
        pooled = sum(context[b]) / len(context[b])
        expected = expected + ((pooled - target[b]) ** 2).sum().item()
    expected /= 4 * 6
    loss = CollapseRegularizer(invariance_weight=2.5)(context, step=0, target=target)
    assert loss.item() == pytest.approx(2.5 * expected, rel=1e-5)
    loss.backward()
    assert target.grad is None and torch.isfinite(context.grad).all() and context.grad.abs().sum() > 0
    # groups of images with different context lengths: the same as scoring each image on its own
    groups = CollapseRegularizer(invariance_weight=1.0)([context[:1, :3], context[1:]], step=0, target=target)
    one = [
        CollapseRegularizer(invariance_weight=1.0)(c, 0, target=t).item()
        for c, t in ((context[:1, :3], target[:1]), (context[1:], target[1:]))
    ]
    assert groups.item() == pytest.approx((one[0] * 1 + one[1] * 3) / 4)
    with pytest.raises(ValueError, match="pooled output"):
        CollapseRegularizer(invariance_weight=1.0)(context, step=0)


def test_invariance_is_zero_when_the_masked_view_pools_to_the_full_image():
    context = torch.randn(3, 4, 8, requires_grad=True)
    target = context.detach().mean(1)
    loss = CollapseRegularizer(invariance_weight=1.0)(context, step=0, target=target)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-10) and context.grad.abs().max() < 1e-6
    assert invariance_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == 1.0


def test_a_batch_of_one_gives_zero_not_nan():
    z = torch.randn(1, 4, requires_grad=True)
    for term in (variance_loss(z), covariance_loss(z)):
        term.backward()
        assert term.item() == 0.0 and torch.isfinite(z.grad).all()


def test_the_terms_run_in_fp32_under_bf16_autocast():
    z = torch.randn(64, 1, 16, generator=torch.Generator().manual_seed(0))
    t = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    reg = CollapseRegularizer(covariance_weight=1.0, sigreg_weight=1.0, invariance_weight=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = reg(z, step=3, target=t)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, reg(z, step=3, target=t))


@pytest.mark.parametrize("term", ["variance_weight", "covariance_weight", "sigreg_weight"])
def test_each_term_has_a_finite_gradient_on_a_collapsed_batch(term):
    reg = CollapseRegularizer(**{term: 1.0})
    context = torch.ones(8, 3, 6, requires_grad=True)  # every image the same: zero variance
    loss = reg(context, step=0)
    loss.backward()
    assert torch.isfinite(loss) and (loss > 0 if term != "covariance_weight" else loss == 0)  # no covariance either
    assert torch.isfinite(context.grad).all()


def test_regulariser_pushes_a_collapsed_encoder_apart():
    """A few steps on the variance term alone spread images that start almost identical."""
    torch.manual_seed(0)
    images = torch.randn(32, 10)
    layer = torch.nn.Linear(10, 6)
    with torch.no_grad():
        layer.weight.mul_(1e-3)  # every image mapped to nearly the same vector
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    reg = CollapseRegularizer(variance_weight=1.0)
    before = layer(images).std(0).mean().item()
    for _ in range(50):
        opt.zero_grad()
        reg(layer(images).unsqueeze(1), step=0).backward()
        opt.step()
    assert layer(images).std(0).mean().item() > 10 * before


def test_config_keys_are_validated_and_off_by_default(tmp_path):
    cfg = tiny_config(tmp_path)
    assert build_ijepa(cfg).regularizer is None
    on = tiny_config(tmp_path, meta={"variance_weight": 1.0, "sigreg_weight": 0.1})
    assert build_ijepa(on).regularizer is not None
    assert build_ijepa(tiny_config(tmp_path, meta={"invariance_weight": 1.0})).regularizer is not None
    for bad in (
        "meta.variance_weight=-1",
        "meta.sigreg_weight=.inf",
        "meta.sigreg_slices=0",
        "meta.regularizer_final=1.5",
        "meta.regularizer_final=-0.1",
        "meta.invariance_weight=-0.5",
    ):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
    for other in ("meta.target=pixels", "meta.target_layers=2"):
        with pytest.raises(ConfigError, match="meta.invariance_weight.*target_layers: 1"):
            load_config(None, ["meta.invariance_weight=1.0", other])
    model = build_ijepa(cfg)
    for other in ({"target": "pixels"}, {"target_layers": 2}):
        with pytest.raises(ValueError, match="target_layers 1"):
            IJEPA(model.encoder, model.predictor, regularizer=CollapseRegularizer(invariance_weight=1.0), **other)


def test_the_loss_includes_the_regulariser(tmp_path):
    torch.manual_seed(0)
    plain = build_ijepa(tiny_config(tmp_path))
    torch.manual_seed(0)
    reg = build_ijepa(tiny_config(tmp_path, meta={"covariance_weight": 2.0}))
    images = torch.randn(4, 3, 16, 16)
    context_idx = torch.arange(10).repeat(4, 1)
    target_idx = torch.arange(10, 14).reshape(1, 1, 4).repeat(4, 2, 1)
    pooled = reg.encoder(images, context_idx).mean(1)
    expected = plain(images, context_idx, target_idx) + 2.0 * covariance_loss(pooled)
    torch.testing.assert_close(reg(images, context_idx, target_idx), expected)
    # the invariance term: the pooled context against the target encoder's output pooled over the whole
    # image (a final norm that is not the identity, so the layer-normed training targets would differ)
    torch.manual_seed(0)
    inv = build_ijepa(tiny_config(tmp_path, meta={"invariance_weight": 3.0}))
    with torch.no_grad():
        for encoder in (inv.encoder, inv.target_encoder):
            encoder.norm.weight.copy_(torch.linspace(0.5, 2.0, encoder.embed_dim))
            encoder.norm.bias.fill_(0.3)
    predictions = inv.predictor(inv.encoder(images, context_idx), context_idx, target_idx)
    jepa = inv.forward_loss(predictions, inv.forward_target(images, target_idx))
    context, full = inv.encoder(images, context_idx).mean(1), inv.target_encoder(images).mean(1)
    torch.testing.assert_close(inv(images, context_idx, target_idx), jepa + 3.0 * (context - full).square().mean())
    assert (inv.target_features(images).mean(1) - full).abs().max() > 0.1  # the two spaces do differ here


def test_the_weights_decay_by_a_cosine_to_the_final_factor():
    z = torch.randn(16, 5, 8)
    constant = CollapseRegularizer(variance_weight=1.0, covariance_weight=0.5)
    decaying = CollapseRegularizer(variance_weight=1.0, covariance_weight=0.5, final=0.1, total_steps=100)
    for step, factor in ((0, 1.0), (50, 0.55), (100, 0.1), (250, 0.1)):  # the cosine's start, middle, end, past it
        torch.testing.assert_close(decaying(z, step), factor * constant(z, step))
    assert decaying.factor(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert CollapseRegularizer(variance_weight=1.0, final=0.1).factor(50) == 1.0  # no schedule known: constant


def test_training_runs_the_decay_over_the_whole_schedule(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, meta={"variance_weight": 1.0, "regularizer_final": 0.0})
    run = importlib.import_module("openjepa.pretrain.run")
    seen, original = {}, run.build_ijepa

    def spy(c, *args, **kwargs):
        seen["model"] = original(c, *args, **kwargs)
        return seen["model"]

    monkeypatch.setattr(run, "build_ijepa", spy)
    run.train(cfg, max_steps=1)
    steps_per_epoch = cfg.data.synthetic_size // cfg.data.batch_size
    assert seen["model"].regularizer.total_steps == cfg.optimization.epochs * steps_per_epoch


WORKER = r"""
import sys, torch, torch.distributed as dist
from openjepa.regularizers import CollapseRegularizer
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
x, layer = torch.randn(8, 3, 4, generator=g), torch.nn.Linear(4, 6)
with torch.no_grad():
    layer.weight.copy_(torch.randn(6, 4, generator=g)); layer.bias.copy_(torch.randn(6, generator=g))
t = torch.randn(8, 6, generator=g)
reg = CollapseRegularizer(variance_weight=1.0, covariance_weight=0.5, sigreg_weight=0.3, sigreg_slices=16, seed=7,
                          invariance_weight=0.7)
rows = slice(0, 5) if world == 2 and rank == 0 else slice(5, 8) if world == 2 else slice(0, 8)  # uneven: 5 and 3
loss = reg(layer(x[rows]), step=5, target=t[rows])
loss.backward()
grad = layer.weight.grad.clone()
dist.all_reduce(grad); grad /= world  # what DDP does to the gradients
if rank == 0:
    torch.save({"loss": loss.detach(), "grad": grad}, sys.argv[1])
dist.barrier()  # no process leaves while another still talks to it
dist.destroy_process_group()
"""


def test_the_terms_are_identical_on_one_and_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = {}
    for n in (1, 2):
        out = tmp_path / f"{n}.pt"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={n}",
                str(script),
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results[n] = torch.load(out)
    torch.testing.assert_close(results[2]["loss"], results[1]["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[2]["grad"], results[1]["grad"], rtol=1e-4, atol=1e-6)
