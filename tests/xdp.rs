//! Driver-level tests of the AF_XDP underlay in network namespaces: two
//! namespaces joined by a veth pair (tests/common `Net::pair`, weft itself
//! is not started). Host A runs an `XdpUnderlay` on its veth; host B uses a
//! plain UDP socket. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use weft::datapath::xdp::{XdpConfig, XdpUnderlay};

const COUNT: usize = 200;

fn xdp_attached(ns: &str) -> bool {
    let out = ns_exec(ns, &["ip", "link", "show", "u0"]);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("weft-xdp-test-{i:04}-").into_bytes();
    p.resize(64 + i % 900, (i % 251) as u8);
    p
}

/// Waits until one of `fds` is readable or `timeout` passes.
fn poll_readable(fds: &[i32], timeout: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll on a valid array of pollfd.
    unsafe {
        libc::poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
}

fn open_underlay(bind: SocketAddr) -> XdpUnderlay {
    let socket = UdpSocket::bind(bind).expect("bind the kernel UDP socket");
    let config = XdpConfig {
        interface: "u0".to_string(),
        extra_ports: vec![],
        source: Some(bind.ip()),
    };
    XdpUnderlay::open(&config, socket).unwrap_or_else(|e| panic!("open AF_XDP underlay: {e}"))
}

fn tcp_echo_works(client_ns: &str, server_ns: &str, server: SocketAddr) -> bool {
    let (ready_tx, ready_rx) = mpsc::channel();
    let srv = spawn_in_netns(server_ns, move || {
        let listener = TcpListener::bind(server).expect("bind TCP listener");
        ready_tx.send(()).unwrap();
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 100_000];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    let ok = in_netns(client_ns, move || {
        let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(5)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        conn.write_all(&sent).ok()?;
        let mut back = vec![0u8; sent.len()];
        conn.read_exact(&mut back).ok()?;
        Some(back == sent)
    });
    let _ = srv.join();
    ok == Some(true)
}

#[test]
fn xdp_underlay_carries_udp_both_ways_and_the_host_stays_reachable() {
    require_root!();
    let started = Instant::now();
    let net = Net::pair(1500);
    let a_addr = SocketAddr::new(net.a.underlay.into(), PORT);
    let b_addr = SocketAddr::new(net.b.underlay.into(), PORT);

    // B: a plain UDP socket that receives COUNT datagrams, then answers.
    let (b_ready_tx, b_ready_rx) = mpsc::channel();
    let b = spawn_in_netns(&net.b.ns, move || {
        let socket = UdpSocket::bind(b_addr).expect("bind B");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        b_ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < COUNT {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => got.push((buf[..n].to_vec(), from)),
                Err(_) => break,
            }
        }
        for i in 0..COUNT {
            socket.send_to(&payload(i), a_addr).expect("B sends");
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Round 2 from A: by now A knows B's MAC, so all of it is AF_XDP.
        let mut round2 = Vec::new();
        while round2.len() < COUNT {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => round2.push((buf[..n].to_vec(), from)),
                Err(_) => break,
            }
        }
        (got, round2)
    });
    b_ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("B ready");

    // A: the AF_XDP underlay sends COUNT, receives COUNT, then waits to be
    // told to drop (so TCP/ping can be tried while it is attached).
    let (mode_tx, mode_rx) = mpsc::channel();
    let (drop_tx, drop_rx) = mpsc::channel::<()>();
    let a = spawn_in_netns(&net.a.ns, move || {
        let mut underlay = open_underlay(a_addr);
        mode_tx.send(underlay.mode()).unwrap();
        for i in 0..COUNT {
            underlay.send_to(&payload(i), b_addr).expect("A sends");
            if i % 32 == 31 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < COUNT && Instant::now() < deadline {
            match underlay.recv_from(&mut buf) {
                Ok((n, from)) => got.push((buf[..n].to_vec(), from)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    poll_readable(&underlay.poll_fds(), Duration::from_millis(100))
                }
                Err(e) => panic!("A recv: {e}"),
            }
        }
        let after_round1 = underlay.stats();
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..COUNT {
            underlay.queue(&payload(i), b_addr).expect("A queues");
            if i % 32 == 31 {
                underlay.flush();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        underlay.flush();
        let mut stats = underlay.stats();
        stats.tx_frames -= after_round1.tx_frames;
        stats.tx_kernel -= after_round1.tx_kernel;
        let _ = drop_rx.recv_timeout(Duration::from_secs(30));
        drop(underlay);
        (got, stats)
    });
    let mode = mode_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("A opened the underlay");
    eprintln!("AF_XDP mode on veth: {mode}");
    assert!(mode.ends_with("copy"), "{mode}");

    let (round1, round2) = b.join().expect("B thread");
    for (round, got) in [(1, &round1), (2, &round2)] {
        assert_eq!(
            got.len(),
            COUNT,
            "B received {} of {COUNT} datagrams sent by the AF_XDP side",
            got.len()
        );
        for (i, (_, from)) in got.iter().enumerate() {
            assert_eq!(*from, a_addr, "datagram {i} source");
        }
        if round == 1 {
            // Round 1 starts before A knows B's MAC: the first datagrams
            // leave through the kernel while the neighbour is resolved, the
            // rest through AF_XDP, so the two paths may reorder them. Every
            // one must arrive intact, exactly once.
            let mut contents: Vec<&Vec<u8>> = got.iter().map(|(b, _)| b).collect();
            contents.sort();
            let mut expected: Vec<Vec<u8>> = (0..COUNT).map(payload).collect();
            expected.sort();
            assert!(
                contents.iter().copied().eq(expected.iter()),
                "round 1: B did not receive each datagram intact, exactly once"
            );
        } else {
            for (i, (bytes, _)) in got.iter().enumerate() {
                assert_eq!(
                    bytes,
                    &payload(i),
                    "round 2, datagram {i} content (all AF_XDP: in order on one veth)"
                );
            }
        }
    }

    // While the program is attached: ARP/ICMP, TCP on another port and TCP
    // on the data port number itself (weft's control connection) all pass.
    assert!(
        xdp_attached(&net.a.ns),
        "program attached while the underlay is open"
    );
    assert!(
        ping(&net.b.ns, &net.a.underlay.to_string()),
        "ping B -> A with XDP on A"
    );
    run("ip", &["-n", &net.b.ns, "neigh", "flush", "dev", "u0"]);
    assert!(
        ping(&net.b.ns, &net.a.underlay.to_string()),
        "ARP resolution of A after a neighbour flush"
    );
    assert!(
        tcp_echo_works(
            &net.b.ns,
            &net.a.ns,
            SocketAddr::new(net.a.underlay.into(), 7000)
        ),
        "TCP B -> A:7000"
    );
    assert!(
        tcp_echo_works(&net.b.ns, &net.a.ns, a_addr),
        "TCP B -> A:{PORT} (control port)"
    );
    assert!(
        tcp_echo_works(
            &net.a.ns,
            &net.b.ns,
            SocketAddr::new(net.b.underlay.into(), 7001)
        ),
        "TCP A -> B:7001"
    );

    drop_tx.send(()).unwrap();
    let (a_got, stats) = a.join().expect("A thread");
    eprintln!("A stats: {stats:?}");
    assert_eq!(a_got.len(), COUNT, "A received {} of {COUNT}", a_got.len());
    for (i, (bytes, from)) in a_got.iter().enumerate() {
        assert_eq!(*from, b_addr);
        assert_eq!(bytes, &payload(i), "datagram {i} received by A");
    }
    // The datagrams really took the AF_XDP path (not the kernel socket).
    assert_eq!(stats.rx_frames as usize, COUNT, "{stats:?}");
    assert_eq!(stats.rx_kernel, 0, "{stats:?}");
    // Round 2 (stats are round 2's for tx): B's MAC known, all AF_XDP.
    assert_eq!(
        stats.tx_frames as usize, COUNT,
        "round 2 sent via AF_XDP: {stats:?}"
    );
    assert_eq!(stats.tx_kernel, 0, "{stats:?}");
    assert!(!xdp_attached(&net.a.ns), "program detached after drop");
    eprintln!("took {:?}", started.elapsed());
}

/// Not a test on its own: the child process of
/// `stale_program_of_a_killed_process_is_cleared_at_start`, which attaches
/// and then waits to be killed.
#[test]
#[ignore]
fn xdp_child_attach_and_wait() {
    let Ok(bind) = std::env::var("WEFT_XDP_CHILD_BIND") else {
        return;
    };
    let underlay = open_underlay(bind.parse().unwrap());
    println!("attached {}", underlay.mode());
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn stale_program_of_a_killed_process_is_cleared_at_start() {
    require_root!();
    let started = Instant::now();
    let net = Net::pair(1500);
    let a_addr = SocketAddr::new(net.a.underlay.into(), PORT);
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &net.a.ns])
        .arg(&exe)
        .args([
            "--exact",
            "xdp_child_attach_and_wait",
            "--ignored",
            "--nocapture",
        ])
        .env("WEFT_XDP_CHILD_BIND", a_addr.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let attached = wait_until(Duration::from_secs(10), || xdp_attached(&net.a.ns));
    if !attached {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child never attached its program");
    }
    // ip netns exec execs the command: this PID is the test binary.
    // SAFETY: kill of our own child by PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    assert!(
        xdp_attached(&net.a.ns),
        "a killed process leaves its program attached (what the start-up clears)"
    );

    let t = Instant::now();
    let mode = in_netns(&net.a.ns, move || {
        let underlay = open_underlay(a_addr);
        underlay.mode()
    });
    eprintln!("reopened in {:?} ({mode}) after kill -9", t.elapsed());
    assert!(
        !xdp_attached(&net.a.ns),
        "program detached after the clean drop"
    );
    // Host traffic unaffected afterwards.
    assert!(ping(&net.b.ns, &net.a.underlay.to_string()));
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn missing_interface_error_names_the_step() {
    require_root!();
    let net = Net::pair(1500);
    let a_addr = SocketAddr::new(net.a.underlay.into(), PORT);
    let err = in_netns(&net.a.ns, move || {
        let socket = UdpSocket::bind(a_addr).unwrap();
        let config = XdpConfig {
            interface: "nope0".to_string(),
            extra_ports: vec![],
            source: None,
        };
        XdpUnderlay::open(&config, socket)
            .err()
            .map(|e| e.to_string())
    });
    let err = err.expect("opening on a missing interface fails");
    assert!(
        err.contains("find the interface") && err.contains("nope0"),
        "{err}"
    );
}

fn datapath(ns: &str) -> (String, String) {
    let status = status_json(ns).unwrap_or_default();
    (
        status["datapath"].as_str().unwrap_or_default().to_string(),
        status["datapath_reason"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// weft itself in xdp mode: overlay ping and a 64 MiB checksummed TCP
/// transfer over AF_XDP while plain TCP between the underlay addresses runs
/// at the same time; kill -9 and restart comes back in xdp mode; a clean
/// exit leaves no XDP program.
#[test]
fn weft_in_xdp_mode_ping_transfer_restart_and_clean_exit() {
    require_root!();
    let started = Instant::now();
    let mut net = Net::pair(1500);
    net.start_both(&["--mode", "xdp"]);
    net.wait_established(Duration::from_secs(10));
    for h in [&net.a, &net.b] {
        let (dp, reason) = datapath(&h.ns);
        assert_eq!(
            dp,
            "xdp",
            "{}: datapath {dp} ({reason})\n{}",
            h.ns,
            h.logs()
        );
        assert!(reason.contains("AF_XDP native, copy"), "{reason}");
        assert!(xdp_attached(&h.ns), "{}: program attached", h.ns);
    }
    assert!(ping(&net.a.ns, &net.b.overlay_ip()), "overlay ping A -> B");
    assert!(ping(&net.b.ns, &net.a.overlay_ip()), "overlay ping B -> A");

    // Underlay TCP (not weft) in parallel with the overlay transfer.
    let (a_ns, b_ns, b_underlay) = (
        net.a.ns.clone(),
        net.b.ns.clone(),
        net.b.underlay.to_string(),
    );
    let plain =
        std::thread::spawn(move || tcp_transfer(&a_ns, &b_ns, &b_underlay, 5002, 8 << 20, 3));
    let total = 64 << 20;
    let t = Instant::now();
    let (sent, got, n) = tcp_transfer(
        &net.a.ns,
        &net.b.ns,
        &net.b.overlay_ip(),
        5001,
        total,
        0x5eed,
    );
    let took = t.elapsed();
    assert_eq!(n, total, "overlay bytes received");
    assert_eq!(sent, got, "overlay SHA-256");
    eprintln!(
        "64 MiB over the overlay in xdp mode: {took:?} ({:.0} Mbit/s)",
        total as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    let (psent, pgot, pn) = plain.join().expect("underlay TCP thread");
    assert_eq!(
        (pn, psent),
        (8 << 20, pgot),
        "underlay TCP beside the overlay"
    );

    // kill -9: the program stays; the restart clears it and comes up in xdp.
    net.a.kill9();
    assert!(
        xdp_attached(&net.a.ns),
        "killed weft left its program (what the restart must clear)"
    );
    net.a.start(&["--mode", "xdp"]);
    net.wait_established(Duration::from_secs(10));
    let (dp, reason) = datapath(&net.a.ns);
    assert_eq!(dp, "xdp", "after restart: {reason}\n{}", net.a.logs());
    assert!(
        wait_until(Duration::from_secs(5), || ping(
            &net.a.ns,
            &net.b.overlay_ip()
        )),
        "ping after restart"
    );

    for h in [&mut net.a, &mut net.b] {
        let st = h.terminate().expect("running");
        assert!(st.success(), "{}: clean exit {st:?}", h.ns);
        assert!(
            !xdp_attached(&h.ns),
            "{}: no XDP program after a clean exit",
            h.ns
        );
    }
    eprintln!("took {:?}", started.elapsed());
}

/// Jumbo MTU does not fit a UMEM frame: --mode xdp falls back to udp and
/// status says why (the step that failed).
#[test]
fn xdp_falls_back_to_udp_with_the_failing_step() {
    require_root!();
    let mut net = Net::pair(9000);
    net.start_both(&["--mode", "xdp"]);
    net.wait_established(Duration::from_secs(10));
    let (dp, reason) = datapath(&net.a.ns);
    assert_eq!(dp, "udp", "{reason}");
    assert!(
        reason.contains("check the MTU") && reason.contains("MTU 9000"),
        "{reason}"
    );
    assert!(!xdp_attached(&net.a.ns));
    assert!(ping(&net.a.ns, &net.b.overlay_ip()));
}

/// IPv6 underlay: the AF_XDP side resolves its neighbour through ND (first
/// datagram via the kernel), then sends and receives over AF_XDP with the
/// mandatory UDP checksum (the plain receiver's kernel verifies it).
#[test]
fn xdp_underlay_over_ipv6() {
    require_root!();
    let net = Net::pair(1500);
    let id = next_id() % 250 + 1;
    let a_ip = format!("2001:db8:{id:x}::1");
    let b_ip = format!("2001:db8:{id:x}::2");
    for (h, ip) in [(&net.a, &a_ip), (&net.b, &b_ip)] {
        run(
            "ip",
            &[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "u0",
                "nodad",
            ],
        );
    }
    let a_addr: SocketAddr = format!("[{a_ip}]:{PORT}").parse().unwrap();
    let b_addr: SocketAddr = format!("[{b_ip}]:{PORT}").parse().unwrap();
    const N: usize = 50;
    let (ready_tx, ready_rx) = mpsc::channel();
    let b = spawn_in_netns(&net.b.ns, move || {
        let socket = UdpSocket::bind(b_addr).expect("bind B v6");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while got < 2 * N {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if from == a_addr && buf[..n] == payload(got % N)[..] => got += 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for i in 0..N {
            socket.send_to(&payload(i), a_addr).unwrap();
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let (received, stats) = in_netns(&net.a.ns, move || {
        let mut underlay = open_underlay(a_addr);
        for i in 0..N {
            underlay.send_to(&payload(i), b_addr).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..N {
            underlay.send_to(&payload(i), b_addr).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while received < N && Instant::now() < deadline {
            match underlay.recv_from(&mut buf) {
                Ok((n, from)) if from == b_addr && buf[..n] == payload(received)[..] => {
                    received += 1
                }
                Ok(_) => {}
                Err(_) => poll_readable(&underlay.poll_fds(), Duration::from_millis(100)),
            }
        }
        (received, underlay.stats())
    });
    let b_got = b.join().unwrap();
    eprintln!("v6 stats: {stats:?}");
    assert_eq!(
        b_got,
        2 * N,
        "B got {b_got} of {} (UDP checksum must be valid for IPv6)",
        2 * N
    );
    assert_eq!(received, N, "A got {received} of {N}");
    assert_eq!(stats.rx_frames as usize, N, "{stats:?}");
    assert!(
        stats.tx_frames as usize >= N,
        "second batch via AF_XDP after ND: {stats:?}"
    );
}
