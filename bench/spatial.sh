#!/usr/bin/env bash
# Issue 37's numbers: one encoder on the spatial tasks of the procedural scenes, beside a random
# encoder of the same size and raw pixels: count and dist (linear, kNN, attentive probes on
# 10,000 / 2,000 scenes) and the dense probes (seg mIoU, depth RMSE and delta1 on 2,000 / 500 scenes).
#   bash bench/spatial.sh CHECKPOINT OUT_DIR [extra eval options]
# Writes OUT_DIR/{count,dist,dense}.json; `python bench/spatial_table.py OUT_DIR...` makes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CKPT=${1:?checkpoint}
OUT=${2:?output folder}
shift 2
mkdir -p "$OUT"
for task in count dist; do
    $PY -m openjepa.cli eval "$CKPT" --data "scenes:$task" --protocol linear,knn,attentive \
        --baselines random,pixels --out "$OUT/$task.json" --no-progress "$@"
done
$PY -m openjepa.cli eval "$CKPT" --data scenes --protocol seg,depth --baselines random,pixels \
    --out "$OUT/dense.json" --no-progress "$@"
