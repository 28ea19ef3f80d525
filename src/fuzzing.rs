//! Fuzz targets: one function per target, shared by the libFuzzer targets
//! in `fuzz/fuzz_targets/` and the stable-toolchain driver
//! `fuzz/src/fuzz_stable.rs`, with the seed inputs each starts from.
//!
//! Every target takes arbitrary bytes and must never panic; the asserts in
//! here are invariants, so a failed one is a bug found. Not part of the
//! public API.

use crate::datapath::xdp::frame;
use crate::mesh::claims::{self, AnnouncedClaim, Claim, IpPrefix};
use crate::mesh::control::{self, CipherChoice, ControlMessage, Hello, LocalDevice};
use crate::mesh::e2e::E2eMessage;
use crate::mesh::fdb::{self, Location, Mac};
use crate::mesh::link::{Direction, Link, LinkConfig, Timers};
use crate::mesh::peer::{Neighbour, PeerId};
use crate::noise::handshake::DataKeys;
use crate::noise::replay::{ReplayWindow, WINDOW_SIZE};
use crate::noise::session::{OpenError, Session};
use crate::noise::{CipherKind, NetworkSecret, StaticKey};
use crate::router::l2::{Egress, L2Switch};
use crate::wire::{gossip, sleeve};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A fuzz target: arbitrary bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name. The `certificates` target (certificate parsing
/// and verification) joins this list with the certificate format.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_parsers", wire_parsers),
    ("control", control),
    ("gossip", gossip),
    ("session_open", session_open),
    ("replay_window", replay_window),
    ("xdp_frame", xdp_frame),
    ("l2_switch", l2_switch),
    ("certificates", certificates),
    ("kube_nodes", kube_nodes),
    ("odp_attrs", odp_attrs),
];

/// Wall-clock time the fuzzed links and certificates see (since the Unix
/// epoch): fixed, so runs are reproducible.
const FUZZ_WALL: Duration = Duration::from_secs(1_800_000_000);

/// MAC quota of the fuzzed L2 switch.
const FUZZ_MAC_QUOTA: usize = 16;

/// A fixed CA (Ed25519 key from a fixed seed) and a host certificate it
/// signed, for the `certificates` target and the gossip seeds.
struct FuzzCa {
    trust: crate::identity::Trust,
    ca_key: [u8; 32],
    ca_cert: crate::identity::Certificate,
    host_cert: crate::identity::Certificate,
}

fn fuzz_ca() -> &'static FuzzCa {
    use crate::identity::cert::{CertBody, Fingerprint, InterfaceAddr, MacPolicy};
    use crate::identity::{Certificate, Trust};
    use ring::signature::KeyPair as _;
    static CA: OnceLock<FuzzCa> = OnceLock::new();
    CA.get_or_init(|| {
        let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[0x5a; 32])
            .expect("a 32-byte seed is an Ed25519 key");
        let mut ca_key = [0u8; 32];
        ca_key.copy_from_slice(key.public_key().as_ref());
        let secs = FUZZ_WALL.as_secs();
        let ca = Certificate::sign(
            CertBody {
                is_ca: true,
                name: "fuzz-ca".into(),
                public_key: ca_key,
                not_before: secs - 1000,
                not_after: secs + 1_000_000,
                issuer: Fingerprint::default(),
                overlay: vec![],
                subnets: vec![],
                macs: MacPolicy::List(vec![]),
            },
            &key,
        );
        let host_cert = Certificate::sign(
            CertBody {
                is_ca: false,
                name: "host-a".into(),
                public_key: [0xa1; 32],
                not_before: secs - 10,
                not_after: secs + 1000,
                issuer: ca.fingerprint(),
                overlay: vec![InterfaceAddr {
                    addr: "10.40.0.1".parse().expect("literal"),
                    len: 16,
                }],
                subnets: vec![
                    IpPrefix::new("10.50.0.0".parse().expect("literal"), 24).expect("valid prefix")
                ],
                macs: MacPolicy::List(vec![crate::wire::ethernet::MacAddr([2, 0, 0, 0, 0, 1])]),
            },
            &key,
        );
        FuzzCa {
            trust: Trust::new(vec![ca.clone()]).expect("a CA certificate"),
            ca_key,
            ca_cert: ca,
            host_cert,
        }
    })
}

