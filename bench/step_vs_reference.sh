#!/usr/bin/env bash
# Issue 12, item 3: our CPU training step against the reference's, at equal mathematics (ViT-Tiny/4
# at 32x32, batch 64, predictor 96x6, the reference's mask sampler), alternating within one sitting
# so that the machine's drift hits every variant alike. One JSON line per run, then a summary of
# each variant's images/s against the reference's of the same round.
#
#   OFFICIAL_IJEPA=/path/to/ijepa bench/step_vs_reference.sh [ROUNDS] [extra variant overrides...]
#
# Variants: the reference (fp32, as it trains on a CPU), ours in fp32, ours under bf16 autocast
# (`meta.cpu_bfloat16=true`), and ours under bf16 with any extra overrides given (e.g.
# optimization.fused_adamw=false) so a change can be A/B-tested in the same sitting.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OFFICIAL_IJEPA:?set OFFICIAL_IJEPA to an extracted snapshot of facebookresearch/ijepa}"
PY=${PY:-.venv/bin/python}
ROUNDS=${1:-2}
shift || true
EXTRA=("$@")
STEPS=${STEPS:-10}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  ref=$(OFFICIAL_IJEPA="$OFFICIAL_IJEPA" "$PY" ../shared/bench/reference_step.py --img 32 --patch 4 \
        --model vit_tiny --pred-depth 6 --pred-dim 96 --batch 64 --steps "$STEPS" --windows 3 --min-keep 4 | tail -1)
  echo "{\"round\": $round, \"variant\": \"reference fp32\", \"result\": $ref}" | tee -a "$OUT"
  variants=("fp32|meta.cpu_bfloat16=false" "bf16|meta.cpu_bfloat16=true")
  if [ ${#EXTRA[@]} -gt 0 ]; then
    variants+=("bf16 ${EXTRA[*]}|meta.cpu_bfloat16=true ${EXTRA[*]}")
  fi
  for v in "${variants[@]}"; do
    name=${v%%|*}
    # shellcheck disable=SC2086
    res=$("$PY" -m openjepa.cli bench configs/bench_cpu_tiny.yaml mask.reference_sampler=true ${v#*|} \
          --steps "$STEPS" 2>/dev/null | tail -1)
    echo "{\"round\": $round, \"variant\": \"openjepa $name\", \"result\": $res}" | tee -a "$OUT"
  done
done
"$PY" - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ref = {r["round"]: r["result"]["img_per_s"] for r in rows if r["variant"] == "reference fp32"}
print(f"{'round':>5}  {'variant':45s} {'img/s':>7}  vs reference")
for r in rows:
    ips = r["result"]["img_per_s"]
    print(f"{r['round']:>5}  {r['variant']:45s} {ips:7.1f}  {ips / ref[r['round']]:.2f}x")
EOF
