"""Pooled features of every image of a folder, with their paths: the input of retrieval and
clustering.

Which features: the target (EMA) encoder's patch features after its final norm, averaged over the
patches (``pooling="mean"``) — what the paper evaluates and what ``openjepa eval`` probes, and
the better of the two encoders for frozen use (the context encoder was trained on masked inputs
only). ``pooling="last4"`` concatenates the averages of the last four blocks (4x the width; the
paper's ViT-H protocol), often a little better for linear models. A fine-tuned checkpoint
(``best.pt``) gives its fine-tuned encoder's features.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data import DataError, ImageFolder
from ..device import resolve_device
from ..engine import check_output
from ..errors import BadInput, printable, set_default_mode
from .features import extract, warn_skipped

log = logging.getLogger("openjepa")
POOLINGS = ("mean", "last4")
SUFFIXES = (".npz", ".parquet")


class _Indexed(torch.utils.data.Dataset):
    """A folder's images with their index in place of a label, so the features say which file they are of."""

    def __init__(self, folder: ImageFolder):
        self.folder, self.root = folder, folder.root

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        return self.folder[i][0], i


def embed(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    which: str = "target",
    pooling: str = "mean",
    batch_size: int = 256,
    num_workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> dict:
    """Write the pooled features of every readable image under ``data`` (searched recursively, any
    size: shorter side resized to the encoder's size, centre crop) to ``out``: ``.npz`` with
    ``features`` [N, D] float32 and ``paths`` (relative to ``data``), or ``.parquet`` with columns
    ``path`` and ``embedding`` (needs pyarrow). Unreadable images are left out and listed (in the
    ``.npz`` as ``skipped``, in a ``.skipped.txt`` beside a Parquet file). Returns a summary."""
    from ..interop import load_encoder

    out = check_output(out, "--out", reads=(checkpoint,), suffixes=SUFFIXES)
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise BadInput("--out *.parquet needs pyarrow (pip install pyarrow), or write a .npz") from None
    if pooling not in POOLINGS:
        raise BadInput(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if batch_size < 1 or num_workers < 0:
        raise BadInput(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    dev = resolve_device(device, "--device")
    if not Path(data).is_dir():
        raise DataError(f"--data {data} is not a folder of images")
    t0 = time.perf_counter()
    encoder = load_encoder(checkpoint, which).to(dev)
    folder = ImageFolder(data, encoder.in_chans)
    feats = extract(
        encoder,
        _Indexed(folder),
        batch_size=batch_size,
        num_workers=num_workers,
        progress=progress,
        desc="embed",
        precision=precision,
        last4=pooling == "last4",
    )
    warn_skipped(f"embed ({folder.root})", feats.skipped, len(folder))
    vectors = (feats.pooled if pooling == "mean" else feats.last4).numpy().astype(np.float32)
    paths = [folder.files.name(int(i)) for i in feats.labels]
    skipped = [os.path.relpath(p, folder.root) for p in feats.skipped]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        if out.suffix.lower() == ".npz":
            info = json.dumps(
                {"checkpoint": str(checkpoint), "which": which, "pooling": pooling, "size": list(encoder.img_size)}
            )
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    features=vectors,
                    paths=np.array(paths, dtype=str),
                    skipped=np.array(skipped, dtype=str),
                    info=np.array(info),
                )
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(
                {
                    "path": pa.array([printable(p) for p in paths], pa.string()),  # Parquet strings are UTF-8
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
                }
            )
            table = table.replace_schema_metadata(
                {"openjepa": json.dumps({"checkpoint": str(checkpoint), "which": which, "pooling": pooling})}
            )
            pq.write_table(table, tmp)
            listed = out.with_name(out.name + ".skipped.txt")
            if skipped:
                listed.write_text("".join(f"{printable(p)}\n" for p in skipped), encoding="utf-8")  # one line a file
            else:
                listed.unlink(missing_ok=True)  # a list from an earlier run would name files that are fine now
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    set_default_mode(out)
    summary = {
        "out": str(out),
        "images": len(paths),
        "skipped": len(skipped),
        "dim": int(vectors.shape[1]),
        "pooling": pooling,
        "which": which,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    log.info(
        "embedded %d image(s) of %s (%d unreadable, left out) as %d-d %s features: %s",
        len(paths),
        folder.root,
        len(skipped),
        vectors.shape[1],
        pooling,
        out,
    )
    return summary


__all__ = ["embed", "POOLINGS"]
