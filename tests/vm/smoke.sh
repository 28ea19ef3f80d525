#!/bin/bash
# tests/vm/smoke.sh: guest-side smoke test (runs inside the VM via run.sh):
# openvswitch is loaded, its generic netlink families exist, and network
# namespaces with veth pairs work.
set -euo pipefail
grep -q '^openvswitch ' /proc/modules || { echo "smoke: openvswitch module not loaded"; exit 1; }
ip netns add smoke-a
ip netns add smoke-b
ip link add sa type veth peer name sb
ip link set sa netns smoke-a
ip link set sb netns smoke-b
ip -n smoke-a addr add 198.18.0.1/24 dev sa
ip -n smoke-b addr add 198.18.0.2/24 dev sb
ip -n smoke-a link set sa up
ip -n smoke-b link set sb up
ip netns exec smoke-a ping -c 1 -W 2 198.18.0.2
ip netns del smoke-a
ip netns del smoke-b
echo "smoke: openvswitch loaded, netns + veth ping ok"
