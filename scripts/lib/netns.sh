# shellcheck shell=bash
#
# scripts/lib/netns.sh: helpers for test "hosts" made of network namespaces.
#
# Source it from a bash script that runs as root with `set -euo pipefail`:
#
#     . "$(dirname "$0")/lib/netns.sh"
#     netns_pair NS_A NS_B 198.18.0.1/24 198.18.0.2/24 1500
#     ns_spawn "$NS_B" /tmp/server.log iperf3 -s      # background, PID recorded
#     wait_for 5 "iperf3 listening" ns_listening "$NS_B" 5201
#     ns_run "$NS_A" ping -c 1 198.18.0.2
#
# Everything these helpers create is recorded: the namespaces, the PIDs they
# started, and any temporary directories registered with netns_register_dir.
# netns_cleanup (run by the EXIT/INT/TERM traps installed on first use, and
# callable by hand between test cases) kills only the recorded PIDs, then
# deletes the namespaces (`ip netns del` does not kill processes inside a
# namespace, so the order matters), then removes the registered directories.
#
# Network safety: the only links made are veth pairs between namespaces made
# here. Underlay addresses must come from 198.18.0.0/15 (checked).

# Prefix of every namespace name; callers may set it before sourcing.
NETNS_PREFIX="${NETNS_PREFIX:-weft}"

# Interface name of the veth end inside each namespace made by netns_pair.
NETNS_UNDERLAY_IF="veth0"

# What netns_cleanup tears down (in this order: PIDs, namespaces, dirs).
NETNS_PIDS=()
NETNS_NAMES=()
NETNS_DIRS=()

# PID of the last process started by ns_spawn (a global because ns_spawn
# cannot be called in a $(...) subshell: the PID list must stay in this shell).
NS_LAST_PID=""

# Whether the traps are installed yet.
_NETNS_TRAPS_SET=0

