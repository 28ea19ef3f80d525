//! Two links wired back to back in memory: the whole control protocol
//! (handshake, hellos, heartbeats, rekey, failures) without sockets.

use super::admission::{Admission, Refusal, Timestamp};
use super::control::{CipherChoice, Hello, LocalDevice, PROTOCOL_VERSION};
use super::link::{Direction, Link, LinkConfig, LinkState, Output, Timers};
use crate::noise::session::REJECT_AFTER_TIME;
use crate::noise::{NetworkSecret, Session, StaticKey};
use crate::wire::sleeve;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(secret: &[u8], vni: u32, timers: Timers) -> Arc<LinkConfig> {
    Arc::new(LinkConfig {
        key: StaticKey::generate(),
        secret: NetworkSecret::from_bytes(secret, "test").unwrap(),
        hello: Hello {
            version: PROTOCOL_VERSION,
            name: "sim".into(),
            overlay: vec!["10.40.0.1/16".into()],
            vni,
            udp_port: 6783,
            device: LocalDevice::Tun,
            cipher: CipherChoice::Auto,
            aes_hw: true,
            session_index: 0,
            overlay_mtu: 1430,
            fastdp_port: None,
            cert: None,
        },
        timers,
        underlay_mtu: 1500,
        ipv6_underlay: false,
        indices: crate::noise::IndexRegistry::new(),
    })
}

struct Side {
    link: Link,
    addr: SocketAddr,
    sessions: HashMap<u32, Arc<Session>>,
    closed: Option<String>,
    established: bool,
    ready: bool,
    probes: Vec<usize>,
    path_mtu: Option<u16>,
    fastdp_acks: Vec<u64>,
    data_path_down: Option<String>,
}

/// Moves outputs from one side to the other; drops datagrams when
/// `udp_works` is false. Returns (progressed, datagrams delivered).
fn drain(from: &mut Side, to: &mut Side, now: Instant, udp_works: bool) -> (bool, usize) {
    let (mut progressed, mut delivered) = (false, 0);
    while let Some(out) = from.link.poll_output() {
        progressed = true;
        match out {
            Output::Control(bytes) => to.link.on_control_bytes(&bytes, now),
            Output::Datagram { mut bytes, .. } => {
                if !udp_works {
                    continue;
                }
                let repr =
                    sleeve::Repr::parse(&sleeve::Packet::new_checked(&bytes[..]).unwrap()).unwrap();
                let session = to
                    .sessions
                    .get(&repr.receiver_index)
                    .cloned()
                    .expect("known index");
                let opened = session.open_tracked(repr.counter, &mut bytes).unwrap();
                let n = opened.len;
                to.link
                    .on_authenticated(repr.receiver_index, from.addr, opened.newest, now);
                to.link.on_heartbeat(
                    &bytes[sleeve::HEADER_LEN..sleeve::HEADER_LEN + n],
                    from.addr,
                    now,
                );
                delivered += 1;
            }
            Output::SessionUp(s) => {
                from.sessions.insert(s.local_index, s);
            }
            Output::SessionDown(i) => {
                from.sessions.remove(&i);
            }
            Output::PeerReady { .. } => from.ready = true,
            Output::Probe { bytes, .. } => {
                if !udp_works {
                    continue;
                }
                let mut bytes = bytes;
                let len = bytes.len();
                let repr =
                    sleeve::Repr::parse(&sleeve::Packet::new_checked(&bytes[..]).unwrap()).unwrap();
                let session = to
                    .sessions
                    .get(&repr.receiver_index)
                    .cloned()
                    .expect("known index");
                let n = session.open(repr.counter, &mut bytes).unwrap();
                to.link
                    .on_pmtu_probe(&bytes[sleeve::HEADER_LEN..sleeve::HEADER_LEN + n], len);
                from.probes.push(len);
            }
            Output::PathMtu(v) => from.path_mtu = Some(v),
            Output::FastdpAck(seq) => from.fastdp_acks.push(seq),
            Output::Established => {
                from.established = true;
                from.data_path_down = None;
            }
            Output::DataPathDown(r) => from.data_path_down = Some(r),
            Output::Gossip(_) | Output::Relay(_) => {}
            Output::FirstMessage { .. } => from.link.admit(),
            Output::Close(r) => {
                from.closed = Some(r);
                to.link.on_control_closed("peer closed");
            }
        }
    }
    (progressed, delivered)
}

