#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests (DESIGN.md, dependency facts).
#
#   scripts/slurm_cluster.sh start    install if missing, configure, start munged, slurmctld and
#                                     slurmd by hand (no systemd), wait until the node is idle
#   scripts/slurm_cluster.sh stop     cancel the cluster's jobs, stop the daemons it started (by PID)
#   scripts/slurm_cluster.sh status   say which daemons run and show sinfo
#
# Both are idempotent: `start` on a running cluster with an unchanged config does nothing; `stop`
# on a stopped one does nothing. Everything the cluster writes (state, spool, logs, PID files)
# lies under $FWIMPI_SLURM_STATE (default /var/lib/fwimpi-slurm); the config is
# /etc/slurm/slurm.conf, which the client commands (sbatch, scontrol) read by default. A
# slurm.conf that this script did not write is never touched.
# Daemons listen on 127.0.0.1 only: the node address and controller address are the loopback.
#
# Exit status: 0 ok; 10 SLURM cannot be installed or configured here (not root, apt-get failed,
# a foreign slurm.conf); 1 any other failure (a daemon did not start, the node never got idle).
set -euo pipefail

STATE=${FWIMPI_SLURM_STATE:-/var/lib/fwimpi-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by fwimpi scripts/slurm_cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)
TIMEOUT=${FWIMPI_SLURM_TIMEOUT:-60}

say() { echo "slurm_cluster: $*" >&2; }
cannot() { say "cannot install SLURM here: $*"; exit 10; }
die() { say "error: $*"; exit 1; }

alive() {  # alive PIDFILE NAME: the PID in PIDFILE runs a process whose name starts with NAME
  local pid
  [ -s "$1" ] || return 1
  pid=$(tr -dc 0-9 < "$1")
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  case "$(cat "/proc/$pid/comm")" in "$2"*) return 0 ;; *) return 1 ;; esac
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

install() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  [ "$(id -u)" -eq 0 ] || cannot "not root, and ${missing[*]} are not installed"
  command -v apt-get >/dev/null || cannot "no apt-get, and ${missing[*]} are not installed"
  say "installing ${missing[*]}"
  # Package scripts must not start the daemons (no systemd here; we start them by hand).
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
  fi
  local ok=0
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"; } >&2 || ok=$?
  [ -z "$policy" ] || rm -f "$policy"
  [ "$ok" -eq 0 ] || cannot "apt-get install ${missing[*]} failed (status $ok)"
}

write_conf() {  # prints "changed" when the config file was (re)written
  local node host new
  [ ! -e "$CONF" ] || grep -qF "$MARK" "$CONF" || cannot "$CONF exists and was not written by this script"
  node=$(slurmd -C | head -n 1)
  [[ "$node" == NodeName=* ]] || die "unexpected output of 'slurmd -C': $node"
  host=${node%% *}; host=${host#NodeName=}
  new=$(cat <<EOF
$MARK: a single-node test cluster on
# the loopback interface. Rewritten by 'scripts/slurm_cluster.sh start'; edit that script instead.
ClusterName=fwimpi
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups here: processes are tracked through /proc, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# OpenMPI 4.1 runs under srun --mpi=pmix (pmi2 and none fail)
MpiDefault=pmix
# no accounting daemon: no sacct; jobs are followed with scontrol show job
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
# an impossible request is refused at submission instead of pending forever
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
  if [ -f "$CONF" ] && [ "$(cat "$CONF")" == "$new" ]; then return 0; fi
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$new" > "$CONF.tmp.$$" && mv "$CONF.tmp.$$" "$CONF"
  echo changed
}

start_munge() {
  if munge_works; then return 0; fi
  local key=/etc/munge/munge.key
  if [ ! -s "$key" ]; then
    say "creating $key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    chown munge:munge "$key" /etc/munge && chmod 0400 "$key" && chmod 0700 /etc/munge
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$STATE/munged.pid"
  local i
  for i in $(seq 50); do munge_works && return 0; sleep 0.1; done
  die "munged started but 'munge -n | unmunge' fails"
}

node_state() { sinfo -h -N -o %t 2>/dev/null | head -n 1; }

start() {
  # the test cluster runs its daemons and jobs as root (SlurmUser=root)
  [ "$(id -u)" -eq 0 ] || cannot "this test cluster must be started as root"
  install
  mkdir -p "$STATE/ctld" "$STATE/spool"
  local changed
  changed=$(write_conf)
  if [ -n "$changed" ] && { alive "$STATE/slurmctld.pid" slurmctld || alive "$STATE/slurmd.pid" slurmd; }; then
    say "configuration changed: restarting the daemons"
    stop_daemons
  fi
  start_munge
  if ! alive "$STATE/slurmctld.pid" slurmctld; then
    # -c: forget jobs of an earlier cluster (a test cluster starts empty)
    slurmctld -c || die "slurmctld did not start; see $STATE/slurmctld.log"
  fi
  if ! alive "$STATE/slurmd.pid" slurmd; then
    slurmd || die "slurmd did not start; see $STATE/slurmd.log"
  fi
  local t0=$SECONDS state=""
  while ((SECONDS - t0 < TIMEOUT)); do
    state=$(node_state)
    case "$state" in
      idle|mix|alloc) say "node $state after $((SECONDS - t0)) s (sinfo: $(sinfo -h -o '%P %a %D %t' | tr '\n' ' '))"
                      return 0 ;;
    esac
    sleep 0.5
  done
  tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
  die "the node is not idle after ${TIMEOUT} s (sinfo state '${state}'; logs above)"
}

kill_pidfile() {  # kill_pidfile PIDFILE NAME: SIGTERM, then SIGKILL after 10 s
  local pid i
  alive "$1" "$2" || { rm -f "$1"; return 0; }
  pid=$(tr -dc 0-9 < "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do alive "$1" "$2" || break; sleep 0.1; done
  if alive "$1" "$2"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  rm -f "$1"
}

stop_daemons() {
  kill_pidfile "$STATE/slurmd.pid" slurmd
  kill_pidfile "$STATE/slurmctld.pid" slurmctld
}

stop() {
  if alive "$STATE/slurmctld.pid" slurmctld; then
    # cancel what still runs, so that no job step outlives the cluster
    local jobs i
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086  # one job id a word
      scancel $jobs 2>/dev/null || true
      for i in $(seq 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  stop_daemons
  kill_pidfile "$STATE/munged.pid" munged  # only a munged this script started
  say "stopped"
}

status() {
  local d
  for d in munged slurmctld slurmd; do
    if alive "$STATE/$d.pid" "$d"; then echo "$d: running (pid $(cat "$STATE/$d.pid"))"
    else echo "$d: not running (from this script)"; fi
  done
  sinfo 2>&1 || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
