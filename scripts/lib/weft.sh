# shellcheck shell=bash
#
# scripts/lib/weft.sh: run weft on two namespace hosts made by netns_pair.
# Source scripts/lib/netns.sh first.
#
#     weft_make_creds "$dir"                       # key-a, key-b, secret (0600)
#     weft_start_pair enc "$NS_A" "$NS_B" "$dir"   # launch both, wait until up
#     ... traffic to $WEFT_OVERLAY_B ...
#     netns_cleanup                                # SIGTERM to both weft PIDs
#
# The binary is $WEFT_BIN if set, else target/release/weft in the repo root
# (or under $CARGO_TARGET_DIR when that is set).

# Repository root (this file lives in scripts/lib/).
WEFT_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# The weft binary under test: $WEFT_BIN if set, else where `cargo build
# --release` puts it ($CARGO_TARGET_DIR if set, else target/ in the repo).
WEFT_BIN="${WEFT_BIN:-${CARGO_TARGET_DIR:-$WEFT_REPO_ROOT/target}/release/weft}"

# Underlay and overlay addresses of the two hosts (the demo's and perf's layout).
WEFT_UNDERLAY_A="198.18.0.1"
WEFT_UNDERLAY_B="198.18.0.2"
WEFT_OVERLAY_A="10.40.0.1"
WEFT_OVERLAY_B="10.40.0.2"
WEFT_OVERLAY_PREFIX="16"

# weft's ports: sleeve (TCP control + UDP data), and standard VXLAN for
# plaintext mode. The status server listens on loopback of each namespace,
# so both hosts can use the same address.
WEFT_PORT=6783
WEFT_PLAIN_PORT=4789
WEFT_STATUS_ADDR="127.0.0.1:6782"

# VNI used in plaintext mode (same as the kernel VXLAN reference in perf/).
WEFT_VNI=42

# PIDs of the two weft processes started by weft_start_pair.
WEFT_PID_A=""
WEFT_PID_B=""

# weft_check_bin: fail with a useful message if the binary is missing.
weft_check_bin() {
    if [[ ! -x "$WEFT_BIN" ]]; then
        netns_log "weft binary not found at $WEFT_BIN (run 'cargo build --release' or set WEFT_BIN)"
        return 1
    fi
}

# weft_plain_supported: true if this build has plaintext mode (issue 4).
weft_plain_supported() {
    "$WEFT_BIN" launch --help 2>&1 | grep -q -- 'insecure-plaintext'
}

# weft_make_creds DIR: a fresh key per host (DIR/key-a, DIR/key-b) and a
# fresh random network secret (DIR/secret), all mode 0600.
weft_make_creds() {
    local dir="$1"
    (
        umask 077
        "$WEFT_BIN" keygen >"$dir/key-a"
        "$WEFT_BIN" keygen >"$dir/key-b"
        # 32 random bytes, base64: the secret is read from the file, never argv.
        head -c 32 /dev/urandom | base64 >"$dir/secret"
    )
    chmod 0600 "$dir/key-a" "$dir/key-b" "$dir/secret"
}

# weft_status NS [ARGS...]: `weft status` inside NS (its own loopback).
weft_status() {
    local ns="$1"
    shift
    ns_run "$ns" "$WEFT_BIN" status --status-addr "$WEFT_STATUS_ADDR" "$@"
}

# weft_established NS: true once NS's weft reports an established connection.
weft_established() {
    weft_status "$1" 2>/dev/null | grep -qi 'established'
}

# weft_overlay_ping NS ADDR: one ping through the overlay, 1 s deadline.
weft_overlay_ping() {
    ns_run "$1" ping -c 1 -W 1 "$2"
}

# weft_show_logs DIR: print the tail of both weft logs (after a failure).
weft_show_logs() {
    local dir="$1" host
    for host in a b; do
        if [[ -f "$dir/weft-$host.log" ]]; then
            printf -- '--- weft log, host %s (last 20 lines) ---\n' "$host" >&2
            tail -n 20 "$dir/weft-$host.log" >&2 || true
        fi
    done
}

