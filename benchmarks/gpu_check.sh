#!/usr/bin/env bash
# deft-clean detect speed on one CUDA GPU, in well under 8 minutes:
#   open_clip ViT-B-16 (random weights: speed does not depend on them), batch 64, 20 VPT tokens,
#   epoch img/s (the last of 2 epochs over 40 batches), compute-only img/s on batches already on the GPU,
#   the data-overhead ratio between them, scoring img/s; then the tiny model and a full 10k-image detect.
# Results: $OUT/speed_cuda.{md,json} when $OUT is set, else benchmarks/results/.
#   bash benchmarks/gpu_check.sh            # needs torch with CUDA, open_clip_torch, deft_clean importable
source "$(dirname "$0")/gpu_env.sh"
# a hard stop at 7.5 minutes (the whole run takes ~2-4 min on an H100)
timeout 450 "$PY" benchmarks/speed.py --device cuda --models ViT-B-16,tiny \
    --vit-batch-size 64 --vit-batches 40 --tiny-batch-size 64 --tiny-batches 40 --epochs 2 \
    --num-workers "$WORKERS" --sizes 10000 --scale-epochs 3 \
    --work-dir "${TMPDIR:-/tmp}/deft-gpu-check" --out-dir "$OUT_DIR" --tag speed_cuda
echo "wrote $OUT_DIR/speed_cuda.md"
