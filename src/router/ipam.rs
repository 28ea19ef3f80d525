//! The router's side of IPAM: owns the [`Ipam`] core, answers the CNI
//! socket's requests, feeds it the mesh node's view, pushes its chunk
//! claims into the node and persists its state after every change.
//!
//! Everything here runs on the event-loop thread (IPAM needs the node,
//! which lives there); the socket thread only forwards requests
//! ([`crate::cni::server`]). An `add` that has to wait for a chunk claim to
//! settle is parked and retried on every tick until it succeeds or
//! [`ADD_PATIENCE`] passes.
//!
//! In bridge mode without a host address in the range it also keeps the
//! bridge's own address from IPAM, the pods' gateway, on the bridge
//! ([`BridgeGateway`]; the allocation rules are in [`crate::ipam`]).

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
    /// The host's own address on the bridge, when inside the range
    /// (`--overlay`). Without one, in bridge mode, IPAM gives the bridge
    /// an address of its own ([`crate::ipam::Ipam::want_bridge_gateway`]).
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
    /// Bridge mode without a host address in the range: the bridge's
    /// address from IPAM, kept on the bridge.
    bridge_gateway: Option<BridgeGateway>,
}

/// The pods' gateway address IPAM gave the bridge, put on it while weft
/// runs (with the prefix route to the whole range: this host reaches its
/// pods, and the pods of every host, through the bridge) and taken off
/// when weft stops. The address stays allocated in IPAM across restarts:
/// pods keep routing through it, and the next weft puts it back.
struct BridgeGateway {
    bridge: String,
    prefix_len: u8,
    /// The address on the bridge now.
    on_bridge: Option<Ipv4Addr>,
    /// The last failure, logged once until it changes.
    failed: Option<String>,
}

impl BridgeGateway {
    /// Puts `want` on the bridge (taking an older one off); a failure is
    /// logged and tried again at the next call.
    fn sync(&mut self, want: Option<Ipv4Addr>) {
        if self.on_bridge == want && self.failed.is_none() {
            return;
        }
        if let Some(old) = self.on_bridge.filter(|o| Some(*o) != want) {
            match crate::cni::netdev::remove_bridge_gateway(&self.bridge, old, self.prefix_len) {
                Ok(()) => self.on_bridge = None,
                Err(e) => tracing::warn!(
                    "IPAM: cannot take the old gateway {old} off bridge {}: {e}",
                    self.bridge
                ),
            }
        }
        let Some(gw) = want else {
            self.failed = None;
            return;
        };
        match crate::cni::netdev::add_bridge_gateway(&self.bridge, gw, self.prefix_len) {
            Ok(()) => {
                if self.on_bridge != Some(gw) || self.failed.is_some() {
                    tracing::info!(
                        "IPAM: bridge {} has {gw}/{}, the pods' gateway: pods reach this host and beyond through it, and this host reaches the pod network through the bridge",
                        self.bridge,
                        self.prefix_len
                    );
                }
                self.on_bridge = Some(gw);
                self.failed = None;
            }
            Err(e) => {
                if self.failed.as_deref() != Some(e.as_str()) {
                    tracing::error!(
                        "IPAM: cannot put the pods' gateway {gw}/{} on bridge {}: {e}; pods cannot reach this host or beyond until it is there (retrying)",
                        self.prefix_len,
                        self.bridge
                    );
                }
                self.failed = Some(e);
            }
        }
    }
}

impl Drop for BridgeGateway {
    fn drop(&mut self) {
        // A bridge weft made goes with its addresses; on one it found, the
        // address it added is taken off again (as --overlay's is).
        if let Some(gw) = self.on_bridge.take() {
            if let Err(e) =
                crate::cni::netdev::remove_bridge_gateway(&self.bridge, gw, self.prefix_len)
            {
                tracing::warn!(
                    "IPAM: cannot take the pods' gateway {gw} off bridge {}: {e}",
                    self.bridge
                );
            }
        }
    }
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
        let mut ipam = setup.ipam;
        let network = setup.network;
        let mut released = None;
        // Bridge mode without a host address in the range: the bridge
        // takes one from IPAM (held from an earlier run, or taken on the
        // first tick that can).
        let bridge_gateway = match (&network.mode, &network.bridge, network.gateway) {
            (AttachMode::Bridge, Some(bridge), None) => {
                ipam.want_bridge_gateway(true);
                Some(BridgeGateway {
                    bridge: bridge.clone(),
                    prefix_len: ipam.range().len(),
                    on_bridge: None,
                    failed: None,
                })
            }
            _ => {
                released = ipam.want_bridge_gateway(false);
                if let Some(old) = released {
                    tracing::warn!(
                        "IPAM: {old}, the bridge's gateway of an earlier run, is released: {} is the pods' gateway now; pods added before still route through {old}: re-create them",
                        network
                            .gateway
                            .map_or("none".to_string(), |g| g.to_string())
                    );
                }
                None
            }
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        crate::cni::server::serve(setup.listener, tx, waker)?;
        let mut driver = IpamDriver {
            ipam,
            dir: setup.dir,
            network,
            requests: rx,
            parked: Vec::new(),
            next_tick: Instant::now(),
            bridge_gateway,
        };
        if released.is_some() {
            driver.persist_or_log();
        }
        // Pods of an earlier run route through the held gateway: back on
        // the bridge before anything else.
        driver.sync_gateway();
        Ok(driver)
    }

    /// The pods' gateway in bridge mode: the host's address in the range,
    /// or the bridge's from IPAM.
    fn gateway(&self) -> Option<Ipv4Addr> {
        self.network.gateway.or(self.ipam.gateway())
    }

    /// Puts IPAM's gateway on the bridge (when it wants one).
    fn sync_gateway(&mut self) {
        if let Some(b) = self.bridge_gateway.as_mut() {
            b.sync(self.ipam.gateway());
        }
    }

    /// Takes the bridge's gateway as soon as IPAM can give one, before
    /// any pod asks: this host reaches the pod network from the start.
    fn take_gateway(&mut self, now: Instant) {
        if self.bridge_gateway.is_none() || self.ipam.gateway().is_some() {
            return;
        }
        let claims = self.ipam.claims();
        if let Err(e) = self.ipam.ensure_gateway(now) {
            tracing::debug!("IPAM: no gateway for the bridge yet: {e}");
        }
        // Taken, or a chunk claimed for it: recorded.
        if self.ipam.gateway().is_some() || self.ipam.claims() != claims {
            self.persist_or_log();
        }
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
        self.take_gateway(now);
        self.sync_gateway();
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
            gateway: if bridge { self.gateway() } else { None },
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
                let gateway_before = self.ipam.gateway();
                let allocated = self.ipam.allocate(&key, netns, now);
                if self.ipam.gateway() != gateway_before {
                    // Taken on the way (the first pod): recorded, and on
                    // the bridge before the pod hears of it.
                    self.persist_or_log();
                    self.sync_gateway();
                }
                match allocated {
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
