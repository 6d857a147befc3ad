"""I-JEPA, as in the paper's Figure 1: a context encoder sees the context block, a predictor
predicts each target block's representation from it, and the targets come from an EMA copy of
the encoder run on the whole image, layer-normed, gathered at the target blocks.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.predictor import Predictor
from .models.vit import VisionTransformer, build_encoder, compile_blocks, gather_tokens, resolve_size
from .regularizers import CollapseRegularizer


def image_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C, p, p]: the pixels of each patch, in the encoder's raster order."""
    B, C, H, W = images.shape
    p = patch_size
    return images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C, p, p)


def patchify_pixels(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, C*p*p] in raster order, each patch normalised to zero mean and unit
    variance (the pixel target of the paper's Table 7, as MAE's normalised-pixel loss)."""
    x = image_patches(images, patch_size).flatten(2)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / (var + 1e-6).sqrt()


class IJEPA(nn.Module):
    def __init__(
        self,
        encoder: VisionTransformer,
        predictor: Predictor,
        loss: str = "smooth_l1",
        target: str = "representations",
        regularizer: CollapseRegularizer | None = None,
        target_layers: int = 1,
    ):
        super().__init__()
        if loss not in ("smooth_l1", "l2"):
            raise ValueError(f"loss must be smooth_l1 or l2, got {loss!r}")
        if target not in ("representations", "pixels"):
            raise ValueError(f"target must be representations or pixels, got {target!r}")
        if not 1 <= target_layers <= len(encoder.blocks):
            raise ValueError(
                f"target_layers must be between 1 and the encoder's {len(encoder.blocks)} blocks, got {target_layers}"
            )
        if regularizer is not None and regularizer.invariance_weight and (target == "pixels" or target_layers > 1):
            raise ValueError(
                "the invariance term compares the context with the target encoder's output: it needs "
                "representation targets from the last block (no pixel targets, target_layers 1)"
            )
        if target_layers > 1 and target == "pixels":
            raise ValueError("target_layers averages the target encoder's blocks: it has no meaning with pixel targets")
        self.target_layers = target_layers
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.loss, self.target = loss, target
        self.regularizer = regularizer if regularizer is not None and regularizer.active else None

    def target_features(self, images: torch.Tensor, with_output: bool = False, keep_idx: torch.Tensor | None = None):
        """[B, N, D]: layer_norm(target_encoder(image)), or the normalised pixels (no gradient).

        With ``target_layers`` k > 1 (data2vec's targets, off by default): the mean of the last k
        blocks' outputs, each layer-normed, layer-normed again (the encoder's final norm unused).
        ``with_output``: also the target encoder's output itself (targets from its last block only).
        ``keep_idx`` [B, K]: the target encoder sees only those patches; [B, K, D] at them (the
        generative decoder's view of a context, from the context alone)."""
        with torch.no_grad():
            if with_output and (self.target == "pixels" or self.target_layers > 1):
                raise ValueError(
                    "the target encoder's output is its last block's: not with pixel or multi-layer targets"
                )
            if self.target == "pixels":
                pixels = patchify_pixels(images, self.encoder.patch_size)
                return pixels if keep_idx is None else gather_tokens(pixels, keep_idx)
            if self.target_layers == 1:
                h = self.target_encoder(images, keep_idx)
                features = F.layer_norm(h, (h.size(-1),))
                return (features, h) if with_output else features
            dim = (self.encoder.embed_dim,)
            layers = self.target_encoder(images, keep_idx, layers=self.target_layers)
            h = torch.stack([F.layer_norm(x, dim) for x in layers]).mean(0)
            return F.layer_norm(h, dim)

    def forward_target(self, images: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        """[B, M, Kt, D]: layer_norm(target_encoder(image)) at each target block (no gradient)."""
        return gather_targets(self.target_features(images), target_idx)

    def forward_context(
        self, images: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor
    ) -> torch.Tensor:
        """[B, M, Kt, D]: the predictor's guess of each target block from the context."""
        return self.predictor(self.encoder(images, context_idx), context_idx, target_idx)

    def forward_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prediction = prediction.float()
        if self.loss == "l2":
            return F.mse_loss(prediction, target.float())
        return F.smooth_l1_loss(prediction, target.float(), beta=1.0)

    def forward(self, images: torch.Tensor, context_idx, target_idx, return_target: bool = False, step: int = 0):
        """The loss (plus the collapse regulariser when one is on; ``step`` draws SIGReg's
        directions); with ``return_target`` also the targets (for statistics such as collapse).

        ``context_idx`` / ``target_idx`` are one mask pair for the whole batch, or lists of pairs
        for consecutive groups of images (the loader's pack groups: each group's contexts have their
        own length). The target encoder then runs once on all images; the context encoder and the
        predictor once per group; the loss is the mean over images, and the regulariser sees the
        whole batch. The targets come back as a list, one per group."""
        if isinstance(context_idx, torch.Tensor):  # one group: the same arithmetic, the target as one tensor
            loss, targets = self(images, [context_idx], [target_idx], return_target=True, step=step)
            return (loss, targets[0]) if return_target else loss
        sizes = [c.size(0) for c in context_idx]
        if sum(sizes) != images.size(0) or len(target_idx) != len(sizes):
            raise ValueError(
                f"mask groups of {sizes} images (and {len(target_idx)} target groups) for a batch of {images.size(0)}"
            )
        if self.regularizer is not None and self.regularizer.invariance_weight:  # it also needs the output, pooled
            features, output = self.target_features(images, with_output=True)
            features, pooled = features.split(sizes), output.float().mean(dim=1)
        else:
            features, pooled = self.target_features(images).split(sizes), None
        losses, contexts, targets = [], [], []
        for x, h, c, t in zip(images.split(sizes), features, context_idx, target_idx):
            target = gather_targets(h, t)
            context = self.encoder(x, c)
            losses.append(self.forward_loss(self.predictor(context, c, t), target) * (x.size(0) / images.size(0)))
            contexts.append(context)
            targets.append(target)
        loss = torch.stack(losses).sum()  # one group: its loss exactly (x * 1.0)
        if self.regularizer is not None:
            loss = loss + self.regularizer(contexts, step, target=pooled)
        return (loss, targets) if return_target else loss

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """target <- momentum * target + (1 - momentum) * online, over all parameters at once."""
        online = list(self.encoder.parameters())
        target = list(self.target_encoder.parameters())
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    def checkpoint_entries(self) -> dict:
        """What a checkpoint holds of the model (``pretrain.state``): its three networks' states."""
        return {key: getattr(self, key).state_dict() for key in ("encoder", "predictor", "target_encoder")}

    def load_checkpoint_entries(self, state: dict) -> None:
        for key in ("encoder", "predictor", "target_encoder"):
            getattr(self, key).load_state_dict(state[key])


def gather_targets(features: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
    """features [B, N, D] at target_idx [B, M, Kt] -> [B, M, Kt, D]."""
    B, M, Kt = target_idx.shape
    return gather_tokens(features, target_idx.reshape(B, M * Kt)).reshape(B, M, Kt, -1)


def predictor_depth(meta) -> int:
    """``meta.pred_depth``, or when it is not given the paper's depth for the encoder's size
    (6 for ViT-B and smaller, 12 for ViT-L/H, 16 for ViT-g)."""
    return meta.pred_depth if meta.pred_depth is not None else resolve_size(meta.model_name).predictor_depth


def resolve_config(cfg):
    """A copy of ``cfg`` with what it leaves to the model size filled in (``meta.pred_depth`` null:
    the paper's depth), as a run's config.yaml and checkpoints record it."""
    cfg = copy.deepcopy(cfg)
    cfg.meta.pred_depth = predictor_depth(cfg.meta)
    return cfg


def build_ijepa(cfg, total_steps: int = 0, width: int | None = None) -> IJEPA:
    """The three networks a config describes (``cfg`` a ``Config``); ``total_steps``, the run's
    schedule length, is what the regularisers' decay (``meta.regularizer_final``) spans. ``width``
    replaces both the encoder's and the predictor's width, depths and heads kept (the overhead
    benchmark's networks, whose arithmetic vanishes)."""
    d, m, meta = cfg.data, cfg.mask, cfg.meta
    encoder = build_encoder(meta.model_name, d.crop_size, m.patch_size, d.in_chans, width)
    size = resolve_size(meta.model_name)
    out_dim = d.in_chans * m.patch_size**2 if meta.target == "pixels" else None
    # The predictor keeps MLP ratio 4 at every size (the reference's, the giant included).
    predictor = Predictor(
        encoder.grid, encoder.embed_dim, width or meta.pred_emb_dim, predictor_depth(meta), size.heads, out_dim=out_dim
    )
    if meta.grad_checkpointing:
        encoder.set_grad_checkpointing()
        predictor.set_grad_checkpointing()
    model = IJEPA(
        encoder,
        predictor,
        meta.loss,
        meta.target,
        CollapseRegularizer.from_config(meta, total_steps),
        meta.target_layers,
    )
    if meta.compile:
        for blocks in (model.encoder.blocks, model.target_encoder.blocks, model.predictor.predictor_blocks):
            compile_blocks(blocks, mode=meta.compile_mode)
    return model
