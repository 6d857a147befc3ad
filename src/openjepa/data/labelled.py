"""Labelled splits for evaluation and fine-tuning: the one place that reads which splits a labelled
data set has (Fashion-MNIST's train / test, a folder's ``train/``, ``val/`` and ``test/`` class
folders, a Hugging Face DatasetDict folder's splits) and the labels and class names of a split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .hf import HFImages, is_hf_folder
from .images import DataError
from .scene_sets import scene_eval_splits, scenes_task
from .sources import FMNIST_CLASSES, ImageFolder, fashion_mnist


def hf_split_names(folder: Path) -> list[str]:
    """The splits a ``save_to_disk`` DatasetDict folder lists (none for a single Dataset)."""
    index = folder / "dataset_dict.json"
    return json.loads(index.read_text()).get("splits", []) if index.exists() else []


def load_eval_data(data: str, in_chans: int, root: str | None = None, image_size: int = 64):
    """(train, test) labelled datasets: ``fashion_mnist`` (its own train / test split), the
    procedural scenes (``scenes:count``, ``scenes:dist``, drawn at ``image_size``), a folder with
    ``train/`` and ``val/`` (or ``test/``) sub-folders, each of class sub-folders, or a Hugging Face
    DatasetDict folder (save_to_disk) with a ``train`` and a ``validation`` or ``test`` split."""
    if data == "fashion_mnist":
        return fashion_mnist(root, "train", in_chans), fashion_mnist(root, "test", in_chans)
    task = scenes_task(data)
    if task == "none":
        raise DataError(f"--data {data}: the classification probes need a task's labels: scenes:count or scenes:dist")
    if task is not None:
        return scene_eval_splits(task, image_size, in_chans)
    folder = Path(data)
    if not folder.is_dir():
        raise DataError(f"evaluation data {data!r} is neither 'fashion_mnist' nor a folder")
    if is_hf_folder(folder):
        return _hf_eval_splits(folder, in_chans)
    test_dir = next((folder / n for n in ("val", "test") if (folder / n).is_dir()), None)
    if not (folder / "train").is_dir() or test_dir is None:
        raise DataError(f"evaluation folder {folder} needs train/ and val/ (or test/) sub-folders of class folders")
    train, test = ImageFolder(folder / "train", in_chans), ImageFolder(test_dir, in_chans)
    for split in (train, test):
        require_classes(split)
    if train.classes != test.classes:
        raise DataError(f"{folder}: train/ and {test_dir.name}/ have different class folders")
    if len(train.classes) < 2:
        raise DataError(f"{folder} has one class ({train.classes[0]}): a classifier needs at least two")
    return train, test


def require_classes(split) -> None:
    """DataError unless a folder split's images are all in class sub-folders, saying which are not."""
    if getattr(split, "classes", None) or not isinstance(split, ImageFolder):
        return
    names = [split.files.name(i) for i in range(len(split))]
    loose = [n for n in names if "/" not in n]
    if len(loose) < len(names):
        raise DataError(
            f"{split.root} has {len(loose)} image(s) directly in it (e.g. {loose[0]}) beside its class folders: "
            f"every image of a labelled split must be in a class folder (move or remove them)"
        )
    raise DataError(f"{split.root} has no class sub-folders: labels are needed")


def _hf_eval_splits(folder: Path, in_chans: int):
    splits = hf_split_names(folder)
    test = next((s for s in ("validation", "val", "test") if s in splits), None)
    if "train" not in splits or test is None:
        raise DataError(
            f"evaluation dataset {folder} needs a train and a validation (or test) split; it has "
            f"{', '.join(splits) or 'none'}"
        )
    train_set, test_set = HFImages(folder, "train", in_chans=in_chans), HFImages(folder, test, in_chans=in_chans)
    if train_set.label_key is None:
        raise DataError(f"{folder} has no label column ('label' or 'labels'): labels are needed for evaluation")
    return train_set, test_set


def load_three_splits(data: str, in_chans: int):
    """(train, val, test) when ``data`` names a split to choose an epoch on and another to report:
    a folder with train/, val/ and test/ class folders, or a DatasetDict folder with train, validation
    (or val) and test splits; None otherwise."""
    folder = Path(data)
    if data == "fashion_mnist" or not folder.is_dir():
        return None
    if is_hf_folder(folder):
        names = hf_split_names(folder)
        val = next((n for n in ("validation", "val") if n in names), None)
        if "train" not in names or val is None or "test" not in names:
            return None
        return tuple(HFImages(folder, name, in_chans=in_chans) for name in ("train", val, "test"))
    if all((folder / n).is_dir() for n in ("train", "val", "test")):
        return tuple(ImageFolder(folder / n, in_chans) for n in ("train", "val", "test"))
    return None


def labels_of(dataset) -> torch.Tensor:
    """The labels of a dataset without decoding its images where it keeps them (folders, arrays,
    Hugging Face datasets)."""
    labels = getattr(dataset, "labels", None)
    if labels is None and getattr(dataset, "label_key", None):
        labels = dataset.ds[dataset.label_key]
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return torch.as_tensor(np.asarray(labels, dtype=np.int64))


def classes_of(dataset, data: str, labels: torch.Tensor) -> list[str]:
    """The class names of a labelled split: its own, Fashion-MNIST's, or the label numbers."""
    names = getattr(dataset, "classes", None)
    if names:
        return [str(c) for c in names]
    if data == "fashion_mnist":
        return list(FMNIST_CLASSES)
    return [str(i) for i in range(int(labels.max()) + 1)]
