"""DINO's views (Caron et al. 2021, its data augmentation after BYOL's): each image becomes two
global views and ``local_crops`` smaller local ones, each randomly cropped and resized, flipped,
colour-jittered, made grey, blurred and (the second global view only) solarised, with the paper's
probabilities. The ops are small tensor functions on [C, H, W] in [0, 1]. Every draw comes from the
generator the loader gives the image, seeded by (seed, DINO_VIEWS, batch number, index), never
from a global random state, so a batch is a pure function of its number and a resumed run sees the
very views an uninterrupted one would.

One-channel (grey) images get only the brightness and contrast jitter: saturation, hue and the
grayscale step have nothing to act on. Blur and solarisation apply as for colour images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .images import DataError
from .seeds import DINO_VIEWS
from .transforms import crop_box, per_channel

GLOBAL_SCALE = (0.4, 1.0)  # global views beside local ones (DINO's default)
GLOBAL_SCALE_ALONE = (0.14, 1.0)  # two global views and no local ones (DINO's setting without multi-crop)
LOCAL_SCALE = (0.05, 0.4)
RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5
JITTER_P, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.8, 0.4, 0.4, 0.2, 0.1
GRAYSCALE_P = 0.2
SIGMA = (0.1, 2.0)  # the blur's standard deviation in pixels, uniform
SOLARIZE_THRESHOLD = 0.5  # PIL's 128 of 255: values at or above it are inverted
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's and torchvision's grayscale


def local_crop_size(crop_size: int, patch_size: int) -> int:
    """DINO's 96 px local views beside 224 px global ones, scaled to ``crop_size`` and rounded to
    whole patches (at least one), so the encoder sees a whole grid."""
    return max(patch_size, round(crop_size * 96 / 224 / patch_size) * patch_size)


# The ops, each on one image [C, H, W] in [0, 1].


def resized_crop(img: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """The ``box`` (top, left, h, w) of ``img`` resized to size x size (antialiased bicubic, as
    DINO's, clamped back into [0, 1] where bicubic overshoots)."""
    top, left, h, w = box
    crop = img[None, :, top : top + h, left : left + w]
    out = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)


def hflip(img: torch.Tensor) -> torch.Tensor:
    return img.flip(-1)


def grayscale(img: torch.Tensor) -> torch.Tensor:
    """The luma of an RGB image in every channel (a grey image is returned as it is)."""
    if img.size(0) == 1:
        return img
    luma = (img * torch.tensor(LUMA, dtype=img.dtype).view(3, 1, 1)).sum(0, keepdim=True)
    return luma.expand_as(img).clone()


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    return (img * factor).clamp(0.0, 1.0)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's mean grey level: below 1 towards a flat grey, above 1 away from it."""
    mean = grayscale(img)[:1].mean()
    return (factor * img + (1 - factor) * mean).clamp(0.0, 1.0)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's own grayscale: 0 makes it grey, above 1 deepens the colours."""
    return (factor * img + (1 - factor) * grayscale(img)).clamp(0.0, 1.0)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] RGB -> HSV, each in [0, 1] (hue 0 where the pixel is grey)."""
    r, g, b = img.unbind(0)
    high, low = img.max(0).values, img.min(0).values
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (high - r) / safe, (high - g) / safe, (high - b) / safe
    hue = torch.where(high == r, bc - gc, torch.where(high == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    sat = torch.where(high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    return torch.stack([hue, sat, high])


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] HSV in [0, 1] -> RGB: the hue's sextant picks which of v, p, q, t each channel is."""
    h, s, v = img.unbind(0)
    sextant = torch.floor(h * 6.0)
    f = h * 6.0 - sextant
    sextant = sextant.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([v, q, p, p, t, v, t, v, v, q, p, p, p, p, t, v, v, q]).view(3, 6, *h.shape)
    return table.gather(1, sextant.expand(3, 1, *h.shape)).squeeze(1)


def adjust_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    """The hue turned by ``shift`` of a full turn (in [-0.5, 0.5]); grey pixels stay grey."""
    hsv = rgb_to_hsv(img)
    hsv[0] = (hsv[0] + shift) % 1.0
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


def blur_kernel_size(size: int) -> int:
    """About a tenth of the view's side, odd, at least 3 (BYOL's 23 px at 224)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def gaussian_blur(img: torch.Tensor, sigma: float, kernel: int) -> torch.Tensor:
    """A separable Gaussian blur of standard deviation ``sigma`` pixels over ``kernel`` taps, the
    edges replicated (so a flat image stays flat)."""
    x = torch.arange(kernel, dtype=img.dtype) - kernel // 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    w = w / w.sum()
    C, pad = img.size(0), kernel // 2
    out = F.pad(img[None], (pad, pad, pad, pad), mode="replicate")
    out = F.conv2d(out, w.view(1, 1, 1, kernel).expand(C, 1, 1, kernel), groups=C)
    out = F.conv2d(out, w.view(1, 1, kernel, 1).expand(C, 1, kernel, 1), groups=C)
    return out[0]


def solarize(img: torch.Tensor, threshold: float = SOLARIZE_THRESHOLD) -> torch.Tensor:
    return torch.where(img >= threshold, 1.0 - img, img)


@dataclass(frozen=True)
class ViewRecipe:
    """One kind of view: its side, its crop's share of the image, its blur and solarisation
    probabilities (flip, jitter and grayscale are the same for every view)."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float = 0.0


