"""Fine-tuning on Fashion-MNIST at 1%, 10% and 100% of the labels, from a pretrained encoder and
from the same architecture at random initialisation (issue 15): what pretraining buys once the
whole network is trained, beside the frozen probes of ``openjepa eval``.

    python bench/finetune_fmnist.py CHECKPOINT              # the six runs, one after the other
    python bench/finetune_fmnist.py CHECKPOINT --fractions 0.01 --inits pretrained
    python bench/finetune_fmnist.py --report                # the BENCHMARKS.md table from the CSV

Each run is ``openjepa finetune`` with the default recipe and an epoch budget per label fraction
(about the same number of optimiser steps at 10% and 100%; more epochs where the labels are few),
in ``--runs-dir/<init>_<fraction>`` (resumed if stopped). Every finished run appends one row to
``bench/results/finetune_fmnist.csv``: test accuracy of best.pt (the epoch chosen on a held-out
10% of the training labels) and of the last epoch, minutes, the machine. The frozen probes come
from the checkpoint's ``openjepa eval`` result (``eval/<name>_target.json`` beside it) when there is one.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from fmnist import csv_table, machine, write_table  # noqa: E402  (same folder)

# label fraction -> (epochs, validate every N epochs)
BUDGETS = {0.01: (50, 5), 0.1: (10, 2), 1.0: (1, 1)}
COLUMNS = (
    "date",
    "checkpoint",
    "init",
    "labels",
    "epochs",
    "steps",
    "minutes",
    "test_acc",
    "test_acc_last",
    "best_epoch",
    "val_acc",
    "frozen_probe",
    "settings",
    "machine",
)
RESULTS = ROOT / "bench/results/finetune_fmnist.csv"
START, END = "<!-- finetune_fmnist:start -->", "<!-- finetune_fmnist:results -->"


def frozen_probe(checkpoint: Path, fraction: float) -> str:
    """The frozen encoder's probe at this label fraction (linear at 100%, low-shot below) from its eval JSON."""
    parent = checkpoint.parent
    result = (parent.parent if parent.name == "checkpoints" else parent) / "eval" / f"{checkpoint.stem}_target.json"
    if not result.exists():
        return ""
    r = json.loads(result.read_text())["results"]["ijepa"]
    if fraction == 1.0:
        return f"{100 * r['linear']['test_acc']:.1f}"
    low = r.get("lowshot", {}).get(str(fraction))
    return f"{100 * low['mean']:.1f}" if low else ""


def run_one(checkpoint: Path, init: str, fraction: float, args) -> dict:
    from openjepa.finetune import finetune, load_settings

    epochs, every = BUDGETS[fraction]
    ft = load_settings(
        args.override,
        epochs=epochs,
        eval_every=every,
        labels_fraction=fraction,
        random_init=init == "random",
        num_workers=args.num_workers,
        progress_bar=False,
    )
    out = args.runs_dir / f"{init}_{fraction:g}"
    t0 = time.perf_counter()
    record = finetune(checkpoint, out, "fashion_mnist", ft)
    row = {
        "date": time.strftime("%Y-%m-%d"),
        "checkpoint": str(checkpoint),
        "init": init,
        "labels": f"{fraction:.0%}",
        "epochs": epochs,
        "steps": record["steps_per_epoch"] * epochs,
        "minutes": f"{record['train_minutes']:.1f}",
        "test_acc": f"{100 * record['test_acc']:.1f}",
        "test_acc_last": f"{100 * record['test_acc_last']:.1f}",
        "best_epoch": record["best_epoch"],
        "val_acc": f"{100 * record['val_acc']:.1f}" if record["val_acc"] is not None else "",
        "frozen_probe": frozen_probe(checkpoint, fraction) if init == "pretrained" else "",
        "settings": " ".join(args.override) or "defaults",
        "machine": machine(),
    }
    new = not args.results.exists()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(json.dumps(row), flush=True)
    print(f"({time.perf_counter() - t0:.0f} s with the test evaluations)", flush=True)
    return row


def report(results: Path, md: Path) -> None:
    header = (
        "| date | encoder | init | labels | settings | epochs | steps | minutes | test acc (best.pt) | "
        "test acc (last) | best epoch | frozen probe | machine |"
    )
    _, lines = csv_table(
        results,
        header,
        lambda r: [
            r["date"],
            Path(r["checkpoint"]).parent.parent.name,
            r["init"],
            r["labels"],
            f"`{r['settings']}`",
            r["epochs"],
            r["steps"],
            r["minutes"],
            r["test_acc"],
            r["test_acc_last"],
            str(r["best_epoch"]),
            r["frozen_probe"] or "-",
            r["machine"],
        ],
    )
    write_table(md, START, END, lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", type=Path)
    p.add_argument("--fractions", default="0.01,0.1,1")
    p.add_argument("--inits", default="pretrained,random")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs/finetune_fmnist")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--override", action="append", default=[], help="a fine-tuning setting key=value (repeatable)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--report", action="store_true")
    p.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args()
    if args.report:
        report(args.results, args.md)
        return
    if args.checkpoint is None:
        p.error("give the checkpoint to fine-tune (or --report)")
    for fraction in (float(f) for f in args.fractions.split(",")):
        if fraction not in BUDGETS:
            p.error(f"label fractions are {', '.join(map(str, BUDGETS))}")
        for init in args.inits.split(","):
            run_one(args.checkpoint, init, fraction, args)


if __name__ == "__main__":
    main()
