"""Checkpoints: atomic save, safe load (weights only, never pickled code)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def atomic_save(obj, path: str | Path) -> Path:
    """Write to a temporary file beside ``path``, fsync, then rename over it: a crash at any
    moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load with ``weights_only=True``; a missing, truncated or corrupt file, or one that would
    need to run pickled code, raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} holds more than weights and was refused (loading it "
                              f"could run code): {str(e).splitlines()[0]}") from None
    except Exception as e:  # zip and pickle errors of many types all mean the same to a user
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} is a {type(obj).__name__}, not a dict of states")
    return obj
