"""Run folders: create one, recognise one of ours, refuse anything else.

A run folder holds the ``.openjepa-run`` marker, ``checkpoints/``, the logs and a settings file.
A command writes only into a folder that does not exist yet, an empty one, or one of its runs
(which it resumes): a folder holding anything else is the user's and is never written into.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, check_writable_folder

RUN_MARKER = ".openjepa-run"  # written into every run directory: what makes a folder one of ours


def is_run_dir(folder: Path) -> bool:
    """One of our run directories: the marker, or (runs from before the marker) a checkpoint in
    checkpoints/ (an empty checkpoints/ folder is common in other tools' folders)."""
    return (folder / RUN_MARKER).is_file() or any((folder / "checkpoints").glob("*.pt"))


def check_run_dir(run_dir: Path, what: str = "logging.folder", allow: tuple[str, ...] = ()) -> None:
    """A run directory (``what``: ``logging.folder``, or a command's ``--out``) must be a folder that
    does not exist yet, an empty one (but for the names in ``allow``), or one of our runs (which is
    resumed). A folder holding anything else is the user's and is never written into."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{what} {run_dir} is a file, not a folder")
    if not run_dir.is_dir():
        check_writable_folder(run_dir, what)
        return
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {run_dir} cannot be written (no permission)")
    if is_run_dir(run_dir):
        return
    found = sorted(p.name for p in run_dir.iterdir() if p.name not in allow)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(
            f"{what} {run_dir} holds files that are not an openjepa run ({shown}); "
            f"give a new or empty folder (a run never writes into a folder it did not make)"
        )


def make_run_dir(run_dir: Path, what: str = "logging.folder") -> None:
    """Create the folder, its marker and ``checkpoints/`` (all kept when they exist)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = run_dir / RUN_MARKER
        if not marker.exists():
            marker.write_text(f"openjepa run directory (openjepa {_version()})\n")
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {run_dir} cannot be written: {e.strerror or e}") from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a crash
    leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _version() -> str:
    from ..version import __version__

    return __version__