def jitter(img: torch.Tensor, order: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The colour jitter: brightness, contrast, saturation and hue in the random ``order``, their
    strengths from the uniforms ``u`` [4]. A grey image takes the first two only."""
    factors = (
        1 + BRIGHTNESS * (2 * float(u[0]) - 1),
        1 + CONTRAST * (2 * float(u[1]) - 1),
        1 + SATURATION * (2 * float(u[2]) - 1),
        HUE * (2 * float(u[3]) - 1),
    )
    steps = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for i in order.tolist():
        if img.size(0) == 3 or i < 2:
            img = steps[i](img, factors[i])
    return img


def augment_view(img: torch.Tensor, recipe: ViewRecipe, generator: torch.Generator) -> torch.Tensor:
    """One view of ``img`` [C, H, W] in [0, 1] as DINO makes it: crop, flip, jitter, grayscale, blur,
    solarisation. The same number of values is drawn whatever the outcomes, so one view's luck
    never shifts the next view's draws beyond its crop's."""
    box = crop_box(img.size(1), img.size(2), recipe.scale, RATIO, generator)
    u = torch.rand(10, generator=generator, dtype=torch.float64)
    order = torch.randperm(4, generator=generator)
    view = resized_crop(img, box, recipe.size)
    if u[0] < FLIP_P:
        view = hflip(view)
    if u[1] < JITTER_P:
        view = jitter(view, order, u[2:6])
    if u[6] < GRAYSCALE_P:
        view = grayscale(view)
    if u[7] < recipe.blur_p:
        sigma = SIGMA[0] + float(u[8]) * (SIGMA[1] - SIGMA[0])
        view = gaussian_blur(view, sigma, blur_kernel_size(recipe.size))
    if u[9] < recipe.solarize_p:
        view = solarize(view)
    return view


@dataclass
class MultiCropTransform:
    """An image [C, H, W] in [0, 1] -> (global views [2, C, S, S], local views [n, C, s, s]),
    normalised. ``stream`` tells the loader which random stream to seed this transform's generator
    from (``NumberedDataset``)."""

    crop_size: int
    local_size: int
    local_crops: int
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    stream: ClassVar[int] = DINO_VIEWS

    @classmethod
    def from_config(cls, cfg) -> MultiCropTransform:
        """From a ``Config``: ``data.crop_size`` for the global views, ``meta.dino_local_crops`` local
        views of ``meta.dino_local_size`` (0: ``local_crop_size``)."""
        d, meta = cfg.data, cfg.meta
        local = meta.dino_local_size or local_crop_size(d.crop_size, cfg.mask.patch_size)
        mean, std = per_channel(d.mean, d.in_chans), per_channel(d.std, d.in_chans)
        return cls(d.crop_size, local, meta.dino_local_crops, mean, std)

    def recipes(self) -> list[ViewRecipe]:
        """The paper's three kinds of view: the first global view always blurred, the second
        rarely and sometimes solarised, the local ones blurred half the time."""
        scale = GLOBAL_SCALE if self.local_crops else GLOBAL_SCALE_ALONE
        local = ViewRecipe(self.local_size, LOCAL_SCALE, 0.5)
        return [ViewRecipe(self.crop_size, scale, 1.0), ViewRecipe(self.crop_size, scale, 0.1, 0.2)] + [
            local
        ] * self.local_crops

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if img.size(0) not in (1, 3):
            raise DataError(f"DINO's augmentations take 1- or 3-channel images, got {img.size(0)} channels")
        img = img.float()
        mean, std = torch.tensor(self.mean).view(-1, 1, 1), torch.tensor(self.std).view(-1, 1, 1)
        views = [(augment_view(img, recipe, generator) - mean) / std for recipe in self.recipes()]
        local = views[2:]
        locals_ = torch.stack(local) if local else img.new_empty(0, img.size(0), self.local_size, self.local_size)
        return torch.stack(views[:2]), locals_


def collate_views(items: list) -> dict:
    """A micro-batch of ``MultiCropTransform``'s items ((global, local) views, batch number), or
    (None, path) for an image that could not be read (skipped and counted): ``images`` [B, 2, C,
    S, S] (each image's two global views) and ``local_images`` [B, n, C, s, s]; no masks."""
    good = [views for views, _ in items if views is not None]
    skipped = [path for views, path in items if views is None]
    batch = next((b for views, b in items if views is not None), -1)
    if not good:
        return {"images": None, "batch": batch, "skipped": skipped}
    return {
        "images": torch.stack([g for g, _ in good]),
        "local_images": torch.stack([loc for _, loc in good]),
        "batch": batch,
        "skipped": skipped,
    }
