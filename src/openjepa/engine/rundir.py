"""Run folders and outputs: create a run, recognise one of ours and its kind, refuse anything else,
and the one rule for every file a command writes.

A run folder holds the ``.openjepa-run`` marker (which says the run's kind: pretrain, finetune or
decoder), ``checkpoints/``, the logs and a settings file. A command writes only into a folder that
does not exist yet, an empty one, or one of its own kind of runs (which it resumes): a folder
holding anything else is the user's, and a run of another kind is another command's; neither is
written into. A command's output file is never one of its inputs, never a checkpoint, and never a
file of a run folder other than the ones the command owns.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from ..errors import BadInput, ConfigError, check_output_file, check_writable_folder, printable

RUN_MARKER = ".openjepa-run"  # written into every run directory: what makes a folder one of ours
KINDS = ("pretrain", "finetune", "decoder")
NOUNS = {"pretrain": "pretraining", "finetune": "fine-tuning", "decoder": "decoder"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".safetensors", ".ckpt", ".bin")
RUNS_OWN = ("checkpoints", "tensorboard", "decoder")  # sub-folders no other command writes into


def is_run_dir(folder: Path) -> bool:
    """One of our run directories: the marker, or (runs from before the marker) a checkpoint in
    checkpoints/ (an empty checkpoints/ folder is common in other tools' folders)."""
    return (folder / RUN_MARKER).is_file() or any((folder / "checkpoints").glob("*.pt"))


def run_kind(folder: Path) -> str | None:
    """The kind its marker names; for runs from before the kind was written, the kind its files
    show (fine-tuning's settings.yaml, pretraining's config.yaml); None when nothing says."""
    try:
        lines = (folder / RUN_MARKER).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "kind" and value.strip() in KINDS:
            return value.strip()
    if (folder / "settings.yaml").is_file() or (folder / "checkpoints" / "best.pt").is_file():
        return "finetune"
    if (folder / "config.yaml").is_file():
        return "pretrain"
    return None


def check_run_dir(run_dir: Path, what: str = "logging.folder", allow: tuple[str, ...] = (), kind: str = "pretrain"):
    """A run directory (``what``: ``logging.folder``, or a command's ``--out``) must be a folder that
    does not exist yet, an empty one (but for the names in ``allow``), or one of our runs of this
    ``kind`` (which is resumed). A folder holding anything else is the user's, a run of another kind
    another command's: neither is written into."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{what} {run_dir} is a file, not a folder")
    if not run_dir.is_dir():
        check_writable_folder(run_dir, what)
        return
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {run_dir} cannot be written (no permission)")
    if is_run_dir(run_dir):
        found = run_kind(run_dir)
        if found is not None and found != kind:
            raise ConfigError(
                f"{what} {run_dir} holds a {NOUNS[found]} run, not a {NOUNS[kind]} checkpoint: give a new folder (a "
                f"command never writes into another kind of run)"
            )
        return
    found = sorted(p.name for p in run_dir.iterdir() if p.name not in allow)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ConfigError(
            f"{what} {run_dir} holds files that are not an openjepa run ({shown}); "
            f"give a new or empty folder (a run never writes into a folder it did not make)"
        )


def make_run_dir(run_dir: Path, what: str = "logging.folder", kind: str = "pretrain") -> None:
    """Create the folder, its marker (naming the ``kind``) and ``checkpoints/`` (all kept when they exist)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = run_dir / RUN_MARKER
        if not marker.exists():
            marker.write_text(f"openjepa run directory (openjepa {_version()})\nkind: {kind}\n")
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {run_dir} cannot be written: {e.strerror or e}") from None


def enclosing_run(path: Path) -> Path | None:
    """The run folder ``path`` lies in (at any depth), or None."""
    for folder in Path(os.path.abspath(path)).parents:
        if (folder / RUN_MARKER).is_file():
            return folder
    return None


def check_output(path, what: str, reads=(), suffixes: tuple[str, ...] = (), owned: tuple[str, ...] = ()) -> Path:
    """The one rule for a file a command writes, checked before any work: of one of ``suffixes``
    (when given); not one of the files the command ``reads``; not a checkpoint; and inside a run
    folder, one of the names the command ``owns`` there (globs relative to the run, e.g.
    ``eval/*.json``) or a new file outside the run's own sub-folders. Then: not a directory, in a
    folder that can be written."""
    path = Path(path)
    shown = printable(path)
    if path.is_dir():
        raise BadInput(f"{what} {shown} is a directory; give a file name")
    if suffixes and not path.name.lower().endswith(suffixes):
        raise BadInput(f"{what} {shown}: give a file name ending in {' or '.join(suffixes)}")
    if path.name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise BadInput(f"{what} {shown} would be written over as a checkpoint file: give another name")
    target = os.path.realpath(path)
    for source in reads:
        if source is not None and os.path.realpath(source) == target:
            raise BadInput(f"{what} {shown} is a file this command reads: write the output elsewhere")
    run = enclosing_run(path)
    if run is not None:
        inside = Path(os.path.relpath(os.path.abspath(path), run))
        mine = any(fnmatch.fnmatch(inside.as_posix(), pattern) for pattern in owned)
        if not mine and (inside.parts[0] in RUNS_OWN or path.exists()):
            raise BadInput(
                f"{what} {shown} is a file of the run {printable(run)} (its checkpoints, logs and settings are the "
                f"run's own): write the output elsewhere"
            )
    return check_output_file(path, what)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: a crash
    leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _version() -> str:
    from ..version import __version__

    return __version__
