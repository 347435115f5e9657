#!/usr/bin/env bash
# A throwaway single-node Slurm cluster for tests.
#
#   tools/slurm_cluster.sh start STATE_DIR   # prints SLURM_CONF=STATE_DIR/slurm.conf
#   tools/slurm_cluster.sh stop STATE_DIR    # idempotent
#
# Everything (munge key and socket, slurm.conf, spool dirs, logs, pid files)
# lives under STATE_DIR so a test cluster never touches /etc or a real
# cluster, and several can run side by side (own ports, own munge socket).
# Keep STATE_DIR short (e.g. under /tmp): the munge socket path must fit in
# a unix socket address (~107 bytes).
#
# Exit status: 0 up, 1 failed to come up (logs' tails on stderr), 2 usage,
# 3 cannot run here (not Linux, not root, packages missing and no apt or
# apt failed, STATE_DIR on a noexec mount).
# Only the environment line(s) go to stdout; all diagnostics go to stderr.
set -euo pipefail

# The daemons live in sbin, which a non-root PATH often lacks.
export PATH="$PATH:/usr/sbin:/sbin"

usage() {
    echo "usage: $0 start|stop STATE_DIR" >&2
    exit 2
}
[[ $# -eq 2 ]] || usage
action=$1
[[ -n $2 ]] || usage
# Nothing to stop in a dir that is gone (e.g. a removed tempdir).
[[ $action == stop && ! -d $2 ]] && exit 0
# Absolute: the daemons chdir, and the paths end up in slurm.conf.
mkdir -p "$2"
state=$(cd "$2" && pwd -P)

munge_dir=$state/munge
ctld_dir=$state/slurmctld
slurmd_dir=$state/slurmd
log_dir=$state/log
run_dir=$state/run
conf=$state/slurm.conf

cannot() {
    echo "slurm_cluster: $*" >&2
    exit 3
}

# The pid in a pid file if that process still runs a command line naming
# this state dir (a stale pid file may point at a reused pid).
our_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] && grep -qF "$state/" "/proc/$pid/cmdline" 2>/dev/null &&
        echo "$pid"
}

