//! Safe path MTU in network namespaces (issue 3): weft never puts a datagram
//! larger than the underlay MTU on the wire, finds the path MTU with DF
//! probes, sizes the overlay to it, and tells local senders the limit with
//! ICMP instead of dropping their packets silently.

mod common;

use common::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// weft's per-datagram overhead on an IPv4 underlay (see docs/wire-format.md).
const OVERHEAD_V4: u32 = 70;
/// The same on an IPv6 underlay: the outer header is 40 bytes, not 20.
const OVERHEAD_V6: u32 = 90;
/// IPv4 + ICMP echo headers: `ping -s N` sends an IP datagram of N + 28 bytes.
const PING_HEADERS: u32 = 28;

/// Waits until `h`'s first connection reports `path_mtu == want`; panics with
/// the last status if it does not within `timeout`.
fn wait_path_mtu(h: &Host, want: u32, timeout: Duration) -> serde_json::Value {
    let ok = wait_until(timeout, || {
        status_json(&h.ns)
            .and_then(|s| {
                first_connection(&s).map(|c| c["path_mtu"].as_u64() == Some(u64::from(want)))
            })
            .unwrap_or(false)
    });
    let status = status_json(&h.ns).expect("weft status --json");
    assert!(
        ok,
        "{}: path_mtu did not become {want} within {timeout:?}: {status:#}",
        h.ns
    );
    status
}

/// The `mtu N` of `weft0` in namespace `ns`, from `ip link show`.
fn device_mtu(ns: &str) -> u32 {
    let out = run("ip", &["-n", ns, "-o", "link", "show", "weft0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            return words
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("no MTU in {text}"));
        }
    }
    panic!("no MTU in {text}");
}

