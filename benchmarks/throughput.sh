#!/usr/bin/env bash
# The throughput benchmark (benchmarks/throughput.py) of two commits on one GPU machine, in
# one session: the base commit's source (carried as .base/src, from `git archive BASE src`)
# and this checkout's src/. Runs longer than one device call (10 min), so it runs in its own
# process session and later calls follow it:
#
#   bash benchmarks/throughput.sh start OUTDIR    install the wheels (.whl/), write
#        OUTDIR/machine.txt, start the plan below, follow it for FOLLOW_SECONDS
#   bash benchmarks/throughput.sh follow OUTDIR   follow it further
#
# Both end by copying what is done (throughput.csv, curves.csv, the log) into OUTDIR.
# BASE_COMMIT and NEW_COMMIT label the rows. The plan, most telling first (a session that
# runs out of device time keeps what came before): Stage 1's eager rows of both commits
# (each speed setting on its own); where a step's GPU time goes (profile_training.py); the
# UNet forward beside the diffusers reference and a one-head twin; sampling (the default
# DDIM-25 and the issue's DDIM-50) and the check; Stage 2's eager rows of both commits;
# Stage 1 compiled; InversionNet of both commits; the base's sampling; the GPU-marked tests.
set -uo pipefail
MODE=${1:?start|follow}
OUT=${2:?output folder}
mkdir -p "$OUT"
WORK=/root/throughput
LOG=$WORK/plan.log
DONE=$WORK/plan.exit
FOLLOW_SECONDS=${FOLLOW_SECONDS:-540}
export PYTHONUNBUFFERED=1

collect() {
    echo "plan exit: $(cat "$DONE" 2>/dev/null || echo 'still running')"
    cp "$WORK/throughput.csv" "$WORK/curves.csv" "$WORK/profile.csv" "$OUT/" 2>/dev/null
    cp "$LOG" "$OUT/plan.log"
    tail -25 "$LOG"
}

follow() {
    local start=$(date +%s)
    while [ ! -f "$DONE" ] && [ $(( $(date +%s) - start )) -lt "$FOLLOW_SECONDS" ]; do
        sleep 20
        echo "[$(date +%T)] $(tail -1 "$LOG" | cut -c1-150)"
    done
}

plan() {
    local bench="python3 benchmarks/throughput.py --work $WORK --out $WORK/throughput.csv"
    local new="env PYTHONPATH=src:/tmp/site $bench --commit ${NEW_COMMIT:?}"
    local base="env PYTHONPATH=.base/src:/tmp/site $bench --commit ${BASE_COMMIT:?}"
    $new --parts stage1 --only "eager"
    $base --parts stage1
    (cd benchmarks && PYTHONPATH=../src:/tmp/site python3 profile_training.py --work $WORK --out $WORK/profile.csv)
    $new --parts unet_forward --reference --one-head
    $new --parts sampling,check --samplers ddim-25,ddim-50
    $new --parts stage2 --only "batch 256, data on GPU, eager"
    $base --parts stage2
    $new --parts stage1 --only "batch 16, data on GPU, compiled"
    $new --parts inversionnet --only "batch 64"
    $base --parts inversionnet
    $base --parts sampling --modes eager --samplers ddim-50
    PYTHONPATH=src:/tmp/site timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider $(grep -l "mark.gpu" tests/test_*.py)
}

case "$MODE" in
start)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    mkdir -p "$WORK"
    rm -f "$DONE"
    { nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/machine.txt"
    cat "$OUT/machine.txt"
    export -f plan
    export BASE_COMMIT NEW_COMMIT WORK
    setsid bash -c "plan > $LOG 2>&1; echo \$? > $DONE" &
    follow
    collect
    ;;
follow)
    follow
    collect
    ;;
esac
