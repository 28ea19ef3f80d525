//! Bridge (L2) mode across two hosts, each with a bridge and two
//! "container" namespaces on it: ARP and ping, broadcast delivered exactly
//! once everywhere, oversized frames dropped and counted, a container
//! moving between hosts, MAC aging, frames packed into sealed datagrams,
//! and cleanup of what weft created. Needs root.

mod l2_common;

use l2_common::*;
use std::time::{Duration, Instant};

const MTU: u16 = 1416; // 1500 - 84: encrypted sleeve, IPv4 underlay, inner Ethernet

struct TwoHosts {
    // Field order is drop order: weft first, then containers, then hosts.
    w1: Weft,
    w2: Weft,
    c11: Container,
    c12: Container,
    c21: Container,
    c22: Container,
    net: Underlay,
    bridge1: String,
    bridge2: String,
}

/// h1 attaches to a bridge the test made beforehand; h2 lets weft create one.
/// `extra_args` go to both weft launches.
fn two_hosts(tag: &str, extra_config: &str, extra_args: &str) -> TwoHosts {
    two_hosts_with(Underlay::new(tag), extra_config, extra_args, ["", ""])
}

/// [`two_hosts`] on an underlay made beforehand, with `own_args[i]` going
/// to host i+1 only.
fn two_hosts_with(
    net: Underlay,
    extra_config: &str,
    extra_args: &str,
    own_args: [&str; 2],
) -> TwoHosts {
    let secret = write_file(
        &format!("{}-secret", net.h1.name),
        "bridge-test-secret-0123456789abcdef\n",
    );
    let config = write_file(
        &format!("{}-config.toml", net.h1.name),
        &format!("[timers]\nheartbeat_connecting_ms = 100\n{extra_config}\n"),
    );
    let (bridge1, bridge2) = ("br1".to_string(), "wbr2".to_string());
    net.h1.run(&format!("ip link add {bridge1} type bridge"));
    net.h1.run(&format!("ip link set {bridge1} up"));
    let common = format!(
        "--iface bridge --secret-file {} --config {} {extra_args}",
        secret.display(),
        config.display()
    );
    let w1 = Weft::start(
        &net.h1,
        &format!("--bridge {bridge1} --overlay 10.50.0.1/16 --listen 198.18.0.1:6783 --peer 198.18.0.2:6783 {common} {}", own_args[0]),
    );
    let w2 = Weft::start(
        &net.h2,
        &format!(
            "--bridge {bridge2} --overlay 10.50.0.2/16 --listen 198.18.0.2:6783 {common} {}",
            own_args[1]
        ),
    );
    assert!(
        wait_for(Duration::from_secs(10), || (link_exists(&net.h2, &bridge2)
            && link_exists(&net.h1, "br1-tap"))
        .then_some(()))
        .is_some(),
        "bridges not up; h1 log:\n{}\nh2 log:\n{}",
        w1.log_text(),
        w2.log_text()
    );
    let p = &net.h1.name;
    let c11 = Container::new(
        &format!("{p}c11"),
        "02:00:00:00:01:11",
        "10.50.1.11",
        MTU,
        &net.h1,
        &bridge1,
    );
    let c12 = Container::new(
        &format!("{p}c12"),
        "02:00:00:00:01:12",
        "10.50.1.12",
        MTU,
        &net.h1,
        &bridge1,
    );
    let c21 = Container::new(
        &format!("{p}c21"),
        "02:00:00:00:02:21",
        "10.50.2.21",
        MTU,
        &net.h2,
        &bridge2,
    );
    let c22 = Container::new(
        &format!("{p}c22"),
        "02:00:00:00:02:22",
        "10.50.2.22",
        MTU,
        &net.h2,
        &bridge2,
    );
    let up = wait_for(Duration::from_secs(10), || {
        status(&net.h1)?
            .pointer("/connections/0/state")
            .and_then(|s| s.as_str())
            .filter(|s| *s == "established")
            .map(|_| ())
    });
    assert!(
        up.is_some(),
        "peers never established; h1 log:\n{}\nh2 log:\n{}",
        w1.log_text(),
        w2.log_text()
    );
    TwoHosts {
        w1,
        w2,
        c11,
        c12,
        c21,
        c22,
        net,
        bridge1,
        bridge2,
    }
}