/// Network certificates: the parser and every check on arbitrary bytes
/// (see [`crate::wire::totality::exercise_cert`]), then against a fixed
/// CA. Invariants: whatever the CA accepts is signed by the CA's key and
/// re-encodes to the input, covers its own overlay addresses, and passes
/// or fails `verify_peer` for its own key exactly as `check_current` says.
/// Text inputs also go to the armor and revocation-list parsers.
pub fn certificates(data: &[u8]) {
    use crate::identity::Certificate;
    crate::wire::totality::exercise_cert(data);
    let ca = fuzz_ca();
    if let Ok(cert) = ca.trust.authenticate(data) {
        assert!(
            cert.signed_by(&ca.ca_key),
            "accepted without the CA's signature"
        );
        assert_eq!(cert.encoded(), data);
        for o in &cert.body.overlay {
            assert!(cert.covers(&Claim::Ip(IpPrefix::host(o.addr))));
        }
        let now = FUZZ_WALL.as_secs();
        assert_eq!(
            ca.trust
                .verify_peer(Some(data), &cert.body.public_key, now)
                .is_ok(),
            ca.trust.check_current(&cert, now).is_ok()
        );
        assert!(
            ca.trust.verify_peer(Some(data), &[0u8; 32], now).is_err()
                || cert.body.public_key == [0u8; 32]
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Certificate::from_armored(text);
        let _ = crate::identity::trust::parse_revocation_list(text);
    }
}

/// The Kubernetes node-list parser ([`crate::kube::parse_node_list`]) and
/// what weft makes of a list: the peer view, the peer set's changes and
/// IPAM's pod range. Invariants: bounds hold, this node is never its own
/// peer, the same list twice changes nothing, a pod range IPAM accepts
/// lies in its range and is claimed.
pub fn kube_nodes(data: &[u8]) {
    use crate::kube::{parse_node_list, view, PeerSync, MAX_NODES};
    let Ok(nodes) = parse_node_list(data) else {
        return;
    };
    assert!(nodes.len() <= MAX_NODES);
    let me = nodes.first().map(|n| n.name.clone()).unwrap_or_default();
    let v = view(&nodes, &me, 6783, false);
    assert!(!v.peers.contains_key(&me) || me.is_empty());
    let mut sync = PeerSync::new(["192.0.2.1:6783".parse().expect("literal")]);
    sync.update(&v.peers);
    assert!(
        sync.update(&v.peers).is_empty(),
        "the same list changed peers"
    );
    let range = crate::ipam::AllocRange::parse("10.0.0.0/8").expect("literal");
    let range6 = crate::ipam::AllocRange::parse_v6("fd00::/8").expect("literal");
    for node in &nodes {
        assert!(!node.name.is_empty() && node.name.len() <= 253);
        assert!(node.internal_ips.len() <= 16);
        let _ = node.dial_address(true);
        pod_cidr_in(range, node.pod_cidr_v4());
        pod_cidr_in(range6, node.pod_cidr_v6());
    }
}

/// A node's pod range of `range`'s family, if it has one, is of that
/// family, and becomes the allocator's one claim when it lies inside.
fn pod_cidr_in<A: crate::ipam::Family>(
    range: crate::ipam::AllocRange<A>,
    cidr: Result<Option<crate::mesh::IpPrefix>, String>,
) {
    let Ok(Some(cidr)) = cidr else {
        return;
    };
    assert_eq!(cidr.is_ipv4(), A::BITS == 32);
    let mut ipam = crate::ipam::Ipam::new(range, PeerId([1; 32]), None, Duration::ZERO);
    if ipam.set_pod_cidr(Some(cidr)).is_ok() {
        assert!(range.prefix().contains(&cidr));
        assert_eq!(ipam.claims(), vec![cidr]);
    }
}

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Every parser in `src/wire/` (see [`crate::wire::totality`]).
pub fn wire_parsers(data: &[u8]) {
    crate::wire::totality::exercise_all(data);
}

/// The control connection's input: length-prefixed frames, each a JSON
/// `ControlMessage` (Hello, rekey, gossip, relay, ...) or an end-to-end
/// message; and the same bytes to a fresh responder link, which must
/// refuse them without panicking.
pub fn control(data: &[u8]) {
    let mut rest = data;
    while let Some((body, used)) = control::take_frame(rest) {
        assert!(used == body.len() + 2 && used <= rest.len());
        control_body(body);
        rest = &rest[used..];
    }
    control_body(data);
    // A responder link reads the bytes as handshake messages.
    let now = Instant::now();
    let mut link = Link::new(
        Direction::Inbound,
        "192.0.2.1:6783".parse().expect("literal address"),
        link_config(),
        now,
        FUZZ_WALL,
    );
    link.on_control_bytes(data, now);
    // An authentic message 1 (only a seed can be one) is admitted, so the
    // rest of the input reaches the later handshake steps.
    let mut admitted = false;
    while let Some(out) = link.poll_output() {
        if matches!(out, crate::mesh::link::Output::FirstMessage { .. }) && !admitted {
            admitted = true;
            link.admit();
        }
    }
    link.poll(now + Duration::from_secs(1));
    while link.poll_output().is_some() {}
    assert!(
        link.remote_hello().is_none(),
        "unauthenticated bytes completed a handshake"
    );
}

fn control_body(body: &[u8]) {
    if let Ok(message) = ControlMessage::decode(body) {
        // What decodes encodes to something that decodes to the same.
        let again = ControlMessage::decode(&message.encode()).expect("re-encoded message decodes");
        assert_eq!(again, message);
        if let ControlMessage::Hello(hello) = &message {
            let _ = control::negotiate_cipher(hello, hello);
            let _ = control::negotiate_cipher(&sample_hello(), hello);
        }
        if let ControlMessage::Gossip { bytes } = &message {
            gossip(bytes);
        }
        if let ControlMessage::Relay(relayed) = &message {
            let _ = E2eMessage::decode(&relayed.payload);
        }
    }
    if let Ok(hello) = serde_json::from_slice::<Hello>(body) {
        let text = serde_json::to_vec(&hello).expect("hellos serialize");
        assert_eq!(serde_json::from_slice::<Hello>(&text).ok(), Some(hello));
    }
    if let Ok(message) = E2eMessage::decode(body) {
        assert_eq!(E2eMessage::decode(&message.encode()).ok(), Some(message));
    }
}

fn sample_hello() -> Hello {
    Hello {
        version: control::PROTOCOL_VERSION,
        name: "fuzz".into(),
        overlay: vec!["10.40.0.1/16".into()],
        vni: 1,
        udp_port: 6783,
        device: LocalDevice::Tun,
        cipher: CipherChoice::Auto,
        aes_hw: true,
        session_index: 7,
        overlay_mtu: 1430,
        fastdp_port: None,
        cert: None,
    }
}

/// One link configuration for every run (key generation is the slow part).
fn link_config() -> Arc<LinkConfig> {
    static CFG: OnceLock<Arc<LinkConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        Arc::new(LinkConfig {
            key: StaticKey::from_base64(&fixed_key_b64(1), "fuzz").expect("fixed key"),
            secret: NetworkSecret::from_bytes(b"fuzz network secret", "fuzz")
                .expect("non-empty secret"),
            hello: sample_hello(),
            timers: Timers::default(),
            underlay_mtu: 1500,
            ipv6_underlay: false,
            indices: crate::noise::IndexRegistry::new(),
        })
    })
    .clone()
}

