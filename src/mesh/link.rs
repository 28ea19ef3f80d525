//! One control connection to a peer, as a sans-IO state machine.
//!
//! The router feeds it bytes from the TCP stream, authenticated datagrams
//! from the UDP socket, and the time; it answers with [`Output`]s: bytes to
//! write, datagrams to send, sessions to install, and a reason when the
//! connection must close. Nothing in here does I/O or reads the clock.

use super::admission::Timestamp;
use super::control::{
    self, negotiate_cipher, ControlMessage, Hello, RelayedControl, PROTOCOL_VERSION,
};
use super::pmtu::{self, PmtuSearch};
use crate::noise::handshake::{DataKeys, Established};
use crate::noise::session::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES};
use crate::noise::{
    CipherKind, Handshake, IndexRegistry, NetworkSecret, Rekey, Session, StaticKey,
};
use crate::wire::{heartbeat, sleeve};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Timer settings. Defaults are the issue's; tests shorten some through the
/// config file.
#[derive(Debug, Clone)]
pub struct Timers {
    /// Heartbeat interval until the first reply arrives.
    pub heartbeat_connecting: Duration,
    /// Heartbeat interval once established.
    pub heartbeat_established: Duration,
    /// Missed heartbeat intervals after which the peer is down.
    pub missed_limit: u32,
    /// Start a rekey when the current epoch is this old.
    pub rekey_after: Duration,
    /// Give up a handshake (or a rekey) that takes longer than this.
    pub handshake_timeout: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            heartbeat_connecting: Duration::from_millis(500),
            heartbeat_established: Duration::from_secs(10),
            missed_limit: 6,
            rekey_after: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What every link of this host shares.
#[derive(Debug)]
pub struct LinkConfig {
    /// This host's static key.
    pub key: StaticKey,
    /// The network secret.
    pub secret: NetworkSecret,
    /// This host's hello; `session_index` is filled in per link.
    pub hello: Hello,
    /// Timer settings.
    pub timers: Timers,
    /// MTU of the underlay interface: no datagram is ever larger.
    pub underlay_mtu: u16,
    /// Whether the underlay is IPv6 (header sizes, probe floor).
    pub ipv6_underlay: bool,
    /// The receiver indices in use on this host (shared with the router
    /// and the end-to-end sessions), so a new index never collides.
    pub indices: IndexRegistry,
}

impl LinkConfig {
    /// Outer IP header size on the underlay.
    pub fn ip_header_len(&self) -> usize {
        if self.ipv6_underlay {
            40
        } else {
            20
        }
    }
}

/// Who opened the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We connected to a configured peer.
    Outbound,
    /// The peer connected to us.
    Inbound,
}

impl Direction {
    /// Arrow used in status lines, as in `weave status connections`.
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::Outbound => "->",
            Direction::Inbound => "<-",
        }
    }
}

/// Where the link is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// TCP is up; the Noise handshake and hellos are in progress.
    Handshaking,
    /// Authenticated; waiting for the first heartbeat reply over UDP.
    Connecting,
    /// Heartbeats flow over UDP.
    Established,
    /// The control connection is up but UDP heartbeats get no reply (a
    /// firewall, a one-way path): traffic goes through other peers while
    /// heartbeats keep probing the direct path. The reason says what failed.
    DataPathDown(String),
    /// Closed, with the reason.
    Failed(String),
}

impl LinkState {
    /// Short name for status.
    pub fn name(&self) -> &'static str {
        match self {
            LinkState::Handshaking | LinkState::Connecting => "connecting",
            LinkState::Established => "established",
            LinkState::DataPathDown(_) => "data path down",
            LinkState::Failed(_) => "failed",
        }
    }
}

/// What the router must do.
#[derive(Debug)]
pub enum Output {
    /// Write these bytes to the control connection.
    Control(Vec<u8>),
    /// Send this datagram over UDP.
    Datagram {
        /// Destination.
        to: SocketAddr,
        /// The sealed datagram.
        bytes: Vec<u8>,
    },
    /// A session to accept datagrams for (by its local index).
    SessionUp(Arc<Session>),
    /// A session retired: forget its local index.
    SessionDown(u32),
    /// Handshake and hellos are done: the peer's identity and hello.
    PeerReady {
        /// The peer's authenticated static key.
        remote_static: [u8; 32],
        /// What the peer said about itself.
        hello: Hello,
    },
    /// Send this path-MTU probe; report EMSGSIZE back with
    /// [`Link::on_probe_too_big`].
    Probe {
        /// Destination.
        to: SocketAddr,
        /// The sealed, padded datagram.
        bytes: Vec<u8>,
        /// The probe's id.
        id: u32,
    },
    /// A path-MTU search finished with a new verified size (whole IP
    /// datagram bytes).
    PathMtu(u16),
    /// The first heartbeat reply arrived over UDP (also after the data
    /// path was down and works again).
    Established,
    /// Heartbeats over UDP stopped getting replies while the control
    /// connection still answers: the direct data path is down, with why.
    DataPathDown(String),
    /// Gossip bytes (one `wire::gossip` message) from the peer, for the
    /// mesh node.
    Gossip(Vec<u8>),
    /// An end-to-end handshake message travelling through the mesh, for
    /// this host or to pass on.
    Relay(RelayedControl),
    /// The peer acknowledged fast-datapath heartbeat `seq` (it arrived
    /// through the peer's VXLAN vport).
    FastdpAck(u64),
    /// An inbound link read an authentic message 1 and waits: the router
    /// checks it with [`super::admission::Admission`] and then calls
    /// [`Link::admit`] (which writes message 2, the expensive step) or
    /// [`Link::refuse`] (which closes without a byte).
    FirstMessage {
        /// The initiator's ephemeral public key (message 1's first 32 bytes).
        ephemeral: [u8; 32],
        /// The timestamp in message 1's payload; `None` if the payload was
        /// not one.
        timestamp: Option<Timestamp>,
    },
    /// Close the connection; the link is dead.
    Close(String),
}

