//! `mesh::Node`: the whole mesh control plane as a sans-IO state machine,
//! in the spirit of quinn-proto's `Endpoint`.
//!
//! The driver (the router) owns sockets, the clock and the random
//! generator. It tells the node what happened — a control connection to
//! peer X came up or went down, its data path started or stopped working,
//! gossip bytes arrived, a dial failed, the user said connect or forget,
//! time passed — and drains [`Output`]s: gossip bytes to write per
//! connection, addresses to dial, connections to close, and typed
//! [`Event`]s. The node publishes a [`ForwardingTable`] that datapath
//! workers read without locks through a [`ForwardingReader`].
//!
//! # Gossip
//!
//! Each peer owns one versioned [`PeerRecord`] (name, endpoints, claims,
//! subnets, connections). Records spread by push-pull anti-entropy over
//! the control connections, never to strangers:
//!
//! - every gossip interval a node sends a 13-byte SUMMARY (count and XOR
//!   hash of its live (id, version) pairs) to `fanout` random neighbours;
//!   equal views end the exchange there, so a converged mesh costs O(1)
//!   bytes per node per round;
//! - on a mismatch (and when a connection comes up) the receiver answers
//!   with a DIGEST of (id, version) pairs, chunked by id range; the other
//!   side pushes the RECORDS it has newer or the digest lacks and sends a
//!   REQUEST for those it lacks;
//! - a node pushes its own record to its neighbours as soon as it changes.
//!
//! A record therefore crosses each node about once per version; a digest
//! is O(N) bytes, paid only while views differ. With each node keeping at
//! most `2 * connection_limit` connections, a node holds O(N) records of
//! O(connection_limit) bytes each: O(N log N) per node even with a limit
//! growing as log N, where Weave Net's full-mesh topology was O(N²).
//!
//! A peer is live while it is reachable from this node over connections
//! that both ends list. A dead peer's neighbours notice (link heartbeats)
//! and drop it from their records; once that spreads it is unreachable
//! everywhere, and its record is deleted `failure_timeout` later.
//!
//! # Why not foca (SWIM)
//!
//! foca (0.17 on this registry mirror; MPL-2.0) is a good sans-IO SWIM
//! implementation, and was considered. It does not fit: SWIM probes random
//! members directly and indirectly, which assumes any member can reach any
//! other, whereas weft's gossip runs only over authenticated control
//! connections and a partial mesh (firewalls, relays) is a first-class
//! case in which SWIM would suspect reachable peers. Liveness here already
//! comes from link heartbeats on each connection plus reachability in the
//! connection graph, which routing needs anyway; foca would have added a
//! second membership view to reconcile with it, and a serde codec next to
//! the total parser of `wire::gossip`.
//!
//! # Claims
//!
//! A node announces its claims only once it has synchronised with the
//! mesh (received everything its first neighbour knew), or after
//! `sync_timeout` alone (the first host of a network). Each claim is
//! stamped with a Lamport time one above every claim time seen, so a
//! claim that overlaps one a live peer already owns always loses; see
//! [`super::claims`].
//!
//! # Certificates
//!
//! With a [`Trust`] (the network's CA certificates and revocation list),
//! a peer's record counts only when it carries a certificate for that
//! record's identity that a trusted CA signed and that is current at the
//! wall-clock time the driver last gave ([`Node::set_wall_clock`]). A
//! record that fails is left out of everything: claims, and also the
//! topology (its host cannot have connected to a host that requires
//! certificates, so only a forged or stale record would list it). Each
//! claim of an admitted record must be covered by its certificate
//! ([`crate::identity::Certificate::covers`]); uncovered claims are
//! refused before claims are resolved, listed by
//! [`Node::refused_claims`] and raised once as [`Event::ClaimRefused`].

use super::backoff::{self, Backoff};
use super::claims::{self, AnnouncedClaim, Claim, Conflict, IpPrefix};
use super::forwarding::{Destination, ForwardingReader, ForwardingTable, NextHop};
use super::link::Direction;
use super::peer::{ConnectionId, Neighbour, PeerId, PeerName, PeerRef};
use super::topology::{Graph, PeerRecord};
use crate::identity::{CertRefusal, Certificate, Fingerprint, Trust};
use crate::wire::gossip::{self, Message, DIGEST_ENTRY_LEN, DIGEST_HEADER_LEN};
use crate::wire::WireError;
use arc_swap::ArcSwap;
use rand_core::RngCore;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timer settings of the mesh.
#[derive(Debug, Clone)]
pub struct MeshTimers {
    /// One gossip round: summaries to `fanout` neighbours, expiry, dials.
    pub gossip_interval: Duration,
    /// How long an unreachable peer's record is kept.
    pub failure_timeout: Duration,
    /// Changes are gathered this long before routes and the forwarding
    /// table are recomputed (one recomputation per burst).
    pub settle: Duration,
    /// A node that has not synchronised with any peer this long after it
    /// started announces its claims anyway.
    pub sync_timeout: Duration,
}

impl Default for MeshTimers {
    fn default() -> Self {
        MeshTimers {
            gossip_interval: Duration::from_secs(1),
            failure_timeout: Duration::from_secs(60),
            settle: Duration::from_millis(50),
            sync_timeout: Duration::from_secs(5),
        }
    }
}

/// What a node is told about itself at start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This host's identity.
    pub id: PeerId,
    /// This host's name.
    pub name: PeerName,
    /// Control addresses peers may dial this host on.
    pub endpoints: Vec<SocketAddr>,
    /// What this host claims.
    pub claims: Vec<Claim>,
    /// The overlay subnets of this host's device.
    pub subnets: Vec<IpPrefix>,
    /// Timers.
    pub timers: MeshTimers,
    /// Connections this host opens to discovered peers, at most; it
    /// accepts up to twice as many in all, then refuses inbound ones.
    pub connection_limit: usize,
    /// Summaries sent per gossip round.
    pub fanout: usize,
    /// Compute per-source broadcast trees (bridge mode).
    pub broadcast_trees: bool,
    /// Records kept at most, so a peer cannot grow memory without bound.
    pub max_peers: usize,
    /// First version of this host's record. The driver may pass wall-clock
    /// seconds so that a restarted host starts above its old records;
    /// either way the node raises its version past any old record of
    /// itself it hears about.
    pub initial_version: u64,
    /// This host's encoded certificate, gossiped in its record (empty: none).
    pub cert: Vec<u8>,
    /// The network's CA certificates and revocation list: `Some` makes
    /// every peer's record need a valid certificate covering its claims.
    pub trust: Option<Trust>,
    /// Wall-clock time at start (Unix seconds), for certificate validity;
    /// later times come through [`Node::set_wall_clock`].
    pub unix_time: u64,
}

impl NodeConfig {
    /// A configuration with default limits and timers.
    pub fn new(id: PeerId, name: PeerName) -> NodeConfig {
        NodeConfig {
            id,
            name,
            endpoints: Vec::new(),
            claims: Vec::new(),
            subnets: Vec::new(),
            timers: MeshTimers::default(),
            connection_limit: 64,
            fanout: 1,
            broadcast_trees: false,
            max_peers: 65536,
            initial_version: 1,
            cert: Vec::new(),
            trust: None,
            unix_time: 0,
        }
    }
}

