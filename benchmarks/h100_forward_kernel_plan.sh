# The forward-modelling backends on one GPU (run by `PLAN=benchmarks/h100_forward_kernel_plan.sh
# bash benchmarks/h100_mini_dag.sh start OUTDIR`; no FID weights, ~5 minutes): the GPU tests
# of the fused kernels and of the analytic (Green's function) check on every CUDA backend,
# their agreement with deepwave and models/s beside deepwave at batch 16, 256 and 1 024, then
# check_shard's pairs/s and its parts (read, simulate, write) on shards of 1 000 pairs: per
# backend, one job alone and 4 jobs at once on the one GPU (each in its own process, as
# `--resources gpu=4` runs them). Everything lands in
# results/forward_kernel/, which the follow calls bring back. KERNELS="NAME=FILE ..." also
# times the fused-cuda modules of those files (the base commit's, variants; carried in
# .base/) as fused-cuda@NAME; CHECK=0 leaves out the check_shard part (~3 minutes).
set -x
OUT=results/forward_kernel
mkdir -p $OUT logs
python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_fused_forward.py tests/test_physics.py > $OUT/gpu_tests.txt 2>&1
tail -5 $OUT/gpu_tests.txt
python3 benchmarks/forward_modelling.py --backends deepwave,fused,fused-cuda --batch-sizes 16,256,1024 \
    --repeats 2 --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
    $(for kernel in ${KERNELS:-}; do echo --kernel "$kernel"; done) | tee $OUT/forward_modelling.md
[ "${CHECK:-1}" = 0 ] || python3 benchmarks/throughput.py --commit "${COMMIT:-unknown}" --work /root/throughput --out $OUT/throughput.csv \
    --parts sampling,check --samplers ddim-25 --modes eager --check-backends deepwave,fused-cuda \
    --check-processes 4  # also one job of 4 processes (physics.check_processes)
