"""Images per second per core of the procedural scenes (data/scenes.py): ``SceneDataset`` items
(layout, drawing, the float tensor) at 64 and at 224 px in one process on one thread, and the
layouts alone (what ``labels`` of the dist task cost). Prints one JSON line.

    python bench/scenes_speed.py --n 2000

Each rate is given twice: per second of wall time and per second of this process's CPU time
(``per_cpu_s``); on a machine shared with other jobs the second is the one to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from openjepa.data.scenes import SceneDataset, scene_layout


def cpu_model() -> str:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )


def rates(work, n: int) -> tuple[float, float]:
    """(per wall second, per CPU second) of ``work(i)`` for i in 0..n-1, after a short warm-up."""
    for i in range(min(20, n)):
        work(n + i)  # other scenes: the first calls build caches
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        work(i)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return round(n / wall, 1), round(n / cpu, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="scenes timed at each size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "n": args.n,
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    for size in (64, 224):
        ds = SceneDataset(2 * args.n, image_size=size, seed=args.seed, task="count")
        result[f"img_per_s_{size}"], result[f"img_per_cpu_s_{size}"] = rates(ds.__getitem__, args.n)
    result["layout_per_s"], result["layout_per_cpu_s"] = rates(lambda i: scene_layout(args.seed, i), args.n)
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
