//! The control thread: one mio loop over the control connections that key
//! the sessions, the mesh node, end-to-end sessions, relays, broadcast
//! trees, the fast datapath and the local API. The datapath workers
//! (`super::worker`) move the data; this thread publishes what they need
//! (the forwarding table, the [`DataPlane`]) and takes what they hand off.

use super::dataplane::{
    DataPlane, Handoff, LinkPath, PathCounters, RecvSession, SharedPlane, StopFlag,
};
use super::worker::destination;
use super::worker::{
    Codec, ControlLink, WorkerConfig, WorkerParts, WorkerSet, RELAY_LOCATION_BASE,
};
use crate::api::{ConnectionStatus, DropCounters, Status};
use crate::datapath::device::DeviceWriter;
use crate::datapath::underlay::UdpUnderlay;
use crate::mesh::admission::{self, Admission, ConnectionVerdict, Refusal};
use crate::mesh::e2e::{E2eOutput, EndToEnd};
use crate::mesh::link::{Direction, Link, LinkConfig, LinkState, Output};
use crate::mesh::node::{Event as MeshEvent, Output as MeshOutput, TargetStatus};
use crate::mesh::target::PeerTarget;
use crate::mesh::{ConnectionId, Destination, ForwardingReader, Node, NodeConfig, PeerId};
use crate::noise::keys::short_key;
use crate::noise::session::OpenError;
use crate::noise::Session;
use crate::wire::sleeve;
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(2);
const SIGNALS: Token = Token(3);
/// Misses from the kernel OVS datapath (fastdp).
const FASTDP: Token = Token(4);
/// SIGHUP: re-read the peer list.
const RELOAD: Token = Token(5);
/// The local control endpoint has a request (`weft connect`, `weft
/// forget`), or a worker handed something off (one waker serves both).
const CONTROL: Token = Token(6);
const FIRST_STREAM: usize = 16;

/// The replay memory and idle token buckets are pruned this often.
const ADMISSION_PRUNE_INTERVAL: Duration = Duration::from_secs(5);
/// A stale first handshake message (a replay, or a peer whose clock is off)
/// is logged at most this often; every one is counted.
const STALE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// A TCP connect that takes longer than this has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the status snapshot is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// Room for one datagram: the largest UDP payload.
const BUF_LEN: usize = 65536;
/// The data plane is published again at least this often, so a change no
/// code path marked still reaches the workers.
const PLANE_INTERVAL: Duration = Duration::from_millis(100);

/// Everything the router needs from the launcher.
pub struct RouterConfig {
    /// Shared by every link.
    pub link: Arc<LinkConfig>,
    /// Configured peers to connect to (and reconnect with backoff).
    pub peers: Vec<PeerTarget>,
    /// The mesh node's identity, claims and limits.
    pub mesh: NodeConfig,
    /// The VNI.
    pub vni: u32,
    /// Device MTU from the interface MTU (the most the overlay ever gets).
    pub overlay_mtu: u16,
    /// Bytes each datagram adds to an inner packet (outer IP and UDP included).
    pub datagram_overhead: u16,
    /// The static part of the status (name, addresses, datapath decision).
    pub status_template: Status,
    /// Bridge (L2) mode: the device is a TAP and frames are switched by MAC.
    pub l2: Option<super::l2::L2Config>,
    /// Bridge mode with the kernel fast datapath for peers that may get plaintext.
    pub fastdp: Option<super::fastdp::Fastdp>,
    /// SIGHUP re-reads the peer list through this.
    pub reload: Option<super::PeerReload>,
    /// The bound local control socket (`weft connect` / `weft forget`).
    pub control: Option<std::os::unix::net::UnixListener>,
    /// Networks with a CA: the certificates peers must present.
    pub identity: Option<RouterIdentity>,
    /// `--ipalloc-range`: IPAM and the CNI socket.
    pub ipam: Option<super::ipam::IpamSetup>,
    /// `--kube`: peers and the pod range from the Kubernetes API, read on
    /// a thread of its own that sends its changes as control requests.
    pub kube: Option<crate::kube::refresh::RefreshSetup>,
    /// Test builds: a worker panics after this many packets from the
    /// device (the failure path is tested end to end).
    pub panic_after: Option<u64>,
}

/// What a host with `--ca-cert` checks peers against.
pub struct RouterIdentity {
    /// The CA certificates and the revocation list in force.
    pub trust: crate::identity::Trust,
    /// `--revoked`: re-read when it changes and on SIGHUP.
    pub revocation: Option<crate::identity::trust::RevocationFile>,
    /// When this host's own certificate expires (Unix seconds): warned
    /// about a week before, and when it happens (peers then refuse it).
    pub own_not_after: u64,
}

/// How long before its end the own certificate's expiry is warned about.
const OWN_CERT_WARNING: u64 = 7 * 86_400;

/// How often the revocation file's time stamp and the certificates of
/// connected peers are checked.
const IDENTITY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

struct Stream {
    stream: TcpStream,
    /// `None` while a non-blocking connect is in progress.
    link: Option<Link>,
    connect_started: Instant,
    out: Vec<u8>,
    peer_addr: SocketAddr,
    /// The address the mesh node asked to dial (outbound connections).
    dialed: Option<SocketAddr>,
    /// The mesh node was told this connection is up.
    up: bool,
    counters: Arc<PathCounters>,
    /// Networks with a CA: the certificate the peer presented.
    cert: Option<Arc<crate::identity::Certificate>>,
    /// Admission control refused it (counted under its own reason).
    refused: bool,
}

/// A user-given peer host name and what it resolved to.
struct NamedPeer {
    host: String,
    port: u16,
    /// The address the mesh node dials for it now.
    addr: Option<SocketAddr>,
    /// A resolution is under way.
    resolving: bool,
    /// Resolve again then (after a failed resolution).
    retry_at: Option<Instant>,
    /// Why the last resolution failed.
    failure: Option<String>,
}

/// A finished host-name resolution: the `host:port` key and its result.
type Resolution = (String, Result<SocketAddr, String>);

/// A failed resolution is tried again after this long.
const RESOLVE_RETRY: Duration = Duration::from_secs(10);

/// Who a data session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionOwner {
    /// The link of a direct control connection.
    Link(Token),
    /// An end-to-end session with a peer reached through relays.
    E2e(PeerId),
}

/// Where the inner (end-to-end) datagram starts in a relay buffer: after
/// the outer sleeve header and the relay header.
const RELAY_INNER_AT: usize = sleeve::HEADER_LEN + crate::wire::relay::HEADER_LEN;
/// Bytes relaying adds to a datagram: the outer sleeve header and tag and
/// the relay header.
const RELAY_OVERHEAD: usize = sleeve::HEADER_LEN + sleeve::TAG_LEN + crate::wire::relay::HEADER_LEN;
/// An end-to-end handshake unanswered this long is retried.
const E2E_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Sessions of a connection closed as a duplicate still open data this long.
const DUPLICATE_GRACE: Duration = Duration::from_secs(2);

fn conn_of(token: Token) -> ConnectionId {
    ConnectionId(token.0 as u64)
}

fn token_of(conn: ConnectionId) -> Token {
    Token(conn.0 as usize)
}

/// The router's control thread: owns the control connections and every
/// link, and starts and stops the datapath workers.
pub struct Router {
    poll: Poll,
    /// Writes to the local device (frames from relays and broadcast trees,
    /// ICMP answers); the workers read it.
    device: DeviceWriter,
    /// Sends heartbeats, probes, relayed and broadcast datagrams.
    udp: UdpUnderlay,
    listener: TcpListener,
    signals: std::os::unix::net::UnixStream,
    cfg: RouterConfig,
    streams: HashMap<Token, Stream>,
    next_token: usize,
    sessions: HashMap<u32, (SessionOwner, Arc<Session>)>,
    /// The mesh control plane: peers, gossip, claims, routes.
    mesh: Node,
    /// The forwarding table the mesh node publishes.
    fwd: ForwardingReader,
    /// Why the last dial of a user-given address failed.
    dial_failures: HashMap<SocketAddr, String>,
    /// End-to-end sessions with peers reached through relays.
    e2e: EndToEnd,
    /// Where relayed datagrams are built.
    relay_buf: Box<[u8]>,
    /// Links that got relayed control messages to flush.
    relay_touched: Vec<Token>,
    /// What this host relayed for others.
    relayed: crate::api::status::RelayCounters,
    /// Traffic to and from peers reached through relays.
    relayed_peers: HashMap<PeerId, Arc<PathCounters>>,
    /// Bridge mode: MAC-learning locations of peers reached through relays.
    relay_locations: HashMap<PeerId, usize>,
    /// Sessions of duplicate connections, removed after their grace period.
    retiring: Vec<(Instant, u32)>,
    /// Who was at the other end of those connections.
    retired_peers: Vec<(Instant, Token, PeerId)>,
    /// User-given host names (keyed by `host:port`).
    names: std::collections::BTreeMap<String, NamedPeer>,
    /// Finished resolutions, from resolver threads.
    resolved: (
        crossbeam_channel::Sender<Resolution>,
        crossbeam_channel::Receiver<Resolution>,
    ),
    /// Wakes the event loop (control requests, finished resolutions).
    waker: Arc<mio::Waker>,
    drops: DropCounters,
    /// Who may make this host do handshake work (buckets, replay memory).
    admission: Admission,
    last_admission_prune: Instant,
    /// When a stale message 1 was last logged (at most one line per
    /// [`STALE_LOG_INTERVAL`]; each is counted).
    last_stale_log: Option<Instant>,
    snapshot: Arc<Mutex<Status>>,
    started: Instant,
    last_status: Instant,
    buf: Box<[u8]>,
    /// Bridge mode's MAC learning switch (`None` in TUN mode), shared with
    /// the workers.
    l2: Option<Arc<Mutex<super::l2::L2Switch>>>,
    /// Packs frames per peer into sealed datagrams (frames the fast
    /// datapath hands back; the workers have their own).
    batcher: super::sleeve_batch::SleeveBatcher,
    /// What the workers read: sessions, endpoints, limits.
    plane: SharedPlane,
    /// Something the workers read changed since the last publication.
    plane_dirty: bool,
    last_plane: Instant,
    /// What the workers hand off.
    handoffs: crossbeam_channel::Receiver<Handoff>,
    handoff_tx: crossbeam_channel::Sender<Handoff>,
    /// Workers not started yet (started by `run`).
    pending_workers: Vec<WorkerParts>,
    workers: Option<WorkerSet>,
    /// Set on SIGINT/SIGTERM or when a worker dies: every loop stops.
    stop: Arc<StopFlag>,
    /// The device MTU now: lowered when a peer's verified path is smaller.
    tun_mtu: u16,
    icmp_buf: Box<[u8]>,
    /// Rate limit of ICMP unreachable replies to local senders.
    unreachable: super::worker::UnreachableLimit,
    /// Requests from the local control endpoint.
    control: Option<crossbeam_channel::Receiver<crate::api::control::PendingRequest>>,
    /// IPAM and the CNI socket's requests (`--ipalloc-range`).
    ipam: Option<super::ipam::IpamDriver>,
    /// The kernel fast datapath (bridge mode, plaintext-allowed peers).
    fastdp: Option<super::fastdp::Fastdp>,
    fastdp_actions: Vec<super::fastdp::FastdpAction>,
    /// Networks with a CA: trust and the revocation file.
    identity: Option<RouterIdentity>,
    /// Next check of the revocation file and peers' certificates.
    identity_check_at: Instant,
    /// Warnings about this host's own certificate's end given so far (0-2).
    own_cert_warnings: u8,
}

