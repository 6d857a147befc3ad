"""The index of a folder of images, built once and cached: every image's relative path (one bytes
buffer and an offsets array, no Python object per file, so loader workers forked from the process
share it untouched) and its class. At ImageNet scale (1.28M files) a scan of the shared file system
is what every process of every run paid at start-up; the index is kept in
``$OPENJEPA_CACHE`` (default ``~/.cache/openjepa``)/folder-index, keyed by the folder, and is
valid while no directory under it changed (a file added, removed or renamed changes its
directory's modification time). Processes that start together wait for the first one's scan.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

INDEX_VERSION = 1
log = logging.getLogger("openjepa")


class PathTable:
    """N paths under ``root`` held as one UTF-8 buffer and N+1 offsets; ``table[i]`` is a Path."""

    def __init__(self, root: Path, blob: np.ndarray, offsets: np.ndarray):
        self.root, self.blob, self.offsets = root, blob, offsets

    @classmethod
    def from_strings(cls, root: Path, names: list[str]) -> PathTable:
        encoded = [n.encode("utf-8", "surrogateescape") for n in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(root, np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def name(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __getitem__(self, i: int) -> Path:
        return self.root / self.name(i)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def scan(root: Path, extensions: tuple[str, ...]) -> tuple[list[str], dict[str, int]]:
    """(image paths relative to ``root``, in sorted path order; {directory: mtime_ns} of every
    directory visited)."""
    names, dirs, todo = [], {}, [""]
    while todo:
        rel = todo.pop()
        folder = root / rel if rel else root
        dirs[rel] = folder.stat().st_mtime_ns
        with os.scandir(folder) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):  # as rglob: a symlinked folder is not entered (no loops)
                    todo.append(name)
                elif os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
                    names.append(name)
    names.sort(key=lambda n: n.split("/"))  # the order of sorted Path objects
    return names, dirs


def labels_of(names: list[str]) -> tuple[list[str], np.ndarray]:
    """(classes, labels): class sub-folders when every image is in one (sorted names), else
    unlabelled (-1)."""
    tops = [n.split("/", 1)[0] if "/" in n else None for n in names]
    if not names or any(t is None for t in tops):
        return [], np.full(len(names), -1, dtype=np.int32)
    classes = sorted(set(tops))
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[t] for t in tops], dtype=np.int32)


def cache_dir() -> Path:
    return Path(os.environ.get("OPENJEPA_CACHE", Path.home() / ".cache" / "openjepa")) / "folder-index"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path`` (processes starting together scan once); none where locks fail."""
    try:
        import fcntl

        handle = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # e.g. ENOLCK on NFS: each process scans for itself
            pass
        yield
    finally:
        handle.close()


def _valid(cached, root: Path) -> bool:
    if int(cached["version"]) != INDEX_VERSION or str(cached["root"]) != str(root):
        return False
    for rel, mtime in zip(cached["dirs"], cached["mtimes"]):
        try:
            if (root / str(rel)).stat().st_mtime_ns != int(mtime):
                return False
        except OSError:
            return False
    return True


def folder_index(root: Path, extensions: tuple[str, ...]) -> tuple[PathTable, list[str], np.ndarray]:
    """(paths, classes, labels) of the images under ``root``, from the cached index when it is still
    valid, else from a scan (then cached)."""
    root = root.resolve()
    key = hashlib.sha1(f"{INDEX_VERSION}\0{root}\0{','.join(extensions)}".encode()).hexdigest()[:20]
    folder = cache_dir()
    path = folder / f"{key}.npz"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    with _locked(folder / f"{key}.lock") if writable else contextlib.nullcontext():
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as cached:
                    if _valid(cached, root):
                        table = PathTable(root, cached["blob"], cached["offsets"])
                        return table, [str(c) for c in cached["classes"]], cached["labels"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from another version: scanned again
        names, dirs = scan(root, extensions)
        classes, labels = labels_of(names)
        table = PathTable.from_strings(root, names)
        if writable and names:
            tmp = folder / f".{key}.{os.getpid()}.npz"
            np.savez(
                tmp,
                version=INDEX_VERSION,
                root=str(root),
                blob=table.blob,
                offsets=table.offsets,
                dirs=np.array(list(dirs), dtype=str),
                mtimes=np.array(list(dirs.values()), dtype=np.int64),
                classes=np.array(classes, dtype=str),
                labels=labels,
            )
            os.replace(tmp, path)
        return table, classes, labels
