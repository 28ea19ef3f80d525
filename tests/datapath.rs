//! The datapath workers, driver by driver and mode by mode: checksummed
//! TCP transfers and UDP datagrams of mixed sizes, IPv4 and IPv6 inside,
//! through TUN (offloads on and off), bridge mode and plaintext VXLAN,
//! each with 1 and with 2 workers; and a worker that dies takes weft down
//! whole, leaving nothing behind. Needs root.

mod common;

use common::*;
use std::time::Duration;

/// Starts both hosts with `extra` and waits for them to connect.
fn up(net: &mut Net, extra: &[&str]) {
    net.start_both(extra);
    net.wait_established(Duration::from_secs(15));
}

fn tun(workers: usize, offload: bool) {
    let mut net = Net::pair(1500);
    if offload {
        // GRO on the underlay veth (as on a NIC): the kernel hands weft's
        // UDP_GRO sockets coalesced runs, which the driver cuts up.
        for h in [&net.a, &net.b] {
            run(
                "ip",
                &["netns", "exec", &h.ns, "ethtool", "-K", "u0", "gro", "on"],
            );
        }
    }
    let w = workers.to_string();
    let mut extra = vec!["--mode", "udp", "--workers", &w];
    if !offload {
        extra.push("--no-offload");
    }
    up(&mut net, &extra);
    assert_workers(&net.a, workers);
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    let what = format!("tun, {workers} worker(s), offloads {offload}");
    transfers(&net, &a_ip, &b_ip, &what);
}

#[test]
fn tun_offloads_1_worker() {
    require_root!();
    tun(1, true);
}

#[test]
fn tun_offloads_2_workers() {
    require_root!();
    tun(2, true);
}

#[test]
fn tun_no_offloads_1_worker() {
    require_root!();
    tun(1, false);
}

#[test]
fn tun_no_offloads_2_workers() {
    require_root!();
    tun(2, false);
}

/// AF_XDP under the sleeve: one worker serves every queue's socket, so a
/// request for two is turned down with a line that says why.
#[test]
fn xdp_underlay_one_worker() {
    require_root!();
    let mut net = Net::pair(1500);
    up(&mut net, &["--mode", "xdp", "--workers", "2"]);
    let log = net.a.logs();
    assert!(
        log.contains("the AF_XDP driver serves every queue's socket from one thread"),
        "{log}"
    );
    assert_workers(&net.a, 1);
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(&net, &a_ip, &b_ip, "tun over AF_XDP, 1 worker");
}

/// IPv6 inside: the hosts' overlay addresses are IPv6.
fn tun_v6(workers: usize) {
    let mut net = Net::pair(1500);
    net.a.overlay = "fd00:40::1/64".into();
    net.b.overlay = "fd00:40::2/64".into();
    let w = workers.to_string();
    up(&mut net, &["--mode", "udp", "--workers", &w]);
    let what = format!("tun, IPv6 inside, {workers} worker(s)");
    // DAD on the TUN address: it must be usable before TCP binds it.
    std::thread::sleep(Duration::from_secs(2));
    transfers(&net, "fd00:40::1", "fd00:40::2", &what);
}

#[test]
fn tun_ipv6_inside_1_worker() {
    require_root!();
    tun_v6(1);
}

#[test]
fn tun_ipv6_inside_2_workers() {
    require_root!();
    tun_v6(2);
}

/// Bridge mode: the hosts talk through their bridges' addresses, IPv4
/// (weft's --overlay) and IPv6 (added to each bridge here: frames are
/// frames).
fn bridge(workers: usize) {
    let mut net = Net::pair(1500);
    let w = workers.to_string();
    up(
        &mut net,
        &["--iface", "bridge", "--mode", "udp", "--workers", &w],
    );
    assert_workers(&net.b, workers);
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(&net, &a_ip, &b_ip, &format!("bridge, {workers} worker(s)"));
    for (h, addr) in [(&net.a, "fd00:41::1/64"), (&net.b, "fd00:41::2/64")] {
        run(
            "ip",
            &["-n", &h.ns, "addr", "add", addr, "dev", "weft", "nodad"],
        );
    }
    transfers(
        &net,
        "fd00:41::1",
        "fd00:41::2",
        &format!("bridge, IPv6 inside, {workers} worker(s)"),
    );
}

#[test]
fn bridge_1_worker() {
    require_root!();
    bridge(1);
}

#[test]
fn bridge_2_workers() {
    require_root!();
    bridge(2);
}

