"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"), the
view-invariance baseline beside I-JEPA on the same engine (``meta.objective: dino``).

A student and its EMA teacher, each the same ViT as I-JEPA's encoder with a projection head to K
prototypes. The teacher sees the two global views of an image; its output, centred and sharpened,
is the target of the student's output on every other view, global or local (the paper's
Algorithm 1). The centre, an EMA of the teacher's mean output, and the sharpening (a low teacher
temperature) are what keep the two from collapsing to one constant answer.

Our ViT has no CLS token: an image's embedding is the mean of its patch features after the final
norm, which is also what our evaluation probes. The heads and the centre stay out of the encoders'
state, so a checkpoint's ``encoder`` / ``target_encoder`` are plain ViTs that evaluate and export
as I-JEPA's do.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .engine.schedules import linear
from .models.vit import VisionTransformer, build_encoder, compile_blocks, init_weights

STUDENT_TEMP = 0.1
CENTER_MOMENTUM = 0.9
BOTTLENECK = 256  # the head's last MLP width, before the prototypes


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a bottleneck, L2-normalised, then a
    weight-normalised linear layer to K prototypes whose gain is frozen at 1. With the gain fixed,
    the layer is each prototype's weight row divided by its norm, written so here (no hook).
    ``batch_norm``: a BatchNorm after each hidden layer (before its GELU), as the DINO code's option."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = BOTTLENECK, batch_norm: bool = False
    ):
        super().__init__()

        def layer(width_in: int) -> list[nn.Module]:  # without the norm, the state keys of the plain head
            return [nn.Linear(width_in, hidden), *([nn.BatchNorm1d(hidden)] if batch_norm else []), nn.GELU()]

        self.mlp = nn.Sequential(*layer(in_dim), *layer(hidden), nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        init_weights(self.mlp)  # trunc-normal(0.02) weights, zero biases: DINO's
        nn.init.trunc_normal_(self.prototypes, std=0.02, a=-2.0, b=2.0)  # only the direction of a row matters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.prototypes, dim=-1))


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float = STUDENT_TEMP,
) -> torch.Tensor:
    """The paper's loss: H(P_t(x), P_s(x')) = -sum_k P_t log P_s for every teacher view x and
    every student view x' but x itself, averaged over those 2 x (2 + n_local) - 2 pairs and the
    images. P_t = softmax((g_t - center) / teacher_temp): centred, sharpened, no gradient;
    P_s = softmax(g_s / student_temp). ``student``: logits [B, K] per view, the two global views
    first; ``teacher``: the two global views' logits."""
    targets = [F.softmax((t.float() - center) / teacher_temp, dim=-1).detach() for t in teacher]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    terms = [-(q * log_probs[v]).sum(-1).mean() for i, q in enumerate(targets) for v in range(len(log_probs)) if v != i]
    return torch.stack(terms).mean()