# weft_start_pair MODE NS_A NS_B DIR
#   MODE is "enc" (the Noise sleeve, TUN), "bridge" (the Noise sleeve, bridge
#   mode: weft0 is a TAP on a Linux bridge that carries the address) or
#   "plain" (standard VXLAN, no crypto, bridge mode). WEFT_WORKERS=N sets
#   --workers (default: weft's own, one per core).
#   Launches weft in both namespaces with the creds from weft_make_creds,
#   logs in DIR/weft-{a,b}.log, waits (bounded) until both report an
#   established connection (enc) and a ping crosses the overlay both ways.
#   Sets WEFT_PID_A / WEFT_PID_B. Returns 1 (after printing the logs) if
#   weft exits or the overlay does not come up in time.
weft_start_pair() {
    local mode="$1" ns_a="$2" ns_b="$3" dir="$4" port
    # Per mode: extra flags, and how each host names the other. The sleeve
    # authenticates with the shared secret and per-host keys; plaintext mode
    # speaks bare RFC 7348 VXLAN (no control protocol, no keys), so the other
    # host is a static VTEP rather than a --peer.
    local -a mode_args=() args_a=() args_b=()
    case "$mode" in
    enc | bridge)
        port="$WEFT_PORT"
        # WEFT_DATAPATH=udp|xdp|auto picks the datapath (default: weft's own choice).
        if [[ -n "${WEFT_DATAPATH:-}" ]]; then
            mode_args=(--mode "$WEFT_DATAPATH")
        fi
        args_a=(--peer "$WEFT_UNDERLAY_B:$port" --secret-file "$dir/secret" --key-file "$dir/key-a")
        args_b=(--peer "$WEFT_UNDERLAY_A:$port" --secret-file "$dir/secret" --key-file "$dir/key-b")
        if [[ "$mode" == bridge ]]; then
            mode_args+=(--iface bridge --bridge weftbr)
        fi
        ;;
    plain)
        port="$WEFT_PLAIN_PORT"
        mode_args=(--mode plain --insecure-plaintext --vni "$WEFT_VNI" --vxlan-port "$port")
        args_a=(--vtep "$WEFT_UNDERLAY_B:$port")
        args_b=(--vtep "$WEFT_UNDERLAY_A:$port")
        ;;
    *)
        netns_log "weft_start_pair: unknown mode '$mode' (enc, bridge or plain)"
        return 2
        ;;
    esac
    if [[ -n "${WEFT_WORKERS:-}" ]]; then
        mode_args+=(--workers "$WEFT_WORKERS")
    fi

    ns_spawn "$ns_a" "$dir/weft-a.log" "$WEFT_BIN" launch "${mode_args[@]}" \
        --overlay "$WEFT_OVERLAY_A/$WEFT_OVERLAY_PREFIX" \
        --listen "$WEFT_UNDERLAY_A:$port" "${args_a[@]}" \
        --iface-name weft0 --status-addr "$WEFT_STATUS_ADDR"
    WEFT_PID_A="$NS_LAST_PID"
    ns_spawn "$ns_b" "$dir/weft-b.log" "$WEFT_BIN" launch "${mode_args[@]}" \
        --overlay "$WEFT_OVERLAY_B/$WEFT_OVERLAY_PREFIX" \
        --listen "$WEFT_UNDERLAY_B:$port" "${args_b[@]}" \
        --iface-name weft0 --status-addr "$WEFT_STATUS_ADDR"
    WEFT_PID_B="$NS_LAST_PID"

    # Give a broken launch (bad flag, no /dev/net/tun) a moment to exit, so
    # its own error message is what the user sees.
    sleep 0.5
    if ! pid_alive "$WEFT_PID_A" || ! pid_alive "$WEFT_PID_B"; then
        netns_log "weft ($mode) exited right after launch"
        weft_show_logs "$dir"
        return 1
    fi

    if [[ "$mode" != plain ]]; then
        if ! wait_for 20 "weft on host a to report established" weft_established "$ns_a" ||
            ! wait_for 20 "weft on host b to report established" weft_established "$ns_b"; then
            weft_show_logs "$dir"
            return 1
        fi
    fi
    if ! wait_for 20 "a ping from a to b through the weft overlay" \
        weft_overlay_ping "$ns_a" "$WEFT_OVERLAY_B" ||
        ! wait_for 20 "a ping from b to a through the weft overlay" \
            weft_overlay_ping "$ns_b" "$WEFT_OVERLAY_A"; then
        weft_show_logs "$dir"
        return 1
    fi
}
