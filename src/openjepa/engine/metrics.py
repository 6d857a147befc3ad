"""What a run reports while it trains: the log file, the CSV log, TensorBoard, the progress bar,
and the window of sums kept on the device between log rows (one host read-back per row)."""

from __future__ import annotations

import csv
import logging
import logging.handlers
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..distributed import World
from .signals import TrainingError

log = logging.getLogger("openjepa")


LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")


def _file_handler(path: Path) -> logging.FileHandler:
    """A log file that takes any path in its lines (names that are not UTF-8 come out escaped)."""
    handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(LOG_FORMAT)
    return handler


def setup_logging(run_dir: Path | None, name: str = "train.log", hold: bool = False) -> None:
    """stderr and ``run_dir/name``; None (a process other than 0): warnings to stderr only.
    ``hold``: no file yet, the lines kept until ``write_held_log`` names it (a resume that may still
    be refused writes nothing)."""
    log.setLevel(logging.INFO if run_dir is not None or hold else logging.WARNING)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    handlers = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        handlers.append(_file_handler(run_dir / name))
    elif hold:
        handlers.append(logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1))
    for handler in handlers:
        handler.setFormatter(LOG_FORMAT)
        log.addHandler(handler)
    log.propagate = False


def write_held_log(run_dir: Path, name: str = "train.log") -> None:
    """Open ``run_dir/name`` and write into it the lines held since ``setup_logging(hold=True)``."""
    file_handler = _file_handler(run_dir / name)
    for held in [h for h in log.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        held.setTarget(file_handler)
        held.flush()
        log.removeHandler(held)
        held.close()
    log.addHandler(file_handler)


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: the device's allocator on CUDA, the process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _whole_number(text) -> bool:
    try:
        int(text)
        return True
    except (TypeError, ValueError):
        return False


def read_log(path: Path, columns: tuple[str, ...] | None = None) -> tuple[list[dict], list[int]]:
    """The whole rows of a CSV log (as dicts keyed by its header) and the line numbers of the rows
    left out: a garbage line, a row cut short, the NUL bytes a crash leaves. The header is the first
    line naming a ``step`` column; a file whose header is broken is read with ``columns``. A file
    that is not text gives no rows."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError:
        return [], []
    rows, bad, header = [], [], None
    for number, line in enumerate(lines, start=1):
        if b"\x00" in line:  # what a crash leaves: padding, or a row half overwritten
            bad.append(number)
            continue
        fields = next(csv.reader([line.decode("utf-8", errors="replace").rstrip("\r")]), [])
        if not fields or fields == [""]:
            continue
        if header is None:
            if "step" in fields and not any(_whole_number(f) for f in fields):
                header = fields
                continue
            header = list(columns) if columns else None
            if header is None:
                bad.append(number)
                continue
        if len(fields) != len(header) or not _whole_number(fields[header.index("step")]):
            bad.append(number)
            continue
        rows.append(dict(zip(header, fields)))
    return rows, bad


class CSVLog:
    """A CSV log (log.csv, monitor.csv): the header written once; a resumed run appends, dropping
    rows past its step. A damaged file keeps its whole rows; the damaged lines are named in the log
    and the file as it was is kept beside it (``.damaged``). ``rows`` holds the rows kept."""

    def __init__(self, path: Path, resume_step: int, columns: tuple[str, ...]):
        self.path, self.columns = path, columns
        self.rows, bad = read_log(path, columns) if path.exists() else ([], [])
        self.rows = [r for r in self.rows if int(r["step"]) <= resume_step]
        if bad:
            kept = path.with_name(path.name + ".damaged")
            kept.write_bytes(path.read_bytes())
            shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            log.warning(
                "%s: %d damaged line(s) left out (line %s); the file as it was is %s", path, len(bad), shown, kept
            )
        with open(path, "w", newline="") as f:  # rewrite without rows from after the checkpoint
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)


def tensorboard(folder: Path, start_step: int, enabled: bool = True):
    """A TensorBoard writer for ``folder`` that drops events past ``start_step`` (a resumed run's
    future); None when ``enabled`` is false."""
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder), purge_step=start_step or None)


def progress_bar(total: int, initial: int, enabled: bool):
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


class Window:
    """Sums between log rows, kept on the device: the loss (per batch), the images, and any other
    values a task adds (device tensors or numbers). ``read`` brings them to the host once, averaged
    over processes (device tensors) and reset; ``check_finite`` stops a run whose loss was not
    finite before it logs or saves past it."""

    def __init__(self, device: torch.device, world: World | None = None):
        self.device, self.world = device, world or World()
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self._reset()

    def _reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.sums: dict[str, object] = {}
        self.counts: dict[str, int] = {}
        self.batches = self.images = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int, **values) -> None:
        """One batch: its loss (a device scalar), its image count and other values to sum."""
        self.loss += loss.float()
        self.finite &= torch.isfinite(loss)
        self.batches += 1
        self.images += images
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def check_finite(self, message: str) -> None:
        """TrainingError(``message``) on every process if the loss was not finite on one of them."""
        if self.world.any(not bool(self.finite), self.device):
            raise TrainingError(message)

    def read(self) -> dict:
        """{'batches', 'images', 'loss' (mean per batch; None without a batch), 'img_per_s' (all
        processes), the other sums ('counts': how many batches gave each)}; then reset."""
        for value in [self.loss, *(v for v in self.sums.values() if isinstance(v, torch.Tensor))]:
            self.world.mean(value)
        out = {
            "batches": self.batches,
            "images": self.images,
            "loss": float(self.loss) / self.batches if self.batches else None,
            "img_per_s": self.images * self.world.size / max(time.perf_counter() - self.start, 1e-9),
            "counts": dict(self.counts),
            **{k: float(v) if isinstance(v, torch.Tensor) else v for k, v in self.sums.items()},
        }
        self._reset()
        return out
