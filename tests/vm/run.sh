#!/usr/bin/env bash
#
# tests/vm/run.sh GUEST_SCRIPT [ARGS...]: boot Debian's kernel (with the
# openvswitch module) in qemu TCG and run GUEST_SCRIPT inside it as root.
#
# The VM sees the host's root file system read-only over 9p and chroots into
# it, with fresh tmpfs on /run and /tmp, so host-built binaries (weft,
# iproute2's `ip`, ping) run unchanged. GUEST_SCRIPT is a host path.
#
# The serial console is this script's stdout. The last line the guest prints
# is a marker the Rust test parses:
#     WEFT-VM-RESULT: PASS
#     WEFT-VM-RESULT: FAIL rc=N
# Exit status: 0 on PASS, 1 on FAIL or no marker (boot failure, timeout).
#
# Environment: WEFT_VM_CACHE (default /var/cache/weft-vm), WEFT_VM_TIMEOUT
# (seconds, default 150), WEFT_VM_MEM (MiB, default 512).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${WEFT_VM_CACHE:-/var/cache/weft-vm}"
limit="${WEFT_VM_TIMEOUT:-150}"
mem="${WEFT_VM_MEM:-512}"
say() { printf 'vm-run: %s\n' "$*" >&2; }

if (($# < 1)); then
    say "usage: $0 GUEST_SCRIPT [ARGS...]"
    exit 2
fi
guest_script="$(realpath "$1")"
shift
if [[ ! -f "$guest_script" ]]; then
    say "guest script $guest_script not found"
    exit 2
fi

kroot="$("$here/install.sh")"
kver="$(basename "$kroot")"
kernel="$kroot/boot/vmlinuz-$kver"

work="$(mktemp -d /tmp/weft-vm.XXXXXX)"
# The guest sees the host root read-only but gets fresh tmpfs on /tmp and
# /run: files the guest needs that live there (a checkout or a build under
# /tmp, as a CI clone may be) are staged under /var/tmp, which it does see.
stage="$(mktemp -d /var/tmp/weft-vm-stage.XXXXXX)"
trap 'rm -rf "$work" "$stage"' EXIT
stage_path() {
    local p="$1"
    if [[ -f "$p" && ("$p" == /tmp/* || "$p" == /run/*) ]]; then
        local copy
        copy="$stage/$(printf '%s' "$p" | tr '/' '_')"
        cp -p "$p" "$copy"
        printf '%s' "$copy"
    else
        printf '%s' "$p"
    fi
}
# The guest script sources lib.sh beside it: stage its whole directory.
if [[ "$guest_script" == /tmp/* || "$guest_script" == /run/* ]]; then
    mkdir -p "$stage/vm"
    cp -p "$(dirname "$guest_script")"/*.sh "$stage/vm/"
    guest_script="$stage/vm/$(basename "$guest_script")"
fi
staged=()
for a in "$@"; do
    if [[ -f "$a" ]]; then
        staged+=("$(stage_path "$(realpath "$a")")")
    else
        staged+=("$a")
    fi
done
set -- "${staged[@]}"
init_dir="$work/initramfs"
mkdir -p "$init_dir"/{bin,dev,proc,sys,host,modules}
cp /bin/busybox "$init_dir/bin/busybox"
for applet in sh mount insmod mkdir poweroff chroot cat echo sleep; do
    ln -s busybox "$init_dir/bin/$applet"
done

# Modules in dependency order, as modprobe would load them: the 9p transport
# for the host root, then openvswitch (crc32c, conntrack, nat, nsh), its
# VXLAN vport, veth, tun and bridge for the test hosts.
modlist="$work/modules.order"
: >"$modlist"
for mod in virtio_pci 9pnet_virtio 9p openvswitch vport-vxlan veth tun bridge; do
    modprobe -d "$kroot" -S "$kver" --show-depends "$mod" |
        awk '$1 == "insmod" { print $2 }' >>"$modlist"
done
n=0
while read -r ko; do
    name="$(basename "$ko")"
    if [[ ! -e "$init_dir/modules/$name" ]]; then
        n=$((n + 1))
        cp "$ko" "$init_dir/modules/$name"
        printf '%s\n' "$name" >>"$init_dir/modules/order"
    fi
done <"$modlist"

# Kernel command line carries the guest script path and its arguments.
args_file="$init_dir/guest-args"
printf '%s\n' "$guest_script" "$@" >"$args_file"

cat >"$init_dir/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do
    insmod /modules/$m 2>/dev/null || echo "vm-init: insmod $m failed (continuing)"
done </modules/order
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host; then
    echo "WEFT-VM-RESULT: FAIL rc=90 (9p mount of the host root failed)"
    poweroff -f
fi
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/tmp
mount -t tmpfs run /host/run
mkdir -p /host/run/netns
cp /guest-args /host/tmp/guest-args
echo "vm-init: kernel $(cat /proc/sys/kernel/osrelease), running guest script ($(cut -d' ' -f1 /proc/uptime) s after boot)"
chroot /host /bin/sh -c '
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    set --
    while IFS= read -r a; do set -- "$@" "$a"; done </tmp/guest-args
    script="$1"; shift
    /bin/bash "$script" "$@"
'
rc=$?
if [ "$rc" -eq 0 ]; then
    echo "WEFT-VM-RESULT: PASS"
else
    echo "WEFT-VM-RESULT: FAIL rc=$rc"
fi
poweroff -f
INIT
chmod +x "$init_dir/init"
(cd "$init_dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
say "kernel $kver (Debian $(cat "$kroot/.version" 2>/dev/null || echo '?')), $n modules, guest script $guest_script, timeout ${limit}s"

log="$work/console.log"
set +e
timeout --kill-after=5 "$limit" qemu-system-x86_64 \
    -accel tcg -cpu max -m "$mem" -smp 1 -nic none \
    -nographic -no-reboot -monitor none -serial stdio \
    -kernel "$kernel" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    </dev/null 2>&1 | tr -d '\r' | tee "$log"
qemu_rc=${PIPESTATUS[0]}
set -e
if ((qemu_rc == 124 || qemu_rc == 137)); then
    say "qemu timed out after ${limit}s"
fi
if grep -q '^WEFT-VM-RESULT: PASS' "$log"; then
    exit 0
fi
if ! grep -q '^WEFT-VM-RESULT:' "$log"; then
    echo "WEFT-VM-RESULT: FAIL rc=$qemu_rc (no result marker: VM did not finish)"
fi
exit 1
