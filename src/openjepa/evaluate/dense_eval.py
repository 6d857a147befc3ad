"""The dense protocols of ``openjepa eval``: ``seg`` (linear segmentation, mIoU) and ``depth``
(linear depth, RMSE and delta1) on the frozen encoder, a random encoder of the same size and the
raw pixels, on the procedural scenes (``--data scenes``: segmentation by shape, depth in world
units) or a user's dense folder (``data.dense_folder``); and a picture of a few test images with
the encoder's predictions beside the truth, for the run report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.dense_folder import IGNORE, dense_splits
from ..data.images import DataError
from ..data.scene_sets import scene_dense_splits, scenes_task
from ..data.transforms import resize_center_crop
from .dense import depth_probe, seg_probe
from .dense_features import DenseFeatures, dense_features, dense_pixels

DENSE_PROTOCOLS = ("seg", "depth")
SHOWN = 4  # test images in the picture
PALETTE = np.array(
    [(40, 40, 40), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
     (240, 50, 230), (210, 245, 60), (250, 190, 212)],
    np.uint8,
)  # fmt: skip


def dense_data(data: str, in_chans: int, image_size: int):
    """(train, test, class names or None) of dense pairs: the scenes or a dense folder."""
    if scenes_task(data) is not None:
        train, test = scene_dense_splits(image_size, in_chans)
        return train, test, train.classes
    if not Path(data).is_dir():
        raise DataError(f"the dense protocols (seg, depth) read --data scenes or a dense folder; {data!r} is neither")
    train, test = dense_splits(data, in_chans)
    return train, test, train.classes


def num_classes(feats: tuple[DenseFeatures, DenseFeatures], classes) -> int:
    """The classes a probe scores: the dataset's names, else the largest label seen plus one."""
    if classes:
        return len(classes)
    labels = torch.cat([f.seg[f.seg != IGNORE].flatten().long() for f in feats if f.seg is not None])
    if not len(labels):
        raise DataError("the dense data has no labelled pixel (every label is 0, 'other')")
    return int(labels.max()) + 1


def run_dense(
    encoders: dict,
    data: str,
    protocols,
    pixels: bool,
    seed: int,
    batch_size: int,
    num_workers: int,
    progress: bool,
    precision: str,
    device: torch.device,
) -> tuple[dict, dict]:
    """{encoder name: {protocol: result}} for the named encoders (and 'pixels' when asked), and the
    first encoder's predictions on the first test images ({"images", "seg", "depth", truth and
    predictions}) for ``dense_figure``."""
    first = next(iter(encoders.values()))
    train, test, classes = dense_data(data, first.in_chans, first.img_size[0])
    results, shown = {}, {}
    sources = {name: (lambda ds, e=enc, n=name: dense_features(
        e.to(device), ds, batch_size, precision, num_workers, progress, f"{n} dense features"))
        for name, enc in encoders.items()}  # fmt: skip
    if pixels:
        sources["pixels"] = lambda ds: dense_pixels(ds, first.img_size, first.patch_size, batch_size, num_workers)
    for name, features_of in sources.items():
        feats = (features_of(train), features_of(test))
        results[name] = probe_dense(feats, protocols, classes, seed, device, show=SHOWN if not shown else 0)
        if not shown:
            shown = {key: r.pop("predictions") for key, r in results[name].items() if "predictions" in r}
            first_images = [test[i][0][None].float() for i in range(min(SHOWN, len(test)))]
            shown.update(
                truth=feats[1], images=torch.cat([resize_center_crop(x, first.img_size) for x in first_images])
            )
    return results, shown


def probe_dense(feats, protocols, classes, seed: int, device: torch.device, show: int = 0) -> dict:
    train, test = feats
    out = {}
    if "seg" in protocols:
        if train.seg is None or test.seg is None:
            raise DataError("the seg protocol needs label maps (labels/ in a dense folder)")
        out["seg"] = seg_probe(train.tokens, train.seg, test.tokens, test.seg, num_classes(feats, classes),
                               seed=seed, device=device, show=show)  # fmt: skip
    if "depth" in protocols:
        if train.depth is None or test.depth is None:
            raise DataError("the depth protocol needs depth maps (depth/ in a dense folder)")
        out["depth"] = depth_probe(train.tokens, train.depth, test.tokens, test.depth, seed=seed, device=device,
                                   show=show)  # fmt: skip
    return out


def _colours(seg: torch.Tensor) -> np.ndarray:
    labels = seg.numpy().astype(np.int64)
    rgb = PALETTE[labels % len(PALETTE)]
    rgb[labels == IGNORE] = 0
    return rgb


def _grey(depth: torch.Tensor, low: float, high: float) -> np.ndarray:
    scaled = ((depth.numpy() - low) / max(high - low, 1e-6)).clip(0, 1)
    near_bright = (255 * (1 - scaled)).astype(np.uint8)  # near is bright
    return np.stack([near_bright] * 3, -1)


def dense_figure(shown: dict, path: Path, scale: int = 3) -> Path:
    """A PNG, one row per test image: the image, then segmentation truth and prediction, then depth
    truth and prediction (near bright), each as the probe saw it (the encoder's input size)."""
    images, truth = shown["images"], shown["truth"]
    rows = []
    for i in range(len(images)):
        img = images[i].clamp(0, 1).mul(255).round().byte()
        cells = [np.repeat(img.permute(1, 2, 0).numpy(), 3 // img.size(0), axis=2)]
        if "seg" in shown:
            cells += [_colours(truth.seg[i]), _colours(shown["seg"][i])]
        if "depth" in shown:
            valid = truth.depth[i][truth.depth[i] > 0]
            low, high = (float(valid.min()), float(valid.quantile(0.98))) if len(valid) else (0.0, 1.0)
            cells += [_grey(truth.depth[i], low, high), _grey(shown["depth"][i], low, high)]
        gap = np.full((cells[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([c for cell in cells for c in (cell, gap)][:-1], axis=1))
    picture = np.concatenate([np.concatenate([r, np.full((2, r.shape[1], 3), 255, np.uint8)]) for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.kron(picture, np.ones((scale, scale, 1), np.uint8))).save(path)
    return path