# TERM the daemons named by these pid files, wait up to 10 s, then KILL.
stop_daemons() {
    local f pid pids=() alive=() i
    for f in "$@"; do
        pid=$(our_pid "$f") && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
        rm -f "$f"
    done
    for ((i = 0; i < 100; i++)); do
        alive=()
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive+=("$pid")
        done
        ((${#alive[@]} == 0)) && return 0
        sleep 0.1
    done
    kill -KILL "${alive[@]}" 2>/dev/null || true
}

stop_cluster() {
    # Cancel leftover jobs first: their slurmstepd processes outlive slurmd.
    # Only with a live slurmctld, else scancel retries for its full timeout.
    if our_pid "$run_dir/slurmctld.pid" >/dev/null && command -v scancel >/dev/null; then
        SLURM_CONF=$conf timeout 10 scancel --quiet --partition=debug >/dev/null 2>&1 || true
    fi
    # All at once: each takes ~2 s to exit and none needs the others then.
    stop_daemons "$run_dir/slurmd.pid" "$run_dir/slurmctld.pid" "$run_dir/munged.pid"
}

# TCP ports not in use in any state (listening, connected, TIME_WAIT), below
# the usual ephemeral range so outgoing connections will not take them later.
free_ports() {
    local want=$1 used="" port got=() _sl local_addr _rest
    while read -r _sl local_addr _rest; do
        [[ $local_addr == *:* ]] && used+=" $((16#${local_addr##*:})) "
    done < <(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    while ((${#got[@]} < want)); do
        port=$((20000 + RANDOM % 12000))
        [[ $used == *" $port "* ]] && continue
        [[ " ${got[*]-} " == *" $port "* ]] && continue
        got+=("$port")
    done
    echo "${got[@]}"
}

ensure_packages() {
    local missing=() c
    for c in munged slurmctld slurmd sinfo sbatch squeue scancel; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) -eq 0 ]] ||
        cannot "${missing[*]} not installed and not root (apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null || cannot "${missing[*]} not installed and no apt-get"
    echo "slurm_cluster: installing slurm-wlm munge (log: $log_dir/apt.log)" >&2
    # Wait for a dpkg lock held by another install (e.g. a parallel start).
    local lock=(-o DPkg::Lock::Timeout=300)
    local apt=(apt-get "${lock[@]}" install -y -q --no-install-recommends slurm-wlm munge)
    # A clean image may have empty package lists: update only when needed.
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$log_dir/apt.log" 2>&1; then
        if ! { DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" update -q &&
            DEBIAN_FRONTEND=noninteractive "${apt[@]}"; } >>"$log_dir/apt.log" 2>&1; then
            tail -n 15 "$log_dir/apt.log" >&2
            cannot "apt-get install slurm-wlm munge failed"
        fi
    fi
    for c in munged slurmctld slurmd sinfo sbatch squeue; do
        command -v "$c" >/dev/null || cannot "$c still missing after apt-get install"
    done
}

fail() {
    echo "slurm_cluster: $*" >&2
    local f
    for f in "$log_dir"/munged.log "$log_dir"/slurmctld.log "$log_dir"/slurmd.log; do
        [[ -f $f ]] || continue
        echo "--- tail $f" >&2
        tail -n 20 "$f" >&2
    done
    stop_cluster
    exit 1
}

start_cluster() {
    [[ $(uname -s) == Linux ]] || cannot "not Linux"
    # A previous cluster in this dir (running or killed) is stopped and its
    # state wiped, so start is repeatable; only our own subdirs are removed.
    stop_cluster
    rm -rf "$munge_dir" "$ctld_dir" "$slurmd_dir" "$log_dir" "$run_dir" "$conf"
    mkdir -p "$munge_dir" "$ctld_dir" "$slurmd_dir" "$log_dir" "$run_dir"
    # munged wants the dirs above its socket searchable by all (clients of
    # any user) and the ones above its key writable by no one else; a
    # tempdir is 0700.
    chmod 755 "$state" "$munge_dir"
    ensure_packages
    # slurmd starts jobs as their owner and SlurmUser is root.
    [[ $(id -u) -eq 0 ]] || cannot "not root (slurmctld/slurmd must run as root)"

    # slurmd runs each batch script from its spool dir under STATE_DIR.
    if command -v findmnt >/dev/null &&
        [[ ,$(findmnt -no OPTIONS -T "$state" 2>/dev/null), == *,noexec,* ]]; then
        cannot "$state is on a noexec mount: job scripts could not run"
    fi

    local socket=$munge_dir/munge.socket
    ((${#socket} < 100)) || cannot "state dir path too long for a unix socket: $socket"

    # Munge: private key and socket, so no system munged is needed or used.
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile="$munge_dir/munge.key" 2>>"$log_dir/munged.log"
    else
        dd if=/dev/urandom of="$munge_dir/munge.key" bs=1024 count=1 status=none
    fi
    chmod 400 "$munge_dir/munge.key"
    munged --socket="$socket" --key-file="$munge_dir/munge.key" \
        --pid-file="$run_dir/munged.pid" --log-file="$log_dir/munged.log" \
        --seed-file="$munge_dir/munged.seed" 2>>"$log_dir/munged.log" ||
        fail "munged did not start"

    local host ctld_port slurmd_port node
    host=$(hostname -s 2>/dev/null || true)
    [[ -n $host ]] || host=$(uname -n)
    host=${host%%.*}
    read -r ctld_port slurmd_port <<<"$(free_ports 2)"
    # The node's real shape (sockets, cores, memory) so slurmd does not drain
    # it for a mismatch; fall back to a CPU count.
    node=$(slurmd -C 2>/dev/null | head -n 1 |
        grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=[0-9]+' |
        tr '\n' ' ' || true)
    [[ $node == *CPUs=* ]] || node="CPUs=$(nproc)"

    # Addresses are 127.0.0.1 so the hostname need not resolve; the names
    # must still equal `hostname -s`, which the daemons match themselves by.
    cat >"$conf" <<EOF
# Generated by tools/slurm_cluster.sh for a test cluster; rewritten on start.
ClusterName=dropjit-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$ctld_dir
SlurmdSpoolDir=$slurmd_dir
SlurmctldPidFile=$run_dir/slurmctld.pid
SlurmdPidFile=$run_dir/slurmd.pid
SlurmctldLogFile=$log_dir/slurmctld.log
SlurmdLogFile=$log_dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: containers and CI runners rarely delegate them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
# Per-CPU allocation so array tasks share the node instead of queueing.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# A node that was down (e.g. slurmd restarted) comes back by itself.
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 $node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

    # -c: no saved state to recover (the dir is fresh anyway).
    slurmctld -c -f "$conf" 2>>"$log_dir/slurmctld.log" || fail "slurmctld did not start"
    slurmd -f "$conf" 2>>"$log_dir/slurmd.log" || fail "slurmd did not start"

    # State and reason, e.g. "idle none" or "drained Low RealMemory".
    local st="" deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        st=$(SLURM_CONF=$conf timeout 5 sinfo -h -N -n "$host" -o '%T %E' 2>/dev/null || true)
        [[ ${st%% *} == idle ]] && break
        sleep 0.5
    done
    [[ ${st%% *} == idle ]] ||
        fail "node $host not idle after 60 s (sinfo: '${st:-no answer}')"
    echo "SLURM_CONF=$conf"
}

case $action in
start) start_cluster ;;
stop) stop_cluster ;;
*) usage ;;
esac
