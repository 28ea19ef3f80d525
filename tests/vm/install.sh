#!/usr/bin/env bash
#
# tests/vm/install.sh: make sure the fastdp VM test can run. Idempotent.
#
#   - Debian packages qemu-system-x86, busybox-static, kmod and cpio
#     (apt, --no-install-recommends)
#   - a Debian 6.1 kernel, downloaded with `apt-get download` (not
#     installed) and unpacked with dpkg-deb -x into $WEFT_VM_CACHE (default
#     /var/cache/weft-vm), then `depmod -b` so modprobe works in the VM.
#
# Which kernel: $WEFT_VM_KERNEL when set, else the build the metapackage
# linux-image-amd64 points at in the current package lists. WEFT_VM_KERNEL
# may be
#   - an ABI name such as 6.1.0-56-amd64 (taken from the cache when it is
#     there, else downloaded as linux-image-6.1.0-56-amd64),
#   - the path of a linux-image-*.deb file.
# The choice and its reason go to stderr; the kernel tree's path is printed
# on stdout. Its Debian package version is in "$root/.version". Needs root.
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

# unpack DEB KVER: unpack a kernel package into the cache as $cache/KVER.
unpack() {
    local deb="$1" kver="$2" root="$cache/$2"
    rm -rf "$root"
    mkdir -p "$root"
    dpkg-deb -x "$deb" "$root"
    dpkg-deb -f "$deb" Version >"$root/.version"
    say "depmod for $kver"
    depmod -b "$root" "$kver"
    touch "$root/.unpacked"
}

# download_unpack PKG KVER: apt-get download PKG and unpack it as KVER.
download_unpack() {
    local pkg="$1" kver="$2" tmp
    say "downloading $pkg"
    tmp="$(mktemp -d "$cache/dl.XXXXXX")"
    chmod 755 "$tmp" # apt-get download runs as _apt where it can
    if ! (cd "$tmp" && apt-get download "$pkg" >&2); then
        rm -rf "$tmp"
        say "cannot download $pkg; cached kernels: $(cached_list)"
        exit 1
    fi
    unpack "$tmp"/*.deb "$kver"
    rm -rf "$tmp"
}

cached_list() {
    local found=()
    for d in "$cache"/*/.unpacked; do
        [[ -e "$d" ]] && found+=("$(basename "$(dirname "$d")")")
    done
    if ((${#found[@]})); then printf '%s ' "${found[@]}"; else printf 'none'; fi
}

choice="${WEFT_VM_KERNEL:-}"
if [[ -n "$choice" && "$choice" == *.deb ]]; then
    [[ -f "$choice" ]] || {
        say "WEFT_VM_KERNEL=$choice: no such file"
        exit 1
    }
    pkg="$(dpkg-deb -f "$choice" Package)"
    kver="${pkg#linux-image-}"
    why="WEFT_VM_KERNEL=$choice"
    [[ -f "$cache/$kver/.unpacked" ]] || unpack "$choice" "$kver"
elif [[ -n "$choice" ]]; then
    kver="${choice#linux-image-}"
    why="WEFT_VM_KERNEL=$choice"
    [[ -f "$cache/$kver/.unpacked" ]] || download_unpack "linux-image-$kver" "$kver"
else
    # The kernel package the metapackage linux-image-amd64 points at in the
    # package lists as they are now (e.g. linux-image-6.1.0-48-amd64).
    kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
    if [[ -z "$kpkg" ]]; then
        has_candidate linux-image-amd64 || apt-get update >&2
        kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
    fi
    if [[ -z "$kpkg" ]]; then
        say "cannot find the kernel package behind linux-image-amd64 (apt-cache depends); set WEFT_VM_KERNEL (cached: $(cached_list))"
        exit 1
    fi
    kver="${kpkg#linux-image-}"
    why="linux-image-amd64 -> $kpkg in this machine's package lists (WEFT_VM_KERNEL picks another)"
    [[ -f "$cache/$kver/.unpacked" ]] || download_unpack "$kpkg" "$kver"
fi
root="$cache/$kver"
if [[ ! -f "$root/.version" ]]; then
    # Unpacked by an older install.sh: the package version heads the changelog.
    zcat "$root"/usr/share/doc/linux-image-"$kver"/changelog.gz 2>/dev/null |
        sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' | tr '+' '-' >"$root/.version" || true
fi
say "kernel $kver (Debian $(cat "$root/.version" 2>/dev/null || echo '?')): $why"
ln -sfn "$kver" "$cache/current"
echo "$root"