/// Why the node asks the driver to close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection to the same peer is kept.
    Duplicate,
    /// The connection leads back to this host.
    SelfConnection,
    /// This host is at its connection limit.
    TooManyConnections,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::Duplicate => {
                "duplicate connection to the same peer (the other one is kept)"
            }
            CloseReason::SelfConnection => "connection to this host itself",
            CloseReason::TooManyConnections => "connection limit reached",
        })
    }
}

/// Why traffic for a peer takes the path it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// A direct connection with a working data path.
    Direct,
    /// No direct connection to the peer.
    NoDirectConnection,
    /// The control connection is up but data (UDP) does not get through.
    DirectDataPathDown,
}

/// How this host reaches a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The neighbour to send through (the peer itself when direct).
    pub next_hop: PeerId,
    /// Connections on the path.
    pub hops: u32,
    /// Why this path.
    pub reason: RouteReason,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            RouteReason::Direct => f.write_str("direct"),
            RouteReason::NoDirectConnection => {
                write!(f, "via {} (no direct connection)", self.next_hop)
            }
            RouteReason::DirectDataPathDown => {
                write!(f, "via {} (direct data path down)", self.next_hop)
            }
        }
    }
}

/// Something the driver should know about (log, show in status, count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer became reachable.
    PeerJoined(PeerRef),
    /// A peer became unreachable.
    PeerLeft(PeerRef),
    /// The route to a peer changed; `None`: no working path now.
    RouteChanged {
        /// The destination.
        peer: PeerId,
        /// The new route.
        route: Option<Route>,
    },
    /// Two hosts claim overlapping addresses; the later claim is refused.
    /// Raised on both hosts.
    ClaimConflict {
        /// The host whose claim stands.
        owner: PeerRef,
        /// Its claim.
        owned_claim: Claim,
        /// The host whose claim is refused.
        refused: PeerRef,
        /// The refused claim.
        refused_claim: Claim,
    },
    /// A peer's overlay subnet and this host's do not contain each other:
    /// each host's device routes only its own subnet into the overlay.
    SubnetMismatch {
        /// This host's subnet.
        ours: IpPrefix,
        /// The peer.
        peer: PeerRef,
        /// The peer's subnet.
        theirs: IpPrefix,
    },
    /// A peer's claim is refused because its certificate does not allow
    /// it (networks with a CA). Raised once per claim and reason.
    ClaimRefused {
        /// The claimant.
        peer: PeerRef,
        /// The refused claim.
        claim: Claim,
        /// Why.
        reason: ClaimRefusal,
    },
    /// A new forwarding table was published.
    ForwardingChanged {
        /// Its generation.
        generation: u64,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::PeerJoined(p) => write!(f, "peer {p} joined"),
            Event::PeerLeft(p) => write!(f, "peer {p} left"),
            Event::RouteChanged { peer, route: Some(r) } => write!(f, "route to {peer}: {r}"),
            Event::RouteChanged { peer, route: None } => {
                write!(f, "route to {peer}: unreachable (no working path)")
            }
            Event::ClaimConflict {
                owner,
                owned_claim,
                refused,
                refused_claim,
            } => write!(
                f,
                "address claim {refused_claim} of {refused} refused: {owner} already owns {owned_claim}; give one of them another address"
            ),
            Event::SubnetMismatch { ours, peer, theirs } => write!(
                f,
                "overlay subnet {theirs} of {peer} and this host's {ours} do not contain each other: the hosts cannot reach each other's addresses; use one subnet"
            ),
            Event::ClaimRefused {
                peer,
                claim,
                reason,
            } => write!(f, "address claim {claim} of {peer} refused: {reason}"),
            Event::ForwardingChanged { generation } => {
                write!(f, "forwarding table {generation} published")
            }
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these gossip bytes (one message) on the connection.
    Gossip {
        /// The connection.
        conn: ConnectionId,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Open a control connection to this address; report back with
    /// [`Node::connection_up`] or [`Node::dial_failed`].
    Dial {
        /// Where.
        addr: SocketAddr,
        /// Who is expected there (`None` for a user-given address).
        peer: Option<PeerId>,
    },
    /// Close this connection.
    Close {
        /// The connection.
        conn: ConnectionId,
        /// Why.
        reason: CloseReason,
    },
    /// Something happened.
    Event(Event),
}

/// A control connection the driver reported up and the node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The peer at the other end.
    pub peer: PeerId,
    /// Who dialled.
    pub direction: Direction,
    /// The address dialled, or the peer's source address.
    pub remote: SocketAddr,
    /// Whether data (UDP heartbeats) gets through.
    pub data_path: bool,
}

/// Where a user-given address (`weft connect ADDR`) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetState {
    Idle,
    Dialing,
    Connected(ConnectionId),
    /// The address leads to this host: never dialled again.
    OwnAddress,
}

#[derive(Debug, Clone)]
struct Target {
    backoff: Backoff,
    state: TargetState,
    /// Since when the current connection has been up.
    connected_at: Option<Instant>,
    /// The peer found at the address last time.
    peer: Option<PeerId>,
}

/// A user-given address and its state, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetStatus {
    /// Waiting for the next attempt (after a failure: when).
    Waiting(Instant),
    /// A dial is in progress.
    Dialing,
    /// Connected to this peer.
    Connected(PeerId),
    /// It is this host's own address.
    OwnAddress,
}

/// Why a claim is refused in a network with a CA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClaimRefusal {
    /// The claimant's certificate is valid but does not cover the claim.
    NotCovered,
    /// The claimant's record has no acceptable certificate.
    Certificate(CertRefusal),
}

impl fmt::Display for ClaimRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimRefusal::NotCovered => f.write_str("not covered by its certificate"),
            ClaimRefusal::Certificate(r) => r.fmt(f),
        }
    }
}

/// A claim refused by certificate checks, before ownership is resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefusedClaim {
    /// The claimant.
    pub peer: PeerId,
    /// The claim.
    pub claim: Claim,
    /// Why.
    pub reason: ClaimRefusal,
}

/// A record's certificate as checked once when the record was stored:
/// authentic and for the record's identity, or why not.
type CheckedCert = Result<Arc<Certificate>, CertRefusal>;

#[derive(Debug)]
struct Stored {
    record: PeerRecord,
    /// With a CA: the record's certificate, authenticated once.
    cert: Option<CheckedCert>,
    /// Since when the peer has been unreachable (`None`: live, or not yet
    /// classified).
    unreachable_since: Option<Instant>,
}

/// Counters of gossip traffic this node sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Records sent.
    pub records: u64,
}

