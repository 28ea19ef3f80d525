#!/usr/bin/env bash
#
# tests/vm/install.sh: make sure the fastdp VM test can run. Idempotent.
#
#   - Debian packages qemu-system-x86 and busybox-static (apt, --no-install-recommends)
#   - Debian's linux-image-amd64 kernel (6.1), downloaded with `apt-get download`
#     (not installed) and unpacked with dpkg-deb -x into $WEFT_VM_CACHE
#     (default /var/cache/weft-vm), then `depmod -b` so modprobe works in the VM.
#
# Prints the cache directory's kernel path on success. Needs root.
set -euo pipefail

cache="${WEFT_VM_CACHE:-/var/cache/weft-vm}"
say() { printf 'vm-install: %s\n' "$*" >&2; }

if [[ "$(id -u)" -ne 0 ]]; then
    say "must run as root (it installs packages)"
    exit 1
fi

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}
has_candidate() {
    local candidate
    candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    [[ -n "$candidate" && "$candidate" != "(none)" ]]
}

missing=()
for pkg in qemu-system-x86 busybox-static kmod cpio; do
    is_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    for pkg in "${missing[@]}" linux-image-amd64; do
        if ! has_candidate "$pkg"; then
            say "package lists lack $pkg; running apt-get update"
            apt-get update >&2
            break
        fi
    done
    say "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

mkdir -p "$cache"
# The kernel image package the metapackage linux-image-amd64 currently points at
# (e.g. linux-image-6.1.0-41-amd64); fall back to any cached unpacked tree if apt
# cannot tell (offline CI runner with a warm cache).
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
if [[ -z "$kpkg" ]]; then
    has_candidate linux-image-amd64 || apt-get update >&2
    kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
fi
if [[ -z "$kpkg" ]]; then
    say "cannot find the kernel package behind linux-image-amd64 (apt-cache depends)"
    exit 1
fi
kver="${kpkg#linux-image-}"
root="$cache/$kver"
if [[ ! -f "$root/.unpacked" ]]; then
    say "downloading $kpkg"
    tmp="$(mktemp -d "$cache/dl.XXXXXX")"
    chmod 755 "$tmp" # apt-get download runs as _apt where it can
    (cd "$tmp" && apt-get download "$kpkg" >&2)
    rm -rf "$root"
    mkdir -p "$root"
    dpkg-deb -x "$tmp"/*.deb "$root"
    rm -rf "$tmp"
    say "depmod for $kver"
    depmod -b "$root" "$kver"
    touch "$root/.unpacked"
fi
ln -sfn "$kver" "$cache/current"
echo "$root"
