#!/usr/bin/env bash
# Issue 25 on one GPU (H100 or H200), in device calls of at most 10 minutes each; results land in $OUT.
#   STAGE=throughput  nanoGPT's own bench.py (unchanged, GPT-2 124M, batch 32 x 1024, compiled) beside
#                     `openllm train` with the presets' defaults (medium, large) and medium's classic recipe
#                     ("plain"), then two steps between them on medium ("check_every": classic with the loss read
#                     every 5 steps; "muon": that plus Muon)
#   STAGE=small       the speedrun on small: AdamW (classic) vs the shipped default, 3 seeds, both corpora
#   STAGE=medium      the same on medium (SEEDS and STEPS may narrow it to fit a call)
# or JOBS="nanogpt mfu_medium mfu_large sr_small_mixed ..." to run any of these in order in one call; a job that
# would start with less than 30 s of BUDGET (seconds, default 560) left is skipped.
# Every step runs under `timeout` so that one call ends inside its 10 minutes; the speedrun writes its json into
# $OUT after every run, so a cut call still returns what finished (at most 8 files come back from a call).
# Carried into the device call (ignored by git, so pass them in `carry`):
#   .gpu/nanoGPT            a checkout of karpathy/nanoGPT (bench.py, model.py, configurator.py)
#   .gpu/sr/mixed/tokens    python benchmarks/speedrun.py prepare --out .gpu/sr/mixed          (the first corpus)
#   .gpu/sr/dict/tokens     python benchmarks/speedrun.py prepare --out .gpu/sr/dict --corpus dictionaries
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
START=$(date +%s)
left() { local s=$((${BUDGET:-560} - ($(date +%s) - START))); echo $((s > 1 ? s : 1)); }  # seconds left of the plan
stamp() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$OUT/env.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/env.txt"
python3 -c "import torch,triton;print('torch',torch.__version__,'triton',triton.__version__)" >> "$OUT/env.txt"
mfu() {  # NAME CONFIG BATCH STEPS SKIP VARIANTS
  stamp "mfu $1 start"
  timeout "$(left)" python3 benchmarks/speedrun.py mfu --data random --out "/tmp/mfu-$1" --config "$2" --batch "$3" \
    --steps "$4" --skip "$5" --variants "$6" 2>&1 | sed -u "s/^/$1: /" >> "$OUT/mfu.log"  # one json line per variant
  stamp "mfu $1 end"
}
sr() {  # CONFIG CORPUS: the speedrun, AdamW (classic) vs the shipped default, over SEEDS
  local steps=${STEPS:-$([ "$1" = small ] && echo 400 || echo 300)}
  stamp "speedrun $1 $2 start"
  timeout "$(left)" python3 benchmarks/speedrun.py run --data ".gpu/sr/$2/tokens" --out "$OUT/sr_$1_$2" \
    --configs "$1" --variants adamw,default --seeds "${SEEDS:-1337,1,2}" --steps "$steps" --eval-every 20 \
    > "$OUT/speedrun_$1_$2.log" 2>&1
  rm -f "$OUT/sr_$1_$2/speedrun.png"  # redrawn from the json with every seed (speedrun.py plot); few files come back
  stamp "speedrun $1 $2 end"
}
case "${STAGE:-throughput}" in
throughput) JOBS=${JOBS:-nanogpt mfu_medium mfu_large mfu_steps} ;;
small | medium) JOBS=${JOBS:-sr_${STAGE}_mixed sr_${STAGE}_dict} ;;
esac
for job in $JOBS; do
  [ "$(left)" -gt 30 ] || { stamp "no time left for $job"; continue; }
  case $job in
  nanogpt)
    # nanoGPT prints "time per iteration" (ms) for batch_size x block_size tokens; its MFU assumes an A100
    stamp "nanoGPT start"
    (cd .gpu/nanoGPT && timeout "$(left)" python3 bench.py --batch_size=32 --block_size=1024 --real_data=False \
       --compile=True --profile=False) > "$OUT/nanogpt_bench.log" 2>&1
    stamp "nanoGPT end"
    ;;
  mfu_medium) mfu medium medium 32 60 20 default,plain ;;
  mfu_large) mfu large large 8 40 15 default ;;
  mfu_steps) mfu medium_steps medium 32 60 20 check_every,muon ;;
  sr_*_*) IFS=_ read -r _ config corpus <<< "$job"; sr "$config" "$corpus" ;;
  esac
done
tail -n 8 "$OUT"/*.log
cat "$OUT/env.txt"
