#!/bin/bash
# tests/vm/fastdp.sh WEFT_BINARY: guest side of the fast-datapath test (runs
# inside the VM, see tests/vm/run.sh). Two namespaces are the hosts, joined
# by a veth underlay (198.18.0.0/24).
#
# On a kernel where weft's known-issues table rules the fast datapath out
# (`weft preflight` names the row), the checks are what weft must do there:
# `weft fastdp run` refuses with the row's reason and exit code 2; with
# --force it warns that exit may hang, forwards, and on SIGTERM it still
# exits within its deletion deadline, naming the device and the issue.
#
# On any other kernel, `weft fastdp run` on each host creates an OVS
# datapath with a VXLAN vport and switches between its local device and
# the other host. Checks: ping, a checksummed TCP transfer, flows installed
# by weft carry the traffic, weft's userspace path (misses) saw only a
# handful of packets, and the datapath is gone after SIGTERM.
set -euo pipefail
NAME=fastdp
source "$(dirname "$0")/lib.sh"
weft="$1"
a=fdp-a
b=fdp-b
pids=()
teardown() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del $a 2>/dev/null || true
    ip netns del $b 2>/dev/null || true
}
on_fail() { for ns in $a $b; do echo "--- $ns log ---"; cat "/tmp/$ns.log" 2>/dev/null; done; }

underlay $a $b

start() { # ns peer overlay-ip [extra args]
    ip netns exec "$1" "$weft" fastdp run --iface weft --port 6784 --vni 42 --peer "$2" \
        --counters-file "/tmp/$1.counters" "${@:4}" 2>"/tmp/$1.log" &
    pids+=($!)
    for _ in $(seq 300); do
        ip -n "$1" link show weft >/dev/null 2>&1 && break
        sleep 0.1
    done
    ip -n "$1" link show weft >/dev/null 2>&1 || { cat "/tmp/$1.log"; fail "datapath device weft did not appear in $1"; }
    # Plaintext VXLAN over an IPv4 underlay: 50 bytes of overhead.
    ip -n "$1" link set weft mtu 1450 up
    ip -n "$1" addr add "$3/24" dev weft
}
say "kernel $(uname -r) ($(uname -v))"
ip netns exec $a "$weft" preflight --underlay-iface ua >/tmp/preflight.a 2>&1 || true
if grep -q "known-issue .*no .*ovs-tunnel-vport-release-hang" /tmp/preflight.a; then
    say "branch: known-bad kernel (ovs-tunnel-vport-release-hang)"
    grep "ovs-tunnel-vport-release-hang" /tmp/preflight.a | head -n 2
    set +e
    ip netns exec $a "$weft" fastdp run --iface weft --port 6784 --peer 198.18.0.2 </dev/null >/tmp/refusal 2>&1
    rc=$?
    set -e
    cat /tmp/refusal
    ((rc == 2)) || fail "weft fastdp run exited $rc on a known-bad kernel (expected 2, a refusal)"
    grep -q "refused: .*known issue ovs-tunnel-vport-release-hang.*fix: upgrade to Linux 6.1.175" /tmp/refusal ||
        fail "the refusal does not name the known issue and its fix"
    ip -n $a link show weft >/dev/null 2>&1 && fail "the refusal left a datapath device behind"
    start $a 198.18.0.2 10.47.0.1 --force
    start $b 198.18.0.1 10.47.0.2 --force
    grep -q "warning: --force: .*exit may hang" /tmp/$a.log || fail "--force did not warn that exit may hang"
    ip netns exec $a ping -c 3 -i 0.2 -W 2 10.47.0.2 || fail "ping over fastdp (forced) failed"
    t0=$(date +%s%N)
    stop_all "${pids[@]}"
    pids=()
    say "weft exited $((($(date +%s%N) - t0) / 1000000)) ms after SIGTERM"
    grep -h "deleting OVS datapath weft did not complete within" /tmp/$a.log | head -n 1 | sed "s/^/$NAME: weft said: /"
    grep -q "deleting OVS datapath weft did not complete within .*known issue ovs-tunnel-vport-release-hang" /tmp/$a.log ||
        fail "weft's exit did not name the stuck device and the known issue"
    checks_passed "known-bad kernel: refused with the row's reason, forced run warned, exit did not hang"
    exit 0
