#!/usr/bin/env bash
# Idempotent single-node Slurm (slurmctld + slurmd + munged on this host, no systemd), for the
# tests that submit through submitit to a real scheduler.
#   bash scripts/slurm.sh start   # install if missing, configure, start, wait until the node is up
#   bash scripts/slurm.sh stop    # cancel jobs, stop slurmd, slurmctld, munged (exit 0 if nothing runs)
#   bash scripts/slurm.sh status  # print sinfo, exit 0 if up; one line and exit 1 if down
# No accounting (no slurmdbd): sacct does not work; finished jobs are recorded in
# /var/log/slurm/jobcomp.log and stay visible to squeue/scontrol for MinJobAge seconds.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
WAIT_S=${SLURM_WAIT_S:-60}
NODE=$(hostname)

say() { echo "[slurm] $*"; }
die() { echo "[slurm] ERROR: $*" >&2; exit 1; }

# alive PID: a live process (not a zombie left for an init that does not reap)
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ -n "$st" && "$st" != Z* ]]; }

# pid_of NAME PIDFILE: print the pid of a live NAME process (from its pid file, else by exact name)
pid_of() {
  local name=$1 file=$2 pid
  if [ -f "$file" ]; then
    pid=$(cat "$file" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = "$name" ] && alive "$pid"; then
      echo "$pid"; return 0
    fi
  fi
  for pid in $(pgrep -x "$name" 2>/dev/null || true); do
    alive "$pid" && { echo "$pid"; return 0; }
  done
  return 0
}
running() { [ -n "$(pid_of "$1" "$2")" ]; }

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1 || true; }
node_up() { case "$(node_state)" in idle|mixed|allocated|completing) return 0;; *) return 1;; esac; }
# slurmd_registered_since EPOCH: the running slurmd (started at or after EPOCH) has registered with
# slurmctld. Needed because a restarted slurmctld restores the node as 'idle' from its state files.
slurmd_registered_since() {
  local t
  t=$(scontrol show node "$NODE" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2 || true)
  [ -n "$t" ] && [ "$t" != None ] && [ "$(date -d "$t" +%s 2>/dev/null || echo 0)" -ge "$1" ]
}

logs_tail() {
  local f
  for f in "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" /var/log/munge/munged.log; do
    [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  return 0
}

need_root() {
  if [ "$(id -u)" != 0 ]; then exec sudo -E bash "$0" "$@"; fi
}

install_pkgs() {
  local need=() pkg
  for pkg in slurmctld slurmd slurm-client munge; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  say "apt-get install ${need[*]}"
  apt-get update -qq
  # no systemd here: the packages' postinst may fail to start services; that is expected
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

write_conf() {
  local mem_mb tmp
  mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
# written by scripts/slurm.sh (single node, no accounting)
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGDIR/jobcomp.log
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
JobRequeue=1
MinJobAge=300
KillWait=5
# a requeued job may not start before now + cred_expire (default 120 s), and a job whose begin
# time has passed waits for the next periodic scheduler pass (default 60 s): shorten both
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName=$NODE CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"; return 1   # unchanged
  fi
  install -m 644 "$tmp" "$CONF"; rm -f "$tmp"
  say "wrote $CONF"
  return 0
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  if ! running munged "$MUNGE_PID"; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged || { logs_tail; die "munged did not start"; }
  fi
  local i
  for i in $(seq 1 20); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  logs_tail; die "munge does not answer (munge -n | unmunge fails)"
}

# stop_daemon NAME PIDFILE
stop_daemon() {
  local name=$1 file=$2 pid i
  pid=$(pid_of "$name" "$file")
  if [ -z "$pid" ]; then rm -f "$file"; return 0; fi
  say "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do
    alive "$pid" || { rm -f "$file"; return 0; }
    sleep 0.25
  done
  say "$name did not exit after 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
  rm -f "$file"
}

cmd_start() {
  need_root start
  install_pkgs
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
  start_munge
  if write_conf && { running slurmctld "$CTLD_PID" || running slurmd "$SLURMD_PID"; }; then
    say "config changed: restarting slurm daemons"
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
  fi
  if ! running slurmctld "$CTLD_PID"; then
    say "starting slurmctld"
    /usr/sbin/slurmctld || { logs_tail; die "slurmctld did not start"; }
  fi
  local since=""
  if ! running slurmd "$SLURMD_PID"; then
    say "starting slurmd"
    since=$(date +%s)
    /usr/sbin/slurmd || { logs_tail; die "slurmd did not start"; }
  fi
  local t0=$SECONDS resumed=0 st
  while :; do
    if node_up && { [ -z "$since" ] || slurmd_registered_since "$since"; }; then break; fi
    if [ -n "$since" ] && ! running slurmd "$SLURMD_PID"; then
      logs_tail; die "slurmd exited right after start (see $LOGDIR/slurmd.log)"
    fi
    st=$(node_state)
    # a node left drained (e.g. 'Kill task failed' in an earlier run) does not return by itself
    if [ $resumed = 0 ] && [[ "$st" == drain* ]]; then
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
      resumed=1
    fi
    if [ $((SECONDS - t0)) -ge "$WAIT_S" ]; then
      logs_tail
      die "node $NODE not up after ${WAIT_S}s (sinfo state: '${st:-no answer from slurmctld}')"
    fi
    sleep 1
  done
  say "up: node $NODE $(node_state), partition debug"
}

cmd_stop() {
  need_root stop
  # cancel jobs first: a stopped slurmd leaves its slurmstepd and the job's processes running
  if running slurmctld "$CTLD_PID" && running slurmd "$SLURMD_PID"; then
    local ids i
    ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ' || true)
    if [ -n "${ids// /}" ]; then
      say "cancelling jobs: $ids"
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      for i in $(seq 1 60); do
        [ -z "$(squeue -h -t running,completing,configuring -o %A 2>/dev/null || true)" ] && break
        sleep 0.25
      done
    fi
  fi
  stop_daemon slurmd "$SLURMD_PID"
  stop_daemon slurmctld "$CTLD_PID"
  stop_daemon munged "$MUNGE_PID"
  say "stopped"
}

cmd_status() {
  if command -v sinfo >/dev/null 2>&1 && running slurmctld "$CTLD_PID" && running slurmd "$SLURMD_PID" && node_up; then
    sinfo
    return 0
  fi
  local why="not installed"
  if command -v sinfo >/dev/null 2>&1; then
    if ! running slurmctld "$CTLD_PID"; then why="slurmctld not running"
    elif ! running slurmd "$SLURMD_PID"; then why="slurmd not running"
    else why="node $NODE state '$(node_state)'"; fi
  fi
  echo "[slurm] down: $why"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: bash $0 start|stop|status" >&2; exit 2 ;;
esac
