# What the mini-scale GPU run does (run by `h100_mini_dag.sh start`; GPUS is the
# machine's GPU count): one Snakemake call from the data to the physics report, the
# export, the FID table and the inversion tables, with Stage 2 trained on all the GPUs (the
# batch size is global, so the recipe is the one-GPU recipe); and, once the pairs store is
# complete, the sampling benchmark (DDIM-50 fp32 vs bf16, DDPM-1000) beside the DAG's jobs.
set -x
python3 -c "
import yaml
config = yaml.safe_load(open('config/mini.yaml'))
config['fid']['weights'] = '/root/fid/default_1.pt'
config['stage2']['gpus'] = $GPUS
yaml.safe_dump(config, open('/root/mini_gpu.yaml', 'w'))"
(
    while [ ! -f results/samples/1vq/manifest.json ]; do sleep 10; done
    python3 benchmarks/sampling_throughput.py --stage1 results/stage1/1vq/model.pt --stage2 results/stage2/1vq/model.pt \
        --dataset results/data/dataset.zarr --configs 0,1,5 --n 250 --batch-size 250 --out results/benchmark_sampling \
        > logs/benchmark_sampling.log 2>&1
) &
CONFIG=/root/mini_gpu.yaml mini_snakemake --prioritize results/samples/1vq/manifest.json -- \
    results/samples/1vq/physics_report.csv results/export/1vq/openfwi results/fid_table.csv \
    results/inversionnet/table2.csv results/refine/table9.csv results/refine/table7.csv
status=$?
wait
exit $status
