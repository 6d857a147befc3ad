"""Data-parallel scaling: the real training loop (loader, masks, step, EMA, logging) under torchrun
on 1, 2, 4 ... processes at a fixed per-process batch (weak scaling), on synthetic images.

    python bench/ddp_scaling.py configs/vit_b16_in1k_ep600.yaml              # one node, every GPU
    python bench/ddp_scaling.py configs/vit_h14_in1k_ep300.yaml --fsdp data.batch_size=32
    python bench/ddp_scaling.py configs/bench_cpu_tiny.yaml --procs 1,2 --threads 1   # CPU, gloo

Throughput is log.csv's img_per_s (all processes together), the median of the logging windows
after the first (warm-up, compilation, allocator growth). Efficiency at n processes is
throughput(n) / (n x throughput(1)). Prints a Markdown table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def throughput(run_dir: Path) -> float:
    with open(run_dir / "log.csv", newline="") as f:
        rates = [float(r["img_per_s"]) for r in csv.DictReader(f)]
    if len(rates) < 2:
        raise SystemExit(f"{run_dir}/log.csv has {len(rates)} logging window(s); raise --steps")
    return statistics.median(rates[1:])


def run(config: str, procs: int, args, folder: Path) -> float:
    global_batch = args.batch * procs
    overrides = [
        "data.dataset=synthetic",
        f"data.synthetic_size={global_batch * args.steps}",
        f"logging.folder={folder}",
        f"logging.log_every={args.log_every}",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "logging.monitor_every=0",
        "logging.checkpoint_every_steps=0",
        "optimization.epochs=1",
        *(["meta.fsdp=true"] if args.fsdp else []),
        *args.overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={procs}",
        "-m",
        "openjepa.cli",
        "train",
        config,
        *overrides,
        "--max-steps",
        str(args.steps),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{procs} process(es) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return throughput(folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value, applied to every run")
    gpus = torch.cuda.device_count()
    default = ",".join(str(2**i) for i in range(8) if 2**i <= max(gpus, 1)) if gpus else "1,2"
    p.add_argument("--procs", default=default, help=f"process counts (default here: {default})")
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per run")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per process (CPU runs)")
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP instead of DDP")
    args = p.parse_args()
    from openjepa.config import load_config

    args.batch = load_config(args.config, args.overrides).data.batch_size
    counts = [int(n) for n in args.procs.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="openjepa_scaling_") as tmp:
        for n in counts:
            results[n] = run(args.config, n, args, Path(tmp) / f"p{n}")
            print(f"{n} process(es): {results[n]:.1f} img/s", file=sys.stderr)
    base = results.get(1)
    device = torch.cuda.get_device_name() if gpus else "cpu"
    print(f"\n{args.config} ({'FSDP' if args.fsdp else 'DDP'}), {args.batch} images per process, {device}\n")
    print("| processes | global batch | img/s | efficiency |\n|---|---|---|---|")
    for n, ips in results.items():
        eff = f"{ips / (n * base):.2f}" if base else "n/a"
        print(f"| {n} | {n * args.batch} | {ips:.1f} | {eff} |")
    print(
        json.dumps(
            {
                "config": args.config,
                "fsdp": args.fsdp,
                "device": device,
                "batch_per_process": args.batch,
                "img_per_s": results,
                "efficiency": {n: round(v / (n * base), 3) for n, v in results.items()} if base else None,
            }
        )
    )


if __name__ == "__main__":
    main()