fn ping(from: &Container, to: &str) -> bool {
    from.ns.try_run(&format!("ping -c 1 -W 1 {to}")).0
}

#[test]
fn bridge_arp_ping_broadcast_oversize_and_cleanup() {
    let mut t = two_hosts("l2a", "", "");
    // MTUs: the bridge and TAP carry the overlay MTU.
    assert!(t
        .net
        .h2
        .run(&format!("ip link show {}", t.bridge2))
        .contains(&format!("mtu {MTU}")));
    assert!(t
        .net
        .h1
        .run("ip link show br1-tap")
        .contains(&format!("mtu {MTU}")));

    // ARP + ping between containers on different hosts (both directions).
    assert!(
        wait_for(Duration::from_secs(5), || ping(&t.c11, &t.c21.ip)
            .then_some(()))
        .is_some(),
        "c11 cannot reach c21; h1 log:\n{}",
        t.w1.log_text()
    );
    assert!(ping(&t.c22, &t.c12.ip), "c22 cannot reach c12");
    let neigh = t.c11.ns.run(&format!("ip neigh show {}", t.c21.ip));
    assert!(
        neigh.contains(&t.c21.mac),
        "c11 learned {neigh:?} for c21, not its MAC {}",
        t.c21.mac
    );
    // The hosts' own addresses on the bridges too.
    assert!(ping(&t.c21, "10.50.0.1"));

    // A broadcast from c11 reaches every other container exactly once.
    let counters: Vec<_> = [&t.c12, &t.c21, &t.c22]
        .iter()
        .map(|c| count_udp(&c.ns, 9999, Duration::from_millis(1500)))
        .collect();
    let own = count_udp(&t.c11.ns, 9999, Duration::from_millis(1500));
    t.c11.ns.enter(|| {
        let s = std::net::UdpSocket::bind("10.50.1.11:0").unwrap();
        s.set_broadcast(true).unwrap();
        s.send_to(b"hello everyone", "10.50.255.255:9999").unwrap();
    });
    let got: Vec<usize> = counters.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, vec![1, 1, 1], "broadcast copies at c12, c21, c22");
    // The kernel delivers one local copy of a host's own broadcast; a copy
    // reflected back over the overlay would make it two.
    assert_eq!(
        own.join().unwrap(),
        1,
        "the sender's broadcast came back to it over the overlay"
    );

    // Frames larger than the overlay MTU are dropped and counted.
    // The kernel bridge itself drops frames above a port's MTU, so only a
    // misconfigured TAP MTU lets one reach weft: raise it along the path.
    t.c11.ns.run("ip link set eth0 mtu 1500");
    t.net
        .h1
        .run(&format!("ip link set v{}c11 mtu 1500", t.net.h1.name));
    t.net.h1.run("ip link set br1-tap mtu 1500");
    let before = stat(&t.net.h1, "/l2/counters/oversized");
    assert!(
        !t.c11
            .ns
            .try_run(&format!("ping -c 1 -W 1 -M do -s 1472 {}", t.c21.ip))
            .0
    );
    assert!(
        wait_for(Duration::from_secs(2), || (stat(
            &t.net.h1,
            "/l2/counters/oversized"
        ) > before)
            .then_some(()))
        .is_some(),
        "oversized frame not counted"
    );
    assert!(t
        .net
        .h1
        .run(&format!("{} status", weft_bin()))
        .contains("Bridge: br1"));

    // On exit weft removes the bridge it created and its TAPs, and leaves
    // the pre-existing bridge (without the address it added).
    assert_eq!(t.w2.stop(), Some(0), "h2 log:\n{}", t.w2.log_text());
    assert_eq!(t.w1.stop(), Some(0), "h1 log:\n{}", t.w1.log_text());
    assert!(
        !link_exists(&t.net.h2, &t.bridge2),
        "weft left its bridge behind"
    );
    assert!(!link_exists(&t.net.h2, "wbr2-tap"));
    assert!(!link_exists(&t.net.h1, "br1-tap"));
    assert!(
        link_exists(&t.net.h1, &t.bridge1),
        "weft removed a bridge it did not create"
    );
    assert!(!t
        .net
        .h1
        .run(&format!("ip addr show {}", t.bridge1))
        .contains("10.50.0.1"));
}