/// The mesh control plane of one host. See the module documentation.
pub struct Node {
    cfg: NodeConfig,
    rng: Box<dyn RngCore + Send>,
    own: PeerRecord,
    /// Largest claim time seen.
    lamport: u64,
    claims_announced: bool,
    started: Instant,
    /// While claims wait for synchronisation: records requested per
    /// connection.
    awaiting: HashMap<ConnectionId, HashSet<PeerId>>,
    records: HashMap<PeerId, Stored>,
    connections: HashMap<ConnectionId, Connection>,
    /// The kept connection per peer.
    by_peer: BTreeMap<PeerId, ConnectionId>,
    targets: BTreeMap<SocketAddr, Target>,
    /// Dials of discovered peers in progress.
    dialing: HashMap<SocketAddr, (PeerId, Instant)>,
    discovered_backoff: HashMap<PeerId, Backoff>,
    live: HashSet<PeerId>,
    routes: HashMap<PeerId, Route>,
    conflicts: HashSet<Conflict>,
    /// The claims configured at start; `cfg.claims` is these plus the
    /// driver's dynamic ones ([`Node::set_dynamic_claims`]).
    base_claims: Vec<Claim>,
    /// Accepted claims and their owners, as last resolved.
    owned: Vec<(Claim, PeerId)>,
    /// Certificate checks (`None`: a network without a CA).
    trust: Option<Trust>,
    /// Wall-clock time last given (Unix seconds).
    unix_now: u64,
    /// When some certificate's standing changes with time next.
    cert_deadline: Option<u64>,
    /// Claims refused by certificate checks, as last computed.
    refused: HashSet<RefusedClaim>,
    subnet_warnings: HashSet<(IpPrefix, PeerId, IpPrefix)>,
    recompute_at: Option<Instant>,
    /// The summary of the live view, computed when asked after a change.
    summary: std::cell::Cell<Option<(u32, u64)>>,
    next_round: Instant,
    outputs: VecDeque<Output>,
    table: Arc<ArcSwap<ForwardingTable>>,
    stats: GossipStats,
    /// Why this host's record version moved, for the simulation tests.
    #[cfg(test)]
    pub(crate) bumps: BTreeMap<&'static str, u64>,
}

impl Node {
    /// A node that knows only itself. `rng` is the driver's random source
    /// (peer choice and timer jitter only; nothing secret).
    pub fn new(cfg: NodeConfig, rng: Box<dyn RngCore + Send>, now: Instant) -> Node {
        let own = PeerRecord {
            id: cfg.id,
            version: cfg.initial_version,
            name: cfg.name.clone(),
            endpoints: cfg.endpoints.clone(),
            claims: Vec::new(),
            reserved: Vec::new(),
            subnets: cfg.subnets.clone(),
            neighbours: Vec::new(),
            cert: cfg.cert.clone(),
        };
        let mut node = Node {
            rng,
            own,
            lamport: 0,
            claims_announced: false,
            started: now,
            awaiting: HashMap::new(),
            records: HashMap::new(),
            connections: HashMap::new(),
            by_peer: BTreeMap::new(),
            targets: BTreeMap::new(),
            dialing: HashMap::new(),
            discovered_backoff: HashMap::new(),
            live: HashSet::new(),
            routes: HashMap::new(),
            conflicts: HashSet::new(),
            base_claims: cfg.claims.clone(),
            owned: Vec::new(),
            trust: cfg.trust.clone(),
            unix_now: cfg.unix_time,
            cert_deadline: None,
            refused: HashSet::new(),
            subnet_warnings: HashSet::new(),
            recompute_at: Some(now),
            summary: std::cell::Cell::new(None),
            next_round: now,
            outputs: VecDeque::new(),
            table: Arc::new(ArcSwap::from_pointee(ForwardingTable::default())),
            stats: GossipStats::default(),
            #[cfg(test)]
            bumps: BTreeMap::new(),
            cfg,
        };
        node.recompute(now);
        node
    }

    // ----- inputs -------------------------------------------------------

    /// Sets the claims this host makes on top of its configured ones (IPAM
    /// chunks). A claim kept keeps its Lamport time; a new one is stamped
    /// one above every claim time seen, as at announcement. Before the
    /// claims are announced the set just waits for announcement.
    pub fn set_dynamic_claims(&mut self, dynamic: &[Claim], now: Instant) {
        let mut wanted = self.base_claims.clone();
        for c in dynamic {
            if !wanted.contains(c) {
                wanted.push(*c);
            }
        }
        if wanted == self.cfg.claims {
            return;
        }
        self.cfg.claims = wanted;
        if !self.claims_announced {
            self.mark_dirty(now);
            return;
        }
        let lamport = self.lamport.saturating_add(1);
        let mut stamped_new = false;
        let claims: Vec<AnnouncedClaim> = self
            .cfg
            .claims
            .iter()
            .map(
                |claim| match self.own.claims.iter().find(|a| a.claim == *claim) {
                    Some(a) => *a,
                    None => {
                        stamped_new = true;
                        AnnouncedClaim {
                            lamport,
                            claim: *claim,
                        }
                    }
                },
            )
            .collect();
        if stamped_new {
            self.lamport = lamport;
        }
        self.own.claims = claims;
        self.publish_own_because("claims", now);
    }

    /// Sets the prefixes this host keeps reserved for departed peers (IPAM
    /// chunks), gossiped in its record so that hosts joining later avoid
    /// them too.
    pub fn set_reserved(&mut self, reserved: &[IpPrefix], now: Instant) {
        if self.own.reserved == reserved {
            return;
        }
        self.own.reserved = reserved.to_vec();
        self.publish_own_because("reserved", now);
    }

    /// Whether this host has announced its claims (it synchronised with
    /// the mesh, or waited `sync_timeout` alone).
    pub fn claims_announced(&self) -> bool {
        self.claims_announced
    }

    /// Every accepted claim and its owner (this host included), as last
    /// resolved over the live peers.
    pub fn owned_claims(&self) -> &[(Claim, PeerId)] {
        &self.owned
    }

    /// The user asked to connect to `addr` (and to keep reconnecting with
    /// backoff). Idempotent.
    pub fn connect(&mut self, addr: SocketAddr, now: Instant) {
        self.targets.entry(addr).or_insert(Target {
            backoff: Backoff::new(now),
            state: TargetState::Idle,
            connected_at: None,
            peer: None,
        });
        self.dial_targets(now);
    }

    /// The user asked to stop reconnecting to `addr`. A connection already
    /// up stays (as `weave forget` does); it is not redialled once lost.
    pub fn forget(&mut self, addr: SocketAddr) {
        self.targets.remove(&addr);
    }

