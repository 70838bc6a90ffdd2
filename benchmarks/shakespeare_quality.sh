#!/usr/bin/env bash
# Quality per compute: Tiny Shakespeare -> BPE tokenizer -> a ~11M model trained through `openllm train` on one
# GPU (benchmarks/configs/shakespeare.json, early stopping on val loss) -> val bits per byte of the best
# checkpoint. Usage: bash benchmarks/shakespeare_quality.sh PATH/TO/tinyshakespeare.txt OUTDIR
set -euo pipefail
TXT=$1; OUT=$2
mkdir -p "$OUT"
openllm() { python3 -m openllm "$@"; }
openllm prepare-data "$TXT" --out "$OUT/prepared" --val-fraction 0.1 --quiet
openllm train-tokenizer --data "$OUT/prepared" --vocab-size 2048 --out "$OUT/tok" --quiet
openllm tokenize --data "$OUT/prepared" --tokenizer "$OUT/tok" --out "$OUT/tokens" --quiet
start=$(date +%s)
openllm train --config "${CONFIG:-benchmarks/configs/shakespeare.json}" --data "$OUT/tokens" --out "$OUT/run" --no-progress
echo "training wall time: $(( $(date +%s) - start )) s"
best=$(python3 -c "import json,sys; print(json.load(open('$OUT/run/checkpoints/best.json'))['step'])")
echo "best checkpoint: step $best"
ck=$(printf "%s/run/checkpoints/step_%08d" "$OUT" "$best")
openllm evaluate "$ck" --data "$OUT/tokens" --device "${DEVICE:-cuda}" --no-generation --no-baselines --json "$OUT/eval.json"