/// Runs both sides until neither has output.
fn pump(a: &mut Side, b: &mut Side, now: Instant, udp_works: bool) -> usize {
    let mut delivered = 0;
    loop {
        let (p1, d1) = drain(a, b, now, udp_works);
        let (p2, d2) = drain(b, a, now, udp_works);
        delivered += d1 + d2;
        if !p1 && !p2 {
            return delivered;
        }
    }
}

fn sides(ca: Arc<LinkConfig>, cb: Arc<LinkConfig>, now: Instant) -> (Side, Side) {
    let a_addr: SocketAddr = "198.18.0.1:6783".parse().unwrap();
    let b_addr: SocketAddr = "198.18.0.2:6783".parse().unwrap();
    let mk = |link, addr| Side {
        link,
        addr,
        sessions: HashMap::new(),
        closed: None,
        established: false,
        ready: false,
        probes: vec![],
        path_mtu: None,
        fastdp_acks: vec![],
        data_path_down: None,
    };
    (
        mk(
            Link::new(Direction::Outbound, b_addr, ca, now, WALL),
            a_addr,
        ),
        mk(Link::new(Direction::Inbound, a_addr, cb, now, WALL), b_addr),
    )
}

#[test]
fn handshake_hello_and_heartbeats_establish() {
    let t0 = Instant::now();
    let (ca, cb) = (
        cfg(b"s", 1, Timers::default()),
        cfg(b"s", 1, Timers::default()),
    );
    let kb = cb.key.public();
    let (mut a, mut b) = sides(ca, cb, t0);
    pump(&mut a, &mut b, t0, true);
    assert!(a.ready && b.ready);
    assert_eq!(a.link.remote_static(), Some(&kb));
    a.link.poll(t0);
    b.link.poll(t0);
    assert!(pump(&mut a, &mut b, t0, true) >= 2);
    assert!(
        a.established && b.established,
        "{:?} {:?}",
        a.link.state(),
        b.link.state()
    );
    assert_eq!(b.link.endpoint(), Some(a.addr));
}

#[test]
fn fastdp_heartbeat_acks_travel_over_the_control_connection() {
    let t0 = Instant::now();
    let (mut a, mut b) = sides(
        cfg(b"s", 1, Timers::default()),
        cfg(b"s", 1, Timers::default()),
        t0,
    );
    pump(&mut a, &mut b, t0, true);
    assert!(a.ready && b.ready);
    // B saw A's fastdp heartbeat 7 arrive through its VXLAN vport.
    b.link.send_fastdp_ack(7);
    pump(&mut a, &mut b, t0, false);
    assert_eq!(a.fastdp_acks, vec![7], "the ack needs no UDP");
    assert!(b.fastdp_acks.is_empty());
}

#[test]
fn wrong_secret_never_gets_a_session() {
    let t0 = Instant::now();
    let (mut a, mut b) = sides(
        cfg(b"one", 1, Timers::default()),
        cfg(b"two", 1, Timers::default()),
        t0,
    );
    pump(&mut a, &mut b, t0, true);
    assert!(a.sessions.is_empty() && b.sessions.is_empty());
    assert!(
        b.closed
            .as_deref()
            .unwrap()
            .contains("different network secret"),
        "{:?}",
        b.closed
    );
    assert!(a.link.is_closed());
}

#[test]
fn vni_mismatch_is_explained() {
    let t0 = Instant::now();
    let (mut a, mut b) = sides(
        cfg(b"s", 1, Timers::default()),
        cfg(b"s", 2, Timers::default()),
        t0,
    );
    pump(&mut a, &mut b, t0, true);
    let reason = a.closed.or(b.closed).unwrap();
    assert!(
        reason.contains("VNI mismatch") || reason.contains("peer closed"),
        "{reason}"
    );
}

