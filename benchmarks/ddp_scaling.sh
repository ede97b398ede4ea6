#!/usr/bin/env bash
# 1 vs 2 processes (one per GPU) for Stage 1 and Stage 2, same global batch: throughput
# scaling and loss-curve agreement (benchmarks/ddp_scaling.py). On a 2-GPU machine:
#   bash benchmarks/ddp_scaling.sh OUTDIR [MACHINE-LABEL]
set -uo pipefail
OUT=${1:?output folder}
MACHINE=${2:-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x$(nvidia-smi -L | wc -l)}
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$(pwd)/src:${PYTHONPATH:-}
RUNS=/root/ddp
rm -rf "$RUNS"
for model in stage1 stage2; do
    python3 benchmarks/ddp_scaling.py run --model "$model" --out "$RUNS/$model-1" || exit 1
    torchrun --standalone --nproc_per_node 2 benchmarks/ddp_scaling.py run --model "$model" --out "$RUNS/$model-2" || exit 1
    python3 benchmarks/ddp_scaling.py compare "$RUNS/$model-1" "$RUNS/$model-2" --machine "$MACHINE" | tee -a "$OUT/ddp_scaling.md"
    paste -d, <(cut -d, -f1,6 "$RUNS/$model-1/log.csv") <(cut -d, -f6 "$RUNS/$model-2/log.csv") > "$OUT/ddp_loss_$model.csv"
done
