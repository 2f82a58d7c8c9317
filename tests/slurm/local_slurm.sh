#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests/test_slurm.py (and for trying the slurm
# profile by hand). Debian 12 (slurm-wlm 22.05, munge), root, no systemd: daemons are started by
# hand, and everything they write lives under one state folder, so the machine's own
# /etc/slurm, /etc/munge and /run are left alone.
#
#   tests/slurm/local_slurm.sh install        apt-get install munge + slurm (skipped if present)
#   tests/slurm/local_slurm.sh start DIR      write DIR/slurm.conf, start munged, slurmctld, slurmd;
#                                             prints SLURM_CONF=DIR/slurm.conf (export it for
#                                             sbatch/squeue/snakemake)
#   tests/slurm/local_slurm.sh stop DIR       stop the daemons started from DIR (by their PID files)
#
# One file outside DIR: /etc/slurm/slurm.conf becomes a symbolic link to DIR/slurm.conf while the
# cluster runs (removed by `stop`). The executor plugin's job step strips SLURM_CONF from the
# environment of the `srun` it starts inside each job, so srun only finds the default path.
# A real slurm.conf already there (not such a link) is left alone: `start` exits 3.
#
# The cluster: one node (this host, all its CPUs, 85% of its memory), one fake GPU
# (GRES gpu:1, File=/dev/null: jobs asking for --gpus=1 are scheduled and see
# CUDA_VISIBLE_DEVICES=0, there is no device behind it), partitions $PARTITION (default) and
# $GPU_PARTITION on that node. No accounting (no slurmdbd): `sacct` fails, so snakemake must use
# `--slurm-status-command squeue`, and MinJobAge keeps finished jobs visible to squeue for 10 min
# (the plugin falls back to sacct, which would hang, when MinJobAge < 3 x init seconds).
# Every wait has a bound; a daemon that does not come up makes `start` exit non-zero with its log.
set -euo pipefail

PARTITION=${PARTITION:-debug}
GPU_PARTITION=${GPU_PARTITION:-gpu}
CLUSTER=${CLUSTER:-localcluster}
CTLD_PORT=${CTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}

die() { echo "local_slurm: $*" >&2; exit 1; }

install_pkgs() {
    if command -v slurmctld > /dev/null && command -v slurmd > /dev/null \
        && command -v sbatch > /dev/null && command -v munged > /dev/null; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "not root: cannot apt-get install slurm"
    command -v apt-get > /dev/null || die "no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout -s KILL 300 apt-get update -qq
    timeout -s KILL 300 apt-get install -y -qq --no-install-recommends \
        munge slurm-wlm slurmctld slurmd slurm-client > /dev/null
}

