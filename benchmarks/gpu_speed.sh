#!/usr/bin/env bash
# The GPU path on one CUDA GPU, before (eager, CPU transforms) and after (torch.compile, device transforms):
#   ViT-B-16 detect epoch / compute-only / scoring / quick img/s (batch 256, 40 batches of 256 px JPEGs),
#   then selection and health on 1M x 1000 synthetic features on the GPU.
# Results: $OUT/gpu_speed.{json,md} when $OUT is set, else benchmarks/results/. A hard stop at 9.5 minutes.
#   bash benchmarks/gpu_speed.sh            # needs torch with CUDA, open_clip_torch, deft_clean importable
#   ROWS=200000 bash benchmarks/gpu_speed.sh  # a smaller selection/health size
source "$(dirname "$0")/gpu_env.sh"
timeout 570 "$PY" benchmarks/gpu_speed.py --device cuda --model ViT-B-16 --batch-size 256 --batches 40 \
    --num-workers "$WORKERS" --rows "${ROWS:-1000000}" --classes 1000 --out-dir "$OUT_DIR"
echo "wrote $OUT_DIR/gpu_speed.json"
