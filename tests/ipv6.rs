//! IPv6 underlays and overlays: the encrypted sleeve over an IPv6-only
//! underlay in TUN and bridge mode with 1 and 2 workers (ping and
//! checksummed transfers), plaintext VXLAN over IPv6 with a Linux vxlan
//! device, dual-stack overlays, and a mesh of an IPv4-only and an
//! IPv6-only host joined by a dual-stack relay. (Path-MTU captures on
//! IPv6 underlays are in tests/pmtu.rs.) Needs root.

mod common;

use common::switched::Switched;
use common::*;
use std::net::Ipv6Addr;
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

/// Plaintext VXLAN over an IPv6-only underlay: weft on A with B as its
/// static VTEP, B a standard Linux `vxlan` device (local and remote IPv6).
/// Ping and checksummed TCP both ways; every datagram between them is
/// IPv6/UDP to port 4789 within the underlay MTU; the overlay MTU is
/// 1500 - 70 (IPv6 40, UDP 8, VXLAN 8, inner Ethernet 14), the same the
/// kernel picks for its own device.
#[test]
fn plaintext_vxlan_over_ipv6_interoperates_with_linux_vxlan() {
    require_root!();
    let mut net = Net::pair_v6(1500);
    let (a6, b6) = (
        net.a.underlay6.expect("IPv6 underlay"),
        net.b.underlay6.expect("IPv6 underlay"),
    );
    let b = net.b.ns.clone();
    run(
        "ip",
        &[
            "-n",
            &b,
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            &b6.to_string(),
            "remote",
            &a6.to_string(),
            "dstport",
            "4789",
            "dev",
            "u0",
        ],
    );
    run(
        "ip",
        &["-n", &b, "addr", "add", &net.b.overlay, "dev", "vx0"],
    );
    run("ip", &["-n", &b, "link", "set", "vx0", "up"]);
    // The kernel device leaves inner checksums to the NIC, and a veth
    // never fills them in: only another kernel on the same veth would
    // accept such frames. Checksums in software, as a real NIC delivers.
    let out = ns_exec(&b, &["ethtool", "-K", "vx0", "tx", "off"]);
    assert!(
        out.status.success(),
        "ethtool -K vx0 tx off: {}",
        show(&out)
    );
    // Segmentation offloads off, so the capture sees wire-sized datagrams.
    for h in [&net.a, &net.b] {
        disable_offloads(&h.ns, "u0");
    }
    let capture = UnderlayCapture::start(&net.a.ns, "u0");
    net.a.peers.clear();
    let vtep = format!("[{b6}]");
    net.a.start(&[
        "--mode",
        "plain",
        "--insecure-plaintext",
        "--vni",
        "42",
        "--vtep",
        &vtep,
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || status_json(&net.a.ns).is_some()),
        "weft did not come up:\n{}",
        net.a.logs()
    );
    let status = status_json(&net.a.ns).expect("status");
    assert_eq!(status["overlay_mtu"].as_u64(), Some(1430), "{status:#}");
    let kernel_mtu = String::from_utf8_lossy(&run("ip", &["-n", &b, "link", "show", "vx0"]).stdout)
        .contains("mtu 1430");
    assert!(
        kernel_mtu,
        "the Linux vxlan device over IPv6 has MTU 1430 too"
    );
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    assert!(
        wait_until(Duration::from_secs(10), || ping(&net.a.ns, &b_ip)),
        "weft cannot reach the Linux vxlan endpoint over IPv6:\n{}",
        net.a.logs()
    );
    assert!(
        ping(&b, &a_ip),
        "the Linux vxlan endpoint cannot reach weft"
    );
    let total = 8 << 20;
    let (sent, got, n) = tcp_transfer(&net.a.ns, &b, &b_ip, 7101, total, 21);
    assert_eq!((n, sent), (total, got), "weft -> Linux vxlan TCP");
    let (sent, got, n) = tcp_transfer(&b, &net.a.ns, &a_ip, 7102, total, 22);
    assert_eq!((n, sent), (total, got), "Linux vxlan -> weft TCP");
    let packets = capture.finish();
    let vxlan: Vec<&WirePacket> = packets
        .iter()
        .filter(|p| p.ports.is_some_and(|(_, d)| d == 4789))
        .collect();
    let from_weft = vxlan.iter().filter(|p| p.outgoing).count();
    let from_linux = vxlan.iter().filter(|p| !p.outgoing).count();
    assert!(
        from_weft > 1000 && from_linux > 1000,
        "VXLAN datagrams: {from_weft} sent by weft, {from_linux} by Linux"
    );
    for p in &vxlan {
        assert_eq!(p.ip_version, 6, "{p:?}");
        assert!(
            p.len <= 1500,
            "a {}-byte datagram on the wire: {p:?}",
            p.len
        );
        let ends = if p.outgoing { (a6, b6) } else { (b6, a6) };
        assert_eq!((p.src, p.dst), (ends.0.into(), ends.1.into()), "{p:?}");
    }
    let status = status_json(&net.a.ns).expect("status");
    let vtep = &status["l2"]["vteps"][0];
    assert_eq!(vtep["address"], format!("[{b6}]:4789"), "{status:#}");
}

