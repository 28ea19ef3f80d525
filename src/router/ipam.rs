//! The router's side of IPAM: owns the [`Ipam`] core, answers the CNI
//! socket's requests, feeds it the mesh node's view, pushes its chunk
//! claims into the node and persists its state after every change.
//!
//! Everything here runs on the event-loop thread (IPAM needs the node,
//! which lives there); the socket thread only forwards requests
//! ([`crate::cni::server`]). An `add` that has to wait for a chunk claim to
//! settle is parked and retried on every tick until it succeeds or
//! [`ADD_PATIENCE`] passes.

use crate::cni::api::{
    code, AttachMode, AttachmentKey, CniError, CniReply, CniRequest, CniSuccess, PodAddress,
    PodAttachment,
};
use crate::cni::server::PendingCni;
use crate::ipam::{store, AllocError, Ipam, IpamStatus, MeshView};
use crate::mesh::claims::{Claim, IpPrefix};
use crate::mesh::node::Node;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an `add` may wait for a chunk claim (under the socket's
/// 10-second timeout).
pub const ADD_PATIENCE: Duration = Duration::from_secs(8);
/// How often the mesh view is taken in while nothing waits.
const TICK: Duration = Duration::from_millis(500);
/// How often it is taken in while an `add` waits.
const BUSY_TICK: Duration = Duration::from_millis(100);

/// How pods attach, the same for every `add`.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// Bridge or TUN.
    pub mode: AttachMode,
    /// The bridge's name (bridge mode).
    pub bridge: Option<String>,
    /// The host's own address on the bridge, when inside the range.
    pub gateway: Option<Ipv4Addr>,
    /// The overlay MTU.
    pub mtu: u32,
}

/// What launch hands the router to run IPAM.
pub struct IpamSetup {
    /// The allocator, with the persisted state restored.
    pub ipam: Ipam,
    /// `--ipalloc-dir`.
    pub dir: PathBuf,
    /// The bound CNI socket.
    pub listener: UnixListener,
    /// How pods attach.
    pub network: PodNetwork,
}

/// IPAM as the router runs it.
pub struct IpamDriver {
    ipam: Ipam,
    dir: PathBuf,
    network: PodNetwork,
    requests: crossbeam_channel::Receiver<PendingCni>,
    parked: Vec<(PendingCni, Instant)>,
    next_tick: Instant,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn attachment_key(container_id: &str, ifname: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    }
}

fn error(code: u32, msg: &str, details: impl Into<String>) -> CniReply {
    CniReply(Err(CniError::new(code, msg, details)))
}

impl IpamDriver {
    /// Starts the CNI socket thread; its requests wake the loop through
    /// `waker`.
    pub fn start(setup: IpamSetup, waker: Arc<mio::Waker>) -> std::io::Result<IpamDriver> {
        let (tx, rx) = crossbeam_channel::unbounded();
        crate::cni::server::serve(setup.listener, tx, waker)?;
        Ok(IpamDriver {
            ipam: setup.ipam,
            dir: setup.dir,
            network: setup.network,
            requests: rx,
            parked: Vec::new(),
            next_tick: Instant::now(),
        })
    }

    /// When [`tick`](Self::tick) wants to run next.
    pub fn next_wakeup(&self) -> Instant {
        self.next_tick
    }

    fn persist(&self) -> Result<(), String> {
        store::save(&self.dir, &self.ipam.state())
    }

    /// Persists after a change that is already in effect; a failure is
    /// logged (the state on disk then holds more than memory, never less).
    fn persist_or_log(&self) {
        if let Err(e) = self.persist() {
            tracing::error!("IPAM: {e}");
        }
    }

    /// Pushes this host's chunks into the node's claims.
    fn push_claims(&self, mesh: &mut Node, now: Instant) {
        let claims: Vec<Claim> = self.ipam.claims().into_iter().map(Claim::Ip).collect();
        mesh.set_dynamic_claims(&claims, now);
        mesh.set_reserved(&self.ipam.reserved_chunks(), now);
    }

