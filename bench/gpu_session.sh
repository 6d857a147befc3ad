#!/usr/bin/env bash
# What a session lent a GPU runs, as one script sized for the 15 minutes of device time it gets:
#   1. bench/gpu_check.sh (our step against the reference's), cut at CHECK_S seconds;
#   2. bench/gpu_overhead.sh (issue 41: the host's share, profiles, eager against compiled, batch 256,
#      ViT-H/14), cut at OVERHEAD_S seconds;
#   3. issue 12's GPU recipe (configs/fmnist_gpu.yaml) through bench/recipe_study.py: each variant
#      trained once for EPOCHS epochs and its checkpoints evaluated at EVAL_EPOCHS and at the end
#      (linear, kNN@20, 1% labels), so one run gives accuracy against epochs; cut at RECIPE_S seconds
#      (0 by default since issue 12 ended: RECIPE_S=300 runs it);
#   4. issue 38's claims (bench/claims.py) at CLAIMS_IMAGES images per arm and domain, in a section of
#      their own (--tag gpu), cut at CLAIMS_S seconds (0 by default: the first two parts fill one call;
#      CHECK_S=0 OVERHEAD_S=0 CLAIMS_S=420 makes a claims-only call). Its results.json resumes.
# Each evaluation appends its row to the CSV as it ends, so a part cut short keeps what it measured.
# The CSV, the logs and every eval JSON are copied to $OUT (the device tool's folder; default
# runs/gpu_session); checkpoints stay in runs/ (too large to bring back). CHECK_S=0 skips the step
# check; CHECK_S=0 DEVICE=cpu JOBS=1 RECIPE_ARGS="--fraction 0.01" tries the recipe part on a CPU
# (about 5 minutes on 2 cores).
#
# On the device machine (its own torch, no venv; Fashion-MNIST carried from this checkout):
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   device run, carry data/fashion-mnist:  PY=python3 bash bench/gpu_session.sh
# The parts take at most 7 minutes by default (CHECK_S + OVERHEAD_S + RECIPE_S): give the device call
# timeout_s 540, which with the machine's start (a few minutes) stays inside the 15 minutes a session is lent.
set -uo pipefail
cd "$(dirname "$0")/.."
export PY=${PY:-.venv/bin/python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-runs/gpu_session}
CHECK_S=${CHECK_S:-150}
OVERHEAD_S=${OVERHEAD_S:-270}
RECIPE_S=${RECIPE_S:-0}
CLAIMS_S=${CLAIMS_S:-0}
CLAIMS_IMAGES=${CLAIMS_IMAGES:-200000}
EPOCHS=${EPOCHS:-10}
EVAL_EPOCHS=${EVAL_EPOCHS:-2,5}
VARIANTS=${VARIANTS:-base,vit_base:meta.model_name=vit_base}  # base: the config as it is
JOBS=${JOBS:-2}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"

"$PY" -c "from openjepa.data import find_fashion_mnist; find_fashion_mnist()" || {
    echo "Fashion-MNIST not found: put the four idx files in data/fashion-mnist and carry that folder" >&2
    exit 2
}

bring_back() {
    for d in runs/gpu_recipe/*/; do
        [ -d "$d" ] || continue
        name=$(basename "$d")
        mkdir -p "$OUT/$name"
        cp "$d"log.csv "$d"config.yaml "$d"train.log "$OUT/$name/" 2>/dev/null
        cp "$d"eval/*.json "$OUT/$name/" 2>/dev/null
    done
    cp runs/gpu_recipe/*.out "$OUT/" 2>/dev/null
    cp runs/gpu_claims/results.json "$OUT/gpu_claims.json" 2>/dev/null
}
trap bring_back EXIT

if [ "$CHECK_S" -gt 0 ]; then
    echo "== gpu_check.sh (at most ${CHECK_S}s)"
    timeout "$CHECK_S" bash bench/gpu_check.sh > "$OUT/gpu_check.out" 2>&1
    echo "gpu_check.sh exit $? ($(grep -c '^{' "$OUT/gpu_check.out") measurements)"
fi

if [ "$OVERHEAD_S" -gt 0 ]; then
    echo "== gpu_overhead.sh (at most ${OVERHEAD_S}s)"
    timeout "$OVERHEAD_S" bash bench/gpu_overhead.sh > "$OUT/gpu_overhead.out" 2>&1
    echo "gpu_overhead.sh exit $? ($(grep -c '^{' "$OUT/gpu_overhead.out") measurements)"
fi

if [ "$CLAIMS_S" -gt 0 ]; then
    echo "== claims.py at $CLAIMS_IMAGES images per arm (at most ${CLAIMS_S}s for both domains)"
    deadline=$((SECONDS + CLAIMS_S))
    claims=(bench/claims.py --tag gpu --images "$CLAIMS_IMAGES" --seeds 1 --runs-dir runs/gpu_claims
        --md "$OUT/BENCHMARKS_claims.md" --figure "$OUT/claims_curve_gpu.png" --override meta.device="$DEVICE"
        --override meta.use_bfloat16=true --override data.num_workers=12 --override data.pin_mem=true)
    timeout $((deadline - SECONDS)) "$PY" "${claims[@]}" --domains scenes --arms "I-JEPA,DINO,pixel targets" \
        >> "$OUT/gpu_claims.log" 2>&1
    echo "claims.py (scenes) exit $?"
    [ $((deadline - SECONDS)) -gt 30 ] && timeout $((deadline - SECONDS)) "$PY" "${claims[@]}" --domains fmnist \
        --eval-limit 10000 >> "$OUT/gpu_claims.log" 2>&1
    echo "claims.py (fmnist) exit $?"
fi

[ "$RECIPE_S" -gt 0 ] || exit 0
echo "== GPU recipe: $VARIANTS, $EPOCHS epochs, evaluated at $EVAL_EPOCHS and the end (at most ${RECIPE_S}s)"
timeout "$RECIPE_S" "$PY" bench/recipe_study.py --base configs/fmnist_gpu.yaml --device "$DEVICE" --jobs "$JOBS" \
    --epochs "$EPOCHS" --eval-epochs "$EVAL_EPOCHS" --variants "$VARIANTS" ${RECIPE_ARGS:-} \
    --runs-dir runs/gpu_recipe --results "$OUT/gpu_recipe.csv" > "$OUT/gpu_recipe.log" 2>&1
echo "recipe_study.py exit $?"
cat "$OUT/gpu_recipe.csv" 2>/dev/null
