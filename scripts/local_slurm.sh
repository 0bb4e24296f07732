#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to try `run_protocol.py --launcher slurm` (and to test it).
#
#   sudo bash scripts/local_slurm.sh start    # install slurm-wlm and munge if missing, configure, start
#   sudo bash scripts/local_slurm.sh status   # the node and the queue
#   sudo bash scripts/local_slurm.sh stop     # stop the daemons (the configuration is kept)
#
# Needs root and Debian/Ubuntu's apt (the packages `slurm-wlm` and `munge`); where they are already
# installed nothing is installed. The cluster has one node (this host, all its CPUs and memory) and one
# partition, `local`. It writes /etc/slurm/slurm.conf, marked as ours: a slurm.conf it did not write is
# never replaced (the script stops instead). Its state and logs live under $DPL_SLURM_STATE (default
# /var/lib/dpl-slurm). Linux process tracking and no task plugin: no cgroups or systemd needed, so it
# runs in a container. No accounting database: `sacct` is not available, which submitit works around.
set -euo pipefail

STATE=${DPL_SLURM_STATE:-/var/lib/dpl-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by scripts/local_slurm.sh of dropout-prompt-learning"
PARTITION=local

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "needs root (it installs packages and starts daemons): run it with sudo"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get to install them"
    echo "Installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$STATE/apt.log" 2>&1 ||
        { apt-get update -q >>"$STATE/apt.log" 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$STATE/apt.log" 2>&1; } ||
        die "apt-get could not install slurm-wlm and munge (see $STATE/apt.log)"
}

write_config() {
    if [[ -f $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: this machine has its own SLURM configuration; use that cluster"
    fi
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MB, leaving the system some
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
    cat >"$CONF" <<EOF
$MARK
ClusterName=dpl-local
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# A requeued job may start again only after its credential expired (cred_expire + 1 s): 120 s by default,
# 10 s here, so that a job stopped by its time limit resumes promptly.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (default 60 s): a requeued job waits for a scheduling pass.
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
KillWait=30
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if running munged; then
        return 0
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -f /etc/munge/munge.key ]] || runuser -u munge -- /usr/sbin/mungekey --create
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    local i
    for i in $(seq 10); do
        munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

wait_for_node() {
    local i
    for i in $(seq 60); do
        if sinfo -h -o %t -p "$PARTITION" 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            return 0
        fi
        sleep 1
    done
    die "the node did not become ready in 60 s (see $STATE/slurmctld.log and $STATE/slurmd.log)"
}

start() {
    need_root
    mkdir -p "$STATE"
    install_packages
    write_config
    start_munge
    running slurmctld || slurmctld || die "slurmctld did not start (see $STATE/slurmctld.log)"
    running slurmd || slurmd || die "slurmd did not start (see $STATE/slurmd.log)"
    wait_for_node
    echo "SLURM is up: partition '$PARTITION' on $(hostname -s) ($(nproc) CPUs); stop it with: sudo bash $0 stop"
}

running() {
    pgrep -x "$1" >/dev/null
}

stop_daemon() {
    local i
    running "$1" || return 0
    pkill -x "$1" || true
    for i in $(seq 30); do
        running "$1" || return 0
        sleep 1
    done
    pkill -9 -x "$1" || true
}

stop() {
    need_root
    running slurmctld && { scontrol shutdown >/dev/null 2>&1 || true; }
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
    echo "SLURM is stopped"
}

status() {
    sinfo -p "$PARTITION" && squeue
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: bash $0 start|stop|status" >&2; exit 2 ;;
esac