fn fixed_key_b64(fill: u8) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode([fill; 32])
}

/// Gossip messages (summary, digest, request, records) with their
/// round-trip invariants, then the claims the records carry through claim
/// resolution: the answer must not depend on the order claims arrive in,
/// and no two peers may own overlapping claims.
pub fn gossip(data: &[u8]) {
    crate::wire::totality::exercise_gossip(data);
    let Ok(gossip::Message::Records(records)) = gossip::Message::parse(data) else {
        return;
    };
    let claimed: Vec<(PeerId, AnnouncedClaim)> = records
        .iter()
        .flat_map(|r| {
            let id = r.id();
            r.claims().map(move |c| (id, c))
        })
        .collect();
    let forward = claims::resolve(claimed.iter().copied());
    let backward = claims::resolve(claimed.iter().rev().copied());
    let mut a = forward.owned.clone();
    let mut b = backward.owned.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "claim resolution depends on arrival order");
    assert_eq!(forward.conflicts.len(), backward.conflicts.len());
    for (i, (ci, pi)) in forward.owned.iter().enumerate() {
        for (cj, pj) in &forward.owned[i + 1..] {
            assert!(
                pi == pj || !ci.overlaps(cj),
                "{ci} ({pi:?}) and {cj} ({pj:?}) both owned"
            );
        }
    }
}

/// The fixed keys `session_open` opens with (seeds are sealed with them).
fn fuzz_keys() -> (DataKeys, DataKeys) {
    (
        DataKeys {
            send: [0x11; 32],
            recv: [0x22; 32],
        },
        DataKeys {
            send: [0x22; 32],
            recv: [0x11; 32],
        },
    )
}

/// Datagrams to one session with fixed keys: the input is a sequence of
/// length-prefixed datagrams, each opened in turn. Whatever opens must
/// have the right length and must never open a second time.
pub fn session_open(data: &[u8]) {
    let (_, keys) = fuzz_keys();
    let cipher = if data.first().is_some_and(|b| b & 1 == 1) {
        CipherKind::AesGcm
    } else {
        CipherKind::ChaChaPoly
    };
    let session = Session::new(cipher, &keys, 2, 1, Instant::now());
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((datagram, used)) = control::take_frame(rest) {
        rest = &rest[used..];
        open_one(&session, datagram);
    }
    // The whole input as one datagram too.
    open_one(&session, data);
}

