"""Training curves from a run's log.csv (and monitor.csv where present), as one PNG."""

from __future__ import annotations

import io
from pathlib import Path

from ..engine.metrics import read_log
from ..errors import BadInput

CURVES = (
    ("loss", "log.csv"),
    ("target_std", "log.csv"),
    ("image_rankme", "log.csv"),
    ("image_spread", "log.csv"),
    ("lr", "log.csv"),
    ("wd", "log.csv"),
    ("momentum", "log.csv"),
    ("knn_acc", "monitor.csv"),
    ("rankme", "monitor.csv"),
)


def read_columns(path: Path) -> dict[str, list[float]]:
    """The numeric columns of a CSV log's whole rows (damaged lines left out, as a resumed run
    leaves them: ``engine.read_log``); {} for a missing, empty or unreadable file."""
    rows, _ = read_log(path) if path.is_file() else ([], [])
    cols = {}
    for key in rows[0].keys() if rows else ():
        try:
            cols[key] = [float(r[key]) if r[key] not in ("", "None", None) else float("nan") for r in rows]
        except (ValueError, TypeError):
            continue
    return cols


def curves_png(run_dir: str | Path) -> bytes:
    """A PNG of every curve the run has (loss, target spread, LR, WD, EMA momentum, kNN, RankMe)
    against the optimiser step. Raises BadInput without a readable log.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / "log.csv").exists():
        raise BadInput(f"{run_dir / 'log.csv'} not found: is {run_dir} a run directory?")
    tables = {name: read_columns(run_dir / name) for name in ("log.csv", "monitor.csv")}
    panels = [(key, tables[src]) for key, src in CURVES if "step" in tables[src] and tables[src].get(key)]
    if not panels:
        raise BadInput(
            f"{run_dir / 'log.csv'} holds no rows of a training log (empty, or not written by openjepa train)"
        )
    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (key, table) in zip(axes.flat, panels):
        ax.plot(table["step"], table[key], marker="o" if len(table[key]) < 20 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