#[test]
fn silent_udp_marks_the_data_path_down_with_reason_after_six_intervals() {
    let t0 = Instant::now();
    let (mut a, mut b) = sides(
        cfg(b"s", 1, Timers::default()),
        cfg(b"s", 1, Timers::default()),
        t0,
    );
    pump(&mut a, &mut b, t0, false);
    let mut now = t0;
    for _ in 0..5 {
        now += Duration::from_millis(500);
        a.link.poll(now);
        pump(&mut a, &mut b, now, false);
    }
    assert!(a.data_path_down.is_none(), "not yet after 2.5 s");
    now += Duration::from_millis(600);
    a.link.poll(now);
    pump(&mut a, &mut b, now, false);
    let reason = a.data_path_down.clone().unwrap();
    assert!(reason.contains("no heartbeat reply over UDP"), "{reason}");
    // The control connection still answers: the link stays, heartbeats
    // keep probing, and when UDP works again the data path comes back.
    for _ in 0..20 {
        now += Duration::from_millis(500);
        a.link.poll(now);
        b.link.poll(now);
        pump(&mut a, &mut b, now, false);
    }
    assert!(a.closed.is_none() && !a.link.is_closed(), "{:?}", a.closed);
    now += Duration::from_millis(500);
    a.link.poll(now);
    b.link.poll(now);
    pump(&mut a, &mut b, now, true);
    assert!(a.data_path_down.is_none() && a.link.data_path_works());
}

#[test]
fn silence_on_both_channels_closes_the_link() {
    let t0 = Instant::now();
    let (mut a, mut b) = sides(
        cfg(b"s", 1, Timers::default()),
        cfg(b"s", 1, Timers::default()),
        t0,
    );
    pump(&mut a, &mut b, t0, true);
    a.link.poll(t0);
    b.link.poll(t0);
    pump(&mut a, &mut b, t0, true);
    assert!(a.established);
    // From now on nothing at all reaches b (b is gone without a FIN).
    let mut now = t0;
    for _ in 0..200 {
        now += Duration::from_millis(500);
        a.link.poll(now);
        while a.link.poll_output().is_some() {}
        if a.link.is_closed() {
            break;
        }
    }
    let LinkState::Failed(reason) = a.link.state().clone() else {
        panic!("still {:?}", a.link.state());
    };
    assert!(reason.starts_with("peer down"), "{reason}");
    // Six established intervals to notice the data path, six more for control.
    assert!(now - t0 >= Duration::from_secs(60), "{:?}", now - t0);
    assert!(now - t0 <= Duration::from_secs(70), "{:?}", now - t0);
}

#[test]
fn rekey_swaps_sessions_without_loss() {
    let timers = Timers {
        rekey_after: Duration::from_secs(5),
        ..Timers::default()
    };
    let t0 = Instant::now();
    let (mut a, mut b) = sides(cfg(b"s", 1, timers.clone()), cfg(b"s", 1, timers), t0);
    pump(&mut a, &mut b, t0, true);
    a.link.poll(t0);
    b.link.poll(t0);
    pump(&mut a, &mut b, t0, true);
    assert!(a.established && b.established);
    let first = a.link.sending_session().unwrap().local_index;
    let before_b = b.link.sending_session().unwrap().remote_index;
    // A datagram sealed on the old epoch but still in flight.
    let old = a.link.sending_session().unwrap().clone();
    let mut in_flight = vec![0u8; sleeve::HEADER_LEN + 4 + 16];
    let n = old
        .seal(sleeve::MessageType::Data, &mut in_flight, 4)
        .unwrap();
    in_flight.truncate(n);

    let t1 = t0 + Duration::from_secs(6);
    a.link.poll(t1);
    b.link.poll(t1);
    pump(&mut a, &mut b, t1, true);
    assert!(
        a.closed.is_none() && b.closed.is_none(),
        "{:?} {:?}",
        a.closed,
        b.closed
    );
    let after = a.link.sending_session().unwrap().local_index;
    assert_ne!(first, after, "initiator moved to the new epoch");
    assert_ne!(
        b.link.sending_session().unwrap().remote_index,
        before_b,
        "responder promoted the new epoch"
    );
    // The old epoch still opens on the receiver.
    let repr = sleeve::Repr::parse(&sleeve::Packet::new_checked(&in_flight[..]).unwrap()).unwrap();
    let s = b
        .sessions
        .get(&repr.receiver_index)
        .expect("previous session kept");
    assert!(s.open(repr.counter, &mut in_flight).is_ok());
    assert!(!a.link.is_closed() && !b.link.is_closed());
}

#[test]
fn path_mtu_is_verified_after_establishment() {
    let t0 = Instant::now();
    let (mut a, mut b) = sides(
        cfg(b"s", 1, Timers::default()),
        cfg(b"s", 1, Timers::default()),
        t0,
    );
    pump(&mut a, &mut b, t0, true);
    a.link.poll(t0);
    b.link.poll(t0);
    pump(&mut a, &mut b, t0, true);
    assert!(a.established);
    let t1 = t0 + Duration::from_millis(10);
    a.link.poll(t1);
    pump(&mut a, &mut b, t1, true);
    assert_eq!(a.path_mtu, Some(1500));
    assert_eq!(a.link.path_mtu(), Some(1500));
    // The probe's UDP payload plus UDP and IPv4 headers is exactly the MTU.
    assert_eq!(a.probes, vec![1500 - 28]);
}