impl Router {
    /// Wraps already-bound sockets and the created device: `device` and
    /// `udp` are the control thread's handles, `workers` the queues and
    /// sockets of the datapath workers `run` starts. The signal stream
    /// becomes readable when SIGINT or SIGTERM arrives.
    pub fn new(
        device: DeviceWriter,
        udp: UdpUnderlay,
        workers: Vec<WorkerParts>,
        listener: std::net::TcpListener,
        signals: std::os::unix::net::UnixStream,
        cfg: RouterConfig,
        snapshot: Arc<Mutex<Status>>,
    ) -> io::Result<Router> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        signals.set_nonblocking(true)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let mut cfg = cfg;
        let fastdp = cfg.fastdp.take();
        let identity = cfg.identity.take();
        if let Some(r) = &cfg.reload {
            r.signal.set_nonblocking(true)?;
            poll.registry().register(
                &mut SourceFd(&r.signal.as_raw_fd()),
                RELOAD,
                Interest::READABLE,
            )?;
        }
        if let Some(f) = &fastdp {
            poll.registry()
                .register(&mut SourceFd(&f.upcall_fd()), FASTDP, Interest::READABLE)?;
        }
        let waker = Arc::new(mio::Waker::new(poll.registry(), CONTROL)?);
        let kube = cfg.kube.take();
        let control = match (cfg.control.take(), kube) {
            (None, None) => None,
            (listener, kube) => {
                let (tx, rx) = crossbeam_channel::unbounded();
                if let Some(listener) = listener {
                    crate::api::control::serve(listener, tx.clone(), waker.clone())?;
                }
                if let Some(setup) = kube {
                    crate::kube::refresh::spawn(setup, tx, waker.clone())?;
                }
                Some(rx)
            }
        };
        let ipam = match cfg.ipam.take() {
            Some(setup) => Some(super::ipam::IpamDriver::start(setup, waker.clone())?),
            None => None,
        };
        let now = Instant::now();
        let (cfg_l2, overlay_mtu, vni) = (cfg.l2.clone(), cfg.overlay_mtu, cfg.vni);
        let cfg_overlay_mtu = cfg.overlay_mtu;
        let cfg_overlay_text = cfg.status_template.overlay.clone();
        let mut mesh = Node::new(cfg.mesh.clone(), Box::new(rand_core::OsRng), now);
        for addr in cfg.peers.iter().filter_map(PeerTarget::addr) {
            mesh.connect(addr, now);
        }
        let fwd = mesh.forwarding();
        let mut e2e_cfg = crate::mesh::e2e::E2eConfig::new(
            cfg.link.key.clone(),
            cfg.link.secret.clone(),
            cfg.link.hello.cipher,
            cfg.link.hello.aes_hw,
        );
        e2e_cfg.rekey_after = cfg.link.timers.rekey_after;
        // One registry of receiver indices for links and end-to-end
        // sessions: an index is never drawn twice while in use.
        e2e_cfg.indices = cfg.link.indices.clone();
        // Relayed handshake messages take milliseconds; one lost on a path
        // that just broke is retried soon.
        e2e_cfg.handshake_timeout = cfg.link.timers.handshake_timeout.min(E2E_HANDSHAKE_TIMEOUT);
        let e2e = EndToEnd::new(Arc::new(e2e_cfg), cfg.mesh.id, Box::new(rand_core::OsRng));
        let (handoff_tx, handoffs) = crossbeam_channel::unbounded();
        let mut router = Router {
            poll,
            device,
            udp,
            listener,
            signals,
            cfg,
            streams: HashMap::new(),
            next_token: FIRST_STREAM,
            sessions: HashMap::new(),
            mesh,
            fwd,
            dial_failures: HashMap::new(),
            e2e,
            relay_buf: vec![0u8; BUF_LEN + 128].into_boxed_slice(),
            relay_touched: Vec::new(),
            relayed: Default::default(),
            relayed_peers: HashMap::new(),
            relay_locations: HashMap::new(),
            retiring: Vec::new(),
            retired_peers: Vec::new(),
            names: std::collections::BTreeMap::new(),
            resolved: crossbeam_channel::unbounded(),
            waker,
            drops: DropCounters::default(),
            admission: Admission::new(),
            last_admission_prune: now,
            last_stale_log: None,
            snapshot,
            started: now,
            last_status: now - STATUS_INTERVAL,
            buf: vec![0u8; BUF_LEN].into_boxed_slice(),
            l2: cfg_l2.as_ref().map(|c| {
                Arc::new(Mutex::new(super::l2::L2Switch::new(
                    overlay_mtu,
                    c.mac_age,
                    c.mac_quota,
                )))
            }),
            batcher: super::sleeve_batch::SleeveBatcher::new(
                super::sleeve_batch::SleeveBatcher::limit_for(
                    overlay_mtu,
                    if cfg_l2.is_some() { 14 } else { 0 },
                ),
                vni,
            ),
            plane: Arc::new(arc_swap::ArcSwap::from_pointee(DataPlane::default())),
            plane_dirty: true,
            last_plane: now,
            handoffs,
            handoff_tx,
            pending_workers: workers,
            workers: None,
            stop: Arc::new(StopFlag::default()),
            tun_mtu: cfg_overlay_mtu,
            icmp_buf: vec![0u8; 1280].into_boxed_slice(),
            unreachable: super::worker::UnreachableLimit::new(&cfg_overlay_text, now),
            control,
            ipam,
            fastdp,
            fastdp_actions: Vec::new(),
            identity,
            identity_check_at: now,
            own_cert_warnings: 0,
        };
        for target in router.cfg.peers.clone() {
            if let PeerTarget::Name { .. } = target {
                router.add_target(target, now);
            }
        }
        Ok(router)
    }

    /// Starts the datapath workers, runs until SIGINT or SIGTERM, then
    /// says goodbye to every peer and stops the workers. An error when a
    /// worker died: the whole router stops with it (never half alive).
    pub fn run(mut self) -> io::Result<()> {
        self.start_workers()?;
        let result = self.run_control();
        self.shutdown();
        self.stop_workers();
        result
    }

    /// Spawns one thread per worker.
    fn start_workers(&mut self) -> io::Result<()> {
        self.publish_plane(Instant::now());
        let parts = std::mem::take(&mut self.pending_workers);
        let count = parts.len();
        let control = ControlLink {
            handoff: self.handoff_tx.clone(),
            waker: self.waker.clone(),
        };
        let config = |index| WorkerConfig {
            index,
            vni: self.cfg.vni,
            overlay_mtu: self.cfg.overlay_mtu,
            l2: self.l2.clone(),
            overlay_text: self.cfg.status_template.overlay.clone(),
            panic_after: self.cfg.panic_after,
            codec: Codec::Sleeve,
        };
        self.workers = Some(WorkerSet::start(
            parts,
            config,
            self.plane.clone(),
            self.fwd.clone(),
            control,
            self.stop.clone(),
        )?);
        tracing::info!(
            "datapath: {count} worker thread(s), each with its own device queue and underlay socket"
        );
        Ok(())
    }

    /// Asks every worker to stop and waits for them.
    fn stop_workers(&mut self) {
        if let Some(mut w) = self.workers.take() {
            w.stop();
        }
    }

    fn run_control(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = self.next_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut stop = false;
            // Hand-offs last: a peer's hello (TCP) that arrived just before
            // its first datagram installs the session that datagram needs.
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.on_accept(),
                    SIGNALS => stop = true,
                    RELOAD => self.on_reload(Instant::now()),
                    CONTROL => {
                        self.on_control(Instant::now());
                        if let Some(ipam) = self.ipam.as_mut() {
                            ipam.on_requests(&mut self.mesh, Instant::now());
                        }
                        self.on_resolved(Instant::now());
                    }
                    FASTDP => self.on_fastdp_upcalls(),
                    token => self.on_stream_event(token, event.is_readable(), event.is_writable()),
                }
            }
            self.on_handoffs();
            if stop {
                return Ok(());
            }
            if self.stop.stopped() {
                return Err(io::Error::other(
                    "a datapath worker stopped unexpectedly (see the error above); weft stops with it",
                ));
            }
            let now = Instant::now();
            self.run_timers(now);
            if let Some(ipam) = self.ipam.as_mut() {
                ipam.tick(&mut self.mesh, now);
            }
            self.drive_mesh(now);
            self.drive_e2e(now);
            if self.plane_dirty || now.duration_since(self.last_plane) >= PLANE_INTERVAL {
                self.publish_plane(now);
            }
            if now.duration_since(self.last_status) >= STATUS_INTERVAL {
                self.publish_status(now);
                self.last_status = now;
            }
        }
    }

    /// Publishes what the workers need to move data: the sending state of
    /// every connected peer and every session datagrams may arrive on.
    fn publish_plane(&mut self, now: Instant) {
        self.plane_dirty = false;
        self.last_plane = now;
        let limits = PeerLimit {
            overlay_mtu: self.cfg.overlay_mtu,
            datagram_overhead: self.cfg.datagram_overhead,
            l2_header: 0,
        };
        let mut plane = DataPlane::default();
        for (token, s) in &self.streams {
            let Some(link) = s.link.as_ref() else {
                continue;
            };
            if let (Some(session), Some(endpoint)) = (link.sending_session(), link.endpoint()) {
                plane.links.insert(
                    token.0,
                    LinkPath {
                        session: session.clone(),
                        endpoint,
                        payload_mtu: limits.payload_mtu(link),
                        counters: s.counters.clone(),
                    },
                );
            }
        }
        let with_macs = self.identity.is_some() && self.l2.is_some();
        for (index, (owner, session)) in &self.sessions {
            let (plane_owner, peer, location, counters, endpoint, report_first, cert) = match owner
            {
                SessionOwner::Link(token) => {
                    let stream = self.streams.get(token);
                    let link = stream.and_then(|s| s.link.as_ref());
                    let peer = link
                        .and_then(|l| l.remote_static())
                        .map(|k| PeerId(*k))
                        .or_else(|| {
                            self.retired_peers
                                .iter()
                                .find(|(_, t, _)| t == token)
                                .map(|(_, _, p)| *p)
                        });
                    let current = link
                        .and_then(|l| l.sending_session())
                        .is_some_and(|c| c.local_index == *index);
                    let cert = stream
                        .and_then(|s| s.cert.clone())
                        .filter(|c| with_macs && c.body.macs != crate::identity::MacPolicy::Any);
                    (
                        super::dataplane::SessionOwner::Link(token.0),
                        peer,
                        token.0,
                        stream.map_or_else(Default::default, |s| s.counters.clone()),
                        link.and_then(|l| l.endpoint()),
                        // A session the link has not switched to yet.
                        link.is_some() && !current,
                        cert,
                    )
                }
                SessionOwner::E2e(peer) => (
                    super::dataplane::SessionOwner::E2e(*peer),
                    Some(*peer),
                    0,
                    Default::default(),
                    None,
                    false,
                    None,
                ),
            };
            plane.sessions.insert(
                *index,
                RecvSession {
                    session: session.clone(),
                    owner: plane_owner,
                    peer,
                    location,
                    counters,
                    endpoint,
                    report_first,
                    allowed_macs: cert,
                },
            );
        }
        self.plane.store(Arc::new(plane));
    }

    /// Takes what the workers handed off.
    fn on_handoffs(&mut self) {
        let mut handled = 0;
        while let Ok(handoff) = self.handoffs.try_recv() {
            let now = Instant::now();
            match handoff {
                Handoff::Datagram { bytes, from } => {
                    let n = bytes.len().min(self.buf.len());
                    self.buf[..n].copy_from_slice(&bytes[..n]);
                    self.on_datagram(n, from);
                }
                Handoff::Local(packet) => {
                    let limits = PeerLimit {
                        overlay_mtu: self.cfg.overlay_mtu,
                        datagram_overhead: self.cfg.datagram_overhead,
                        l2_header: 0,
                    };
                    self.route_l3(&packet, &limits);
                }
                Handoff::L2Relay { location, frame } => {
                    let limits = PeerLimit {
                        overlay_mtu: self.cfg.overlay_mtu,
                        datagram_overhead: self.cfg.datagram_overhead,
                        l2_header: 14,
                    };
                    let peer = self.relay_location_peer(location);
                    let next = peer.and_then(|p| self.fwd.load().peer(&p).copied());
                    if let (Some(peer), Some(Destination::Peer { conn, .. })) = (peer, next) {
                        self.relay_frame(peer, token_of(conn), &frame, &limits);
                    } else {
                        self.drops.no_route += 1;
                    }
                }
                Handoff::Flood(frame) => {
                    // Along this host's broadcast tree: every host gets it
                    // exactly once, also in a partial mesh.
                    let own = self.mesh.id();
                    let mut records = vec![0u8; sleeve::RECORD_OVERHEAD + frame.len()];
                    if let Some(len) = sleeve::emit_record(&mut records, self.cfg.vni, &frame) {
                        records.truncate(len);
                        self.send_broadcast(own, crate::wire::relay::DEFAULT_HOPS, &records, None);
                    }
                }
                Handoff::Authenticated {
                    index,
                    from,
                    newest,
                } => {
                    if let Some((SessionOwner::Link(token), _)) = self.sessions.get(&index) {
                        let token = *token;
                        if let Some(link) =
                            self.streams.get_mut(&token).and_then(|s| s.link.as_mut())
                        {
                            link.on_authenticated(index, from, newest, now);
                            self.plane_dirty = true;
                        }
                        self.drive_link(token, now);
                    }
                }
                Handoff::TooBig(token) => {
                    if let Some(l) = self
                        .streams
                        .get_mut(&Token(token))
                        .and_then(|s| s.link.as_mut())
                    {
                        l.on_data_too_big();
                    }
                }
            }
            handled += 1;
            if handled % 64 == 0 {
                self.flush_batcher();
            }
        }
        self.flush_batcher();
    }

    fn next_timeout(&self, now: Instant) -> Duration {
        let mut t = now + STATUS_INTERVAL;
        for s in self.streams.values() {
            if let Some(w) = s.link.as_ref().and_then(|l| l.next_wakeup()) {
                t = t.min(w);
            }
            if s.link.as_ref().is_some_and(|l| l.awaiting_first_message()) {
                // Just past the deadline, so the check in run_timers fires.
                let deadline = s.connect_started
                    + admission::FIRST_MESSAGE_DEADLINE
                    + Duration::from_millis(1);
                t = t.min(deadline);
            }
        }
        t = t.min(self.mesh.poll_timeout());
        if let Some(ipam) = &self.ipam {
            t = t.min(ipam.next_wakeup());
        }
        if let Some(e) = self.e2e.poll_timeout() {
            t = t.min(e);
        }
        t.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    // ---- data path -------------------------------------------------------

    /// Routes one IP packet a worker handed off (a peer reached through
    /// relays, or a route that changed under the worker) to its peer's
    /// batch, or answers it with ICMP.
    fn route_l3(&mut self, frame: &[u8], limits: &PeerLimit) {
        let Some(dst) = destination(frame) else {
            return;
        };
        let destination = self.fwd.load().lookup_ip(dst).copied();
        let token = match destination {
            Some(Destination::Peer {
                peer,
                next_hop,
                conn,
            }) if peer == next_hop => Some(token_of(conn)),
            Some(Destination::Peer { peer, conn, .. }) => {
                self.relay_frame(peer, token_of(conn), frame, limits);
                return;
            }
            Some(Destination::Local) => {
                // Addressed to this host: the kernel answers it, not the overlay.
                return;
            }
            Some(Destination::Unreachable { .. }) | None => None,
        };
        let Some(token) = token else {
            // Multicast (IGMP, MLD, mDNS) has no single owner in L3 mode; not a routing failure.
            if !dst.is_multicast() && Some(dst) != self.unreachable.broadcast {
                self.drops.no_route += 1;
                // No peer claims this address: tell the local sender at once
                // (host/address unreachable) instead of letting it time out.
                if self.unreachable.allow(Instant::now()) {
                    let reply = match frame[0] >> 4 {
                        4 => crate::wire::icmpv4::build_host_unreachable(frame, &mut self.icmp_buf),
                        6 => crate::wire::icmpv6::build_address_unreachable(
                            frame,
                            &mut self.icmp_buf,
                        ),
                        _ => Ok(None),
                    };
                    if let Ok(Some(len)) = reply {
                        let _ = self.device.send(&self.icmp_buf[..len]);
                    }
                }
            }
            return;
        };
        let Some(link) = self.streams.get(&token).and_then(|s| s.link.as_ref()) else {
            return;
        };
        // Larger than this peer's verified path carries: tell the local
        // sender the real MTU instead of fragmenting or dropping silently.
        let limit = limits.payload_mtu(link);
        if frame.len() > usize::from(limit) {
            self.drops.too_big += 1;
            self.answer_too_big(frame, limit);
            return;
        }
        if !queue_frame(
            &mut self.batcher,
            &mut self.streams,
            &mut self.udp,
            token,
            frame,
            limits,
        ) {
            self.drops.too_big += 1;
        }
    }

    /// Sends what the batcher holds; a peer whose datagram the kernel
    /// refused as too big gets its path MTU searched again.
    fn flush_batcher(&mut self) {
        self.batcher.flush(&mut self.udp);
        while let Some(peer) = self.batcher.too_big_peers.pop() {
            if let Some(l) = self
                .streams
                .get_mut(&Token(peer))
                .and_then(|s| s.link.as_mut())
            {
                l.on_data_too_big();
            }
        }
    }

    fn on_datagram(&mut self, n: usize, from: SocketAddr) {
        self.on_datagram_at(n, from, false);
    }

    /// Opens and handles the datagram in `self.buf[..n]`. `inner`: it came
    /// out of a relay wrapper addressed to this host, so only an end-to-end
    /// `Data` datagram is accepted (no nesting).
    fn on_datagram_at(&mut self, n: usize, from: SocketAddr, inner: bool) {
        let now = Instant::now();
        let datagram = &mut self.buf[..n];
        let Ok(packet) = sleeve::Packet::new_checked(&*datagram) else {
            self.drops.malformed += 1;
            return;
        };
        let Ok(repr) = sleeve::Repr::parse(&packet) else {
            self.drops.malformed += 1;
            return;
        };
        let Some((owner, session)) = self.sessions.get(&repr.receiver_index) else {
            self.drops.unknown_session += 1;
            return;
        };
        let owner = *owner;
        if inner && !matches!(owner, SessionOwner::E2e(_)) {
            self.drops.bad_record += 1;
            return;
        }
        let (plain_len, newest) = match session.open_tracked(repr.counter, datagram) {
            Ok(opened) => (opened.len, opened.newest),
            Err(OpenError::Replay) => {
                self.drops.replay += 1;
                return;
            }
            Err(_) => {
                self.drops.authentication += 1;
                return;
            }
        };
        let token = match owner {
            SessionOwner::Link(token) => {
                match self.streams.get_mut(&token).and_then(|s| s.link.as_mut()) {
                    Some(link) => {
                        let before = (
                            link.endpoint(),
                            link.sending_session().map(|s| s.local_index),
                        );
                        link.on_authenticated(repr.receiver_index, from, newest, now);
                        let after = (
                            link.endpoint(),
                            link.sending_session().map(|s| s.local_index),
                        );
                        self.plane_dirty |= before != after;
                        Some(token)
                    }
                    // A duplicate connection just closed: its data still counts.
                    None if repr.message_type == sleeve::MessageType::Data => None,
                    None => return,
                }
            }
            SessionOwner::E2e(_) => {
                self.e2e.on_authenticated(repr.receiver_index, now);
                // End to end: only data (heartbeats and probes are per link).
                if repr.message_type != sleeve::MessageType::Data {
                    self.drops.bad_record += 1;
                    return;
                }
                None
            }
        };
        let range = sleeve::HEADER_LEN..sleeve::HEADER_LEN + plain_len;
        match repr.message_type {
            sleeve::MessageType::Data => {
                let location = match owner {
                    SessionOwner::Link(token) => token.0,
                    SessionOwner::E2e(peer) => self.relay_location(peer),
                };
                self.deliver_records(range, location, owner, now)
            }
            sleeve::MessageType::Heartbeat | sleeve::MessageType::PmtuProbe => {
                if let Some(link) = token
                    .and_then(|t| self.streams.get_mut(&t))
                    .and_then(|s| s.link.as_mut())
                {
                    let plaintext = &self.buf[range];
                    if repr.message_type == sleeve::MessageType::Heartbeat {
                        link.on_heartbeat(plaintext, from, now);
                    } else {
                        link.on_pmtu_probe(plaintext, n);
                    }
                }
            }
            sleeve::MessageType::Relay => self.on_relay_datagram(range, from),
            sleeve::MessageType::Broadcast => {
                if let Some(token) = token {
                    self.on_broadcast_datagram(range, token, now);
                }
            }
        }
        if let Some(token) = token {
            self.drive_link(token, now);
        }
    }

    /// Delivers the records of an opened `Data` datagram (in `self.buf`
    /// at `range`) to the local device.
    /// `location`: where MACs seen as sources are learned (bridge mode).
    fn deliver_records(
        &mut self,
        range: std::ops::Range<usize>,
        location: usize,
        owner: SessionOwner,
        now: Instant,
    ) {
        let mut rx_bytes = 0u64;
        let mut rx_packets = 0u64;
        // Who sent it: inner sources must be addresses that peer owns.
        let sender = match owner {
            SessionOwner::Link(token) => self
                .streams
                .get(&token)
                .and_then(|s| s.link.as_ref())
                .and_then(|l| l.remote_static())
                .map(|k| PeerId(*k))
                .or_else(|| {
                    self.retired_peers
                        .iter()
                        .find(|(_, t, _)| *t == token)
                        .map(|(_, _, p)| *p)
                }),
            SessionOwner::E2e(peer) => Some(peer),
        };
        let table = self.fwd.load();
        // Bridge mode with a CA: the source MACs the sender's certificate
        // allows (`None`: any).
        let allowed_macs = match (&self.identity, &self.l2, owner) {
            (Some(_), Some(_), SessionOwner::Link(token)) => {
                self.streams.get(&token).and_then(|s| s.cert.clone())
            }
            (Some(_), Some(_), SessionOwner::E2e(peer)) => self.mesh.certificate(&peer).cloned(),
            _ => None,
        }
        .filter(|c| c.body.macs != crate::identity::MacPolicy::Any);
        let plaintext = &self.buf[range];
        let switch = self.l2.clone();
        let mut switch = switch.as_ref().and_then(|s| s.lock().ok());
        let from = super::worker::Sender {
            peer: sender,
            location,
            allowed_macs: allowed_macs.as_deref(),
        };
        for record in sleeve::Records::new(plaintext) {
            let Ok(record) = record else {
                self.drops.bad_record += 1;
                break;
            };
            if record.vni != self.cfg.vni {
                self.drops.bad_record += 1;
                continue;
            }
            if !super::worker::accept_frame(
                record.frame,
                &from,
                switch.as_deref_mut(),
                &table,
                &mut self.drops,
                now,
            ) {
                continue;
            }
            match self.device.send(record.frame) {
                Ok(_) => {
                    rx_bytes += record.frame.len() as u64;
                    rx_packets += 1;
                }
                Err(_) => self.drops.send_errors += 1,
            }
        }
        drop(switch);
        let counters = match owner {
            SessionOwner::Link(token) => self.streams.get(&token).map(|s| &s.counters),
            SessionOwner::E2e(peer) => Some(&*self.relayed_peers.entry(peer).or_default()),
        };
        if let Some(c) = counters {
            c.received(rx_packets, rx_bytes);
        }
    }

    /// A `Broadcast` from the neighbour on `token` (plaintext in
    /// `self.buf` at `range`): delivered here, then passed on along the
    /// source's broadcast tree.
    fn on_broadcast_datagram(&mut self, range: std::ops::Range<usize>, token: Token, now: Instant) {
        let Ok(packet) = crate::wire::relay::BroadcastPacket::new_checked(&self.buf[range.clone()])
        else {
            self.drops.bad_record += 1;
            return;
        };
        let source = packet.source();
        let hops_left = packet.hops_left();
        if source == self.mesh.id() {
            // Came back around: trees are being recomputed.
            return;
        }
        let records = range.start + crate::wire::relay::HEADER_LEN..range.end;
        let neighbour = self
            .streams
            .get(&token)
            .and_then(|s| s.link.as_ref())
            .and_then(|l| l.remote_static())
            .map(|k| PeerId(*k));
        let location = if neighbour == Some(source) {
            token.0
        } else {
            self.relay_location(source)
        };
        let copy = (hops_left > 0).then(|| self.buf[records.clone()].to_vec());
        self.deliver_records(records, location, SessionOwner::Link(token), now);
        if let Some(copy) = copy {
            self.send_broadcast(source, hops_left - 1, &copy, Some(token));
        }
    }

    /// Sends `records` as a `Broadcast` from `source` to this host's
    /// children in the source's tree (not back to `except`, where it came
    /// from), sealed for each child with its link session.
    fn send_broadcast(
        &mut self,
        source: PeerId,
        hops_left: u8,
        records: &[u8],
        except: Option<Token>,
    ) {
        let len = records.len();
        let at = sleeve::HEADER_LEN + crate::wire::relay::HEADER_LEN;
        let mut out = std::mem::take(&mut self.relay_buf);
        let table = arc_swap::Guard::into_inner(self.fwd.load());
        for hop in table.broadcast_next_hops(&source) {
            let token = token_of(hop.conn);
            if Some(token) == except || self.fastdp.as_ref().is_some_and(|f| f.is_fastdp(token.0)) {
                // Peers on fastdp get floods from the OVS datapath's bridge port.
                continue;
            }
            let Some(link) = self.streams.get(&token).and_then(|s| s.link.as_ref()) else {
                continue;
            };
            let (Some(session), Some(to)) = (link.sending_session(), link.endpoint()) else {
                continue;
            };
            // Sealing encrypts in place: each child gets a fresh copy.
            out[at..at + len].copy_from_slice(records);
            let repr = crate::wire::relay::BroadcastRepr {
                source,
                hops_left,
                records_len: len,
            };
            let plain = sleeve::HEADER_LEN..sleeve::HEADER_LEN + repr.buffer_len();
            if repr
                .emit(&mut crate::wire::relay::BroadcastPacket::new_unchecked(
                    &mut out[plain],
                ))
                .is_err()
            {
                continue;
            }
            match session.seal(sleeve::MessageType::Broadcast, &mut out, repr.buffer_len()) {
                Ok(total) => {
                    if self.udp.send_to(&out[..total], to).is_err() {
                        self.drops.send_errors += 1;
                    } else if let Some(s) = self.streams.get(&token) {
                        s.counters.sent(1, len as u64);
                    }
                }
                Err(_) => self.drops.send_errors += 1,
            }
        }
        self.relay_buf = out;
    }

    /// The MAC-learning location of a peer reached through relays (bridge
    /// mode): a number above every socket token.
    fn relay_location(&mut self, peer: PeerId) -> usize {
        if let Some(&l) = self.relay_locations.get(&peer) {
            return l;
        }
        let l = RELAY_LOCATION_BASE + self.relay_locations.len();
        self.relay_locations.insert(peer, l);
        l
    }

    /// The peer behind a relay location.
    fn relay_location_peer(&self, location: usize) -> Option<PeerId> {
        self.relay_locations
            .iter()
            .find(|(_, &l)| l == location)
            .map(|(p, _)| *p)
    }

    /// A `Relay` datagram from a neighbour, opened (plaintext in
    /// `self.buf` at `range`): pass the sealed inner datagram on towards
    /// its destination, or handle it here if it is for this host.
    fn on_relay_datagram(&mut self, range: std::ops::Range<usize>, from: SocketAddr) {
        let Ok(packet) = crate::wire::relay::Packet::new_checked(&self.buf[range.clone()]) else {
            self.drops.bad_record += 1;
            return;
        };
        let destination = packet.destination();
        let hops_left = packet.hops_left();
        let inner = range.start + crate::wire::relay::HEADER_LEN..range.end;
        if destination == self.mesh.id() {
            let len = inner.len();
            self.buf.copy_within(inner, 0);
            self.on_datagram_at(len, from, true);
            return;
        }
        let next = self.fwd.load().peer(&destination).copied();
        let Some(Destination::Peer { next_hop, conn, .. }) = next else {
            self.relayed.dropped += 1;
            return;
        };
        let token = token_of(conn);
        let inner_bytes = inner.len() as u64;
        if next_hop == destination {
            // Last hop: the inner datagram goes as it is (sealed for the
            // destination; this host cannot read it).
            let Some(to) = self
                .streams
                .get(&token)
                .and_then(|s| s.link.as_ref())
                .and_then(|l| l.endpoint())
            else {
                self.relayed.dropped += 1;
                return;
            };
            if self.udp.send_to(&self.buf[inner], to).is_err() {
                self.relayed.dropped += 1;
                return;
            }
        } else {
            if hops_left == 0 {
                self.relayed.dropped += 1;
                return;
            }
            let len = inner.len();
            let mut out = std::mem::take(&mut self.relay_buf);
            out[RELAY_INNER_AT..RELAY_INNER_AT + len].copy_from_slice(&self.buf[inner]);
            let sent = self.send_relay_wrapped(token, destination, hops_left - 1, &mut out, len);
            self.relay_buf = out;
            if !sent {
                self.relayed.dropped += 1;
                return;
            }
        }
        self.relayed.datagrams += 1;
        self.relayed.bytes += inner_bytes;
    }

    /// Wraps the inner datagram at `out[RELAY_INNER_AT..][..inner_len]` in
    /// a `Relay` for `destination`, sealed with the link session of the
    /// neighbour on `token`, and sends it to that neighbour.
    fn send_relay_wrapped(
        &mut self,
        token: Token,
        destination: PeerId,
        hops_left: u8,
        out: &mut [u8],
        inner_len: usize,
    ) -> bool {
        let Some(link) = self.streams.get(&token).and_then(|s| s.link.as_ref()) else {
            return false;
        };
        let (Some(session), Some(to)) = (link.sending_session(), link.endpoint()) else {
            return false;
        };
        let repr = crate::wire::relay::Repr {
            destination,
            hops_left,
            inner_len,
        };
        let plain = sleeve::HEADER_LEN..sleeve::HEADER_LEN + repr.buffer_len();
        if repr
            .emit(&mut crate::wire::relay::Packet::new_unchecked(
                &mut out[plain],
            ))
            .is_err()
        {
            return false;
        }
        let Ok(total) = session.seal(sleeve::MessageType::Relay, out, repr.buffer_len()) else {
            return false;
        };
        match self.udp.send_to(&out[..total], to) {
            Ok(_) => true,
            Err(_) => {
                self.drops.send_errors += 1;
                false
            }
        }
    }

    /// Sends `frame` to `peer`, which is reached through the neighbour on
    /// `via`: sealed end to end for `peer`, wrapped for the neighbour.
    fn relay_frame(&mut self, peer: PeerId, via: Token, frame: &[u8], limits: &PeerLimit) {
        let now = Instant::now();
        self.e2e.want(peer, now);
        let Some(link) = self.streams.get(&via).and_then(|s| s.link.as_ref()) else {
            self.drops.no_route += 1;
            return;
        };
        let limit = limits
            .payload_mtu(link)
            .saturating_sub(RELAY_OVERHEAD as u16);
        if frame.len() > usize::from(limit) {
            self.drops.too_big += 1;
            if limits.l2_header == 0 {
                self.answer_too_big(frame, limit);
            }
            return;
        }
        let mut out = std::mem::take(&mut self.relay_buf);
        let record_at = RELAY_INNER_AT + sleeve::HEADER_LEN;
        let Some(record_len) = sleeve::emit_record(&mut out[record_at..], self.cfg.vni, frame)
        else {
            self.relay_buf = out;
            return;
        };
        let sent = self.send_end_to_end(peer, via, &mut out, record_len);
        self.relay_buf = out;
        if sent {
            self.relayed_peers
                .entry(peer)
                .or_default()
                .sent(1, frame.len() as u64);
        }
    }

    /// Seals the `Data` plaintext at `out[RELAY_INNER_AT + HEADER_LEN..]`
    /// (`plain_len` bytes) end to end for `peer` and sends it wrapped
    /// through the neighbour on `via`. False (and counted) when no
    /// end-to-end session is up yet: the handshake is under way.
    fn send_end_to_end(
        &mut self,
        peer: PeerId,
        via: Token,
        out: &mut [u8],
        plain_len: usize,
    ) -> bool {
        let Some(session) = self.e2e.sending_session(&peer) else {
            self.drops.no_route += 1;
            return false;
        };
        let Ok(inner_len) = session.seal(
            sleeve::MessageType::Data,
            &mut out[RELAY_INNER_AT..],
            plain_len,
        ) else {
            return false;
        };
        self.send_relay_wrapped(via, peer, crate::wire::relay::DEFAULT_HOPS, out, inner_len)
    }

    /// Answers a local IP packet that is larger than its path carries with
    /// ICMP fragmentation-needed / packet-too-big naming `limit`.
    fn answer_too_big(&mut self, frame: &[u8], limit: u16) {
        if let Some(len) = super::worker::too_big_reply(frame, limit, &mut self.icmp_buf) {
            let _ = self.device.send(&self.icmp_buf[..len]);
        }
    }

    /// A relayed control message (an end-to-end handshake message) from
    /// a neighbour: for this host, or passed on.
    fn on_relayed_control(&mut self, relayed: crate::mesh::control::RelayedControl, now: Instant) {
        let to = PeerId(relayed.to);
        if to == self.mesh.id() {
            // With a CA, only peers whose records carry a valid certificate
            // are in the mesh (live): nobody else gets an end-to-end session.
            if self.identity.is_some() && !self.mesh.is_live(&PeerId(relayed.from)) {
                self.drops.control_rejected += 1;
                return;
            }
            match crate::mesh::e2e::E2eMessage::decode(&relayed.payload) {
                // The handshake proves `from`: a neighbour that lies about
                // it only makes the handshake fail.
                Ok(message) => self.e2e.on_message(PeerId(relayed.from), message, now),
                Err(_) => self.drops.bad_record += 1,
            }
            return;
        }
        if relayed.hops_left == 0 {
            self.relayed.dropped += 1;
            return;
        }
        let forwarded = crate::mesh::control::RelayedControl {
            hops_left: relayed.hops_left - 1,
            ..relayed
        };
        if !self.send_relayed_control(to, forwarded) {
            self.relayed.dropped += 1;
        }
    }

    /// Sends a relayed control message one hop towards `to`.
    fn send_relayed_control(
        &mut self,
        to: PeerId,
        relayed: crate::mesh::control::RelayedControl,
    ) -> bool {
        let Some(Destination::Peer { conn, .. }) = self.fwd.load().peer(&to).copied() else {
            return false;
        };
        let token = token_of(conn);
        let Some(l) = self.streams.get_mut(&token).and_then(|s| s.link.as_mut()) else {
            return false;
        };
        l.send_relay(relayed);
        self.relay_touched.push(token);
        true
    }

    /// Carries out what the end-to-end session manager asks for.
    fn drive_e2e(&mut self, now: Instant) {
        if self.e2e.poll_timeout().is_some_and(|t| now >= t) {
            self.e2e.handle_timeout(now);
        }
        while let Some(output) = self.e2e.poll_output() {
            match output {
                E2eOutput::Send { to, message } => {
                    let relayed = crate::mesh::control::RelayedControl {
                        from: *self.mesh.id().as_bytes(),
                        to: *to.as_bytes(),
                        hops_left: crate::wire::relay::DEFAULT_HOPS,
                        payload: message.encode(),
                    };
                    if !self.send_relayed_control(to, relayed) {
                        tracing::debug!(peer = %to, "no path for an end-to-end handshake message; it is retried");
                    }
                }
                E2eOutput::SessionUp {
                    peer,
                    session,
                    confirm,
                } => {
                    tracing::info!(
                        "end-to-end session with {} up ({}): relayed traffic is sealed for it alone",
                        self.peer_label(&peer),
                        session.cipher().name()
                    );
                    self.install_session(SessionOwner::E2e(peer), session);
                    if confirm {
                        // An empty Data datagram tells the peer the session is live.
                        if let Some(Destination::Peer { conn, .. }) =
                            self.fwd.load().peer(&peer).copied()
                        {
                            let mut out = std::mem::take(&mut self.relay_buf);
                            self.send_end_to_end(peer, token_of(conn), &mut out, 0);
                            self.relay_buf = out;
                        }
                    }
                }
                E2eOutput::SessionDown { local_index, .. } => {
                    self.remove_session(local_index);
                }
                E2eOutput::Failed { peer, reason } => {
                    tracing::warn!(
                        "end-to-end handshake with {}: {reason}",
                        self.peer_label(&peer)
                    );
                }
            }
        }
        let touched = std::mem::take(&mut self.relay_touched);
        for token in touched {
            self.drive_link(token, now);
        }
    }

    /// End-to-end session state with a peer, for status.
    fn end_to_end_state(&self, peer: &PeerId) -> Option<String> {
        use crate::mesh::e2e::E2eState;
        let (_, state) = self.e2e.peers().find(|(p, _)| p == peer)?;
        Some(match state {
            E2eState::Handshaking => "handshaking".to_string(),
            E2eState::Established { .. } => "established".to_string(),
            E2eState::Failed { reason } => format!("failed: {reason}"),
        })
    }

    // ---- control connections --------------------------------------------

    fn on_accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, addr)) => {
                    // A dual-stack listener ([::]) sees IPv4 peers as
                    // ::ffff:a.b.c.d: name them by their IPv4 address, as
                    // their datagrams are (datapath::sockaddr).
                    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                    let now = Instant::now();
                    if !self.admit_connection(&stream, addr, now) {
                        continue; // dropping the stream closes it
                    }
                    let link = Link::new(
                        Direction::Inbound,
                        addr,
                        self.cfg.link.clone(),
                        now,
                        wall_clock(),
                    );
                    if let Some(token) = self.add_stream(stream, addr, Some(link), None, now) {
                        self.drive_link(token, now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a control connection failed");
                    return;
                }
            }
        }
    }

    /// Admission control for a just-accepted connection, before any byte
    /// is read: the per-source and total bounds on connections in their
    /// handshake. `false`: refused (counted); the caller drops the stream.
    fn admit_connection(&mut self, stream: &TcpStream, addr: SocketAddr, now: Instant) -> bool {
        let source = admission::source_key(addr.ip());
        let (mut from_source, mut total) = (0, 0);
        let mut oldest_idle: Option<(Instant, Token)> = None;
        for (token, s) in &self.streams {
            let Some(l) = s.link.as_ref() else {
                continue;
            };
            if l.direction != Direction::Inbound || l.remote_hello().is_some() || l.is_closed() {
                continue;
            }
            total += 1;
            if admission::source_key(s.peer_addr.ip()) == source {
                from_source += 1;
            }
            if l.awaiting_first_message()
                && oldest_idle.map_or(true, |(t, _)| s.connect_started < t)
            {
                oldest_idle = Some((s.connect_started, *token));
            }
        }
        let exhausted = self.admission.source_exhausted(addr.ip(), now);
        match admission::judge_connection(from_source, total, oldest_idle.is_some(), exhausted) {
            ConnectionVerdict::Accept => true,
            ConnectionVerdict::AcceptEvictingIdle => {
                if let Some((_, idle)) = oldest_idle {
                    self.refuse_stream(idle, Refusal::Busy, now);
                }
                true
            }
            ConnectionVerdict::Refuse(refusal) => {
                self.count_refusal(refusal);
                reset_on_close(stream);
                tracing::debug!(peer = %addr, "connection refused: {}", refusal.describe());
                false
            }
        }
    }

    fn count_refusal(&mut self, refusal: Refusal) {
        let r = &mut self.drops.refused;
        let counter = match refusal {
            Refusal::PerSource => &mut r.control_per_source,
            Refusal::Busy => &mut r.control_busy,
            Refusal::RateLimited => &mut r.control_rate_limited,
            Refusal::Stale => &mut r.control_stale,
            Refusal::Replayed => &mut r.control_replayed,
            Refusal::PeerLimit => &mut r.control_peer_limit,
            Refusal::Slow => &mut r.control_slow,
            Refusal::Backlog => &mut r.control_backlog,
        };
        *counter += 1;
    }

    /// Closes a connection that admission control refused, without writing
    /// anything more to it (a refused handshake gets no byte back).
    fn refuse_stream(&mut self, token: Token, refusal: Refusal, now: Instant) {
        let Some(s) = self.streams.get_mut(&token) else {
            return;
        };
        s.refused = true;
        s.out.clear();
        reset_on_close(&s.stream);
        if let Some(l) = s.link.as_mut() {
            l.refuse(refusal.describe());
            while l.poll_output().is_some() {}
        }
        if refusal == Refusal::Backlog {
            tracing::warn!(peer = %s.peer_addr, "closing the control connection: {}", refusal.describe());
        }
        self.count_refusal(refusal);
        self.close_stream(token, refusal.describe(), now);
    }

    fn add_stream(
        &mut self,
        mut stream: TcpStream,
        peer_addr: SocketAddr,
        link: Option<Link>,
        dialed: Option<SocketAddr>,
        now: Instant,
    ) -> Option<Token> {
        let token = Token(self.next_token);
        self.next_token += 1;
        let _ = stream.set_nodelay(true);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(error = %e, "cannot watch a control connection");
            return None;
        }
        self.streams.insert(
            token,
            Stream {
                stream,
                link,
                connect_started: now,
                out: Vec::new(),
                peer_addr,
                dialed,
                up: false,
                counters: Arc::default(),
                cert: None,
                refused: false,
            },
        );
        Some(token)
    }

    fn on_stream_event(&mut self, token: Token, readable: bool, writable: bool) {
        let now = Instant::now();
        let Some(s) = self.streams.get_mut(&token) else {
            return;
        };
        if s.link.is_none() {
            // A connect in progress: it finished (either way) when writable.
            if !(writable || readable) {
                return;
            }
            match s.stream.take_error() {
                Ok(None) if s.stream.peer_addr().is_ok() => {
                    tracing::info!(peer = %s.peer_addr, "control connection open; authenticating");
                    s.link = Some(Link::new(
                        Direction::Outbound,
                        s.peer_addr,
                        self.cfg.link.clone(),
                        now,
                        wall_clock(),
                    ));
                }
                Ok(None) => return, // spurious wakeup, still connecting
                Ok(Some(e)) | Err(e) => {
                    let reason = format!("cannot connect to {}: {e}", s.peer_addr);
                    self.close_stream(token, &reason, now);
                    return;
                }
            }
        }
        if readable {
            let mut chunk = [0u8; 16384];
            loop {
                let Some(s) = self.streams.get_mut(&token) else {
                    return;
                };
                match s.stream.read(&mut chunk) {
                    Ok(0) => {
                        if let Some(l) = s.link.as_mut() {
                            l.on_control_closed("the peer closed the control connection");
                        }
                        break;
                    }
                    Ok(n) => {
                        if let Some(l) = s.link.as_mut() {
                            l.on_control_bytes(&chunk[..n], now);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if let Some(l) = s.link.as_mut() {
                            l.on_control_closed(&format!("control connection error: {e}"));
                        }
                        break;
                    }
                }
            }
        }
        self.drive_link(token, now);
    }

    /// Applies a link's outputs.
    /// Installs a session under its local index. The index registry
    /// mirrors this map (the authority on live indices), so links and
    /// end-to-end sessions never draw an index in use.
    fn install_session(&mut self, owner: SessionOwner, session: Arc<Session>) {
        self.plane_dirty = true;
        self.cfg.link.indices.reserve(session.local_index);
        if let Some((old_owner, _)) = self.sessions.insert(session.local_index, (owner, session)) {
            if old_owner != owner {
                tracing::error!(
                    "receiver index collision between two sessions (a bug: indices are drawn again on collision)"
                );
            }
        }
    }

    /// Forgets a session's local index and gives it back to the registry.
    fn remove_session(&mut self, index: u32) {
        self.plane_dirty = true;
        self.sessions.remove(&index);
        self.cfg.link.indices.release(index);
    }

    /// What of a link the workers see: where to send, with which session.
    fn link_signature(&self, token: Token) -> (Option<SocketAddr>, Option<u32>) {
        let link = self.streams.get(&token).and_then(|s| s.link.as_ref());
        (
            link.and_then(|l| l.endpoint()),
            link.and_then(|l| l.sending_session())
                .map(|s| s.local_index),
        )
    }

    /// Applies a link's outputs; the data plane is published again when
    /// what the workers see of the link changed.
    fn drive_link(&mut self, token: Token, now: Instant) {
        let before = self.link_signature(token);
        self.apply_link_outputs(token, now);
        if self.link_signature(token) != before {
            self.plane_dirty = true;
        }
    }

    fn apply_link_outputs(&mut self, token: Token, now: Instant) {
        loop {
            let Some(s) = self.streams.get_mut(&token) else {
                return;
            };
            let Some(output) = s.link.as_mut().and_then(|l| l.poll_output()) else {
                break;
            };
            match output {
                Output::Control(bytes) => {
                    if s.out.len() + bytes.len() > admission::MAX_CONTROL_BACKLOG {
                        self.refuse_stream(token, Refusal::Backlog, now);
                        return;
                    }
                    s.out.extend_from_slice(&bytes);
                }
                Output::FirstMessage {
                    ephemeral,
                    timestamp,
                } => {
                    let source = s.peer_addr.ip();
                    let authenticated = self
                        .streams
                        .values()
                        .filter(|s| s.link.as_ref().is_some_and(|l| l.remote_hello().is_some()))
                        .count();
                    let limit = admission::max_authenticated(self.cfg.mesh.connection_limit);
                    match self.admission.check_first_message(
                        source,
                        &ephemeral,
                        timestamp,
                        authenticated >= limit,
                        now,
                        wall_clock(),
                    ) {
                        Ok(()) => {
                            if let Some(l) =
                                self.streams.get_mut(&token).and_then(|s| s.link.as_mut())
                            {
                                l.admit();
                            }
                        }
                        Err(refusal) => {
                            if refusal == Refusal::Stale
                                && self
                                    .last_stale_log
                                    .map_or(true, |t| now.duration_since(t) >= STALE_LOG_INTERVAL)
                            {
                                self.last_stale_log = Some(now);
                                tracing::warn!(
                                    peer = %source,
                                    "refused a first handshake message without a fresh timestamp: a replay, or this host's clock and the peer's differ by more than {} s (run NTP on both); counted as control_stale, logged at most every {} s",
                                    admission::FRESHNESS_WINDOW.as_secs(),
                                    STALE_LOG_INTERVAL.as_secs()
                                );
                            }
                            self.refuse_stream(token, refusal, now);
                            return;
                        }
                    }
                }
                Output::Datagram { to, bytes } => {
                    if self.udp.send_to(&bytes, to).is_err() {
                        self.drops.send_errors += 1;
                    }
                }
                Output::Probe { to, bytes, id } => {
                    if let Err(e) = self.udp.send_to(&bytes, to) {
                        if e.raw_os_error() == Some(libc::EMSGSIZE) {
                            if let Some(l) =
                                self.streams.get_mut(&token).and_then(|s| s.link.as_mut())
                            {
                                l.on_probe_too_big(id);
                            }
                        }
                    }
                }
                Output::PathMtu(v) => {
                    self.plane_dirty = true;
                    let peer = self.streams[&token].peer_addr;
                    tracing::info!(%peer, "verified path MTU {v} (probes with DF, acknowledged over TCP)");
                    self.update_tun_mtu();
                    if let Some(f) = self.fastdp.as_mut() {
                        f.on_path_mtu(token.0, v, now);
                    }
                }
                Output::SessionUp(session) => {
                    self.install_session(SessionOwner::Link(token), session);
                }
                Output::SessionDown(index) => {
                    self.remove_session(index);
                }
                Output::PeerReady {
                    remote_static,
                    hello,
                } => {
                    self.plane_dirty = true;
                    self.on_peer_ready(token, remote_static, hello.clone());
                    if let (Some(f), Some(l)) = (
                        self.fastdp.as_mut(),
                        self.streams.get(&token).and_then(|s| s.link.as_ref()),
                    ) {
                        if !l.is_closed() {
                            f.on_peer_ready(token.0, l.endpoint(), &hello, l.path_mtu(), now);
                        }
                    }
                }
                Output::FastdpAck(seq) => {
                    if let Some(f) = self.fastdp.as_mut() {
                        f.on_ack(token.0, seq);
                    }
                }
                Output::Established => {
                    self.plane_dirty = true;
                    let s = self.streams.get_mut(&token).expect("present");
                    tracing::info!(peer = %s.peer_addr, "connection established: heartbeats flow over UDP");
                    if let Some(addr) = s.dialed {
                        self.dial_failures.remove(&addr);
                    }
                    self.mesh.data_path(conn_of(token), true, now);
                }
                Output::DataPathDown(_) => {
                    // The link logged why; the mesh routes around it.
                    self.mesh.data_path(conn_of(token), false, now);
                }
                Output::Gossip(bytes) => {
                    if let Err(e) = self.mesh.handle_gossip(conn_of(token), &bytes, now) {
                        self.drops.malformed += 1;
                        let reason = format!("the peer sent malformed gossip ({e})");
                        self.send_goodbye(token, &reason);
                        self.close_stream(token, &reason, now);
                        return;
                    }
                }
                Output::Relay(relayed) => self.on_relayed_control(relayed, now),
                Output::Close(reason) => {
                    self.flush(token);
                    self.close_stream(token, &reason, now);
                    return;
                }
            }
        }
        self.flush(token);
    }

    /// A link authenticated: the mesh node learns the connection (it
    /// resolves duplicate connections to the same peer and asks to close
    /// the loser).
    fn on_peer_ready(
        &mut self,
        token: Token,
        remote_static: [u8; 32],
        hello: crate::mesh::control::Hello,
    ) {
        let now = Instant::now();
        if !self.admit_peer_cert(token, &remote_static, &hello, now) {
            return;
        }
        let Some(s) = self.streams.get_mut(&token) else {
            return;
        };
        let Some(l) = s.link.as_ref() else {
            return;
        };
        tracing::info!(
            peer = %s.peer_addr,
            name = %crate::mesh::PeerName::from_untrusted(hello.name.as_bytes()),
            key = %short_key(&remote_static),
            overlay = %crate::mesh::peer::untrusted_text(&hello.overlay.join(", ")),
            cipher = %l.cipher().map_or("not negotiated yet", |c| c.name()),
            "peer authenticated"
        );
        let direction = l.direction;
        let remote = match (direction, s.dialed) {
            (Direction::Outbound, Some(addr)) => addr,
            _ => s.peer_addr,
        };
        s.up = true;
        self.mesh.connection_up(
            conn_of(token),
            PeerId(remote_static),
            direction,
            remote,
            now,
        );
    }

    /// Networks with a CA: whether the peer's hello carries a certificate
    /// for the key the handshake authenticated that verifies now. If not,
    /// both sides learn why (a log line here, a goodbye there) and the
    /// connection closes before the mesh hears of it.
    fn admit_peer_cert(
        &mut self,
        token: Token,
        remote_static: &[u8; 32],
        hello: &crate::mesh::control::Hello,
        now: Instant,
    ) -> bool {
        let Some(identity) = &self.identity else {
            return true;
        };
        use base64::Engine as _;
        let bytes = match hello.cert.as_deref().map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| crate::identity::CertRefusal::Malformed("not base64".into()))
        }) {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => return self.refuse_peer(token, remote_static, &e, now),
        };
        let unix_now = crate::identity::commands::unix_now();
        match identity
            .trust
            .verify_peer(bytes.as_deref(), remote_static, unix_now)
        {
            Ok(cert) => {
                tracing::info!(
                    peer = %self.streams.get(&token).map_or_else(String::new, |s| s.peer_addr.to_string()),
                    "peer certificate {} ({}) verified, valid until {}",
                    cert.fingerprint().short(),
                    crate::mesh::peer::untrusted_text(&cert.body.name),
                    crate::identity::cert::utc_text(cert.body.not_after)
                );
                if let Some(s) = self.streams.get_mut(&token) {
                    s.cert = Some(Arc::new(cert));
                }
                true
            }
            Err(e) => self.refuse_peer(token, remote_static, &e, now),
        }
    }

    /// Closes a connection whose peer's certificate is refused; tells the
    /// peer why. Returns false (for `admit_peer_cert`).
    fn refuse_peer(
        &mut self,
        token: Token,
        remote_static: &[u8; 32],
        why: &crate::identity::CertRefusal,
        now: Instant,
    ) -> bool {
        let addr = self
            .streams
            .get(&token)
            .map_or_else(String::new, |s| s.peer_addr.to_string());
        let reason = format!(
            "peer {addr} (key {}) refused: {why}",
            short_key(remote_static)
        );
        self.send_goodbye(
            token,
            &format!("{} refused this host: {why}", self.mesh.own_record().name),
        );
        self.close_stream(token, &reason, now);
        false
    }

    /// Re-reads the revocation file if it changed (or `force`, on
    /// SIGHUP) and hands the list to the mesh node and the link checks.
    fn reload_revocations(&mut self, force: bool, now: Instant) {
        let Some(identity) = self.identity.as_mut() else {
            return;
        };
        let Some(file) = identity.revocation.as_mut() else {
            return;
        };
        match file.reload(force) {
            None => {}
            Some(Err(e)) => tracing::warn!("{e}; the previous list stays in force"),
            Some(Ok(list)) => {
                tracing::info!(
                    "revocation list {} read: {} revoked certificate(s)",
                    file.path().display(),
                    list.len()
                );
                let list = Arc::new(list);
                identity.trust.set_revoked(list.clone());
                self.mesh.set_revoked(list, now);
                self.recheck_peer_certs(now);
            }
        }
    }

    /// Closes connections whose peer's certificate is no longer current
    /// (revoked, expired) and tells the mesh node the time.
    fn recheck_peer_certs(&mut self, now: Instant) {
        if self.identity.is_none() {
            return;
        }
        let unix_now = crate::identity::commands::unix_now();
        self.mesh.set_wall_clock(unix_now, now);
        if let Some(identity) = self.identity.as_ref() {
            let end = identity.own_not_after;
            let due = u8::from(unix_now.saturating_add(OWN_CERT_WARNING) >= end)
                + u8::from(unix_now >= end);
            if due > self.own_cert_warnings {
                self.own_cert_warnings = due;
                tracing::warn!(
                    "this host's certificate {} {}: peers refuse it from then on; sign a new one and restart with it",
                    if due == 2 { "expired" } else { "expires" },
                    crate::identity::cert::utc_text(end)
                );
            }
        }
        let Some(identity) = &self.identity else {
            return;
        };
        let failing: Vec<(Token, [u8; 32], crate::identity::CertRefusal)> = self
            .streams
            .iter()
            .filter_map(|(t, s)| {
                let cert = s.cert.as_ref()?;
                let e = identity.trust.check_current(cert, unix_now).err()?;
                Some((*t, cert.body.public_key, e))
            })
            .collect();
        for (token, key, why) in failing {
            self.refuse_peer(token, &key, &why, now);
        }
    }

    /// Sets the device MTU to the smallest verified path MTU minus the
    /// overhead (never above what the interface MTU allows).
    fn update_tun_mtu(&mut self) {
        let smallest = self
            .streams
            .values()
            .filter_map(|s| s.link.as_ref()?.path_mtu())
            .map(|p| p.saturating_sub(self.cfg.datagram_overhead))
            .min()
            .unwrap_or(self.cfg.overlay_mtu)
            .min(self.cfg.overlay_mtu)
            .max(crate::wire::overhead::MIN_OVERLAY_MTU_IPV4);
        if smallest != self.tun_mtu {
            match self.device.set_mtu(smallest) {
                Ok(()) => {
                    tracing::info!("overlay MTU {} -> {smallest} (smallest verified path MTU minus {} bytes overhead)", self.tun_mtu, self.cfg.datagram_overhead);
                    self.tun_mtu = smallest;
                    if let Some(f) = self.fastdp.as_mut() {
                        f.set_overlay_mtu(smallest);
                    }
                }
                Err(e) => tracing::warn!("cannot set the overlay MTU to {smallest}: {e}"),
            }
        }
    }

    /// Tells the peer on `token` why this host is closing, and writes it
    /// out now (the connection is about to be dropped: other link outputs
    /// no longer matter).
    fn send_goodbye(&mut self, token: Token, reason: &str) {
        if let Some(s) = self.streams.get_mut(&token) {
            if let Some(l) = s.link.as_mut() {
                l.goodbye(reason);
            }
            while let Some(out) = s.link.as_mut().and_then(|l| l.poll_output()) {
                if let Output::Control(bytes) = out {
                    s.out.extend_from_slice(&bytes);
                }
            }
        }
        self.flush(token);
    }

    fn flush(&mut self, token: Token) {
        let Some(s) = self.streams.get_mut(&token) else {
            return;
        };
        while !s.out.is_empty() {
            match s.stream.write(&s.out) {
                Ok(0) => break,
                Ok(n) => {
                    s.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: a writable event will come
            }
        }
    }

    fn close_stream(&mut self, token: Token, reason: &str, now: Instant) {
        self.close_stream_because(token, reason, false, now)
    }

    /// Closes a connection; `duplicate`: the mesh keeps another one to the
    /// same peer (logged quietly, not a dial failure).
    fn close_stream_because(&mut self, token: Token, reason: &str, duplicate: bool, now: Instant) {
        let Some(mut s) = self.streams.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut s.stream);
        if duplicate {
            // The peer may still send on the losing connection's sessions
            // until it hears of the close: accept that data for a moment
            // (the kept connection carries everything else).
            let until = now + DUPLICATE_GRACE;
            if let Some(k) = s.link.as_ref().and_then(|l| l.remote_static()) {
                self.retired_peers.push((until, token, PeerId(*k)));
            }
            for (index, (owner, _)) in self.sessions.iter() {
                if *owner == SessionOwner::Link(token) {
                    self.retiring.push((until, *index));
                }
            }
        } else {
            let indices = &self.cfg.link.indices;
            self.sessions.retain(|index, (owner, _)| {
                let keep = *owner != SessionOwner::Link(token);
                if !keep {
                    indices.release(*index);
                }
                keep
            });
        }
        if let Some(switch) = self.l2.as_ref().and_then(|s| s.lock().ok()).as_mut() {
            switch.fdb.forget(crate::mesh::fdb::Location::Peer(token.0));
        }
        self.plane_dirty = true;
        if let Some(f) = self.fastdp.as_mut() {
            f.on_peer_gone(token.0);
        }
        let authenticated = s.link.as_ref().is_some_and(|l| l.remote_hello().is_some());
        if s.link.is_some() && !authenticated && !s.refused {
            self.drops.control_rejected += 1;
        }
        if s.refused && !authenticated {
            // Counted by reason; a flood must not become a flood of logs.
            tracing::debug!(peer = %s.peer_addr, "connection refused: {reason}");
        } else if duplicate {
            tracing::info!(peer = %s.peer_addr, "{reason}");
        } else {
            tracing::warn!(peer = %s.peer_addr, "connection closed: {reason}");
        }
        if s.up {
            self.mesh.connection_down(conn_of(token), now);
        } else if let Some(addr) = s.dialed {
            self.mesh.dial_failed(addr, now);
        }
        if let Some(addr) = s.dialed.filter(|_| !duplicate) {
            self.dial_failures.insert(addr, reason.to_string());
            // A named peer may have moved: look its name up again.
            let key = self
                .names
                .iter()
                .find(|(_, n)| n.addr == Some(addr))
                .map(|(k, _)| k.clone());
            if let Some(key) = key {
                self.start_resolve(&key);
            }
        }
    }

    /// SIGHUP: re-reads the peer list, dials peers that were added and
    /// says goodbye to peers that were removed; logs what changed.
    fn on_reload(&mut self, now: Instant) {
        self.reload_revocations(true, now);
        let Some(reload) = self.cfg.reload.as_mut() else {
            return;
        };
        let mut drain = [0u8; 64];
        while matches!((&reload.signal).read(&mut drain), Ok(n) if n > 0) {}
        let wanted = match (reload.read)() {
            Ok(peers) => peers,
            Err(e) => {
                tracing::warn!("SIGHUP: peer list not re-read: {e}");
                return;
            }
        };
        let mut added = Vec::new();
        for target in &wanted {
            if self.add_target(target.clone(), now) {
                added.push(target.to_string());
            }
        }
        let mut removed = Vec::new();
        let gone: Vec<PeerTarget> = self
            .user_peers()
            .into_iter()
            .filter(|a| !wanted.contains(a))
            .collect();
        for target in gone {
            self.remove_target(&target, "removed from the peer list (SIGHUP)", now);
            removed.push(target.to_string());
        }
        let active = self.user_peers().len();
        if added.is_empty() && removed.is_empty() {
            tracing::info!("SIGHUP: peer list re-read, unchanged ({active} peer(s))");
        } else {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            tracing::info!(
                "SIGHUP: peer list re-read: added {}; removed {}; {active} peer(s) now",
                list(&added),
                list(&removed)
            );
        }
    }

    /// The user-given peers (--peer, config, `weft connect`), as given.
    fn user_peers(&self) -> Vec<PeerTarget> {
        let named: Vec<SocketAddr> = self.names.values().filter_map(|n| n.addr).collect();
        let mut out: Vec<PeerTarget> = self
            .mesh
            .targets()
            .map(|(a, _)| a)
            .filter(|a| !named.contains(a))
            .map(PeerTarget::Addr)
            .collect();
        out.extend(self.names.values().map(|n| PeerTarget::Name {
            host: n.host.clone(),
            port: n.port,
        }));
        out
    }

    /// Adds a user-given peer: an address is dialled at once, a host name
    /// once it resolves. False if it already was one.
    fn add_target(&mut self, target: PeerTarget, now: Instant) -> bool {
        match target {
            PeerTarget::Addr(addr) => self.add_peer(addr, now),
            PeerTarget::Name { host, port } => {
                let key = format!("{host}:{port}");
                if self.names.contains_key(&key) {
                    return false;
                }
                self.names.insert(
                    key.clone(),
                    NamedPeer {
                        host,
                        port,
                        addr: None,
                        resolving: false,
                        retry_at: None,
                        failure: None,
                    },
                );
                self.start_resolve(&key);
                true
            }
        }
    }

    /// Removes a user-given peer (see [`Router::remove_peer`]).
    fn remove_target(&mut self, target: &PeerTarget, reason: &str, now: Instant) -> bool {
        match target {
            PeerTarget::Addr(addr) => {
                // An address a name resolved to is removed with the name.
                if self.names.values().any(|n| n.addr == Some(*addr)) {
                    return false;
                }
                self.remove_peer(*addr, reason, now)
            }
            PeerTarget::Name { .. } => {
                let Some(named) = self.names.remove(&target.to_string()) else {
                    return false;
                };
                if let Some(addr) = named.addr {
                    self.remove_peer(addr, reason, now);
                }
                true
            }
        }
    }

    /// Resolves a user-given host name on a helper thread (resolution may
    /// block on DNS; the event loop never does).
    fn start_resolve(&mut self, key: &str) {
        let Some(named) = self.names.get_mut(key) else {
            return;
        };
        if named.resolving {
            return;
        }
        named.resolving = true;
        named.retry_at = None;
        let (host, port, owned_key) = (named.host.clone(), named.port, key.to_string());
        // A dual-stack listener ([::]) dials either family; otherwise the
        // listener's own.
        let family = match self.listener.local_addr() {
            Ok(listen) => crate::mesh::target::Family::of_listener(listen),
            Err(_) if self.cfg.link.ipv6_underlay => crate::mesh::target::Family::V6,
            Err(_) => crate::mesh::target::Family::V4,
        };
        let tx = self.resolved.0.clone();
        let waker = self.waker.clone();
        let spawned = std::thread::Builder::new()
            .name("weft-resolve".into())
            .spawn(move || {
                let result = crate::mesh::target::resolve(&host, port, family);
                let _ = tx.send((owned_key, result));
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start resolving {}: {e}", self.names[key].host);
            if let Some(n) = self.names.get_mut(key) {
                n.resolving = false;
                n.retry_at = Some(Instant::now() + RESOLVE_RETRY);
            }
        }
    }

    /// Applies finished resolutions: a name that resolves to a new
    /// address is dialled there (the old address is no longer redialled).
    fn on_resolved(&mut self, now: Instant) {
        while let Ok((key, result)) = self.resolved.1.try_recv() {
            let Some(named) = self.names.get_mut(&key) else {
                continue; // forgotten meanwhile
            };
            named.resolving = false;
            match result {
                Ok(addr) => {
                    named.failure = None;
                    if named.addr == Some(addr) {
                        continue;
                    }
                    let old = named.addr.replace(addr);
                    match old {
                        Some(old) => {
                            tracing::info!("peer {key} now resolves to {addr} (was {old}); dialling the new address");
                            self.mesh.forget(old);
                        }
                        None => tracing::info!("peer {key} resolves to {addr}; connecting"),
                    }
                    self.dial_failures.remove(&addr);
                    self.mesh.connect(addr, now);
                }
                Err(e) => {
                    tracing::warn!(
                        "peer {key}: {e}; trying again in {} s",
                        RESOLVE_RETRY.as_secs()
                    );
                    named.failure = Some(e);
                    named.retry_at = Some(now + RESOLVE_RETRY);
                }
            }
        }
    }

    /// Adds `addr` to the user-given peers (dialled at once, then with
    /// backoff); false if it already was one.
    fn add_peer(&mut self, addr: SocketAddr, now: Instant) -> bool {
        if self.mesh.targets().any(|(a, _)| a == addr) {
            return false;
        }
        self.mesh.connect(addr, now);
        true
    }

    /// Removes `addr` from the user-given peers: says goodbye on its
    /// connection, closes it with `reason`, never redials it by address.
    /// False if it was not one.
    fn remove_peer(&mut self, addr: SocketAddr, reason: &str, now: Instant) -> bool {
        let Some((_, status)) = self.mesh.targets().find(|(a, _)| *a == addr) else {
            return false;
        };
        self.mesh.forget(addr);
        let token = match status {
            TargetStatus::Connected(peer) => self
                .mesh
                .connected_peers()
                .find(|(p, _)| **p == peer)
                .map(|(_, c)| token_of(*c)),
            TargetStatus::Dialing => self
                .streams
                .iter()
                .find(|(_, s)| s.dialed == Some(addr))
                .map(|(t, _)| *t),
            _ => None,
        };
        self.dial_failures.remove(&addr);
        if let Some(token) = token {
            if let Some(s) = self.streams.get_mut(&token) {
                s.dialed = None;
            }
            self.send_goodbye(
                token,
                "this peer was removed from the other host's peer list",
            );
            self.close_stream(token, reason, now);
        }
        true
    }

    /// Answers the local control endpoint's requests.
    fn on_control(&mut self, now: Instant) {
        use crate::api::control::{ControlReply, ControlRequest};
        let Some(requests) = self.control.clone() else {
            return;
        };
        while let Ok(pending) = requests.try_recv() {
            let parsed = match &pending.request {
                ControlRequest::Connect { peer } | ControlRequest::Forget { peer } => {
                    PeerTarget::parse(peer)
                }
                ControlRequest::KubePodCidr { cidr, ipv6 } => {
                    let reply = match self.ipam.as_mut() {
                        Some(ipam) => match ipam.set_pod_cidr(*cidr, *ipv6, &mut self.mesh, now) {
                            Ok(done) => ControlReply::done(done),
                            Err(why) => ControlReply::refused(why),
                        },
                        None => ControlReply::done(
                            "no IPAM here (no --ipalloc-range): this node's pod range is not used",
                        ),
                    };
                    let _ = pending.reply.send(reply);
                    continue;
                }
                ControlRequest::Rmpeer { name } => {
                    let reply = match self.ipam.as_mut() {
                        Some(ipam) => match ipam.rmpeer(name, &mut self.mesh, now) {
                            Ok(done) => ControlReply::done(done),
                            Err(why) => ControlReply::refused(why),
                        },
                        None => ControlReply::refused(
                            "this weft runs without --ipalloc-range: rmpeer hands a departed peer's IPAM chunks to this host, and there are none",
                        ),
                    };
                    let _ = pending.reply.send(reply);
                    continue;
                }
            };
            let target = match parsed {
                Ok(t) => t,
                Err(e) => {
                    let _ = pending.reply.send(ControlReply::refused(e));
                    continue;
                }
            };
            let peer = target.to_string();
            let reply = match pending.request {
                ControlRequest::Connect { .. } => {
                    if self.add_target(target, now) {
                        tracing::info!("weft connect: added peer {peer}; connecting");
                        ControlReply::done(format!(
                            "added peer {peer}; connecting now (weft status shows the connection)"
                        ))
                    } else {
                        ControlReply::done(format!("{peer} is already a peer"))
                    }
                }
                ControlRequest::Rmpeer { .. } | ControlRequest::KubePodCidr { .. } => continue,
                ControlRequest::Forget { .. } => {
                    if self.remove_target(&target, "forgotten (weft forget)", now) {
                        tracing::info!("weft forget: removed peer {peer}");
                        ControlReply::done(format!("forgot peer {peer}: its connection is closed and it is not dialled again"))
                    } else {
                        let known: Vec<String> =
                            self.user_peers().iter().map(|a| a.to_string()).collect();
                        ControlReply::refused(format!(
                            "{peer} is not a peer of this weft (peers: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ))
                    }
                }
            };
            let _ = pending.reply.send(reply);
        }
    }

    fn run_timers(&mut self, now: Instant) {
        if self.identity.is_some() && now >= self.identity_check_at {
            self.identity_check_at = now + IDENTITY_CHECK_INTERVAL;
            self.reload_revocations(false, now);
            self.recheck_peer_certs(now);
        }
        if let Some(switch) = self.l2.as_ref().and_then(|s| s.lock().ok()).as_mut() {
            switch.tick(now);
        }
        if let Some(f) = self.fastdp.as_mut() {
            let mut actions = std::mem::take(&mut self.fastdp_actions);
            f.poll(now, &mut actions);
            self.apply_fastdp_actions(actions, now);
        }
        if now.duration_since(self.last_admission_prune) >= ADMISSION_PRUNE_INTERVAL {
            self.admission.prune(now, wall_clock());
            self.last_admission_prune = now;
        }
        let tokens: Vec<Token> = self.streams.keys().copied().collect();
        for token in tokens {
            let Some(s) = self.streams.get_mut(&token) else {
                continue;
            };
            match s.link.as_mut() {
                Some(l)
                    if l.awaiting_first_message()
                        && now.duration_since(s.connect_started)
                            > admission::FIRST_MESSAGE_DEADLINE =>
                {
                    self.refuse_stream(token, Refusal::Slow, now);
                    continue;
                }
                Some(l) => l.poll(now),
                None => {
                    if now.duration_since(s.connect_started) > CONNECT_TIMEOUT {
                        let reason = format!(
                            "cannot connect to {}: timed out after {} s",
                            s.peer_addr,
                            CONNECT_TIMEOUT.as_secs()
                        );
                        self.close_stream(token, &reason, now);
                        continue;
                    }
                }
            }
            self.drive_link(token, now);
        }
        if now >= self.mesh.poll_timeout() {
            self.mesh.handle_timeout(now);
        }
        self.retired_peers.retain(|&(until, _, _)| now < until);
        let (sessions, indices) = (&mut self.sessions, &self.cfg.link.indices);
        self.retiring.retain(|&(until, index)| {
            if now >= until {
                sessions.remove(&index);
                indices.release(index);
                false
            } else {
                true
            }
        });
        let due: Vec<String> = self
            .names
            .iter()
            .filter(|(_, n)| n.retry_at.is_some_and(|t| now >= t))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.start_resolve(&key);
        }
    }

    /// Carries out what the mesh node asks for: gossip to send, addresses
    /// to dial, connections to close; logs its events.
    fn drive_mesh(&mut self, now: Instant) {
        let mut touched: Vec<Token> = Vec::new();
        while let Some(output) = self.mesh.poll_output() {
            match output {
                MeshOutput::Gossip { conn, bytes } => {
                    let token = token_of(conn);
                    if let Some(l) = self.streams.get_mut(&token).and_then(|s| s.link.as_mut()) {
                        l.send_gossip(bytes);
                        if !touched.contains(&token) {
                            touched.push(token);
                        }
                    }
                }
                MeshOutput::Dial { addr, peer } => match TcpStream::connect(addr) {
                    Ok(stream) => {
                        match peer {
                            Some(p) => {
                                tracing::debug!(%addr, peer = %p, "connecting to a peer learned by gossip")
                            }
                            None => tracing::debug!(%addr, "connecting"),
                        }
                        if self
                            .add_stream(stream, addr, None, Some(addr), now)
                            .is_none()
                        {
                            self.mesh.dial_failed(addr, now);
                        }
                    }
                    Err(e) => {
                        self.dial_failures
                            .insert(addr, format!("cannot connect to {addr}: {e}"));
                        self.mesh.dial_failed(addr, now);
                    }
                },
                MeshOutput::Close { conn, reason } => {
                    let token = token_of(conn);
                    let text = reason.to_string();
                    self.send_goodbye(token, &text);
                    let duplicate = reason == crate::mesh::node::CloseReason::Duplicate;
                    self.close_stream_because(token, &text, duplicate, now);
                }
                MeshOutput::Event(event) => self.on_mesh_event(event),
            }
        }
        for token in touched {
            self.drive_link(token, now);
        }
    }

    fn on_mesh_event(&mut self, event: MeshEvent) {
        let now = Instant::now();
        match &event {
            MeshEvent::RouteChanged {
                peer,
                route: Some(r),
            } if r.next_hop != *peer => {
                // Reached through relays from now on: key a session with it
                // end to end before the first packet needs one, and resend
                // a handshake that may have gone down the old path.
                self.e2e.path_changed(*peer, now);
                self.e2e.want(*peer, now);
            }
            MeshEvent::RouteChanged {
                peer,
                route: Some(_),
            } => self.e2e.forget(peer),
            MeshEvent::PeerLeft(p) => self.e2e.forget(&p.id),
            _ => {}
        }
        match &event {
            MeshEvent::ClaimConflict { .. }
            | MeshEvent::SubnetMismatch { .. }
            | MeshEvent::ClaimRefused { .. } => {
                tracing::error!("{}", self.describe(&event))
            }
            MeshEvent::ForwardingChanged { .. } => tracing::debug!("{event}"),
            _ => tracing::info!("{}", self.describe(&event)),
        }
    }

    /// An event in words, peers named by name and identity.
    fn describe(&self, event: &MeshEvent) -> String {
        crate::api::mesh_status::describe_event(event, |p| self.peer_label(p))
    }

    /// `name (key)` of a peer the mesh knows, else its key.
    fn peer_label(&self, peer: &PeerId) -> String {
        if *peer == self.mesh.id() {
            return format!("{} ({peer})", self.mesh.own_record().name);
        }
        match self.mesh.record(peer) {
            Some(r) => format!("{} ({peer})", r.name),
            None => peer.to_string(),
        }
    }

    fn publish_status(&mut self, now: Instant) {
        let mut status = self.cfg.status_template.clone();
        status.overlay_mtu = self.tun_mtu;
        status.uptime_secs = now.duration_since(self.started).as_secs();
        status.dropped = self.drops.clone();
        status.dropped.send_errors += self.batcher.send_errors;
        status.batching = self.batcher.counters.clone();
        if let Some(w) = &self.workers {
            w.add_counters(&mut status.dropped, &mut status.batching, None);
        }
        status.fastdp = self
            .fastdp
            .as_ref()
            .map(|f| (f.datapath_name().to_string(), f.counters.clone()));
        let switch = self.l2.as_ref().and_then(|s| s.lock().ok());
        if let (Some(switch), Some(c)) = (switch, self.cfg.l2.as_ref()) {
            status.l2 = Some(crate::api::l2_status::L2Status {
                bridge: c.bridge.clone(),
                bridge_created: c.bridge_created,
                mac_age_secs: switch.fdb.age().as_secs(),
                mac_quota: switch.fdb.quota() as u64,
                counters: switch.counters.clone(),
                ..Default::default()
            });
        }
        let mut shown: Vec<Token> = Vec::new();
        let mut connections = Vec::new();
        let targets: Vec<(SocketAddr, TargetStatus)> = self.mesh.targets().collect();
        for (addr, target) in targets {
            let token = match target {
                TargetStatus::Connected(peer) => self
                    .mesh
                    .connected_peers()
                    .find(|(p, _)| **p == peer)
                    .map(|(_, c)| token_of(*c)),
                TargetStatus::Dialing => self
                    .streams
                    .iter()
                    .find(|(_, s)| s.dialed == Some(addr))
                    .map(|(t, _)| *t),
                _ => None,
            };
            match token.and_then(|t| self.streams.get(&t).map(|s| (t, s))) {
                Some((t, s)) => {
                    if !shown.contains(&t) {
                        shown.push(t);
                        connections.push(self.connection_status(t, s, now));
                    }
                }
                None => {
                    let failure = self.dial_failures.get(&addr);
                    let (state, reason) = match target {
                        TargetStatus::OwnAddress => {
                            ("skipped".to_string(), "this host's own address".to_string())
                        }
                        TargetStatus::Waiting(at) => (
                            if failure.is_some() {
                                "failed"
                            } else {
                                "connecting"
                            }
                            .to_string(),
                            format!(
                                "{}retry in {:.1}s",
                                failure.map(|r| format!("{r}; ")).unwrap_or_default(),
                                at.saturating_duration_since(now).as_secs_f64()
                            ),
                        ),
                        _ => (
                            "connecting".to_string(),
                            "TCP connect in progress".to_string(),
                        ),
                    };
                    connections.push(self.unconnected_status(addr.to_string(), state, reason))
                }
            }
        }
        for (key, named) in self.names.iter().filter(|(_, n)| n.addr.is_none()) {
            let state = if named.failure.is_some() {
                "failed"
            } else {
                "connecting"
            };
            let reason = match &named.failure {
                Some(f) => format!(
                    "{f}; retry in {:.1}s",
                    named
                        .retry_at
                        .map_or(0.0, |t| t.saturating_duration_since(now).as_secs_f64())
                ),
                None => "resolving the host name".into(),
            };
            connections.push(self.unconnected_status(key.clone(), state.into(), reason));
        }
        let mut rest: Vec<_> = self
            .streams
            .iter()
            .filter(|(t, _)| !shown.contains(t))
            .collect();
        rest.sort_by_key(|(t, _)| t.0);
        for (t, s) in rest {
            // Unauthenticated inbound connections are not peers yet.
            if s.link.as_ref().is_some_and(|l| l.remote_hello().is_some()) {
                connections.push(self.connection_status(*t, s, now));
            }
        }
        status.mesh = Some(self.mesh_status());
        status.ipam = self.ipam.as_ref().map(|i| i.status(&self.mesh));
        status.relayed = self.relayed.clone();
        status.connections = connections;
        if let Ok(mut g) = self.snapshot.lock() {
            *g = status;
        }
    }

    /// The status line of a user-given peer with no connection (yet).
    fn unconnected_status(
        &self,
        address: String,
        state: String,
        reason: String,
    ) -> ConnectionStatus {
        ConnectionStatus {
            direction: "->".into(),
            address,
            state,
            reason: Some(reason),
            mode: "sleeve".into(),
            mode_reason: None,
            encryption: None,
            overlay_mtu: self.cfg.overlay_mtu,
            path_mtu: None,
            rtt_ms: None,
            tx_bytes: 0,
            tx_packets: 0,
            rx_bytes: 0,
            rx_packets: 0,
            peer_name: None,
            peer_key: None,
            peer_overlay: vec![],
            endpoint: None,
        }
    }

    fn connection_status(&self, token: Token, s: &Stream, now: Instant) -> ConnectionStatus {
        let link = s.link.as_ref();
        let (tx_bytes, tx_packets, rx_bytes, rx_packets) = s.counters.read();
        let (mode, mode_reason) = match self.fastdp.as_ref() {
            Some(f) => f.mode(token.0, now),
            None => ("sleeve".to_string(), None),
        };
        let hello = link.and_then(|l| l.remote_hello());
        let peer = link.and_then(|l| l.remote_static()).map(|k| PeerId(*k));
        let kept = self.mesh.connection(conn_of(token)).is_some();
        let routed_direct = peer
            .and_then(|p| self.mesh.route(&p))
            .is_some_and(|r| r.reason == crate::mesh::RouteReason::Direct);
        let (state, reason) = match link.map(|l| l.state()) {
            None => (
                "connecting".to_string(),
                Some("TCP connect in progress".to_string()),
            ),
            Some(LinkState::Handshaking) => ("connecting".into(), Some("authenticating".into())),
            Some(LinkState::Connecting) => (
                "connecting".into(),
                Some("waiting for a heartbeat reply over UDP".into()),
            ),
            Some(LinkState::Established) if kept && !routed_direct => (
                "connecting".into(),
                Some("heartbeats flow; waiting for the mesh to agree on the route".into()),
            ),
            Some(LinkState::Established) => ("established".into(), None),
            Some(LinkState::DataPathDown(r)) => (
                "data-path-down".into(),
                Some(format!("{r}; traffic goes through other peers")),
            ),
            Some(LinkState::Failed(r)) => ("failed".into(), Some(r.clone())),
        };
        ConnectionStatus {
            direction: link.map(|l| l.direction.arrow()).unwrap_or("->").into(),
            address: s.peer_addr.to_string(),
            state,
            reason,
            encryption: if mode == "fastdp" {
                Some("none (fastdp: plaintext VXLAN)".to_string())
            } else {
                link.and_then(|l| l.cipher()).map(|c| c.name().to_string())
            },
            mode,
            mode_reason,
            overlay_mtu: link
                .and_then(|l| l.path_mtu())
                .map(|p| {
                    p.saturating_sub(self.cfg.datagram_overhead)
                        .min(self.cfg.overlay_mtu)
                })
                .unwrap_or(self.cfg.overlay_mtu),
            path_mtu: link.and_then(|l| l.path_mtu()),
            rtt_ms: link.and_then(|l| l.rtt()).map(|r| r.as_secs_f64() * 1000.0),
            tx_bytes,
            tx_packets,
            rx_bytes,
            rx_packets,
            peer_name: hello
                .map(|h| crate::mesh::PeerName::from_untrusted(h.name.as_bytes()).to_string()),
            peer_key: link.and_then(|l| l.remote_static()).map(|k| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(k)
            }),
            peer_overlay: hello
                .map(|h| {
                    h.overlay
                        .iter()
                        .map(|o| crate::mesh::peer::untrusted_text(o))
                        .collect()
                })
                .unwrap_or_default(),
            endpoint: link.and_then(|l| l.endpoint()).map(|e| e.to_string()),
        }
    }

    /// The mesh as `weft status peers` shows it.
    fn mesh_status(&self) -> crate::api::mesh_status::MeshStatus {
        use crate::api::mesh_status::{
            route_reason, ConflictStatus, MeshStatus, NeighbourStatus, PeerStatus, RouteStatus,
        };
        use base64::Engine as _;
        let own = self.mesh.own_record();
        let mut records: Vec<&crate::mesh::topology::PeerRecord> = self.mesh.records().collect();
        records.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()).then(a.id.cmp(&b.id)));
        let peers = std::iter::once(own)
            .chain(records)
            .map(|r| {
                let route = if r.id == own.id {
                    RouteStatus::ThisHost
                } else {
                    match self.mesh.route(&r.id) {
                        Some(route) if route.reason == crate::mesh::RouteReason::Direct => {
                            RouteStatus::Direct
                        }
                        Some(route) => RouteStatus::Via {
                            via: self.peer_label(&route.next_hop),
                            hops: route.hops,
                            reason: route_reason(route.reason).to_string(),
                        },
                        None => RouteStatus::Unreachable,
                    }
                };
                PeerStatus {
                    name: r.name.to_string(),
                    id: base64::engine::general_purpose::STANDARD.encode(r.id.as_bytes()),
                    short_id: r.id.to_string(),
                    claims: r.claims.iter().map(|c| c.claim.to_string()).collect(),
                    endpoints: r.endpoints.iter().map(|e| e.to_string()).collect(),
                    connections: r
                        .neighbours
                        .iter()
                        .map(|n| NeighbourStatus {
                            peer: self.peer_label(&n.peer),
                            data_path: n.data_path,
                        })
                        .collect(),
                    route,
                    end_to_end: self.end_to_end_state(&r.id),
                }
            })
            .collect();
        let conflicts = self
            .mesh
            .conflicts()
            .map(|c| ConflictStatus {
                owner: self.peer_label(&c.owner),
                owned_claim: c.owned_claim.to_string(),
                refused: self.peer_label(&c.refused),
                refused_claim: c.refused_claim.to_string(),
            })
            .collect();
        let mut refused_claims: Vec<crate::api::mesh_status::RefusedClaimStatus> = self
            .mesh
            .refused_claims()
            .map(|r| crate::api::mesh_status::RefusedClaimStatus {
                peer: self.peer_label(&r.peer),
                claim: r.claim.to_string(),
                reason: r.reason.to_string(),
            })
            .collect();
        refused_claims.sort_by(|a, b| (&a.peer, &a.claim).cmp(&(&b.peer, &b.claim)));
        let stats = self.mesh.stats();
        MeshStatus {
            peers,
            conflicts,
            refused_claims,
            gossip_messages: stats.messages,
            gossip_bytes: stats.bytes,
        }
    }

    /// Misses from the kernel datapath: heartbeats to acknowledge, frames
    /// for peers not (yet) on fastdp, flows to install.
    fn on_fastdp_upcalls(&mut self) {
        let Some(f) = self.fastdp.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut actions = std::mem::take(&mut self.fastdp_actions);
        f.on_upcalls(now, &mut actions);
        self.apply_fastdp_actions(actions, now);
    }

    fn apply_fastdp_actions(
        &mut self,
        mut actions: Vec<super::fastdp::FastdpAction>,
        now: Instant,
    ) {
        if actions.is_empty() {
            self.fastdp_actions = actions;
            return;
        }
        let l2_header = 14;
        let limits = PeerLimit {
            overlay_mtu: self.cfg.overlay_mtu,
            datagram_overhead: self.cfg.datagram_overhead,
            l2_header,
        };
        for action in actions.drain(..) {
            match action {
                super::fastdp::FastdpAction::Ack { token, seq } => {
                    if let Some(l) = self
                        .streams
                        .get_mut(&Token(token))
                        .and_then(|s| s.link.as_mut())
                    {
                        l.send_fastdp_ack(seq);
                    }
                    self.drive_link(Token(token), now);
                }
                super::fastdp::FastdpAction::PathShrank { token } => {
                    if let Some(l) = self
                        .streams
                        .get_mut(&Token(token))
                        .and_then(|s| s.link.as_mut())
                    {
                        l.on_data_too_big();
                    }
                }
                super::fastdp::FastdpAction::ToSleeve { token, frame } => {
                    if !queue_frame(
                        &mut self.batcher,
                        &mut self.streams,
                        &mut self.udp,
                        Token(token),
                        &frame,
                        &limits,
                    ) {
                        self.drops.too_big += 1;
                    }
                }
            }
        }
        self.fastdp_actions = actions;
        self.flush_batcher();
    }

    fn shutdown(&mut self) {
        if let Some(f) = self.fastdp.as_mut() {
            f.shutdown();
        }
        tracing::info!("shutting down: telling peers goodbye");
        let tokens: Vec<Token> = self.streams.keys().copied().collect();
        for token in tokens {
            self.send_goodbye(token, "weft on the peer is shutting down");
        }
        let _ = &self.signals;
    }
}

