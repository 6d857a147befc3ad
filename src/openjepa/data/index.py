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

INDEX_VERSION = 2  # 2: symbolic links to folders are followed (once each), and the ones left out recorded
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


def scan(root: Path, extensions: tuple[str, ...]) -> tuple[list[str], dict[str, int], list[str]]:
    """(image paths relative to ``root``, in sorted path order; {directory: mtime_ns} of every
    directory visited; the links to folders left out). A symbolic link to a folder is followed,
    as users expect of a data folder, but each real folder is read once: a link back to a folder
    already read (a loop, or a second way to the same folder) is left out, and listed."""
    names, dirs, left_out, seen, todo = [], {}, [], set(), [""]
    while todo:
        rel = todo.pop()
        folder = root / rel if rel else root
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:
            left_out.append(rel)
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[rel] = st.st_mtime_ns
        with os.scandir(folder) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    is_dir = entry.is_dir()  # through a link too
                except OSError:  # a broken link
                    continue
                if is_dir:
                    todo.append(name)
                elif os.path.splitext(entry.name)[1].lower() in extensions and entry.is_file():
                    names.append(name)
    names.sort(key=lambda n: n.split("/"))  # the order of sorted Path objects
    return names, dirs, sorted(left_out)


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


def _say_left_out(root: Path, left_out: list[str]) -> None:
    if left_out:
        log.warning(
            "%s: %d linked folder(s) left out, each a second way to a folder already read (a link loop, or two links "
            "to one folder): %s",
            root,
            len(left_out),
            ", ".join(left_out[:3]) + (" ..." if len(left_out) > 3 else ""),
        )


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
    key = f"{INDEX_VERSION}\0{root}\0{','.join(extensions)}".encode("utf-8", "surrogateescape")
    key = hashlib.sha1(key).hexdigest()[:20]
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
                        _say_left_out(root, [str(n) for n in cached["left_out"]])
                        return table, [str(c) for c in cached["classes"]], cached["labels"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from another version: scanned again
        names, dirs, left_out = scan(root, extensions)
        _say_left_out(root, left_out)
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
                left_out=np.array(left_out, dtype=str),
            )
            os.replace(tmp, path)
        return table, classes, labels
