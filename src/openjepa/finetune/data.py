"""Fine-tuning's data: the labelled splits (the epoch chosen on one split, the result reported on
another), and the training items with their augmentations, every choice drawn from (seed, epoch,
position)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from ..data import DataError, PretrainTransform, UnreadableImage, generator_for, seed_for
from ..data.labelled import classes_of, labels_of, load_eval_data, load_three_splits, require_classes
from ..data.seeds import FT_AUGMENT, FT_RANDAUG, FT_SPLIT
from ..evaluate.linear import stratified_split
from .config import FinetuneConfig, randaugment


def subset_per_class(labels: torch.Tensor, indices: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """``fraction`` of ``indices`` class by class (at least one of each class), sorted."""
    g = generator_for(seed, FT_SPLIT)
    keep = []
    for c in labels[indices].unique():
        idx = indices[labels[indices] == c]
        n = max(1, round(fraction * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values


@dataclass
class Splits:
    train: object  # the dataset the fit and (when held out) val indices point into
    fit: torch.Tensor  # indices of the labelled training images trained on
    val: object  # a dataset
    test: object
    classes: list[str]
    held_out: bool  # val carved out of the labelled training images
    unlabelled: int  # training items without a label (-1), left out


def make_splits(data: str, in_chans: int, root: str | None, ft: FinetuneConfig) -> Splits:
    """The labelled training images (``labels_fraction`` of the training split's, class by class),
    the split that picks the best epoch and the split reported. Without a named validation split,
    ``val_fraction`` of the labelled images (at least one per class) is held out for it, so a low-shot
    run chooses its epoch with the labels it was given and no others."""
    named = load_three_splits(data, in_chans)
    if named:
        train, val, test = named
    else:
        (train, test), val = load_eval_data(data, in_chans, root), None
    for split in (train, val, test):
        require_classes(split)
    labels = labels_of(train)
    classes = classes_of(train, data, labels)
    if len(classes) < 2:
        raise DataError(f"{data} has {len(classes)} class(es): a classifier needs at least two")
    for name, split in (("validation", val), ("test", test)):
        if split is None:
            continue
        if getattr(split, "classes", None) and getattr(train, "classes", None) and split.classes != train.classes:
            raise DataError(f"{data}: the training and {name} splits have different classes")
        found = labels_of(split)
        if (found < 0).any() or (found >= len(classes)).any():
            raise DataError(
                f"{data}: the {name} split has {int((found < 0).sum())} unlabelled item(s) and "
                f"{int((found >= len(classes)).sum())} with a label outside the {len(classes)} classes: "
                f"every image scored needs its label"
            )
    if (labels >= len(classes)).any():
        raise DataError(f"{data}: training labels outside the {len(classes)} classes ({int(labels.max())})")
    labelled = (labels >= 0).nonzero().flatten()
    if len(labelled) < 2:
        raise DataError(f"{data}: the training split has {len(labelled)} labelled image(s)")
    if ft.labels_fraction < 1:
        labelled = subset_per_class(labels, labelled, ft.labels_fraction, ft.seed)
    fit = labelled
    if val is None:  # held out of the labelled images: the epoch is chosen with the labels the run was given
        part_fit, part_val = stratified_split(labels[labelled], ft.val_fraction, seed_for(ft.seed, FT_SPLIT) % 2**31)
        if not len(part_val) or not len(part_fit):
            raise DataError(
                f"{data}: {len(labelled)} labelled training image(s) are too few to hold out a "
                f"validation split; give more labels, or a val/ folder"
            )
        fit, val = labelled[part_fit], torch.utils.data.Subset(train, labelled[part_val].tolist())
    return Splits(train, fit, val, test, classes, named is None, int((labels < 0).sum()))


class Augmented(torch.utils.data.Dataset):
    """Training items at keys (index, epoch, position): the image through RandAugment (when on) and
    the random resized crop, flip and normalisation, every choice drawn from (seed, epoch,
    position); an unreadable image becomes (None, its path) for ``collate_readable``."""

    def __init__(self, dataset, transform: PretrainTransform, randaug: str, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.randaug = randaugment(randaug, transform.crop_size, len(transform.mean)) if randaug else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, _, epoch, position = key  # (index, batch number, epoch, position in the epoch): NumberedBatches
        try:
            img, label = self.dataset[i]
        except UnreadableImage as e:
            return None, e.path
        if self.randaug is not None:
            img = self._randaug(img, seed_for(self.seed, FT_RANDAUG, epoch, position))
        return self.transform(img, generator_for(self.seed, FT_AUGMENT, epoch, position)), label

    def _randaug(self, img: torch.Tensor, seed: int) -> torch.Tensor:
        from PIL import Image

        # timm draws the ops from numpy's stream and their magnitudes from Python's: both seeded per image,
        # then given back as they were
        state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
            out = np.asarray(self.randaug(pil), dtype=np.float32) / 255.0
        finally:
            random.setstate(state)
            np.random.set_state(np_state)
        out = torch.from_numpy(out)
        return out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1)