/// Wall-clock time of the simulations (since the Unix epoch).
const WALL: Duration = Duration::from_secs(1_790_000_000);

/// What an inbound link asked the router to check about message 1.
type FirstMessage = ([u8; 32], Option<Timestamp>);

/// Drains a link's outputs: the control bytes it wrote, the first-message
/// check it asked for, and whether it closed.
fn outputs_of(link: &mut Link) -> (Vec<u8>, Option<FirstMessage>, bool) {
    let (mut bytes, mut first, mut closed) = (Vec::new(), None, false);
    while let Some(out) = link.poll_output() {
        match out {
            Output::Control(b) => bytes.extend_from_slice(&b),
            Output::FirstMessage {
                ephemeral,
                timestamp,
            } => first = Some((ephemeral, timestamp)),
            Output::Close(_) => closed = true,
            _ => {}
        }
    }
    (bytes, first, closed)
}

#[test]
fn a_replayed_first_message_gets_no_byte_back() {
    let t0 = Instant::now();
    let (ca, cb) = (
        cfg(b"s", 1, Timers::default()),
        cfg(b"s", 1, Timers::default()),
    );
    let from_a: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let from_eve: SocketAddr = "198.18.0.66:40000".parse().unwrap();
    let mut a = Link::new(Direction::Outbound, from_a, ca, t0, WALL);
    let (message1, _, _) = outputs_of(&mut a);
    assert!(!message1.is_empty());
    let mut admission = Admission::new();

    // The real connection: message 1 carries A's timestamp; admitted, B answers.
    let mut b = Link::new(Direction::Inbound, from_a, cb.clone(), t0, WALL);
    b.on_control_bytes(&message1, t0);
    let (written, first, closed) = outputs_of(&mut b);
    assert!(written.is_empty() && !closed, "nothing before admission");
    let (ephemeral, timestamp) = first.expect("B asks about message 1");
    assert_eq!(timestamp, Some(Timestamp::from_wall(WALL)));
    assert_eq!(
        admission.check_first_message(from_a.ip(), &ephemeral, timestamp, false, t0, WALL),
        Ok(())
    );
    b.admit();
    let (message2, _, _) = outputs_of(&mut b);
    assert!(!message2.is_empty(), "message 2 written once admitted");

    // The same bytes from another address, a second later: refused, and
    // the refused link writes nothing at all.
    let later = WALL + Duration::from_secs(1);
    let mut replayed = Link::new(Direction::Inbound, from_eve, cb.clone(), t0, later);
    replayed.on_control_bytes(&message1, t0);
    let (written, first, _) = outputs_of(&mut replayed);
    assert!(written.is_empty());
    let (ephemeral, timestamp) = first.expect("authentic message 1");
    let refusal = admission
        .check_first_message(from_eve.ip(), &ephemeral, timestamp, false, t0, later)
        .unwrap_err();
    assert_eq!(refusal, Refusal::Replayed);
    replayed.refuse(refusal.describe());
    let (written, _, closed) = outputs_of(&mut replayed);
    assert!(written.is_empty(), "a refused replay gets no byte");
    assert!(closed && replayed.is_closed());

    // More bytes before admission are a protocol violation, not a reply.
    let mut eager = Link::new(Direction::Inbound, from_eve, cb, t0, later);
    let mut twice = message1.clone();
    twice.extend_from_slice(&message1);
    eager.on_control_bytes(&twice, t0);
    let (written, _, closed) = outputs_of(&mut eager);
    assert!(written.is_empty() && closed && !eager.awaiting_first_message());
}

/// Two established sides; `ta`/`tb` are each side's timers.
fn established(ta: Timers, tb: Timers, t0: Instant) -> (Side, Side) {
    let (mut a, mut b) = sides(cfg(b"s", 1, ta), cfg(b"s", 1, tb), t0);
    pump(&mut a, &mut b, t0, true);
    a.link.poll(t0);
    b.link.poll(t0);
    pump(&mut a, &mut b, t0, true);
    assert!(a.established && b.established);
    a.established = false;
    b.established = false;
    (a, b)
}

