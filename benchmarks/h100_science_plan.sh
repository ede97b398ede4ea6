# What the science-scale GPU run does (run by `PLAN=benchmarks/h100_science_plan.sh
# GPU_JOBS=3 bash benchmarks/h100_mini_dag.sh start OUTDIR`, then `follow` calls, carrying
# .whl/ and the FID weights in two parts as for the mini run): one Snakemake call on
# config/science.yaml from the data to results/claims.csv and the physics report, then a
# second pass that redoes only what failed. On one GPU, GPU_JOBS=3 lets the InversionNet
# arms, FID and the physics check run beside the longer jobs (each job's peak memory is a
# few GiB, Stage 1 ~15 GiB). SCIENCE_SEED=N trains the whole chain with seed N (gate 6's
# three seeds are three runs). STAGE2_STEPS=N cuts Stage 2 to N steps where the device time
# left cannot hold the config's (the run's README then says so). INVERSION_SEEDS=0 (or
# 0,1) runs each InversionNet arm with those seeds only, where three do not fit the
# session (each seed's arms take ~7 minutes of GPU). SCIENCE_TARGETS="..."
# replaces the targets, e.g. the trajectory and the Stage-1 metrics only when less device
# time is left than the whole chain needs. SCIENCE_GPUS=N trains over N GPUs of one machine
# with benchmarks/science_config.py's recipe for several GPUs (multi_gpu_science_plan.sh
# sets it). SET="a.b=YAML; ..." sets any key last. Every PDE deviation goes through the
# config's backend (fused-cuda); PHYSICS_BACKEND=auto instead picks the fastest forward
# backend that agrees with deepwave on this GPU (forward_modelling.py --fastest, ~1
# minute); PHYSICS_BACKEND=NAME names one.
set -x
mkdir -p logs results
if [ "${PHYSICS_BACKEND:-}" = auto ]; then
    PHYSICS_BACKEND=$(timeout 300 python3 benchmarks/forward_modelling.py --fastest 2> logs/fastest_backend.log) ||
        PHYSICS_BACKEND=deepwave  # a kernel that fails or hangs here leaves the run on deepwave
    cat logs/fastest_backend.log
fi
python3 benchmarks/science_config.py --out /root/science_gpu.yaml --seed "${SCIENCE_SEED:-0}" \
    --gpus "${SCIENCE_GPUS:-1}" ${STAGE2_STEPS:+--stage2-steps "$STAGE2_STEPS"} \
    ${PHYSICS_BACKEND:+--physics-backend "$PHYSICS_BACKEND"} ${INVERSION_SEEDS:+--inversion-seeds "$INVERSION_SEEDS"} \
    --fid-weights /root/fid/default_1.pt --set "${SET:-}" || exit 1
TARGETS=${SCIENCE_TARGETS:-"results/claims.csv results/fid/1vq/samplers.csv results/samples/1vq/physics_report.csv results/refine/table9.csv"}
# FID's weights come with the second and third device calls (the carry limit), minutes after
# the first pass starts, and a reference job started before them fails (2026-12-07). So the
# first pass leaves FID out (--omit-from), a second Snakemake (--nolock: its jobs are not the
# first pass's) makes the reference features once the weights and the dataset are there, and
# the last pass does the rest of FID, what needs it, and whatever failed.
(
    while [ ! -f /root/fid/default_1.pt ] || [ ! -e results/data/dataset.zarr ]; do sleep 10; done
    CONFIG=/root/science_gpu.yaml mini_snakemake --nolock -- results/fid/reference_features.npz
) &
CONFIG=/root/science_gpu.yaml mini_snakemake --omit-from fid_reference --prioritize results/stage2/1vq/model.pt -- $TARGETS
wait
CONFIG=/root/science_gpu.yaml mini_snakemake -- $TARGETS
