"""The recipe study of issue 12: short I-JEPA runs on Fashion-MNIST, one lever changed at a time
from a base config, each evaluated with `openjepa eval` (linear, kNN, 1% labels; target encoder,
average-pooled last layer). Every finished run appends one row to a CSV (the changed keys,
steps, minutes, img/s, the accuracies, RankMe, the final target_std, the machine), so a study
stopped half-way keeps what it measured; ``--report`` turns the CSV into the BENCHMARKS.md table
and the accuracy-vs-minutes plot.

    python bench/recipe_study.py --variants base,ema98,cjepa --fraction 0.5  # half an epoch each, in turn
    python bench/recipe_study.py --variants all --epochs 2 --jobs 8          # concurrently (a GPU)
    python bench/recipe_study.py --report                                    # table + docs/recipe_study.png

Budgets: ``--epochs N`` or ``--fraction F`` (of one epoch); either way the base recipe's whole
schedule (warmup in proportion, cosine, weight decay, EMA) is squeezed into the budget.
A variant whose run folder exists is resumed (or, when finished, only evaluated again).
``--eval-epochs 1,2`` also evaluates the periodic checkpoints of those epochs, which gives each
variant a line of accuracy against pretraining minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from fmnist import csv_table, machine, pretrain_seconds, write_table  # noqa: E402  (same folder)

BASE = ROOT / "configs/fmnist_cpu_plain.yaml"  # plain I-JEPA: every lever is measured against it
# name -> overrides of the base config; one lever each (a few pairs where the levers go together)
VARIANTS = {
    "base": [],
    "ema99": ["optimization.ema=[0.99,1.0]"],
    "ema98": ["optimization.ema=[0.98,1.0]"],
    "lr1e-4": ["optimization.lr=1e-4"],
    "lr1e-3_clip": ["optimization.lr=1e-3", "optimization.clip_grad=1.0"],
    "bs256_lr5e-4": ["data.batch_size=256", "optimization.lr=5e-4"],
    "pred192x4": ["meta.pred_emb_dim=192", "meta.pred_depth=4"],
    "pred96x2": ["meta.pred_depth=2"],
    "targets2": ["mask.num_pred_masks=2"],
    "target_scale_small": ["mask.pred_mask_scale=[0.1,0.15]"],
    "context_0.6": ["mask.enc_mask_scale=[0.6,1.0]"],
    "grid8_32px": ["data.crop_size=32"],
    "crop0.6": ["data.crop_scale=[0.6,1.0]"],
    "l2": ["meta.loss=l2"],
    "cjepa": ["meta.variance_weight=0.025", "meta.covariance_weight=0.001"],  # C-JEPA's weights (25 x 0.001, 1 x 0.001)
    "vc_1": ["meta.variance_weight=1.0", "meta.covariance_weight=0.04"],
    "sigreg_0.05": ["meta.sigreg_weight=0.05"],  # LeJEPA's lambda
    "sigreg_0.01": ["meta.sigreg_weight=0.01"],
    "pixels": ["meta.target=pixels"],
    "bf16": ["meta.cpu_bfloat16=true"],
}
COLUMNS = (
    "date",
    "variant",
    "changed",
    "epochs",
    "steps",
    "pretrain_min",
    "img_per_s",
    "linear",
    "knn20",
    "lowshot1",
    "probe_steps",
    "rankme",
    "target_std",
    "image_rankme",
    "image_spread",
    "machine",
    "jobs",
)
RESULTS = ROOT / "bench/results/recipe_study.csv"
MARK = "<!-- recipe_study:results -->"


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``name`` from VARIANTS, or ``name:key=value;key=value`` for a combination."""
    name, _, extra = spec.partition(":")
    if extra:
        return name, [o for o in extra.split(";") if o]
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)} (or name:key=value;...)")
    return name, VARIANTS[name]


