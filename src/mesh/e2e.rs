//! End-to-end sessions between peers that are not neighbours, as a sans-IO
//! state machine.
//!
//! Traffic to a peer without a working direct connection is relayed by
//! other peers; it stays sealed end to end with a session that only the
//! source and the destination hold. [`EndToEnd`] makes and keeps those
//! sessions: it runs the [`E2eHandshake`] (Noise `IKpsk2`: the initiator
//! knows the responder's identity, which is its static key) over messages
//! the driver relays, and hands out [`Session`]s like a link does.
//!
//! It never touches a socket, the clock or the OS random generator: time
//! comes in as `Instant` arguments, receiver indices from the injected
//! random source, and everything to do comes out of
//! [`EndToEnd::poll_output`].
//!
//! The driver:
//! - calls [`EndToEnd::want`] for every packet to a peer it reaches through
//!   relays (cheap when the session is fine) and seals with
//!   [`EndToEnd::sending_session`];
//! - relays [`E2eOutput::Send`] messages to their peer and feeds received
//!   ones to [`EndToEnd::on_message`] with the sender's mesh identity;
//! - installs and removes sessions by local index on
//!   [`E2eOutput::SessionUp`] / [`E2eOutput::SessionDown`], and after a
//!   SessionUp with `confirm` sends one datagram on the new session soon
//!   (an empty `Data` datagram will do): the responder keeps sealing with
//!   its older session until a datagram on the new one authenticates;
//! - reports authenticated datagrams with [`EndToEnd::on_authenticated`];
//! - runs [`EndToEnd::handle_timeout`] at [`EndToEnd::poll_timeout`];
//! - calls [`EndToEnd::forget`] when a peer leaves the mesh or becomes a
//!   neighbour again (a forgotten peer is not retried or rekeyed).
//!
//! Rules:
//! - Simultaneous initiation: the peer with the smaller identity keeps its
//!   own initiation and ignores the other's; the larger one abandons its
//!   own and answers.
//! - A handshake unanswered after `handshake_timeout` is retried after
//!   [`RETRY_INITIAL`], doubling up to [`RETRY_CAP`]; one initiation in
//!   flight per peer.
//! - Rekey: the smaller identity re-initiates when the session is
//!   `rekey_after` old; the larger one only after `rekey_after +
//!   handshake_timeout`, as a fallback; either side when its send counter
//!   passes [`REKEY_AFTER_MESSAGES`] (only the sender knows it). The old
//!   session stays in use until the new one is up, and the one before
//!   keeps opening datagrams in flight.
//! - Replayed initiations (the same ephemeral key again) are dropped; so
//!   are answers to initiations that are no longer pending. A replay of an
//!   initiation older than the remembered ones (or from before a
//!   [`EndToEnd::forget`]) is answered, but it never completes: the
//!   session it makes is kept as the next one and never used, unless no
//!   session existed at all. Defeating that needs a wall-clock timestamp
//!   in the initiation, as WireGuard does.
//! - Keys expire: a session is retired [`REJECT_AFTER_TIME`] after its
//!   handshake whether or not a rekey succeeded (an answered `next` takes
//!   over from an expired current one).
//! - Memory is bounded: at most `max_peers` peers and `max_handshakes`
//!   initiations in flight; further wants are refused (and counted) until
//!   some finish.

use super::control::CipherChoice;
use super::peer::PeerId;
use crate::noise::handshake::{E2eHandshake, HandshakeError};
use crate::noise::session::{REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES};
use crate::noise::{CipherKind, IndexRegistry, NetworkSecret, Session, StaticKey};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Version of the end-to-end protocol spoken by this build.
pub const E2E_VERSION: u32 = 1;
/// Default bound on the peers with end-to-end state.
pub const DEFAULT_MAX_PEERS: usize = 65536;
/// Default bound on initiations in flight.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
/// Delay before the first retry of an unanswered or failed handshake.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest delay between retries.
pub const RETRY_CAP: Duration = Duration::from_secs(30);
/// Initiation ephemeral keys remembered per peer against replays.
const SEEN_EPHEMERALS: usize = 8;
/// An X25519 ephemeral key: the clear first bytes of an `IK` message 1.
const EPHEMERAL_LEN: usize = 32;

/// What every end-to-end session of this host shares.
#[derive(Debug)]
pub struct E2eConfig {
    /// This host's static key (its identity).
    pub key: StaticKey,
    /// The network secret, mixed into every handshake.
    pub secret: NetworkSecret,
    /// The cipher this host asks for.
    pub cipher: CipherChoice,
    /// Whether this host has AES hardware.
    pub aes_hw: bool,
    /// Re-key a session this old (see the module docs for who does).
    pub rekey_after: Duration,
    /// Give up an initiation unanswered for this long, and retry.
    pub handshake_timeout: Duration,
    /// At most this many peers with end-to-end state.
    pub max_peers: usize,
    /// At most this many initiations in flight.
    pub max_handshakes: usize,
    /// The receiver indices in use on this host (shared with the router
    /// and the links), so a new index never collides with any of them.
    pub indices: IndexRegistry,
}

impl E2eConfig {
    /// A configuration with the link timers' defaults (rekey after 120 s,
    /// handshake timeout 10 s) and the default bounds.
    pub fn new(key: StaticKey, secret: NetworkSecret, cipher: CipherChoice, aes_hw: bool) -> Self {
        let timers = super::link::Timers::default();
        E2eConfig {
            key,
            secret,
            cipher,
            aes_hw,
            rekey_after: timers.rekey_after,
            handshake_timeout: timers.handshake_timeout,
            max_peers: DEFAULT_MAX_PEERS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            indices: IndexRegistry::new(),
        }
    }
}

/// A handshake message, relayed between the two peers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum E2eMessage {
    /// Noise message 1.
    Init {
        /// The initiator's receiver index for the new session.
        index: u32,
        /// The Noise message.
        noise: Vec<u8>,
    },
    /// Noise message 2.
    Resp {
        /// The responder's receiver index for the new session.
        index: u32,
        /// The `index` of the Init this answers, so a late answer to an
        /// abandoned initiation is recognised and dropped.
        initiator_index: u32,
        /// The Noise message.
        noise: Vec<u8>,
    },
}

impl E2eMessage {
    /// Encodes to JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("end-to-end messages always serialize")
    }

    /// Decodes JSON bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// What each side says about itself inside the (encrypted) handshake.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct Offer {
    version: u32,
    cipher: CipherChoice,
    aes_hw: bool,
}

/// Why an end-to-end handshake failed or a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    /// A handshake message did not decrypt.
    #[error("end-to-end handshake message did not authenticate: the peer uses a different network secret, or a relay tampered with it")]
    Authentication,
    /// Any other handshake protocol error.
    #[error("end-to-end handshake protocol error: {0}")]
    Protocol(String),
    /// An initiation proved a static key other than the sender the relayed
    /// envelope claims.
    #[error("end-to-end initiation claims to come from {claimed} but proves identity {proven}: refused (a relay forwarding it under the wrong source, or an impersonation attempt)")]
    WrongIdentity {
        /// The identity the envelope claims.
        claimed: PeerId,
        /// The identity the handshake proved.
        proven: PeerId,
    },
    /// Both peers insist on different ciphers.
    #[error("cipher mismatch: this host is configured for {} and the peer for {}; set the same --cipher on both", .ours.name(), .theirs.name())]
    CipherMismatch {
        /// This host's cipher.
        ours: CipherKind,
        /// The peer's cipher.
        theirs: CipherKind,
    },
    /// The peers speak different end-to-end protocol versions.
    #[error("peer speaks end-to-end protocol version {theirs} and this host {ours}: run the same weft release on both")]
    VersionMismatch {
        /// This host's version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The handshake payload is not an offer this build understands.
    #[error("end-to-end handshake payload is malformed")]
    MalformedOffer,
    /// No answer to an initiation in time.
    #[error("no end-to-end handshake answer within {} s: the relays towards the peer may be down", .after.as_secs())]
    Timeout {
        /// How long the initiation waited.
        after: Duration,
    },
}

