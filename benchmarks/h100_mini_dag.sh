#!/usr/bin/env bash
# The mini-scale DAG on the GPU machine, for runs longer than one device call (10 min).
#
#   bash benchmarks/h100_mini_dag.sh start OUTDIR TARGET...   install, launch snakemake in
#        its own process session (it outlives the call), then follow it until the call's end;
#        with PLAN=script.sh, run that script there instead (a sequence of snakemake calls
#        and benchmarks; `mini_snakemake TARGET...` is defined for it)
#   bash benchmarks/h100_mini_dag.sh follow OUTDIR             follow it until it finishes,
#        then copy the results worth keeping (CSV, figures, logs, rule times) into OUTDIR
#
# The second call must reach the same warm machine (it is held for ~30 s after a call).
# Wheels for deepwave, zarr, snakemake in .whl/ (see ../shared/device/README.md).
set -uo pipefail
MODE=${1:?start|follow}
OUT=${2:?output folder}
shift 2
mkdir -p "$OUT"
LOG=/root/mini_dag.log
DONE=/root/mini_dag.exit
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:${PYTHONPATH:-}
FOLLOW_SECONDS=${FOLLOW_SECONDS:-540}

follow() {  # print progress until snakemake exits or FOLLOW_SECONDS pass
    local start=$(date +%s)
    while [ ! -f "$DONE" ] && [ $(( $(date +%s) - start )) -lt "$FOLLOW_SECONDS" ]; do
        sleep 20
        echo "[$(date +%T)] $(grep -c 'Finished job' "$LOG") jobs finished; $(tail -c 300 logs/train_stage1/*.log 2>/dev/null | tr '\r' '\n' | tail -1)"
    done
}

if [ "$MODE" = start ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    python3 -m pip install -q --no-index --no-deps --no-build-isolation . || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    rm -f "$DONE"
    # GPU rules one at a time (--resources gpu=1), so each job's throughput is its own
    MINI="python3 -m snakemake --configfile \${CONFIG:-config/mini.yaml} --cores 16 --resources gpu=1 --set-threads preprocess=16 train_stage1=8 encode_latents=8 evaluate_stage1=8"
    if [ -n "${PLAN:-}" ]; then
        setsid bash -c "mini_snakemake() { $MINI -- \"\$@\"; }; export -f mini_snakemake; source $PLAN > $LOG 2>&1; echo \$? > $DONE" &
    else
        setsid bash -c "$MINI -- $* > $LOG 2>&1; echo \$? > $DONE" &
    fi
    follow
else
    follow
    echo "snakemake exit: $(cat "$DONE" 2>/dev/null || echo 'still running')"
    tail -15 "$LOG"
    cp "$LOG" "$OUT/snakemake.log"
    for f in benchmarks/out/*.tsv benchmarks/out/*/*.tsv; do printf '%s\t%s\n' "$f" "$(tail -1 "$f")"; done > "$OUT/rule_times.tsv" 2>/dev/null
    tar czf "$OUT/results.tgz" --exclude='*.zarr' --exclude='*.pt' --exclude='checkpoints' --exclude='embedded' results logs 2>/dev/null
    ls -la "$OUT"
fi