#[test]
fn container_moves_between_hosts() {
    let t = two_hosts("l2m", "", "");
    assert!(wait_for(Duration::from_secs(5), || ping(&t.c11, &t.c12.ip)
        .then_some(()))
    .is_some());
    assert!(
        ping(&t.c21, &t.c12.ip),
        "c21 cannot reach c12 before the move"
    );
    // Move c12 (same MAC, same address) from host 1 to host 2.
    t.c12.unplug();
    t.c12.plug(&t.net.h2, &t.bridge2, MTU);
    t.c12.announce(&t.net.h2);
    let moved_at = Instant::now();
    // c12 announces itself (gratuitous ARP); weft relearns its MAC
    // from that first frame. c11 (host 1) still has c12's MAC in its ARP
    // cache, so its pings are unicast frames that must now go to host 2.
    let reached = wait_for(Duration::from_secs(3), || {
        ping(&t.c11, &t.c12.ip).then_some(moved_at.elapsed())
    });
    let Some(elapsed) = reached else {
        panic!(
            "c12 unreachable after moving to host 2\nh1 fdb:\n{}\nh2 fdb:\n{}\nh1: {:?}\nh2: {:?}",
            t.net.h1.run("bridge fdb show br br1"),
            t.net.h2.run("bridge fdb show br wbr2"),
            status(&t.net.h1).and_then(|s| s.get("l2").cloned()),
            status(&t.net.h2).and_then(|s| s.get("l2").cloned()),
        )
    };
    assert!(
        elapsed <= Duration::from_millis(1000) + Duration::from_millis(100),
        "took {elapsed:?}"
    );
    assert!(
        ping(&t.c21, &t.c12.ip),
        "c21 (now on the same host) cannot reach c12"
    );
    // Both hosts saw c12's MAC move (counters refresh once a second).
    let moves = wait_for(Duration::from_secs(3), || {
        (stat(&t.net.h1, "/l2/counters/mac_moves") >= 1
            && stat(&t.net.h2, "/l2/counters/mac_moves") >= 1)
            .then_some(())
    });
    assert!(
        moves.is_some(),
        "moves not counted: {:?}",
        status(&t.net.h2).and_then(|s| s.get("l2").cloned())
    );
}

#[test]
fn a_peer_sending_from_many_source_macs_only_evicts_its_own() {
    let t = two_hosts("l2q", "", "--mac-quota 50");
    assert!(wait_for(Duration::from_secs(5), || ping(&t.c11, &t.c21.ip)
        .then_some(()))
    .is_some());
    assert_eq!(stat(&t.net.h1, "/l2/mac_quota"), 50);
    // A container on h2 sends 400 broadcast frames, each from another
    // source MAC; h2's weft floods them to h1, which learns them behind h2.
    let frames: Vec<Vec<u8>> = (0..400u16)
        .map(|i| {
            let mut f = vec![0xffu8; 6];
            f.extend_from_slice(&[0x02, 0xaa, 0, 0]);
            f.extend_from_slice(&i.to_be_bytes());
            f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
            f.resize(60, 0);
            f
        })
        .collect();
    t.c22.send_frames(frames);
    let evicted = wait_for(Duration::from_secs(5), || {
        let n = stat(&t.net.h1, "/l2/counters/mac_quota_evictions");
        (n >= 300).then_some(n)
    });
    assert!(
        evicted.is_some(),
        "h1 never evicted h2's addresses: {:?}",
        status(&t.net.h1).and_then(|s| s.get("l2").cloned())
    );
    // h1's table holds at most h2's quota plus its own containers.
    let entries = stat(&t.net.h1, "/l2/counters/fdb_entries");
    assert!(entries <= 50 + 2, "h1 holds {entries} MACs");
    // h1's own containers were never evicted: they still reach each other
    // and h2's containers (unknown unicast is flooded, then relearned).
    assert!(ping(&t.c11, &t.c12.ip));
    assert!(ping(&t.c11, &t.c21.ip));
    assert!(ping(&t.c12, &t.c22.ip));
}