/// Both links open and each seals for the other's current session.
fn paired_sessions(a: &Side, b: &Side) -> (Arc<Session>, Arc<Session>) {
    assert!(
        a.closed.is_none() && b.closed.is_none(),
        "{:?} {:?}",
        a.closed,
        b.closed
    );
    let (sa, sb) = (
        a.link.sending_session().unwrap().clone(),
        b.link.sending_session().unwrap().clone(),
    );
    assert_eq!(sa.remote_index, sb.local_index, "a seals for b's session");
    assert_eq!(sb.remote_index, sa.local_index, "b seals for a's session");
    (sa, sb)
}

fn no_rekey() -> Timers {
    Timers {
        rekey_after: Duration::from_secs(100_000),
        heartbeat_established: Duration::from_secs(20),
        ..Timers::default()
    }
}

#[test]
fn keys_are_not_used_180_s_after_their_handshake_without_a_rekey() {
    let t0 = Instant::now();
    let (mut a, mut b) = established(no_rekey(), no_rekey(), t0);
    let old = a.link.sending_session().unwrap().clone();
    let old_index = old.local_index;
    // The link asks to be woken when the keys expire.
    assert!(a.link.next_wakeup().unwrap() <= t0 + REJECT_AFTER_TIME);
    let t1 = t0 + Duration::from_secs(179);
    a.link.poll(t1);
    b.link.poll(t1);
    pump(&mut a, &mut b, t1, true);
    assert!(a.link.sending_session().is_some());
    let t2 = t0 + REJECT_AFTER_TIME;
    a.link.poll(t2);
    b.link.poll(t2);
    // Both sides retired the expired session: nothing seals with it and the
    // driver forgets its index, so nothing opens with it either.
    let mut downs = Vec::new();
    while let Some(o) = a.link.poll_output() {
        match o {
            Output::SessionDown(i) => {
                a.sessions.remove(&i);
                downs.push(i)
            }
            Output::Datagram { .. } => panic!("sent a datagram with expired keys"),
            // The rekey this side starts at once.
            Output::Control(bytes) => b.link.on_control_bytes(&bytes, t2),
            _ => {}
        }
    }
    assert_eq!(downs, vec![old_index]);
    assert!(a.link.sending_session().is_none());
    // A rekey brings the link back (either side may start it: no current
    // session is reason enough).
    pump(&mut a, &mut b, t2, true);
    assert!(!a.sessions.contains_key(&old_index));
    assert!(
        !b.sessions.contains_key(&old.remote_index),
        "b retired it too"
    );
    let t3 = t2 + Duration::from_millis(1);
    a.link.poll(t3);
    b.link.poll(t3);
    pump(&mut a, &mut b, t3, true);
    let new = a.link.sending_session().expect("rekeyed");
    assert!(!new.expired(t3));
    assert_ne!(new.local_index, old_index);
    assert!(
        a.closed.is_none() && b.closed.is_none(),
        "{:?} {:?}",
        a.closed,
        b.closed
    );
}

#[test]
fn the_connection_responder_rekeys_when_the_initiator_does_not() {
    let t0 = Instant::now();
    // a (outbound) would rekey only after 100000 s; b (inbound) after 60 s
    // plus a handshake timeout.
    let tb = Timers {
        rekey_after: Duration::from_secs(60),
        ..no_rekey()
    };
    let (mut a, mut b) = established(no_rekey(), tb.clone(), t0);
    let first_b = b.link.sending_session().unwrap().local_index;
    let due = t0 + tb.rekey_after + tb.handshake_timeout;
    assert!(b.link.next_wakeup().unwrap() <= due);
    b.link.poll(due - Duration::from_millis(1));
    assert!(!std::iter::from_fn(|| b.link.poll_output()).any(|o| matches!(o, Output::Control(_))));
    b.link.poll(due);
    a.link.poll(due);
    pump(&mut a, &mut b, due, true);
    let (_, sb) = paired_sessions(&a, &b);
    assert_ne!(
        sb.local_index, first_b,
        "the responder moved to the new epoch"
    );
    // Heartbeats keep flowing on the new epoch.
    let t1 = due + Duration::from_secs(20);
    a.link.poll(t1);
    b.link.poll(t1);
    assert!(pump(&mut a, &mut b, t1, true) >= 2);
}

