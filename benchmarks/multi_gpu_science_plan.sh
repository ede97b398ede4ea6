# The science scale on one machine of several GPUs, every table with three seeds (run by
# `PLAN=benchmarks/multi_gpu_science_plan.sh bash benchmarks/h100_mini_dag.sh start OUTDIR`,
# then `follow` calls, carrying the wheels and FID weights as for the one-GPU science plan;
# GPUS, the machine's GPU count, comes from h100_mini_dag.sh, and so does `--resources
# gpu=GPUS`, which spreads the one-GPU jobs over the GPUs, each claiming its own):
# 1. DDP scaling of Stage 1 and Stage 2 at the run's batch per GPU (16 and 256): 100 steps of
#    benchmarks/ddp_scaling.py on one GPU, then on all at GPUS times the global batch
#    (logs/ddp_scaling.md: samples/s and the speed-up), a few minutes;
# 2. h100_science_plan.sh with SCIENCE_GPUS=GPUS (benchmarks/science_config.py: Stage 1 and
#    Stage 2 over all GPUs at the one-GPU batch per GPU, both variants, Table 8's baselines,
#    one sampling shard per GPU) to SCIENCE_TARGETS, by default `all`.
set -x
mkdir -p logs
export SCIENCE_GPUS=${GPUS:?set by h100_mini_dag.sh: the GPU count of the machine}
if [ "${PLAN_SCALING:-1}" = 1 ]; then
    for spec in "stage1 16" "stage2 256"; do
        set -- $spec
        python3 benchmarks/ddp_scaling.py run --model "$1" --steps 100 --batch-size "$2" \
            --samples $((2 * $2 * GPUS)) --out "/root/ddp/$1-1" > "logs/ddp_$1.log" 2>&1 &&
            torchrun --standalone --nproc_per_node "$GPUS" benchmarks/ddp_scaling.py run --model "$1" --steps 100 \
                --batch-size $(($2 * GPUS)) --samples $((2 * $2 * GPUS)) --out "/root/ddp/$1-$GPUS" >> "logs/ddp_$1.log" 2>&1 &&
            python3 benchmarks/ddp_scaling.py compare "/root/ddp/$1-1" "/root/ddp/$1-$GPUS" \
                --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x$GPUS" >> logs/ddp_scaling.md
    done
fi
export SCIENCE_TARGETS=${SCIENCE_TARGETS:-all}
bash benchmarks/h100_science_plan.sh
