"""What the command line treats as the user's mistake. ``BadInput`` (and its subclasses
``ConfigError``, ``DataError``, ``CheckpointError``) is printed as one line with exit code 2;
any other exception is a bug or a failure of the machine and keeps its traceback."""

from __future__ import annotations

import os
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1  # training stopped on its own terms (e.g. a non-finite loss); the message says why
EXIT_BAD_INPUT = 2  # the input cannot be used; nothing was written or damaged
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM / SIGUSR1 / SIGUSR2 after saving; run the same command to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C after saving; run the same command to resume


class BadInput(ValueError):
    """An input (argument, config, file, folder) that cannot be used; the message names it."""


class ConfigError(BadInput):
    """A configuration or setting that cannot run; the message names the key and the problem."""


def printable(path) -> str:
    """A path as text that can be printed, logged or written anywhere: Linux names are bytes, and
    those that are not UTF-8 (or hold a newline) come out with backslash escapes (``\\xff``,
    ``\\n``) instead of breaking the writer."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\r", "\\r")


def check_output_file(path: str | Path, what: str) -> Path:
    """A file we are about to write: not a directory, in a folder that exists (or can be made)
    and can be written. Checked before the work starts, so a bad path costs nothing."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{what} {path} is a directory; give a file name")
    check_writable_folder(path.parent, f"the folder of {what} {path}")
    return path


def check_writable_folder(folder: str | Path, what: str) -> Path:
    """``folder`` exists and can be written, or can be created: its nearest existing ancestor is a
    writable directory."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise BadInput(f"{what} {folder} cannot be made: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {folder} cannot be written: no permission to write in {probe}")
    return folder


def set_default_mode(*paths: str | Path) -> None:
    """Give written files the mode an ordinary ``open`` would (0666 less the umask): some writers
    (safetensors, tempfile) create them 0600, which other users of a shared machine cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o666 & ~umask)
