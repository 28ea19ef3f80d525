# tests/vm/lib.sh: sourced by the guest scripts (they run inside the VM, see
# tests/vm/run.sh). It gives every script the same two verdicts, printed in
# this order so that a hang is never the first thing that reports a problem:
#
#     WEFT-VM-CHECKS: PASS | FAIL (why)      the script's checks, before any teardown
#     WEFT-VM-TEARDOWN: PASS (N ms) | FAIL (why)   teardown, under its own deadline
#
# A script sets NAME (the prefix of its lines), defines teardown() (stop
# what it started, delete its namespaces) and optionally on_fail() (print
# logs), calls checks_passed "summary" when its checks are done, and fail
# "why" on a failed check. The EXIT trap runs teardown in the background,
# waits at most WEFT_VM_TEARDOWN_SECS (default 30) for it, and exits 0 only
# when both verdicts are PASS. A teardown stuck in the kernel (uninterruptible
# sleep, where no signal reaches it) is reported with the stuck processes and
# the kernel's unregister_netdevice lines, and left behind: the VM powers off.

vm_checks_verdict=""

# say: a line of the script's, with the seconds since the VM booted (so
# a slow or timed-out run shows where its time went).
say() { echo "$NAME: $* ($(cut -d' ' -f1 /proc/uptime) s)"; }

fail() {
    echo "$NAME: FAIL: $*"
    if [[ "$(type -t on_fail)" == function ]]; then on_fail || true; fi
    echo "WEFT-VM-CHECKS: FAIL ($*)"
    vm_checks_verdict=fail
    exit 1
}

checks_passed() {
    echo "$NAME: PASS ($*)"
    echo "WEFT-VM-CHECKS: PASS"
    vm_checks_verdict=pass
}

# still_running PID: true while PID exists and is not a zombie.
still_running() {
    local state
    state="$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)"
    [[ -n "$state" && "$state" != Z ]]
}

# underlay A B: namespaces A and B joined by a veth pair (ua in A with
# 198.18.0.1/24, ub in B with 198.18.0.2/24), loopback up in both.
underlay() {
    ip netns add "$1"
    ip netns add "$2"
    ip link add ua type veth peer name ub
    ip link set ua netns "$1"
    ip link set ub netns "$2"
    ip -n "$1" addr add 198.18.0.1/24 dev ua
    ip -n "$2" addr add 198.18.0.2/24 dev ub
    for ns in "$1" "$2"; do ip -n "$ns" link set lo up; done
    ip -n "$1" link set ua up
    ip -n "$2" link set ub up
}

# underlay6 A B: like underlay, over IPv6 only: ua in A with 2001:2::1/64,
# ub in B with 2001:2::2/64 (from the benchmarking range 2001:2::/48;
# nodad: usable at once, no duplicate address detection to wait for).
underlay6() {
    ip netns add "$1"
    ip netns add "$2"
    ip link add ua type veth peer name ub
    ip link set ua netns "$1"
    ip link set ub netns "$2"
    ip -n "$1" addr add 2001:2::1/64 dev ua nodad
    ip -n "$2" addr add 2001:2::2/64 dev ub nodad
    for ns in "$1" "$2"; do ip -n "$ns" link set lo up; done
    ip -n "$1" link set ua up
    ip -n "$2" link set ub up
}

# stop_all PIDS...: SIGTERM each, then wait at most 25 s for each to exit
# (weft gives the kernel 10 s to delete its datapath); fails otherwise.
stop_all() {
    local pid
    for pid in "$@"; do kill "$pid"; done
    for pid in "$@"; do
        for _ in $(seq 250); do still_running "$pid" || break; sleep 0.1; done
        still_running "$pid" && fail "weft (pid $pid) did not exit within 25 s of SIGTERM"
    done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# stuck_processes: processes in uninterruptible sleep, with where they wait.
stuck_processes() {
    ps -eo pid,stat,wchan:32,args 2>/dev/null | awk 'NR == 1 || $2 ~ /^D/'
}

vm_finish() {
    local rc=$1
    set +e
    trap - EXIT
    if [[ -z "$vm_checks_verdict" ]]; then
        echo "WEFT-VM-CHECKS: FAIL (the script stopped with rc=$rc before its verdict)"
        vm_checks_verdict=fail
    fi
    local limit="${WEFT_VM_TEARDOWN_SECS:-30}" t0 tpid finished=0
    t0=$(date +%s%N)
    if [[ "$(type -t teardown)" == function ]]; then
        (teardown) >/tmp/vm-teardown.log 2>&1 &
        tpid=$!
        for ((i = 0; i < limit * 10; i++)); do
            if ! still_running "$tpid"; then
                finished=1
                break
            fi
            sleep 0.1
        done
    else
        finished=1
    fi
    cat /tmp/vm-teardown.log 2>/dev/null
    local ms=$((($(date +%s%N) - t0) / 1000000)) teardown_ok=0
    if ((finished)); then
        echo "WEFT-VM-TEARDOWN: PASS ($ms ms)"
        teardown_ok=1
    else
        echo "WEFT-VM-TEARDOWN: FAIL (teardown still running after ${limit} s)"
        echo "$NAME: processes in uninterruptible sleep:"
        stuck_processes
        echo "$NAME: kernel log:"
        dmesg 2>/dev/null | grep -E 'unregister_netdevice|hung_task|blocked for more' | tail -n 5
    fi
    if [[ "$vm_checks_verdict" == pass ]] && ((teardown_ok)); then
        exit 0
    fi
    exit 1
}
trap 'vm_finish $?' EXIT