    /// The node's view, as IPAM takes it.
    fn view(mesh: &Node) -> MeshView {
        let me = mesh.id();
        let v4 = |c: &Claim| match c {
            Claim::Ip(p) if p.is_ipv4() => Some(*p),
            _ => None,
        };
        MeshView {
            announced: mesh.claims_announced(),
            owned: mesh
                .owned_claims()
                .iter()
                .filter_map(|(c, p)| Some((v4(c)?, *p)))
                .collect(),
            refused: mesh
                .conflicts()
                .filter(|c| c.refused == me)
                .filter_map(|c| v4(&c.refused_claim))
                .chain(
                    mesh.refused_claims()
                        .filter(|r| r.peer == me)
                        .filter_map(|r| v4(&r.claim)),
                )
                .collect(),
            departed: mesh
                .records()
                .filter(|r| !mesh.is_live(&r.id))
                .map(|r| {
                    let claims: Vec<IpPrefix> =
                        r.claims.iter().filter_map(|a| v4(&a.claim)).collect();
                    (r.id, r.name.to_string(), claims)
                })
                .filter(|(_, _, c)| !c.is_empty())
                .collect(),
            live_names: mesh.live_peers().map(|r| r.name.to_string()).collect(),
            reserved_by_live: mesh
                .live_peers()
                .flat_map(|r| r.reserved.iter().map(move |p| (*p, r.id)))
                .collect(),
        }
    }

    /// Takes in the mesh's view, retries parked `add`s, announces claims.
    pub fn tick(&mut self, mesh: &mut Node, now: Instant) {
        if now < self.next_tick {
            return;
        }
        if self.ipam.update_view(Self::view(mesh), unix_now()) {
            self.persist_or_log();
        }
        let parked = std::mem::take(&mut self.parked);
        for (pending, deadline) in parked {
            self.answer(pending, Some(deadline), now);
        }
        self.push_claims(mesh, now);
        self.next_tick = now
            + if self.parked.is_empty() {
                TICK
            } else {
                BUSY_TICK
            };
    }

    /// Answers the requests the socket thread forwarded.
    pub fn on_requests(&mut self, mesh: &mut Node, now: Instant) {
        let mut any = false;
        while let Ok(pending) = self.requests.try_recv() {
            if !any {
                // Answer from a fresh view.
                self.ipam.update_view(Self::view(mesh), unix_now());
                any = true;
            }
            self.answer(pending, None, now);
        }
        if any {
            self.push_claims(mesh, now);
            if !self.parked.is_empty() {
                self.next_tick = self.next_tick.min(now + BUSY_TICK);
            }
        }
    }

    fn attachment(&self, addr: Ipv4Addr) -> CniSuccess {
        let bridge = self.network.mode == AttachMode::Bridge;
        CniSuccess::Attachment(PodAttachment {
            address: PodAddress {
                addr,
                prefix_len: if bridge { self.ipam.range().len() } else { 32 },
            },
            gateway: if bridge { self.network.gateway } else { None },
            mtu: self.network.mtu,
            mode: self.network.mode,
            bridge: if bridge {
                self.network.bridge.clone()
            } else {
                None
            },
        })
    }

