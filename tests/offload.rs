//! Correctness through each offload path: TCP super-packets (TSO) cut by
//! weft and coalesced on the far side (GRO), UDP super-packets (USO) from
//! an application using UDP_SEGMENT, mixed packet sizes, ICMP, an IPv6
//! inner flow, and the same traffic with offloads off. Speed is never
//! asserted here (perf/ measures it).

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::time::Duration;

fn up(extra: &[&str]) -> Net {
    let mut net = Net::pair(1500);
    net.start_both(extra);
    net.wait_established(Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(5), || ping(
        &net.a.ns,
        &net.b.overlay_ip()
    )));
    net
}

/// Sends `count` UDP GSO messages of `total` bytes cut into `segment`-byte
/// datagrams from A to B's overlay address, and returns what B received
/// (datagram sizes and whether each datagram's bytes were right).
fn udp_gso_transfer(
    net: &Net,
    port: u16,
    total: usize,
    segment: u16,
    count: usize,
) -> Vec<(usize, bool)> {
    let to: std::net::SocketAddr = format!("{}:{port}", net.b.overlay_ip()).parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = spawn_in_netns(&net.b.ns, move || {
        let sock = std::net::UdpSocket::bind(to).expect("bind in B");
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf) {
            // Each datagram is filled with its index within its message.
            let first = buf[0];
            got.push((n, buf[..n].iter().all(|b| *b == first)));
        }
        got
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    let from_ns = net.a.ns.clone();
    in_netns(&from_ns, move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut msg = vec![0u8; total];
        for (i, chunk) in msg.chunks_mut(usize::from(segment)).enumerate() {
            chunk.fill(i as u8);
        }
        for _ in 0..count {
            // UDP_SEGMENT: the stack hands the whole message to the TUN as one
            // USO super-packet when the device accepts USO.
            let seg = libc::c_int::from(segment);
            // SAFETY: setsockopt with a valid fd and an int.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_SEGMENT,
                    &seg as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "UDP_SEGMENT");
            sock.send_to(&msg, to).expect("send UDP GSO message");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    receiver.join().unwrap()
}

/// TCP (TSO/GRO) and UDP (USO) super-packets through weft with offloads on.
#[test]
fn super_packets_are_cut_and_arrive_intact() {
    require_root!();
    let net = up(&["--mode", "udp"]);
    let (sent, got, n) = tcp_transfer(&net.a.ns, &net.b.ns, &net.b.overlay_ip(), 5101, 32 << 20, 7);
    assert_eq!(n, 32 << 20);
    assert_eq!(sent, got, "TCP checksum differs");

    let got = udp_gso_transfer(&net, 5102, 8000, 1000, 20);
    assert_eq!(
        got.len(),
        160,
        "expected 20 x 8 datagrams of 1000 bytes: {got:?}"
    );
    assert!(got.iter().all(|(n, ok)| *n == 1000 && *ok), "{got:?}");
}

/// The same traffic with offloads off (one packet per read and write).
#[test]
fn without_offloads_the_same_traffic_arrives_intact() {
    require_root!();
    let net = up(&["--mode", "udp", "--no-offload"]);
    let (sent, got, n) = tcp_transfer(&net.a.ns, &net.b.ns, &net.b.overlay_ip(), 5201, 16 << 20, 8);
    assert_eq!(n, 16 << 20);
    assert_eq!(sent, got);
    let got = udp_gso_transfer(&net, 5202, 4000, 1000, 10);
    assert_eq!(got.len(), 40, "{got:?}");
    assert!(got.iter().all(|(n, ok)| *n == 1000 && *ok));
}

/// Mixed ICMP sizes from tiny to the full overlay MTU, DF set, both ways.
#[test]
fn mixed_sizes_and_icmp() {
    require_root!();
    let net = up(&[]);
    for size in [0usize, 1, 63, 64, 500, 1000, 1401, 1402] {
        let s = size.to_string();
        for (from, to) in [(&net.a, &net.b), (&net.b, &net.a)] {
            let out = ns_exec(
                &from.ns,
                &[
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    "2",
                    "-i",
                    "0.05",
                    "-W",
                    "1",
                    "-M",
                    "do",
                    "-s",
                    &s,
                    &to.overlay_ip(),
                ],
            );
            assert!(
                out.status.success(),
                "ping -s {size}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

/// IPv6 inside the overlay: an IPv6 overlay prefix, ICMPv6 of mixed sizes
/// and a TCP transfer (TSO6/GRO6 path).
#[test]
fn ipv6_inner_packets_cross() {
    require_root!();
    let mut net = Net::pair(1500);
    net.a.overlay = "fd40::1/64".into();
    net.b.overlay = "fd40::2/64".into();
    net.start_both(&["--mode", "udp"]);
    net.wait_established(Duration::from_secs(10));
    // DAD on the new addresses takes a moment before they can be used.
    assert!(
        wait_until(Duration::from_secs(8), || ping(&net.a.ns, "fd40::2")),
        "IPv6 ping through the overlay"
    );
    for size in ["8", "500", "1382"] {
        let out = ns_exec(
            &net.a.ns,
            &[
                "ping", "-n", "-q", "-c", "2", "-i", "0.05", "-W", "1", "-M", "do", "-s", size,
                "fd40::2",
            ],
        );
        assert!(
            out.status.success(),
            "ping6 -s {size}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let (sent, got, n) = tcp_transfer(&net.a.ns, &net.b.ns, "[fd40::2]", 5301, 16 << 20, 9);
    assert_eq!(n, 16 << 20);
    assert_eq!(sent, got, "TCP over IPv6 checksum differs");
}