def split_top_level(text: str) -> list[str]:
    """Split on the commas outside brackets: ``a,b:optimization.ema=[0.99,1.0]`` is two specs."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [part for part in parts + [current] if part]


def log_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_one(spec: str, args) -> list[dict]:
    """Train one variant, evaluate its final (and ``--eval-epochs``) checkpoints, append the rows."""
    from openjepa.config import load_config
    from openjepa.data import build_dataset
    from openjepa.evaluate import evaluate
    from openjepa.pretrain import train

    name, overrides = parse_variant(spec)
    run_dir = args.runs_dir / name
    cfg = load_config(
        args.base,
        [
            *overrides,
            f"logging.folder={run_dir}",
            "logging.checkpoint_every=1",
            "logging.progress_bar=false",
            "logging.monitor_every=0",
            *args.override,
        ],
    )
    o = cfg.optimization
    if args.fraction:  # the recipe's whole schedule squeezed into this fraction of one epoch, warmup in proportion
        o.warmup, o.epochs, o.ipe_scale = o.warmup / o.epochs * args.fraction, 1, args.fraction
    else:
        o.warmup, o.epochs = o.warmup / o.epochs * args.epochs, args.epochs
    dataset = build_dataset(cfg.data)
    max_steps = round(args.fraction * (len(dataset) // cfg.data.batch_size)) if args.fraction else None
    if max_steps:  # a collapse-probe reading at the last step: the largest divisor of it up to 100 steps apart
        cfg.logging.collapse_every = max(d for d in range(1, min(100, max_steps) + 1) if max_steps % d == 0)
    train(cfg, max_steps=max_steps, dataset=dataset)
    rows, log = [], log_rows(run_dir)
    steps_per_epoch = round(float(log[-1]["step"]) / float(log[-1]["epoch"]))
    last = args.fraction or args.epochs
    epochs = sorted({e for e in args.eval_epochs if e < last} | {last})
    for epoch in epochs:
        ckpt = run_dir / "checkpoints" / (f"epoch_{epoch:04d}.pt" if epoch < last else "latest.pt")
        record = evaluate(
            ckpt,
            "fashion_mnist",
            ("linear", "knn", "lowshot"),
            (),
            progress=False,
            device=args.device,
            linear_steps=args.linear_steps,
        )
        r = record["results"]["ijepa"]
        upto = [row for row in log if int(row["step"]) <= epoch * steps_per_epoch]
        seconds = float(upto[-1]["elapsed_s"]) if epoch < last else pretrain_seconds(run_dir)
        rows.append(
            {
                "date": time.strftime("%Y-%m-%d"),
                "variant": name,
                "changed": " ".join(overrides + args.override) or "-",
                "epochs": epoch,
                "steps": round(epoch * steps_per_epoch),
                "pretrain_min": f"{seconds / 60:.2f}",
                "img_per_s": f"{statistics.median(float(row['img_per_s']) for row in upto[1:] or upto):.0f}",
                "linear": f"{100 * r['linear']['test_acc']:.1f}",
                "knn20": f"{100 * r['knn']['k=20']:.1f}",
                "lowshot1": f"{100 * r['lowshot']['0.01']['mean']:.1f}",
                "probe_steps": r["linear"]["steps"],
                "rankme": f"{r['rankme']:.1f}",
                "target_std": f"{float(upto[-1]['target_std']):.3f}",
                "image_rankme": upto[-1].get("image_rankme", ""),
                "image_spread": upto[-1].get("image_spread", ""),
                "machine": machine(),
                "jobs": args.jobs,
            }
        )
        append_row(args.results, rows[-1])
        print(json.dumps(rows[-1]), flush=True)
    return rows


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or not path.stat().st_size
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def run_concurrently(specs: list[str], args) -> None:
    """Each variant in its own process, ``--jobs`` at a time (a GPU has room for several of these
    small runs; on a 2-core CPU use --jobs 1, the default)."""
    pending, running = list(specs), []
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    passthrough = [
        f"--epochs={args.epochs}",
        f"--fraction={args.fraction}",
        f"--runs-dir={args.runs_dir}",
        f"--results={args.results}",
        f"--base={args.base}",
        f"--device={args.device}",
        f"--jobs={args.jobs}",
        f"--eval-epochs={','.join(map(str, args.eval_epochs))}",
        *([f"--linear-steps={args.linear_steps}"] if args.linear_steps else []),
        *(f"--override={o}" for o in args.override),
    ]
    while pending or running:
        while pending and len(running) < args.jobs:
            spec = pending.pop(0)
            logf = open(args.runs_dir / f"{spec.partition(':')[0]}.out", "w")
            running.append(
                (
                    spec,
                    logf,
                    subprocess.Popen(
                        [sys.executable, __file__, "--variants", spec, "--jobs", "1", *passthrough, "--child"],
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                        env=env,
                    ),
                )
            )
        time.sleep(2)
        for item in list(running):
            spec, logf, proc = item
            if proc.poll() is not None:
                logf.close()
                running.remove(item)
                print(f"{spec}: exit {proc.returncode}", flush=True)


def report(results: Path, md: Path, plot: Path) -> None:
    """The CSV as the BENCHMARKS.md table (rows newer than the table's replace it) and the plot."""
    header = (
        "| date | variant | changed (vs configs/fmnist_cpu_plain.yaml) | epochs | steps | pretrain min | img/s | "
        "linear | kNN@20 | 1% | probe steps | RankMe | target_std | image_rankme | image_spread | machine |"
    )
    rows, lines = csv_table(
        results,
        header,
        lambda r: [
            r["date"],
            r["variant"],
            f"`{r['changed']}`" if r["changed"] != "-" else "-",
            r["epochs"],
            r["steps"],
            r["pretrain_min"],
            r["img_per_s"],
            r["linear"],
            r["knn20"],
            r["lowshot1"],
            r["probe_steps"],
            r["rankme"],
            r["target_std"],
            r["image_rankme"],
            r["image_spread"],
            r["machine"] + (f", {r['jobs']} runs at once" if r["jobs"] not in ("", "1") else ""),
        ],
    )
    write_table(md, "<!-- recipe_study:start -->", MARK, lines)
    plot_study(rows, plot)


def plot_study(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one row of panels per machine (a GPU's minutes are not a CPU's), one panel per protocol
    machines = sorted({r["machine"] for r in rows})
    metrics = (("linear", "linear probe", 84.5), ("knn20", "kNN@20", 84.6), ("lowshot1", "1% labels", 76.6))
    fig, axes = plt.subplots(len(machines), len(metrics), figsize=(19, 4.5 * len(machines)), squeeze=False)
    for row_axes, mach in zip(axes, machines):
        by_variant: dict[str, list[dict]] = {}
        for r in rows:
            if r["machine"] == mach:
                by_variant.setdefault(r["variant"], []).append(r)
        for ax, (key, title, pixels) in zip(row_axes, metrics):
            for i, (name, rs) in enumerate(sorted(by_variant.items())):
                rs = sorted(rs, key=lambda r: float(r["pretrain_min"]))
                # ten colours, then the next marker: each variant its own colour and marker pair
                ax.plot(
                    [float(r["pretrain_min"]) for r in rs],
                    [float(r[key]) for r in rs],
                    color=f"C{i % 10}",
                    marker="osD^v<>ph*"[i // 10 % 10],
                    label=name,
                )
            ax.axhline(pixels, color="gray", linestyle="--", linewidth=1)
            ax.annotate(
                f"raw pixels {pixels}",
                (0.01, pixels),
                xycoords=("axes fraction", "data"),
                color="gray",
                fontsize=8,
                va="bottom",
            )
            ax.set_xlabel("pretraining minutes")
            ax.set_ylabel(f"{title}, Fashion-MNIST test %")
            ax.set_title(f"{title}: {mach}", fontsize=9)
            ax.grid(alpha=0.3)
        row_axes[-1].legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="base", help="comma-separated names, 'all', or name:key=value;key=value")
    p.add_argument("--base", type=Path, default=BASE)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--fraction",
        type=float,
        default=0.0,
        help="instead of --epochs: this fraction of one epoch, with the whole schedule squeezed into it",
    )
    p.add_argument("--eval-epochs", default="", help="also evaluate these epochs' checkpoints, e.g. 1,2")
    p.add_argument("--override", action="append", default=[], help="applied to every variant (section.key=value)")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once, each in its own process")
    p.add_argument("--device", default="auto")
    p.add_argument("--linear-steps", type=int, default=None)
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs/recipe_study")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--report", action="store_true", help="write the BENCHMARKS.md table and the plot from the CSV")
    p.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs/recipe_study.png")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.eval_epochs = [int(e) for e in args.eval_epochs.split(",") if e]
    if args.report:
        report(args.results, args.md, args.plot)
        return
    specs = list(VARIANTS) if args.variants == "all" else split_top_level(args.variants)
    for spec in specs:
        parse_variant(spec)  # unknown names fail before anything runs
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and len(specs) > 1:
        run_concurrently(specs, args)
    else:
        for spec in specs:
            run_one(spec, args)


if __name__ == "__main__":
    main()