/// One control connection and the data sessions it keyed.
pub struct Link {
    /// Who connected.
    pub direction: Direction,
    /// The TCP peer address.
    pub tcp_peer: SocketAddr,
    state: LinkState,
    cfg: Arc<LinkConfig>,
    handshake: Option<Handshake>,
    transport: Option<snow::TransportState>,
    /// The control handshake's hash, the PSK of every rekey: wiped on drop.
    handshake_hash: Zeroizing<[u8; 32]>,
    first_keys: Option<DataKeys>,
    first_index: u32,
    remote_static: Option<[u8; 32]>,
    remote_hello: Option<Hello>,
    cipher: Option<CipherKind>,
    current: Option<Arc<Session>>,
    previous: Option<Arc<Session>>,
    next: Option<Arc<Session>>,
    rekey: Option<(Rekey, u32, Instant)>,
    endpoint: Option<SocketAddr>,
    rx_buf: Vec<u8>,
    outputs: VecDeque<Output>,
    created: Instant,
    connecting_since: Option<Instant>,
    last_rx: Option<Instant>,
    /// Last heartbeat reply over UDP (a round trip: the data path works
    /// both ways).
    last_reply: Option<Instant>,
    /// Last authenticated control message from the peer.
    last_control_rx: Option<Instant>,
    /// Since when the data path has been down.
    down_since: Option<Instant>,
    next_heartbeat: Option<Instant>,
    heartbeat_seq: u32,
    rtt: Option<Duration>,
    pmtu: PmtuSearch,
    /// Wall-clock time (since the Unix epoch) at creation: an outbound
    /// link's message-1 timestamp.
    wall_at_start: Duration,
    /// Inbound: message 1 arrived.
    first_message_seen: bool,
    /// Inbound: message 1 was read and waits for [`Link::admit`].
    awaiting_admission: bool,
}

impl Link {
    /// A link for a fresh TCP connection. An outbound link writes the first
    /// handshake message at once, with `wall` (the time since the Unix
    /// epoch) as its timestamp.
    pub fn new(
        direction: Direction,
        tcp_peer: SocketAddr,
        cfg: Arc<LinkConfig>,
        now: Instant,
        wall: Duration,
    ) -> Link {
        let mut link = Link {
            direction,
            tcp_peer,
            state: LinkState::Handshaking,
            handshake: None,
            transport: None,
            handshake_hash: Zeroizing::new([0; 32]),
            first_keys: None,
            first_index: cfg.indices.allocate(),
            remote_static: None,
            remote_hello: None,
            cipher: None,
            current: None,
            previous: None,
            next: None,
            rekey: None,
            endpoint: None,
            rx_buf: Vec::new(),
            outputs: VecDeque::new(),
            created: now,
            connecting_since: None,
            last_rx: None,
            last_reply: None,
            last_control_rx: None,
            down_since: None,
            next_heartbeat: None,
            heartbeat_seq: 0,
            rtt: None,
            pmtu: PmtuSearch::new(floor(&cfg), cfg.underlay_mtu),
            cfg,
            wall_at_start: wall,
            first_message_seen: false,
            awaiting_admission: false,
        };
        let started = match direction {
            Direction::Outbound => Handshake::initiator(&link.cfg.key, &link.cfg.secret),
            Direction::Inbound => Handshake::responder(&link.cfg.key, &link.cfg.secret),
        };
        match started {
            Ok(hs) => {
                link.handshake = Some(hs);
                if direction == Direction::Outbound {
                    link.write_handshake();
                }
            }
            Err(e) => link.fail(format!("cannot start handshake: {e}")),
        }
        link
    }

    /// The link's state.
    pub fn state(&self) -> &LinkState {
        &self.state
    }