fn open_one(session: &Session, datagram: &[u8]) {
    let counter = sleeve::Packet::new_checked(datagram)
        .ok()
        .and_then(|p| sleeve::Repr::parse(&p).ok())
        .map_or(0, |r| r.counter);
    let mut buf = datagram.to_vec();
    match session.open_tracked(counter, &mut buf) {
        Ok(opened) => {
            assert_eq!(
                opened.len + sleeve::HEADER_LEN + sleeve::TAG_LEN,
                datagram.len()
            );
            let mut again = datagram.to_vec();
            assert_eq!(
                session.open(counter, &mut again),
                Err(OpenError::Replay),
                "a datagram opened twice"
            );
        }
        Err(OpenError::Truncated) => {
            assert!(datagram.len() < sleeve::HEADER_LEN + sleeve::TAG_LEN)
        }
        Err(_) => {}
    }
}

/// Seals `payload` with the keys `session_open` opens with.
fn sealed_for_fuzz(cipher: CipherKind, payloads: &[&[u8]]) -> Vec<u8> {
    let (keys, _) = fuzz_keys();
    let sender = Session::new(cipher, &keys, 1, 2, Instant::now());
    let mut out = vec![u8::from(cipher == CipherKind::AesGcm)];
    for payload in payloads {
        let mut buf = vec![0u8; sleeve::HEADER_LEN + payload.len() + sleeve::TAG_LEN];
        buf[sleeve::HEADER_LEN..sleeve::HEADER_LEN + payload.len()].copy_from_slice(payload);
        let n = sender
            .seal(sleeve::MessageType::Data, &mut buf, payload.len())
            .expect("buffer sized for the payload");
        control::push_frame(&mut out, &buf[..n]);
    }
    out
}

/// A sequence of counters through the replay window, against a model that
/// remembers every accepted counter: a counter is accepted exactly when it
/// was never accepted before and is within [`WINDOW_SIZE`] of the newest.
/// Each step is 3 bytes: how to pick the counter, then a 16-bit value.
pub fn replay_window(data: &[u8]) {
    let mut window = ReplayWindow::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut newest: Option<u64> = None;
    for step in data.chunks_exact(3) {
        let v = u64::from(u16::from_be_bytes([step[1], step[2]]));
        let top = newest.unwrap_or(0);
        let counter = match step[0] % 6 {
            0 => top.saturating_add(v % 300),
            1 => top.saturating_sub(v),
            2 => top.saturating_add(v * 64),
            3 => v,
            4 => u64::MAX - v,
            _ => top.saturating_sub(WINDOW_SIZE - 64 + v % 128),
        };
        let fresh = !seen.contains(&counter)
            && newest.map_or(true, |n| counter > n || n - counter < WINDOW_SIZE);
        assert_eq!(
            window.check(counter),
            fresh,
            "check({counter}) after {newest:?}"
        );
        let accepted = window.update(counter);
        assert_eq!(accepted, fresh, "update({counter}) after {newest:?}");
        if accepted {
            assert!(seen.insert(counter), "counter {counter} accepted twice");
            newest = Some(newest.map_or(counter, |n| n.max(counter)));
        }
        assert!(!window.update(counter), "counter {counter} accepted twice");
        assert_eq!(window.newest(), newest.unwrap_or(0));
    }
}

/// A frame the AF_XDP filter redirected: parse must be total, the payload
/// range must lie inside the frame, and rebuilding a frame from what was
/// parsed must parse back to the same.
pub fn xdp_frame(data: &[u8]) {
    let Some(received) = frame::parse(data) else {
        return;
    };
    assert!(received.payload.start <= received.payload.end);
    assert!(received.payload.end <= data.len(), "payload past the frame");
    assert_eq!(received.src.is_ipv4(), received.dst.is_ipv4());
    let payload = &data[received.payload.clone()];
    let ends = frame::Endpoints {
        src_mac: crate::wire::ethernet::MacAddr::from_bytes(&data[6..12])
            .expect("a parsed frame has an Ethernet header"),
        dst_mac: crate::wire::ethernet::MacAddr::from_bytes(&data[..6])
            .expect("a parsed frame has an Ethernet header"),
        src: received.src,
        dst: received.dst,
    };
    let mut buf = vec![0u8; frame::header_len(received.src.is_ipv6()) + payload.len()];
    let n = frame::build(&mut buf, &ends, payload).expect("buffer sized for the frame");
    let again = frame::parse(&buf[..n]).expect("a built frame parses");
    assert_eq!((again.src, again.dst), (received.src, received.dst));
    assert_eq!(&buf[again.payload], payload);
}

