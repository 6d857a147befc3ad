"""The Fashion-MNIST benchmark: pretrain a recipe, evaluate it with every protocol beside the
two baselines (random-init encoder of the same size, logistic regression on raw pixels), and
append the row to BENCHMARKS.md. ``--ablations`` also runs the paper's two ablations (masking
strategy, representation vs pixel targets) at a short budget and writes their table.

    python bench/fmnist.py --recipe cpu                 # configs/fmnist_cpu.yaml, < 60 min on 2 cores
    python bench/fmnist.py --recipe gpu                 # configs/fmnist_gpu.yaml, a few minutes on one GPU
    python bench/fmnist.py --recipe cpu --ablations
    python bench/fmnist.py --skip-recipe --ablations --ablation-base cpu --ablation-fraction 1   # at the recipe's budget

Runs resume: a finished run is evaluated again without retraining (features are cached), and its
pretraining time is read from its log.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import torch

from openjepa.config import load_config
from openjepa.evaluate import evaluate, format_table
from openjepa.pretrain import train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "cpu": ROOT / "configs/fmnist_cpu.yaml",
    "cpu-plain": ROOT / "configs/fmnist_cpu_plain.yaml",
    "gpu": ROOT / "configs/fmnist_gpu.yaml",
}
ABLATION_BASES = {"demo": ROOT / "configs/fmnist_vit_tiny.yaml", **RECIPES}
ABLATIONS = {  # name -> overrides; the paper's Table 6 (masking) and Table 7 (targets)
    "multi-block": [],
    "pixels (multi-block)": ["meta.target=pixels"],
    "block": ["mask.strategy=block"],
    "random": ["mask.strategy=random"],
    "rasterized": ["mask.strategy=rasterized"],
}
PAPER = {
    "multi-block": 54.2,
    "block": 20.2,
    "rasterized": 15.5,
    "random": 17.6,
    "pixels (multi-block)": "40.7 (vs 66.9, ViT-L)",
}
RESULTS_MARK, ABLATIONS_MARK = "<!-- fmnist:results -->", "<!-- fmnist:ablations -->"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "CPU",
    )
    return f"{cpu}, {torch.get_num_threads()} threads"


def pretrain_seconds(run_dir: Path) -> float:
    """Wall time of all sessions of a run: elapsed_s restarts at each resume, so sum each session's last value."""
    total, last = 0.0, 0.0
    with open(run_dir / "log.csv", newline="") as f:
        for row in csv.DictReader(f):
            elapsed = float(row["elapsed_s"])
            if elapsed < last:
                total += last
            last = elapsed
    return total + last


def pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def insert_row(md: Path, mark: str, row: str) -> None:
    text = md.read_text()
    if mark not in text:
        raise SystemExit(f"{md} has no {mark} line to put the row above")
    md.write_text(text.replace(mark, row + "\n" + mark, 1))


