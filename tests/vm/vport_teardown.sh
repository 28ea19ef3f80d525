#!/bin/bash
# tests/vm/vport_teardown.sh WEFT_BINARY: does this kernel delete an OVS
# datapath with a VXLAN vport? (runs inside the VM, see tests/vm/run.sh).
#
# The reproducer of known kernel issue ovs-tunnel-vport-release-hang: two
# namespaces run `weft fastdp run --force` (a datapath, a VXLAN vport, flows
# installed by a ping), then SIGTERM. weft deletes its datapath in a child
# process under a deadline, so weft itself always exits; its log says
# whether the kernel completed the deletion. Checks:
#  1. weft exits within the deadline on any kernel;
#  2. what the kernel did agrees with weft's known-issues table: `weft
#     fastdp run` without --force refuses exactly on the kernels where the
#     deletion hangs.
# With WEFT_VM_KERNEL (tests/vm/install.sh) this bisects kernel builds.
set -euo pipefail
NAME=vport-teardown
source "$(dirname "$0")/lib.sh"
weft="$1"
a=vt-a
b=vt-b
pids=()
teardown() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip netns del $a 2>/dev/null || true
    ip netns del $b 2>/dev/null || true
}
on_fail() { for ns in $a $b; do echo "--- $ns log ---"; cat "/tmp/$ns.log" 2>/dev/null; done; }

underlay $a $b

kernel="$(uname -r) ($(uname -v))"
say "kernel $kernel"
set +e
refusal="$(ip netns exec $a "$weft" fastdp run --iface weft --port 6784 --peer 198.18.0.2 2>&1 </dev/null &
    p=$!; sleep 2; kill $p 2>/dev/null; wait $p; echo "exit=$?")"
set -e
if grep -q "refused: .*known issue ovs-tunnel-vport-release-hang" <<<"$refusal"; then
    table=bad
else
    table=good
fi
say "known-issues table says: $table ($(head -n 1 <<<"$refusal"))"
# The refusal probe may have created the datapath (good kernel): the real
# run below deletes a stale one first.

start() { # ns peer overlay-ip
    ip netns exec "$1" "$weft" fastdp run --force --iface weft --port 6784 --vni 42 --peer "$2" 2>"/tmp/$1.log" &
    pids+=($!)
    for _ in $(seq 300); do
        ip -n "$1" link show weft >/dev/null 2>&1 && break
        sleep 0.1
    done
    ip -n "$1" link show weft >/dev/null 2>&1 || fail "datapath device weft did not appear in $1"
    ip -n "$1" link set weft mtu 1450 up
    ip -n "$1" addr add "$3/24" dev weft
}
start $a 198.18.0.2 10.47.0.1
start $b 198.18.0.1 10.47.0.2
ip netns exec $a ping -c 3 -i 0.2 -W 2 10.47.0.2 >/dev/null || fail "ping over the datapath failed"
# Flows are installed on datapath misses; keep a little traffic going
# until a tunnel flow shows up (the bug needs one to bite).
flowed=0
for _ in $(seq 20); do
    if ip netns exec $a "$weft" fastdp flows --iface weft | grep -q "set(tunnel("; then
        flowed=1
        break
    fi
    ip netns exec $a ping -c 1 -W 1 10.47.0.2 >/dev/null || true
    sleep 0.2
done
((flowed)) || {
    ip netns exec $a "$weft" fastdp flows --iface weft
    fail "no tunnel flow was installed"
}

t0=$(date +%s%N)
stop_all "${pids[@]}"
pids=()
ms=$((($(date +%s%N) - t0) / 1000000))
if grep -q "did not complete within" /tmp/$a.log /tmp/$b.log; then
    observed=hung
    grep -h "did not complete within" /tmp/$a.log | head -n 1 | sed "s/^/$NAME: weft said: /"
else
    observed=completed
fi
say "datapath deletion $observed; weft exited $ms ms after SIGTERM"
echo "WEFT-VM-OBSERVED: kernel=$(uname -r) build=$(uname -v | sed -n 's/.*Debian \([^ ]*\).*/\1/p') table=$table deletion=$observed"
[[ "$table" == bad && "$observed" == hung ]] || [[ "$table" == good && "$observed" == completed ]] ||
    fail "weft's known-issues table says this kernel is $table for fastdp but the datapath deletion $observed"
checks_passed "the table and the kernel agree: $table, deletion $observed"
