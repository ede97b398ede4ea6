# Stage 1's convolution bound on the GPU (a PLAN for benchmarks/h100_mini_dag.sh; ~1 minute):
# benchmarks/stage1_conv_bound.py at the science scale's batch (16) and at 64, into
# results/stage1_conv_bound/, which the start and follow calls bring back.
set -x
mkdir -p results/stage1_conv_bound
for batch in 16 64; do
    timeout 300 python3 benchmarks/stage1_conv_bound.py --batch-size $batch --out results/stage1_conv_bound/batch$batch.csv
done