/// One `ping -M do` (don't fragment) with `payload` bytes from `ns` to `target`.
/// Returns (success, stdout + stderr).
fn df_ping(ns: &str, target: &str, payload: u32, count: u32) -> (bool, String) {
    let out = ns_exec(
        ns,
        &[
            "ping",
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            &payload.to_string(),
            target,
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A DF ping one byte over the overlay MTU must fail loudly: a non-zero exit
/// and an error naming the MTU ("message too long, mtu=N" from the local
/// kernel, or "Frag needed and DF set (mtu = N)" from an ICMP error), never
/// a plain timeout with nothing said.
fn assert_df_ping_refused(ns: &str, target: &str, overlay_mtu: u32) {
    let started = Instant::now();
    let (ok, text) = df_ping(ns, target, overlay_mtu - PING_HEADERS + 1, 1);
    assert!(
        !ok,
        "a DF ping of {} bytes (overlay MTU {overlay_mtu}) must not pass: {text}",
        overlay_mtu + 1
    );
    let lower = text.to_lowercase();
    let loud = lower.contains("message too long") || lower.contains("frag needed");
    assert!(
        loud,
        "the oversize DF ping failed without an error (silence is what this test forbids): {text}"
    );
    assert!(
        text.contains(&format!("mtu={overlay_mtu}"))
            || text.contains(&format!("mtu = {overlay_mtu}")),
        "the error should name the overlay MTU {overlay_mtu}: {text}"
    );
    eprintln!(
        "DF ping of {} bytes refused in {:?}: {}",
        overlay_mtu + 1,
        started.elapsed(),
        text.lines()
            .find(|l| l.to_lowercase().contains("mtu"))
            .unwrap_or("")
    );
}

/// Summary of a capture for the test log.
fn describe(packets: &[WirePacket], label: &str) -> String {
    let max = |f: &dyn Fn(&WirePacket) -> bool| {
        packets
            .iter()
            .filter(|p| f(p))
            .map(|p| p.len)
            .max()
            .unwrap_or(0)
    };
    let count = |f: &dyn Fn(&WirePacket) -> bool| packets.iter().filter(|p| f(p)).count();
    format!(
        "{label}: {} packets, largest {} | weft data {} (max {}), heartbeats {} (max {}), probes {} (max {}), control TCP {} (max {}), other {}",
        packets.len(),
        max(&|_| true),
        count(&|p| p.weft_kind == Some(1)),
        max(&|p| p.weft_kind == Some(1)),
        count(&|p| p.weft_kind == Some(2)),
        max(&|p| p.weft_kind == Some(2)),
        count(&|p| p.weft_kind == Some(3)),
        max(&|p| p.weft_kind == Some(3)),
        count(&|p| p.is_weft_control()),
        max(&|p| p.is_weft_control()),
        count(&|p| p.weft_kind.is_none() && !p.is_weft_control()),
    )
}

/// Nothing on the wire is larger than `mtu`, nothing is a fragment, and the
/// length the packet socket saw matches the IP header (no super-packets).
fn assert_wire_fits(packets: &[WirePacket], mtu: u32, label: &str) {
    for p in packets {
        assert!(
            p.len <= mtu as usize,
            "{label}: a {}-byte datagram on a {mtu}-byte link: {p:?}",
            p.len
        );
        assert_eq!(
            p.len, p.header_len_field,
            "{label}: captured length differs from the IP header (offloads on?): {p:?}"
        );
        assert!(
            !p.fragment,
            "{label}: an IP fragment on the underlay: {p:?}"
        );
    }
}

/// Start-up and the whole path-MTU search with the underlay at `mtu`, both
/// sides captured from before weft starts; then DF pings at the overlay MTU.
fn underlay_case(mtu: u32) {
    underlay_family_case(mtu, false);
}

/// [`underlay_case`] over an IPv4 (`ipv6` false) or IPv6-only underlay.
fn underlay_family_case(mtu: u32, ipv6: bool) {
    let started = Instant::now();
    let mut net = if ipv6 {
        Net::pair_v6(mtu)
    } else {
        Net::pair(mtu)
    };
    for h in [&net.a, &net.b] {
        disable_offloads(&h.ns, "u0");
    }
    // A packet socket in each namespace sees both directions of its veth end;
    // together they see everything weft sends, from before its first SYN.
    let cap_a = UnderlayCapture::start(&net.a.ns, "u0");
    let cap_b = UnderlayCapture::start(&net.b.ns, "u0");
    // The UDP socket path: its datagrams are visible to the capture and it
    // learns path shrinks from EMSGSIZE (see README, xdp mode limits).
    net.start_both(&["--mode", "udp"]);
    net.wait_established(Duration::from_secs(10));
    for h in [&net.a, &net.b] {
        wait_path_mtu(h, mtu, Duration::from_secs(5));
    }
    // The overlay: exactly the MTU passes with DF, one byte more is refused
    // loudly. Still capturing: the full-size ping must fill the underlay
    // datagram to exactly the MTU, not one byte more.
    let overlay = mtu - if ipv6 { OVERHEAD_V6 } else { OVERHEAD_V4 };
    assert_eq!(device_mtu(&net.a.ns), overlay);
    let line = format!("overlay MTU {overlay} = underlay {mtu} - {}", mtu - overlay);
    assert!(
        net.a.logs().contains(&line),
        "no line {line:?}:\n{}",
        net.a.logs()
    );
    let status = status_json(&net.a.ns).expect("status");
    assert_eq!(
        status["overlay_mtu"].as_u64(),
        Some(u64::from(overlay)),
        "{status:#}"
    );
    let b_ip = net.b.overlay_ip();
    assert!(
        wait_until(Duration::from_secs(5), || ping(&net.a.ns, &b_ip)),
        "no plain ping through the overlay"
    );
    let (ok, text) = df_ping(&net.a.ns, &b_ip, overlay - PING_HEADERS, 2);
    assert!(
        ok,
        "a DF ping of exactly the overlay MTU ({overlay}) must pass: {text}"
    );
    assert_df_ping_refused(&net.a.ns, &b_ip, overlay);

    let seen_a = cap_a.finish();
    let seen_b = cap_b.finish();
    eprintln!(
        "{}",
        describe(&seen_a, &format!("mtu {mtu}, captured in A"))
    );
    eprintln!(
        "{}",
        describe(&seen_b, &format!("mtu {mtu}, captured in B"))
    );

    assert_wire_fits(&seen_a, mtu, "A's u0");
    assert_wire_fits(&seen_b, mtu, "B's u0");
    for (h, peer, seen) in [(&net.a, &net.b, &seen_b), (&net.b, &net.a, &seen_a)] {
        // Counted where they arrive: what crossed the link.
        let from_h = |p: &&WirePacket| {
            !p.outgoing && p.src == h.underlay_ip() && p.dst == peer.underlay_ip()
        };
        let probes: Vec<usize> = seen
            .iter()
            .filter(from_h)
            .filter(|p| p.weft_kind == Some(3))
            .map(|p| p.len)
            .collect();
        if ipv6 && mtu == 1280 {
            // Every IPv6 path carries 1280 (RFC 8200): at the floor there
            // is nothing to search, so no probe at all.
            assert!(
                probes.is_empty(),
                "{}: probes at the IPv6 floor: {probes:?}",
                h.ns
            );
        } else {
            assert!(
                probes.contains(&(mtu as usize)),
                "{}: no path-MTU probe of exactly {mtu} bytes reached the peer (probe sizes: {probes:?}): did the search run?",
                h.ns
            );
        }
        assert!(
            seen.iter().filter(from_h).any(|p| p.weft_kind == Some(2)),
            "{}: no heartbeat seen: the capture missed the start-up",
            h.ns
        );
        // The echo request (A -> B) and its reply (B -> A) of the full-size ping.
        let data_max = seen
            .iter()
            .filter(from_h)
            .filter(|p| p.weft_kind == Some(1))
            .map(|p| p.len)
            .max();
        assert_eq!(
            data_max,
            Some(mtu as usize),
            "{}: a full-size overlay packet should make a datagram of exactly {mtu} bytes",
            h.ns
        );
    }
    // The control connection was captured from its SYN on: the capture
    // began before weft did.
    let syn_seen = seen_b
        .iter()
        .chain(&seen_a)
        .any(|p| p.is_weft_control() && p.is_syn() && !p.outgoing);
    assert!(
        syn_seen,
        "the SYN of weft's control connection should be in the capture"
    );
    let control = seen_b
        .iter()
        .filter(|p| p.is_weft_control() && !p.outgoing)
        .count();
    assert!(
        control >= 3,
        "weft's TCP control segments should be in the capture, saw {control}"
    );
    // Every weft UDP datagram has DF set (IP_PMTUDISC_DO), so none can be
    // fragmented on the way (IPv6 routers never fragment: nothing to set).
    for p in seen_a
        .iter()
        .chain(&seen_b)
        .filter(|p| p.weft_kind.is_some() && !ipv6)
    {
        assert!(p.dont_fragment, "weft datagram without DF: {p:?}");
    }
    eprintln!(
        "underlay MTU {mtu}: passed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// Underlay MTU 1500: nothing above 1500 on the wire, probes of 1500, overlay 1430.
#[test]
fn underlay_1500_nothing_larger_on_the_wire() {
    require_root!();
    underlay_case(1500);
}

/// Underlay MTU 1450 (below the 1474 bytes Weave's heartbeat needed): overlay 1380.
#[test]
fn underlay_1450_nothing_larger_on_the_wire() {
    require_root!();
    underlay_case(1450);
}

/// Jumbo underlay 9000: probes of 9000, overlay 8930.
#[test]
fn underlay_9000_nothing_larger_on_the_wire() {
    require_root!();
    underlay_case(9000);
}

/// IPv6 underlay at its minimum MTU 1280, the floor every IPv6 path
/// carries: no probe is needed, the overlay is 1190.
#[test]
fn ipv6_underlay_1280_nothing_larger_on_the_wire() {
    require_root!();
    underlay_family_case(1280, true);
}

/// IPv6 underlay at 1500: overlay 1410.
#[test]
fn ipv6_underlay_1500_nothing_larger_on_the_wire() {
    require_root!();
    underlay_family_case(1500, true);
}

/// Jumbo IPv6 underlay 9000: overlay 8910.
#[test]
fn ipv6_underlay_9000_nothing_larger_on_the_wire() {
    require_root!();
    underlay_family_case(9000, true);
}

/// A router between the hosts whose second hop has MTU 1400: A's interface
/// says 1500, but the path carries 1400. The router's ICMP frag-needed
/// teaches A's kernel the size, the search settles on 1400, and the overlay
/// shrinks to 1330; nothing is fragmented, and TCP through the overlay works.
#[test]
fn smaller_path_behind_a_router_shrinks_the_overlay() {
    require_root!();
    let started = Instant::now();
    let mut net = Routed::new(1500, 1400);
    for (ns, dev) in [
        (&net.a.ns, "u0"),
        (&net.b.ns, "u0"),
        (&net.router.name, "r0"),
        (&net.router.name, "r1"),
    ] {
        disable_offloads(ns, dev);
    }
    let cap_a = UnderlayCapture::start(&net.a.ns, "u0");
    let cap_b = UnderlayCapture::start(&net.b.ns, "u0");
    // The UDP socket path: its datagrams are visible to the capture and it
    // learns path shrinks from EMSGSIZE (see README, xdp mode limits).
    net.start_both(&["--mode", "udp"]);
    for h in [&net.a, &net.b] {
        let ok = wait_until(Duration::from_secs(10), || {
            status_json(&h.ns)
                .and_then(|s| first_connection(&s).map(|c| c["state"] == "established"))
                .unwrap_or(false)
        });
        assert!(ok, "{}: not established: {:?}", h.ns, status_json(&h.ns));
    }
    // A starts at its interface MTU 1500: lost at the router, retried after
    // 700 ms (now EMSGSIZE: the kernel learned 1400 from the ICMP), then a
    // binary search that ends at exactly 1400.
    let status_a = wait_path_mtu(&net.a, 1400, Duration::from_secs(8));
    let status_b = wait_path_mtu(&net.b, 1400, Duration::from_secs(3));
    eprintln!(
        "path MTU 1400 verified on both after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let conn_a = first_connection(&status_a).expect("connection");
    assert_eq!(conn_a["overlay_mtu"].as_u64(), Some(1330), "{status_a:#}");
    assert_eq!(
        status_a["overlay_mtu"].as_u64(),
        Some(1330),
        "device MTU in status: {status_a:#}"
    );
    assert_eq!(status_b["overlay_mtu"].as_u64(), Some(1330), "{status_b:#}");
    assert_eq!(device_mtu(&net.a.ns), 1330, "weft0 on A");
    assert_eq!(device_mtu(&net.b.ns), 1330, "weft0 on B");
    let logs = net.a.logs();
    assert!(
        logs.contains("verified path MTU 1400"),
        "A's log should say so:\n{logs}"
    );
    assert!(
        logs.contains("overlay MTU 1430 -> 1330"),
        "A's log should show the overlay shrinking:\n{logs}"
    );

    // The overlay at its new size: exact DF fits, one more is refused loudly.
    let b_ip = net.b.overlay_ip();
    assert!(
        wait_until(Duration::from_secs(5), || ping(&net.a.ns, &b_ip)),
        "no plain ping through the overlay"
    );
    let (ok, text) = df_ping(&net.a.ns, &b_ip, 1330 - PING_HEADERS, 2);
    assert!(ok, "a DF ping of exactly 1330 bytes must pass: {text}");
    assert_df_ping_refused(&net.a.ns, &b_ip, 1330);
    let (sent, got, n) = tcp_transfer(&net.a.ns, &net.b.ns, &b_ip, 5011, 4 * 1024 * 1024, 0x1400);
    assert_eq!(n, 4 * 1024 * 1024, "bytes received");
    assert_eq!(
        sent, got,
        "SHA-256 differs after the transfer over the shrunken overlay"
    );

    let seen_a = cap_a.finish();
    let seen_b = cap_b.finish();
    eprintln!("{}", describe(&seen_a, "captured in A (link MTU 1500)"));
    eprintln!("{}", describe(&seen_b, "captured in B (link MTU 1400)"));
    assert_wire_fits(&seen_a, 1500, "A's u0");
    assert_wire_fits(&seen_b, 1400, "B's u0 (behind the router)");
    // What made it work: the router answered A's too-big DF probe with
    // frag-needed carrying the next-hop MTU, rather than fragmenting it.
    let icmp: Vec<&WirePacket> = seen_a
        .iter()
        .filter(|p| {
            !p.outgoing && p.src == IpAddr::V4(net.router_a_side) && p.frag_needed_mtu().is_some()
        })
        .collect();
    assert!(
        !icmp.is_empty(),
        "A never received ICMP frag-needed from the router"
    );
    assert!(
        icmp.iter().all(|p| p.frag_needed_mtu() == Some(1400)),
        "next-hop MTU in the ICMP: {icmp:?}"
    );
    let big_probes = seen_a
        .iter()
        .filter(|p| p.outgoing && p.weft_kind == Some(3) && p.len > 1400)
        .count();
    assert!(
        big_probes >= 1,
        "A should have tried a probe above 1400 (its interface MTU is 1500)"
    );
    assert!(
        seen_b
            .iter()
            .all(|p| !(p.weft_kind == Some(3) && p.len > 1400)),
        "no probe above 1400 may reach B"
    );
    // And since every weft packet carries DF, B received no fragments at all
    // (checked in assert_wire_fits) and every weft datagram had DF.
    assert!(seen_b
        .iter()
        .filter(|p| p.weft_kind.is_some())
        .all(|p| p.dont_fragment));
    eprintln!(
        "routed path: passed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// A local packet larger than the peer's verified path gets ICMP
/// frag-needed from weft (and counts as `dropped.too_big`). Normally the
/// device MTU stops such packets in the local kernel; a host route with a
/// larger MTU (as a stale or hand-set route would have) lets one through to
/// weft, which must answer it rather than drop it silently.
#[test]
fn oversize_local_packet_gets_frag_needed_from_weft() {
    require_root!();
    let mut net = Routed::new(1500, 1400);
    // The UDP socket path: its datagrams are visible to the capture and it
    // learns path shrinks from EMSGSIZE (see README, xdp mode limits).
    net.start_both(&["--mode", "udp"]);
    wait_path_mtu(&net.a, 1400, Duration::from_secs(10));
    let b_ip = net.b.overlay_ip();
    assert!(
        wait_until(Duration::from_secs(5), || ping(&net.a.ns, &b_ip)),
        "no plain ping through the overlay"
    );
    assert_eq!(device_mtu(&net.a.ns), 1330);
    let before = status_json(&net.a.ns).expect("status");
    assert_eq!(dropped(&before, "too_big"), 0, "{before:#}");

    // The route claims 1430 (the overlay MTU before the path shrank); the
    // kernel builds a 1430-byte DF packet and hands it to weft0.
    run(
        "ip",
        &[
            "-n",
            &net.a.ns,
            "route",
            "add",
            &format!("{b_ip}/32"),
            "dev",
            "weft0",
            "mtu",
            "1430",
        ],
    );
    let (ok, text) = df_ping(&net.a.ns, &b_ip, 1430 - PING_HEADERS, 1);
    assert!(
        !ok,
        "a 1430-byte DF packet must not cross a 1400-byte path: {text}"
    );
    assert!(
        text.contains("Frag needed") && text.contains("mtu = 1330"),
        "weft should answer with ICMP frag-needed naming 1330 (the peer's limit): {text}"
    );
    let ok = wait_until(Duration::from_secs(2), || {
        status_json(&net.a.ns)
            .map(|s| dropped(&s, "too_big") >= 1)
            .unwrap_or(false)
    });
    assert!(
        ok,
        "dropped.too_big should count the packet: {:?}",
        status_json(&net.a.ns)
    );
    // The local kernel learned the limit from the ICMP: the next try fails locally.
    let (ok, text) = df_ping(&net.a.ns, &b_ip, 1430 - PING_HEADERS, 1);
    assert!(
        !ok && text.contains("1330"),
        "after the ICMP the local stack should know 1330: {text}"
    );
    // And packets of the right size still go through on the same route.
    let (ok, text) = df_ping(&net.a.ns, &b_ip, 1330 - PING_HEADERS, 2);
    assert!(ok, "1330-byte DF ping on the /32 route: {text}");
}

/// The path shrinks while weft runs (the router's second hop goes from 1500
/// to 1400). The first oversize datagram is lost and the router's ICMP
/// teaches A's kernel the new size; the next one fails with EMSGSIZE, which
/// restarts the search; the overlay shrinks to 1330 and TCP works again.
#[test]
fn path_shrinking_later_lowers_the_overlay() {
    require_root!();
    let started = Instant::now();
    let mut net = Routed::new(1500, 1500);
    // The UDP socket path: its datagrams are visible to the capture and it
    // learns path shrinks from EMSGSIZE (see README, xdp mode limits).
    net.start_both(&["--mode", "udp"]);
    wait_path_mtu(&net.a, 1500, Duration::from_secs(10));
    wait_path_mtu(&net.b, 1500, Duration::from_secs(3));
    assert_eq!(device_mtu(&net.a.ns), 1430);
    let b_ip = net.b.overlay_ip();
    assert!(
        wait_until(Duration::from_secs(5), || ping(&net.a.ns, &b_ip)),
        "no plain ping through the overlay"
    );

    // Shrink the second hop on both of its ends.
    run(
        "ip",
        &["-n", &net.router.name, "link", "set", "r1", "mtu", "1400"],
    );
    run("ip", &["-n", &net.b.ns, "link", "set", "u0", "mtu", "1400"]);
    let shrunk = Instant::now();
    // Full-size packets from A now hit the smaller hop. A few DF pings at
    // the old overlay size: the first datagram dies at the router (ICMP to
    // A's kernel), the next send fails with EMSGSIZE, weft searches again.
    let adapted = wait_until(Duration::from_secs(8), || {
        let _ = df_ping(&net.a.ns, &b_ip, 1430 - PING_HEADERS, 1);
        device_mtu(&net.a.ns) == 1330
    });
    let status = status_json(&net.a.ns).expect("status");
    assert!(
        adapted,
        "A's overlay MTU did not drop to 1330 after the path shrank: {status:#}\n{}",
        net.a.logs()
    );
    eprintln!(
        "overlay adapted {:.2} s after the path shrank",
        shrunk.elapsed().as_secs_f64()
    );
    let c = first_connection(&status).expect("connection");
    assert_eq!(c["path_mtu"].as_u64(), Some(1400), "{status:#}");
    assert_eq!(status["overlay_mtu"].as_u64(), Some(1330), "{status:#}");
    assert!(
        net.a.logs().contains("overlay MTU 1430 -> 1330"),
        "{}",
        net.a.logs()
    );

    let (ok, text) = df_ping(&net.a.ns, &b_ip, 1330 - PING_HEADERS, 2);
    assert!(
        ok,
        "a DF ping of exactly the new overlay MTU must pass: {text}"
    );
    assert_df_ping_refused(&net.a.ns, &b_ip, 1330);
    let (sent, got, n) = tcp_transfer(&net.a.ns, &net.b.ns, &b_ip, 5012, 2 * 1024 * 1024, 0x1430);
    assert_eq!(n, 2 * 1024 * 1024);
    assert_eq!(sent, got, "SHA-256 differs after the path shrank");
    // B's own interface shrank under it (its weft read 1500 at start), and
    // TCP from B would not show it (A's SYN carries an MSS for 1330). A
    // full-size DF packet from B fails with EMSGSIZE in weft's send, which
    // restarts B's search too.
    let a_ip = net.a.overlay_ip();
    let adapted = wait_until(Duration::from_secs(8), || {
        let _ = df_ping(&net.b.ns, &a_ip, 1430 - PING_HEADERS, 1);
        device_mtu(&net.b.ns) == 1330
    });
    assert!(
        adapted,
        "B's overlay MTU did not drop to 1330: {:?}\n{}",
        status_json(&net.b.ns),
        net.b.logs()
    );
    let (ok, text) = df_ping(&net.b.ns, &a_ip, 1330 - PING_HEADERS, 2);
    assert!(ok, "B -> A DF ping of exactly 1330 bytes: {text}");
    eprintln!(
        "path shrink: passed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// A PMTU black hole: the router's second hop silently drops datagrams over
/// 1400 bytes without any ICMP (a token-bucket qdisc whose bucket holds one
/// 1414-byte frame, the way a misconfigured link or a filtering firewall
/// behaves). No EMSGSIZE ever helps: only probe timeouts (700 ms, one retry)
/// can find the size, and the search must still end at exactly 1400 from
/// A to B, while B -> A (not filtered) keeps 1500.
#[test]
fn black_hole_without_icmp_found_by_timeouts() {
    require_root!();
    let started = Instant::now();
    let mut net = Routed::new(1500, 1500);
    for (ns, dev) in [
        (&net.a.ns, "u0"),
        (&net.b.ns, "u0"),
        (&net.router.name, "r0"),
        (&net.router.name, "r1"),
    ] {
        disable_offloads(ns, dev);
    }
    // tbf drops every packet whose length (with the 14-byte Ethernet header)
    // exceeds its burst: IP datagrams over 1400 bytes vanish on r1.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &net.router.name,
            "tc",
            "qdisc",
            "add",
            "dev",
            "r1",
            "root",
            "tbf",
            "rate",
            "1gbit",
            "burst",
            "1414",
            "limit",
            "1000000",
        ],
    );
    let cap_b = UnderlayCapture::start(&net.b.ns, "u0");
    // The UDP socket path: its datagrams are visible to the capture and it
    // learns path shrinks from EMSGSIZE (see README, xdp mode limits).
    net.start_both(&["--mode", "udp"]);
    let status_a = wait_path_mtu(&net.a, 1400, Duration::from_secs(15));
    eprintln!(
        "black hole: path MTU 1400 found after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let status_b = wait_path_mtu(&net.b, 1500, Duration::from_secs(3));
    assert_eq!(status_a["overlay_mtu"].as_u64(), Some(1330), "{status_a:#}");
    assert_eq!(
        status_b["overlay_mtu"].as_u64(),
        Some(1430),
        "the B -> A direction carries 1500: {status_b:#}"
    );
    assert_eq!(device_mtu(&net.a.ns), 1330);

    let b_ip = net.b.overlay_ip();
    let (ok, text) = df_ping(&net.a.ns, &b_ip, 1330 - PING_HEADERS, 2);
    assert!(ok, "A -> B DF ping of exactly 1330 bytes: {text}");
    assert_df_ping_refused(&net.a.ns, &b_ip, 1330);
    let (sent, got, n) = tcp_transfer(&net.a.ns, &net.b.ns, &b_ip, 5014, 2 * 1024 * 1024, 0xb1ac);
    assert_eq!(n, 2 * 1024 * 1024);
    assert_eq!(sent, got, "SHA-256 differs through the black-holed path");
    let seen_b = cap_b.finish();
    assert_wire_fits(&seen_b, 1500, "B's u0");
    assert!(
        seen_b.iter().all(|p| p.outgoing || p.len <= 1400),
        "nothing over 1400 bytes may get through the black hole to B"
    );
    eprintln!(
        "black hole: passed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