def csv_table(results: Path, header: str, cells) -> tuple[list[dict], list[str]]:
    """(the rows of the CSV ``results``, a markdown table of them): the ``header`` line, its rule,
    then one line of ``cells(row)`` (strings) per row."""
    with open(results, newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    return rows, lines + ["| " + " | ".join(cells(r)) + " |" for r in rows]


def write_table(md: Path, start: str, end: str, lines: list[str]) -> None:
    """Put ``lines`` between the ``start`` and ``end`` marks of ``md`` (replacing what was there), or
    above ``end`` with the ``start`` mark the first time."""
    text = md.read_text()
    if start in text and end in text:
        md.write_text(text[: text.index(start) + len(start)] + "\n" + "\n".join(lines) + "\n" + text[text.index(end) :])
    else:
        insert_row(md, end, start + "\n" + "\n".join(lines))


def run_recipe(name: str, runs_dir: Path, md: Path, protocols: list[str]) -> dict:
    cfg = load_config(RECIPES[name], [f"logging.folder={runs_dir / name}"])
    run_dir = train(cfg)
    t0 = time.perf_counter()
    record = evaluate(
        run_dir / "checkpoints/latest.pt", "fashion_mnist", protocols, ("random", "pixels"), progress=False
    )
    eval_s = time.perf_counter() - t0
    print(format_table(record["results"]))
    r = record["results"]

    def cells(res):
        low = res.get("lowshot", {})
        return [
            pct(res.get("linear", {}).get("test_acc")),
            pct(res.get("knn", {}).get("k=20")),
            pct(low.get("0.01", {}).get("mean")),
            pct(low.get("0.1", {}).get("mean")),
            pct(res.get("attentive", {}).get("test_acc")),
        ]

    row = [
        time.strftime("%Y-%m-%d"),
        name,
        str(cfg.optimization.epochs),
        f"{pretrain_seconds(run_dir) / 60:.1f}",
        f"{eval_s / 60:.1f}",
        machine(),
        *cells(r["ijepa"]),
        "/".join(c or "–" for c in cells(r["random"])),
        "/".join(c or "–" for c in cells(r["pixels"])[:4]),
    ]
    insert_row(md, RESULTS_MARK, "| " + " | ".join(row) + " |")
    return record


def run_ablations(
    runs_dir: Path, md: Path, fraction: float, extra: list[str], train_limit: int | None = None, base_name: str = "demo"
) -> None:
    """Each ablation trains ``fraction`` of the base config's whole schedule (warmup, cosine and EMA
    ramp squeezed into it), the base's own settings otherwise."""
    path = ABLATION_BASES[base_name]
    base = load_config(path, extra)
    steps = int(fraction * base.optimization.epochs * (60000 // base.data.batch_size))
    for name, overrides in ABLATIONS.items():
        folder = runs_dir / ("ablation_" + name.split()[0].replace("-", ""))
        cfg = load_config(
            path,
            [
                *extra,
                *overrides,
                f"logging.folder={folder}",
                f"optimization.ipe_scale={fraction}",
                "logging.progress_bar=false",
            ],
        )
        run_dir = train(cfg, max_steps=steps)
        record = evaluate(
            run_dir / "checkpoints/latest.pt",
            "fashion_mnist",
            ("linear", "knn", "lowshot"),
            (),
            progress=False,
            train_limit=train_limit,
        )
        r = record["results"]["ijepa"]
        label = (
            name + (f", {base_name} recipe" if base_name != "demo" else "") + (f" ({' '.join(extra)})" if extra else "")
        )
        label += f", probes on {train_limit} labels" if train_limit else ""
        row = [
            time.strftime("%Y-%m-%d"),
            label,
            f"{steps} steps",
            f"{pretrain_seconds(run_dir) / 60:.1f}",
            machine(),
            pct(r["linear"]["test_acc"]),
            pct(r["knn"]["k=20"]),
            pct(r["lowshot"]["0.01"]["mean"]),
            f"{r['rankme']:.1f}",
            str(PAPER[name]),
        ]
        print(" | ".join(row))
        insert_row(md, ABLATIONS_MARK, "| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs/bench_fmnist")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--protocols", default="linear,knn,lowshot,attentive")
    parser.add_argument("--skip-recipe", action="store_true", help="only the ablations")
    parser.add_argument("--ablations", action="store_true")
    parser.add_argument(
        "--ablation-base",
        choices=sorted(ABLATION_BASES),
        default="demo",
        help="the config each ablation changes: the demo's (configs/fmnist_vit_tiny.yaml, one epoch) or a recipe's",
    )
    parser.add_argument(
        "--ablation-fraction",
        type=float,
        default=0.5,
        help="the part of the base config's whole schedule each ablation run trains",
    )
    parser.add_argument(
        "--ablation-override",
        action="append",
        default=[],
        help="section.key=value applied to every ablation run, e.g. meta.cpu_bfloat16=true",
    )
    parser.add_argument(
        "--ablation-train-limit",
        type=int,
        default=None,
        help="probe the ablations on a seeded subset of this many training images (faster)",
    )
    args = parser.parse_args()
    if not args.skip_recipe:
        record = run_recipe(args.recipe, args.runs_dir, args.md, args.protocols.split(","))
        print(json.dumps({"result": record["path"]}))
    if args.ablations:
        run_ablations(
            args.runs_dir,
            args.md,
            args.ablation_fraction,
            args.ablation_override,
            args.ablation_train_limit,
            args.ablation_base,
        )


if __name__ == "__main__":
    main()