class DINO(nn.Module):
    """``encoder`` and ``head`` are the student, trained by the optimiser; ``target_encoder`` and
    ``target_head`` the teacher, their EMA (``update_target``, the schedule of I-JEPA's target
    encoder). The teacher's temperature rises linearly from ``warmup_teacher_temp`` to
    ``teacher_temp`` over ``warmup_steps`` steps, then stays."""

    def __init__(
        self,
        encoder: VisionTransformer,
        head: DINOHead,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_steps: int = 0,
    ):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, head.prototypes.size(0)))
        self.teacher_temp, self.warmup_teacher_temp, self.warmup_steps = teacher_temp, warmup_teacher_temp, warmup_steps

    def teacher_temp_at(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.teacher_temp
        return linear(step, self.warmup_teacher_temp, self.teacher_temp, self.warmup_steps)

    def forward_teacher(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch features [V, N, D], logits [V, K]) of the teacher on the global ``views`` (no gradient)."""
        with torch.no_grad():
            features = self.target_encoder(views)
            return features, self.target_head(features.mean(1))

    def forward_student(self, views: torch.Tensor, local_views: torch.Tensor | None) -> torch.Tensor:
        """Logits [V, K] of the student on the global views, then the local ones (a smaller grid:
        the encoder interpolates its position embedding to it); the head runs once on all."""
        embeddings = [self.encoder(views).mean(1)]
        if local_views is not None and len(local_views):
            embeddings.append(self.encoder(local_views).mean(1))
        return self.head(torch.cat(embeddings))

    def forward(
        self,
        images: torch.Tensor,
        local_images: torch.Tensor | None = None,
        return_target: bool = False,
        step: int = 0,
    ):
        """The loss on a batch of views: ``images`` [B, 2, C, H, W] (each image's two global views),
        ``local_images`` [B, n, C, h, w] or None; the centre is then updated with the teacher's
        output. With ``return_target`` also the teacher's layer-normed patch features of the global
        views, the counterpart of I-JEPA's targets (for their spread, ``target_std``)."""
        B = images.size(0)
        views = images.transpose(0, 1).flatten(0, 1)  # view-major: every image's first view, then the second
        local_views = local_images.transpose(0, 1).flatten(0, 1) if local_images is not None else None
        features, teacher = self.forward_teacher(views)
        student = self.forward_student(views, local_views)
        loss = dino_loss(list(student.split(B)), list(teacher.split(B)), self.center, self.teacher_temp_at(step))
        self.update_center(teacher)
        if return_target:
            return loss, F.layer_norm(features, (features.size(-1),))
        return loss

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """center <- 0.9 center + 0.1 mean of the teacher's logits over the batch (every process's
        images: a sum and a count are all-reduced, so processes with skipped images still agree)."""
        total = torch.cat([teacher.float().sum(0), teacher.new_full((1,), len(teacher), dtype=torch.float32)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        self.center.mul_(CENTER_MOMENTUM).add_(total[:-1] / total[-1], alpha=1.0 - CENTER_MOMENTUM)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, encoder and head at once."""
        online = [*self.encoder.parameters(), *self.head.parameters()]
        target = [*self.target_encoder.parameters(), *self.target_head.parameters()]
        torch._foreach_lerp_(target, online, 1.0 - momentum)

    def checkpoint_entries(self) -> dict:
        """What a checkpoint holds of the model (``pretrain.state``): the encoders as plain ViT
        states, the heads and the centre under their own keys."""
        return {
            "encoder": self.encoder.state_dict(),
            "target_encoder": self.target_encoder.state_dict(),
            "dino_heads": {"student": self.head.state_dict(), "teacher": self.target_head.state_dict()},
            "dino_center": self.center,
        }

    def load_checkpoint_entries(self, state: dict) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.target_encoder.load_state_dict(state["target_encoder"])
        self.head.load_state_dict(state["dino_heads"]["student"])
        self.target_head.load_state_dict(state["dino_heads"]["teacher"])
        self.center.copy_(state["dino_center"])


def build_dino(cfg, total_steps: int = 0) -> DINO:
    """The student and teacher a config describes (``cfg`` a ``Config`` with ``meta.objective:
    dino``); ``total_steps``, the run's schedule length, sets the teacher temperature's warmup
    (``meta.dino_teacher_temp_warmup`` of it)."""
    d, meta = cfg.data, cfg.meta
    encoder = build_encoder(meta.model_name, d.crop_size, cfg.mask.patch_size, d.in_chans)
    head = DINOHead(encoder.embed_dim, meta.dino_out_dim, meta.dino_hidden, batch_norm=meta.dino_head_bn)
    if meta.grad_checkpointing:
        encoder.set_grad_checkpointing()
    warmup = int(meta.dino_teacher_temp_warmup * total_steps)
    model = DINO(encoder, head, meta.dino_teacher_temp, meta.dino_warmup_teacher_temp, warmup)
    if meta.compile:
        for blocks in (model.encoder.blocks, model.target_encoder.blocks):
            compile_blocks(blocks, mode=meta.compile_mode)
    return model