#[test]
fn simultaneous_rekeys_settle_on_the_smaller_keys_initiation() {
    let t0 = Instant::now();
    // Both due at the same moment: a at 70 s, b at 60 + 10 s.
    let ta = Timers {
        rekey_after: Duration::from_secs(70),
        ..no_rekey()
    };
    let tb = Timers {
        rekey_after: Duration::from_secs(60),
        ..no_rekey()
    };
    let (mut a, mut b) = established(ta, tb, t0);
    let a_smaller = a.link.remote_static().unwrap() > b.link.remote_static().unwrap();
    let t1 = t0 + Duration::from_secs(70);
    a.link.poll(t1);
    b.link.poll(t1);
    // Both RekeyInits are in flight before either arrives.
    pump(&mut a, &mut b, t1, true);
    let (sa, _) = paired_sessions(&a, &b);
    assert_eq!(sa.established_at, t1);
    // One new epoch, not two: each side holds the new session and the old one.
    assert_eq!(a.sessions.len(), 2, "{:?}", a.sessions.keys());
    assert_eq!(b.sessions.len(), 2, "{:?}", b.sessions.keys());
    // The winner's pending rekey completed; the loser has none left over:
    // nothing further is due before the next rekey time.
    let (winner, loser) = if a_smaller { (&a, &b) } else { (&b, &a) };
    assert!(winner.link.next_wakeup().unwrap() > t1);
    assert!(loser.link.next_wakeup().unwrap() > t1);
    // The data path works on the new epoch both ways.
    let t2 = t1 + Duration::from_secs(20);
    a.link.poll(t2);
    b.link.poll(t2);
    assert!(pump(&mut a, &mut b, t2, true) >= 2);
}

#[test]
fn the_endpoint_moves_only_on_the_newest_counter() {
    let t0 = Instant::now();
    let (a, mut b) = established(no_rekey(), no_rekey(), t0);
    assert_eq!(b.link.endpoint(), Some(a.addr));
    let seal = |n: usize| -> Vec<Vec<u8>> {
        let s = a.link.sending_session().unwrap();
        (0..n)
            .map(|_| {
                let mut d = vec![0u8; sleeve::HEADER_LEN + 4 + 16];
                let len = s.seal(sleeve::MessageType::Data, &mut d, 4).unwrap();
                d.truncate(len);
                d
            })
            .collect()
    };
    let deliver = |b: &mut Side, mut d: Vec<u8>, from: SocketAddr| {
        let repr = sleeve::Repr::parse(&sleeve::Packet::new_checked(&d[..]).unwrap()).unwrap();
        let session = b.sessions[&repr.receiver_index].clone();
        let opened = session.open_tracked(repr.counter, &mut d).unwrap();
        b.link
            .on_authenticated(repr.receiver_index, from, opened.newest, t0);
    };
    let roamed: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let ds = seal(3);
    // The newest datagram comes from the peer's new address: follow it.
    deliver(&mut b, ds[1].clone(), roamed);
    assert_eq!(b.link.endpoint(), Some(roamed));
    // An older one, delayed on the old path, arrives after: authentic and
    // accepted, but it does not move the endpoint back.
    deliver(&mut b, ds[0].clone(), a.addr);
    assert_eq!(b.link.endpoint(), Some(roamed));
    // The next newest from the old address moves it (the peer roamed back).
    deliver(&mut b, ds[2].clone(), a.addr);
    assert_eq!(b.link.endpoint(), Some(a.addr));
}

#[test]
fn link_indices_come_from_the_shared_registry() {
    let t0 = Instant::now();
    let registry = crate::noise::IndexRegistry::new();
    let with = |registry: &crate::noise::IndexRegistry| {
        let mut c = Arc::try_unwrap(cfg(b"s", 1, no_rekey())).unwrap();
        c.indices = registry.clone();
        Arc::new(c)
    };
    // Both sides share one registry, as links of one host do.
    let (mut a, mut b) = sides(with(&registry), with(&registry), t0);
    assert_eq!(registry.len(), 2, "each link reserved its first index");
    pump(&mut a, &mut b, t0, true);
    let ia = a.link.sending_session().unwrap().local_index;
    let ib = b.link.sending_session().unwrap().local_index;
    assert_ne!(ia, ib);
    assert!(registry.contains(ia) && registry.contains(ib));
    // A link that never got a hello gives its index back when dropped.
    let lone = Link::new(Direction::Outbound, a.addr, with(&registry), t0, WALL);
    assert_eq!(registry.len(), 3);
    drop(lone);
    assert_eq!(registry.len(), 2);
}
