"""The procedural scenes as evaluation data: ``--data scenes:count`` or ``scenes:dist`` (the
classification probes, VTAB's two CLEVR tasks) and ``--data scenes`` (the dense probes:
segmentation by shape and depth). Training scenes are indices 0.. of the seed (what pretraining on
``data.dataset: scenes`` reads); test scenes start at ``TEST_FIRST``, far from any training set."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .images import DataError, to_channels
from .scenes import SEGMENTATIONS, TASK_CLASSES, SceneDataset

TEST_FIRST = 10**9  # the first test scene: no pretraining set of scenes reaches it
EVAL_SIZES = (10_000, 2_000)  # training and test scenes of the classification probes
DENSE_SIZES = (2_000, 500)  # of the dense probes (each image is thousands of labelled pixels)
DENSE_SEG = "shape"  # segmentation classes: 0 background (floor, sky), 1 sphere, 2 cube, 3 cylinder


def scenes_task(data: str) -> str | None:
    """'scenes' -> 'none', 'scenes:count' -> 'count'; None when ``data`` does not name scenes."""
    name, _, task = str(data).partition(":")
    if name != "scenes":
        return None
    task = task or "none"
    if task not in TASK_CLASSES:
        raise DataError(f"--data {data}: scenes take the task count or dist (scenes:count, scenes:dist), got {task!r}")
    return task


def scene_eval_splits(task: str, image_size: int, in_chans: int = 3, seed: int = 0, sizes=None):
    """(train, test) labelled scenes at ``image_size`` for ``task``, ``sizes`` of them (default
    ``EVAL_SIZES``)."""
    sizes = sizes or EVAL_SIZES
    train = SceneDataset(sizes[0], image_size, seed, task, in_chans=in_chans)
    return train, SceneDataset(sizes[1], image_size, seed, task, first=TEST_FIRST, in_chans=in_chans)


class SceneDense(torch.utils.data.Dataset):
    """Scenes as dense pairs: (image, {"seg": the ``DENSE_SEG`` classes, "depth": world units})."""

    def __init__(self, scenes: SceneDataset, seg: str = DENSE_SEG):
        self.scenes, self.seg = scenes, seg
        self.num_classes = len(SEGMENTATIONS[seg])
        self.classes = list(SEGMENTATIONS[seg])

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int):
        scene = self.scenes.scene(i)  # drawn once: the image and its maps
        image = to_channels(torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255.0), self.scenes.in_chans)
        seg = torch.from_numpy(scene.segmentation(self.seg)).long()
        return image, {"seg": seg, "depth": torch.from_numpy(scene.depth).float()}


def scene_dense_splits(image_size: int, in_chans: int = 3, seed: int = 0, sizes=None):
    """(train, test) dense scene pairs at ``image_size``, ``sizes`` of them (default ``DENSE_SIZES``)."""
    train, test = scene_eval_splits("none", image_size, in_chans, seed, sizes or DENSE_SIZES)
    return SceneDense(train), SceneDense(test)


def write_scene_folders(out: Path, n: int, task: str, image_size: int = 64, seed: int = 0, n_test: int | None = None):
    """The scenes as class folders for other tools: ``out/train/<class>/scene_<index>.png`` (``n`` of
    them, the training scenes) and ``out/test/<class>/...`` (``n_test``, default n / 5, the test
    scenes), the same images ``--data scenes:<task>`` evaluates. ``out`` must be new or empty."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(
            f"--out {out} {'is a file' if not out.is_dir() else 'is not empty'}: give a new or empty folder"
        )
    if task not in ("count", "dist"):
        raise DataError(f"--task must be count or dist, got {task!r}")
    n_test = max(1, n // 5) if n_test is None else n_test
    train, test = scene_eval_splits(task, image_size, 3, seed, (n, n_test))
    counts = {}
    for split, scenes in (("train", train), ("test", test)):
        for name in scenes.classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for i, label in enumerate(scenes.labels):
            image = scenes.scene(i).image
            Image.fromarray(image).save(out / split / scenes.classes[label] / f"scene_{scenes.first + i:010d}.png")
        counts[split] = len(scenes)
    return counts