fn handshake_error(e: HandshakeError) -> E2eError {
    match e {
        HandshakeError::Authentication => E2eError::Authentication,
        HandshakeError::Protocol(p) => E2eError::Protocol(p),
    }
}

/// Chooses the data cipher from both sides' choices, with the rule of
/// [`super::control::negotiate_cipher`]: different exact choices conflict,
/// an exact choice wins over `Auto`, and `Auto` with `Auto` gives AES-GCM
/// only when both have AES hardware.
pub fn negotiate(
    ours: CipherChoice,
    our_aes_hw: bool,
    theirs: CipherChoice,
    their_aes_hw: bool,
) -> Result<CipherKind, E2eError> {
    match (ours, theirs) {
        (CipherChoice::Exactly(a), CipherChoice::Exactly(b)) if a != b => {
            Err(E2eError::CipherMismatch { ours: a, theirs: b })
        }
        (CipherChoice::Exactly(a), _) | (_, CipherChoice::Exactly(a)) => Ok(a),
        (CipherChoice::Auto, CipherChoice::Auto) => Ok(if our_aes_hw && their_aes_hw {
            CipherKind::AesGcm
        } else {
            CipherKind::ChaChaPoly
        }),
    }
}

/// What the driver must do.
#[derive(Debug)]
pub enum E2eOutput {
    /// Relay this handshake message to `to`.
    Send {
        /// The peer it is for.
        to: PeerId,
        /// The message.
        message: E2eMessage,
    },
    /// A new session with `peer`: accept datagrams for its local index.
    SessionUp {
        /// The peer.
        peer: PeerId,
        /// The session.
        session: Arc<Session>,
        /// This side initiated: send a datagram on the session soon (an
        /// empty `Data` will do) so the peer starts sealing with it.
        confirm: bool,
    },
    /// A session retired: forget its local index.
    SessionDown {
        /// The peer.
        peer: PeerId,
        /// The retired session's local index.
        local_index: u32,
    },
    /// A handshake with `peer` failed, or a message claiming to be from it
    /// was refused.
    Failed {
        /// The peer (as the message claimed, for a refused message).
        peer: PeerId,
        /// Why.
        reason: E2eError,
    },
}

/// Where the end-to-end session with a peer is, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum E2eState {
    /// No session yet; a handshake is in flight or about to be retried.
    Handshaking,
    /// A session is up (rekeys do not change `since`).
    Established {
        /// When the first session came up.
        since: Instant,
    },
    /// No session; the last handshake failed (it will be retried).
    Failed {
        /// Why.
        reason: E2eError,
    },
}

/// Messages dropped and requests refused, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct E2eCounters {
    /// Initiations sent.
    pub inits_sent: u64,
    /// Sessions brought up (either side).
    pub sessions_up: u64,
    /// Initiations unanswered in time.
    pub timeouts: u64,
    /// Handshake messages that did not authenticate.
    pub authentication_failures: u64,
    /// Initiations proving another identity than their envelope claims.
    pub wrong_identity: u64,
    /// Initiations seen before.
    pub replayed: u64,
    /// Answers to no pending initiation.
    pub unknown_index: u64,
    /// Initiations ignored because ours to the same peer wins.
    pub simultaneous_ignored: u64,
    /// Malformed messages (bad offer, from ourselves).
    pub malformed: u64,
    /// Wants and initiations refused by the peer or handshake bounds.
    pub refused: u64,
}

/// An initiation in flight.
struct Pending {
    handshake: E2eHandshake,
    local_index: u32,
    deadline: Instant,
}

/// Everything about one peer.
struct PeerState {
    /// Seals outgoing datagrams.
    current: Option<Arc<Session>>,
    /// The session before: still opens datagrams in flight.
    previous: Option<Arc<Session>>,
    /// A session this side answered: opens datagrams, becomes current when
    /// the first one authenticates.
    next: Option<Arc<Session>>,
    pending: Option<Pending>,
    /// The driver asked for a session (so failures are retried).
    wanted: bool,
    /// No initiation before this (backoff after a failure).
    retry_at: Option<Instant>,
    retry_delay: Duration,
    up_since: Option<Instant>,
    failure: Option<E2eError>,
    seen_ephemerals: VecDeque<[u8; EPHEMERAL_LEN]>,
    /// This peer's key in the timer set.
    wakeup: Option<Instant>,
}

impl PeerState {
    fn new() -> Self {
        PeerState {
            current: None,
            previous: None,
            next: None,
            pending: None,
            wanted: false,
            retry_at: None,
            retry_delay: RETRY_INITIAL,
            up_since: None,
            failure: None,
            seen_ephemerals: VecDeque::new(),
            wakeup: None,
        }
    }

    fn sessions(&self) -> impl Iterator<Item = &Arc<Session>> {
        [&self.current, &self.previous, &self.next]
            .into_iter()
            .flatten()
    }

    /// When the newest session was made (a pending `next` counts: the peer
    /// already seals with it).
    fn newest_established(&self) -> Option<Instant> {
        self.sessions().map(|s| s.established_at).max()
    }

    /// When this side should re-key, if it has a session.
    fn rekey_due(&self, cfg: &E2eConfig, smaller: bool) -> Option<Instant> {
        let newest = self.newest_established()?;
        let after = if smaller {
            cfg.rekey_after
        } else {
            cfg.rekey_after + cfg.handshake_timeout
        };
        Some(newest + after)
    }

