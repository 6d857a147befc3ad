"""Dense data for the probes: (image, target) pairs brought to the encoder's input size through
evaluation's geometry, and one pass of the frozen encoder (or the raw pixels) over them.

A dense dataset's items are ``(image [C, H, W] in [0, 1], target)``, ``target`` a dict with
``"seg"`` (LongTensor [H, W]: class ids 0..254, ``IGNORE`` = 255 not scored) and / or ``"depth"``
(FloatTensor [H, W]: 0 or non-finite = no measurement) at the image's size; ``data.dense_folder``
reads a folder of such pairs, ``data.scenes`` makes them. Labels are resized by nearest neighbour;
depth, when shrinking, by the mean of the valid measurements under each output pixel (an invalid
pixel never drags a mean to 0), by nearest neighbour when enlarging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.dense_folder import IGNORE
from ..data.images import DataError
from ..data.transforms import center_crop_plan, prepare, resize_center_crop
from ..device import autocast, resolve_precision
from ..models.vit import VisionTransformer
from .dense_scores import valid_depth
from .features import Readable, nothing_readable, source_of

# --- bringing pairs to the encoder's size -------------------------------------------------------


def resize_seg(seg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A label map [H, W] through ``resize_center_crop``'s geometry, by nearest neighbour."""
    if tuple(seg.shape) == tuple(size):
        return seg
    resized, top, left = center_crop_plan(*seg.shape, size)
    out = F.interpolate(seg[None, None].float(), size=resized, mode="nearest-exact")[0, 0]
    return out[top : top + size[0], left : left + size[1]].long()


def resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A depth map [H, W] through ``resize_center_crop``'s geometry; invalid pixels come out 0."""
    if tuple(depth.shape) == tuple(size):
        return depth
    resized, top, left = center_crop_plan(*depth.shape, size)
    valid = valid_depth(depth)
    measured = torch.where(valid, depth, 0.0)[None, None]
    if resized[0] * resized[1] < depth.numel():  # shrinking: the mean of the valid pixels under each
        sums = F.interpolate(measured, size=resized, mode="area")[0, 0]
        share = F.interpolate(valid.float()[None, None], size=resized, mode="area")[0, 0]
        out = torch.where(share > 0, sums / share.clamp_min(1e-12), 0.0)
    else:
        out = F.interpolate(measured, size=resized, mode="nearest-exact")[0, 0]
    return out[top : top + size[0], left : left + size[1]]


def fit_pair(image: torch.Tensor, target: dict, size: tuple[int, int], where: str) -> tuple[torch.Tensor, dict]:
    """(image, target) at ``size``: the image by ``resize_center_crop``, seg as uint8, depth as
    float32. ``where`` names the item in errors."""
    if not isinstance(target, dict) or not target or set(target) - {"seg", "depth"}:
        keys = sorted(target) if isinstance(target, dict) else type(target).__name__
        raise DataError(f"{where}: a dense target is a dict with 'seg' and / or 'depth', got {keys}")
    out = {}
    for key, value in target.items():
        value = torch.as_tensor(value)
        if tuple(value.shape) != tuple(image.shape[-2:]):
            raise DataError(
                f"{where}: its {key} map is {tuple(value.shape)} but its image is {tuple(image.shape[-2:])}"
            )
        if key == "seg":
            if value.numel() and not 0 <= int(value.min()) <= int(value.max()) <= IGNORE:
                raise DataError(
                    f"{where}: seg values must be 0..{IGNORE} ({IGNORE} = ignore), got "
                    f"{int(value.min())}..{int(value.max())}"
                )
            out[key] = resize_seg(value.long(), size).to(torch.uint8)
        else:
            out[key] = resize_depth(value.float(), size)
    return resize_center_crop(image[None].float(), size)[0], out


