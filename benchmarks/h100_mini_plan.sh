# What the mini-scale GPU run does, in order (sourced by `PLAN=... h100_mini_dag.sh start`):
# the DAG through sampling and export; FID once the Inception weights file is on the
# machine (it travels in parts, see docs/results.md); then the sampling benchmark.
set -x
mini_snakemake results/stage1/metrics.csv results/trajectory/1vq/table5.csv \
    results/samples/1vq/physics_report.csv results/export/1vq/openfwi || exit 1
while [ ! -f /root/fid/default_1.pt ]; do sleep 5; done
python3 -c "
import yaml
config = yaml.safe_load(open('config/mini.yaml'))
config['fid']['weights'] = '/root/fid/default_1.pt'
yaml.safe_dump(config, open('/root/mini_gpu.yaml', 'w'))"
CONFIG=/root/mini_gpu.yaml mini_snakemake results/fid_table.csv || exit 1
python3 benchmarks/sampling_throughput.py --stage1 results/stage1/1vq/model.pt --stage2 results/stage2/1vq/model.pt \
    --dataset results/data/dataset.zarr --n 500 --batch-size 500 --out results/benchmark_sampling