    /// When this peer's state next needs the timer.
    fn wakeup(&self, cfg: &E2eConfig, smaller: bool) -> Option<Instant> {
        let expiry = self.sessions().map(|s| s.expires_at()).min();
        match (self.wakeup_without_expiry(cfg, smaller), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn wakeup_without_expiry(&self, cfg: &E2eConfig, smaller: bool) -> Option<Instant> {
        if let Some(p) = &self.pending {
            return Some(p.deadline);
        }
        if !self.wanted && self.current.is_none() {
            return None;
        }
        match (self.retry_at, self.current.is_some()) {
            (Some(t), _) => Some(t),
            (None, true) => self.rekey_due(cfg, smaller),
            // Wanted, no session, nothing pending, no backoff (a refused
            // want, or a failure as responder): the next want initiates.
            (None, false) => None,
        }
    }

    fn backoff(&mut self, now: Instant) {
        self.retry_at = Some(now + self.retry_delay);
        self.retry_delay = (self.retry_delay * 2).min(RETRY_CAP);
    }
}

/// The sans-IO manager of end-to-end sessions (see the module docs).
pub struct EndToEnd {
    cfg: Arc<E2eConfig>,
    own: PeerId,
    rng: Box<dyn RngCore + Send>,
    offer: Vec<u8>,
    peers: HashMap<PeerId, PeerState>,
    /// Local index of every live session -> its peer.
    indices: HashMap<u32, PeerId>,
    /// Local indices of initiations in flight (never reused meanwhile).
    reserved: HashSet<u32>,
    timers: BTreeSet<(Instant, PeerId)>,
    handshakes: usize,
    outputs: VecDeque<E2eOutput>,
    counters: E2eCounters,
}

impl EndToEnd {
    /// A manager for the host with identity `own` (the public half of
    /// `cfg.key`). `rng` is the driver's random source, for receiver
    /// indices.
    pub fn new(cfg: Arc<E2eConfig>, own: PeerId, rng: Box<dyn RngCore + Send>) -> Self {
        let offer = serde_json::to_vec(&Offer {
            version: E2E_VERSION,
            cipher: cfg.cipher,
            aes_hw: cfg.aes_hw,
        })
        .expect("offers always serialize");
        EndToEnd {
            cfg,
            own,
            rng,
            offer,
            peers: HashMap::new(),
            indices: HashMap::new(),
            reserved: HashSet::new(),
            timers: BTreeSet::new(),
            handshakes: 0,
            outputs: VecDeque::new(),
            counters: E2eCounters::default(),
        }
    }

    /// Makes sure a session to `peer` exists or is being made. Cheap and
    /// silent when it does: call it for every packet to a relayed peer.
    pub fn want(&mut self, peer: PeerId, now: Instant) {
        if peer == self.own {
            return;
        }
        if let Some(st) = self.peers.get_mut(&peer) {
            st.wanted = true;
            if st.pending.is_some() || st.retry_at.is_some_and(|t| now < t) {
                return;
            }
            if st
                .current
                .as_ref()
                .is_some_and(|c| c.sent_messages() < REKEY_AFTER_MESSAGES)
            {
                return;
            }
        } else if self.peers.len() >= self.cfg.max_peers {
            self.counters.refused += 1;
            return;
        }
        if self.handshakes >= self.cfg.max_handshakes {
            self.counters.refused += 1;
            return;
        }
        let mut st = self.peers.remove(&peer).unwrap_or_else(PeerState::new);
        st.wanted = true;
        self.initiate(peer, &mut st, now);
        self.put(peer, st);
    }

    /// The path to `peer` changed (another relay, or relayed from now on):
    /// an initiation in flight may have gone down the old path and be
    /// lost, so it is abandoned and sent again at once, without waiting
    /// for its timeout or a backoff.
    pub fn path_changed(&mut self, peer: PeerId, now: Instant) {
        let Some(mut st) = self.peers.remove(&peer) else {
            return;
        };
        let restart = st.pending.is_some() || (st.wanted && st.current.is_none());
        if let Some(p) = st.pending.take() {
            self.release(&p);
        }
        if restart {
            st.retry_at = None;
            st.retry_delay = RETRY_INITIAL;
            if self.handshakes < self.cfg.max_handshakes {
                self.initiate(peer, &mut st, now);
            } else {
                self.counters.refused += 1;
            }
        }
        self.put(peer, st);
    }

    /// A relayed handshake message from `from`, the mesh identity its
    /// envelope claims. Never panics, whatever the bytes.
    pub fn on_message(&mut self, from: PeerId, message: E2eMessage, now: Instant) {
        if from == self.own {
            self.counters.malformed += 1;
            return;
        }
        match message {
            E2eMessage::Init { index, noise } => self.on_init(from, index, &noise, now),
            E2eMessage::Resp {
                index,
                initiator_index,
                noise,
            } => self.on_resp(from, index, initiator_index, &noise, now),
        }
    }

    fn on_init(&mut self, from: PeerId, remote_index: u32, noise: &[u8], now: Instant) {
        if !self.peers.contains_key(&from) && self.peers.len() >= self.cfg.max_peers {
            self.counters.refused += 1;
            return;
        }
        let mut handshake = match E2eHandshake::responder(&self.cfg.key, &self.cfg.secret) {
            Ok(h) => h,
            Err(e) => return self.fail(from, handshake_error(e)),
        };
        let payload = match handshake.read(noise) {
            Ok(p) => p,
            Err(e) => {
                self.counters.authentication_failures += 1;
                return self.fail(from, handshake_error(e));
            }
        };
        let proven = PeerId(handshake.remote_static().unwrap_or_default());
        if proven != from {
            self.counters.wrong_identity += 1;
            return self.fail(
                from,
                E2eError::WrongIdentity {
                    claimed: from,
                    proven,
                },
            );
        }
        // It authenticated, so its first bytes are the ephemeral key.
        let mut ephemeral = [0u8; EPHEMERAL_LEN];
        if let Some(e) = noise.get(..EPHEMERAL_LEN) {
            ephemeral.copy_from_slice(e);
        }
        if self
            .peers
            .get(&from)
            .is_some_and(|st| st.seen_ephemerals.contains(&ephemeral))
        {
            self.counters.replayed += 1;
            return;
        }
        if self.own < from && self.peers.get(&from).is_some_and(|st| st.pending.is_some()) {
            // Our own initiation wins; the peer answers it.
            self.counters.simultaneous_ignored += 1;
            return;
        }
        let mut st = self.peers.remove(&from).unwrap_or_else(PeerState::new);
        if st.seen_ephemerals.len() == SEEN_EPHEMERALS {
            st.seen_ephemerals.pop_front();
        }
        st.seen_ephemerals.push_back(ephemeral);
        if let Some(p) = st.pending.take() {
            // The smaller peer keeps its initiation: abandon ours.
            self.release(&p);
        }
        let checked = self.check_offer(&payload);
        // Answer even a mismatch, so the initiator learns it from our offer.
        let answered = handshake
            .write(&self.offer)
            .and_then(|reply| Ok((reply, handshake.finish()?)));
        let (reply, established) = match answered {
            Ok(a) => a,
            Err(e) => {
                self.record_failure(from, &mut st, handshake_error(e), None);
                return self.put(from, st);
            }
        };
        let local_index = self.fresh_index();
        // The session is announced before the answer goes out, so the
        // initiator's first datagram on it finds it installed.
        match checked {
            Ok(cipher) => {
                let session = Arc::new(Session::new(
                    cipher,
                    &established.data_keys,
                    local_index,
                    remote_index,
                    now,
                ));
                self.announce(from, &session, false);
                if st.current.is_none() {
                    st.current = Some(session);
                    st.up_since.get_or_insert(now);
                } else if let Some(old) = st.next.replace(session) {
                    self.retire(from, &old);
                }
                st.failure = None;
                st.retry_at = None;
                st.retry_delay = RETRY_INITIAL;
            }
            Err(reason) => {
                // No session took the index: give it back.
                self.cfg.indices.release(local_index);
                self.record_failure(from, &mut st, reason, None)
            }
        }
        self.outputs.push_back(E2eOutput::Send {
            to: from,
            message: E2eMessage::Resp {
                index: local_index,
                initiator_index: remote_index,
                noise: reply,
            },
        });
        self.put(from, st);
    }

    fn on_resp(
        &mut self,
        from: PeerId,
        remote_index: u32,
        initiator_index: u32,
        noise: &[u8],
        now: Instant,
    ) {
        let matches = self.peers.get(&from).is_some_and(|st| {
            st.pending
                .as_ref()
                .is_some_and(|p| p.local_index == initiator_index)
        });
        if !matches {
            self.counters.unknown_index += 1;
            return;
        }
        let mut st = self.peers.remove(&from).expect("checked above");
        let Pending {
            mut handshake,
            local_index,
            ..
        } = st.pending.take().expect("checked above");
        self.handshakes -= 1;
        self.reserved.remove(&local_index);
        // Until a session takes it, the index goes back on every failure.
        let registry = self.cfg.indices.clone();
        let finished = handshake
            .read(noise)
            .and_then(|payload| Ok((payload, handshake.finish()?)));
        let (payload, established) = match finished {
            Ok(f) => f,
            Err(e) => {
                if matches!(e, HandshakeError::Authentication) {
                    self.counters.authentication_failures += 1;
                }
                registry.release(local_index);
                self.record_failure(from, &mut st, handshake_error(e), Some(now));
                return self.put(from, st);
            }
        };
        if established.remote_static != from.0 {
            // Cannot happen with IK (the initiator fixed the key); refuse anyway.
            let reason = E2eError::WrongIdentity {
                claimed: from,
                proven: PeerId(established.remote_static),
            };
            registry.release(local_index);
            self.record_failure(from, &mut st, reason, Some(now));
            return self.put(from, st);
        }
        match self.check_offer(&payload) {
            Ok(cipher) => {
                let session = Arc::new(Session::new(
                    cipher,
                    &established.data_keys,
                    local_index,
                    remote_index,
                    now,
                ));
                self.indices.insert(local_index, from);
                self.counters.sessions_up += 1;
                self.outputs.push_back(E2eOutput::SessionUp {
                    peer: from,
                    session: session.clone(),
                    confirm: true,
                });
                if let Some(old) = st.previous.take() {
                    self.retire(from, &old);
                }
                st.previous = st.current.replace(session);
                st.up_since.get_or_insert(now);
                st.failure = None;
                st.retry_at = None;
                st.retry_delay = RETRY_INITIAL;
            }
            Err(reason) => {
                registry.release(local_index);
                self.record_failure(from, &mut st, reason, Some(now))
            }
        }
        self.put(from, st);
    }

    /// The session to seal datagrams for `peer` with.
    pub fn sending_session(&self, peer: &PeerId) -> Option<&Arc<Session>> {
        self.peers.get(peer)?.current.as_ref()
    }

    /// The peer of a live session's local index.
    pub fn peer_of_index(&self, local_index: u32) -> Option<PeerId> {
        self.indices.get(&local_index).copied()
    }

    /// Drops everything about `peer` (it left, or is a neighbour again):
    /// SessionDown for each of its sessions; no retries, no rekeys.
    pub fn forget(&mut self, peer: &PeerId) {
        let Some(mut st) = self.peers.remove(peer) else {
            return;
        };
        if let Some(t) = st.wakeup.take() {
            self.timers.remove(&(t, *peer));
        }
        if let Some(p) = st.pending.take() {
            self.release(&p);
        }
        for s in [st.current.take(), st.previous.take(), st.next.take()]
            .into_iter()
            .flatten()
        {
            self.retire(*peer, &s);
        }
    }

    /// A datagram for the session with this local index authenticated: the
    /// peer seals with it, so an answered session becomes current.
    #[inline]
    pub fn on_authenticated(&mut self, local_index: u32, now: Instant) {
        let Some(peer) = self.indices.get(&local_index).copied() else {
            return;
        };
        let promote = self.peers.get(&peer).is_some_and(|st| {
            st.next
                .as_ref()
                .is_some_and(|n| n.local_index == local_index)
        });
        if !promote {
            return;
        }
        let mut st = self.peers.remove(&peer).expect("checked above");
        let next = st.next.take().expect("checked above");
        // Already announced with SessionUp; rotate without announcing again.
        if let Some(old) = st.previous.take() {
            self.retire(peer, &old);
        }
        st.previous = st.current.replace(next);
        st.up_since.get_or_insert(now);
        self.put(peer, st);
    }

    /// When [`EndToEnd::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Runs due timers: handshake timeouts, retries and rekeys.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&(t, peer)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            due.push(peer);
        }
        for peer in due {
            let Some(mut st) = self.peers.remove(&peer) else {
                continue;
            };
            st.wakeup = None;
            self.run_timers(peer, &mut st, now);
            self.put(peer, st);
        }
    }

