#!/usr/bin/env bash
# Issue 25 on one GPU (H100 or H200), in device calls of at most 10 minutes each; results land in $OUT.
#   STAGE=throughput  nanoGPT's own bench.py (unchanged, GPT-2 124M, batch 32 x 1024, compiled) beside
#                     `openllm train` with the presets' defaults (medium, large) and medium's classic recipe
#   STAGE=small       the speedrun on small: AdamW (classic) vs the shipped default, 3 seeds, both corpora
#   STAGE=medium      the same on medium
# Carried into the device call (ignored by git, so pass them in `carry`):
#   .gpu/nanoGPT            a checkout of karpathy/nanoGPT (bench.py, model.py, configurator.py)
#   .gpu/sr/mixed/tokens    python benchmarks/speedrun.py prepare --out .gpu/sr/mixed          (the first corpus)
#   .gpu/sr/dict/tokens     python benchmarks/speedrun.py prepare --out .gpu/sr/dict --corpus dictionaries
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/env.txt"
python3 -c "import torch;print('torch',torch.__version__)" >> "$OUT/env.txt"
case "${STAGE:-throughput}" in
throughput)
  # nanoGPT prints "time per iteration" (ms) for batch_size x block_size tokens; its MFU assumes an A100
  (cd .gpu/nanoGPT && python3 bench.py --batch_size=32 --block_size=1024 --real_data=False --compile=True \
     --profile=False) > "$OUT/nanogpt_bench.log" 2>&1
  python3 benchmarks/speedrun.py mfu --data random --out /tmp/mfu-medium --config medium --batch 32 --steps 60 \
    --skip 20 --variants default,plain > "$OUT/mfu_medium.log" 2>&1
  cp /tmp/mfu-medium/mfu.json "$OUT/mfu_medium.json"
  python3 benchmarks/speedrun.py mfu --data random --out /tmp/mfu-large --config large --batch 8 --steps 40 \
    --skip 15 --variants default > "$OUT/mfu_large.log" 2>&1
  cp /tmp/mfu-large/mfu.json "$OUT/mfu_large.json"
  ;;
small|medium)
  steps=$([ "$STAGE" = small ] && echo 400 || echo 300)
  for c in mixed dict; do
    python3 benchmarks/speedrun.py run --data ".gpu/sr/$c/tokens" --out "/tmp/sr-$STAGE-$c" --configs "$STAGE" \
      --variants adamw,default --seeds 1337,1,2 --steps "$steps" --eval-every 20 > "$OUT/speedrun_${STAGE}_$c.log" 2>&1
    cp "/tmp/sr-$STAGE-$c/speedrun.json" "$OUT/speedrun_${STAGE}_$c.json"
    cp "/tmp/sr-$STAGE-$c/speedrun.png" "$OUT/speedrun_${STAGE}_$c.png"
  done
  ;;
esac
tail -n 12 "$OUT"/*.log
