#!/usr/bin/env bash
# A single-node SLURM cluster with accounting, on loopback only, for the workflow's SLURM tests.
#
#   tests/slurm/cluster.sh install        apt-get the Debian packages (root; CI does this)
#   tests/slurm/cluster.sh start [DIR]    start munge, MariaDB, slurmdbd, slurmctld and slurmd
#   tests/slurm/cluster.sh stop [DIR]     stop exactly those processes and remove DIR
#   tests/slurm/cluster.sh status [DIR]   sinfo and the accounting cluster
#
# DIR (default $FM2S_SLURM_DIR, else /tmp/fm2s-slurm) holds everything the cluster writes:
# configuration, state, spool, logs, pid files, the munge key and socket, and the database.
# The node has one GPU as a generic resource (gres.conf without a device file), so GPU-tagged
# jobs are scheduled and accounted as on a real GPU partition. Partitions: `cpu` (default) and
# `gpu`, both on this node. Ports: 16817-16819 (SLURM) and 13306 (MariaDB), bound to 127.0.0.1.
#
# Outside DIR, `start` adds three symlinks: /etc/slurm/slurm.conf and /etc/slurm/gres.conf,
# because `srun` inside a job reads the default path whatever SLURM_CONF says, and munge's
# default socket /run/munge/munge.socket.2, because SLURM 22.05's clients ignore AuthInfo when
# they talk to slurmdbd. It refuses to replace files it did not make (a site's own SLURM or a
# running munged), and `stop` removes only its own links.
set -euo pipefail

DIR=${2:-${FM2S_SLURM_DIR:-/tmp/fm2s-slurm}}
CLUSTER=fm2s-ci
NODE=$(hostname -s)
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
DAEMONS=(slurmd slurmctld slurmdbd mariadb munged)  # stop order

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    [[ $(id -u) == 0 ]] || die "install needs root (apt-get)"
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

# Waits until "$@" succeeds, or fails naming $what and the log to read.
wait_for() {
    local what=$1 logfile=$2; shift 2
    for _ in $(seq 1 60); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "$what did not come up; last lines of $logfile:"
    tail -n 20 "$logfile" >&2 || true
    return 1
}

LINKS=(/etc/slurm/slurm.conf:etc/slurm.conf /etc/slurm/gres.conf:etc/gres.conf
       /run/munge/munge.socket.2:run/munge.socket)

link_defaults() {
    local entry link target
    for entry in "${LINKS[@]}"; do
        link=${entry%%:*} target=$DIR/${entry#*:}
        if [[ -L $link && ! -e $link ]]; then
            rm -f "$link"  # dangling: left by a cluster that was not stopped
        elif [[ -e $link || -L $link ]]; then
            die "$link exists and is not ours; refusing to replace a site's SLURM or munge"
        fi
        mkdir -p "$(dirname "$link")"
        ln -s "$target" "$link"
    done
}

unlink_defaults() {
    local entry link
    for entry in "${LINKS[@]}"; do
        link=${entry%%:*}
        [[ $(readlink "$link" 2>/dev/null) == "$DIR/${entry#*:}" ]] && rm -f "$link"
    done
    return 0
}

write_config() {
    local cpus memory
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 3 / 4 ))
    # No(Ctld)InAddrAny: the daemons bind the address their host name resolves to instead of
    # every interface; that is loopback only when the name resolves to 127.x (as in /etc/hosts
    # of these machines).
    local common="AuthType=auth/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"
    if [[ $(getent hosts "$NODE" | awk '{print $1; exit}') != 127.* ]]; then
        log "warning: $NODE does not resolve to 127.x; the daemons listen on every interface"
        common="AuthType=auth/munge"
    fi
    cat >"$DIR/etc/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
$common
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=16819
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/null
EOF
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
$common
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=16819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=13306
StorageUser=slurm
StoragePass=fm2s-ci
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

