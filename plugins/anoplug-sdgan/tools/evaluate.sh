#!/usr/bin/env bash
# The README's evaluator numbers from the SHIPPED checkpoint. Run from the repo root:
#   bash plugins/anoplug-sdgan/tools/evaluate.sh        (CPU, one thread per process)
# Mask precision: the brief's command (-n 64 --size 256), for the composed output and the raw translation.
# Downstream utility: the lead's CPU protocol for every GAN plugin and DRAEM (same data, same n, same params):
#   generate -n 64 --size 128, evaluate --size 128 with ASBench's CPU utility profile and 3 repeats.
# DRAEM's reference with exactly that command is /tmp/gan_ref/draem_fabric_utility_cpu.json (copied to docs/).
set -euo pipefail
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
DOCS=plugins/anoplug-sdgan/docs
OUT=${OUT:-/tmp/sdgan_eval}
UTIL=(--param steps=300 --param base_width=8 --param lr=0.001 --param batch_size=8 --param size=128 --param repeats=3)
rm -rf "$OUT" && mkdir -p "$OUT"

# 1. mask precision: composed output (the default) and the raw translation (compose=False, same weights)
.venv/bin/anoplug generate sdgan --data toy:fabric -n 64 --size 256 --out "$OUT/gen" -q
.venv/bin/anoplug evaluate --evaluator mask-precision --generated "$OUT/gen/fabric" --out "$DOCS/mask_precision.json"
.venv/bin/python - "$OUT/raw_weights" <<'PY'
import sys
from anoplug_sdgan.sdgan import SDGAN
g = SDGAN.from_pretrained("fabric"); g.params.compose = False; g.save(sys.argv[1])
PY
.venv/bin/anoplug generate sdgan --data toy:fabric -n 64 --size 256 --load "$OUT/raw_weights" --out "$OUT/raw" -q
.venv/bin/anoplug evaluate --evaluator mask-precision --generated "$OUT/raw/fabric" --out "$DOCS/mask_precision_raw.json"

# 2. downstream utility (the lead's protocol)
.venv/bin/anoplug generate sdgan --data toy:fabric -n 64 --size 128 --out "$OUT/gen128" -q
.venv/bin/anoplug evaluate --evaluator downstream-utility --generated "$OUT/gen128/fabric" --real toy:fabric --size 128 \
    "${UTIL[@]}" --out "$DOCS/utility_sdgan.json"
if [ -f /tmp/gan_ref/draem_fabric_utility_cpu.json ]; then cp /tmp/gan_ref/draem_fabric_utility_cpu.json "$DOCS/utility_draem.json"; fi
