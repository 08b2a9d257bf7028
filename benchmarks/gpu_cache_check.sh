#!/usr/bin/env bash
# Decoded-image cache on one CUDA GPU: ViT-B-16 epoch / scoring img/s reading 2,560 synthetic JPEGs from
# files vs from `--cache` (8 DataLoader workers), at 256 px and 500 px JPEGs. ~4 min on an H100.
# Results: $OUT/speed_cuda_cache_<px>.{md,json} when $OUT is set, else benchmarks/results/.
#   bash benchmarks/gpu_cache_check.sh      # needs torch with CUDA, open_clip_torch, deft_clean importable
source "$(dirname "$0")/gpu_env.sh"
for px in ${PXS:-256 500}; do
  timeout 240 "$PY" benchmarks/speed.py --device cuda --models ViT-B-16 --vit-batch-size 64 --vit-batches 40 \
      --epochs 2 --num-workers "$WORKERS" --image-px "$px" --cache both --sizes "" \
      --work-dir "${TMPDIR:-/tmp}/deft-gpu-cache" --out-dir "$OUT_DIR" --tag "speed_cuda_cache_${px}"
done