class DensePairs(torch.utils.data.Dataset):
    """``dataset``'s (image, target) items brought to ``size`` by ``fit_pair``."""

    def __init__(self, dataset, size: tuple[int, int]):
        self.dataset, self.size = dataset, tuple(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, target = self.dataset[i]
        files = getattr(self.dataset, "files", None)
        where = str(files[i]) if files is not None else f"item {i} of {source_of(self.dataset)}"
        return fit_pair(image, target, self.size, where)


def collate_dense(items: list) -> tuple[torch.Tensor | None, dict, list[str]]:
    """(images of the readable items or None, their stacked targets, the unreadable paths)."""
    good = [(image, target) for image, target in items if image is not None]
    skipped = [str(path) for image, path in items if image is None]
    if not good:
        return None, {}, skipped
    keys = sorted(good[0][1])
    if any(sorted(target) != keys for _, target in good):
        raise DataError(f"every item of a dense dataset must carry the same targets; some carry {keys}, others not")
    targets = {key: torch.stack([target[key] for _, target in good]) for key in keys}
    return torch.stack([image for image, _ in good]), targets, skipped


# --- features ----------------------------------------------------------------------------------


@dataclass
class DenseFeatures:
    """``tokens`` [N, h, w, D] (float16) of the N readable images; ``seg`` [N, H, W] (uint8, 255 =
    ignore) and ``depth`` [N, H, W] (float32, 0 = invalid) at the encoder's input size, or None
    when the dataset has none; ``skipped``: the paths of the unreadable images, left out."""

    tokens: torch.Tensor
    seg: torch.Tensor | None
    depth: torch.Tensor | None
    skipped: list[str] = field(default_factory=list)


def read_dense(
    dataset, size: tuple[int, int], tokens_of, batch_size: int, num_workers: int, progress: bool, desc: str
) -> DenseFeatures:
    """One ordered pass over ``dataset``: ``tokens_of(images [B, C, *size])`` -> [B, h, w, D]."""
    loader = torch.utils.data.DataLoader(
        Readable(DensePairs(dataset, size)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_dense,
    )
    tokens, targets, skipped = [], {}, []
    for images, batch_targets, unreadable in tqdm(
        loader, desc=desc, disable=not progress, unit="batch", dynamic_ncols=True
    ):
        skipped += unreadable
        if images is None:
            continue
        if tokens and sorted(batch_targets) != sorted(targets):
            raise DataError(f"{source_of(dataset)}: some items carry {sorted(targets)}, others {sorted(batch_targets)}")
        tokens.append(tokens_of(images))
        for key, value in batch_targets.items():
            targets.setdefault(key, []).append(value)
    if not tokens:
        raise nothing_readable(dataset, skipped)
    joined = {key: torch.cat(values) for key, values in targets.items()}
    return DenseFeatures(torch.cat(tokens), joined.get("seg"), joined.get("depth"), skipped)


@torch.inference_mode()
def dense_features(
    encoder: VisionTransformer,
    dataset,
    batch_size: int = 64,
    precision: str = "fp32",
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "dense features",
) -> DenseFeatures:
    """One pass of the frozen ``encoder`` (its last layer, after the final norm) over a dense
    ``dataset``; images and targets at ``encoder.img_size``. ``precision`` 'bf16' runs the encoder
    under bf16 autocast. Unreadable images are left out with their targets; DataError if none can
    be read."""
    encoder.eval()
    device = next(encoder.parameters()).device
    amp = autocast(device, resolve_precision(precision, device) == "bf16")
    grid = (encoder.img_size[0] // encoder.patch_size, encoder.img_size[1] // encoder.patch_size)

    def tokens_of(images: torch.Tensor) -> torch.Tensor:
        with amp:
            tokens = encoder(prepare(images.float(), encoder).to(device))
        return tokens.to(torch.float16).cpu().view(len(images), *grid, -1)

    return read_dense(dataset, encoder.img_size, tokens_of, batch_size, num_workers, progress, desc)


def raw_pixel_tokens(images: torch.Tensor, patch: int) -> torch.Tensor:
    """The pixel baseline's tokens: [N, C, H, W] -> [N, H/p, W/p, p*p*C], each patch's own pixels
    in (row, column, channel) order."""
    n, c, height, width = images.shape
    if height % patch or width % patch:
        raise ValueError(f"patch size {patch} does not divide the image size {(height, width)}")
    h, w = height // patch, width // patch
    return images.reshape(n, c, h, patch, w, patch).permute(0, 2, 4, 3, 5, 1).reshape(n, h, w, patch * patch * c)


def dense_pixels(
    dataset, size: tuple[int, int], patch: int, batch_size: int = 64, num_workers: int = 0, progress: bool = False
) -> DenseFeatures:
    """``dense_features`` with ``raw_pixel_tokens`` for the tokens: the baseline's input."""
    return read_dense(
        dataset,
        size,
        lambda images: raw_pixel_tokens(images.float(), patch).to(torch.float16),
        batch_size,
        num_workers,
        progress,
        "dense pixels",
    )
