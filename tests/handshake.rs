//! The control port under attack: a replayed first handshake message gets
//! no byte back, idle connections from one address do not keep a real peer
//! out, and authentic-looking floods are rate limited before any
//! Diffie-Hellman work (see `src/mesh/admission.rs`).
//!
//! Topology (fresh namespaces per test): a switch namespace with a bridge,
//! and three hosts on it, underlay 198.19.N.0/24: A (.1) and B (.2) run
//! weft; E (.3 and .4, "eve") is the test's own namespace for proxies and
//! attackers. Nothing leaves these namespaces.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weft::mesh::admission::Timestamp;
use weft::mesh::control::push_frame;
use weft::noise::{Handshake, NetworkSecret, StaticKey};

/// Three hosts on one bridge: A and B (weft) and E (the test's namespace).
struct Lan {
    a: Host,
    b: Host,
    eve: Netns,
    _switch: Netns,
    subnet: u8,
}

impl Lan {
    fn new() -> Lan {
        let id = next_id();
        let base = format!("wths-{}-{id}", std::process::id());
        let subnet = (id % 250) as u8 + 1;
        // The switch first: dropped last, after the hosts (fields drop in order).
        let switch = new_switch(format!("{base}-sw"));
        let eve = Netns::new(format!("{base}-e"));
        let a = Host::new(
            format!("{base}-a"),
            Ipv4Addr::new(198, 19, subnet, 1),
            "10.40.0.1/16",
        );
        let b = Host::new(
            format!("{base}-b"),
            Ipv4Addr::new(198, 19, subnet, 2),
            "10.40.0.2/16",
        );
        for (ns, port) in [(&a.ns, "pa"), (&b.ns, "pb"), (&eve.name, "pe")] {
            plug_into_switch(ns, &switch, port);
        }
        for (ns, host) in [(&a.ns, 1), (&b.ns, 2), (&eve.name, 3), (&eve.name, 4)] {
            let addr = format!("198.19.{subnet}.{host}/24");
            run("ip", &["-n", ns, "addr", "add", &addr, "dev", "u0"]);
        }
        Lan {
            a,
            b,
            eve,
            _switch: switch,
            subnet,
        }
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.subnet, host)
    }

    fn control(&self, host: u8) -> SocketAddr {
        SocketAddr::new(self.addr(host).into(), PORT)
    }
}

/// Connects from `from` (an address of the calling thread's namespace).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from.into(), 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

/// Bytes that come back on `stream` until it closes (EOF or reset) or
/// `wait` passes.
fn bytes_back(stream: &mut TcpStream, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut total = 0;
    let mut buf = [0u8; 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // reset, or the wait is over
        }
    }
    total
}

/// B's drop counter `name`, polled until it is at least `min` (or 5 s).
fn wait_dropped(host: &Host, name: &str, min: u64) -> u64 {
    let mut seen = 0;
    wait_until(Duration::from_secs(5), || {
        seen = status_json(&host.ns).map_or(0, |s| dropped(&s, name));
        seen >= min
    });
    seen
}