fi
say "branch: fastdp (no known issue rules it out on this kernel)"
start $a 198.18.0.2 10.47.0.1
start $b 198.18.0.1 10.47.0.2
cat /tmp/$a.log

ip netns exec $a ping -c 3 -i 0.2 -W 2 10.47.0.2 || fail "ping over fastdp failed"

# Checksummed TCP transfer: 8 MiB of pseudo-random bytes, sha256 on both ends.
cat >/tmp/tcp.py <<'PY'
import hashlib, socket, sys, random
mode, addr = sys.argv[1], sys.argv[2]
if mode == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 5201)); s.listen(1); s.settimeout(30)
    c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
    while True:
        d = c.recv(65536)
        if not d: break
        h.update(d); n += len(d)
    print(n, h.hexdigest())
else:
    r = random.Random(7); data = r.randbytes(8 << 20)
    s = socket.create_connection((addr, 5201), timeout=30); s.sendall(data); s.close()
    print(len(data), hashlib.sha256(data).hexdigest())
PY
ip netns exec $b python3 /tmp/tcp.py recv 10.47.0.2 >/tmp/recv.out &
recv_pid=$!
sleep 0.5
start_ns=$(date +%s%N)
ip netns exec $a python3 /tmp/tcp.py send 10.47.0.2 >/tmp/send.out || fail "TCP send failed"
wait $recv_pid || fail "TCP receive failed"
end_ns=$(date +%s%N)
echo "fastdp: sent $(cat /tmp/send.out), received $(cat /tmp/recv.out) in $(((end_ns - start_ns) / 1000000)) ms"
[[ "$(cat /tmp/send.out)" == "$(cat /tmp/recv.out)" ]] || fail "TCP transfer checksum mismatch"

echo "fastdp: flows on $a:"
ip netns exec $a "$weft" fastdp flows --iface weft | tee /tmp/flows.a
ip netns exec $a "$weft" fastdp stats --iface weft | tee /tmp/stats.a
grep -q "actions:set(tunnel(vni=42,dst=198.18.0.2,ttl=64,df)),output:" /tmp/flows.a || fail "no unicast tunnel flow to the peer"
hit=$(sed -n 's/^hit:\([0-9]*\) .*/\1/p' /tmp/stats.a)
missed=$(sed -n 's/.* missed:\([0-9]*\) .*/\1/p' /tmp/stats.a)
echo "fastdp: kernel datapath hit=$hit missed=$missed"
# The local device does TSO, so packets are ~64 KiB super-packets: count bytes.
kernel_bytes=$(sed -n 's/^in_port(0),.* bytes:\([0-9]*\) actions:set.*/\1/p' /tmp/flows.a | awk '{ s += $1 } END { print s + 0 }')
echo "fastdp: bytes switched by weft's flows from the local port: $kernel_bytes"
((kernel_bytes >= 8388608)) || fail "only $kernel_bytes bytes went through the kernel flows (sent 8 MiB)"
((hit > 10 * missed)) || fail "kernel datapath: hit=$hit missed=$missed: most packets were misses"

# Stop weft (SIGTERM) and read its userspace counters.
for pid in "${pids[@]}"; do kill "$pid"; done
for pid in "${pids[@]}"; do wait "$pid" || fail "weft fastdp exited with an error"; done
pids=()
for ns in $a $b; do
    echo "fastdp: $ns userspace counters: $(cat /tmp/$ns.counters)"
    misses=$(sed -n 's/.*"misses":\([0-9]*\).*/\1/p' /tmp/$ns.counters)
    ((misses < 50)) || fail "$ns: $misses packets went through weft's userspace path"
done
ip -n $a link show weft >/dev/null 2>&1 && fail "datapath device weft left behind after SIGTERM"
checks_passed "ping + 8 MiB TCP through the kernel datapath, datapath deleted on exit"