start() {
    [[ $(id -u) == 0 ]] || die "start needs root (SlurmUser=root, /etc/slurm links)"
    local missing=()
    for program in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr; do
        command -v "$program" >/dev/null || missing+=("$program")
    done
    ((${#missing[@]} == 0)) || die "not installed: ${missing[*]} (run: $0 install)"
    [[ ! -e $DIR/run/slurmctld.pid ]] || die "$DIR already holds a running cluster (stop it first)"
    rm -rf "$DIR"
    mkdir -p "$DIR"/{etc,state,spool,log,run,db,munge}
    write_config
    link_defaults
    export SLURM_CONF=$DIR/etc/slurm.conf

    log "munge"
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 700 "$DIR/munge" && chmod 600 "$DIR/munge/munge.key"
    # --force: munged refuses root and a socket under a world-writable /tmp otherwise.
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/run/munge.socket" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munge.seed"
    wait_for munged "$DIR/log/munged.log" munge --socket="$DIR/run/munge.socket" -n

    log "mariadb"
    mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root \
        --auth-root-authentication-method=normal >"$DIR/log/mariadb-install.log" 2>&1
    mariadbd --no-defaults --datadir="$DIR/db" --user=root --bind-address=127.0.0.1 \
        --port=13306 --socket="$DIR/run/mariadb.sock" --pid-file="$DIR/run/mariadb.pid" \
        --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 &
    disown
    wait_for mariadb "$DIR/log/mariadb.log" \
        mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -uroot -e "select 1"
    mariadb --no-defaults --socket="$DIR/run/mariadb.sock" -uroot -e "
        CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'fm2s-ci';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    log "slurmdbd"
    slurmdbd
    wait_for slurmdbd "$DIR/log/slurmdbd.log" sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null

    log "slurmctld and slurmd"
    slurmctld
    wait_for slurmctld "$DIR/log/slurmctld.log" scontrol ping
    slurmd
    wait_for "slurmd (node $NODE idle)" "$DIR/log/slurmd.log" \
        bash -c "sinfo -h -N -o %t | grep -qx idle"
    log "up: SLURM_CONF=$SLURM_CONF"
    sinfo -N -o "%N %P %c %m %G %t" >&2
}

# Job processes still alive after scancel: proctrack/linuxproc follows parent pids only, so a
# process that outlives its parent (e.g. a group job's inner Snakemake after a cancel) is no
# longer signalled by slurmd. Anything started by a job of this cluster (SLURM_JOB_ID and this
# cluster's SLURM_CONF in its initial environment) is killed.
kill_escaped_jobs() {
    local environ pid vars
    for environ in /proc/[0-9]*/environ; do
        vars=$(tr '\0' '\n' < "$environ" 2>/dev/null) || continue
        grep -qx "SLURM_CONF=$DIR/etc/slurm.conf" <<< "$vars" || continue
        grep -q '^SLURM_JOB_ID=' <<< "$vars" || continue
        pid=${environ#/proc/}
        pid=${pid%/environ}
        kill -9 "$pid" 2>/dev/null && log "killed job process $pid that outlived its job"
    done
    return 0
}

stop() {
    local name pidfile pid
    if [[ -f $DIR/run/slurmctld.pid ]]; then  # jobs first, so that no job step outlives slurmd
        SLURM_CONF=$DIR/etc/slurm.conf scancel --full "--clusters=$CLUSTER" --quiet 2>/dev/null \
            || SLURM_CONF=$DIR/etc/slurm.conf scancel --quiet -u "$(id -un)" 2>/dev/null || true
        sleep 1
    fi
    kill_escaped_jobs
    for name in "${DAEMONS[@]}"; do
        pidfile=$DIR/run/$name.pid
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    unlink_defaults
    rm -rf "$DIR"
    log "stopped; removed $DIR"
}

case ${1:-} in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    status) export SLURM_CONF=$DIR/etc/slurm.conf; sinfo; sacctmgr -n list cluster format=cluster ;;
    *) echo "usage: $0 install|start|stop|status [DIR]" >&2; exit 2 ;;
esac