/// A dual-stack overlay over an IPv6-only underlay: A gets both addresses
/// from repeated --overlay flags, B from a config list; both addresses
/// are on each device, both are claimed in the mesh, and checksummed
/// transfers cross over IPv4 and over IPv6 inside.
fn dual_stack(extra: &[&str], what: &str) {
    let mut net = Net::pair_v6(1500);
    let config = net.b.path("dual.toml");
    std::fs::write(
        &config,
        format!("overlay = [\"{}\", \"fd40::2/64\"]\n", net.b.overlay),
    )
    .expect("write the config");
    let mut a_extra = vec!["--overlay", "fd40::1/64"];
    a_extra.extend_from_slice(extra);
    net.a.start(&a_extra);
    // B: everything but --overlay from the usual arguments.
    let mut b_args = net.b.launch_args();
    let at = b_args
        .iter()
        .position(|a| a == "--overlay")
        .expect("--overlay");
    b_args.drain(at..at + 2);
    b_args.extend(["--config".to_string(), config.display().to_string()]);
    b_args.extend(extra.iter().map(|s| s.to_string()));
    net.b.start_with(&b_args, &[]);
    net.wait_established(Duration::from_secs(15));
    for (h, v6) in [(&net.a, "fd40::1/64"), (&net.b, "fd40::2/64")] {
        let status = status_json(&h.ns).expect("status");
        let overlay = status["overlay"].as_str().unwrap_or_default();
        assert_eq!(overlay, format!("{}, {v6}", h.overlay), "{status:#}");
    }
    // Each host claims both of its addresses, and knows both of the other's.
    for h in [&net.a, &net.b] {
        let text =
            String::from_utf8_lossy(&ns_exec(&h.ns, &[common::WEFT, "status", "peers"]).stdout)
                .to_string();
        for claim in ["10.40.0.1/32", "10.40.0.2/32", "fd40::1/128", "fd40::2/128"] {
            assert!(text.contains(claim), "{}: no claim {claim}:\n{text}", h.ns);
        }
    }
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(&net, &a_ip, &b_ip, &format!("{what}, IPv4 inside"));
    transfers(&net, "fd40::1", "fd40::2", &format!("{what}, IPv6 inside"));
}

#[test]
fn dual_stack_overlay_tun() {
    require_root!();
    dual_stack(&["--mode", "udp", "--workers", "2"], "dual-stack TUN");
}

#[test]
fn dual_stack_overlay_bridge() {
    require_root!();
    dual_stack(
        &["--iface", "bridge", "--mode", "udp", "--workers", "1"],
        "dual-stack bridge",
    );
}

