#!/usr/bin/env bash
# One call on the GPU machine (see README "Measured results"): GPU tests, forward-modelling
# throughput, and the data part of the DAG at the mini scale, with per-rule timings.
# Usage there: bash benchmarks/h100_foundation.sh OUTDIR   (wheels for deepwave, zarr,
# snakemake in .whl/, as ../shared/device/README.md describes).
set -uo pipefail
OUT=${1:?output folder}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, deepwave; print('torch', torch.__version__, 'deepwave', deepwave.__version__)" | tee -a "$OUT/gpu.txt"

echo "== GPU tests"
python3 -m pytest -q -m gpu tests/ 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"

echo "== forward-modelling throughput"
python3 benchmarks/forward_modelling.py --device cuda --batch-sizes 1,16,64,256,1024 --repeats 3 \
    --machine "1x H100 80GB" 2>&1 | tee "$OUT/forward_modelling.md"

echo "== mini-scale data DAG"
start=$(date +%s)
timeout 400 python3 -m snakemake --configfile config/mini.yaml --cores 16 \
    results/physics/pde_floor.csv results/figures/velocity_families.png > "$OUT/mini_snakemake.log" 2>&1
echo "snakemake exit $? after $(( $(date +%s) - start )) s" | tee "$OUT/mini_time.txt"
tail -5 "$OUT/mini_snakemake.log"
cp results/physics/pde_floor.csv "$OUT/mini_pde_floor.csv" 2>/dev/null
cp results/figures/velocity_families.png "$OUT/mini_velocity_families.png" 2>/dev/null
for f in benchmarks/out/*.tsv benchmarks/out/*/*.tsv; do printf '%s\t%s\n' "$f" "$(tail -1 "$f")"; done > "$OUT/mini_rule_times.tsv" 2>/dev/null
du -sh results/data/dataset.zarr results/embedded 2>/dev/null | tee -a "$OUT/mini_time.txt"
cat "$OUT/mini_rule_times.tsv" | cut -f1-3
