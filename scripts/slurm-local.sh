#!/usr/bin/env bash
# A one-machine SLURM for the launcher's tests: slurmctld and slurmd on this host, munge for auth,
# no accounting database (fgbench reads job states with squeue, never sacct). Debian packages; root.
#
#   scripts/slurm-local.sh start    install what is missing, write the config, start the daemons,
#                                   wait for the node to accept jobs
#   scripts/slurm-local.sh stop     stop the daemons this script started (pid files it recorded)
#   scripts/slurm-local.sh status   daemons and sinfo
#
# A cluster's own SLURM is never touched: `start` refuses when slurmctld already runs without us.
set -euo pipefail

STATE=/run/fgbench-slurm            # one file per daemon started here, holding its pid file
PIDS=/run/slurm
CONF=/etc/slurm/slurm.conf
say() { echo "[slurm-local] $*" >&2; }

alive() {  # alive NAME: the pid in NAME's pid file runs /usr/sbin/NAME
  local pidfile pid
  pidfile=$(pidfile_for "$1"); [ -s "$pidfile" ] || return 1
  pid=$(tr -cd '0-9' < "$pidfile"); [ -n "$pid" ] || return 1
  [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "/usr/sbin/$1")" ]
}

pidfile_for() {
  case "$1" in
    munged) echo /run/munge/munged.pid ;;
    *) echo "$PIDS/$1.pid" ;;
  esac
}

retry() {  # retry SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.2
  done
}

install_missing() {
  local want=() p
  for p in munge slurmctld slurmd slurm-client; do dpkg -s "$p" >/dev/null 2>&1 || want+=("$p"); done
  [ ${#want[@]} -eq 0 ] && return 0
  say "installing ${want[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}" \
      >/tmp/slurm-local-apt.log 2>&1; then
    apt-get update -q >>/tmp/slurm-local-apt.log 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${want[@]}" \
      >>/tmp/slurm-local-apt.log 2>&1 || { tail -n 20 /tmp/slurm-local-apt.log; exit 1; }
  fi
}

write_config() {
  local host hw cpus boards sockets cores threads mem
  host=$(hostname -s)
  hw=$(slurmd -C | head -n 1)   # what slurmd will detect; the node line must agree with it
  field() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  cpus=$(field CPUs); sockets=$(field SocketsPerBoard); cores=$(field CoresPerSocket)
  threads=$(field ThreadsPerCore); mem=$(( $(field RealMemory) * 9 / 10 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$PIDS" "$STATE"
  cat > "$CONF.new" <<CONF
# fgbench scripts/slurm-local.sh: a single-node test cluster
ClusterName=fgbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
# seconds between SIGTERM and SIGKILL: a cell saves its checkpoint in between
KillWait=20
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus Boards=1 SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  mv "$CONF.new" "$CONF"
}

start_munge() {
  alive munged && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    head -c 1024 /dev/urandom > /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
  su -s /bin/sh munge -c /usr/sbin/munged
  retry 10 alive munged || { say "munged did not start"; exit 1; }
  echo munged > "$STATE/munged"
  retry 10 sh -c 'munge -n | unmunge' || { say "munge cannot encode and decode"; exit 1; }
}

start_daemon() {  # start_daemon NAME
  alive "$1" && return 0
  "/usr/sbin/$1"
  retry 20 alive "$1" || { say "$1 did not start:"; tail -n 20 "/var/log/slurm/$1.log"; exit 1; }
  echo "$1" > "$STATE/$1"
}

node_ready() { sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }

start() {
  [ "$(id -u)" -eq 0 ] || { say "run as root"; exit 1; }
  if alive slurmctld && [ ! -f "$STATE/slurmctld" ]; then
    say "a slurmctld not started by this script runs here; not touching it"; exit 1
  fi
  local t0=$SECONDS
  install_missing
  write_config
  start_munge
  start_daemon slurmctld
  start_daemon slurmd
  if ! retry 60 node_ready; then
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    retry 30 node_ready || { sinfo; say "the node never accepted jobs"; exit 1; }
  fi
  say "ready in $((SECONDS - t0)) s"
}

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    [ -f "$STATE/$name" ] || continue
    if alive "$name"; then
      pid=$(tr -cd '0-9' < "$(pidfile_for "$name")")
      kill -TERM "$pid" 2>/dev/null || true
      retry 15 sh -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
      say "stopped $name"
    fi
    rm -f "$STATE/$name"
  done
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    if alive "$name"; then echo "$name: running"; else echo "$name: stopped"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
