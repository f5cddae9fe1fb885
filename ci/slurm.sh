#!/usr/bin/env bash
# A single-node SLURM cluster for CI and for trying the job-array examples on one machine.
#
#   ci/slurm.sh start [DIR]   install Debian's slurm-wlm and munge when missing (root), write a munge key
#                             and slurm.conf under DIR, start munged, slurmctld and slurmd
#   ci/slurm.sh stop  [DIR]   stop the daemons that `start` started (their pid files in DIR), nothing else
#   ci/slurm.sh status [DIR]  sinfo of the cluster in DIR
#
# DIR defaults to $QSM_SLURM_DIR or /tmp/qsm-bids-slurm. Clients find the cluster through
# SLURM_CONF: `source DIR/slurm.env` (the tests and ci/slurm_check.sh do). Nothing is written
# under /etc: the key, configuration, state, spool and logs all live in DIR, and munged listens on
# its own socket there, so a site's own munge/SLURM (if any) is left alone.
set -euo pipefail

action=${1:-start}
DIR=${2:-${QSM_SLURM_DIR:-/tmp/qsm-bids-slurm}}
PORT=${QSM_SLURM_PORT:-6817}   # slurmctld; slurmd uses PORT+1

log() { echo "slurm.sh: $*" >&2; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_slurm() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "slurm-wlm/munge are not installed and this is not a root Debian shell: install them first"
        exit 69
    fi
    log "installing Debian's slurm-wlm and munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    mkdir -p "$DIR"/{munge,state,spool,log,jobs}
    chmod 700 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$DIR/munge/munge.key"
    local node cpus sockets cores threads mem
    node=$(hostname -s)
    # the node's real topology (slurmd drains a node whose declared CPUs do not match it)
    read -r cpus sockets cores threads mem < <(slurmd -C | awk '
        /NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
        END { print v["CPUs"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"] }')
    mem=$(( mem * 9 / 10 ))   # slurmd drains a node that reports less memory than declared
    cat > "$DIR/slurm.conf" <<EOF
# written by ci/slurm.sh: a single-node cluster for CI
ClusterName=qsmbids
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${PORT}
SlurmdPort=$(( PORT + 1 ))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${DIR}/munge/munge.socket.2
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job that asks for no memory gets 1 GB per CPU, not the whole node
DefMemPerCPU=1024
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# one line per finished job with its exit code, without slurmdbd
JobCompType=jobcomp/filetxt
JobCompLoc=${DIR}/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/none
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} SocketsPerBoard=${sockets} CoresPerSocket=${cores} ThreadsPerCore=${threads} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$DIR/slurm.env" <<EOF
export SLURM_CONF=${DIR}/slurm.conf
EOF
}

start() {
    install_slurm
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && pid_alive "$DIR/munged.pid"; then
        log "already running in $DIR"
        return 0
    fi
    write_config
    export SLURM_CONF="$DIR/slurm.conf"
    if ! pid_alive "$DIR/munged.pid"; then
        # --force: $DIR may sit under a world-writable /tmp (sticky), which munged otherwise refuses
        munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket.2" \
            --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
    fi
    if ! pid_alive "$DIR/slurmctld.pid"; then
        slurmctld -c -f "$DIR/slurm.conf"
    fi
    if ! pid_alive "$DIR/slurmd.pid"; then
        slurmd -f "$DIR/slurm.conf"
    fi
    local i
    for i in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            log "up in $DIR ($(sinfo -h -o '%n %c CPUs %m MB %T'))"
            log "clients: source $DIR/slurm.env"
            return 0
        fi
        sleep 1
    done
    log "the node did not come up within 60 s; logs in $DIR/log"
    sinfo -N -l >&2 || true
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    exit 1
}

stop() {
    local name pidfile pid i
    for name in slurmd slurmctld munged; do
        pidfile="$DIR/$name.pid"
        if pid_alive "$pidfile"; then
            pid=$(cat "$pidfile")
            # only the process this script started: its pid file, and it must be that program
            if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
                kill "$pid"
                for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
                log "stopped $name ($pid)"
            fi
        fi
        rm -f "$pidfile"
    done
}

case "$action" in
    start) start ;;
    stop) stop ;;
    status) export SLURM_CONF="$DIR/slurm.conf"; sinfo ;;
    *) echo "usage: $0 {start|stop|status} [DIR]" >&2; exit 64 ;;
esac
