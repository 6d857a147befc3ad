"""The reference's training step (facebookresearch/ijepa, src/train.py) measured as
``openjepa bench CONFIG --overhead`` measures ours: the same depths, heads and token counts at a
width of 4 per head, timed at two batch sizes and extrapolated to batch 0, and its operators,
kernel-like operators and host syncs counted per step with ``openjepa.bench.counting``.

The reference is not part of this project: extract a snapshot of facebookresearch/ijepa outside
the repository and point OFFICIAL_IJEPA at it.

    OFFICIAL_IJEPA=/path/to/ijepa python bench/reference_overhead.py --model vit_base --img 224 --patch 16
    OFFICIAL_IJEPA=/path/to/ijepa python bench/reference_overhead.py --model vit_huge --img 224 --patch 14 \
        --pred-depth 12 --bf16

The step is the reference's ``train_step`` with its masks drawn beforehand (its loader's workers
draw them during training): schedulers, target forward, layer norm, ``apply_masks``,
``repeat_interleave_batch``, context encoder, predictor, smooth-L1, backward (under ``--bf16``
through its GradScaler, as it trains), AdamW, ``grad_logger``, the EMA loop and ``float(loss)``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import os
import statistics
import sys

import torch
import torch.nn.functional as F

from openjepa.bench.counting import StepCount
from openjepa.bench.overhead import fixed_cost, time_alternately
from openjepa.bench.step import WIDTH_PER_HEAD
from openjepa.models.vit import resolve_size


def build(a, batch: int, dev: torch.device):
    """The reference's networks, optimiser, schedulers and a pool of mask batches, for ``batch`` images."""
    import src.models.vision_transformer as vit
    from src.helper import init_opt
    from src.masks.multiblock import MaskCollator

    size = resolve_size(a.model)
    width = WIDTH_PER_HEAD * size.heads
    torch.manual_seed(0)
    encoder = vit.VisionTransformer(
        img_size=[a.img],
        patch_size=a.patch,
        embed_dim=width,
        depth=size.depth,
        num_heads=size.heads,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
    ).to(dev)
    predictor = vit.vit_predictor(
        num_patches=encoder.patch_embed.num_patches,
        embed_dim=width,
        predictor_embed_dim=width,
        depth=a.pred_depth,
        num_heads=size.heads,
    ).to(dev)
    target = copy.deepcopy(encoder).requires_grad_(False)
    ipe, epochs = 1000, 10
    optimizer, scaler, scheduler, wd_scheduler = init_opt(
        encoder, predictor, ipe, start_lr=2e-4, ref_lr=1e-3, warmup=1, num_epochs=epochs, wd=0.04,
        final_wd=0.4, final_lr=1e-6, use_bfloat16=a.bf16, ipe_scale=1.0,
    )  # fmt: skip
    if a.bf16 and dev.type != "cuda":
        scaler = torch.amp.GradScaler(dev.type)  # the reference's is torch.cuda's; the same code on the CPU
    collator = MaskCollator(
        input_size=(a.img, a.img), patch_size=a.patch, enc_mask_scale=(0.85, 1.0), pred_mask_scale=(0.15, 0.2),
        aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=a.min_keep, allow_overlap=False,
    )  # fmt: skip
    data = [(torch.randn(3, a.img, a.img), 0) for _ in range(batch)]
    pool = []
    for _ in range(8):
        images, enc, pred = collator(data)
        pool.append((images[0].to(dev), [m.to(dev) for m in enc], [m.to(dev) for m in pred]))
    momentum = (0.996 + i * (1.0 - 0.996) / (ipe * epochs) for i in range(ipe * epochs + 1))
    return encoder, predictor, target, optimizer, scaler, scheduler, wd_scheduler, pool, momentum


def make_step(a, batch: int, dev: torch.device):
    from src.masks.utils import apply_masks
    from src.utils.logging import grad_logger
    from src.utils.tensors import repeat_interleave_batch

    encoder, predictor, target, optimizer, scaler, scheduler, wd_scheduler, pool, momentum = build(a, batch, dev)
    count = iter(range(10**9))

    def step():
        imgs, masks_enc, masks_pred = pool[next(count) % len(pool)]
        scheduler.step()
        wd_scheduler.step()
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            with torch.no_grad():
                h = target(imgs)
                h = F.layer_norm(h, (h.size(-1),))
                B = len(h)
                h = apply_masks(h, masks_pred)
                h = repeat_interleave_batch(h, B, repeat=len(masks_enc))
            z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
            loss = F.smooth_l1_loss(z, h)
        if a.bf16:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        grad_logger(encoder.named_parameters())
        optimizer.zero_grad()
        with torch.no_grad():
            m = next(momentum)
            for param_q, param_k in zip(encoder.parameters(), target.parameters()):
                param_k.data.mul_(m).add_((1.0 - m) * param_q.detach().data)
        return float(loss)

    step.optimizer = optimizer
    return step


def host_tensors(optimizer) -> tuple:
    """AdamW's step counters on the host (torch keeps them there unless fused or capturable): reading
    them is not a device sync."""
    return tuple(s["step"] for s in optimizer.state.values() if "step" in s and s["step"].device.type == "cpu")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_base")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--pred-depth", type=int, default=6)
    p.add_argument("--min-keep", type=int, default=10)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    a = p.parse_args()
    root = os.environ.get("OFFICIAL_IJEPA")
    if not root or not os.path.isdir(os.path.join(root, "src")):
        sys.exit("set OFFICIAL_IJEPA to an extracted snapshot of facebookresearch/ijepa")
    sys.path.insert(0, root)
    logging.disable(logging.WARNING)
    dev = torch.device(a.device)
    small, large = (int(b) for b in a.batches.split(","))
    steps = {b: make_step(a, b, dev) for b in (small, large)}

    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    times = time_alternately(steps, a.steps, a.windows, a.warmup, sync)  # as openjepa bench --overhead
    ms = {b: statistics.median(t) for b, t in times.items()}
    fixed = fixed_cost(ms, small, large)
    with StepCount(host_tensors(steps[small].optimizer)) as count:
        for _ in range(a.steps):
            steps[small]()
    size = resolve_size(a.model)
    result = {
        "impl": "reference",
        "mode": "overhead",
        "model": a.model,
        "shapes": {
            "depth": size.depth,
            "heads": size.heads,
            "pred_depth": a.pred_depth,
            "tokens": (a.img // a.patch) ** 2,
            "width": WIDTH_PER_HEAD * size.heads,
        },
        "overhead_ms": round(fixed, 2),
        "step_ms": {str(b): round(v, 2) for b, v in ms.items()},
        "windows_ms": {str(b): [round(v, 2) for v in t] for b, t in times.items()},
        **count.summary(a.steps),
        "precision": "bf16" if a.bf16 else "fp32",
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