/// What the kernel OVS datapath sends weft (flow keys of misses and dumps,
/// IPv4 and IPv6 tunnel keys, action lists, flow stats): the parsers in
/// `datapath::odp::attr` are total, and whatever they accept re-emits to
/// bytes that parse to the same value.
pub fn odp_attrs(data: &[u8]) {
    use crate::datapath::odp::attr::{parse_flow_stats, Action, Attr, FlowKey, TunnelKey};
    use netlink_packet_core::Emitable;
    fn emit(attrs: &[Attr]) -> Vec<u8> {
        let mut buffer = vec![0u8; attrs.buffer_len()];
        attrs.emit(&mut buffer);
        buffer
    }
    if let Ok(key) = FlowKey::parse(data) {
        let again = FlowKey::parse(&emit(&key.to_match_attrs())).expect("a match key parses");
        assert_eq!(
            (again.in_port, again.eth_src, again.eth_dst),
            (key.in_port, key.eth_src, key.eth_dst)
        );
        if let Some(tunnel) = key.tunnel {
            assert!(
                tunnel.src.is_none()
                    || tunnel.dst.is_none()
                    || tunnel.src.map(|a| a.is_ipv4()) == tunnel.dst.map(|a| a.is_ipv4()),
                "a tunnel key mixes IPv4 and IPv6: {tunnel:?}"
            );
        }
    }
    if let Ok(tunnel) = TunnelKey::parse(data) {
        let again = TunnelKey::parse(&emit(&tunnel.to_attrs())).expect("a tunnel key parses");
        assert_eq!(again, tunnel);
    }
    if let Ok(actions) = Action::parse_list(data) {
        let attrs: Vec<Attr> = actions.iter().map(Action::to_attr).collect();
        let again = Action::parse_list(&emit(&attrs)).expect("an action list parses");
        assert_eq!(again, actions);
        for action in &actions {
            let _ = action.to_string();
        }
    }
    let _ = parse_flow_stats(data);
}