# Prints a message on stderr, prefixed with the script name.
netns_log() {
    printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

# Installs the cleanup traps once. On INT/TERM we exit with the conventional
# status, which in turn runs the EXIT trap; cleanup is idempotent anyway.
_netns_install_traps() {
    if [[ "$_NETNS_TRAPS_SET" -eq 0 ]]; then
        trap netns_cleanup EXIT
        trap 'netns_cleanup; exit 130' INT
        trap 'netns_cleanup; exit 143' TERM
        _NETNS_TRAPS_SET=1
    fi
}

# Six random hex characters, for unique names (namespaces, interfaces).
netns_random_suffix() {
    od -An -N3 -tx1 /dev/urandom | tr -d ' \n'
}

# netns_register_pid PID: kill PID (TERM, then KILL) at cleanup.
netns_register_pid() {
    _netns_install_traps
    NETNS_PIDS+=("$1")
}

# netns_register_dir DIR: remove DIR recursively at cleanup (after the kills).
netns_register_dir() {
    _netns_install_traps
    NETNS_DIRS+=("$1")
}

# netns_kill_pid PID: stop one recorded process. SIGTERM first (weft removes
# its TUN device on SIGTERM), SIGKILL after 5 s if it is still there.
netns_kill_pid() {
    local pid="$1" tries
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((tries = 0; tries < 50; tries++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        netns_log "PID $pid ignored SIGTERM for 5 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Reap it if it is our child, so no zombie stays around.
    wait "$pid" 2>/dev/null || true
}

# netns_cleanup: kill recorded PIDs, delete recorded namespaces, remove
# recorded dirs. Safe to call many times (each list is emptied as it goes),
# and it never fails, so it is safe inside traps under `set -e`.
netns_cleanup() {
    local pid ns dir i
    # Kill in reverse order of start: clients and samplers before servers.
    for ((i = ${#NETNS_PIDS[@]} - 1; i >= 0; i--)); do
        pid="${NETNS_PIDS[i]}"
        netns_kill_pid "$pid"
    done
    NETNS_PIDS=()
    for ns in "${NETNS_NAMES[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    NETNS_NAMES=()
    for dir in "${NETNS_DIRS[@]}"; do
        # Only ever remove what was registered, and never "/".
        if [[ -n "$dir" && "$dir" != "/" && -d "$dir" ]]; then
            rm -rf -- "$dir"
        fi
    done
    NETNS_DIRS=()
    return 0
}

# netns_check_underlay_addr ADDR/LEN: refuse anything outside 198.18.0.0/15
# (198.18.x.x and 198.19.x.x), the benchmarking range reserved for tests.
netns_check_underlay_addr() {
    if [[ ! "$1" =~ ^198\.(18|19)\.[0-9]{1,3}\.[0-9]{1,3}/[0-9]{1,2}$ ]]; then
        netns_log "underlay address '$1' is not in 198.18.0.0/15 (with a /prefix); refusing"
        return 2
    fi
}

# netns_new VAR LABEL: create one namespace with a unique name
# ($NETNS_PREFIX-LABEL-$$-random), bring its lo up, store the name in VAR.
netns_new() {
    local var="$1" label="$2" name
    _netns_install_traps
    name="${NETNS_PREFIX}-${label}-$$-$(netns_random_suffix)"
    ip netns add "$name"
    NETNS_NAMES+=("$name")
    ip -n "$name" link set lo up
    printf -v "$var" '%s' "$name"
}

# netns_pair VAR_A VAR_B ADDR_A ADDR_B MTU
#   Two namespaces joined by a veth pair (named $NETNS_UNDERLAY_IF on both
#   sides), with ADDR_A/ADDR_B (CIDR, from 198.18.0.0/15) and MTU, links up.
#   The namespace names are stored in the variables named VAR_A and VAR_B;
#   the label in the name is the variable name in lower case, minus "ns_".
netns_pair() {
    local var_a="$1" var_b="$2" addr_a="$3" addr_b="$4" mtu="$5"
    local ns_a ns_b
    netns_check_underlay_addr "$addr_a"
    netns_check_underlay_addr "$addr_b"
    if [[ ! "$mtu" =~ ^[0-9]+$ ]] || ((mtu < 576 || mtu > 65535)); then
        netns_log "MTU '$mtu' is not a number between 576 and 65535"
        return 2
    fi
    local label_a="${var_a,,}" label_b="${var_b,,}"
    netns_new ns_a "${label_a#ns_}"
    netns_new ns_b "${label_b#ns_}"
    # Create both ends directly inside their namespaces: nothing ever
    # appears in the root namespace, so nothing there can be disturbed.
    ip link add "$NETNS_UNDERLAY_IF" netns "$ns_a" mtu "$mtu" type veth \
        peer name "$NETNS_UNDERLAY_IF" netns "$ns_b" mtu "$mtu"
    ip -n "$ns_a" addr add "$addr_a" dev "$NETNS_UNDERLAY_IF"
    ip -n "$ns_b" addr add "$addr_b" dev "$NETNS_UNDERLAY_IF"
    ip -n "$ns_a" link set "$NETNS_UNDERLAY_IF" up
    ip -n "$ns_b" link set "$NETNS_UNDERLAY_IF" up
    printf -v "$var_a" '%s' "$ns_a"
    printf -v "$var_b" '%s' "$ns_b"
}

# ns_run NS CMD...: run CMD inside namespace NS, in the foreground.
ns_run() {
    local ns="$1"
    shift
    ip netns exec "$ns" "$@"
}

# ns_spawn NS LOGFILE CMD...: start CMD inside NS in the background, stdout
# and stderr to LOGFILE, record its PID for cleanup, and put it in NS_LAST_PID.
# `ip netns exec` execs the command, so the PID is the command's own PID
# (usable for /proc/PID/status and for kill).
ns_spawn() {
    local ns="$1" log="$2"
    shift 2
    _netns_install_traps
    ip netns exec "$ns" "$@" >"$log" 2>&1 </dev/null &
    NS_LAST_PID="$!"
    NETNS_PIDS+=("$NS_LAST_PID")
}

# wait_for TIMEOUT_S WHAT CMD...: poll CMD every 0.1 s until it succeeds
# (return 0) or TIMEOUT_S seconds pass (message naming WHAT, return 1).
wait_for() {
    local timeout_s="$1" what="$2" deadline
    shift 2
    deadline=$(($(date +%s%N) + timeout_s * 1000000000))
    while (($(date +%s%N) < deadline)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    netns_log "timed out after ${timeout_s} s waiting for: $what"
    return 1
}

# ns_listening NS PORT: true when something in NS listens on TCP PORT.
ns_listening() {
    ns_run "$1" ss -Hltn "sport = :$2" | grep -q .
}

# pid_alive PID: true while process PID exists.
pid_alive() {
    kill -0 "$1" 2>/dev/null
}
