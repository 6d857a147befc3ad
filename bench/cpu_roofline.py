"""How fast could the training step be on this CPU? An upper bound from matrix multiplies alone.

    python bench/cpu_roofline.py configs/bench_cpu_tiny.yaml [overrides]

Times fp32 matmuls of the shapes of the step's linear layers (encoder on all patches, encoder on
the context, predictor on context + one target block; forward shapes, the backward has the same
sizes transposed) at this process's thread count, takes the fastest rate, and divides it by the
model FLOPs per image of `openjepa bench` (REFERENCE.md §3). No implementation of the step can
beat that number: it assumes every FLOP runs at the best matmul rate and that layer norms, GELU,
softmax, AdamW, EMA and masks cost nothing. It also profiles a few of our training steps and
reports the share of their CPU time spent in matrix multiplies (aten::mm / addmm / bmm) and the
largest other operations. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from openjepa.bench import flops_per_image
from openjepa.config import load_config
from openjepa.ijepa import build_ijepa
from openjepa.masks import mask_sampler_for
from openjepa.models.vit import resolve_size
from openjepa.pretrain import build_optimizer

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def matmul_gflops(m: int, k: int, n: int, reps: int = 10) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


def profile_step(cfg, steps: int = 3) -> tuple[float, dict]:
    """Share of self CPU time in matmuls over ``steps`` training steps, and the top other ops (ms/step)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model, sampler = build_ijepa(cfg), mask_sampler_for(cfg)
    optimizer, generator = build_optimizer(model, cfg.optimization), torch.Generator().manual_seed(0)
    images = torch.randn(cfg.data.batch_size, cfg.data.in_chans, cfg.data.crop_size, cfg.data.crop_size)

    def step():
        model(images, *sampler(len(images), generator)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_target(0.996)

    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    total = sum(ops.values())
    others = dict(sorted(((k, round(v, 1)) for k, v in ops.items() if k not in MATMULS), key=lambda kv: -kv[1])[:6])
    return sum(ops.get(k, 0.0) for k in MATMULS) / total, others


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(args.config, args.overrides)
    size, B = resolve_size(cfg.meta.model_name), cfg.data.batch_size
    sampler, generator = mask_sampler_for(cfg), torch.Generator().manual_seed(0)
    draws = [sampler(B, generator) for _ in range(50)]  # token counts vary with the masks: their mean
    n = (cfg.data.crop_size // cfg.mask.patch_size) ** 2
    kc = round(sum(c.size(1) for c, _ in draws) / len(draws))
    kt = round(sum(t.size(2) for _, t in draws) / len(draws))
    m = draws[0][1].size(1)
    d, h, pd = size.dim, int(size.dim * size.mlp_ratio), cfg.meta.pred_emb_dim
    shapes = {
        (rows, i, o)
        for rows, dim, hidden in ((B * n, d, h), (B * kc, d, h), (B * m * (kc + kt), pd, 4 * pd))
        for i, o in ((dim, 3 * dim), (dim, dim), (dim, hidden), (hidden, dim))
    }
    rates = {s: matmul_gflops(*s) for s in sorted(shapes)}
    best = max(rates.values())
    gflop = flops_per_image(cfg, kc, kt, m) / 1e9
    for s, r in rates.items():
        print(f"  matmul {s[0]}x{s[1]} @ {s[1]}x{s[2]}: {r:.0f} GFLOP/s")
    print(f"best fp32 matmul rate {best:.0f} GFLOP/s, {gflop:.3f} GFLOP per image -> at most {best / gflop:.1f} img/s")
    share, others = profile_step(cfg)
    print(f"our step: {100 * share:.0f}% of CPU time in matmuls; largest other ops (ms/step): {others}")
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "best_gflops": round(best, 1),
                "gflop_per_img": round(gflop, 3),
                "ceiling_img_per_s": round(best / gflop, 1),
                "matmul_share": round(share, 3),
                "other_ops_ms": others,
                "rates": {f"{a}x{b}x{c}": round(r, 1) for (a, b, c), r in rates.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