    fn run_timers(&mut self, peer: PeerId, st: &mut PeerState, now: Instant) {
        self.retire_expired(peer, st, now);
        if let Some(p) = st.pending.as_ref() {
            if now < p.deadline {
                return;
            }
            let p = st.pending.take().expect("checked above");
            self.release(&p);
            self.counters.timeouts += 1;
            let reason = E2eError::Timeout {
                after: self.cfg.handshake_timeout,
            };
            self.record_failure(peer, st, reason, Some(now));
            return;
        }
        if !st.wanted && st.current.is_none() {
            return;
        }
        if st.retry_at.is_some_and(|t| now < t) {
            return;
        }
        let rekey = st.current.as_ref().map(|c| {
            c.sent_messages() >= REKEY_AFTER_MESSAGES
                || st
                    .rekey_due(&self.cfg, self.own < peer)
                    .is_some_and(|t| now >= t)
        });
        if rekey == Some(false) {
            return;
        }
        if self.handshakes >= self.cfg.max_handshakes {
            self.counters.refused += 1;
            st.retry_at = Some(now + st.retry_delay);
            return;
        }
        st.retry_at = None;
        self.initiate(peer, st, now);
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<E2eOutput> {
        self.outputs.pop_front()
    }

    /// Every peer with end-to-end state and where it is.
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, E2eState)> + '_ {
        self.peers.iter().map(|(peer, st)| {
            let state = match (&st.current, &st.pending, &st.failure) {
                (Some(_), _, _) => E2eState::Established {
                    since: st
                        .up_since
                        .unwrap_or_else(|| st.current.as_ref().expect("matched").established_at),
                },
                (None, Some(_), _) | (None, None, None) => E2eState::Handshaking,
                (None, None, Some(reason)) => E2eState::Failed {
                    reason: reason.clone(),
                },
            };
            (*peer, state)
        })
    }

    /// Drop and refusal counts.
    pub fn counters(&self) -> &E2eCounters {
        &self.counters
    }

    /// Sends an initiation to `peer` (the caller checked the bounds).
    fn initiate(&mut self, peer: PeerId, st: &mut PeerState, now: Instant) {
        let started = E2eHandshake::initiator(&self.cfg.key, &self.cfg.secret, peer.as_bytes())
            .and_then(|mut h| Ok((h.write(&self.offer)?, h)));
        let (noise, handshake) = match started {
            Ok(s) => s,
            Err(e) => return self.record_failure(peer, st, handshake_error(e), Some(now)),
        };
        let local_index = self.fresh_index();
        self.reserved.insert(local_index);
        self.handshakes += 1;
        self.counters.inits_sent += 1;
        st.pending = Some(Pending {
            handshake,
            local_index,
            deadline: now + self.cfg.handshake_timeout,
        });
        self.outputs.push_back(E2eOutput::Send {
            to: peer,
            message: E2eMessage::Init {
                index: local_index,
                noise,
            },
        });
    }

    /// Reads the peer's offer and agrees on the cipher.
    fn check_offer(&mut self, payload: &[u8]) -> Result<CipherKind, E2eError> {
        let Ok(theirs) = serde_json::from_slice::<Offer>(payload) else {
            self.counters.malformed += 1;
            return Err(E2eError::MalformedOffer);
        };
        if theirs.version != E2E_VERSION {
            return Err(E2eError::VersionMismatch {
                ours: E2E_VERSION,
                theirs: theirs.version,
            });
        }
        negotiate(
            self.cfg.cipher,
            self.cfg.aes_hw,
            theirs.cipher,
            theirs.aes_hw,
        )
    }

    /// A handshake with `peer` failed: remember why, say so, and back off
    /// (`backoff_from`) before the next initiation.
    fn record_failure(
        &mut self,
        peer: PeerId,
        st: &mut PeerState,
        reason: E2eError,
        backoff_from: Option<Instant>,
    ) {
        if let Some(now) = backoff_from {
            st.backoff(now);
        }
        st.failure = Some(reason.clone());
        self.fail(peer, reason);
    }

    fn fail(&mut self, peer: PeerId, reason: E2eError) {
        self.outputs.push_back(E2eOutput::Failed { peer, reason });
    }

    fn announce(&mut self, peer: PeerId, session: &Arc<Session>, confirm: bool) {
        self.indices.insert(session.local_index, peer);
        self.counters.sessions_up += 1;
        self.outputs.push_back(E2eOutput::SessionUp {
            peer,
            session: session.clone(),
            confirm,
        });
    }

    /// Retires the sessions of `peer` whose keys are past
    /// [`REJECT_AFTER_TIME`]; an answered `next` replaces an expired
    /// current session.
    fn retire_expired(&mut self, peer: PeerId, st: &mut PeerState, now: Instant) {
        let had_current = st.current.is_some();
        let mut expired = Vec::new();
        for slot in [&mut st.current, &mut st.previous, &mut st.next] {
            if slot.as_ref().is_some_and(|s| s.expired(now)) {
                expired.extend(slot.take());
            }
        }
        for s in expired {
            self.retire(peer, &s);
        }
        if had_current && st.current.is_none() {
            st.current = st.next.take();
            if st.current.is_none() {
                tracing::warn!(%peer, "end-to-end keys are {} s old and no rekey succeeded: no longer used", REJECT_AFTER_TIME.as_secs());
            }
        }
    }

    fn retire(&mut self, peer: PeerId, session: &Session) {
        self.indices.remove(&session.local_index);
        self.outputs.push_back(E2eOutput::SessionDown {
            peer,
            local_index: session.local_index,
        });
    }

    fn release(&mut self, pending: &Pending) {
        self.handshakes -= 1;
        self.reserved.remove(&pending.local_index);
        self.cfg.indices.release(pending.local_index);
    }

    /// A receiver index no live session or pending initiation uses, here
    /// or anywhere on this host (the shared registry): drawn again on
    /// collision.
    fn fresh_index(&mut self) -> u32 {
        let (indices, reserved, rng) = (&self.indices, &self.reserved, &mut self.rng);
        let registry = self.cfg.indices.clone();
        registry.allocate_with(|| loop {
            let index = rng.next_u32();
            if !indices.contains_key(&index) && !reserved.contains(&index) {
                return index;
            }
        })
    }

    /// Puts a peer's state back and files its next wakeup.
    fn put(&mut self, peer: PeerId, mut st: PeerState) {
        let wakeup = st.wakeup(&self.cfg, self.own < peer);
        if st.wakeup != wakeup {
            if let Some(old) = st.wakeup {
                self.timers.remove(&(old, peer));
            }
            if let Some(new) = wakeup {
                self.timers.insert((new, peer));
            }
            st.wakeup = wakeup;
        }
        self.peers.insert(peer, st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::control::{negotiate_cipher, Hello, LocalDevice, PROTOCOL_VERSION};
    use crate::noise::session::OpenError;
    use crate::wire::sleeve::{self, MessageType};
    use rand_core::impls;
    use std::collections::BTreeMap;

    /// Deterministic random source for tests.
    struct SplitMix(u64);

    impl RngCore for SplitMix {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            impls::fill_bytes_via_next(self, dest)
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    fn secret(s: &[u8]) -> NetworkSecret {
        NetworkSecret::from_bytes(s, "test").unwrap()
    }

    fn config(key: StaticKey, secret: NetworkSecret, cipher: CipherChoice) -> E2eConfig {
        E2eConfig::new(key, secret, cipher, true)
    }

    /// Keys sorted by identity: the first is the smaller peer.
    fn keys(n: usize) -> Vec<StaticKey> {
        let mut k: Vec<_> = (0..n).map(|_| StaticKey::generate()).collect();
        k.sort_by_key(|k| k.public());
        k
    }

    type DropRule = Box<dyn FnMut(&PeerId, &PeerId, &E2eMessage) -> bool>;

    /// Hosts that relay messages to each other instantly, recording what
    /// the driver would install.
    struct Net {
        hosts: BTreeMap<PeerId, EndToEnd>,
        installed: HashMap<PeerId, HashMap<u32, Arc<Session>>>,
        failed: Vec<(PeerId, PeerId, E2eError)>,
        confirms: Vec<(PeerId, u32)>,
        sent: Vec<(PeerId, PeerId, E2eMessage)>,
        drop: DropRule,
    }

    impl Net {
        fn new(cfgs: Vec<E2eConfig>) -> (Net, Vec<PeerId>) {
            let mut hosts = BTreeMap::new();
            let mut ids = vec![];
            for (i, cfg) in cfgs.into_iter().enumerate() {
                let id = PeerId(cfg.key.public());
                let rng = Box::new(SplitMix(i as u64 + 1));
                hosts.insert(id, EndToEnd::new(Arc::new(cfg), id, rng));
                ids.push(id);
            }
            let net = Net {
                hosts,
                installed: HashMap::new(),
                failed: vec![],
                confirms: vec![],
                sent: vec![],
                drop: Box::new(|_, _, _| false),
            };
            (net, ids)
        }

        fn same_secret(n: usize) -> (Net, Vec<PeerId>) {
            let s = secret(b"net");
            Net::new(
                keys(n)
                    .into_iter()
                    .map(|k| config(k, s.clone(), CipherChoice::Auto))
                    .collect(),
            )
        }

        fn host(&mut self, id: &PeerId) -> &mut EndToEnd {
            self.hosts.get_mut(id).unwrap()
        }

        /// Drains every output and delivers every message until quiet.
        fn run(&mut self, now: Instant) {
            loop {
                let mut queue = vec![];
                for (id, host) in self.hosts.iter_mut() {
                    while let Some(o) = host.poll_output() {
                        match o {
                            E2eOutput::Send { to, message } => queue.push((*id, to, message)),
                            E2eOutput::SessionUp {
                                peer,
                                session,
                                confirm,
                            } => {
                                assert_eq!(host.peer_of_index(session.local_index), Some(peer));
                                if confirm {
                                    self.confirms.push((*id, session.local_index));
                                }
                                let old = self
                                    .installed
                                    .entry(*id)
                                    .or_default()
                                    .insert(session.local_index, session);
                                assert!(old.is_none(), "index announced twice");
                            }
                            E2eOutput::SessionDown { local_index, .. } => {
                                let gone =
                                    self.installed.entry(*id).or_default().remove(&local_index);
                                assert!(gone.is_some(), "retired an unknown index");
                                // As the router does: the index is free again.
                                host.cfg.indices.release(local_index);
                            }
                            E2eOutput::Failed { peer, reason } => {
                                self.failed.push((*id, peer, reason))
                            }
                        }
                    }
                }
                if queue.is_empty() {
                    return;
                }
                for (from, to, message) in queue {
                    self.sent.push((from, to, message.clone()));
                    if (self.drop)(&from, &to, &message) {
                        continue;
                    }
                    if let Some(host) = self.hosts.get_mut(&to) {
                        host.on_message(from, message, now);
                    }
                }
            }
        }

        /// Seals a datagram with `from`'s sending session to `to` and opens
        /// it at `to` with the session its index names.
        fn datagram(&mut self, from: PeerId, to: PeerId, now: Instant) -> Result<(), OpenError> {
            let session = self.hosts[&from]
                .sending_session(&to)
                .expect("a sending session")
                .clone();
            let mut buf = vec![0u8; sleeve::HEADER_LEN + 4 + sleeve::TAG_LEN];
            buf[sleeve::HEADER_LEN..sleeve::HEADER_LEN + 4].copy_from_slice(b"ping");
            let n = session.seal(MessageType::Data, &mut buf, 4).unwrap();
            let packet = sleeve::Packet::new_checked(&buf[..n]).unwrap();
            let (index, counter) = (packet.receiver_index(), packet.counter());
            let receiver = self
                .installed
                .get(&to)
                .and_then(|m| m.get(&index))
                .ok_or(OpenError::Authentication)?
                .clone();
            assert_eq!(self.hosts[&to].peer_of_index(index), Some(from));
            let len = receiver.open(counter, &mut buf[..n])?;
            assert_eq!(&buf[sleeve::HEADER_LEN..sleeve::HEADER_LEN + len], b"ping");
            self.host(&to).on_authenticated(index, now);
            Ok(())
        }

        fn state(&self, at: &PeerId, of: &PeerId) -> Option<E2eState> {
            self.hosts[at]
                .peers()
                .find(|(p, _)| p == of)
                .map(|(_, s)| s)
        }

        fn sessions(&self, at: &PeerId) -> usize {
            self.installed.get(at).map_or(0, |m| m.len())
        }
    }

    fn inits(sent: &[(PeerId, PeerId, E2eMessage)], from: &PeerId) -> usize {
        sent.iter()
            .filter(|(f, _, m)| f == from && matches!(m, E2eMessage::Init { .. }))
            .count()
    }

    #[test]
    fn negotiate_agrees_with_the_control_rule() {
        let hello = |cipher, aes_hw| Hello {
            version: PROTOCOL_VERSION,
            name: "h".into(),
            overlay: vec![],
            vni: 1,
            udp_port: 6783,
            device: LocalDevice::Tun,
            cipher,
            aes_hw,
            session_index: 0,
            overlay_mtu: 1400,
            fastdp_port: None,
            cert: None,
        };
        let choices = [
            CipherChoice::Auto,
            CipherChoice::Exactly(CipherKind::ChaChaPoly),
            CipherChoice::Exactly(CipherKind::AesGcm),
        ];
        for ours in choices {
            for theirs in choices {
                for our_hw in [false, true] {
                    for their_hw in [false, true] {
                        let control =
                            negotiate_cipher(&hello(ours, our_hw), &hello(theirs, their_hw));
                        let e2e = negotiate(ours, our_hw, theirs, their_hw);
                        assert_eq!(
                            control.ok(),
                            e2e.clone().ok(),
                            "{ours:?}/{our_hw} {theirs:?}/{their_hw}"
                        );
                        // Both sides agree whatever the order.
                        assert_eq!(e2e.ok(), negotiate(theirs, their_hw, ours, our_hw).ok());
                    }
                }
            }
        }
    }

    #[test]
    fn session_comes_up_and_carries_datagrams_both_ways() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        assert_eq!(net.state(&a, &b), Some(E2eState::Handshaking));
        net.run(t0);
        assert_eq!(net.sessions(&a), 1);
        assert_eq!(net.sessions(&b), 1);
        assert_eq!(net.confirms.len(), 1);
        assert_eq!(net.confirms[0].0, a, "the initiator confirms");
        assert_eq!(net.state(&a, &b), Some(E2eState::Established { since: t0 }));
        assert_eq!(net.state(&b, &a), Some(E2eState::Established { since: t0 }));
        net.datagram(a, b, t0).unwrap();
        net.datagram(b, a, t0).unwrap();
        // Wanting again is silent.
        let before = net.sent.len();
        for _ in 0..5 {
            net.host(&a).want(b, t0);
            net.host(&b).want(a, t0);
        }
        net.run(t0);
        assert_eq!(net.sent.len(), before);
        assert!(net.failed.is_empty(), "{:?}", net.failed);
        // The ciphers agree (Auto + Auto with AES hardware on both).
        assert_eq!(
            net.hosts[&a].sending_session(&b).unwrap().cipher(),
            CipherKind::AesGcm
        );
        assert_eq!(net.hosts[&a].handshakes, 0);
        // Own identity: nothing.
        net.host(&a).want(a, t0);
        assert!(net.host(&a).poll_output().is_none());
    }

    #[test]
    fn simultaneous_initiation_keeps_the_smaller_peers() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.host(&b).want(a, t0);
        net.run(t0);
        assert_eq!(inits(&net.sent, &a), 1);
        assert_eq!(inits(&net.sent, &b), 1);
        assert_eq!(net.hosts[&a].counters().simultaneous_ignored, 1);
        assert_eq!(net.hosts[&b].counters().simultaneous_ignored, 0);
        // Exactly one session, the one a initiated.
        assert_eq!(net.sessions(&a), 1);
        assert_eq!(net.sessions(&b), 1);
        assert_eq!(
            net.confirms,
            vec![(a, *net.installed[&a].keys().next().unwrap())]
        );
        assert_eq!(net.hosts[&a].handshakes, 0);
        assert_eq!(net.hosts[&b].handshakes, 0);
        assert!(net.hosts[&b].reserved.is_empty());
        net.datagram(a, b, t0).unwrap();
        net.datagram(b, a, t0).unwrap();
        // b's abandoned initiation leaves no timer behind: only rekeys.
        let rekey_a = t0 + net.hosts[&a].cfg.rekey_after;
        assert_eq!(net.hosts[&a].poll_timeout(), Some(rekey_a));
        assert!(net.hosts[&b].poll_timeout().unwrap() > rekey_a);
    }

    #[test]
    fn a_path_change_resends_a_lost_initiation_at_once() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        // The first Init is lost on the old path.
        net.drop = Box::new(|_, _, _| true);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        assert_eq!(inits(&net.sent, &a), 1);
        net.drop = Box::new(|_, _, _| false);
        // Well before its timeout, the path changes: a fresh Init goes now.
        let t1 = t0 + Duration::from_millis(100);
        net.host(&a).path_changed(b, t1);
        net.run(t1);
        assert_eq!(inits(&net.sent, &a), 2);
        assert!(matches!(
            net.state(&a, &b),
            Some(E2eState::Established { .. })
        ));
        assert!(net.datagram(a, b, t1).is_ok());
        assert!(net.datagram(b, a, t1).is_ok());
        assert_eq!(net.hosts[&a].handshakes, 0);
        // With a session up, a path change costs nothing.
        net.host(&a).path_changed(b, t1);
        net.run(t1);
        assert_eq!(inits(&net.sent, &a), 2);
        // Unknown peers are ignored.
        net.host(&a).path_changed(PeerId([9; 32]), t1);
        net.run(t1);
        assert_eq!(inits(&net.sent, &a), 2);
    }

    #[test]
    fn unanswered_initiation_is_retried_with_doubling_backoff() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        net.drop = Box::new(|_, _, _| true);
        let t0 = Instant::now();
        let timeout = net.hosts[&a].cfg.handshake_timeout;
        net.host(&a).want(b, t0);
        net.run(t0);
        assert_eq!(inits(&net.sent, &a), 1);
        // Waiting: wants produce nothing.
        net.host(&a).want(b, t0 + timeout / 2);
        net.run(t0 + timeout / 2);
        assert_eq!(inits(&net.sent, &a), 1);
        let mut now = t0;
        let mut gaps = vec![];
        for round in 0..8 {
            let deadline = net.hosts[&a].poll_timeout().unwrap();
            assert_eq!(deadline, now + timeout, "round {round}");
            net.host(&a).handle_timeout(deadline);
            net.run(deadline);
            assert!(matches!(net.failed.last(), Some((_, p, E2eError::Timeout { .. })) if *p == b));
            assert!(matches!(
                net.state(&a, &b),
                Some(E2eState::Failed {
                    reason: E2eError::Timeout { .. }
                })
            ));
            assert_eq!(
                inits(&net.sent, &a),
                round + 1,
                "no Init at the timeout itself"
            );
            // A want during the backoff is silent too.
            net.host(&a).want(b, deadline);
            net.run(deadline);
            assert_eq!(inits(&net.sent, &a), round + 1);
            let retry = net.hosts[&a].poll_timeout().unwrap();
            gaps.push(retry - deadline);
            net.host(&a).handle_timeout(retry);
            net.run(retry);
            assert_eq!(inits(&net.sent, &a), round + 2);
            assert_eq!(net.state(&a, &b), Some(E2eState::Handshaking));
            now = retry;
        }
        let secs: Vec<_> = gaps.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(net.hosts[&a].counters().timeouts, 8);
        assert!(net.hosts[&a].handshakes <= 1);
        // Once the path works, the retry succeeds and the backoff resets.
        net.drop = Box::new(|_, _, _| false);
        let deadline = net.hosts[&a].poll_timeout().unwrap();
        net.host(&a).handle_timeout(deadline);
        let retry = net.hosts[&a].poll_timeout().unwrap();
        net.host(&a).handle_timeout(retry);
        net.run(retry);
        assert!(matches!(
            net.state(&a, &b),
            Some(E2eState::Established { .. })
        ));
        assert_eq!(net.hosts[&a].peers[&b].retry_delay, RETRY_INITIAL);
    }

    #[test]
    fn initiation_from_another_identity_is_refused() {
        let (mut net, ids) = Net::same_secret(3);
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        let t0 = Instant::now();
        net.host(&c).want(b, t0);
        let Some(E2eOutput::Send { message, .. }) = net.host(&c).poll_output() else {
            panic!("an Init")
        };
        // A relay hands c's Init to b claiming it comes from a.
        net.host(&b).on_message(a, message.clone(), t0);
        net.run(t0);
        assert_eq!(
            net.failed,
            vec![(
                b,
                a,
                E2eError::WrongIdentity {
                    claimed: a,
                    proven: c
                }
            )]
        );
        assert_eq!(net.sessions(&b), 0);
        assert!(net.sent.is_empty(), "no answer to an impersonation");
        assert_eq!(net.hosts[&b].counters().wrong_identity, 1);
        assert!(net.hosts[&b].peers().next().is_none(), "no state for it");
        // The same Init delivered to a (not its target) does not decrypt.
        net.host(&a).on_message(c, message, t0);
        net.run(t0);
        assert_eq!(net.failed[1], (a, c, E2eError::Authentication));
        assert_eq!(net.hosts[&a].counters().authentication_failures, 1);
        assert_eq!(net.sessions(&a), 0);
    }

    #[test]
    fn replays_and_out_of_turn_messages_are_dropped() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        let Some(E2eOutput::Send { message: init, .. }) = net.host(&a).poll_output() else {
            panic!("an Init")
        };
        net.host(&b).on_message(a, init.clone(), t0);
        let Some(E2eOutput::SessionUp { .. }) = net.host(&b).poll_output() else {
            panic!("a session")
        };
        let Some(E2eOutput::Send { message: resp, .. }) = net.host(&b).poll_output() else {
            panic!("a Resp")
        };
        // The same Init again: dropped without a word.
        net.host(&b).on_message(a, init.clone(), t0);
        assert!(net.host(&b).poll_output().is_none());
        assert_eq!(net.hosts[&b].counters().replayed, 1);
        // The Resp, twice: the second answers nothing pending.
        net.host(&a).on_message(b, resp.clone(), t0);
        assert!(matches!(
            net.host(&a).poll_output(),
            Some(E2eOutput::SessionUp { confirm: true, .. })
        ));
        net.host(&a).on_message(b, resp.clone(), t0);
        assert!(net.host(&a).poll_output().is_none());
        assert_eq!(net.hosts[&a].counters().unknown_index, 1);
        // A Resp to an index never used.
        let E2eMessage::Resp { index, noise, .. } = resp else {
            panic!()
        };
        net.host(&b).on_message(
            a,
            E2eMessage::Resp {
                index,
                initiator_index: 12345,
                noise,
            },
            t0,
        );
        assert!(net.host(&b).poll_output().is_none());
        assert_eq!(net.hosts[&b].counters().unknown_index, 1);
        // Messages "from" ourselves are refused.
        net.host(&a).on_message(a, init, t0);
        assert!(net.host(&a).poll_output().is_none());
        assert_eq!(net.hosts[&a].counters().malformed, 1);
    }

    #[test]
    fn garbage_never_panics() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        let mut rng = SplitMix(99);
        for i in 0..300u32 {
            let len = (rng.next_u32() % 200) as usize;
            let mut noise = vec![0u8; len];
            rng.fill_bytes(&mut noise);
            let index = rng.next_u32();
            let message = if i % 2 == 0 {
                E2eMessage::Init { index, noise }
            } else {
                E2eMessage::Resp {
                    index,
                    initiator_index: index,
                    noise,
                }
            };
            for (at, from) in [(a, b), (b, a)] {
                net.host(&at).on_message(from, message.clone(), t0);
                net.host(&at).on_authenticated(index, t0);
            }
            assert!(E2eMessage::decode(&message.encode()[..len.min(20)]).is_err() || len >= 20);
        }
        net.run(t0);
        assert!(net
            .failed
            .iter()
            .all(|(_, _, r)| matches!(r, E2eError::Authentication | E2eError::Protocol(_))));
        // The real session survived the noise.
        net.datagram(a, b, t0).unwrap();
        net.datagram(b, a, t0).unwrap();
        assert!(E2eMessage::decode(b"{\"type\":\"init\"}").is_err());
        assert!(E2eMessage::decode(&[0xff, 0x00]).is_err());
        let m = E2eMessage::Resp {
            index: 1,
            initiator_index: 2,
            noise: vec![3],
        };
        assert_eq!(E2eMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn wrong_secret_fails_at_the_initiator() {
        let k = keys(2);
        let (mut net, ids) = Net::new(vec![
            config(k[0].clone(), secret(b"one"), CipherChoice::Auto),
            config(k[1].clone(), secret(b"two"), CipherChoice::Auto),
        ]);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        assert!(net.failed.contains(&(a, b, E2eError::Authentication)));
        assert_eq!(net.sessions(&a), 0);
        assert!(net.hosts[&a].sending_session(&b).is_none());
        assert_eq!(
            net.state(&a, &b),
            Some(E2eState::Failed {
                reason: E2eError::Authentication
            })
        );
        // Backing off: the next want is silent.
        net.host(&a).want(b, t0);
        assert!(net.host(&a).poll_output().is_none());
    }

    #[test]
    fn cipher_mismatch_fails_on_both_sides() {
        let k = keys(2);
        let s = secret(b"net");
        let (mut net, ids) = Net::new(vec![
            config(
                k[0].clone(),
                s.clone(),
                CipherChoice::Exactly(CipherKind::AesGcm),
            ),
            config(
                k[1].clone(),
                s,
                CipherChoice::Exactly(CipherKind::ChaChaPoly),
            ),
        ]);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        let mismatch_a = E2eError::CipherMismatch {
            ours: CipherKind::AesGcm,
            theirs: CipherKind::ChaChaPoly,
        };
        let mismatch_b = E2eError::CipherMismatch {
            ours: CipherKind::ChaChaPoly,
            theirs: CipherKind::AesGcm,
        };
        assert_eq!(
            net.failed,
            vec![(b, a, mismatch_b), (a, b, mismatch_a.clone())]
        );
        assert_eq!(net.sessions(&a), 0);
        assert_eq!(net.sessions(&b), 0);
        assert_eq!(
            net.state(&a, &b),
            Some(E2eState::Failed { reason: mismatch_a })
        );
    }

    #[test]
    fn rekey_by_the_smaller_peer_keeps_old_sessions_working() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        let first_a = net.hosts[&a].sending_session(&b).unwrap().local_index;
        let rekey = net.hosts[&a].cfg.rekey_after;
        // b (larger) is not due yet when a is.
        assert_eq!(net.hosts[&a].poll_timeout(), Some(t0 + rekey));
        let t1 = t0 + rekey;
        net.host(&b).handle_timeout(t1);
        net.run(t1);
        assert_eq!(inits(&net.sent, &b), 0);
        net.host(&a).handle_timeout(t1);
        net.run(t1);
        assert_eq!(inits(&net.sent, &a), 2);
        // a seals with the new session; b answered and keeps the old one
        // for sending until a datagram on the new one arrives.
        let new_a = net.hosts[&a].sending_session(&b).unwrap().local_index;
        assert_ne!(new_a, first_a);
        assert_eq!(net.sessions(&a), 2);
        assert_eq!(net.sessions(&b), 2);
        let old_b = net.hosts[&b].sending_session(&a).unwrap().local_index;
        net.datagram(b, a, t1).unwrap(); // old session, still opens at a
        assert_eq!(
            net.hosts[&b].sending_session(&a).unwrap().local_index,
            old_b
        );
        net.datagram(a, b, t1).unwrap(); // the confirmation
        let new_b = net.hosts[&b].sending_session(&a).unwrap().local_index;
        assert_ne!(new_b, old_b);
        net.datagram(b, a, t1).unwrap();
        assert_eq!(net.state(&a, &b), Some(E2eState::Established { since: t0 }));
        // The first sessions' keys expire 180 s after their handshake
        // (REJECT_AFTER_TIME), before the second rekey.
        let expiry = t0 + REJECT_AFTER_TIME;
        assert_eq!(net.hosts[&a].poll_timeout(), Some(expiry));
        net.host(&a).handle_timeout(expiry);
        net.host(&b).handle_timeout(expiry);
        net.run(expiry);
        assert_eq!(net.hosts[&a].peer_of_index(first_a), None);
        assert!(!net.installed[&b].contains_key(&old_b));
        assert_eq!(net.sessions(&a), 1);
        assert_eq!(net.sessions(&b), 1);
        net.datagram(a, b, expiry).unwrap();
        net.datagram(b, a, expiry).unwrap();
        // Second rekey: the first sessions are retired on both sides.
        let t2 = t1 + rekey;
        assert_eq!(net.hosts[&a].poll_timeout(), Some(t2));
        net.host(&a).handle_timeout(t2);
        net.run(t2);
        net.datagram(a, b, t2).unwrap();
        net.run(t2);
        assert_eq!(net.sessions(&a), 2);
        assert_eq!(net.sessions(&b), 2);
        assert_eq!(net.hosts[&a].peer_of_index(first_a), None);
        assert!(!net.installed[&b].contains_key(&old_b));
        net.datagram(b, a, t2).unwrap();
    }

    #[test]
    fn larger_peer_rekeys_only_as_a_fallback() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        let cfg = net.hosts[&b].cfg.clone();
        let fallback = t0 + cfg.rekey_after + cfg.handshake_timeout;
        // a never runs its timers (stuck): b steps in.
        assert_eq!(net.hosts[&b].poll_timeout(), Some(fallback));
        net.host(&b)
            .handle_timeout(fallback - Duration::from_millis(1));
        net.run(fallback);
        assert_eq!(inits(&net.sent, &b), 0);
        net.host(&b).handle_timeout(fallback);
        net.run(fallback);
        assert_eq!(inits(&net.sent, &b), 1);
        assert_eq!(net.sessions(&a), 2);
        assert_eq!(net.sessions(&b), 2);
        net.datagram(b, a, fallback).unwrap();
        net.datagram(a, b, fallback).unwrap();
    }

    #[test]
    fn bounds_refuse_further_wants() {
        let k = keys(4);
        let s = secret(b"net");
        let mut cfg = config(k[0].clone(), s.clone(), CipherChoice::Auto);
        cfg.max_handshakes = 2;
        cfg.max_peers = 3;
        let mut cfgs = vec![cfg];
        cfgs.extend(
            k[1..]
                .iter()
                .map(|k| config(k.clone(), s.clone(), CipherChoice::Auto)),
        );
        let (mut net, ids) = Net::new(cfgs);
        let me = ids[0];
        net.drop = Box::new(|_, _, _| true);
        let t0 = Instant::now();
        for p in &ids[1..] {
            net.host(&me).want(*p, t0);
        }
        net.run(t0);
        assert_eq!(inits(&net.sent, &me), 2);
        assert_eq!(net.hosts[&me].counters().refused, 1);
        // One finishes (times out): the third may go.
        net.host(&me).forget(&ids[1]);
        net.host(&me).want(ids[3], t0);
        net.run(t0);
        assert_eq!(inits(&net.sent, &me), 3);
        // Peer bound: three peers with state, a fourth is refused, also as
        // responder.
        net.drop = Box::new(|_, _, _| false);
        let extra = keys(1).pop().unwrap();
        let extra_id = PeerId(extra.public());
        net.hosts.insert(
            extra_id,
            EndToEnd::new(
                Arc::new(config(extra, s, CipherChoice::Auto)),
                extra_id,
                Box::new(SplitMix(77)),
            ),
        );
        // The two in flight time out, freeing their slots.
        let t1 = net.hosts[&me].poll_timeout().unwrap();
        net.host(&me).handle_timeout(t1);
        net.run(t1);
        assert_eq!(net.hosts[&me].handshakes, 0);
        net.host(&me).want(ids[1], t1); // back to 3 peers
        net.run(t1);
        assert_eq!(net.hosts[&me].peers.len(), 3);
        assert!(net.hosts[&me].sending_session(&ids[1]).is_some());
        let refused = net.hosts[&me].counters().refused;
        net.host(&me).want(extra_id, t1);
        net.host(&extra_id).want(me, t1);
        net.run(t1);
        assert_eq!(net.hosts[&me].counters().refused, refused + 2);
        assert_eq!(net.hosts[&me].peers.len(), 3);
        assert_eq!(net.sessions(&extra_id), 0);
    }

    #[test]
    fn keys_expire_180_s_after_the_handshake_when_rekeys_fail() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        net.datagram(a, b, t0).unwrap();
        let first_a = net.hosts[&a].sending_session(&b).unwrap().local_index;
        let first_b = net.hosts[&b].sending_session(&a).unwrap().local_index;
        // Every rekey message is lost from now on.
        net.drop = Box::new(|_, _, _| true);
        let mut now = t0;
        let expiry = t0 + REJECT_AFTER_TIME;
        while let Some(t) = [&a, &b]
            .iter()
            .filter_map(|h| net.hosts[h].poll_timeout())
            .min()
            .filter(|&t| t < expiry)
        {
            now = t;
            net.host(&a).handle_timeout(now);
            net.host(&b).handle_timeout(now);
            net.run(now);
        }
        assert!(now < expiry);
        // Still usable until then.
        assert_eq!(
            net.hosts[&a].sending_session(&b).unwrap().local_index,
            first_a
        );
        // Both sides are woken at the expiry and stop using the keys.
        assert!(net.hosts[&a].poll_timeout().unwrap() <= expiry);
        assert!(net.hosts[&b].poll_timeout().unwrap() <= expiry);
        net.host(&a).handle_timeout(expiry);
        net.host(&b).handle_timeout(expiry);
        net.run(expiry);
        assert!(net.hosts[&a].sending_session(&b).is_none());
        assert!(net.hosts[&b].sending_session(&a).is_none());
        assert_eq!(net.hosts[&a].peer_of_index(first_a), None);
        assert_eq!(net.hosts[&b].peer_of_index(first_b), None);
        assert!(!net.installed[&a].contains_key(&first_a));
        assert!(!net.installed[&b].contains_key(&first_b));
        // Once messages get through again, a new session comes up.
        net.drop = Box::new(|_, _, _| false);
        let mut t = expiry;
        for _ in 0..10 {
            net.host(&a).want(b, t);
            net.run(t);
            if net.hosts[&a].sending_session(&b).is_some() {
                break;
            }
            t = net.hosts[&a].poll_timeout().unwrap_or(t).max(t);
            net.host(&a).handle_timeout(t);
            net.run(t);
        }
        assert!(net.hosts[&a].sending_session(&b).is_some());
        assert!(t < expiry + RETRY_CAP * 2, "{:?}", t - expiry);
    }

    #[test]
    fn indices_in_use_elsewhere_on_the_host_are_drawn_again() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        // Every index a's random source would give first is taken by
        // (say) a link: a must skip all of them.
        let mut probe = SplitMix(1);
        let registry = net.hosts[&a].cfg.indices.clone();
        let mut taken = Vec::new();
        for _ in 0..3 {
            let i = probe.next_u32();
            registry.reserve(i);
            taken.push(i);
        }
        net.host(&a).rng = Box::new(SplitMix(1));
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        let index = net.hosts[&a].sending_session(&b).unwrap().local_index;
        assert!(!taken.contains(&index), "{index} collides with {taken:?}");
        assert!(registry.contains(index));
        // Retiring the session gives its index back.
        net.host(&a).forget(&b);
        net.run(t0);
        assert!(!registry.contains(index));
        assert!(taken.iter().all(|&i| registry.contains(i)));
    }

    #[test]
    fn forget_retires_every_session_and_timer() {
        let (mut net, ids) = Net::same_secret(2);
        let (a, b) = (ids[0], ids[1]);
        let t0 = Instant::now();
        net.host(&a).want(b, t0);
        net.run(t0);
        let t1 = t0 + net.hosts[&a].cfg.rekey_after;
        net.host(&a).handle_timeout(t1);
        net.run(t1);
        assert_eq!(net.sessions(&b), 2); // current and next
        net.host(&b).forget(&a);
        net.run(t1);
        assert_eq!(net.sessions(&b), 0);
        assert!(net.hosts[&b].indices.is_empty());
        assert_eq!(net.hosts[&b].poll_timeout(), None);
        assert!(net.hosts[&b].sending_session(&a).is_none());
        // Forgetting during a handshake frees its slot.
        net.drop = Box::new(|_, _, _| true);
        net.host(&b).want(a, t1);
        assert_eq!(net.hosts[&b].handshakes, 1);
        net.host(&b).forget(&a);
        assert_eq!(net.hosts[&b].handshakes, 0);
        assert!(net.hosts[&b].reserved.is_empty());
        assert_eq!(net.hosts[&b].poll_timeout(), None);
        net.host(&b).forget(&a); // twice is fine
    }
}
