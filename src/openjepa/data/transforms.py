"""Image transforms: the pretraining crop (random resized crop, optional flip, normalisation) and
the deterministic preprocessing that evaluation, interop and the pictures share (shorter side
resized, centre crop, normalisation)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def crop_box(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering ``scale`` of the area with aspect ``ratio``
    (w/h, sampled log-uniformly); after 10 misses, the central crop of the closest aspect."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    for _ in range(10):
        target = area * float(torch.empty(()).uniform_(scale[0], scale[1], generator=generator))
        aspect = float(
            torch.exp(torch.empty((), dtype=torch.float64).uniform_(*log_ratio.tolist(), generator=generator))
        )
        w = int(round((target * aspect) ** 0.5))
        h = int(round((target / aspect) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=16)
def _channel_stats(
    mean: tuple, std: tuple, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as [C, 1, 1] tensors, made once per device: copying a host list to a GPU
    waits for the GPU's queue to drain, which the training step must not do per image."""
    return (
        torch.tensor(mean, dtype=dtype, device=device).view(-1, 1, 1),
        torch.tensor(std, dtype=dtype, device=device).view(-1, 1, 1),
    )


def per_channel(values: list[float], channels: int) -> list[float]:
    return values * channels if len(values) == 1 else values


@dataclass
class PretrainTransform:
    crop_size: int
    crop_scale: Sequence[float] = (0.3, 1.0)
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    horizontal_flip: bool = False
    ratio: Sequence[float] = (3 / 4, 4 / 3)

    @classmethod
    def from_config(cls, d) -> PretrainTransform:
        """The transform a ``DataConfig`` describes (one mean/std value is used for every channel)."""
        return cls(
            d.crop_size,
            d.crop_scale,
            per_channel(d.mean, d.in_chans),
            per_channel(d.std, d.in_chans),
            d.use_horizontal_flip,
        )

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(img, self.plan(img.size(1), img.size(2), generator))

    def plan(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int, bool]:
        """The random choices for an image of that size: crop (top, left, h, w) and flip."""
        box = crop_box(height, width, self.crop_scale, self.ratio, generator)
        return (*box, self.horizontal_flip and bool(torch.rand((), generator=generator) < 0.5))

    def apply(self, img: torch.Tensor, plan: tuple[int, int, int, int, bool]) -> torch.Tensor:
        """Crop, resize, flip and normalise ``img`` [C, H, W] in [0, 1], on whatever device it is."""
        top, left, h, w, flip = plan
        img = img[:, top : top + h, left : left + w].unsqueeze(0)
        img = F.interpolate(
            img, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if flip:
            img = img.flip(-1)
        mean, std = _channel_stats(tuple(self.mean), tuple(self.std), img.dtype, img.device)
        return (img - mean) / std


def center_crop_plan(height: int, width: int, size: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
    """((resized height, width), top, left) of ``resize_center_crop`` for an image of that size:
    dense targets (label maps, depth) are brought to ``size`` through the same geometry."""
    scale = max(size[0] / height, size[1] / width)
    resized = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    return resized, (resized[0] - size[0]) // 2, (resized[1] - size[1]) // 2


def resize_center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, *size]: shorter side resized (antialiased bilinear), centre crop; as is when it fits."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    resized, top, left = center_crop_plan(h, w, size)
    images = F.interpolate(images, size=resized, mode="bilinear", align_corners=False, antialias=True)
    return images[..., top : top + size[0], left : left + size[1]]


class Resized(torch.utils.data.Dataset):
    """``dataset``'s items with every image brought to ``size`` by ``resize_center_crop``, so a
    folder of images of many sizes can be batched (images already at that size pass unchanged)."""

    def __init__(self, dataset, size: tuple[int, int]):
        self.dataset, self.size = dataset, tuple(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img, label = self.dataset[i]
        return resize_center_crop(img[None].float(), self.size)[0], label


def prepare(images: torch.Tensor, encoder, mean=None, std=None) -> torch.Tensor:
    """A batch [B, C, H, W] in [0, 1] -> the encoder's input: resized to its training size
    (``resize_center_crop``), then normalised (by ``mean`` / ``std``, else the encoder's own
    ``mean`` / ``std`` attributes)."""
    images = resize_center_crop(images, encoder.img_size)
    return normalize(images, mean if mean is not None else encoder.mean, std if std is not None else encoder.std)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """[B, C, H, W] -> (images - mean) / std per channel (one value applies to every channel)."""
    mean = torch.tensor(mean, dtype=images.dtype).view(-1, 1, 1)
    std = torch.tensor(std, dtype=images.dtype).view(-1, 1, 1)
    return (images - mean) / std