    /// Whether the link has failed and must be dropped.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, LinkState::Failed(_))
    }

    /// The peer's static key, once authenticated.
    pub fn remote_static(&self) -> Option<&[u8; 32]> {
        self.remote_static.as_ref()
    }

    /// The peer's hello.
    pub fn remote_hello(&self) -> Option<&Hello> {
        self.remote_hello.as_ref()
    }

    /// The session to seal outgoing data with.
    pub fn sending_session(&self) -> Option<&Arc<Session>> {
        self.current.as_ref()
    }

    /// Where to send datagrams for this peer.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint
    }

    /// The agreed data cipher.
    pub fn cipher(&self) -> Option<CipherKind> {
        self.cipher
    }

    /// The last measured round-trip time over UDP.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// The verified path MTU (whole IP datagram), once a search finished.
    pub fn path_mtu(&self) -> Option<u16> {
        self.pmtu.verified()
    }

    /// Sending probe `id` failed with EMSGSIZE.
    pub fn on_probe_too_big(&mut self, id: u32) {
        self.pmtu.on_too_big(id);
    }

    /// Sending data to this peer failed with EMSGSIZE: the path shrank.
    pub fn on_data_too_big(&mut self) {
        self.pmtu.path_shrank();
    }

    /// An authenticated path-MTU probe arrived; `udp_payload_len` is the
    /// size of the datagram's UDP payload. Acknowledged over TCP, which
    /// always gets through whatever the path MTU.
    pub fn on_pmtu_probe(&mut self, plaintext: &[u8], udp_payload_len: usize) {
        let Ok(hb) = heartbeat::Repr::parse(plaintext) else {
            return;
        };
        let size = udp_payload_len + 8 + self.cfg.ip_header_len();
        let size = u16::try_from(size).unwrap_or(u16::MAX);
        self.send_control(&ControlMessage::PmtuAck { id: hb.seq, size });
    }

    fn send_probe(&mut self, probe: pmtu::Probe, now: Instant) {
        let (Some(session), Some(to)) = (self.current.as_ref(), self.endpoint) else {
            return;
        };
        let overhead = self.cfg.ip_header_len() + 8 + sleeve::HEADER_LEN + sleeve::TAG_LEN;
        let Some(plain_len) = usize::from(probe.size).checked_sub(overhead) else {
            return;
        };
        if plain_len < heartbeat::LEN {
            return;
        }
        let mut buf = vec![0u8; sleeve::HEADER_LEN + plain_len + sleeve::TAG_LEN];
        let repr = heartbeat::Repr {
            kind: heartbeat::Kind::Request,
            seq: probe.id,
            echo_micros: now.saturating_duration_since(self.created).as_micros() as u64,
        };
        if repr.emit(&mut buf[sleeve::HEADER_LEN..]).is_err() {
            return;
        }
        if let Ok(n) = session.seal(sleeve::MessageType::PmtuProbe, &mut buf, plain_len) {
            buf.truncate(n);
            debug_assert!(n + 8 + self.cfg.ip_header_len() <= usize::from(self.cfg.underlay_mtu));
            self.outputs.push_back(Output::Probe {
                to,
                bytes: buf,
                id: probe.id,
            });
        }
    }

    /// When this link was created.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// The next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn fail(&mut self, reason: String) {
        if self.is_closed() {
            return;
        }
        for s in [self.current.take(), self.previous.take(), self.next.take()]
            .into_iter()
            .flatten()
        {
            self.outputs.push_back(Output::SessionDown(s.local_index));
        }
        self.state = LinkState::Failed(reason.clone());
        self.outputs.push_back(Output::Close(reason));
    }

    /// The TCP connection closed or failed underneath.
    pub fn on_control_closed(&mut self, reason: &str) {
        if self.handshake.is_some() && self.direction == Direction::Outbound {
            // A responder that cannot authenticate our first message, or
            // finds its timestamp stale, just closes.
            return self.fail(format!(
                "{reason} during the handshake: the peer probably uses a different network secret (compare --secret-file on both hosts), or its clock differs from this host's by more than {} s (run NTP on both)",
                super::admission::FRESHNESS_WINDOW.as_secs()
            ));
        }
        self.fail(reason.to_string());
    }

    /// Tells the peer that its fast-datapath heartbeat `seq` arrived here
    /// (over the control connection, which gets through whatever the path).
    pub fn send_fastdp_ack(&mut self, seq: u64) {
        if self.transport.is_some() && !self.is_closed() {
            self.send_control(&ControlMessage::FastdpHeartbeatAck { seq });
        }
    }

    /// Sends one gossip message to the peer.
    pub fn send_gossip(&mut self, bytes: Vec<u8>) {
        if self.remote_hello.is_some() && !self.is_closed() {
            self.send_control(&ControlMessage::Gossip { bytes });
        }
    }

    /// Passes a relayed control message to the peer.
    pub fn send_relay(&mut self, relayed: RelayedControl) {
        if self.remote_hello.is_some() && !self.is_closed() {
            self.send_control(&ControlMessage::Relay(relayed));
        }
    }

    /// Whether UDP heartbeats currently get replies.
    pub fn data_path_works(&self) -> bool {
        self.state == LinkState::Established
    }

    /// Sends a goodbye before a deliberate close.
    pub fn goodbye(&mut self, reason: &str) {
        if self.transport.is_some() && !self.is_closed() {
            self.send_control(&ControlMessage::Goodbye {
                reason: reason.into(),
            });
        }
    }

    /// Whether this inbound link still waits for message 1 (for the
    /// router's [`super::admission::FIRST_MESSAGE_DEADLINE`]).
    pub fn awaiting_first_message(&self) -> bool {
        self.direction == Direction::Inbound && self.handshake.is_some() && !self.first_message_seen
    }

    /// The router admitted message 1: write message 2.
    pub fn admit(&mut self) {
        if self.awaiting_admission && !self.is_closed() {
            self.awaiting_admission = false;
            self.write_handshake();
        }
    }

    /// The router refused message 1: close without sending anything.
    pub fn refuse(&mut self, reason: &str) {
        self.awaiting_admission = false;
        self.fail(reason.to_string());
    }

    fn write_handshake(&mut self) {
        let Some(hs) = self.handshake.as_mut() else {
            return;
        };
        // Message 1 carries the initiator's timestamp (encrypted under the
        // network secret by psk0), checked by the responder against replay.
        let first = self.direction == Direction::Outbound && !self.first_message_seen;
        let timestamp = Timestamp::from_wall(self.wall_at_start);
        let payload: &[u8] = if first { timestamp.as_bytes() } else { &[] };
        self.first_message_seen = true;
        match hs.write(payload) {
            Ok(msg) => {
                let mut out = Vec::with_capacity(msg.len() + 2);
                control::push_frame(&mut out, &msg);
                self.outputs.push_back(Output::Control(out));
            }
            Err(e) => {
                self.fail(format!("handshake failed: {e}"));
                return;
            }
        }
        self.maybe_finish_handshake();
    }

    fn maybe_finish_handshake(&mut self) {
        if !self.handshake.as_ref().is_some_and(|h| h.is_finished()) {
            return;
        }
        let hs = self.handshake.take().expect("checked above");
        match hs.finish() {
            Ok(Established {
                transport,
                remote_static,
                data_keys,
                handshake_hash,
            }) => {
                self.transport = Some(transport);
                self.remote_static = Some(remote_static);
                self.first_keys = Some(data_keys);
                self.handshake_hash = handshake_hash;
                let mut hello = self.cfg.hello.clone();
                hello.session_index = self.first_index;
                self.send_control(&ControlMessage::Hello(hello));
            }
            Err(e) => self.fail(format!("handshake failed: {e}")),
        }
    }

    fn send_control(&mut self, message: &ControlMessage) {
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        let plain = message.encode();
        let mut buf = vec![0u8; plain.len() + 16];
        match t.write_message(&plain, &mut buf) {
            Ok(n) => {
                let mut out = Vec::with_capacity(n + 2);
                control::push_frame(&mut out, &buf[..n]);
                self.outputs.push_back(Output::Control(out));
            }
            Err(e) => self.fail(format!("cannot encrypt control message: {e}")),
        }
    }

    /// Bytes arrived on the control connection.
    pub fn on_control_bytes(&mut self, bytes: &[u8], now: Instant) {
        if self.is_closed() {
            return;
        }
        self.rx_buf.extend_from_slice(bytes);
        let mut consumed = 0;
        while !self.is_closed() {
            let Some((body, used)) = control::take_frame(&self.rx_buf[consumed..]) else {
                break;
            };
            let body = body.to_vec();
            consumed += used;
            self.on_frame(&body, now);
        }
        self.rx_buf.drain(..consumed);
        // A peer that sends more than a maximal frame without completing one
        // is not speaking our protocol.
        if self.rx_buf.len() > control::MAX_FRAME + 2 {
            self.fail("control stream desynchronised".into());
        }
    }

    fn on_frame(&mut self, body: &[u8], now: Instant) {
        if let Some(hs) = self.handshake.as_mut() {
            if self.awaiting_admission {
                // An initiator waits for message 2 before it sends more.
                return self.fail(format!(
                    "{} spoke out of turn in the handshake",
                    self.tcp_peer
                ));
            }
            let payload = match hs.read(body) {
                Ok(p) => p,
                Err(e) => {
                    self.fail(format!("handshake with {} failed: {e}", self.tcp_peer));
                    return;
                }
            };
            if self.direction == Direction::Inbound && !self.first_message_seen {
                self.first_message_seen = true;
                // psk0 XX message 1 is `e` in clear, then the payload.
                let Some(ephemeral) = body.get(..32).and_then(|e| <[u8; 32]>::try_from(e).ok())
                else {
                    return self.fail("first handshake message too short".into());
                };
                self.awaiting_admission = true;
                self.outputs.push_back(Output::FirstMessage {
                    ephemeral,
                    timestamp: Timestamp::parse(&payload),
                });
                return;
            }
            if self
                .handshake
                .as_ref()
                .is_some_and(|h| h.is_my_turn() && !h.is_finished())
            {
                self.write_handshake();
            } else {
                self.maybe_finish_handshake();
            }
            return;
        }
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        let mut plain = vec![0u8; body.len()];
        let n = match t.read_message(body, &mut plain) {
            Ok(n) => n,
            Err(_) => {
                self.fail("control message did not authenticate".into());
                return;
            }
        };
        self.last_control_rx = Some(now);
        match ControlMessage::decode(&plain[..n]) {
            Ok(m) => self.on_message(m, now),
            Err(e) => self.fail(format!("malformed control message: {e}")),
        }
    }

    fn on_message(&mut self, message: ControlMessage, now: Instant) {
        match message {
            ControlMessage::Hello(hello) => self.on_hello(hello, now),
            ControlMessage::RekeyInit { index, noise } => {
                if self.cipher.is_none() {
                    return self.fail("rekey before the hello".into());
                }
                // Either side may start a rekey. When both did at once, the
                // side with the smaller static key keeps its own initiation
                // and ignores the other's (the peer answers ours); the
                // larger abandons its own and answers.
                if self.rekey.is_some() {
                    if self.we_win_simultaneous_rekey() {
                        return;
                    }
                    if let Some((_, abandoned, _)) = self.rekey.take() {
                        self.cfg.indices.release(abandoned);
                    }
                }
                let keys = Rekey::responder(&self.handshake_hash).and_then(|mut r| {
                    r.read(&noise)?;
                    let reply = r.write()?;
                    Ok((reply, r.finish()?))
                });
                match keys {
                    Ok((reply, keys)) => {
                        let local = self.cfg.indices.allocate();
                        let session = Arc::new(Session::new(
                            self.cipher.expect("checked"),
                            &keys,
                            local,
                            index,
                            now,
                        ));
                        if let Some(old) = self.next.replace(session.clone()) {
                            self.outputs.push_back(Output::SessionDown(old.local_index));
                        }
                        self.outputs.push_back(Output::SessionUp(session));
                        self.send_control(&ControlMessage::RekeyResp {
                            index: local,
                            noise: reply,
                        });
                    }
                    Err(e) => self.fail(format!("rekey failed: {e}")),
                }
            }
            ControlMessage::RekeyResp { index, noise } => {
                let Some((mut rekey, local, _)) = self.rekey.take() else {
                    return self.fail("unexpected rekey response".into());
                };
                match rekey.read(&noise).and_then(|_| rekey.finish()) {
                    Ok(keys) => {
                        let session = Arc::new(Session::new(
                            self.cipher.expect("rekey only after hello"),
                            &keys,
                            local,
                            index,
                            now,
                        ));
                        self.rotate_in(session);
                        // Tell the responder at once that the new epoch is live.
                        self.send_heartbeat(heartbeat::Kind::Request, 0, now, None);
                    }
                    Err(e) => self.fail(format!("rekey failed: {e}")),
                }
            }
            ControlMessage::PmtuAck { id, size: _ } => {
                if let Some(v) = self.pmtu.on_ack(id, now) {
                    self.outputs.push_back(Output::PathMtu(v));
                }
            }
            ControlMessage::FastdpHeartbeatAck { seq } => {
                self.outputs.push_back(Output::FastdpAck(seq))
            }
            ControlMessage::Goodbye { reason } => self.fail(format!(
                "peer closed the connection: {}",
                super::peer::untrusted_text(&reason)
            )),
            ControlMessage::Gossip { bytes } => {
                if self.remote_hello.is_none() {
                    return self.fail("gossip before the hello".into());
                }
                self.outputs.push_back(Output::Gossip(bytes))
            }
            ControlMessage::Relay(relayed) => {
                if self.remote_hello.is_none() {
                    return self.fail("relayed message before the hello".into());
                }
                self.outputs.push_back(Output::Relay(relayed))
            }
            ControlMessage::Keepalive { reply } => {
                if !reply {
                    self.send_control(&ControlMessage::Keepalive { reply: true });
                }
            }
        }
    }

    fn rotate_in(&mut self, session: Arc<Session>) {
        if let Some(old) = self.previous.take() {
            self.outputs.push_back(Output::SessionDown(old.local_index));
        }
        self.previous = self.current.take();
        self.outputs.push_back(Output::SessionUp(session.clone()));
        self.current = Some(session);
    }

    fn on_hello(&mut self, hello: Hello, now: Instant) {
        if self.remote_hello.is_some() {
            return self.fail("peer sent a second hello".into());
        }
        let ours = &self.cfg.hello;
        if hello.version != PROTOCOL_VERSION {
            return self.fail(format!(
                "peer speaks control protocol version {} and this host {}: run the same weft release on both",
                hello.version, PROTOCOL_VERSION
            ));
        }
        if hello.vni != ours.vni {
            return self.fail(format!(
                "VNI mismatch: this host uses {} and the peer {}; set the same --vni on both",
                ours.vni, hello.vni
            ));
        }
        if hello.device != ours.device {
            return self.fail(format!(
                "device mismatch: this host runs {} mode and the peer {} mode; use the same --iface on both",
                ours.device, hello.device
            ));
        }
        let cipher = match negotiate_cipher(ours, &hello) {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        let Some(keys) = self.first_keys.take() else {
            return self.fail("hello before the handshake finished".into());
        };
        self.cipher = Some(cipher);
        let session = Arc::new(Session::new(
            cipher,
            &keys,
            self.first_index,
            hello.session_index,
            now,
        ));
        self.endpoint = Some(match self.direction {
            Direction::Outbound => self.tcp_peer,
            Direction::Inbound => SocketAddr::new(self.tcp_peer.ip(), hello.udp_port),
        });
        self.remote_hello = Some(hello.clone());
        self.rotate_in(session);
        self.outputs.push_back(Output::PeerReady {
            remote_static: self.remote_static.expect("set with the transport"),
            hello,
        });
        self.state = LinkState::Connecting;
        self.connecting_since = Some(now);
        self.next_heartbeat = Some(now);
    }

    /// A datagram for one of this link's sessions authenticated. Keeps the
    /// peer alive, follows its address (NAT, roaming) and confirms a rekey.
    /// `newest`: its counter is the highest the session has accepted
    /// ([`crate::noise::Opened::newest`]); only then does the endpoint
    /// move, so a delayed or reordered datagram from an old address does
    /// not pull traffic back there.
    #[inline]
    pub fn on_authenticated(
        &mut self,
        local_index: u32,
        from: SocketAddr,
        newest: bool,
        now: Instant,
    ) {
        self.last_rx = Some(now);
        if newest && self.endpoint != Some(from) {
            tracing::info!(peer = %self.tcp_peer, old = %endpoint_text(self.endpoint), new = %from, "peer's UDP address changed; following it");
            self.endpoint = Some(from);
        }
        if self
            .next
            .as_ref()
            .is_some_and(|n| n.local_index == local_index)
        {
            let next = self.next.take().expect("checked");
            // Already announced with SessionUp; rotate without announcing again.
            if let Some(old) = self.previous.take() {
                self.outputs.push_back(Output::SessionDown(old.local_index));
            }
            self.previous = self.current.replace(next);
        }
    }

    /// The plaintext of an authenticated heartbeat.
    pub fn on_heartbeat(&mut self, plaintext: &[u8], from: SocketAddr, now: Instant) {
        let Ok(hb) = heartbeat::Repr::parse(plaintext) else {
            return;
        };
        match hb.kind {
            heartbeat::Kind::Request => {
                self.send_heartbeat(
                    heartbeat::Kind::Reply,
                    hb.seq,
                    now,
                    Some((hb.echo_micros, from)),
                );
            }
            heartbeat::Kind::Reply => {
                let sent = self.created + Duration::from_micros(hb.echo_micros);
                if let Some(rtt) = now.checked_duration_since(sent) {
                    self.rtt = Some(rtt);
                }
                self.last_reply = Some(now);
                if matches!(self.state, LinkState::DataPathDown(_)) {
                    tracing::info!(peer = %self.tcp_peer, "heartbeat replies over UDP again: direct data path works");
                    self.state = LinkState::Established;
                    self.down_since = None;
                    self.next_heartbeat = Some(now + self.cfg.timers.heartbeat_established);
                    self.outputs.push_back(Output::Established);
                    self.pmtu.start();
                } else if self.state == LinkState::Connecting {
                    self.state = LinkState::Established;
                    self.next_heartbeat = Some(now + self.cfg.timers.heartbeat_established);
                    self.outputs.push_back(Output::Established);
                    // UDP works: now find out how large a datagram the path carries.
                    self.pmtu.start();
                }
            }
        }
    }

    fn send_heartbeat(
        &mut self,
        kind: heartbeat::Kind,
        seq: u32,
        now: Instant,
        reply_to: Option<(u64, SocketAddr)>,
    ) {
        let (Some(session), Some(endpoint)) = (self.current.as_ref(), self.endpoint) else {
            return;
        };
        let (echo_micros, to) = match reply_to {
            Some((echo, from)) => (echo, from),
            None => {
                self.heartbeat_seq = self.heartbeat_seq.wrapping_add(1);
                (
                    now.saturating_duration_since(self.created).as_micros() as u64,
                    endpoint,
                )
            }
        };
        let seq = if reply_to.is_some() {
            seq
        } else {
            self.heartbeat_seq
        };
        let mut buf = vec![0u8; sleeve::HEADER_LEN + heartbeat::LEN + sleeve::TAG_LEN];
        let repr = heartbeat::Repr {
            kind,
            seq,
            echo_micros,
        };
        if repr.emit(&mut buf[sleeve::HEADER_LEN..]).is_err() {
            return;
        }
        if let Ok(n) = session.seal(sleeve::MessageType::Heartbeat, &mut buf, heartbeat::LEN) {
            buf.truncate(n);
            self.outputs.push_back(Output::Datagram { to, bytes: buf });
        }
    }

    /// When [`Link::poll`] next has work, so the event loop can sleep.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let timers = &self.cfg.timers;
        let mut t = self.next_heartbeat;
        if let Some(expiry) = self.sessions().map(|s| s.expires_at()).min() {
            t = Some(t.map_or(expiry, |x| x.min(expiry)));
        }
        if let Some(due) = self.rekey_due() {
            t = Some(t.map_or(due, |x| x.min(due)));
        }
        if self.handshake.is_some() || self.remote_hello.is_none() {
            let deadline = self.created + timers.handshake_timeout;
            t = Some(t.map_or(deadline, |x| x.min(deadline)));
        }
        let probe = if self.pmtu.searching() && self.pmtu.next_wakeup().is_none() {
            Some(self.created) // a probe is due now
        } else {
            self.pmtu.next_wakeup()
        };
        match (t, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs timers: heartbeats, liveness, handshake timeout, rekey.
    pub fn poll(&mut self, now: Instant) {
        if self.is_closed() {
            return;
        }
        let timers = self.cfg.timers.clone();
        if self.remote_hello.is_none() {
            if now.duration_since(self.created) > timers.handshake_timeout {
                self.fail(format!(
                    "no complete handshake with {} within {} s: is weft running there with the same version?",
                    self.tcp_peer,
                    timers.handshake_timeout.as_secs()
                ));
            }
            return;
        }
        self.retire_expired(now);
        let established = self.state == LinkState::Established;
        let interval = if established {
            timers.heartbeat_established
        } else {
            timers.heartbeat_connecting
        };
        let limit = interval * timers.missed_limit;
        let down = matches!(self.state, LinkState::DataPathDown(_));
        // The control connection must answer too: a peer that is silent on
        // both channels is gone (TCP alone may take minutes to notice).
        let control_since = match (self.last_control_rx, self.down_since) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).or(self.connecting_since).unwrap_or(now),
        };
        let control_silence = now.saturating_duration_since(control_since);
        if down && control_silence > limit {
            return self.fail(format!(
                "peer down: no heartbeat reply over UDP and no answer on the control connection for {:.1} s",
                control_silence.as_secs_f64()
            ));
        }
        // Only replies count: they prove the path works both ways.
        let since = self.last_reply.or(self.connecting_since).unwrap_or(now);
        let silence = now.saturating_duration_since(since);
        if !down && silence > limit {
            let port = self.endpoint.map(|e| e.port()).unwrap_or(0);
            let reason = if established {
                format!(
                    "{} heartbeats missed ({:.1} s without a reply over UDP from {})",
                    timers.missed_limit,
                    silence.as_secs_f64(),
                    endpoint_text(self.endpoint)
                )
            } else {
                format!(
                    "no heartbeat reply over UDP from {} within {:.1} s: check that UDP port {} is open between the hosts",
                    endpoint_text(self.endpoint),
                    silence.as_secs_f64(),
                    port
                )
            };
            tracing::warn!(peer = %self.tcp_peer, "direct data path down: {reason}; traffic goes through other peers while heartbeats keep trying");
            self.state = LinkState::DataPathDown(reason.clone());
            self.down_since = Some(now);
            self.outputs.push_back(Output::DataPathDown(reason));
            self.pmtu = PmtuSearch::new(self.pmtu_floor(), self.cfg.underlay_mtu);
            self.next_heartbeat = Some(now);
        }
        if self.next_heartbeat.is_some_and(|t| now >= t) {
            self.send_heartbeat(heartbeat::Kind::Request, 0, now, None);
            if !self.data_path_works() {
                // Ask the control connection to prove it is alive too.
                self.send_control(&ControlMessage::Keepalive { reply: false });
            }
            self.next_heartbeat = Some(now + interval);
        }
        if self.state == LinkState::Established {
            let (probe, done) = self.pmtu.poll(now);
            if let Some(p) = probe {
                self.send_probe(p, now);
            }
            if let Some(v) = done {
                self.outputs.push_back(Output::PathMtu(v));
            }
        }
        // Rekey: either side may start one (see `rekey_due`).
        if let Some((_, _, started)) = &self.rekey {
            if now.duration_since(*started) > timers.handshake_timeout {
                tracing::warn!(peer = %self.tcp_peer, "rekey got no answer in time; retrying");
                if let Some((_, index, _)) = self.rekey.take() {
                    self.cfg.indices.release(index);
                }
            }
        }
        if self.rekey.is_none() && self.rekey_due().is_some_and(|t| now >= t) {
            self.start_rekey(now);
        }
    }

    /// Every session this link holds.
    fn sessions(&self) -> impl Iterator<Item = &Arc<Session>> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
    }

    /// When this side should start a rekey, if it should. The connection's
    /// initiator re-keys when the newest epoch (a `next` the peer already
    /// seals with counts) is `rekey_after` old; the responder waits a
    /// handshake timeout longer, as a fallback when the initiator does not.
    /// Either side re-keys at once when its send counter passes
    /// [`REKEY_AFTER_MESSAGES`] (only the sender knows it) or when it has
    /// no usable session left (its keys expired).
    fn rekey_due(&self) -> Option<Instant> {
        if self.remote_hello.is_none() || self.rekey.is_some() || self.is_closed() {
            return None;
        }
        let Some(cur) = &self.current else {
            return Some(self.created);
        };
        if cur.sent_messages() >= REKEY_AFTER_MESSAGES {
            return Some(self.created);
        }
        let newest = self.sessions().map(|s| s.established_at).max()?;
        let timers = &self.cfg.timers;
        Some(match self.direction {
            Direction::Outbound => newest + timers.rekey_after,
            Direction::Inbound => newest + timers.rekey_after + timers.handshake_timeout,
        })
    }

    /// Whether our own rekey initiation wins over the peer's when both
    /// started one at once: the side with the smaller static key wins (as
    /// for simultaneous end-to-end initiations).
    fn we_win_simultaneous_rekey(&self) -> bool {
        self.remote_static
            .is_some_and(|theirs| self.cfg.key.public() < theirs)
    }

    /// Drops every session whose keys are past [`REJECT_AFTER_TIME`]: they
    /// neither seal nor open any more (the router forgets their indices).
    /// Without a current session nothing is sent until a rekey succeeds.
    fn retire_expired(&mut self, now: Instant) {
        let had_current = self.current.is_some();
        let mut retired = Vec::new();
        for slot in [&mut self.current, &mut self.previous, &mut self.next] {
            if slot.as_ref().is_some_and(|s| s.expired(now)) {
                retired.extend(slot.take());
            }
        }
        for s in retired {
            self.outputs.push_back(Output::SessionDown(s.local_index));
        }
        if had_current && self.current.is_none() {
            // An answered rekey the peer already seals with takes over.
            self.current = self.next.take();
            if self.current.is_none() {
                tracing::warn!(peer = %self.tcp_peer, "data keys are {} s old and no rekey succeeded: they are no longer used; nothing is sent to this peer until a rekey succeeds", REJECT_AFTER_TIME.as_secs());
            }
        }
    }

    fn start_rekey(&mut self, now: Instant) {
        let started = Rekey::initiator(&self.handshake_hash).and_then(|mut r| {
            let msg = r.write()?;
            Ok((r, msg))
        });
        match started {
            Ok((rekey, msg)) => {
                let index = self.cfg.indices.allocate();
                self.rekey = Some((rekey, index, now));
                self.send_control(&ControlMessage::RekeyInit { index, noise: msg });
            }
            Err(e) => self.fail(format!("cannot start rekey: {e}")),
        }
    }

    fn pmtu_floor(&self) -> u16 {
        floor(&self.cfg)
    }

    /// Local indices of every live session (for the router's map).
    pub fn session_indices(&self) -> impl Iterator<Item = u32> + '_ {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
            .map(|s| s.local_index)
    }
}

impl Drop for Link {
    /// Gives back the indices that never reached the router: the first
    /// session's before the hello, and a rekey's still in flight. (Indices
    /// of announced sessions are released by the router when it removes
    /// them.)
    fn drop(&mut self) {
        if self.remote_hello.is_none() {
            self.cfg.indices.release(self.first_index);
        }
        if let Some((_, index, _)) = self.rekey.take() {
            self.cfg.indices.release(index);
        }
    }
}

/// The smallest datagram any path must carry.
fn floor(cfg: &LinkConfig) -> u16 {
    if cfg.ipv6_underlay {
        pmtu::FLOOR_IPV6
    } else {
        pmtu::FLOOR_IPV4
    }
}

/// A peer's UDP endpoint for messages: the address, or words when unknown.
fn endpoint_text(endpoint: Option<SocketAddr>) -> String {
    endpoint.map_or_else(
        || "the peer (no UDP address known yet)".to_string(),
        |e| e.to_string(),
    )
}
