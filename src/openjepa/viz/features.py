"""Feature pictures: PCA of patch features to RGB (the first three components, fitted jointly
over the images shown), and the cosine similarity of one patch to all others."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .masks import to_rgb


def pick_images(dataset, n: int, seed: int = 0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``n`` images of ``dataset`` chosen by ``seed``: [n, C, H, W] in [0, 1], each resized and
    centre-cropped to ``size`` when given (else they must share a size). An unreadable image is
    skipped (named in the log) and the next in the seeded order taken instead: fewer than ``n``
    only when the dataset has fewer readable images; DataError when it has none."""
    from ..evaluate.features import Readable, nothing_readable, source_of, warn_skipped

    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    readable, images, skipped = Readable(dataset, size), [], []
    for i in order.tolist():
        if len(images) == n:
            break
        img, label_or_path = readable[i]
        if img is None:
            skipped.append(str(label_or_path))
        else:
            images.append(img)
    if not images:
        raise nothing_readable(dataset, skipped)
    warn_skipped(f"pictures ({source_of(dataset, skipped)})", skipped, len(images) + len(skipped))
    return torch.stack(images)


def sample_images(cfg, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` images of the dataset ``cfg`` names, chosen by ``seed``, at its crop size: [n, C, S, S] in [0, 1].
    A stream (tar shards) offers its first readable images to choose from."""
    from ..data import build_dataset

    dataset = build_dataset(cfg.data)
    if hasattr(dataset, "head"):
        dataset = dataset.head(2 * n, cfg.data.crop_size)
    return pick_images(dataset, n, seed, (cfg.data.crop_size,) * 2)


def feature_figure_for(checkpoint, overrides=(), n: int = 8, seed: int = 0) -> Image.Image:
    """``feature_figure`` of a training checkpoint's target encoder on images of its dataset
    (``overrides`` such as ``data.root_path=...`` point elsewhere)."""
    from ..checkpoint import load_checkpoint
    from ..config import apply_overrides, from_dict, validate
    from ..interop import encoder_of_checkpoint

    state = load_checkpoint(checkpoint)
    # the target encoder (any objective's: I-JEPA's, DINO's teacher); the images come from the config it holds
    encoder = encoder_of_checkpoint(state, checkpoint)
    cfg = from_dict(state["config"])
    apply_overrides(cfg, list(overrides))
    validate(cfg)
    return feature_figure(encoder, sample_images(cfg, n, seed), cfg.data.mean, cfg.data.std)


def pca_rgb(features: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Patch features [B, N, D] -> [B, gh, gw, 3] in [0, 1]: projections on the first three
    principal components (signs fixed so each component's largest loading is positive), each
    scaled to [0, 1] over the batch. Deterministic: a full SVD, no random projection."""
    B, N, D = features.shape
    x = features.reshape(B * N, D).double()
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:3]
    comps = comps * comps.gather(1, comps.abs().argmax(1, keepdim=True)).sign()
    proj = x @ comps.T
    if proj.size(1) < 3:
        proj = torch.cat([proj, proj.new_zeros(len(proj), 3 - proj.size(1))], 1)
    lo, hi = proj.min(0).values, proj.max(0).values
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    return proj.reshape(B, grid[0], grid[1], 3).numpy()


def similarity_map(features: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, D] -> [N]: cosine similarity of patch ``patch`` to every patch."""
    f = F.normalize(features.double(), dim=-1)
    return f @ f[patch]


def _upsample(grid_img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rep = (size[0] // grid_img.shape[0], size[1] // grid_img.shape[1])
    return np.kron(grid_img, np.ones((*rep, 1))) if grid_img.ndim == 3 else np.kron(grid_img, np.ones(rep))


@torch.no_grad()
def feature_figure(encoder, images: torch.Tensor, mean, std, scale: int = 4) -> Image.Image:
    """Rows: the images, the PCA map of their patch features, the similarity of the centre patch
    (marked) to all others (bright = similar)."""
    from ..data.transforms import prepare

    feats = encoder(prepare(images, encoder, mean, std))
    grid, (H, W) = encoder.grid, images.shape[-2:]
    pca = pca_rgb(feats, grid)
    centre = (grid[0] // 2) * grid[1] + grid[1] // 2
    rows = [[to_rgb(img) for img in images], [_upsample(p, (H, W)) * 255 for p in pca], []]
    for f in feats:
        sim = similarity_map(f, centre).reshape(grid).numpy()
        sim = (sim - sim.min()) / max(sim.max() - sim.min(), 1e-12)
        tile = np.stack([_upsample(sim, (H, W))] * 3, -1) * 255
        p = H // grid[0]
        r, c = divmod(centre, grid[1])
        tile[r * p : (r + 1) * p, c * p : (c + 1) * p] = (230, 25, 75)
        rows[2].append(tile)
    pad = 4
    tile_w, tile_h = W * scale, H * scale
    canvas = Image.new("RGB", (len(images) * (tile_w + pad), 3 * (tile_h + pad)), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            im = Image.fromarray(np.rint(tile).astype(np.uint8)).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(im, (c * (tile_w + pad), r * (tile_h + pad)))
    return canvas
