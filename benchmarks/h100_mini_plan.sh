# What the mini-scale GPU run does (run by `h100_mini_dag.sh start`; GPUS is the
# machine's GPU count):
# 1. Stage-2 training alone at batch 64, about a minute, first, so that it has the GPU to
#    itself;
# 2. one Snakemake call from the data to $PLAN_TARGETS (default: the physics report, the
#    export, the FID table, the inversion tables and the refinement tables), with Stage 2
#    trained on all the GPUs (the batch size is global, so the recipe is the one-GPU
#    recipe), then a second pass that redoes only what failed;
# 3. beside it, once the pairs store is complete (PLAN_EXTRAS=0 leaves these out): the
#    sampling benchmark on the trained models (DDIM-50 fp32 vs bf16 from the same noise:
#    what bf16 changes; its speeds share the GPU with the DAG) and the GPU-marked tests.
# PLAN_BENCHMARKS=0 leaves out step 1; STAGE2_STEPS=N overrides the Stage-2 steps (after
# the cut below).
# ONE_GPU_SESSION=1 cuts the mini config to what fits one H200 in one 30-minute device
# session (half the training maps, 3 000 Stage-2 steps, 6 000 pairs, 6 refined sections per
# family) and samples one shard at a time; docs/results.md says so beside every number
# from such a run.
set -x
mkdir -p logs results
python3 -c "
import yaml
config = yaml.safe_load(open('config/mini.yaml'))
config['fid']['weights'] = '/root/fid/default_1.pt'
config['stage2']['gpus'] = $GPUS
if '${ONE_GPU_SESSION:-0}' == '1':
    config['data']['embedded']['train_per_family'] = 1000
    config['stage2']['training']['max_steps'] = 3000
    config['sampling'].update(num_pairs=6000, shard_size=2000)
    config['refine']['per_family'] = 6
if '${STAGE2_STEPS:-}':
    config['stage2']['training']['max_steps'] = int('${STAGE2_STEPS:-}')
yaml.safe_dump(config, open('/root/mini_gpu.yaml', 'w'))"
if [ "${PLAN_BENCHMARKS:-1}" = 1 ]; then
    # Stage-2 training alone at the mini batch (random latents in memory, one epoch of 200
    # steps so no epoch-end checkpoint falls inside the timing): is the loop bound by the GPU?
    python3 benchmarks/ddp_scaling.py run --model stage2 --steps 200 --batch-size 64 --samples 12800 \
        --out /root/benchmark_stage2 > logs/benchmark_stage2.log 2>&1 &&
        python3 benchmarks/ddp_scaling.py compare /root/benchmark_stage2 --machine "1x H200, alone" >> logs/benchmark_stage2.log 2>&1
fi
if [ "${PLAN_EXTRAS:-1}" = 1 ]; then
    (
        while [ ! -f results/samples/1vq/manifest.json ]; do sleep 10; done
        python3 benchmarks/sampling_throughput.py --stage1 results/stage1/1vq/model.pt --stage2 results/stage2/1vq/model.pt \
            --dataset results/data/dataset.zarr --configs 0,1 --n 250 --batch-size 250 --out results/benchmark_sampling \
            > logs/benchmark_sampling.log 2>&1
        python3 -m pytest -m gpu -q tests > logs/gpu_tests.log 2>&1
    ) &
    extras=$!
fi
# on one shared GPU, one sampling shard at a time (2 of GPU_JOBS=3 "gpu" units): three at
# batch 500 beside the refinement most likely ran out of GPU memory on 2026-12-01
ONE_GPU_OPTIONS=""
[ "${ONE_GPU_SESSION:-0}" = 1 ] && ONE_GPU_OPTIONS="--set-resources sample_shard:gpu=2"
TARGETS=${PLAN_TARGETS:-"results/samples/1vq/physics_report.csv results/export/1vq/openfwi results/fid_table.csv
    results/inversionnet/table2.csv results/refine/table9.csv results/refine/table7.csv"}
CONFIG=/root/mini_gpu.yaml mini_snakemake $ONE_GPU_OPTIONS --prioritize results/samples/1vq/manifest.json -- $TARGETS
# a second pass redoes only what failed (the FID jobs, if the weights came too late; a
# job that failed twice, as one sample_shard did on 2026-12-01 with three beside it)
CONFIG=/root/mini_gpu.yaml mini_snakemake $ONE_GPU_OPTIONS -- $TARGETS
status=$?
# the extras wait for a pairs store that targets without sampling never make
[ -f results/samples/1vq/manifest.json ] || kill ${extras:-} 2>/dev/null
wait
exit $status
