#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the `slurm` integration tests.
#
#   tests/slurm/cluster.sh up      install (apt) and start munged, slurmctld, slurmd
#   tests/slurm/cluster.sh down    stop exactly the daemons that `up` started (by PID)
#   tests/slurm/cluster.sh status  exit 0 if the node is up and idle/mixed/allocated
#
# Needs root and a working apt (Debian 12 packages munge, slurmctld, slurmd, slurm-client; no
# systemd needed). One fake GPU is advertised through GRES (a /dev/null symlink as device file)
# so jobs asking for `--gpus=1` can be scheduled. No accounting daemon: `sacct` does not work,
# so the Snakemake profile must use `slurm-status-command: squeue` (tests/slurm/profile).
#
# Environment:
#   GIGAMIL_SLURM_PIDFILE  where the PIDs are recorded (default /run/gigamil-slurm.pids)
#   GIGAMIL_SLURM_GPUS     number of fake GPUs (default 1)
#   GIGAMIL_SLURM_NO_APT=1 do not call apt (the packages must already be installed)
set -euo pipefail

PIDFILE=${GIGAMIL_SLURM_PIDFILE:-/run/gigamil-slurm.pids}
GPUS=${GIGAMIL_SLURM_GPUS:-1}
STATE=/var/lib/slurm
PKGS=(munge slurmctld slurmd slurm-client)

log() { printf '[cluster.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# retry <seconds> <command...>: run the command every 0.2 s until it succeeds or time runs out
retry() {
  local tries=$(($1 * 5))
  shift
  local i
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for: $*"
  return 1
}

node_ready() {
  local state
  state=$(sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null) || return 1
  [[ $state == idle || $state == mixed || $state == allocated ]]
}

record() { # record <name> <pid>
  [[ $2 =~ ^[0-9]+$ ]] || die "no PID for $1"
  echo "$1 $2" >>"$PIDFILE"
}

install_packages() {
  if [[ ${GIGAMIL_SLURM_NO_APT:-0} == 1 ]]; then
    for b in munged slurmctld slurmd sinfo sbatch squeue; do
      command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] ||
        die "$b missing (GIGAMIL_SLURM_NO_APT=1)"
    done
    return
  fi
  local missing=()
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

write_config() {
  local node hw mem gres_node=""
  node=$(hostname -s)
  # hardware line as slurmd sees it, minus 1 GiB of RAM for the OS
  hw=$(/usr/sbin/slurmd -C | head -1)
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  ((mem > 2048)) || die "too little memory for a SLURM node: ${mem} MB"
  hw=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem - 1024))/" <<<"$hw")

  install -d -m 0755 /etc/slurm
  : >/etc/slurm/gres.conf
  if ((GPUS > 0)); then
    gres_node="Gres=gpu:${GPUS}"
    install -d "$STATE/fakegpu"
    local i
    for ((i = 0; i < GPUS; i++)); do
      # gres/gpu wants a device file; a missing or regular file drains the node
      ln -sfn /dev/null "$STATE/fakegpu/gpu$i"
      echo "NodeName=$node Name=gpu File=$STATE/fakegpu/gpu$i" >>/etc/slurm/gres.conf
    done
  fi
  # MinJobAge: squeue must still show finished jobs when the executor polls them (>= 3 x
  # slurm-init-seconds-before-status-checks), and the tests read them after the run: keep 1 h
  cat >/etc/slurm/slurm.conf <<EOF
# written by gigamil tests/slurm/cluster.sh: single-node test cluster
ClusterName=gigamil-ci
SlurmctldHost=${node}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=3600
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
${hw} NodeAddr=127.0.0.1 ${gres_node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  install -d -o slurm -g slurm "$STATE/slurmctld" /var/log/slurm
  install -d "$STATE/slurmd"
}

start_munge() {
  [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged # forks; writes its pid file
  retry 10 test -s /run/munge/munged.pid
  record munged "$(cat /run/munge/munged.pid)"
  retry 10 bash -c 'munge -n | unmunge'
}

start_slurm() {
  rm -f /run/slurmctld.pid /run/slurmd.pid
  /usr/sbin/slurmctld -c # -c: clean state, no old jobs or drained node
  retry 30 test -s /run/slurmctld.pid
  record slurmctld "$(cat /run/slurmctld.pid)"
  /usr/sbin/slurmd
  retry 30 test -s /run/slurmd.pid
  record slurmd "$(cat /run/slurmd.pid)"
  retry 60 node_ready
}

up() {
  [[ $(id -u) == 0 ]] || die "must run as root"
  if [[ -s $PIDFILE ]]; then
    if node_ready; then
      log "already up (PIDs in $PIDFILE)"
      return 0
    fi
    log "stale $PIDFILE: stopping what it lists first"
    down
  fi
  local t0=$SECONDS
  install_packages
  log "packages ready after $((SECONDS - t0)) s"
  : >"$PIDFILE"
  # if anything below fails, stop what was already started
  trap 'log "start-up failed; stopping"; down' ERR
  write_config
  start_munge
  start_slurm
  trap - ERR
  log "cluster up after $((SECONDS - t0)) s"
  sinfo -N -o '%N %T %c %m %G' >&2
}

down() {
  [[ -f $PIDFILE ]] || { log "nothing to stop ($PIDFILE absent)"; return 0; }
  if command -v scancel >/dev/null && [[ -s /run/slurmctld.pid ]]; then
    scancel --user="$(id -un)" >/dev/null 2>&1 || true
  fi
  local name pid
  # newest first: slurmd, slurmctld, munged
  while read -r name pid; do
    [[ -n ${pid:-} ]] || continue
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      local i
      for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
      log "stopped $name ($pid)"
    fi
  done < <(tac "$PIDFILE")
  # slurmctld runs as user slurm and cannot remove its pid file in /run
  rm -f "$PIDFILE" /run/slurmctld.pid /run/slurmd.pid
}

status() { node_ready && sinfo -N -o '%N %T %c %m %G'; }

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
  echo "usage: $0 up|down|status" >&2
  exit 2
  ;;
esac