/// Runs `weft ARGS` outside any namespace (key and certificate files).
fn weft_ok(args: &str) -> String {
    let out = std::process::Command::new(weft_bin())
        .args(args.split_whitespace())
        .output()
        .expect("run weft");
    assert!(out.status.success(), "weft {args}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn with_a_ca_frames_from_macs_the_senders_certificate_does_not_list_are_dropped() {
    let net = Underlay::new("l2c");
    let dir = std::env::temp_dir().join(format!("{}-certs", net.h1.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    weft_ok(&format!(
        "ca new --name l2-net --key {d}/ca.key --cert {d}/ca.crt"
    ));
    weft_ok(&format!("keygen {d}/h1.key"));
    weft_ok(&format!("keygen {d}/h2.key"));
    let sign = format!("cert sign --ca-key {d}/ca.key --ca-cert {d}/ca.crt");
    weft_ok(&format!(
        "{sign} --name h1 --key-file {d}/h1.key --overlay 10.50.0.1/16 --any-mac --out {d}/h1.crt"
    ));
    // h2 may send only from its two containers' MACs.
    weft_ok(&format!("{sign} --name h2 --key-file {d}/h2.key --overlay 10.50.0.2/16 --mac 02:00:00:00:02:21 --mac 02:00:00:00:02:22 --out {d}/h2.crt"));
    let t = two_hosts_with(
        net,
        "",
        &format!("--ca-cert {d}/ca.crt"),
        [
            &format!("--key-file {d}/h1.key --cert {d}/h1.crt"),
            &format!("--key-file {d}/h2.key --cert {d}/h2.crt"),
        ],
    );
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(wait_for(Duration::from_secs(5), || ping(&t.c11, &t.c21.ip)
            .then_some(()))
        .is_some());
        let before = stat(&t.net.h1, "/dropped/spoofed_source");
        // c22 sends 20 broadcast frames from a MAC h2's certificate does not list.
        let frames: Vec<Vec<u8>> = (0..20u8)
            .map(|i| {
                let mut f = vec![0xffu8; 6];
                f.extend_from_slice(&[0x02, 0xbb, 0, 0, 0, i]);
                f.extend_from_slice(&[0x88, 0xb5]);
                f.resize(60, 0);
                f
            })
            .collect();
        t.c22.send_frames(frames);
        let dropped = wait_for(Duration::from_secs(5), || {
            let n = stat(&t.net.h1, "/dropped/spoofed_source");
            (n >= before + 20).then_some(n)
        });
        assert!(
            dropped.is_some(),
            "h1 did not drop the frames: {:?}",
            status(&t.net.h1).and_then(|s| s.get("dropped").cloned())
        );
        // None of them was learned (two local containers, two behind h2);
        // the listed MACs still work both ways.
        let l2 = status(&t.net.h1).and_then(|s| s.get("l2").cloned());
        assert!(
            stat(&t.net.h1, "/l2/counters/fdb_entries") <= 4,
            "l2: {l2:?}"
        );
        assert!(ping(&t.c12, &t.c22.ip), "l2: {l2:?}");
        assert!(ping(&t.c21, &t.c11.ip));
    }));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn mac_entries_expire() {
    let t = two_hosts("l2e", "mac_age_secs = 2", "");
    assert!(wait_for(Duration::from_secs(5), || ping(&t.c11, &t.c21.ip)
        .then_some(()))
    .is_some());
    assert_eq!(stat(&t.net.h1, "/l2/mac_age_secs"), 2);
    assert!(wait_for(Duration::from_secs(2), || (stat(
        &t.net.h1,
        "/l2/counters/fdb_entries"
    ) >= 2)
        .then_some(()))
    .is_some());
    // Silence: IPv6 is off in every namespace, so nothing refreshes the entries.
    let gone = wait_for(Duration::from_secs(8), || {
        (stat(&t.net.h1, "/l2/counters/fdb_entries") == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "entries never expired: {:?}",
        status(&t.net.h1).and_then(|s| s.get("l2").cloned())
    );
    assert!(stat(&t.net.h1, "/l2/counters/expired") >= 2);
    // Traffic relearns them.
    assert!(ping(&t.c11, &t.c21.ip));
}

#[test]
fn small_frames_share_sealed_datagrams_within_the_path_mtu() {
    // The UDP datapath: AF_XDP frames bypass the AF_PACKET capture below.
    let t = two_hosts("l2b", "", "--mode udp");
    assert!(wait_for(Duration::from_secs(5), || ping(&t.c11, &t.c21.ip)
        .then_some(()))
    .is_some());
    // veth hands GSO super-packets to its peer whole (weft sends runs of
    // equal-size datagrams with UDP GSO): turn segmentation offloads off on
    // the sender so the capture sees datagrams as a real wire would.
    t.net
        .h1
        .run("ethtool -K ul tso off gso off tx-udp-segmentation off");
    let capture = capture_ipv4(&t.net.h2, Duration::from_millis(2500));
    // A burst of small datagrams from c11 to c21, plus a full-size ping.
    let target = t.c21.ip.clone();
    t.c11.ns.enter(move || {
        let s = std::net::UdpSocket::bind("10.50.1.11:0").unwrap();
        for i in 0..3000u32 {
            let _ = s.send_to(&i.to_be_bytes(), (target.as_str(), 9));
        }
    });
    assert!(
        t.c11
            .ns
            .try_run(&format!(
                "ping -c 2 -W 1 -M do -s {} {}",
                MTU - 28,
                t.c21.ip
            ))
            .0,
        "full-size ping failed"
    );
    let packets = capture.join().unwrap();
    let s = status(&t.net.h1).unwrap();
    let datagrams = s
        .pointer("/batching/sealed_datagrams")
        .and_then(|v| v.as_u64())
        .unwrap();
    let frames = s
        .pointer("/batching/sealed_frames")
        .and_then(|v| v.as_u64())
        .unwrap();
    assert!(
        frames > datagrams,
        "no packing: {frames} frames in {datagrams} datagrams"
    );
    let largest = s
        .pointer("/batching/largest_datagram")
        .and_then(|v| v.as_u64())
        .unwrap();
    assert!(
        largest <= 1500 - 28,
        "sealed datagram of {largest} bytes exceeds the path MTU"
    );
    let weft_packets: Vec<_> = packets
        .iter()
        .filter(|p| udp_payload_to(p, 6783).is_some())
        .collect();
    assert!(!weft_packets.is_empty());
    let biggest = weft_packets.iter().map(|p| p.len()).max().unwrap();
    assert!(
        biggest <= 1500,
        "captured a {biggest}-byte datagram on a 1500-byte path"
    );
    assert!(
        biggest > 1400,
        "the full-size ping was not seen ({biggest})"
    );
}

/// With `--trusted-subnet` the network allows plaintext (fastdp may run),
/// but peers outside the subnets and fastdp's fallback use the encrypted
/// sleeve: the one device MTU must fit the sleeve. Launch runs the plan
/// preflight decided, so the logged decision, the logged MTU line and the
/// devices agree (they once said 1450 while the device got 1416).
#[test]
fn trusted_subnet_launch_logs_the_mtu_the_devices_get() {
    let t = two_hosts("l2t", "", "--mode udp --trusted-subnet 198.18.0.0/15");
    let log = t.w1.log_text();
    assert!(
        log.contains(&format!("overlay mtu {MTU}")),
        "preflight decision line does not say mtu {MTU}:\n{log}"
    );
    assert!(
        log.contains(&format!("overlay MTU {MTU} = underlay 1500 - 84")),
        "{log}"
    );
    assert!(!log.contains("overlay mtu 1450"), "{log}");
    assert!(t
        .net
        .h1
        .run("ip link show br1-tap")
        .contains(&format!("mtu {MTU}")));
    assert!(t
        .net
        .h2
        .run(&format!("ip link show {}", t.bridge2))
        .contains(&format!("mtu {MTU}")));
    // A full-size frame crosses (DF set, 1416 - 28 bytes of ICMP payload).
    let payload = usize::from(MTU) - 28;
    assert!(
        wait_for(Duration::from_secs(5), || t
            .c11
            .ns
            .try_run(&format!("ping -c 1 -W 1 -M do -s {payload} {}", t.c21.ip))
            .0
            .then_some(()))
        .is_some(),
        "a {MTU}-byte packet did not cross; h1 log:\n{log}"
    );
}
