"""The paper's Fig. 6, for a run: what its predictor imagines in hidden blocks, drawn by a
generative decoder fitted on the run's frozen representations (``openjepa.decoder``).

One row per held-out image: the image; the context the encoder saw; K samples decoded from the
target encoder's features everywhere; K with the hidden blocks' features replaced by the
predictor's outputs; K with them replaced by the decoder's learned unknown vector (the control:
what the decoder draws there with no word from the predictor). The hidden blocks are outlined.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.seeds import DEC_FIGURE, generator_for
from ..engine import check_output
from ..errors import BadInput
from .masks import to_rgb

log = logging.getLogger("openjepa")
OUTLINE = (230, 25, 75)
UNSEEN = (60, 80, 130)  # the patches the context encoder did not see (a colour no grey image has)
HEADERS = ("image", "context", "target", "predicted", "control")  # the conditions of decoder.imagine


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


def imagine(run_dir, out_png, n_images: int = 4, samples: int = 3, seed: int = 0, settings=None) -> Path:
    """Write the figure for the pretraining run ``run_dir`` to ``out_png`` and return its path.
    The decoder of RUN/decoder is fitted first when it is missing or unfinished (``settings``, else
    its checkpoint's or the defaults: see ``openjepa.decoder.fit_decoder``), then reused."""
    from ..decoder import fit_decoder, run_checkpoint
    from ..interop import load_ijepa

    n_images, samples = _count(n_images, "the number of images"), _count(samples, "the number of samples")
    out = check_output(out_png, "the figure", suffixes=(".png",))
    loaded = load_ijepa(run_checkpoint(run_dir))
    fit_decoder(run_dir, settings, model=loaded)
    picture = decoded_picture(run_dir, n_images, samples, seed, loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    picture.save(tmp)
    tmp.replace(out)
    return out


def decoded_picture(run_dir, n_images: int = 4, samples: int = 3, seed: int = 0, loaded=None) -> Image.Image:
    """The figure of ``imagine`` from the decoder already fitted in RUN/decoder (nothing is fitted
    here: BadInput when there is none). ``loaded``: the run's (model, config), when already read."""
    from ..decoder import imagine_images, load_decoder, read_images, run_checkpoint, split, to_unit
    from ..decoder.state import fingerprint
    from ..interop import load_ijepa
    from ..masks import mask_sampler_for

    model, cfg = loaded or load_ijepa(run_checkpoint(run_dir))
    denoiser, fitted, source = load_decoder(run_dir)
    if source["target_encoder"] != fingerprint(model.target_encoder):
        log.warning(
            "%s trained on after its decoder was fitted: the decoder reads older features (move %s/decoder away "
            "to fit it again)",
            run_dir,
            run_dir,
        )
    _, (held, order) = split(cfg, fitted.images, fitted.seed)
    order = order[torch.randperm(len(order), generator=generator_for(seed, DEC_FIGURE, 2))]
    images, _ = read_images(held, order, cfg.data.crop_size, n=n_images)
    imagined = imagine_images(
        model, denoiser, to_unit(images), cfg.data.mean, cfg.data.std, mask_sampler_for(cfg), samples, seed,
        fitted.sample_steps, fitted.eta, fitted.condition,
    )  # fmt: skip
    return decoded_figure(imagined)


def outline(draw: ImageDraw.ImageDraw, hidden: np.ndarray, origin: tuple[int, int], cell: int) -> None:
    """Draw the border of the patches where ``hidden`` [gh, gw] holds: each edge between a hidden
    patch and one that is not (or the image's edge)."""
    x0, y0 = origin
    padded = np.pad(hidden, 1)
    for r, c in zip(*np.nonzero(hidden)):
        left, top = x0 + c * cell, y0 + r * cell
        right, bottom = left + cell - 1, top + cell - 1
        if not padded[r, c + 1]:  # the patch above
            draw.line([(left, top), (right, top)], OUTLINE)
        if not padded[r + 2, c + 1]:  # below
            draw.line([(left, bottom), (right, bottom)], OUTLINE)
        if not padded[r + 1, c]:  # to the left
            draw.line([(left, top), (left, bottom)], OUTLINE)
        if not padded[r + 1, c + 2]:  # to the right
            draw.line([(right, top), (right, bottom)], OUTLINE)


def decoded_figure(imagined, scale: int = 4) -> Image.Image:
    """The figure of an ``openjepa.decoder.Imagined``: a header, then one row per image."""
    B, K = imagined.samples["target"].shape[:2]
    H, W = imagined.images.shape[-2:]
    tile_w, tile_h, pad, gap, header = W * scale, H * scale, 2, 12, 28
    groups = [1, 1, K, K, K]
    width = sum(n * (tile_w + pad) for n in groups) + gap * (len(groups) - 1)
    canvas = Image.new("RGB", (width, header + B * (tile_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    context_pixels = imagined.pixel_mask(imagined.context)
    cell = imagined.patch_size * scale
    for b in range(B):
        context = to_rgb(imagined.images[b])
        context[~context_pixels[b].numpy()] = UNSEEN
        tiles = [to_rgb(imagined.images[b]), context] + [
            to_rgb(imagined.samples[name][b, k]) for name in imagined.samples for k in range(K)
        ]
        hidden = imagined.hidden[b].reshape(imagined.grid).numpy()
        x, y = 0, header + b * (tile_h + pad)
        for i, tile in enumerate(tiles):
            im = Image.fromarray(np.rint(tile).astype(np.uint8)).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(im, (x, y))
            if i != 1:  # the context tile shows the hidden blocks by what is missing
                outline(draw, hidden, (x, y), cell)
            x += tile_w + pad
            if i in (0, 1, 1 + K, 1 + 2 * K):
                x += gap
    x = 0
    for name, n in zip(HEADERS, groups):
        draw.text((x + 2, 2), name if n == 1 or K == 1 else f"{name} (x{K})", fill=(0, 0, 0))
        x += n * (tile_w + pad) + gap
    return canvas
