#!/usr/bin/env bash
# One device call for issue 11 on a 2-GPU machine: GPU 0 measures throughput (medium, then small) through
# `openllm train` beside transformers; GPU 1 trains the Shakespeare quality run at the same time; then DDP on
# both GPUs and FSDP2 vs DDP. Results land in $OUT.
export PYTHONPATH=src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/env.txt"
python3 -c "import torch,transformers;print('torch',torch.__version__,'transformers',transformers.__version__)" >> "$OUT/env.txt"
GPUS=$(nvidia-smi -L | wc -l)
if [ "$GPUS" -lt 2 ]; then  # one GPU: one thing at a time, most important first
  python3 benchmarks/gpu_train.py --config medium --batch 32 --steps 50 --json "$OUT/medium.json" > "$OUT/medium.log" 2>&1
  DEVICE=cpu bash benchmarks/shakespeare_quality.sh .gpu/tinyshakespeare.txt /tmp/shk > "$OUT/shakespeare.log" 2>&1
  cp /tmp/shk/run/loss.png "$OUT/shakespeare_loss.png"; cp /tmp/shk/eval.json "$OUT/shakespeare_eval.json"
  cp /tmp/shk/run/metrics.jsonl "$OUT/shakespeare_metrics.jsonl"
  python3 benchmarks/gpu_train.py --config small --batch 64 --steps 50 --json "$OUT/small.json" > "$OUT/small.log" 2>&1
  tail -n 5 "$OUT"/*.log; exit 0
fi
( CUDA_VISIBLE_DEVICES=1 DEVICE=cpu bash benchmarks/shakespeare_quality.sh .gpu/tinyshakespeare.txt /tmp/shk > "$OUT/shakespeare.log" 2>&1
  cp /tmp/shk/run/loss.png "$OUT/shakespeare_loss.png"; cp /tmp/shk/eval.json "$OUT/shakespeare_eval.json"
  cp /tmp/shk/run/metrics.jsonl "$OUT/shakespeare_metrics.jsonl" ) &
CUDA_VISIBLE_DEVICES=0 python3 benchmarks/gpu_train.py --config medium --batch 32 --steps 50 --json "$OUT/medium.json" > "$OUT/medium.log" 2>&1
CUDA_VISIBLE_DEVICES=0 python3 benchmarks/gpu_train.py --config small --batch 64 --steps 50 --json "$OUT/small.json" > "$OUT/small.log" 2>&1
wait
python3 benchmarks/gpu_multi.py --config medium --batch 32 --steps 30 --single-json "$OUT/medium.json" \
  --fsdp-steps 20 --json "$OUT/multi.json" > "$OUT/multi.log" 2>&1
tail -n 5 "$OUT"/*.log