/// A mixed mesh on one switch: h0 has only IPv4, h2 only IPv6, h1 both
/// (listening on [::], so one socket takes either family). h1 alone is told
/// of the others, by host names (its /etc/hosts: one name with an IPv4
/// address, one with an IPv6 address: a dual-stack host resolves a name to
/// either family); h0 and h2 are told of nobody, learn of each other by
/// gossip, cannot connect directly (no common family), and reach each
/// other through h1, end to end sealed: checksummed TCP both ways.
#[test]
fn ipv4_only_and_ipv6_only_hosts_meet_through_a_dual_stack_relay() {
    require_root!();
    let mut net = Switched::new(3);
    let subnet = net.hosts[0].underlay.octets()[2];
    let v6 = |i: u16| Ipv6Addr::new(0x2001, 2, 0, 0x100 + u16::from(subnet), 0, 0, 0, i);
    // h2: IPv6 only.
    run(
        "ip",
        &["-n", &net.hosts[2].ns, "addr", "flush", "dev", "u0"],
    );
    net.hosts[2].underlay6 = Some(v6(3));
    add_underlay_addr(&net.hosts[2]);
    // h1: both.
    let relay_v6 = v6(2);
    run(
        "ip",
        &[
            "-n",
            &net.hosts[1].ns,
            "addr",
            "add",
            &format!("{relay_v6}/64"),
            "dev",
            "u0",
            "nodad",
        ],
    );
    net.hosts[0].peers = Vec::new();
    net.hosts[2].peers = Vec::new();
    // The relay listens on [::] and is told of both by name (the names'
    // addresses tell it which interface is the underlay).
    let hosts = NetnsHosts::new(&net.hosts[1].ns);
    hosts.set(&format!(
        "127.0.0.1 localhost\n{} h0.weft-test\n{} h2.weft-test\n",
        net.hosts[0].underlay,
        v6(3)
    ));
    net.hosts[1].peers = vec![
        format!("h0.weft-test:{PORT}"),
        format!("h2.weft-test:{PORT}"),
    ];
    net.start(0);
    net.start(2);
    let config = net.hosts[1].path("weft.toml").display().to_string();
    let mut args = net.hosts[1].launch_args();
    let at = args.iter().position(|a| a == "--listen").expect("--listen");
    args[at + 1] = format!("[::]:{PORT}");
    args.extend(["--config".to_string(), config]);
    net.hosts[1].start_with(&args, &[]);
    net.wait_converged(&[0, 1, 2], Duration::from_secs(30));
    net.wait_relayed(0, 2, 1);
    let (h0, h2) = (&net.hosts[0], &net.hosts[2]);
    let total = 4 << 20;
    let (sent, got, n) = tcp_transfer(&h0.ns, &h2.ns, &h2.overlay_ip(), 7201, total, 31);
    assert_eq!((n, sent), (total, got), "IPv4-only -> IPv6-only TCP");
    let (sent, got, n) = tcp_transfer(&h2.ns, &h0.ns, &h0.overlay_ip(), 7202, total, 32);
    assert_eq!((n, sent), (total, got), "IPv6-only -> IPv4-only TCP");
    assert!(
        wait_until(Duration::from_secs(3), || status_json(&net.hosts[1].ns)
            .is_some_and(
                |s| s["relayed"]["datagrams"].as_u64().unwrap_or(0) > 1000
            )),
        "h1 relayed nothing: {:?}",
        status_json(&net.hosts[1].ns)
    );
    // The relay names its peers by their own families: h0 by IPv4, h2 by IPv6.
    let status = status_json(&net.hosts[1].ns).expect("status");
    let addresses: Vec<&str> = status["connections"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["address"].as_str()).collect())
        .unwrap_or_default();
    let h0_v4 = net.hosts[0].underlay.to_string();
    assert!(
        addresses
            .iter()
            .any(|a| a.starts_with(&format!("{h0_v4}:"))),
        "{addresses:?}"
    );
    assert!(
        addresses
            .iter()
            .any(|a| a.starts_with(&format!("[{}]:", v6(3)))),
        "{addresses:?}"
    );
}

/// weft in xdp mode over an IPv6-only underlay: AF_XDP frames with IPv6
/// headers, the next hop's MAC from neighbour discovery; the program is
/// attached on both hosts and the transfers cross.
#[test]
fn xdp_mode_over_ipv6_underlay() {
    require_root!();
    let mut net = Net::pair_v6(1500);
    up(&mut net, &["--mode", "xdp", "--workers", "1"]);
    for h in [&net.a, &net.b] {
        let status = status_json(&h.ns).expect("status");
        assert_eq!(
            status["datapath"],
            "xdp",
            "{}: {status:#}\n{}",
            h.ns,
            h.logs()
        );
        let link = String::from_utf8_lossy(&run("ip", &["-n", &h.ns, "link", "show", "u0"]).stdout)
            .to_string();
        assert!(
            link.contains("prog/xdp"),
            "{}: no XDP program on u0: {link}",
            h.ns
        );
    }
    assert_ipv6_connection(&net, 1500 - OVERHEAD_V6);
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(&net, &a_ip, &b_ip, "xdp over an IPv6 underlay");
}
