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
//!
//! With an IPv6 range next to the IPv4 one (dual stack), a second
//! allocator runs beside the first, with its own chunks (claimed in the
//! mesh like the IPv4 ones), its own state file and its own gateway on the
//! bridge: every pod gets one address of each family.

use crate::cni::api::PodAddress6;
use crate::cni::api::{
    code, AttachMode, AttachmentKey, CniError, CniReply, CniRequest, CniSuccess, PodAddress,
    PodAttachment,
};
use crate::cni::server::PendingCni;
use crate::ipam::{store, AllocError, Family, Ipam, IpamStatus, MeshView};
use crate::mesh::claims::{Claim, IpPrefix};
use crate::mesh::node::Node;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// The host's own IPv6 address on the bridge, when inside the IPv6
    /// range; without one IPAM gives the bridge one of its own.
    pub gateway6: Option<Ipv6Addr>,
    /// The overlay MTU.
    pub mtu: u32,
}

/// What launch hands the router to run IPAM.
pub struct IpamSetup {
    /// The allocator, with the persisted state restored.
    pub ipam: Ipam,
    /// The IPv6 range's allocator (dual stack), state restored.
    pub ipam6: Option<Ipam<Ipv6Addr>>,
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
    ipam6: Option<Ipam<Ipv6Addr>>,
    dir: PathBuf,
    network: PodNetwork,
    requests: crossbeam_channel::Receiver<PendingCni>,
    parked: Vec<(PendingCni, Instant)>,
    next_tick: Instant,
    /// Bridge mode without a host address in the range: the bridge's
    /// address from IPAM, kept on the bridge.
    bridge_gateway: Option<BridgeGateway<Ipv4Addr>>,
    /// The same for the IPv6 range.
    bridge_gateway6: Option<BridgeGateway<Ipv6Addr>>,
}

/// The pods' gateway address IPAM gave the bridge, put on it while weft
/// runs (with the prefix route to the whole range: this host reaches its
/// pods, and the pods of every host, through the bridge) and taken off
/// when weft stops. The address stays allocated in IPAM across restarts:
/// pods keep routing through it, and the next weft puts it back.
struct BridgeGateway<A: Family> {
    bridge: String,
    prefix_len: u8,
    /// The address on the bridge now.
    on_bridge: Option<A>,
    /// The last failure, logged once until it changes.
    failed: Option<String>,
}

