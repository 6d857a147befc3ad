"""Where the CPU training step spends its time: torch.profiler over two steps of a config, fp32 or
under bf16 autocast, the top operations by self CPU time (what found the slow bf16 attention backward).

    python bench/profile_step.py configs/fmnist_vit_tiny.yaml bf16 [overrides]
    python bench/profile_step.py configs/fmnist_vit_tiny.yaml fp32
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from openjepa.config import load_config
from openjepa.ijepa import build_ijepa
from openjepa.masks import mask_sampler_for
from openjepa.pretrain import build_optimizer


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] not in ("fp32", "bf16"):
        raise SystemExit(__doc__)
    cfg = load_config(sys.argv[1], sys.argv[3:])
    torch.manual_seed(0)
    model, sampler = build_ijepa(cfg), mask_sampler_for(cfg)
    optimizer, generator = build_optimizer(model, cfg.optimization), torch.Generator().manual_seed(0)
    d = cfg.data
    images = torch.randn(d.batch_size, d.in_chans, d.crop_size, d.crop_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=sys.argv[2] == "bf16")

    def step():
        with autocast:
            loss = model(images, *sampler(len(images), generator))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_target(0.996)

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(3):
        step()
    print(f"step ms {(time.perf_counter() - start) / 3 * 1e3:.0f} ({sys.argv[2]}, {torch.get_num_threads()} threads)")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
