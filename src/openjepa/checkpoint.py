"""Checkpoints: atomic save, safe load (weights only, never pickled code)."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .errors import BadInput

PRETRAIN_FORMAT = "openjepa"  # a pretraining checkpoint (pretrain.state)
FINETUNE_FORMAT = "openjepa-finetune"  # a fine-tuning checkpoint (finetune.run)
DECODER_FORMAT = "openjepa-decoder"  # a generative decoder fitted on a run (decoder.run)


class CheckpointError(BadInput):
    """A checkpoint that cannot be used; the message names the file."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file that exists and can be opened but is not a readable checkpoint
    (truncated, corrupt, or not a torch file)."""


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


def _what_was_refused(message: str) -> str:
    """The line of torch's refusal that names the object (a GLOBAL), without its advice to load
    with ``weights_only=False``: never the thing to do with a file of unknown origin."""
    named = re.search(r"GLOBAL ([\w.]+)", message)
    return f": it would import and call {named.group(1)}" if named else ""


KINDS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
         (b"RIFF", "a WebP image"), (b"\x1f\x8b", "a gzip file"), (b"<", "an HTML or XML file"),
         (b"{", "a JSON file"), (b"[", "a JSON file"))  # fmt: skip


def not_a_checkpoint(path: Path) -> str | None:
    """What the file is, when its first bytes show it is not a PyTorch checkpoint (torch's zip
    format, or the legacy pickle); None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return None
    if not head:
        return "an empty file"
    stripped = head.lstrip()
    kind = next((name for magic, name in KINDS if head.startswith(magic) or stripped.startswith(magic)), None)
    if kind is None and len(head) >= 8 and head[8:10] == b'{"':
        kind = "a safetensors file (export it back with openjepa's loaders: give its folder)"
    return kind or "not a PyTorch file"


def load_checkpoint(path: str | Path) -> dict:
    """Load with ``weights_only=True``, memory-mapped (``mmap=True``: the tensors are read from the
    file as they are used, so N processes on a node share the page cache instead of each holding a
    full copy). A missing or unreadable file, a truncated or corrupt one, or one that would need to
    run pickled code raises CheckpointError naming it and saying which."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        kind = not_a_checkpoint(path)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    if kind is not None:
        raise CorruptCheckpoint(f"checkpoint {path} is {kind}, not a PyTorch checkpoint")
    try:
        # mmap needs torch's zip format; an older (legacy) file is read whole
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} holds more than weights and was refused (loading it "
            f"could run code){_what_was_refused(str(e))}"
        ) from None
    except OSError as e:  # permission, I/O error: the file may be fine, the reading is not
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    except Exception as e:  # zip and pickle errors of many types: the bytes are not a whole checkpoint
        raise CorruptCheckpoint(
            f"checkpoint {path} cannot be read (truncated or corrupt?): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(obj, dict):
        raise CorruptCheckpoint(f"checkpoint {path} is a {type(obj).__name__}, not a dict of states")
    return obj
