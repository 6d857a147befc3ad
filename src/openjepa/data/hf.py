"""Hugging Face datasets on local disk (``data.dataset: huggingface``; the ``datasets`` extra): a
folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or Parquet / Arrow
files (one file, or a folder of them). Random access, memory-mapped: it trains, evaluates and
draws pictures like a folder of images. Images are decoded here (not by ``datasets``), so one
that cannot be decoded is skipped and counted like a broken file in a folder."""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch

from .images import DataError, UnreadableImage, load_image

LABEL_KEYS = ("label", "labels")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.dataset=huggingface needs the datasets package: pip install 'openjepa[hf-data]'"
        ) from None
    return datasets


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_dict.json", "state.json", "dataset_info.json"))


def hub_splits(files: list[Path]) -> list[str]:
    """The splits that Hub-layout file names give (``train-00000-of-00004.parquet``: train)."""
    named = (re.match(r"(.+?)-\d{5}-of-\d{5}\.", f.name) for f in files)
    return sorted({m.group(1) for m in named if m})


def open_hf(path: str | Path, split: str = "train"):
    """The ``datasets.Dataset`` at ``path``: a save_to_disk folder (``split`` of a DatasetDict), or
    Parquet / Arrow files."""
    datasets, path = _datasets(), Path(path)
    if not path.exists():
        raise DataError(f"Hugging Face dataset {path} not found")
    if is_hf_folder(path):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path} holds the splits {', '.join(ds)}, not {split!r} (data.split)")
            ds = ds[split]
        elif split != "train":
            raise DataError(
                f"{path} holds one Dataset, not a DatasetDict of splits: data.split={split!r} has nothing to choose "
                f"(leave it at its default, train)"
            )
        return ds
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.suffix in (".parquet", ".arrow"))
    # The Hub's layout: data/train-00000-of-00004.parquet, data/test-...: the files of the split.
    named = (
        [
            f
            for f in files
            if f.name.startswith(f"{split}-")
            or f.name.startswith(f"{split}.")
            or split in f.relative_to(path).parts[:-1]
        ]
        if path.is_dir()
        else files
    )
    if named:
        files = named
    elif files and path.is_dir():
        found = hub_splits(files)  # a folder of unnamed files is the train split's; named ones are not
        if split != "train" or found:
            raise DataError(
                f"{path} has no files of the split {split!r} (data.split)"
                + (f"; its files are of the splits {', '.join(found)}" if found else ": its file names name no split")
            )
    if not files:
        raise DataError(f"{path} is neither a save_to_disk folder nor Parquet / Arrow files")
    try:
        if files[0].suffix == ".parquet":  # converted once into the datasets cache (HF_DATASETS_CACHE)
            return datasets.Dataset.from_parquet([str(f) for f in files])
        return datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
    except Exception as e:  # pyarrow raises many types for files it cannot read
        raise DataError(
            f"{files[0]} cannot be read as a dataset file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None


class HFImages(torch.utils.data.Dataset):
    """Items (image [C, H, W] in [0, 1], label; -1 unlabelled) of a local Hugging Face dataset.
    ``image_key``: the image column ('' = the one column of images); ``label_key``: the label
    column ('' = 'label' or 'labels' where present). ``classes``: the label names where the column
    is a ClassLabel."""

    def __init__(
        self, path: str | Path, split: str = "train", image_key: str = "", label_key: str = "", in_chans: int = 3
    ):
        datasets = _datasets()
        ds = open_hf(path, split)
        self.root, self.in_chans = Path(path), in_chans
        images = [name for name, f in ds.features.items() if isinstance(f, datasets.Image)]
        if image_key and image_key not in ds.column_names:
            raise DataError(
                f"{path} has no column {image_key!r} (data.image_key); its columns: {', '.join(ds.column_names)}"
            )
        if not image_key and len(images) != 1:
            raise DataError(
                f"{path}: {'no' if not images else 'several'} image columns ({', '.join(images) or '-'}); "
                f"name the one to use with data.image_key (columns: {', '.join(ds.column_names)})"
            )
        self.image_key = image_key or images[0]
        if label_key and label_key not in ds.column_names:
            raise DataError(
                f"{path} has no column {label_key!r} (data.label_key); its columns: {', '.join(ds.column_names)}"
            )
        self.label_key = label_key or next((k for k in LABEL_KEYS if k in ds.column_names), None)
        if len(ds) == 0:
            raise DataError(f"{path} ({split}) holds no rows")
        feature = ds.features.get(self.label_key) if self.label_key else None
        self.classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else []
        if feature is not None and not (
            isinstance(feature, datasets.ClassLabel)
            or (isinstance(feature, datasets.Value) and feature.dtype.startswith("int"))
        ):
            raise DataError(
                f"{path}: the label column {self.label_key!r} holds {feature}, not integer class labels; "
                f"name another with data.label_key"
            )
        if isinstance(ds.features[self.image_key], datasets.Image):  # decoded by us: a bad image is skipped, not fatal
            ds = ds.cast_column(self.image_key, datasets.Image(decode=False))
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.ds[int(i)]
        value, name = row[self.image_key], f"{self.root}[{i}]"
        if isinstance(value, dict):  # {"bytes": ..., "path": ...}
            name = value.get("path") or name
            value = value.get("bytes") or value.get("path")
        if isinstance(value, bytes):
            value = io.BytesIO(value)
        if value is None:
            raise UnreadableImage(name, "no image in this row")
        label = row[self.label_key] if self.label_key else -1
        return load_image(value, self.in_chans, name=name), int(label) if label is not None else -1

    def fingerprint(self) -> str:
        """What a feature cache must match: the Arrow files' fingerprint that ``datasets`` keeps."""
        return f"{self.ds._fingerprint}:{self.image_key}:{self.label_key}"
