"""The fast path computes the same step as a plain eager fp32 implementation: SDPA attention vs
softmax(QK^T/sqrt(d))V written out, fused AdamW vs the per-tensor loop, the EMA as one
``_foreach_lerp_`` vs a per-parameter Python loop (the reference's), bf16 autocast vs fp32."""

import copy
import math

import pytest
import torch

import openjepa.models.vit as vit
from conftest import tiny_config
from openjepa.device import autocast, training_bf16
from openjepa.ijepa import build_ijepa
from openjepa.masks import build_mask_sampler
from openjepa.pretrain import build_optimizer


def manual_attention(q, k, v):
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1)
    return weights @ v


def one_step(model, optimizer, batch, autocast, ema):
    images, context_idx, target_idx = batch
    with autocast:
        loss = model(images, context_idx, target_idx)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema(model)
    return loss.detach().float()


def lerp_ema(model):
    model.update_target(0.99)


def loop_ema(model):
    with torch.no_grad():
        for p_target, p in zip(model.target_encoder.parameters(), model.encoder.parameters()):
            p_target.mul_(0.99).add_((1 - 0.99) * p.detach())


def setup(tmp_path, **optimization):
    cfg = tiny_config(tmp_path, optimization={"start_lr": 1e-3, **optimization})
    torch.manual_seed(0)
    model = build_ijepa(cfg)
    with torch.no_grad():  # a target encoder that differs from the context encoder, as mid-run
        for p in model.target_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    context_idx, target_idx = build_mask_sampler("multiblock", (4, 4), min_keep=2)(8, g)
    batch = (torch.randn(8, 3, 16, 16, generator=g), context_idx, target_idx)
    return cfg, model, batch


def weights(model):
    return {
        f"{name}.{k}": v
        for name in ("encoder", "predictor", "target_encoder")
        for k, v in getattr(model, name).state_dict().items()
    }


def test_fast_path_equals_plain_eager_fp32(tmp_path, monkeypatch):
    cfg, fast, batch = setup(tmp_path, fused_adamw=True)
    eager = copy.deepcopy(fast)
    fast_loss = [
        one_step(
            fast,
            build_optimizer(fast, cfg.optimization),
            batch,
            autocast(torch.device("cpu"), training_bf16(cfg.meta, torch.device("cpu"))),
            lerp_ema,
        )
    ]
    plain_cfg = copy.deepcopy(cfg.optimization)
    plain_cfg.fused_adamw = False
    opt = torch.optim.AdamW(build_optimizer(eager, plain_cfg).param_groups, foreach=False)
    monkeypatch.setattr(vit.F, "scaled_dot_product_attention", manual_attention)
    eager_loss = [one_step(eager, opt, batch, torch.autocast("cpu", enabled=False), loop_ema)]
    torch.testing.assert_close(fast_loss, eager_loss, rtol=1e-5, atol=1e-6)
    a, b = weights(fast), weights(eager)
    for name in a:  # after one AdamW step at LR 1e-3, every weight moved; fp32 rounding only differs
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=2e-6, msg=name)


def test_bf16_autocast_matches_fp32_to_bf16_precision(tmp_path):
    cfg, fp32, batch = setup(tmp_path)
    bf16, start = copy.deepcopy(fp32), copy.deepcopy(fp32.encoder.state_dict())
    loss32 = one_step(
        fp32, build_optimizer(fp32, cfg.optimization), batch, torch.autocast("cpu", enabled=False), lerp_ema
    )
    cfg.meta.cpu_bfloat16 = True
    loss16 = one_step(
        bf16,
        build_optimizer(bf16, cfg.optimization),
        batch,
        autocast(torch.device("cpu"), training_bf16(cfg.meta, torch.device("cpu"))),
        lerp_ema,
    )
    assert loss16 == pytest.approx(float(loss32), rel=2e-2)  # bf16 keeps 8 bits of mantissa
    # the AdamW updates point the same way (bf16 gradients may flip the sign of a few tiny components)
    update32 = torch.cat([(v - start[k]).flatten() for k, v in fp32.encoder.state_dict().items()])
    update16 = torch.cat([(v - start[k]).flatten() for k, v in bf16.encoder.state_dict().items()])
    assert torch.nn.functional.cosine_similarity(update32, update16, dim=0) > 0.9


def test_compiled_blocks_match_eager_and_do_not_recompile_as_mask_lengths_vary(tmp_path):
    """meta.compile's regional compilation, traced and differentiated by AOTAutograd ("aot_eager":
    the graphs inductor would get, without its minute of C++ compilation on 2 cores): same losses
    and weights as eager over steps whose context and target lengths all differ, and a fixed number
    of graphs (target encoder, context encoder, predictor) however the lengths vary."""
    from torch._dynamo.utils import counters  # noqa: PLC2701 (the compiler's own count)

    cfg, eager, _ = setup(tmp_path)
    compiled = copy.deepcopy(eager)
    for blocks in (compiled.encoder.blocks, compiled.target_encoder.blocks, compiled.predictor.predictor_blocks):
        vit.compile_blocks(blocks, backend="aot_eager")
    torch._dynamo.reset()
    counters.clear()
    sampler, g = build_mask_sampler("multiblock", (4, 4), min_keep=2), torch.Generator().manual_seed(1)
    images, lengths = torch.randn(8, 3, 16, 16, generator=g), set()
    optimizers = [build_optimizer(m, cfg.optimization) for m in (eager, compiled)]
    fp32 = torch.autocast("cpu", enabled=False)
    for _ in range(6):
        context_idx, target_idx = sampler(8, g)
        lengths.add((context_idx.size(1), target_idx.size(2)))
        losses = [
            one_step(m, opt, (images, context_idx, target_idx), fp32, lerp_ema)
            for m, opt in zip((eager, compiled), optimizers)
        ]
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert len(lengths) >= 4  # the masks did vary
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])
    a, b = weights(eager), weights(compiled)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=2e-6, msg=name)


def test_cpu_bfloat16_auto_follows_the_cpus_native_bf16(tmp_path, monkeypatch):
    """meta.cpu_bfloat16 defaults to auto: bf16 autocast where the CPU multiplies bf16 natively (AMX
    or AVX512-BF16), fp32 elsewhere; true and false force it; anything else is refused."""
    from openjepa import device as machine
    from openjepa.config import ConfigError, load_config
    from openjepa.device import training_bf16 as bf16_autocast

    cpu = torch.device("cpu")
    cfg = load_config(None, ["meta.model_name=vit_tiny"])
    assert cfg.meta.cpu_bfloat16 == "auto"
    for native in (True, False):
        monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda native=native: native)
        assert bf16_autocast(cfg.meta, cpu) is native
    for value, enabled in (("true", True), ("false", False)):
        assert bf16_autocast(load_config(None, [f"meta.cpu_bfloat16={value}"]).meta, cpu) is enabled
    with pytest.raises(ConfigError, match="cpu_bfloat16 must be true, false or auto"):
        load_config(None, ["meta.cpu_bfloat16=sometimes"])
    with pytest.raises(ConfigError, match="cpu_bfloat16 must be true or false or a string"):
        load_config(None, ["meta.cpu_bfloat16=3"])