/// What bounds the datagrams towards one peer.
struct PeerLimit {
    overlay_mtu: u16,
    datagram_overhead: u16,
    /// 14 in bridge mode (the inner Ethernet header), else 0.
    l2_header: usize,
}

impl PeerLimit {
    /// The largest inner packet (L3) or Ethernet payload (L2) the peer's
    /// verified path carries, never above either end's device MTU.
    fn payload_mtu(&self, link: &Link) -> u16 {
        let mut mtu = link
            .path_mtu()
            .map_or(self.overlay_mtu, |p| {
                p.saturating_sub(self.datagram_overhead)
            })
            .min(self.overlay_mtu);
        if let Some(h) = link.remote_hello() {
            mtu = mtu.min(h.overlay_mtu);
        }
        mtu
    }
}

/// Queues `frame` for the peer on connection `token` into the batcher.
/// False when the frame does not fit the peer's path; true otherwise
/// (including when the peer has no session yet: nothing to count).
fn queue_frame(
    batcher: &mut super::sleeve_batch::SleeveBatcher,
    streams: &mut HashMap<Token, Stream>,
    underlay: &mut UdpUnderlay,
    token: Token,
    frame: &[u8],
    limits: &PeerLimit,
) -> bool {
    let Some(stream) = streams.get_mut(&token) else {
        return true;
    };
    let Some(link) = stream.link.as_ref() else {
        return true;
    };
    let (Some(session), Some(endpoint)) = (link.sending_session(), link.endpoint()) else {
        return true;
    };
    let limit =
        super::sleeve_batch::SleeveBatcher::limit_for(limits.payload_mtu(link), limits.l2_header);
    if !batcher.push(underlay, token.0, session, endpoint, limit, frame) {
        return false;
    }
    stream.counters.sent(1, frame.len() as u64);
    true
}

/// The wall-clock time (since the Unix epoch) for handshake timestamps.
fn wall_clock() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Makes closing `stream` send a reset instead of a FIN: a refused
/// connection then leaves no TIME_WAIT socket behind on this host (a flood
/// of them would otherwise pile up for a minute each), and the other end
/// still gets no byte.
fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
