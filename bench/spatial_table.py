"""The spatial table of BENCHMARKS.md from ``bench/spatial.sh`` folders: one row per encoder
(each folder's encoder, then its random-init twin and raw pixels at its input size), Clevr-like count and dist accuracy
(linear, kNN@20, attentive, %), seg mIoU (%), depth RMSE and delta1 (%).

    python bench/spatial_table.py runs/spatial/scenes_cpu runs/spatial/other [--names "A;B"]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openjepa.evaluate import headline

COLUMNS = [
    ("count", "linear"),
    ("count", "knn@20"),
    ("count", "attentive"),
    ("dist", "linear"),
    ("dist", "knn@20"),
    ("dist", "attentive"),
    ("dense", "seg mIoU"),
    ("dense", "depth RMSE"),
    ("dense", "depth δ1"),
]


def rows_of(folder: Path, name: str) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for task in ("count", "dist", "dense"):
        path = folder / f"{task}.json"
        if not path.exists():
            continue
        for encoder, result in json.loads(path.read_text())["results"].items():
            label = f"{name}: {encoder}" if encoder in ("random", "pixels") else name
            for key, value in headline(result).items():
                rows.setdefault(label, {})[(task, key)] = value
    return rows


def cell(key: tuple[str, str], value) -> str:
    if value is None:
        return "–"
    if key[1] == "depth RMSE":
        return f"{value:.3f}"
    return f"{100 * value:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--names", default=None, help="row names separated by ';' (default: the folders' names)")
    a = p.parse_args()
    names = a.names.split(";") if a.names else [f.name for f in a.folders]
    table: dict[str, dict] = {}
    for folder, name in zip(a.folders, names):
        for label, row in rows_of(folder, name).items():
            table[label] = row
    header = [f"{task} {metric}" for task, metric in COLUMNS]
    print("| encoder | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(cell(k, row.get(k)) for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