/// The L2 switch driven by a sequence of frames from the local bridge and
/// from peers, with time passing and peers leaving. Invariants: the table
/// holds only unicast sources it was shown and never more than
/// [`fdb::MAX_ENTRIES`]; a frame from the bridge never goes back to the
/// bridge; a delivered frame's source is then found at its peer.
pub fn l2_switch(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    // A small quota, so the fuzzer reaches quota evictions too.
    let mut switch = L2Switch::new(1400, Duration::from_secs(600), FUZZ_MAC_QUOTA);
    let mut sources: HashSet<Mac> = HashSet::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 5 {
            // A synthetic frame between a few MACs (so they move and
            // collide): dst index, src index, payload length.
            0 | 1 => {
                let Some((spec, tail)) = rest.split_first_chunk::<3>() else {
                    break;
                };
                rest = tail;
                let frame = synthetic_frame(spec[0], spec[1], usize::from(spec[2]) * 8);
                l2_step(&mut switch, &mut sources, op, &frame, now);
            }
            // Raw bytes as a frame: one length byte, then that many bytes.
            2 => {
                let Some((&len, tail)) = rest.split_first() else {
                    break;
                };
                let len = usize::from(len).min(tail.len());
                let (frame, tail) = tail.split_at(len);
                rest = tail;
                l2_step(&mut switch, &mut sources, op >> 3, frame, now);
            }
            3 => {
                let Some((&secs, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                now += Duration::from_secs(u64::from(secs) * 8);
                switch.tick(now);
            }
            _ => {
                let Some((&peer, tail)) = rest.split_first() else {
                    break;
                };
                rest = tail;
                switch.fdb.forget(Location::Peer(usize::from(peer % 4)));
            }
        }
        assert!(switch.fdb.len() <= fdb::MAX_ENTRIES);
        assert!(switch.fdb.len() <= sources.len());
        for (mac, _) in switch.fdb.entries(now) {
            assert!(sources.contains(&mac), "{mac:?} learned from nowhere");
            assert!(!mac.is_multicast());
        }
    }
}

fn l2_step(switch: &mut L2Switch, sources: &mut HashSet<Mac>, op: u8, frame: &[u8], now: Instant) {
    let src = crate::router::l2::source_mac(frame);
    if op & 1 == 0 {
        let egress = switch.from_local(frame, now);
        assert_ne!(egress, Egress::Unicast(Location::Local));
        if egress != Egress::Drop {
            sources.extend(src);
        }
    } else {
        let from = Location::Peer(usize::from(op >> 1) % 4);
        if switch.from_remote(frame, from, now) {
            let src = src.expect("a delivered frame has a source");
            sources.insert(src);
            if src != Mac::default() && switch.fdb.len() < fdb::MAX_ENTRIES {
                assert_eq!(switch.fdb.lookup(&src, now), Some(from));
            }
        }
    }
}

/// An Ethernet frame from MAC `src` to MAC `dst` (small indices; 0xff is
/// broadcast, odd high bits give multicast) with `payload` zero bytes.
fn synthetic_frame(dst: u8, src: u8, payload: usize) -> Vec<u8> {
    let mac = |i: u8| -> [u8; 6] {
        if i == 0xff {
            [0xff; 6]
        } else {
            [(i >> 4) & 0x03, 0, 0, 0, 0, i & 0x0f]
        }
    };
    let mut f = Vec::with_capacity(14 + payload);
    f.extend_from_slice(&mac(dst));
    f.extend_from_slice(&mac(src));
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.resize(14 + payload, 0);
    f
}

/// Seed inputs for `name`: real encodings made by weft's own code, so
/// mutations start from valid messages. `(file name, bytes)`.
pub fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |n: &str, b: Vec<u8>| out.push((n.to_string(), b));
    match name {
        "wire_parsers" => {
            for (n, b) in seeds("xdp_frame") {
                add(&format!("ethernet-{n}"), b);
            }
            add("gossip-records", sample_records());
        }
        "control" => {
            let frame = |m: &ControlMessage| {
                let mut f = Vec::new();
                control::push_frame(&mut f, &m.encode());
                f
            };
            let hello = ControlMessage::Hello(sample_hello());
            add("hello", frame(&hello));
            add("hello-json", hello.encode());
            add(
                "rekey-init",
                frame(&ControlMessage::RekeyInit {
                    index: 0x1234_5678,
                    noise: vec![7; 48],
                }),
            );
            add(
                "rekey-resp",
                frame(&ControlMessage::RekeyResp {
                    index: 9,
                    noise: vec![8; 48],
                }),
            );
            add(
                "pmtu-ack",
                frame(&ControlMessage::PmtuAck { id: 3, size: 1472 }),
            );
            add(
                "gossip",
                frame(&ControlMessage::Gossip {
                    bytes: sample_records(),
                }),
            );
            add(
                "relay",
                frame(&ControlMessage::Relay(control::RelayedControl {
                    from: [1; 32],
                    to: [2; 32],
                    hops_left: 4,
                    payload: E2eMessage::Init {
                        index: 5,
                        noise: vec![3; 96],
                    }
                    .encode(),
                })),
            );
            let mut several = frame(&ControlMessage::Keepalive { reply: false });
            several.extend(frame(&ControlMessage::Goodbye {
                reason: "bye".into(),
            }));
            several.extend(frame(&ControlMessage::FastdpHeartbeatAck { seq: 77 }));
            add("keepalive-goodbye-ack", several);
            // A real first handshake message.
            let mut hs = crate::noise::Handshake::initiator(
                &StaticKey::from_base64(&fixed_key_b64(2), "fuzz").expect("fixed key"),
                &link_config().secret,
            )
            .expect("handshake starts");
            let mut m1 = Vec::new();
            control::push_frame(&mut m1, &hs.write(&[]).expect("message 1"));
            add("handshake-message-1", m1);
        }
        "gossip" => {
            add("records", sample_records());
            add("records_dual_stack_ipam", dual_stack_ipam_records());
            let mut summary = Vec::new();
            gossip::emit_summary(&mut summary, 3, 0xdead_beef);
            add("summary", summary);
            let ids = [PeerId([1; 32]), PeerId([9; 32])];
            let mut digest = Vec::new();
            gossip::emit_digest(&mut digest, &ids[0], Some(&ids[1]), &[(ids[0], 4)]);
            add("digest", digest);
            let mut request = Vec::new();
            gossip::emit_request(&mut request, &ids);
            add("request", request);
        }
        "session_open" => {
            add(
                "chacha-three",
                sealed_for_fuzz(CipherKind::ChaChaPoly, &[b"one", b"", &[0x45; 60]]),
            );
            add("aes-one", sealed_for_fuzz(CipherKind::AesGcm, &[b"data"]));
        }
        "replay_window" => {
            add("in-order", [0u8, 0, 1].repeat(40));
            let mut jumps = Vec::new();
            for (mode, v) in [
                (3u8, 5000u16),
                (1, 100),
                (1, 8191),
                (1, 8192),
                (2, 500),
                (5, 3),
            ] {
                jumps.push(mode);
                jumps.extend_from_slice(&v.to_be_bytes());
            }
            add("jumps", jumps);
            add("near-max", vec![4, 0, 9, 4, 0, 1, 1, 0, 2]);
        }
        "xdp_frame" => {
            let ends = |src: &str, dst: &str| frame::Endpoints {
                src_mac: crate::wire::ethernet::MacAddr([2, 0, 0, 0, 0, 1]),
                dst_mac: crate::wire::ethernet::MacAddr([2, 0, 0, 0, 0, 2]),
                src: src.parse::<SocketAddr>().expect("literal"),
                dst: dst.parse::<SocketAddr>().expect("literal"),
            };
            for (n, e) in [
                ("ipv4", ends("192.0.2.1:6783", "192.0.2.2:6783")),
                ("ipv6", ends("[2001:db8::1]:6783", "[2001:db8::2]:6783")),
            ] {
                let payload = [0x5a; 40];
                let mut buf = vec![0u8; frame::header_len(e.src.is_ipv6()) + payload.len()];
                let len = frame::build(&mut buf, &e, &payload).expect("sized");
                buf.truncate(len);
                add(n, buf);
            }
        }
        "odp_attrs" => {
            use crate::datapath::odp::attr::{self as a, Action, Attr, TunnelKey};
            use netlink_packet_core::Emitable;
            let emit = |attrs: &[Attr]| {
                let mut buffer = vec![0u8; attrs.buffer_len()];
                attrs.emit(&mut buffer);
                buffer
            };
            for (n, src, dst) in [
                ("ipv4", "198.18.0.1", "198.18.0.2"),
                ("ipv6", "2001:2::1", "2001:2::2"),
            ] {
                let src = src.parse().expect("literal");
                let dst: std::net::IpAddr = dst.parse().expect("literal");
                // A miss from the VXLAN vport, as the kernel sends it.
                let mut tunnel = TunnelKey {
                    id: 1,
                    src: Some(src),
                    dst: Some(dst),
                }
                .to_attrs();
                tunnel.push(Attr::bytes(a::TUNNEL_KEY_ATTR_TTL, &[64]));
                tunnel.push(Attr::flag(a::TUNNEL_KEY_ATTR_CSUM));
                add(
                    &format!("miss-key-{n}"),
                    emit(&[
                        Attr::u32(a::KEY_ATTR_PRIORITY, 0),
                        Attr::nested(a::KEY_ATTR_TUNNEL, tunnel),
                        Attr::u32(a::KEY_ATTR_IN_PORT, 1),
                        Attr::bytes(a::KEY_ATTR_ETHERNET, &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]),
                        Attr::bytes(a::KEY_ATTR_ETHERTYPE, &0x0800u16.to_be_bytes()),
                    ]),
                );
                add(
                    &format!("actions-{n}"),
                    emit(&[
                        Action::tunnel_to(1, dst, 64).to_attr(),
                        Action::Output(1).to_attr(),
                        Action::Output(0).to_attr(),
                    ]),
                );
            }
        }
        "l2_switch" => {
            // Learn a few MACs both ways, flood, age out, forget a peer.
            add(
                "learn-move-age",
                vec![
                    0, 1, 2, 8, // local 2 -> 1
                    1, 2, 1, 8, // from peer 0: 1 -> 2
                    3, 2, 3, 4, // from peer 1: 3 -> 2
                    0, 0xff, 2, 1, // broadcast from local
                    3, 80, // 640 s pass
                    4, 0, // peer 0 leaves
                    2, 14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 8, 0, // raw frame
                ],
            );
        }
        "certificates" => {
            let ca = fuzz_ca();
            add("host", ca.host_cert.encoded().to_vec());
            add("ca", ca.ca_cert.encoded().to_vec());
            add("host-armored", ca.host_cert.to_armored().into_bytes());
            add(
                "revoked-list",
                format!("# revoked\n{}\n", ca.host_cert.fingerprint()).into_bytes(),
            );
        }
        "kube_nodes" => {
            let node = |name: &str, ip: &str, cidr: &str| {
                format!(
                    r#"{{"metadata":{{"name":"{name}","uid":"7d3c","labels":{{"kubernetes.io/os":"linux"}}}},"spec":{{"podCIDR":"{cidr}","podCIDRs":["{cidr}","fd00:10:244:1::/64"]}},"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"InternalIP","address":"fd00::{name}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
                )
            };
            add(
                "node-list",
                format!(
                    r#"{{"kind":"NodeList","apiVersion":"v1","metadata":{{"resourceVersion":"42"}},"items":[{},{}]}}"#,
                    node("a", "198.18.0.1", "10.244.1.0/24"),
                    node("b", "198.18.0.2", "10.244.2.0/24")
                )
                .into_bytes(),
            );
            add(
                "status-403",
                br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes is forbidden","reason":"Forbidden","code":403}"#.to_vec(),
            );
        }
        _ => {}
    }
    out
}

