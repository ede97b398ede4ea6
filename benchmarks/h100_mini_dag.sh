#!/usr/bin/env bash
# The mini-scale DAG on the GPU machine, for runs longer than one device call (10 min).
#
#   bash benchmarks/h100_mini_dag.sh start OUTDIR    install the wheels (.whl/) and the
#        package, then run the plan script $PLAN (default benchmarks/h100_mini_plan.sh) in
#        its own process session (it outlives the call), and follow it for FOLLOW_SECONDS;
#        PLAN may name several scripts, run one after the other
#   bash benchmarks/h100_mini_dag.sh follow OUTDIR   follow the plan until it finishes or
#        FOLLOW_SECONDS pass
# The FID weights file (87 MB) is more than one call may carry beside the checkout and the
# wheels (64 MiB), so it travels in parts, .fid/part1, part2, ... (split -b 22000000): each
# call carries what fits, keeps it in /root/fid and joins the parts once their sha256 is the
# file's. Carry none when the targets have no FID. The parts must all have come before
# `fid_reference` starts (after the data, minutes in), as they do when the calls follow each
# other; if they came too late, the plan's second Snakemake pass redoes the failed FID jobs.
# start and follow end by copying what is done so far worth keeping (CSV, figures, logs,
# rule times) into OUTDIR: a machine lost between calls loses only the calls after it.
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

join_fid_weights() {  # keep this call's .fid/part* in /root/fid; once all have come, join and check
    [ -f /root/fid/default_1.pt ] && return 0
    mkdir -p /root/fid
    for part in .fid/part*; do [ -f "$part" ] && { cp "$part" /root/fid/ || return 1; }; done
    ls /root/fid/part* >/dev/null 2>&1 || return 0  # targets without FID carry none
    cat $(ls /root/fid/part* | sort -V) > /root/fid/default_1.pt.partial || return 1
    if sha256sum /root/fid/default_1.pt.partial | grep -q "^$FID_SHA256"; then
        mv /root/fid/default_1.pt.partial /root/fid/default_1.pt && echo "FID weights joined"
    else
        echo "FID weights: $(ls /root/fid | grep -c '^part') parts so far, not yet the whole file"
    fi
}

case "$MODE" in
start)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
    join_fid_weights || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    # every run folder's machine.txt: the cards, torch, and the commit (COMMIT=$(git rev-parse
    # --short HEAD) from the caller: the machine has the checkout's files, not its history)
    { nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; echo "commit ${COMMIT:-unknown}"; } > "$OUT/machine.txt"
    rm -f "$DONE"
    GPUS=$(nvidia-smi -L | grep -c '^GPU ')
    MINI="python3 -m snakemake --configfile \${CONFIG:-config/mini.yaml} --cores all --keep-going --show-failed-logs --resources gpu=${GPU_JOBS:-$GPUS} --set-threads preprocess=16 train_stage1=8 encode_latents=8 evaluate_stage1=8"
    setsid bash -c "mini_snakemake() { $MINI \"\$@\"; }; export -f mini_snakemake; export GPUS=$GPUS; for plan in ${PLAN:-benchmarks/h100_mini_plan.sh}; do bash \$plan; done > $LOG 2>&1; echo \$? > $DONE" &
    follow
    collect
    ;;
follow)
    join_fid_weights || exit 1
    follow
    collect
    ;;
esac
