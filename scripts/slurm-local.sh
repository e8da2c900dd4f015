#!/usr/bin/env bash
# A real single-node Slurm cluster on localhost, for tests and for trying the cluster recipes:
#   scripts/slurm-local.sh start    install slurm-wlm + munge (Debian), write slurm.conf, start
#                                   munged, slurmctld and slurmd, wait until sinfo shows "idle"
#   scripts/slurm-local.sh stop     stop the three daemons (the packages stay installed)
#   scripts/slurm-local.sh status   sinfo
# Needs root (apt-get, daemons). Cgroup-free (proctrack/linuxproc, task/none) so it runs in a
# container; no accounting database: finished jobs are listed in $SLURM_LOCAL_DIR/jobcomp.log.
set -euo pipefail
D=${SLURM_LOCAL_DIR:-/var/tmp/gentract-slurm}
CONF=/etc/slurm/slurm.conf
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
HOST=$(hostname -s)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurm-wlm munge
}

write_conf() {
  local mem
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
  $SUDO mkdir -p /etc/slurm "$D/spool" "$D/state" "$D/log"
  $SUDO tee "$CONF" >/dev/null <<EOF
# written by gentract scripts/slurm-local.sh: one node (this machine), $CPUS CPUs
ClusterName=gentract-local
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.log
MinJobAge=600
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start_munge() {
  pgrep -x munged >/dev/null && return
  $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || $SUDO mungekey --create --keyfile /etc/munge/munge.key
  $SUDO chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  $SUDO chmod 0400 /etc/munge/munge.key
  $SUDO runuser -u munge -- /usr/sbin/munged
}

start() {
  install
  write_conf
  start_munge
  pgrep -x slurmctld >/dev/null || $SUDO slurmctld -f "$CONF"
  pgrep -x slurmd >/dev/null || $SUDO slurmd -f "$CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
      sinfo
      return 0
    fi
    sleep 1
  done
  echo "slurm-local: the node did not become idle; see $D/log" >&2
  sinfo >&2 || true
  return 1
}

stop() {
  local name pid
  for name in slurmd slurmctld; do
    pid=$(cat "$D/$name.pid" 2>/dev/null || true)
    [ -n "$pid" ] && $SUDO kill "$pid" 2>/dev/null || true
  done
  pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
  [ -n "$pid" ] && $SUDO kill "$pid" 2>/dev/null || true
  for _ in $(seq 20); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || return 0
    sleep 0.5
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 64 ;;
esac
