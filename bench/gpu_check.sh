#!/usr/bin/env bash
# The GPU check of issue 4, as one script: our training step and the reference's on the same GPU,
# in one sitting, same batch and mask statistics; prints one JSON line per measurement.
# Needs the venv (`make install`) and, for the reference, OFFICIAL_IJEPA pointing at an extracted
# snapshot of facebookresearch/ijepa (never committed). Not yet run: no GPU has been lent so far.
#   bash bench/gpu_check.sh > gpu_check.out
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REFERENCE_STEP=${REFERENCE_STEP:-../shared/bench/reference_step.py}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

echo "== ViT-B/16 at 224, batch 128, bf16 (reference token counts)"
$PY -m openjepa.cli bench configs/vit_b16_in1k_ep600.yaml meta.device=cuda mask.reference_sampler=true --steps 20 | tail -1
$PY -m openjepa.cli bench configs/vit_b16_in1k_ep600.yaml meta.device=cuda --steps 20 | tail -1
if [ -n "${OFFICIAL_IJEPA:-}" ]; then
    $PY "$REFERENCE_STEP" --img 224 --patch 16 --model vit_base --pred-depth 6 --pred-dim 384 --batch 128 \
        --device cuda --bf16 --min-keep 10 --steps 20 | tail -1
fi

echo "== ViT-B/16 at 224, batch 128, bf16, torch.compile of the blocks (first steps compile: --warmup 5)"
$PY -m openjepa.cli bench configs/vit_b16_in1k_ep600.yaml meta.device=cuda meta.compile=true --warmup 5 --steps 20 | tail -1

echo "== ViT-H/14 at 224, batch 64, bf16, activation checkpointing"
$PY -m openjepa.cli bench configs/vit_h14_in1k_ep300.yaml meta.device=cuda data.batch_size=64 \
    meta.grad_checkpointing=true --steps 5 | tail -1

echo "== loader alone: 1024 JPEGs of 500x375 at 224 px, batch 128: decoded in workers vs on the GPU (nvJPEG)"
JPEGS=${JPEGS:-/tmp/openjepa_jpegs}
$PY bench/make_jpegs.py "$JPEGS" --n 1024
$PY -m openjepa.cli bench configs/vit_b16_in1k_ep600.yaml data.root_path="$JPEGS" data.image_folder= \
    --loader --workers 0,4,8,15 --steps 6 | tail -1
$PY -m openjepa.cli bench configs/vit_b16_in1k_ep600.yaml data.root_path="$JPEGS" data.image_folder= \
    data.decode_on_device=true meta.device=cuda --loader --workers 0,4,8 --steps 6 | tail -1
