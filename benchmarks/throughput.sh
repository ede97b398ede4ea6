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
# BASE_COMMIT and NEW_COMMIT label the rows; STAGE1_ROWS, STAGE2_ROWS and INVERSIONNET_ROWS
# (regexes, default all) pick the new code's training settings. The plan, most telling first
# (a session that runs out of device time keeps what came before): the GPU-marked tests, each
# training part of the new code and then of the base, sampling and the check, the UNet
# forward (with the diffusers reference), InversionNet, the base's UNet forward and compiled
# sampling.
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
    cp "$WORK/throughput.csv" "$WORK/curves.csv" "$OUT/" 2>/dev/null
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
    PYTHONPATH=src:/tmp/site timeout 300 python3 -m pytest -m gpu -q -p no:cacheprovider $(grep -l "mark.gpu" tests/test_*.py)
    $new --parts stage2 --only "${STAGE2_ROWS:-.}"
    $base --parts stage2
    $new --parts stage1 --only "${STAGE1_ROWS:-.}"
    $base --parts stage1
    $new --parts sampling,check
    $base --parts sampling,check --modes eager
    $new --parts unet_forward --reference
    $base --parts inversionnet
    $new --parts inversionnet --only "${INVERSIONNET_ROWS:-.}"
    $base --parts unet_forward
    $base --parts sampling --modes compiled
}

case "$MODE" in
start)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    mkdir -p "$WORK"
    rm -f "$DONE"
    { nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/machine.txt"
    cat "$OUT/machine.txt"
    export -f plan
    export BASE_COMMIT NEW_COMMIT WORK STAGE1_ROWS STAGE2_ROWS INVERSIONNET_ROWS
    setsid bash -c "plan > $LOG 2>&1; echo \$? > $DONE" &
    follow
    collect
    ;;
follow)
    follow
    collect
    ;;
esac