/// A RECORDS gossip message with two records carrying claims.
fn sample_records() -> Vec<u8> {
    let a = PeerId([3; 32]);
    let b = PeerId([4; 32]);
    let claims_a = [
        AnnouncedClaim {
            lamport: 1,
            claim: Claim::Ip(IpPrefix::host("10.40.0.1".parse().expect("literal"))),
        },
        AnnouncedClaim {
            lamport: 2,
            claim: Claim::Mac(crate::wire::ethernet::MacAddr([2, 0, 0, 0, 0, 9])),
        },
    ];
    let claims_b = [AnnouncedClaim {
        lamport: 3,
        claim: Claim::Ip(
            IpPrefix::new("10.40.0.0".parse().expect("literal"), 24).expect("valid prefix"),
        ),
    }];
    let endpoints = ["192.0.2.1:6783".parse().expect("literal")];
    let subnets = [IpPrefix::new("10.50.0.0".parse().expect("literal"), 16).expect("valid")];
    let neighbours = [Neighbour {
        peer: b,
        data_path: true,
    }];
    let mut out = Vec::new();
    gossip::emit_records_header(&mut out, 2);
    gossip::RecordRepr {
        id: &a,
        version: 5,
        name: b"host-a",
        endpoints: &endpoints,
        claims: &claims_a,
        reserved: &[],
        subnets: &subnets,
        neighbours: &neighbours,
        cert: fuzz_ca().host_cert.encoded(),
    }
    .emit(&mut out);
    gossip::RecordRepr {
        id: &b,
        version: 2,
        name: b"host-b",
        endpoints: &[],
        claims: &claims_b,
        reserved: &[],
        subnets: &[],
        neighbours: &[],
        cert: &[],
    }
    .emit(&mut out);
    out
}

