"""Where a GPU step's time goes (issue 41, for a lent GPU): the training step of a config (the
loop's own functions, masks drawn beforehand as the loader does, ``openjepa.bench.overhead``)
profiled over a window of steps with torch.profiler; prints the top kernels by GPU time and the
share of the window in which the GPU ran no kernel (idle: the host was late).

    python bench/profile_gpu_step.py configs/vit_b16_in1k_ep600.yaml --steps 100 [overrides]
    python bench/profile_gpu_step.py configs/vit_b16_in1k_ep600.yaml meta.compile=true --warmup 10

The last line printed is one JSON object (step_ms, gpu_busy_share, top_kernels_ms). On a CPU it
runs too (the share is then of CPU operator time, a smoke test only).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from openjepa.bench.step import SyntheticStep
from openjepa.config import load_config


def busy_share(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """The share of [start, end] covered by the union of the intervals."""
    covered, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            covered += b - a
            reach = b
    return covered / max(end - start, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="default: the config's data.batch_size")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    cfg = load_config(a.config, a.overrides)
    step = SyntheticStep(cfg, a.batch or cfg.data.batch_size, narrow=False)
    cuda = step.device.type == "cuda"
    for _ in range(a.warmup):
        step()
    step.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(a.steps):
            step()
        step.sync()
        wall = time.perf_counter() - start
    events = prof.events()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        kernels = [e for e in events if e.cpu_parent is None and e.name.startswith("aten::")]
    spans = [(e.time_range.start, e.time_range.end) for e in kernels]
    first = min((s for s, _ in spans), default=0.0)
    last = max((e for _, e in spans), default=0.0)
    totals: dict[str, float] = {}
    for e in kernels:
        totals[e.name] = totals.get(e.name, 0.0) + e.time_range.elapsed_us()
    top = sorted(totals.items(), key=lambda kv: -kv[1])[: a.top]
    result = {
        "config": a.config,
        "overrides": a.overrides,
        "batch": a.batch or cfg.data.batch_size,
        "steps": a.steps,
        "step_ms": round(wall / a.steps * 1e3, 2),
        "gpu_busy_share": round(busy_share(spans, first, last), 3),
        "kernels_per_step": round(len(kernels) / a.steps, 1),
        "top_kernels_ms_per_step": {k[:80]: round(v / 1e3 / a.steps, 3) for k, v in top},
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
    }
    for name, ms in result["top_kernels_ms_per_step"].items():
        print(f"{ms:9.3f} ms/step  {name}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
