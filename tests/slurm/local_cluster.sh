#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for the tests that drive the workflow through
# `snakemake --profile slurm` (the real sbatch / squeue path of the SLURM executor plugin).
#
#   tests/slurm/local_cluster.sh start [DIR]   install Debian's slurm packages if missing,
#                                              write a config into DIR, start munged,
#                                              slurmctld and slurmd, wait for `srun true`
#   tests/slurm/local_cluster.sh stop [DIR]    cancel jobs, stop what `start` started
#
# No accounting daemon: the test profile sets `slurm-status-command: squeue`, since with
# accounting off `sacct` fails and the plugin would wait forever. Needs root.
# DIR defaults to /tmp/wavediffusion-slurm.
set -euo pipefail
ACTION=${1:?start or stop}
DIR=$(realpath -m "${2:-/tmp/wavediffusion-slurm}")
NODE=$(hostname -s)
export SLURM_CONF=$DIR/slurm.conf

say() { echo "[local-slurm] $*" >&2; }
fail() { say "ERROR: $*"; tail -n 20 "$DIR"/*.log >&2 2>/dev/null || true; exit 1; }

# A pid file's process is alive (zombies count as gone: PID 1 reaps slowly here).
running() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -r "/proc/$pid/stat" ] && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]
}

wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local end=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}

stop_daemon() {  # stop_daemon PIDFILE
  local pid end
  running "$1" || { rm -f "$1"; return 0; }
  pid=$(cat "$1"); kill -TERM "$pid" 2>/dev/null || true
  end=$((SECONDS + 20))
  while running "$1" && [ $SECONDS -lt $end ]; do sleep 0.2; done
  running "$1" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

start() {
  [ "$(id -u)" = 0 ] || fail "must run as root"
  local packages=(munge slurm-client slurmctld slurmd) missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    # keep the packages' scripts from starting system-wide daemons
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    rm -f /usr/sbin/policy-rc.d
  fi
  mkdir -p "$DIR/state" "$DIR/spool"

  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [ ! -s /etc/munge/munge.key ]; then
      install -d -o munge -g munge -m 0700 /etc/munge
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
      chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    wait_until 30 munged sh -c 'munge -n | unmunge'
    cp /run/munge/munged.pid "$DIR/munged.ours"  # `stop` only stops a munged we started
  fi

  # The node as slurmd sees it (CPUs, sockets, memory), with 10 % of the memory held back.
  local hardware memory
  hardware=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime=.*//')
  memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
  hardware=$(sed "s/RealMemory=[0-9]*/RealMemory=$((memory * 9 / 10))/" <<<"$hardware")
  # Two fake GPUs (character devices like /dev/null) as the node's GRES, so that rules
  # asking for `gpu` go through sbatch --gpus as on a real cluster; a job sees
  # CUDA_VISIBLE_DEVICES but no CUDA device, and trains on the CPU. (A count-only
  # gres.conf without device files makes the node INVAL.)
  local gpu
  for gpu in 0 1; do
    [ -e "$DIR/fake-gpu$gpu" ] || mknod "$DIR/fake-gpu$gpu" c 1 3
  done
  echo "Name=gpu File=$DIR/fake-gpu[0-1]" > "$DIR/gres.conf"
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=wavediffusion-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
ReturnToService=2
MinJobAge=600
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 $hardware Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # The plugin's job step strips SLURM_CONF before its inner srun, which then reads only
  # /etc/slurm/slurm.conf: point that at ours (keeping any site file aside).
  mkdir -p /etc/slurm
  if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.before-wavediffusion
  fi
  ln -sfn "$DIR/slurm.conf" /etc/slurm/slurm.conf

  running "$DIR/slurmctld.pid" || { say "starting slurmctld"; slurmctld -f "$SLURM_CONF"; }
  running "$DIR/slurmd.pid" || { say "starting slurmd"; slurmd -f "$SLURM_CONF" -N "$NODE"; }
  local end=$((SECONDS + 60)) state
  while :; do
    state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
    case $state in idle | mixed | allocated) break ;; down* | drain* | inval*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;; esac
    [ $SECONDS -lt $end ] || fail "node $NODE is '$state', not idle"
    sleep 0.2
  done
  timeout 60 srun -N1 -n1 -t 1 true || fail "smoke test 'srun true' failed"
  say "ready: node $NODE ($hardware), config $SLURM_CONF"
}

stop() {
  if running "$DIR/slurmctld.pid"; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    [ -z "${jobs// /}" ] || scancel $jobs 2>/dev/null || true
  fi
  stop_daemon "$DIR/slurmd.pid"
  stop_daemon "$DIR/slurmctld.pid"
  if [ -f "$DIR/munged.ours" ] && [ "$(cat /run/munge/munged.pid 2>/dev/null)" = "$(cat "$DIR/munged.ours")" ]; then
    stop_daemon /run/munge/munged.pid
  fi
  rm -f "$DIR/munged.ours"
  if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$DIR/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
    [ ! -e /etc/slurm/slurm.conf.before-wavediffusion ] || mv /etc/slurm/slurm.conf.before-wavediffusion /etc/slurm/slurm.conf
  fi
  say "stopped"
}

case $ACTION in
  start) start ;;
  stop) stop ;;
  *) fail "unknown action '$ACTION' (start or stop)" ;;
esac
