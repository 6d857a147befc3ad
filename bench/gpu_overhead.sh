#!/usr/bin/env bash
# Issue 41 on a lent GPU, as one script (part 2 of bench/gpu_session.sh): the host's share of the step
# measured on the GPU machine's own host, then where the full step's time goes, eager against compiled,
# at batch 128 and 256, and ViT-H/14. One JSON line per measurement (the profiles print their top
# kernels first). OFFICIAL_IJEPA (an extracted snapshot of facebookresearch/ijepa, never committed;
# e.g. copied into the ignored data/ folder and carried) adds the reference's overhead.
#   PY=python3 bash bench/gpu_overhead.sh > gpu_overhead.out
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
B16=configs/vit_b16_in1k_ep600.yaml
H14=configs/vit_h14_in1k_ep300.yaml

echo "== host overhead, ViT-B/16 and ViT-H/14 shapes at width 4 per head (ms/step at batch 0, ops, syncs)"
$PY -m openjepa.cli bench $B16 meta.device=cuda --overhead --steps 20 | tail -1
$PY -m openjepa.cli bench $H14 meta.device=cuda --overhead --steps 10 | tail -1
if [ -n "${OFFICIAL_IJEPA:-}" ]; then
    $PY bench/reference_overhead.py --model vit_base --img 224 --patch 16 --device cuda --bf16 --steps 20 | tail -1
    $PY bench/reference_overhead.py --model vit_huge --img 224 --patch 14 --pred-depth 12 --device cuda --bf16 \
        --steps 10 | tail -1
fi

echo "== ViT-B/16, 224 px, bf16: 100-step profiles (top kernels, GPU busy share), eager then compiled blocks"
$PY bench/profile_gpu_step.py $B16 meta.device=cuda --steps 100 | tail -1
$PY bench/profile_gpu_step.py $B16 meta.device=cuda meta.compile=true --warmup 10 --steps 100 | tail -1

echo "== ViT-B/16, batch 128: CUDA graphs (compile mode reduce-overhead) on bucketed context lengths"
$PY -m openjepa.cli bench $B16 meta.device=cuda meta.compile=true meta.compile_mode=reduce-overhead mask.bucket=8 \
    --warmup 15 --steps 20 | tail -1

echo "== ViT-B/16 at batch 256, eager then compiled (openjepa bench: MFU)"
$PY -m openjepa.cli bench $B16 meta.device=cuda data.batch_size=256 --steps 20 | tail -1
$PY -m openjepa.cli bench $B16 meta.device=cuda data.batch_size=256 meta.compile=true --warmup 10 --steps 20 | tail -1

echo "== ViT-H/14, 224 px, batch 128, bf16, compiled blocks"
$PY -m openjepa.cli bench $H14 meta.device=cuda data.batch_size=128 meta.compile=true --warmup 5 --steps 10 | tail -1