/// A record as a dual-stack IPAM host gossips it: IPv4 and IPv6 chunk
/// claims (kinds 1 and 2) and chunks it keeps reserved for a departed
/// host in both families (kinds 4 and 5).
fn dual_stack_ipam_records() -> Vec<u8> {
    let prefix = |text: &str, len: u8| {
        IpPrefix::new(text.parse().expect("literal"), len).expect("valid prefix")
    };
    let claims = [
        AnnouncedClaim {
            lamport: 1,
            claim: Claim::Ip(prefix("10.32.1.0", 26)),
        },
        AnnouncedClaim {
            lamport: 2,
            claim: Claim::Ip(prefix("fd32:6e:f7::40", 122)),
        },
    ];
    let reserved = [prefix("10.32.9.0", 26), prefix("fd32:6e:f7::1:0", 122)];
    let mut out = Vec::new();
    gossip::emit_records_header(&mut out, 1);
    gossip::RecordRepr {
        id: &PeerId([3; 32]),
        version: 7,
        name: b"host-c",
        endpoints: &[],
        claims: &claims,
        reserved: &reserved,
        subnets: &[],
        neighbours: &[],
        cert: &[],
    }
    .emit(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dual_stack_ipam_seed_carries_both_families() {
        let records = dual_stack_ipam_records();
        let Ok(gossip::Message::Records(r)) = gossip::Message::parse(&records) else {
            panic!("dual-stack records seed does not parse")
        };
        let record = r.iter().next().expect("one record");
        let claims: Vec<_> = record.claims().collect();
        assert_eq!(claims.len(), 2);
        assert_eq!(record.reserved().count(), 2);
        assert!(record.reserved().any(|p| !p.is_ipv4()));
    }

    #[test]
    fn every_target_has_seeds_that_pass() {
        for (name, run) in TARGETS {
            let seeds = seeds(name);
            if *name != "wire_parsers" {
                assert!(!seeds.is_empty(), "{name} has no seeds");
            }
            for (seed, bytes) in seeds {
                run(&bytes);
                // Truncations of a seed are inputs too.
                for cut in [0, 1, bytes.len() / 2, bytes.len().saturating_sub(1)] {
                    run(&bytes[..cut.min(bytes.len())]);
                }
                let _ = seed;
            }
        }
    }

    #[test]
    fn seeds_are_meaningful() {
        // The sealed seeds open with the fuzz keys.
        let (_, keys) = fuzz_keys();
        let input = &seeds("session_open")[0].1;
        let session = Session::new(CipherKind::ChaChaPoly, &keys, 2, 1, Instant::now());
        let (datagram, _) = control::take_frame(&input[1..]).unwrap();
        let mut d = datagram.to_vec();
        assert_eq!(session.open(0, &mut d), Ok(3));
        // The gossip seed carries claims that resolve.
        let records = sample_records();
        let Ok(gossip::Message::Records(r)) = gossip::Message::parse(&records) else {
            panic!("records seed does not parse")
        };
        assert_eq!(r.iter().map(|v| v.claims().count()).sum::<usize>(), 3);
        // The xdp seeds parse.
        for (_, f) in seeds("xdp_frame") {
            assert!(frame::parse(&f).is_some());
        }
        // Every control seed frame decodes.
        // The certificate seed is accepted by the fuzz CA.
        let host = &seeds("certificates")[0].1;
        assert!(fuzz_ca().trust.authenticate(host).is_ok());
        for (n, f) in seeds("control") {
            if n == "hello-json" || n == "handshake-message-1" {
                continue;
            }
            let mut rest = &f[..];
            while let Some((body, used)) = control::take_frame(rest) {
                assert!(ControlMessage::decode(body).is_ok(), "{n}");
                rest = &rest[used..];
            }
        }
    }
}
