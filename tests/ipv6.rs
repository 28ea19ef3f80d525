//! IPv6 underlays and overlays: the encrypted sleeve over an IPv6-only
//! underlay in TUN and bridge mode with 1 and 2 workers (ping and
//! checksummed transfers). Needs root.

mod common;

use common::*;
use std::time::Duration;

/// weft's overhead over an IPv6 underlay: IPv6 40, UDP 8, weft header 16,
/// record length 2, VXLAN 8, AEAD tag 16 (docs/wire-format.md).
const OVERHEAD_V6: u64 = 90;
/// The inner Ethernet header bridge mode adds.
const ETHERNET: u64 = 14;

/// Starts both hosts with `extra` and waits for them to connect.
fn up(net: &mut Net, extra: &[&str]) {
    net.start_both(extra);
    net.wait_established(Duration::from_secs(15));
}

/// Both hosts report `overlay_mtu` in their status, and their connection
/// goes to the peer's IPv6 underlay address.
fn assert_ipv6_connection(net: &Net, overlay_mtu: u64) {
    for (h, peer) in [(&net.a, &net.b), (&net.b, &net.a)] {
        let status = status_json(&h.ns).expect("status");
        assert_eq!(
            status["overlay_mtu"].as_u64(),
            Some(overlay_mtu),
            "{}: {status:#}",
            h.ns
        );
        let conn = first_connection(&status).expect("a connection");
        let remote = conn["address"].as_str().unwrap_or_default();
        let want = format!("[{}]:", peer.underlay6.expect("IPv6 underlay"));
        assert!(remote.starts_with(&want), "{}: {conn:#}", h.ns);
    }
}

/// The encrypted sleeve in TUN mode over an IPv6-only underlay.
fn tun_over_v6(workers: usize) {
    let mut net = Net::pair_v6(1500);
    // GRO on the underlay veth: the UDP_GRO sockets get coalesced runs of
    // IPv6 datagrams to cut up.
    for h in [&net.a, &net.b] {
        run(
            "ip",
            &["netns", "exec", &h.ns, "ethtool", "-K", "u0", "gro", "on"],
        );
    }
    let w = workers.to_string();
    up(&mut net, &["--mode", "udp", "--workers", &w]);
    assert_workers(&net.a, workers);
    assert_ipv6_connection(&net, 1500 - OVERHEAD_V6);
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(
        &net,
        &a_ip,
        &b_ip,
        &format!("tun over an IPv6 underlay, {workers} worker(s)"),
    );
}

#[test]
fn tun_ipv6_underlay_1_worker() {
    require_root!();
    tun_over_v6(1);
}

#[test]
fn tun_ipv6_underlay_2_workers() {
    require_root!();
    tun_over_v6(2);
}

/// Bridge mode over an IPv6-only underlay.
fn bridge_over_v6(workers: usize) {
    let mut net = Net::pair_v6(1500);
    let w = workers.to_string();
    up(
        &mut net,
        &["--iface", "bridge", "--mode", "udp", "--workers", &w],
    );
    assert_workers(&net.b, workers);
    assert_ipv6_connection(&net, 1500 - OVERHEAD_V6 - ETHERNET);
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(
        &net,
        &a_ip,
        &b_ip,
        &format!("bridge over an IPv6 underlay, {workers} worker(s)"),
    );
}

#[test]
fn bridge_ipv6_underlay_1_worker() {
    require_root!();
    bridge_over_v6(1);
}

#[test]
fn bridge_ipv6_underlay_2_workers() {
    require_root!();
    bridge_over_v6(2);
}
