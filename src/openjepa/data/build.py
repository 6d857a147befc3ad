"""``build_dataset``: the dataset a config's ``data`` section names."""

from __future__ import annotations

from pathlib import Path

import torch

from .images import DataError, UnreadableImage
from .scenes import SceneDataset
from .sources import ArrayDataset, ImageFolder, SyntheticDataset, fashion_mnist


def build_dataset(data_cfg, split: str = "train") -> torch.utils.data.Dataset:
    """The dataset a config names. Raises DataError (naming the path) before any compute is spent."""
    d = data_cfg
    if d.dataset == "fashion_mnist":
        return fashion_mnist(d.root_path or None, split, d.in_chans)
    if d.dataset == "synthetic":
        return SyntheticDataset(d.synthetic_size, d.crop_size, d.in_chans)
    if d.dataset == "scenes":
        return SceneDataset(d.scenes_size, d.crop_size, d.scenes_seed, d.scenes_task, in_chans=d.in_chans)
    if not d.root_path:
        raise DataError(f"data.root_path is empty: data.dataset={d.dataset} reads its images from there")
    if d.dataset == "webdataset":
        from .shards import TarShards

        return TarShards(d.root_path, d.samples_per_epoch, d.in_chans, d.shuffle_buffer)
    if d.dataset == "huggingface":
        from .hf import HFImages

        return HFImages(d.root_path, d.split, d.image_key, d.label_key, d.in_chans)
    root = Path(d.root_path) / d.image_folder if d.image_folder else Path(d.root_path)
    return ImageFolder(root, d.in_chans)


PROBED = 256  # images tried before a data set is called unreadable


def check_readable(dataset, what: str) -> None:
    """DataError (before anything is written) when none of the first ``PROBED`` images of
    ``dataset`` can be read: a run on it could learn nothing. Tar shards: none of them holds a
    readable image. Data made in memory (arrays, synthetic images, scenes) is always readable."""
    if isinstance(dataset, (ArrayDataset, SyntheticDataset, SceneDataset)):
        return
    if hasattr(dataset, "stream"):  # tar shards: no random access
        if not len(dataset.head(1, 8)):
            raise DataError(f"{what}: no shard holds a readable image; nothing could be learned from them")
        return
    tried, first = min(len(dataset), PROBED), None
    for i in range(tried):
        try:
            dataset[i]
            return
        except UnreadableImage as e:
            first = first or e.path
    raise DataError(
        f"{what}: none of the first {tried} image(s) can be read (e.g. {first}); nothing could be learned from them"
    )