    /// Answers one request, or parks an `add` that must wait.
    fn answer(&mut self, pending: PendingCni, deadline: Option<Instant>, now: Instant) {
        let reply = match &pending.request {
            CniRequest::Add {
                container_id,
                ifname,
                netns,
            } => {
                let key = attachment_key(container_id, ifname);
                match self.ipam.allocate(&key, netns, now) {
                    Ok((addr, new)) => {
                        if new {
                            if let Err(e) = self.persist() {
                                // Not on disk: not handed out.
                                self.ipam.release(&key);
                                error(code::IO_FAILURE, "cannot record the address", e)
                            } else {
                                tracing::info!("IPAM: {addr} to container {container_id} {ifname}");
                                CniReply(Ok(self.attachment(addr)))
                            }
                        } else {
                            CniReply(Ok(self.attachment(addr)))
                        }
                    }
                    Err(AllocError::Pending(why)) => {
                        // A new claim changes the state: persist it, so a
                        // restart claims the same chunk again.
                        self.persist_or_log();
                        let deadline = deadline.unwrap_or(now + ADD_PATIENCE);
                        if now < deadline {
                            self.parked.push((pending, deadline));
                            return;
                        }
                        error(code::TRY_AGAIN_LATER, "no address yet", why)
                    }
                    Err(AllocError::Exhausted(why)) => {
                        error(code::RANGE_EXHAUSTED, "address range exhausted", why)
                    }
                    Err(AllocError::Invalid(why)) => {
                        error(code::INVALID_ENVIRONMENT, "invalid request", why)
                    }
                }
            }
            CniRequest::Del {
                container_id,
                ifname,
            } => {
                if self.ipam.release(&attachment_key(container_id, ifname)) {
                    tracing::info!(
                        "IPAM: released the address of container {container_id} {ifname}"
                    );
                    self.persist_or_log();
                }
                CniReply(Ok(CniSuccess::Done {}))
            }
            CniRequest::Check {
                container_id,
                ifname,
            } => match self.ipam.lookup(&attachment_key(container_id, ifname)) {
                Some(addr) => CniReply(Ok(self.attachment(addr))),
                None => error(
                    code::CONTAINER_UNKNOWN,
                    "no address held",
                    format!(
                        "weft holds no address for container {container_id:?} interface {ifname:?}"
                    ),
                ),
            },
            CniRequest::Status => match self.ipam.ready() {
                Ok(()) => CniReply(Ok(CniSuccess::Done {})),
                Err(why) => error(code::PLUGIN_NOT_AVAILABLE, "weft IPAM not available", why),
            },
            CniRequest::Gc { valid } => {
                let released = self.ipam.gc(valid);
                if released > 0 {
                    tracing::info!("IPAM: GC released {released} addresses");
                    self.persist_or_log();
                }
                CniReply(Ok(CniSuccess::Released { released }))
            }
            CniRequest::Version => CniReply(Ok(CniSuccess::Version {
                weft: env!("CARGO_PKG_VERSION").to_string(),
            })),
        };
        let _ = pending.reply.send(reply);
    }

    /// `weft rmpeer NAME`.
    pub fn rmpeer(&mut self, name: &str, mesh: &mut Node, now: Instant) -> Result<String, String> {
        self.ipam.update_view(Self::view(mesh), unix_now());
        let taken = self.ipam.rmpeer(name)?;
        self.persist_or_log();
        self.push_claims(mesh, now);
        let list: Vec<String> = taken.iter().map(|c| c.to_string()).collect();
        tracing::info!(
            "weft rmpeer {name}: this host takes over {}",
            list.join(", ")
        );
        Ok(format!(
            "took over the {} chunks of departed peer {name}: {}",
            taken.len(),
            list.join(", ")
        ))
    }

    /// This node's pod range from the Kubernetes API (`None`: it has
    /// none; the range is divided in chunks).
    pub fn set_pod_cidr(
        &mut self,
        cidr: Option<IpPrefix>,
        mesh: &mut Node,
        now: Instant,
    ) -> Result<String, String> {
        let done = self.ipam.set_pod_cidr(cidr)?;
        self.ipam.update_view(Self::view(mesh), unix_now());
        self.persist_or_log();
        self.push_claims(mesh, now);
        self.next_tick = now;
        Ok(done)
    }

    /// `weft status ipam`.
    pub fn status(&self, mesh: &Node) -> IpamStatus {
        let names = |p: &crate::mesh::peer::PeerId| -> String {
            if *p == mesh.id() {
                return mesh.own_record().name.to_string();
            }
            mesh.record(p)
                .map(|r| r.name.to_string())
                .unwrap_or_else(|| p.to_string())
        };
        self.ipam
            .status(mesh.own_record().name.as_str(), &names, unix_now())
    }
}

/// The gateway pods of a bridge get: the host's own bridge address when it
/// lies inside the range.
pub fn bridge_gateway(own: Option<IpAddr>, range: &crate::ipam::AllocRange) -> Option<Ipv4Addr> {
    match own {
        Some(IpAddr::V4(a)) if range.contains(a) => Some(a),
        _ => None,
    }
}