impl<A: Family> BridgeGateway<A> {
    /// Puts `want` on the bridge (taking an older one off); a failure is
    /// logged and tried again at the next call.
    fn sync(&mut self, want: Option<A>) {
        if self.on_bridge == want && self.failed.is_none() {
            return;
        }
        if let Some(old) = self.on_bridge.filter(|o| Some(*o) != want) {
            match crate::cni::netdev::remove_bridge_gateway(
                &self.bridge,
                old.into(),
                self.prefix_len,
            ) {
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
        match crate::cni::netdev::add_bridge_gateway(&self.bridge, gw.into(), self.prefix_len) {
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

impl<A: Family> Drop for BridgeGateway<A> {
    fn drop(&mut self) {
        // A bridge weft made goes with its addresses; on one it found, the
        // address it added is taken off again (as --overlay's is).
        if let Some(gw) = self.on_bridge.take() {
            if let Err(e) =
                crate::cni::netdev::remove_bridge_gateway(&self.bridge, gw.into(), self.prefix_len)
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
        let mut ipam6 = setup.ipam6;
        let network = setup.network;
        let mut released = None;
        let bridge_gateway6 = match (&network.mode, &network.bridge, network.gateway6, &mut ipam6) {
            (AttachMode::Bridge, Some(bridge), None, Some(ipam6)) => {
                ipam6.want_bridge_gateway(true);
                Some(BridgeGateway {
                    bridge: bridge.clone(),
                    prefix_len: ipam6.range().len(),
                    on_bridge: None,
                    failed: None,
                })
            }
            (_, _, _, Some(ipam6)) => {
                if let Some(old) = ipam6.want_bridge_gateway(false) {
                    tracing::warn!(
                        "IPAM: {old}, the bridge's IPv6 gateway of an earlier run, is released: {} is the pods' IPv6 gateway now; pods added before still route through {old}: re-create them",
                        network
                            .gateway6
                            .map_or("none".to_string(), |g| g.to_string())
                    );
                }
                None
            }
            _ => None,
        };
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
            ipam6,
            dir: setup.dir,
            network,
            requests: rx,
            parked: Vec::new(),
            next_tick: Instant::now(),
            bridge_gateway,
            bridge_gateway6,
        };
        // An IPv6 gateway released above is recorded too.
        if released.is_some() || driver.ipam6.is_some() {
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

    /// The pods' IPv6 gateway in bridge mode.
    fn gateway6(&self) -> Option<Ipv6Addr> {
        self.network
            .gateway6
            .or(self.ipam6.as_ref().and_then(|i| i.gateway()))
    }

    /// Puts IPAM's gateways on the bridge (when it wants them).
    fn sync_gateway(&mut self) {
        if let Some(b) = self.bridge_gateway.as_mut() {
            b.sync(self.ipam.gateway());
        }
        if let (Some(b), Some(ipam6)) = (self.bridge_gateway6.as_mut(), self.ipam6.as_ref()) {
            b.sync(ipam6.gateway());
        }
    }

    /// Takes the bridge's gateway as soon as IPAM can give one, before
    /// any pod asks: this host reaches the pod network from the start.
    fn take_gateway(&mut self, now: Instant) {
        let mut changed = false;
        if self.bridge_gateway.is_some() && self.ipam.gateway().is_none() {
            changed |= take_gateway_of(&mut self.ipam, now);
        }
        if let (Some(_), Some(ipam6)) = (&self.bridge_gateway6, self.ipam6.as_mut()) {
            if ipam6.gateway().is_none() {
                changed |= take_gateway_of(ipam6, now);
            }
        }
        if changed {
            self.persist_or_log();
        }
    }

    /// When [`tick`](Self::tick) wants to run next.
    pub fn next_wakeup(&self) -> Instant {
        self.next_tick
    }

    fn persist(&self) -> Result<(), String> {
        store::save(&self.dir, &self.ipam.state())?;
        match &self.ipam6 {
            Some(ipam6) => store::save(&self.dir, &ipam6.state()),
            None => Ok(()),
        }
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
        let mut claims: Vec<Claim> = self.ipam.claims().into_iter().map(Claim::Ip).collect();
        let mut reserved = self.ipam.reserved_chunks();
        if let Some(ipam6) = &self.ipam6 {
            claims.extend(ipam6.claims().into_iter().map(Claim::Ip));
            reserved.extend(ipam6.reserved_chunks());
        }
        mesh.set_dynamic_claims(&claims, now);
        mesh.set_reserved(&reserved, now);
    }

    /// Takes the node's view into both allocators; whether the state to
    /// persist changed.
    fn update_views(&mut self, mesh: &Node) -> bool {
        let mut changed = self.ipam.update_view(Self::view(mesh, true), unix_now());
        if let Some(ipam6) = self.ipam6.as_mut() {
            changed |= ipam6.update_view(Self::view(mesh, false), unix_now());
        }
        changed
    }

    /// The node's view, as the allocator of one family (`ipv4` or not)
    /// takes it.
    fn view(mesh: &Node, ipv4: bool) -> MeshView {
        let me = mesh.id();
        let v4 = |c: &Claim| match c {
            Claim::Ip(p) if p.is_ipv4() == ipv4 => Some(*p),
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
                .filter(|(p, _)| p.is_ipv4() == ipv4)
                .collect(),
        }
    }

    /// Takes in the mesh's view, retries parked `add`s, announces claims.
    pub fn tick(&mut self, mesh: &mut Node, now: Instant) {
        if now < self.next_tick {
            return;
        }
        if self.update_views(mesh) {
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
                self.update_views(mesh);
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

    fn attachment(&self, addr: Ipv4Addr, addr6: Option<Ipv6Addr>) -> CniSuccess {
        let bridge = self.network.mode == AttachMode::Bridge;
        CniSuccess::Attachment(PodAttachment {
            address: PodAddress {
                addr,
                prefix_len: if bridge { self.ipam.range().len() } else { 32 },
            },
            gateway: if bridge { self.gateway() } else { None },
            // Routed (TUN) pods get a /128, as IPv4 ones a /32.
            address6: addr6.map(|addr| PodAddress6 {
                addr,
                prefix_len: match &self.ipam6 {
                    Some(i) if bridge => i.range().len(),
                    _ => 128,
                },
            }),
            gateway6: if bridge && addr6.is_some() {
                self.gateway6()
            } else {
                None
            },
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
                let gateways_before = (
                    self.ipam.gateway(),
                    self.ipam6.as_ref().and_then(|i| i.gateway()),
                );
                let allocated = self.allocate(&key, netns, now);
                let gateways_after = (
                    self.ipam.gateway(),
                    self.ipam6.as_ref().and_then(|i| i.gateway()),
                );
                if gateways_after != gateways_before {
                    // Taken on the way (the first pod): recorded, and on
                    // the bridge before the pod hears of it.
                    self.persist_or_log();
                    self.sync_gateway();
                }
                match allocated {
                    Ok((addr, addr6, new)) => {
                        if new {
                            if let Err(e) = self.persist() {
                                // Not on disk: not handed out.
                                self.release(&key);
                                error(code::IO_FAILURE, "cannot record the address", e)
                            } else {
                                match addr6 {
                                    Some(a6) => tracing::info!(
                                        "IPAM: {addr} and {a6} to container {container_id} {ifname}"
                                    ),
                                    None => tracing::info!(
                                        "IPAM: {addr} to container {container_id} {ifname}"
                                    ),
                                }
                                CniReply(Ok(self.attachment(addr, addr6)))
                            }
                        } else {
                            CniReply(Ok(self.attachment(addr, addr6)))
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
                if self.release(&attachment_key(container_id, ifname)) {
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
                Some(addr) => {
                    let key = attachment_key(container_id, ifname);
                    let addr6 = self.ipam6.as_ref().and_then(|i| i.lookup(&key));
                    CniReply(Ok(self.attachment(addr, addr6)))
                }
                None => error(
                    code::CONTAINER_UNKNOWN,
                    "no address held",
                    format!(
                        "weft holds no address for container {container_id:?} interface {ifname:?}"
                    ),
                ),
            },
            CniRequest::Status => match self
                .ipam
                .ready()
                .and_then(|()| self.ipam6.as_ref().map_or(Ok(()), |i| i.ready()))
            {
                Ok(()) => CniReply(Ok(CniSuccess::Done {})),
                Err(why) => error(code::PLUGIN_NOT_AVAILABLE, "weft IPAM not available", why),
            },
            CniRequest::Gc { valid } => {
                // Every pod holds one address of each family: count pods.
                let released = self
                    .ipam
                    .gc(valid)
                    .max(self.ipam6.as_mut().map_or(0, |i| i.gc(valid)));
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
        self.update_views(mesh);
        // Either family may hold the departed peer's chunks; an error only
        // when neither does.
        let taken4 = self.ipam.rmpeer(name);
        let taken6 = self.ipam6.as_mut().map(|i| i.rmpeer(name));
        let taken = match (taken4, taken6) {
            (Err(e), None | Some(Err(_))) => return Err(e),
            (Ok(mut t), Some(Ok(t6))) => {
                t.extend(t6);
                t
            }
            (Ok(t), _) | (Err(_), Some(Ok(t))) => t,
        };
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

    /// This node's pod range of one family (`ipv6`) from the Kubernetes
    /// API (`None`: it has none; that family's range is divided in
    /// chunks).
    pub fn set_pod_cidr(
        &mut self,
        cidr: Option<IpPrefix>,
        ipv6: bool,
        mesh: &mut Node,
        now: Instant,
    ) -> Result<String, String> {
        let done = match (ipv6, self.ipam6.as_mut()) {
            (false, _) => self.ipam.set_pod_cidr(cidr)?,
            (true, Some(ipam6)) => ipam6.set_pod_cidr(cidr)?,
            (true, None) => {
                return Ok(match cidr {
                    Some(c) => format!(
                        "this node's IPv6 podCIDR {c} is not used: IPAM has no IPv6 --ipalloc-range (pods get IPv4 addresses only)"
                    ),
                    None => "no IPv6 --ipalloc-range: IPAM hands out IPv4 addresses only".into(),
                })
            }
        };
        self.update_views(mesh);
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
        let host = mesh.own_record().name.to_string();
        let mut status = self.ipam.status(&host, &names, unix_now());
        status.ipv6 = self
            .ipam6
            .as_ref()
            .map(|i| Box::new(i.status(&host, &names, unix_now())));
        status
    }

    /// Gives `key` an address of each family (IPv4, and IPv6 with a dual
    /// stack). `new` says the state changed. An IPv4 address taken while
    /// the IPv6 allocator waits for a chunk stays held (recorded, found
    /// again by the retry).
    fn allocate(
        &mut self,
        key: &AttachmentKey,
        netns: &str,
        now: Instant,
    ) -> Result<(Ipv4Addr, Option<Ipv6Addr>, bool), AllocError> {
        let (addr, new) = self.ipam.allocate(key, netns, now)?;
        let Some(ipam6) = self.ipam6.as_mut() else {
            return Ok((addr, None, new));
        };
        match ipam6.allocate(key, netns, now) {
            Ok((addr6, new6)) => Ok((addr, Some(addr6), new || new6)),
            Err(e) => {
                if new {
                    // Recorded with the next persist: nothing is lost.
                    tracing::debug!("IPAM: {addr} held for {key:?} while IPv6 waits: {e}");
                }
                Err(e)
            }
        }
    }

    /// Releases `key`'s addresses of both families; whether any was held.
    fn release(&mut self, key: &AttachmentKey) -> bool {
        let v4 = self.ipam.release(key);
        let v6 = self.ipam6.as_mut().is_some_and(|i| i.release(key));
        v4 || v6
    }
}

/// Takes the bridge's gateway from `ipam` if it can; whether the state
/// changed (taken, or a chunk claimed for it).
fn take_gateway_of<A: Family>(ipam: &mut Ipam<A>, now: Instant) -> bool {
    let claims = ipam.claims();
    if let Err(e) = ipam.ensure_gateway(now) {
        tracing::debug!("IPAM: no gateway for the bridge yet: {e}");
    }
    ipam.gateway().is_some() || ipam.claims() != claims
}

/// The gateway pods of a bridge get: the host's own bridge address when it
/// lies inside the range.
pub fn bridge_gateway<A: Family>(
    own: Option<IpAddr>,
    range: &crate::ipam::AllocRange<A>,
) -> Option<A> {
    own.and_then(A::from_ip).filter(|a| range.contains(*a))
}
