#!/usr/bin/env bash
# The mini-scale DAG on the GPU machine, for runs longer than one device call (10 min).
#
#   bash benchmarks/h100_mini_dag.sh start OUTDIR    install the wheels (.whl/) and the
#        package, keep .fid/part1 (the first part of the FID weights file; carry it only
#        when the targets include FID) in /root/fid,
#        then run the plan script $PLAN (default benchmarks/h100_mini_plan.sh) in its own
#        process session (it outlives the call), and follow it for FOLLOW_SECONDS
#   bash benchmarks/h100_mini_dag.sh follow OUTDIR   join .fid/part2 onto the first part
#        when this call carries it (the file is larger than one call may carry beside the
#        wheels, so it travels in two calls), then follow the plan until it finishes or
#        FOLLOW_SECONDS pass
# start and follow end by copying what is done so far worth keeping (CSV, figures, logs,
# rule times) into OUTDIR: a machine lost between calls loses only the calls after it.
# The second call must bring part2 before `fid_reference` starts (after the data, minutes
# in), as it does when the calls follow each other; if it came too late, the plan's second
# Snakemake pass redoes the FID jobs that failed.
#
# Each call must reach the same warm machine (it is held for ~30 s after a call). The
# plan calls `mini_snakemake [OPTIONS] -- TARGET...`: Snakemake on config/mini.yaml (or
# $CONFIG) with every GPU of the machine as the `gpu` resource, so on a machine of several
# GPUs the GPU jobs run side by side, each on its own GPU (devices.claim_local_gpu).
# GPU_JOBS=N makes the `gpu` resource N instead: on a machine of one GPU (where no job
# claims one) up to N GPU jobs then share it -- worth it for the data-bound InversionNet
# arms and FID beside the training jobs; each job's memory is in docs/results.md.
# --keep-going: a failed job stops only what needs it, so one bad arm costs no other table;
# --show-failed-logs: its log goes into the run's log (Snakemake deletes it before a retry).
set -uo pipefail
MODE=${1:?start|follow}
OUT=${2:?output folder}
mkdir -p "$OUT"
LOG=/root/mini_dag.log
DONE=/root/mini_dag.exit
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:${PYTHONPATH:-}
FOLLOW_SECONDS=${FOLLOW_SECONDS:-540}
FID_SHA256=7ff4a85c

collect() {  # what is done so far, into OUTDIR
    echo "plan exit: $(cat "$DONE" 2>/dev/null || echo 'still running')"
    tail -15 "$LOG"
    cp "$LOG" "$OUT/snakemake.log"
    for f in benchmarks/out/*.tsv benchmarks/out/*/*.tsv; do printf '%s\t%s\n' "$f" "$(tail -1 "$f")"; done > "$OUT/rule_times.tsv" 2>/dev/null
    # files under 2 MiB (tables, figures, logs, records): models and stores stay behind. In
    # KiB, since find rounds sizes up to its unit (-size -2M would mean 1 MiB at most)
    find results logs -type f -size -2048k -not -path '*.zarr/*' -not -path 'results/embedded/*' -print0 2>/dev/null |
        tar czf "$OUT/results.tgz" --null -T -
    find results -type f -size +2047k -printf '%s\t%p\n' > "$OUT/large_files.tsv" 2>/dev/null
    ls -la "$OUT"
}

follow() {  # print progress and each GPU's load until the plan exits or FOLLOW_SECONDS pass
    local start=$(date +%s)
    while [ ! -f "$DONE" ] && [ $(( $(date +%s) - start )) -lt "$FOLLOW_SECONDS" ]; do
        sleep 30
        echo "[$(date +%T)] $(grep -c 'Finished job' "$LOG") jobs finished; running: $(grep -o 'rule [a-z_0-9]*:' "$LOG" | tail -4 | tr '\n' ' ')"
        nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader | tr '\n' ';'; echo
    done
}

join_fid_weights() {  # part1 (from start) + part2 (this call's .fid/) -> the checked weights file
    [ -f /root/fid/default_1.pt ] && return 0
    [ -f .fid/part2 ] || { echo "FID weights: .fid/part2 not carried yet"; return 0; }
    cat /root/fid/part1 .fid/part2 > /root/fid/default_1.pt.partial || return 1
    sha256sum /root/fid/default_1.pt.partial | grep -q "^$FID_SHA256" || { echo "FID weights: wrong sha256"; return 1; }
    mv /root/fid/default_1.pt.partial /root/fid/default_1.pt && echo "FID weights joined"
}

case "$MODE" in
start)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
    mkdir -p /root/fid
    [ -f .fid/part1 ] && { cp .fid/part1 /root/fid/part1 || exit 1; }  # not needed by targets without FID
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    rm -f "$DONE"
    GPUS=$(nvidia-smi -L | grep -c '^GPU ')
    MINI="python3 -m snakemake --configfile \${CONFIG:-config/mini.yaml} --cores all --keep-going --show-failed-logs --resources gpu=${GPU_JOBS:-$GPUS} --set-threads preprocess=16 train_stage1=8 encode_latents=8 evaluate_stage1=8"
    setsid bash -c "mini_snakemake() { $MINI \"\$@\"; }; export -f mini_snakemake; export GPUS=$GPUS; bash ${PLAN:-benchmarks/h100_mini_plan.sh} > $LOG 2>&1; echo \$? > $DONE" &
    follow
    collect
    ;;
follow)
    join_fid_weights || exit 1
    follow
    collect
    ;;
esac