/// Bridge mode without TAP offloads: one frame per read and write.
#[test]
fn bridge_no_offloads_2_workers() {
    require_root!();
    let mut net = Net::pair(1500);
    up(
        &mut net,
        &[
            "--iface",
            "bridge",
            "--mode",
            "udp",
            "--workers",
            "2",
            "--no-offload",
        ],
    );
    assert!(net.a.logs().contains("TAP offloads off (--no-offload)"));
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(&net, &a_ip, &b_ip, "bridge, no offloads, 2 workers");
}

/// Plaintext VXLAN (static VTEPs, no weft control protocol): the same
/// transfers, each host the other's VTEP.
fn plain(workers: usize) {
    let mut net = Net::pair(1500);
    let w = workers.to_string();
    let (a_vtep, b_vtep) = (net.b.underlay.to_string(), net.a.underlay.to_string());
    for (h, vtep) in [(&mut net.a, a_vtep), (&mut net.b, b_vtep)] {
        h.peers.clear();
        h.start(&[
            "--mode",
            "plain",
            "--insecure-plaintext",
            "--vni",
            "42",
            "--vtep",
            &vtep,
            "--workers",
            &w,
        ]);
    }
    for h in [&net.a, &net.b] {
        assert!(
            wait_until(Duration::from_secs(10), || link_exists(&h.ns, "weft-tap")),
            "{}",
            h.logs()
        );
        // The line follows the device by a moment.
        let line = format!("static VTEP(s); {workers} worker(s)");
        assert!(
            wait_until(Duration::from_secs(5), || h.logs().contains(&line)),
            "{}",
            h.logs()
        );
    }
    let (a_ip, b_ip) = (net.a.overlay_ip(), net.b.overlay_ip());
    transfers(
        &net,
        &a_ip,
        &b_ip,
        &format!("plaintext VXLAN, {workers} worker(s)"),
    );
    // Every frame crossed as VXLAN between the two VTEPs.
    let status = status_json(&net.a.ns).expect("status");
    let vtep = &status["l2"]["vteps"][0];
    assert!(vtep["tx_packets"].as_u64() > Some(1000), "{status}");
    assert!(vtep["rx_packets"].as_u64() > Some(1000), "{status}");
}

#[test]
fn plaintext_1_worker() {
    require_root!();
    plain(1);
}

#[test]
fn plaintext_2_workers() {
    require_root!();
    plain(2);
}

/// With the test hook, a worker panics once it has read some packets from
/// the device: weft must stop whole (never run on half alive), exit with
/// an error, and leave no device or route behind; its peer sees it go.
#[cfg(feature = "test-hooks")]
#[test]
fn a_worker_panic_stops_weft_and_leaves_nothing() {
    require_root!();
    let mut net = Net::pair(1500);
    let mut args = net.a.launch_args();
    args.extend(["--mode", "udp", "--workers", "2"].map(String::from));
    net.a
        .start_with(&args, &[("WEFT_TEST_WORKER_PANIC_AFTER", "200")]);
    net.b.start(&["--mode", "udp", "--workers", "2"]);
    net.wait_established(Duration::from_secs(15));
    assert!(link_exists(&net.a.ns, "weft0"));
    let b_ip = net.b.overlay_ip();
    assert!(wait_until(Duration::from_secs(5), || ping(
        &net.a.ns, &b_ip
    )));
    // Traffic until the hook fires (the transfer itself may fail: the
    // router under it goes away).
    let (from, to) = (net.a.ns.clone(), net.b.ns.clone());
    let flood = std::thread::spawn(move || {
        let _ = ns_exec(
            &from,
            &["ping", "-n", "-q", "-f", "-c", "2000", "-W", "1", &b_ip],
        );
        drop(to);
    });
    let status = net.a.wait_exit(Duration::from_secs(15));
    let _ = flood.join();
    let status = status.unwrap_or_else(|| panic!("weft kept running:\n{}", net.a.logs()));
    assert!(
        !status.success(),
        "exit status {status} after a worker panic"
    );
    let log = net.a.logs();
    assert!(
        log.contains("test hook: worker") && log.contains("panicked: weft stops"),
        "{log}"
    );
    assert!(!link_exists(&net.a.ns, "weft0"), "weft0 left behind");
    assert!(!has_route(&net.a.ns, "10.40."), "overlay route left behind");
    // The peer heard it leave (a goodbye, or the connection closing).
    assert!(
        wait_until(Duration::from_secs(5), || net
            .b
            .logs()
            .contains("shutting down")
            || net.b.logs().contains("connection closed")),
        "{}",
        net.b.logs()
    );
}