/// A TCP relay in E between A and B that records the first frame A sends:
/// message 1 of a real handshake, which B answers.
struct CapturingProxy {
    stop: Arc<AtomicBool>,
    captured: mpsc::Receiver<(Vec<u8>, Arc<AtomicBool>)>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl CapturingProxy {
    fn start(eve: &str, listen: SocketAddr, upstream_from: Ipv4Addr, upstream: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, captured) = mpsc::channel();
        let flag = stop.clone();
        let acceptor = spawn_in_netns(eve, move || {
            let listener = TcpListener::bind(listen).expect("proxy listens in E");
            listener.set_nonblocking(true).expect("non-blocking");
            let started = Instant::now();
            let mut accepted = 0;
            // Bounded: at most 4 connections, 30 s.
            while !flag.load(Ordering::SeqCst)
                && accepted < 4
                && started.elapsed() < Duration::from_secs(30)
            {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                accepted += 1;
                let _ = down.set_nonblocking(false);
                let Ok(up) = connect_from(upstream_from, upstream) else {
                    continue;
                };
                let answered = Arc::new(AtomicBool::new(false));
                relay(down, up, tx.clone(), answered);
            }
        });
        CapturingProxy {
            stop,
            captured,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for CapturingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways; sends A's first frame on `captured`, and sets
/// `answered` once B wrote anything back. The copy threads end when the
/// sockets close (the hosts are torn down at the end of the test).
fn relay(
    down: TcpStream,
    up: TcpStream,
    captured: mpsc::Sender<(Vec<u8>, Arc<AtomicBool>)>,
    answered: Arc<AtomicBool>,
) {
    let (mut down_r, mut up_w) = (
        down.try_clone().expect("clone"),
        up.try_clone().expect("clone"),
    );
    let (mut up_r, mut down_w) = (up, down);
    let flag = answered.clone();
    std::thread::spawn(move || {
        let mut first = Vec::new();
        let mut sent = false;
        let mut buf = [0u8; 16384];
        while let Ok(n) = down_r.read(&mut buf) {
            if n == 0 || up_w.write_all(&buf[..n]).is_err() {
                break;
            }
            if !sent {
                first.extend_from_slice(&buf[..n]);
                if first.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([first[0], first[1]])) + 2;
                    if first.len() >= len {
                        first.truncate(len);
                        let _ = captured.send((first.clone(), flag.clone()));
                        sent = true;
                    }
                }
            }
        }
        let _ = up_w.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = up_r.read(&mut buf) {
            if n == 0 {
                break;
            }
            answered.store(true, Ordering::SeqCst);
            if down_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = down_w.shutdown(std::net::Shutdown::Both);
    });
}

/// A captured message 1 that B answered, replayed from another address,
/// gets no byte back: B closes without message 2 or any error frame, and
/// counts it as replayed.
#[test]
fn replayed_first_message_gets_no_byte_back() {
    require_root!();
    let mut lan = Lan::new();
    let proxy = CapturingProxy::start(&lan.eve.name, lan.control(3), lan.addr(3), lan.control(2));
    // A reaches B only through the proxy; B dials nobody.
    lan.a.peers = vec![lan.control(3).to_string()];
    lan.b.start(&["--mode", "udp"]);
    lan.a.start(&["--mode", "udp"]);

    let (message1, answered) = proxy
        .captured
        .recv_timeout(Duration::from_secs(15))
        .expect("A's first handshake message through the proxy");
    assert!(
        wait_until(Duration::from_secs(10), || answered.load(Ordering::SeqCst)),
        "B never answered A's real message 1"
    );

    // The same bytes, from E's other address, on a new connection.
    let (from, to) = (lan.addr(4), lan.control(2));
    let replay = message1.clone();
    let back = in_netns(&lan.eve.name, move || {
        let mut s = connect_from(from, to).expect("connect to B");
        s.write_all(&replay).expect("send the captured message 1");
        bytes_back(&mut s, Duration::from_secs(3))
    });
    assert_eq!(back, 0, "B answered a replayed message 1");
    assert_eq!(wait_dropped(&lan.b, "control_replayed", 1), 1);

    // Replayed again from the proxy's own address: still nothing.
    let (from, replay) = (lan.addr(3), message1);
    let back = in_netns(&lan.eve.name, move || {
        let mut s = connect_from(from, to).expect("connect to B");
        s.write_all(&replay).expect("send the captured message 1");
        bytes_back(&mut s, Duration::from_secs(3))
    });
    assert_eq!(back, 0, "B answered a replayed message 1");
    assert_eq!(wait_dropped(&lan.b, "control_replayed", 2), 2);
    let status = status_json(&lan.b.ns).expect("B's status");
    assert_eq!(
        dropped(&status, "control_rejected"),
        0,
        "a replay is counted as replayed only: {status:#}"
    );
    drop(proxy);
}

/// 200 idle connections from one address take at most a handful of
/// handshake slots (and lose them after the message-1 deadline): a real
/// peer connects and pings meanwhile.
#[test]
fn idle_connections_from_one_address_do_not_keep_a_peer_out() {
    require_root!();
    let mut lan = Lan::new();
    lan.b.start(&["--mode", "udp"]);
    assert!(
        wait_until(Duration::from_secs(10), || status_json(&lan.b.ns).is_some()),
        "B's weft did not start"
    );

    // E opens 200 connections to B and holds them until told to stop. A
    // connection B accepts and refuses at once (per-source bound, with a
    // reset) may be reset before `connect_timeout` has checked it: the
    // connect then reports ECONNRESET. That connection reached B as much as
    // the others, so it counts as opened; any other error does not.
    let (release, held) = mpsc::channel::<()>();
    let (from, to) = (lan.addr(3), lan.control(2));
    let (opened_tx, opened) = mpsc::channel();
    let idle = spawn_in_netns(&lan.eve.name, move || {
        let mut streams = Vec::new();
        let (mut reset, mut errors) = (0, Vec::new());
        for _ in 0..200 {
            match connect_from(from, to) {
                Ok(s) => streams.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => reset += 1,
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors.dedup();
        let _ = opened_tx.send((streams.len() + reset, errors));
        let _ = held.recv_timeout(Duration::from_secs(60));
        drop(streams);
    });
    let (opened, errors) = opened
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or((0, Vec::new()));
    assert!(
        opened >= 150,
        "only {opened} of 200 idle connections reached B; other errors: {errors:?}"
    );

    lan.a.peers = vec![lan.control(2).to_string()];
    lan.a.start(&["--mode", "udp"]);
    let established = wait_until(Duration::from_secs(20), || {
        status_json(&lan.a.ns)
            .and_then(|s| first_connection(&s).map(|c| c["state"] == "established"))
            .unwrap_or(false)
    });
    assert!(
        established,
        "A did not get through: {:?}",
        status_json(&lan.a.ns)
    );
    assert!(
        wait_until(Duration::from_secs(10), || ping(&lan.a.ns, "10.40.0.2")),
        "no ping from A to B while E holds 200 idle connections"
    );

    let per_source = wait_dropped(&lan.b, "control_per_source", 150);
    assert!(per_source >= 150, "per-source refusals: {per_source}");
    // The few that were let in lose their slot after the 2 s deadline.
    let slow = wait_dropped(&lan.b, "control_slow", 1);
    assert!(
        slow >= 1,
        "idle connections never hit the message-1 deadline"
    );
    let _ = release.send(());
    let _ = idle.join();
}

/// Authentic, fresh first messages from one address (an insider with the
/// secret) get message 2 only at the token bucket's pace; a stale one gets
/// nothing; the real peer's traffic goes on.
#[test]
fn authentic_handshake_flood_is_rate_limited() {
    require_root!();
    let mut lan = Lan::new();
    lan.a.peers = vec![lan.control(2).to_string()];
    lan.b.start(&["--mode", "udp"]);
    lan.a.start(&["--mode", "udp"]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            status_json(&lan.a.ns)
                .and_then(|s| first_connection(&s).map(|c| c["state"] == "established"))
                .unwrap_or(false)
        }),
        "A and B did not connect"
    );

    let secret =
        NetworkSecret::from_file(&lan.b.path("secret")).expect("the hosts' network secret");
    let key = StaticKey::generate();
    let message = move |wall: Duration| {
        let body = Handshake::initiator(&key, &secret)
            .and_then(|mut hs| hs.write(Timestamp::from_wall(wall).as_bytes()))
            .expect("message 1");
        let mut frame = Vec::new();
        push_frame(&mut frame, &body);
        frame
    };
    let (from, to) = (lan.addr(3), lan.control(2));
    let (answered, elapsed, stale_back) = in_netns(&lan.eve.name, move || {
        let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let started = Instant::now();
        let mut held = Vec::new();
        // 60 connections in about 300 ms, each held open (at most 8 at a
        // time: the per-source bound), each checked for message 2.
        let mut answered = 0;
        for _ in 0..60 {
            if let Ok(mut s) = connect_from(from, to) {
                if s.write_all(&message(now())).is_ok() {
                    held.push(s);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
            if held.len() >= 4 {
                for mut s in held.drain(..) {
                    answered += usize::from(bytes_back(&mut s, Duration::from_millis(20)) > 0);
                }
            }
        }
        for mut s in held {
            answered += usize::from(bytes_back(&mut s, Duration::from_millis(20)) > 0);
        }
        let elapsed = started.elapsed();
        // The flood emptied this source's bucket, and a connection from an
        // exhausted source is refused before a byte is read (counted as
        // rate-limited): wait for tokens (20 per second) so that the stale
        // message below is judged on its timestamp.
        std::thread::sleep(Duration::from_millis(600));
        // Two minutes old: outside the 30 s window.
        let mut s = connect_from(from, to).expect("connect to B");
        s.write_all(&message(now() - Duration::from_secs(120)))
            .expect("send");
        let stale_back = bytes_back(&mut s, Duration::from_secs(2));
        (answered, elapsed, stale_back)
    });
    // Burst 5 plus 20 per second.
    let allowed = 5 + (elapsed.as_secs_f64() * 20.0).ceil() as usize + 1;
    assert!(answered >= 5, "the burst should be answered: {answered}");
    assert!(
        answered <= allowed,
        "{answered} answered in {elapsed:?}, at most {allowed} allowed"
    );
    assert_eq!(stale_back, 0, "a stale message 1 was answered");
    assert!(wait_dropped(&lan.b, "control_rate_limited", 1) >= 1);
    assert!(wait_dropped(&lan.b, "control_stale", 1) >= 1);
    assert!(ping(&lan.a.ns, "10.40.0.2"), "the real peer lost its link");
    let text = ns_exec(&lan.b.ns, &[WEFT, "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Refused:") && text.contains("rate-limited="),
        "{text}"
    );
}