# print the daemon logs (on failure)
dump_logs() {
    local dir=$1 f
    for f in "$dir"/log/*.log; do
        [ -f "$f" ] || continue
        echo "----- $f (last 30 lines)" >&2
        tail -n 30 "$f" >&2 || true
    done
}

start() {
    local dir=$1
    [ "$(id -u)" = 0 ] || die "not root"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
        echo "local_slurm: /etc/slurm/slurm.conf exists: this machine has a SLURM of its own; not touching it" >&2
        exit 3
    fi
    # stop whatever an earlier start left running: from this folder, or from the one the
    # slurm.conf link names (a test run killed before its clean-up; it holds the ports)
    local previous
    previous=$(readlink /etc/slurm/slurm.conf 2> /dev/null || true)
    if [ -n "$previous" ] && [ "$(basename "$previous")" = slurm.conf ] && [ -d "$(dirname "$previous")/run" ]; then
        stop "$(dirname "$previous")" > /dev/null 2>&1 || true
    fi
    stop "$dir" > /dev/null 2>&1 || true
    rm -rf "$dir/state" "$dir/spool" "$dir/log" "$dir/munge" "$dir/run"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge" "$dir/run"
    chmod 755 "$dir"
    chmod 700 "$dir/munge"

    # munge with its own key and socket (root-owned, hence --force)
    mungekey --create --keyfile="$dir/munge/munge.key" > /dev/null 2>&1 \
        || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    timeout -s KILL 20 munged --force \
        --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" \
        || { dump_logs "$dir"; die "munged did not start"; }
    timeout -s KILL 10 sh -c "munge -n -S '$dir/munge/munge.socket' | unmunge -S '$dir/munge/munge.socket' > /dev/null" \
        || { dump_logs "$dir"; die "munge does not work"; }

    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # RealMemory above what slurmd detects drains the node ("Low RealMemory")
    mem=$(($(free -m | awk '/^Mem:/{print $2}') * 85 / 100))
    # every job step appends what it saw to log/task-env.log (the test reads CUDA_VISIBLE_DEVICES there)
    cat > "$dir/task_prolog.sh" << 'PROLOG'
#!/bin/sh
echo "job=$SLURM_JOB_ID step=${SLURM_STEP_ID:-?} partition=${SLURM_JOB_PARTITION:-?} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}" >> "$(dirname "$0")/log/task-env.log"
PROLOG
    chmod 755 "$dir/task_prolog.sh"
    # File= is required: with only Count=1, slurmd reports 0 GPUs and the node goes INVAL
    echo "NodeName=$host Name=gpu File=/dev/null" > "$dir/gres.conf"
    cat > "$dir/slurm.conf" << EOF
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
ReturnToService=2
# keep finished jobs visible to squeue for 10 min (the plugin needs >= 3 x its init seconds)
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
KillWait=5
TaskProlog=$dir/task_prolog.sh
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PARTITION Nodes=$host Default=NO MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
    # -c: start from a clean state; -i: ignore errors reading state
    timeout -s KILL 30 slurmctld -c -f "$SLURM_CONF" || { dump_logs "$dir"; die "slurmctld did not start"; }
    timeout -s KILL 30 slurmd -f "$SLURM_CONF" || { dump_logs "$dir"; die "slurmd did not start"; }
    local state=""
    for _ in $(seq 60); do
        state=$(timeout -s KILL 5 sinfo -h -p "$PARTITION" -o %T 2> /dev/null | head -1 || true)
        [ "$state" = idle ] && break
        sleep 1
    done
    if [ "$state" != idle ]; then
        timeout -s KILL 5 sinfo -R >&2 || true
        dump_logs "$dir"
        die "node not idle after 60 s (state: '${state:-none}')"
    fi
    echo "SLURM_CONF=$SLURM_CONF"
}

stop() {
    local dir=$1 f pid
    dir=$(cd "$dir" 2> /dev/null && pwd) || return 0
    # cancel what is left, then stop the daemons, the node first
    if [ -s "$dir/slurm.conf" ] && [ -s "$dir/run/slurmctld.pid" ]; then
        SLURM_CONF="$dir/slurm.conf" timeout -s KILL 10 scancel --full --user="$(id -un)" 2> /dev/null || true
    fi
    for f in slurmd slurmctld munged; do
        [ -s "$dir/run/$f.pid" ] || continue
        pid=$(cat "$dir/run/$f.pid")
        # only a process of that name: a stale PID file must not kill anything else
        if [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = "$f" ]; then
            kill "$pid" 2> /dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2> /dev/null || break
                sleep 0.2
            done
            kill -9 "$pid" 2> /dev/null || true
        fi
        rm -f "$dir/run/$f.pid"
    done
    if [ "$(readlink /etc/slurm/slurm.conf 2> /dev/null)" = "$dir/slurm.conf" ]; then
        rm -f /etc/slurm/slurm.conf
    fi
    # job steps (slurmstepd) outlive slurmd; end those of this cluster
    for pid in $(pgrep -x slurmstepd 2> /dev/null || true); do
        if tr '\0' '\n' < "/proc/$pid/environ" 2> /dev/null | grep -qx "SLURM_CONF=$dir/slurm.conf"; then
            kill -9 "$pid" 2> /dev/null || true
        fi
    done
}

case "${1:-}" in
    install) install_pkgs ;;
    start) [ -n "${2:-}" ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ -n "${2:-}" ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) echo "usage: $0 {install|start DIR|stop DIR}" >&2; exit 2 ;;
esac