    /// A dial the node asked for failed (refused, timed out, wrong secret).
    pub fn dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(t) = self.targets.get_mut(&addr) {
            if t.state == TargetState::Dialing {
                t.state = TargetState::Idle;
                t.backoff.failed(now);
            }
        }
        if let Some((peer, _)) = self.dialing.remove(&addr) {
            self.discovered_backoff
                .entry(peer)
                .or_insert_with(|| Backoff::new(now))
                .failed(now);
        }
    }

    /// A control connection is authenticated: `peer` is at the other end.
    /// `remote` is the address dialled (outbound) or the peer's source
    /// address (inbound).
    pub fn connection_up(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        direction: Direction,
        remote: SocketAddr,
        now: Instant,
    ) {
        let dialed_target = direction == Direction::Outbound;
        if dialed_target {
            self.dialing.remove(&remote);
        }
        if peer == self.cfg.id {
            if let Some(t) = self.targets.get_mut(&remote).filter(|_| dialed_target) {
                t.state = TargetState::OwnAddress;
            }
            self.push_output(Output::Close {
                conn,
                reason: CloseReason::SelfConnection,
            });
            return;
        }
        if let Some(&other) = self.by_peer.get(&peer) {
            // One connection per pair: keep the one opened by the host
            // with the smaller identity, so both ends choose the same one
            // without talking; if one host opened both, keep the older.
            let initiator = |d: Direction| {
                if d == Direction::Outbound {
                    self.cfg.id
                } else {
                    peer
                }
            };
            let other_direction = self.connections[&other].direction;
            if initiator(direction) < initiator(other_direction) {
                self.connections.remove(&other);
                self.by_peer.remove(&peer);
                self.push_output(Output::Close {
                    conn: other,
                    reason: CloseReason::Duplicate,
                });
                self.retarget(other, Some(conn), now);
            } else {
                if let Some(t) = self.targets.get_mut(&remote).filter(|_| dialed_target) {
                    t.state = TargetState::Connected(other);
                    t.peer = Some(peer);
                }
                self.push_output(Output::Close {
                    conn,
                    reason: CloseReason::Duplicate,
                });
                return;
            }
        }
        if let Some(t) = self.targets.get_mut(&remote).filter(|_| dialed_target) {
            // The backoff is reset when the connection has lasted (see
            // `retarget`), not now.
            t.state = TargetState::Connected(conn);
            t.connected_at = Some(now);
            t.peer = Some(peer);
        }
        if let Some(b) = self.discovered_backoff.get_mut(&peer) {
            b.succeeded();
        }
        self.connections.insert(
            conn,
            Connection {
                peer,
                direction,
                remote,
                data_path: false,
            },
        );
        self.by_peer.insert(peer, conn);
        self.publish_own_because("connection_up", now);
        self.send_digest(conn);
    }

    /// The data path (UDP heartbeats) of a connection started or stopped
    /// working: only working ones carry routes.
    pub fn data_path(&mut self, conn: ConnectionId, working: bool, now: Instant) {
        if let Some(c) = self.connections.get_mut(&conn) {
            if c.data_path != working {
                c.data_path = working;
                self.publish_own_because("data_path", now);
            }
        }
    }

    /// A connection closed (or failed its heartbeats).
    pub fn connection_down(&mut self, conn: ConnectionId, now: Instant) {
        self.awaiting.remove(&conn);
        let Some(c) = self.connections.remove(&conn) else {
            return;
        };
        if self.by_peer.get(&c.peer) == Some(&conn) {
            self.by_peer.remove(&c.peer);
        }
        self.retarget(conn, None, now);
        self.discovered_backoff
            .entry(c.peer)
            .or_insert_with(|| Backoff::new(now))
            .failed(now);
        self.publish_own_because("connection_down", now);
    }

    /// Gossip bytes arrived on a connection. An `Err` means the peer sent
    /// something malformed: the driver should close the connection.
    pub fn handle_gossip(
        &mut self,
        conn: ConnectionId,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), WireError> {
        let message = Message::parse(bytes)?;
        if !self.connections.contains_key(&conn) {
            return Ok(());
        }
        match message {
            Message::Summary { live, hash } => {
                if (live, hash) != self.summary() {
                    self.send_digest(conn);
                }
            }
            Message::Digest(digest) => self.on_digest(conn, &digest, now),
            Message::Request(list) => {
                let ids: Vec<PeerId> = list.ids().collect();
                self.send_records(conn, &ids);
            }
            Message::Records(records) => {
                for view in records.iter() {
                    if let Some(waiting) = self.awaiting.get_mut(&conn) {
                        waiting.remove(&view.id());
                    }
                    // Copy a record out of the message only when it is news.
                    if self.is_news(&view.id(), view.version()) {
                        self.store(PeerRecord::from_view(&view), now);
                    }
                }
                if let Some(waiting) = self.awaiting.get(&conn) {
                    if waiting.is_empty() {
                        self.announce_claims(now);
                    }
                }
            }
        }
        Ok(())
    }

    /// The wall clock (Unix seconds), for certificate validity. Cheap to
    /// call often: claims are recomputed only when a certificate's
    /// standing changes.
    pub fn set_wall_clock(&mut self, unix_now: u64, now: Instant) {
        self.unix_now = unix_now;
        if self.cert_deadline.is_some_and(|d| unix_now >= d) {
            self.cert_deadline = None;
            self.mark_dirty(now);
        }
    }

    /// A new revocation list: records whose certificate (or its CA) it
    /// names lose their claims and their place in the topology.
    pub fn set_revoked(&mut self, revoked: Arc<HashSet<Fingerprint>>, now: Instant) {
        if let Some(t) = self.trust.as_mut() {
            t.set_revoked(revoked);
            self.mark_dirty(now);
        }
    }

    /// Time passed: gossip rounds, recomputation, expiry, dials.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.claims_announced && now >= self.started + self.cfg.timers.sync_timeout {
            self.announce_claims(now);
        }
        if now >= self.next_round {
            self.gossip_round(now);
        }
        self.dial_targets(now);
        if self.recompute_at.is_some_and(|t| now >= t) {
            self.recompute(now);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_round;
        if let Some(r) = self.recompute_at {
            t = t.min(r);
        }
        if !self.claims_announced {
            t = t.min(self.started + self.cfg.timers.sync_timeout);
        }
        for target in self.targets.values() {
            // A held target is looked at again in the next gossip round.
            if target.state == TargetState::Idle && !self.target_held(target) {
                t = t.min(target.backoff.next_attempt());
            }
        }
        t
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ----- queries ------------------------------------------------------

    /// This host's identity.
    pub fn id(&self) -> PeerId {
        self.cfg.id
    }

    /// A handle for datapath workers on the published forwarding table.
    pub fn forwarding(&self) -> ForwardingReader {
        ForwardingReader::new(self.table.clone())
    }

    /// The current forwarding table.
    pub fn forwarding_table(&self) -> Arc<ForwardingTable> {
        self.table.load_full()
    }

    /// This host's own record.
    pub fn own_record(&self) -> &PeerRecord {
        &self.own
    }

    /// A peer's record (live or not yet expired).
    pub fn record(&self, peer: &PeerId) -> Option<&PeerRecord> {
        self.records.get(peer).map(|s| &s.record)
    }

    /// Every peer record held (live or waiting to expire), own excluded.
    pub fn records(&self) -> impl Iterator<Item = &PeerRecord> + '_ {
        self.records.values().map(|s| &s.record)
    }

    /// Peers reachable now, as of the last recomputation.
    pub fn live_peers(&self) -> impl Iterator<Item = &PeerRecord> + '_ {
        self.live.iter().filter_map(|p| self.record(p))
    }

    /// Whether a peer is reachable now.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.live.contains(peer)
    }

    /// Records held (live or waiting to expire), own excluded.
    pub fn known_peers(&self) -> usize {
        self.records.len()
    }

    /// How this host reaches a peer (`None`: no working path).
    pub fn route(&self, peer: &PeerId) -> Option<&Route> {
        self.routes.get(peer)
    }

    /// The peer on a connection, if the node keeps it.
    pub fn connection_peer(&self, conn: ConnectionId) -> Option<PeerId> {
        self.connections.get(&conn).map(|c| c.peer)
    }

    /// A kept connection, for status lines.
    pub fn connection(&self, conn: ConnectionId) -> Option<&Connection> {
        self.connections.get(&conn)
    }

    /// Connections kept, one per peer.
    pub fn connected_peers(&self) -> impl Iterator<Item = (&PeerId, &ConnectionId)> + '_ {
        self.by_peer.iter()
    }

    /// User-given addresses and where each stands.
    pub fn targets(&self) -> impl Iterator<Item = (SocketAddr, TargetStatus)> + '_ {
        self.targets.iter().map(|(addr, t)| {
            let status = match t.state {
                TargetState::Idle => TargetStatus::Waiting(t.backoff.next_attempt()),
                TargetState::Dialing => TargetStatus::Dialing,
                TargetState::Connected(c) => self
                    .connections
                    .get(&c)
                    .map_or(TargetStatus::Dialing, |c| TargetStatus::Connected(c.peer)),
                TargetState::OwnAddress => TargetStatus::OwnAddress,
            };
            (*addr, status)
        })
    }

    /// With a CA: a peer's authenticated certificate (from its record;
    /// validity and revocation are checked when claims are resolved).
    pub fn certificate(&self, peer: &PeerId) -> Option<&Arc<Certificate>> {
        self.records.get(peer)?.cert.as_ref()?.as_ref().ok()
    }

    /// Claims refused by certificate checks, as last computed.
    pub fn refused_claims(&self) -> impl Iterator<Item = &RefusedClaim> + '_ {
        self.refused.iter()
    }

    /// Claim conflicts this host is part of, as last computed.
    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> + '_ {
        self.conflicts.iter()
    }

    /// The (live count, hash) summary of this node's view: two nodes with
    /// equal summaries hold the same live records.
    pub fn summary(&self) -> (u32, u64) {
        if let Some(summary) = self.summary.get() {
            return summary;
        }
        let mut hash = gossip::entry_hash(&self.own.id, self.own.version);
        let mut live = 1u32;
        for s in self.records.values() {
            if s.unreachable_since.is_none() {
                hash ^= gossip::entry_hash(&s.record.id, s.record.version);
                live += 1;
            }
        }
        self.summary.set(Some((live, hash)));
        (live, hash)
    }

    /// Gossip traffic sent so far.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// Bytes held for peer records (records and their table slots).
    pub fn record_memory(&self) -> usize {
        let slot = std::mem::size_of::<(PeerId, Stored)>() + 1;
        self.records
            .values()
            .map(|s| s.record.memory_bytes() - std::mem::size_of::<PeerRecord>() + slot)
            .sum::<usize>()
            + self.records.capacity().saturating_sub(self.records.len()) * slot
    }

    // ----- gossip -------------------------------------------------------

    fn push_output(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    fn send(&mut self, conn: ConnectionId, bytes: Vec<u8>) {
        self.stats.messages += 1;
        self.stats.bytes += bytes.len() as u64;
        self.push_output(Output::Gossip { conn, bytes });
    }

    fn version_of(&self, id: &PeerId) -> Option<u64> {
        if *id == self.own.id {
            return Some(self.own.version);
        }
        self.records.get(id).map(|s| s.record.version)
    }

    fn record_of(&self, id: &PeerId) -> Option<&PeerRecord> {
        if *id == self.own.id {
            Some(&self.own)
        } else {
            self.record(id)
        }
    }

    /// Live (id, version) pairs in id order, own included.
    fn live_entries(&self) -> Vec<(PeerId, u64)> {
        let mut entries: Vec<(PeerId, u64)> = self
            .records
            .values()
            .filter(|s| s.unreachable_since.is_none())
            .map(|s| (s.record.id, s.record.version))
            .chain([(self.own.id, self.own.version)])
            .collect();
        entries.sort_unstable();
        entries
    }

    fn send_digest(&mut self, conn: ConnectionId) {
        let entries = self.live_entries();
        let per_message = (gossip::MAX_MESSAGE_LEN - DIGEST_HEADER_LEN) / DIGEST_ENTRY_LEN;
        let chunks: Vec<&[(PeerId, u64)]> = entries.chunks(per_message).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let start = if i == 0 {
                PeerId::default()
            } else {
                chunk[0].0
            };
            let end = chunks.get(i + 1).map(|next| next[0].0);
            let mut bytes = Vec::with_capacity(DIGEST_HEADER_LEN + chunk.len() * DIGEST_ENTRY_LEN);
            gossip::emit_digest(&mut bytes, &start, end.as_ref(), chunk);
            self.send(conn, bytes);
        }
    }

    /// Sends the records of `ids` this node holds, as few messages as fit.
    fn send_records(&mut self, conn: ConnectionId, ids: &[PeerId]) {
        let mut messages = Vec::new();
        let mut bytes = Vec::new();
        let mut count: u16 = 0;
        for id in ids {
            let Some(record) = self.record_of(id) else {
                continue;
            };
            let repr = record.repr();
            if count > 0
                && (bytes.len() + repr.buffer_len() > gossip::MAX_MESSAGE_LEN || count == u16::MAX)
            {
                bytes[gossip::RECORDS_COUNT].copy_from_slice(&count.to_be_bytes());
                messages.push((std::mem::take(&mut bytes), count));
                count = 0;
            }
            if count == 0 {
                gossip::emit_records_header(&mut bytes, 0);
            }
            repr.emit(&mut bytes);
            count += 1;
        }
        if count > 0 {
            bytes[gossip::RECORDS_COUNT].copy_from_slice(&count.to_be_bytes());
            messages.push((bytes, count));
        }
        for (bytes, count) in messages {
            self.stats.records += u64::from(count);
            self.send(conn, bytes);
        }
    }

    fn on_digest(&mut self, conn: ConnectionId, digest: &gossip::Digest<'_>, now: Instant) {
        let mut theirs = HashSet::new();
        let mut want = Vec::new();
        let mut push = Vec::new();
        for (id, version) in digest.entries() {
            theirs.insert(id);
            if id == self.own.id {
                if version > self.own.version {
                    // An old record of ours from before a restart.
                    self.own.version = version;
                    self.publish_own(now);
                }
                continue;
            }
            match self.version_of(&id) {
                None if self.records.len() < self.cfg.max_peers => want.push(id),
                Some(mine) if mine < version => want.push(id),
                Some(mine) if mine > version => push.push(id),
                _ => {}
            }
        }
        push.extend(
            self.live_entries()
                .into_iter()
                .filter(|(id, _)| digest.covers(id) && !theirs.contains(id))
                .map(|(id, _)| id),
        );
        self.send_records(conn, &push);
        for chunk in want.chunks((gossip::MAX_MESSAGE_LEN - 3) / crate::mesh::peer::PEER_ID_LEN) {
            let mut bytes = Vec::new();
            gossip::emit_request(&mut bytes, chunk);
            self.send(conn, bytes);
        }
        if !self.claims_announced {
            if want.is_empty() {
                self.announce_claims(now);
            } else {
                self.awaiting.entry(conn).or_default().extend(want);
            }
        }
    }

    /// Whether a record version is newer than the one held (for this
    /// host's own id: a record from a previous life of this host).
    fn is_news(&self, id: &PeerId, version: u64) -> bool {
        if *id == self.own.id {
            return version > self.own.version;
        }
        match self.records.get(id) {
            Some(s) => version > s.record.version,
            None => self.records.len() < self.cfg.max_peers,
        }
    }

    /// Keeps a received record if it is newer than the one held.
    fn store(&mut self, record: PeerRecord, now: Instant) {
        if record.id == self.own.id {
            if record.version > self.own.version {
                self.own.version = record.version;
                self.publish_own(now);
            }
            return;
        }
        let held = self.records.get(&record.id).map(|s| s.record.version);
        let newer = match held {
            Some(v) => record.version > v,
            None => self.records.len() < self.cfg.max_peers,
        };
        if !newer {
            return;
        }
        for c in &record.claims {
            self.lamport = self.lamport.max(c.lamport);
        }
        let held = self.records.get(&record.id);
        let unreachable_since = held.and_then(|s| s.unreachable_since);
        // Verify a certificate once, not on every new version of a record.
        let cert = match (&self.trust, held) {
            (None, _) => None,
            (Some(_), Some(h)) if h.record.cert == record.cert => h.cert.clone(),
            (Some(t), _) => Some(check_record_cert(t, &record)),
        };
        self.records.insert(
            record.id,
            Stored {
                record,
                cert,
                unreachable_since,
            },
        );
        self.mark_dirty(now);
    }

    /// Rebuilds this host's record from its connections, bumps its version
    /// and pushes it to every neighbour.
    fn publish_own(&mut self, now: Instant) {
        self.publish_own_because("other", now);
    }

    fn publish_own_because(&mut self, _cause: &'static str, now: Instant) {
        #[cfg(test)]
        {
            *self.bumps.entry(_cause).or_default() += 1;
        }
        self.own.version += 1;
        self.own.neighbours = self
            .by_peer
            .iter()
            .map(|(peer, conn)| Neighbour {
                peer: *peer,
                data_path: self.connections[conn].data_path,
            })
            .collect();
        let own = self.own.id;
        let conns: Vec<ConnectionId> = self.by_peer.values().copied().collect();
        for conn in conns {
            self.send_records(conn, &[own]);
        }
        self.mark_dirty(now);
    }

    fn announce_claims(&mut self, now: Instant) {
        if self.claims_announced {
            return;
        }
        self.claims_announced = true;
        self.awaiting.clear();
        let lamport = self.lamport.saturating_add(1);
        self.own.claims = self
            .cfg
            .claims
            .iter()
            .map(|&claim| AnnouncedClaim { lamport, claim })
            .collect();
        self.lamport = lamport;
        self.publish_own_because("claims", now);
    }

    /// Something in the records changed: routes and the table are
    /// recomputed after the settle delay, the summary when next asked.
    fn mark_dirty(&mut self, now: Instant) {
        self.summary.set(None);
        if self.recompute_at.is_none() {
            self.recompute_at = Some(now + self.cfg.timers.settle);
        }
    }

    fn gossip_round(&mut self, now: Instant) {
        let interval = self.cfg.timers.gossip_interval;
        // ±10% jitter keeps nodes from gossiping in lockstep.
        let jitter = interval.mul_f64(0.9 + 0.2 * (self.rng.next_u32() as f64 / u32::MAX as f64));
        self.next_round = now + jitter;
        let conns: Vec<ConnectionId> = self.by_peer.values().copied().collect();
        if !conns.is_empty() {
            let (live, hash) = self.summary();
            for _ in 0..self.cfg.fanout.min(conns.len()) {
                let conn = conns[self.rng.next_u32() as usize % conns.len()];
                let mut bytes = Vec::with_capacity(13);
                gossip::emit_summary(&mut bytes, live, hash);
                self.send(conn, bytes);
            }
        }
        self.shed_connections(now);
        // Forget peers unreachable for the failure timeout.
        let timeout = self.cfg.timers.failure_timeout;
        self.records
            .retain(|_, s| s.unreachable_since.map_or(true, |t| now < t + timeout));
        self.dialing.retain(|_, (_, since)| now < *since + timeout);
        self.discovered_backoff
            .retain(|p, _| self.records.contains_key(p));
        self.dial_discovered(now);
    }

    /// Whether a user-given address whose connection was lost need not be
    /// dialled now: the peer found there is still reachable through the
    /// mesh and this host has its fill of connections. The usual case is a
    /// full peer that shed this host, which would shed it again:
    /// redialling would change both records every few seconds, for ever.
    /// It is dialled again as soon as the peer becomes unreachable or this
    /// host falls under its connection limit.
    fn target_held(&self, target: &Target) -> bool {
        target.peer.is_some_and(|p| {
            self.live.contains(&p) && self.by_peer.len() >= self.cfg.connection_limit
        })
    }

    fn dial_targets(&mut self, now: Instant) {
        // An idle address whose peer is connected anyway (it dialled this
        // host, or this host dialled it as a discovered peer) adopts that
        // connection instead of dialling a duplicate.
        for t in self.targets.values_mut() {
            if t.state != TargetState::Idle {
                continue;
            }
            if let Some(&conn) = t.peer.and_then(|p| self.by_peer.get(&p)) {
                t.state = TargetState::Connected(conn);
                t.connected_at = Some(now);
            }
        }
        let due: Vec<SocketAddr> = self
            .targets
            .iter()
            .filter(|(_, t)| {
                t.state == TargetState::Idle && t.backoff.due(now) && !self.target_held(t)
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            if let Some(t) = self.targets.get_mut(&addr) {
                t.state = TargetState::Dialing;
                // Counted as failed until it connects, so a driver that
                // never answers still gets a retry schedule.
                t.backoff.failed(now);
            }
            self.push_output(Output::Dial { addr, peer: None });
        }
    }

    /// Dials live peers this host is not connected to, while under the
    /// connection limit, choosing at random (a random graph of bounded
    /// degree has logarithmic diameter).
    fn dial_discovered(&mut self, now: Instant) {
        let busy = self.by_peer.len() + self.dialing.len();
        let Some(mut want) = self.cfg.connection_limit.checked_sub(busy) else {
            return;
        };
        if want == 0 {
            return;
        }
        let dialing: HashSet<PeerId> = self.dialing.values().map(|(p, _)| *p).collect();
        let mut candidates: Vec<(PeerId, SocketAddr)> = self
            .live
            .iter()
            .filter(|p| !self.by_peer.contains_key(p) && !dialing.contains(p))
            .filter(|p| self.discovered_backoff.get(p).map_or(true, |b| b.due(now)))
            .filter_map(|p| self.record(p))
            // Only peers under the limit themselves: a full one would have
            // to shed a connection, and that one would dial again.
            .filter(|r| r.neighbours.len() < self.cfg.connection_limit)
            .filter_map(|r| Some((r.id, *r.endpoints.first()?)))
            .collect();
        candidates.sort_unstable();
        while want > 0 && !candidates.is_empty() {
            let i = self.rng.next_u32() as usize % candidates.len();
            let (peer, addr) = candidates.swap_remove(i);
            if self.targets.contains_key(&addr) {
                continue;
            }
            self.dialing.insert(addr, (peer, now));
            self.push_output(Output::Dial {
                addr,
                peer: Some(peer),
            });
            want -= 1;
        }
    }

    /// Above twice the connection limit, closes connections to the
    /// best-connected neighbours. Inbound connections are never refused
    /// outright: a newcomer whose only way in is a full host would be cut
    /// off; shedding the neighbour with the most other connections keeps
    /// everyone in the mesh (that neighbour has other paths).
    ///
    /// A converged mesh must stop changing (every record change costs
    /// digests of O(N) bytes until all views agree again), so shedding
    /// must not be undone: the victim keeps more than the limit, so it does
    /// not dial discovered peers; connections this host opened go first,
    /// as an inbound one may be the other end's user-given address; and a
    /// user-given address shed this way is not redialled while its peer
    /// stays reachable (see `target_held`).
    fn shed_connections(&mut self, now: Instant) {
        let cap = 2 * self.cfg.connection_limit;
        while self.by_peer.len() > cap {
            let user_given: HashSet<ConnectionId> = self
                .targets
                .values()
                .filter_map(|t| match t.state {
                    TargetState::Connected(c) => Some(c),
                    _ => None,
                })
                .collect();
            let victim = self
                .by_peer
                .iter()
                .filter(|(_, c)| !user_given.contains(c))
                .filter_map(|(p, c)| {
                    let outbound = self.connections[c].direction == Direction::Outbound;
                    Some((outbound, self.record(p)?.neighbours.len(), *p, *c))
                })
                // It keeps at least the limit (with a margin for a stale
                // record), so it does not dial again.
                .filter(|(_, degree, _, _)| *degree > self.cfg.connection_limit + 2)
                // Connections this host opened first: the other end has no
                // reason to open them again, whereas an inbound one may be
                // an address its user gave it, which it keeps redialling.
                .max();
            let Some((_, _, peer, conn)) = victim else {
                return;
            };
            self.connections.remove(&conn);
            self.by_peer.remove(&peer);
            self.push_output(Output::Close {
                conn,
                reason: CloseReason::TooManyConnections,
            });
        }
        if self.own.neighbours.len() != self.by_peer.len() {
            self.publish_own_because("shed", now);
        }
    }

    /// A user-given address's connection `old` is gone (or replaced by
    /// `new`).
    ///
    /// A lost connection that had lasted [`backoff::STABLE`] resets the
    /// address's backoff (it is redialled at once); one lost sooner counts
    /// as a failed attempt. An address whose connections keep being closed
    /// soon after they open (a full peer shedding this host) is thus
    /// retried less and less often instead of every few seconds, each time
    /// changing two records.
    fn retarget(&mut self, old: ConnectionId, new: Option<ConnectionId>, now: Instant) {
        for t in self.targets.values_mut() {
            if t.state != TargetState::Connected(old) {
                continue;
            }
            match new {
                Some(conn) => t.state = TargetState::Connected(conn),
                None => {
                    t.state = TargetState::Idle;
                    let lasted = t
                        .connected_at
                        .take()
                        .is_some_and(|at| now >= at + backoff::STABLE);
                    if lasted {
                        t.backoff.succeeded();
                    } else {
                        t.backoff.failed(now);
                    }
                }
            }
        }
    }

    // ----- recomputation ------------------------------------------------

    /// Liveness, routes, claims, broadcast trees and the forwarding table,
    /// from the records as they are now.
    fn recompute(&mut self, now: Instant) {
        self.recompute_at = None;
        self.summary.set(None);
        let graph = Graph::build(
            self.records
                .values()
                .filter(|s| self.admitted(s).is_ok())
                .map(|s| &s.record)
                .chain([&self.own]),
        );
        let me = graph
            .vertex(&self.own.id)
            .expect("own record is in the graph");
        let (control_hops, _) = graph.bfs(me, false);
        let mut live = HashSet::new();
        for (id, stored) in self.records.iter_mut() {
            let reachable = graph
                .vertex(id)
                .is_some_and(|v| control_hops[v as usize] != u32::MAX);
            if reachable {
                stored.unreachable_since = None;
                live.insert(*id);
            } else if stored.unreachable_since.is_none() {
                stored.unreachable_since = Some(now);
            }
        }
        let mut joined: Vec<PeerId> = live.difference(&self.live).copied().collect();
        let mut left: Vec<PeerId> = self.live.difference(&live).copied().collect();
        joined.sort_unstable();
        left.sort_unstable();
        self.live = live;
        for p in joined {
            let peer = self.peer_ref(&p);
            self.push_output(Output::Event(Event::PeerJoined(peer)));
        }
        for p in left {
            let peer = self.peer_ref(&p);
            self.push_output(Output::Event(Event::PeerLeft(peer)));
        }
        self.recompute_routes(&graph, me);
        let owned = self.recompute_claims();
        self.owned.clone_from(&owned);
        self.check_subnets();
        self.publish_table(&graph, me, owned);
    }

    fn peer_ref(&self, id: &PeerId) -> PeerRef {
        PeerRef {
            id: *id,
            name: self
                .record_of(id)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
        }
    }

    fn recompute_routes(&mut self, graph: &Graph, me: u32) {
        let first = graph.first_hops(me);
        let mut routes = HashMap::with_capacity(self.live.len());
        for (v, hop) in first.iter().enumerate() {
            let Some((hop, hops)) = *hop else { continue };
            let peer = graph.id(v as u32);
            if !self.live.contains(&peer) {
                continue;
            }
            let next_hop = graph.id(hop);
            let reason = if next_hop == peer {
                RouteReason::Direct
            } else if self.by_peer.contains_key(&peer) {
                RouteReason::DirectDataPathDown
            } else {
                RouteReason::NoDirectConnection
            };
            routes.insert(
                peer,
                Route {
                    next_hop,
                    hops,
                    reason,
                },
            );
        }
        let mut changed: Vec<(PeerId, Option<Route>)> = routes
            .iter()
            .filter(|(p, r)| self.routes.get(p) != Some(r))
            .map(|(p, r)| (*p, Some(*r)))
            .chain(
                self.routes
                    .keys()
                    .filter(|p| !routes.contains_key(p))
                    .map(|p| (*p, None)),
            )
            .collect();
        changed.sort_unstable_by_key(|(p, _)| *p);
        self.routes = routes;
        for (peer, route) in changed {
            self.push_output(Output::Event(Event::RouteChanged { peer, route }));
        }
    }

    /// With a CA: whether a stored record counts now, and its certificate.
    fn admitted<'s>(
        &self,
        stored: &'s Stored,
    ) -> Result<Option<&'s Arc<Certificate>>, CertRefusal> {
        let Some(trust) = &self.trust else {
            return Ok(None);
        };
        match &stored.cert {
            Some(Ok(cert)) => {
                trust.check_current(cert, self.unix_now)?;
                Ok(Some(cert))
            }
            Some(Err(e)) => Err(e.clone()),
            None => Err(CertRefusal::Missing),
        }
    }

    /// Claims refused by certificate checks (empty without a CA), and the
    /// next time a certificate's standing changes.
    fn refuse_uncovered(&self) -> (HashSet<RefusedClaim>, Option<u64>) {
        let mut refused = HashSet::new();
        let mut deadline: Option<u64> = None;
        let Some(trust) = &self.trust else {
            return (refused, deadline);
        };
        for stored in self.records.values() {
            let r = &stored.record;
            if let Some(Ok(cert)) = &stored.cert {
                if let Some(t) = trust.next_change(cert, self.unix_now) {
                    deadline = Some(deadline.map_or(t, |d| d.min(t)));
                }
            }
            match self.admitted(stored) {
                Err(e) => refused.extend(r.claims.iter().map(|c| RefusedClaim {
                    peer: r.id,
                    claim: c.claim,
                    reason: ClaimRefusal::Certificate(e.clone()),
                })),
                Ok(cert) => refused.extend(
                    r.claims
                        .iter()
                        .filter(|c| !cert.is_some_and(|cert| cert.covers(&c.claim)))
                        .map(|c| RefusedClaim {
                            peer: r.id,
                            claim: c.claim,
                            reason: ClaimRefusal::NotCovered,
                        }),
                ),
            }
        }
        (refused, deadline)
    }

    /// Resolves the claims of this host and every live peer (with a CA:
    /// only those their certificates cover); raises a conflict event for
    /// each new conflict this host is part of and a refusal event for
    /// each newly refused claim.
    fn recompute_claims(&mut self) -> Vec<(Claim, PeerId)> {
        let (refused, deadline) = self.refuse_uncovered();
        self.cert_deadline = deadline;
        let mut new: Vec<RefusedClaim> = refused.difference(&self.refused).cloned().collect();
        new.sort_unstable_by_key(|r| (r.peer, r.claim));
        for r in new {
            let event = Event::ClaimRefused {
                peer: self.peer_ref(&r.peer),
                claim: r.claim,
                reason: r.reason,
            };
            self.push_output(Output::Event(event));
        }
        let refused_keys: HashSet<(PeerId, Claim)> =
            refused.iter().map(|r| (r.peer, r.claim)).collect();
        self.refused = refused;
        let announced = self
            .live
            .iter()
            .filter_map(|p| self.record(p))
            .chain([&self.own])
            .flat_map(|r| r.claims.iter().map(move |c| (r.id, *c)))
            .filter(|(p, c)| !refused_keys.contains(&(*p, c.claim)));
        let resolution = claims::resolve(announced);
        let me = self.own.id;
        let ours: HashSet<Conflict> = resolution
            .conflicts
            .into_iter()
            .filter(|c| c.owner == me || c.refused == me)
            .collect();
        let mut new: Vec<Conflict> = ours.difference(&self.conflicts).copied().collect();
        new.sort_unstable_by_key(|c| (c.owner, c.refused, c.refused_claim));
        for c in new {
            let event = Event::ClaimConflict {
                owner: self.peer_ref(&c.owner),
                owned_claim: c.owned_claim,
                refused: self.peer_ref(&c.refused),
                refused_claim: c.refused_claim,
            };
            self.push_output(Output::Event(event));
        }
        self.conflicts = ours;
        resolution.owned
    }

    fn check_subnets(&mut self) {
        let mut found = HashSet::new();
        for peer in &self.live {
            let Some(record) = self.record(peer) else {
                continue;
            };
            for ours in &self.own.subnets {
                for theirs in &record.subnets {
                    if ours.is_ipv4() == theirs.is_ipv4()
                        && !ours.contains(theirs)
                        && !theirs.contains(ours)
                    {
                        found.insert((*ours, *peer, *theirs));
                    }
                }
            }
        }
        let mut new: Vec<_> = found.difference(&self.subnet_warnings).copied().collect();
        new.sort_unstable();
        for (ours, peer, theirs) in new {
            let peer = self.peer_ref(&peer);
            self.push_output(Output::Event(Event::SubnetMismatch { ours, peer, theirs }));
        }
        self.subnet_warnings = found;
    }

    fn destination(&self, peer: &PeerId) -> Destination {
        if *peer == self.own.id {
            return Destination::Local;
        }
        self.routes
            .get(peer)
            .and_then(|r| {
                Some(Destination::Peer {
                    peer: *peer,
                    next_hop: r.next_hop,
                    conn: *self.by_peer.get(&r.next_hop)?,
                })
            })
            .unwrap_or(Destination::Unreachable { peer: *peer })
    }

    fn publish_table(&mut self, graph: &Graph, me: u32, owned: Vec<(Claim, PeerId)>) {
        let mut claims: Vec<(Claim, Destination)> = owned
            .iter()
            .map(|(claim, peer)| (*claim, self.destination(peer)))
            .collect();
        if !self.claims_announced {
            // Not announced yet, but this host's own all the same.
            claims.extend(self.cfg.claims.iter().map(|c| (*c, Destination::Local)));
        }
        let peers = self
            .live
            .iter()
            .map(|p| (*p, self.destination(p)))
            .collect();
        let mut broadcast = HashMap::new();
        if self.cfg.broadcast_trees {
            for source in 0..graph.len() as u32 {
                let id = graph.id(source);
                if source != me && !self.live.contains(&id) {
                    continue;
                }
                let hops: Vec<NextHop> = graph
                    .broadcast_children(source, me)
                    .into_iter()
                    .filter_map(|v| {
                        let peer = graph.id(v);
                        Some(NextHop {
                            peer,
                            conn: *self.by_peer.get(&peer)?,
                        })
                    })
                    .collect();
                if !hops.is_empty() {
                    broadcast.insert(id, hops);
                }
            }
        }
        let current = self.table.load();
        let generation = current.generation() + 1;
        let table = ForwardingTable::build(generation, claims, peers, broadcast);
        if table.same_forwarding(&current) {
            return;
        }
        drop(current);
        self.table.store(Arc::new(table));
        self.push_output(Output::Event(Event::ForwardingChanged { generation }));
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.cfg.id)
            .field("version", &self.own.version)
            .field("records", &self.records.len())
            .field("live", &self.live.len())
            .field("connections", &self.by_peer.len())
            .finish()
    }
}

/// Authenticates a record's certificate: signed by a trusted CA and for
/// the record's identity (time and revocation are checked when used).
fn check_record_cert(trust: &Trust, record: &PeerRecord) -> CheckedCert {
    if record.cert.is_empty() {
        return Err(CertRefusal::Missing);
    }
    let cert = trust.authenticate(&record.cert)?;
    if cert.body.public_key != record.id.0 {
        return Err(CertRefusal::KeyMismatch);
    }
    Ok(Arc::new(cert))
}
