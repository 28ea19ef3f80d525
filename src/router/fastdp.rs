//! The fast datapath inside `weft launch` (bridge mode): the kernel OVS
//! datapath switches frames between weft's bridge and the peers that may
//! get plaintext, once each connection has proven fastdp with heartbeats.
//!
//! Layout on the host:
//!
//! ```text
//!   containers --- bridge (weft) --- TAP (weft-tap)  -> userspace sleeve (encrypted)
//!                              \---- weft-odp (OVS internal port 0) -> OVS datapath -> VXLAN vport
//! ```
//!
//! The datapath's own internal device is enslaved to the bridge, so the
//! bridge's MAC learning splits traffic between the two paths by itself:
//! MACs of peers whose frames arrive through the VXLAN vport are learned
//! behind the OVS port, MACs of sleeve peers behind the TAP. Floods reach
//! both ports; the sleeve floods only to connections not on fastdp and the
//! OVS switch only to proven fastdp peers, so each peer gets one copy.
//!
//! The TAP and the datapath port are isolated bridge ports: the bridge never
//! forwards between the two paths to the peers (split horizon), so nothing
//! loops even while two hosts disagree on a connection's path.
//!
//! Per connection the state is [`Proof`]: heartbeats sized to the verified
//! path MTU go out through the VXLAN vport (`OVS_PACKET_CMD_EXECUTE`), the
//! peer acknowledges them over the control connection. Until then, or after
//! missed heartbeats, the connection uses the sleeve; fastdp is retried
//! after [`ProofConfig::retry_after`].

use crate::datapath::odp::attr::{Action, Mac};
use crate::datapath::odp::datapath::{Datapath, LOCAL_PORT};
use crate::datapath::odp::proof::{self, PathState, Proof, ProofConfig};
use crate::datapath::odp::standalone::{sweep_idle_flows, FlowActivity};
use crate::datapath::odp::switch::{Switch, SwitchConfig};
use crate::mesh::claims::IpPrefix;
use crate::mesh::control::Hello;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Which peers weft may send plaintext to over fastdp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaintextPolicy {
    /// `--insecure-plaintext`: every peer (a plaintext network).
    AllPeers,
    /// `--trusted-subnet`: only peers whose underlay address is inside
    /// (IPv4 or IPv6 subnets).
    TrustedSubnets(Vec<IpPrefix>),
}

impl PlaintextPolicy {
    /// Whether data to `ip` may travel unencrypted, and if not, why. An
    /// IPv4-mapped IPv6 address (a peer seen on a dual-stack socket) is
    /// judged as the IPv4 address it is.
    pub fn allows(&self, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        match self {
            PlaintextPolicy::AllPeers => Ok(()),
            PlaintextPolicy::TrustedSubnets(nets) => {
                if nets.iter().any(|net| net.contains_addr(ip)) {
                    Ok(())
                } else {
                    Err(format!("encrypted: {ip} is outside every --trusted-subnet, so it stays on the encrypted sleeve"))
                }
            }
        }
    }
}

/// Parses `--trusted-subnet` (an IPv4 or IPv6 CIDR; host bits are ignored).
pub fn parse_trusted_subnet(text: &str) -> Result<IpPrefix, String> {
    let bad = || {
        format!(
            "--trusted-subnet {text:?} is not a subnet; write it like 198.18.0.0/24 or 2001:2::/48"
        )
    };
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
    IpPrefix::new(addr, prefix).ok_or_else(bad)
}

/// Settings from `weft launch`.
#[derive(Debug, Clone)]
pub struct FastdpConfig {
    /// Datapath name (also its internal device, enslaved to the bridge).
    pub datapath: String,
    /// The bridge weft runs (its TAP and the datapath port are on it).
    pub bridge: String,
    /// The TAP of the userspace path (its bridge port forgets its MACs
    /// when a peer joins fastdp).
    pub tap: String,
    /// UDP port of the VXLAN vport (both ends must agree).
    pub port: u16,
    /// The network's VNI.
    pub vni: u32,
    /// Who may get plaintext.
    pub policy: PlaintextPolicy,
    /// Heartbeat timing.
    pub proof: ProofConfig,
    /// The underlay interface (its MTU is read before every heartbeat).
    pub underlay_iface: String,
    /// Delete flows idle this long.
    pub flow_idle: Duration,
    /// MAC age of the OVS switch.
    pub mac_age: Duration,
    /// MTU of the datapath port on the bridge (the overlay MTU).
    pub overlay_mtu: u16,
}

/// Counters of what weft's userspace did for fastdp (misses are packets
/// that went through weft; the rest stayed in the kernel).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct FastdpCounters {
    /// Misses handled (packets that reached weft from the datapath).
    pub misses: u64,
    /// Flows installed.
    pub flows_installed: u64,
    /// Idle flows deleted.
    pub flows_expired: u64,
    /// Flow flushes (MAC moves, peer changes).
    pub flushes: u64,
    /// Heartbeats sent through the VXLAN vport.
    pub heartbeats_sent: u64,
    /// Heartbeats received through the VXLAN vport (and acknowledged).
    pub heartbeats_received: u64,
    /// Misses for unproven peers handed to the sleeve.
    pub to_sleeve: u64,
    /// Netlink errors.
    pub errors: u64,
}

/// What the router must do after a fastdp event.
#[derive(Debug)]
pub enum FastdpAction {
    /// Acknowledge heartbeat `seq` to connection `token` over its control connection.
    Ack {
        /// The connection (mio token value).
        token: usize,
        /// The heartbeat's sequence.
        seq: u64,
    },
    /// The path to connection `token` is smaller than its verified path
    /// MTU (a heartbeat no longer fits the interface): search it again.
    PathShrank {
        /// The connection.
        token: usize,
    },
    /// Send this frame to connection `token` on the sleeve.
    ToSleeve {
        /// The connection.
        token: usize,
        /// The Ethernet frame.
        frame: Vec<u8>,
    },
}

/// Per-connection fastdp state.
struct Peer {
    /// Underlay address (canonical: IPv4 peers are IPv4 even when seen on
    /// a dual-stack socket), the tunnel destination.
    ip: IpAddr,
    /// Why this connection can never use fastdp (policy, peer without fastdp).
    ineligible: Option<String>,
    /// `None` until the path MTU is verified.
    proof: Option<Proof>,
    /// Last logged state name, to log transitions once.
    logged: &'static str,
}

/// The running fast datapath.
pub struct Fastdp {
    cfg: FastdpConfig,
    dp: Datapath,
    switch: Switch,
    peers: HashMap<usize, Peer>,
    activity: FlowActivity,
    next_sweep: Instant,
    /// Userspace work counters (shown in `weft status`).
    pub counters: FastdpCounters,
    frame_buf: Vec<u8>,
    /// Bridge ports and MTUs are set and read over this socket.
    netlink: Netlink,
}

use crate::sys::Netlink;

/// The current MTU of `iface`, None when it cannot be read.
fn current_mtu(netlink: &mut Netlink, iface: &str) -> Option<usize> {
    Some(netlink.link(iface).ok()??.mtu as usize)
}

impl Fastdp {
    /// Creates the datapath (deleting a stale one), its VXLAN vport, and
    /// enslaves its internal device to the bridge.
    pub fn start(cfg: FastdpConfig) -> Result<Fastdp, String> {
        let dp = Datapath::create(&cfg.datapath, cfg.port)?;
        let text = |e: crate::sys::SysError| e.to_string();
        let mut netlink = Netlink::open().map_err(text)?;
        let port = netlink.require_link(&cfg.datapath).map_err(text)?;
        let bridge = netlink.require_link(&cfg.bridge).map_err(text)?;
        netlink
            .set_mtu(port.index, &cfg.datapath, u32::from(cfg.overlay_mtu))
            .map_err(text)?;
        netlink
            .set_controller(port.index, &cfg.datapath, bridge.index, &cfg.bridge)
            .map_err(|e| {
                format!(
                    "cannot put the OVS datapath port {} on bridge {}: {e}",
                    cfg.datapath, cfg.bridge
                )
            })?;
        netlink.set_up(port.index, &cfg.datapath).map_err(text)?;
        // Split horizon on the bridge: the TAP and the datapath port both
        // lead to the peers, so the bridge must never forward between them
        // (a frame from a peer over one path would go back out over the
        // other, and while two hosts disagree on a connection's path a
        // broadcast would loop). Isolated ports only talk to non-isolated
        // ones: the containers and the bridge itself.
        for name in [&cfg.datapath, &cfg.tap] {
            let link = netlink.require_link(name).map_err(text)?;
            netlink
                .set_bridge_port_isolated(link.index, name)
                .map_err(|e| {
                    format!("cannot isolate bridge port {name} (needs Linux 4.18+): {e}")
                })?;
        }
        let switch = Switch::new(SwitchConfig {
            vni: cfg.vni,
            vxlan_port: dp.vxlan_port(),
            ttl: 64,
            mac_max_age: cfg.mac_age,
        });
        tracing::info!(
            "fastdp: OVS datapath {} (port {LOCAL_PORT} on bridge {}), VXLAN vport {} on UDP {}, vni {}",
            cfg.datapath,
            cfg.bridge,
            dp.vxlan_port(),
            cfg.port,
            cfg.vni
        );
        Ok(Fastdp {
            cfg,
            dp,
            switch,
            peers: HashMap::new(),
            activity: FlowActivity::new(),
            next_sweep: Instant::now() + Duration::from_secs(1),
            counters: FastdpCounters::default(),
            frame_buf: Vec::with_capacity(9000),
            netlink,
        })
    }

    /// The fd on which misses arrive.
    pub fn upcall_fd(&self) -> i32 {
        self.dp.upcall_fd()
    }

    /// The UDP port of the VXLAN vport (for the hello).
    pub fn port(&self) -> u16 {
        self.cfg.port
    }

    /// The datapath name.
    pub fn datapath_name(&self) -> &str {
        &self.cfg.datapath
    }

    /// A connection authenticated: decides whether it may ever use fastdp.
    pub fn on_peer_ready(
        &mut self,
        token: usize,
        endpoint: Option<SocketAddr>,
        hello: &Hello,
        path_mtu: Option<u16>,
        now: Instant,
    ) {
        let Some(endpoint) = endpoint else { return };
        let ip = endpoint.ip().to_canonical();
        let allowed = if crate::datapath::odp::datapath::is_tunnel_destination(ip) {
            self.cfg.policy.allows(ip)
        } else {
            Err(format!("{ip} cannot be a tunnel destination"))
        };
        let ineligible = match (allowed, hello.fastdp_port) {
            (Err(why), _) => Some(why),
            (Ok(()), None) => Some("the peer does not run fastdp".to_string()),
            (Ok(()), Some(p)) if p != self.cfg.port => Some(format!(
                "the peer's fastdp port is {p} and this host's {}: use the same --fastdp-port",
                self.cfg.port
            )),
            (Ok(()), Some(_)) => None,
        };
        if let Some(why) = &ineligible {
            tracing::info!(peer = %endpoint, "fastdp not used: {why}");
        }
        let proof = match (&ineligible, path_mtu) {
            (None, Some(mtu)) => Some(Proof::new(
                self.cfg.proof,
                usize::from(mtu),
                proof::vxlan_outer_overhead(ip),
                now,
            )),
            _ => None,
        };
        self.peers.insert(
            token,
            Peer {
                ip,
                ineligible,
                proof,
                logged: "",
            },
        );
        self.update_peers();
    }

    /// The connection's path MTU was verified (again): heartbeats follow it.
    pub fn on_path_mtu(&mut self, token: usize, path_mtu: u16, now: Instant) {
        let Some(peer) = self.peers.get_mut(&token) else {
            return;
        };
        if peer.ineligible.is_some() {
            return;
        }
        match peer.proof.as_mut() {
            Some(p) => p.set_path_mtu(usize::from(path_mtu), now),
            None => {
                peer.proof = Some(Proof::new(
                    self.cfg.proof,
                    usize::from(path_mtu),
                    proof::vxlan_outer_overhead(peer.ip),
                    now,
                ))
            }
        }
        self.update_sending();
    }

    /// The peer acknowledged heartbeat `seq`.
    pub fn on_ack(&mut self, token: usize, seq: u64) {
        if let Some(p) = self.peers.get_mut(&token).and_then(|p| p.proof.as_mut()) {
            p.on_ack(seq);
        }
        self.update_sending();
    }

    /// The connection closed.
    pub fn on_peer_gone(&mut self, token: usize) {
        if self.peers.remove(&token).is_some() {
            self.update_peers();
        }
    }

    /// Whether traffic to connection `token` goes over fastdp now.
    pub fn is_fastdp(&self, token: usize) -> bool {
        self.peers
            .get(&token)
            .and_then(|p| p.proof.as_ref())
            .is_some_and(|p| p.is_fastdp())
    }

    /// `fastdp` or the userspace mode, and why (for `weft status`).
    pub fn mode(&self, token: usize, now: Instant) -> (String, Option<String>) {
        let Some(peer) = self.peers.get(&token) else {
            return ("sleeve".into(), None);
        };
        if let Some(why) = &peer.ineligible {
            return ("sleeve".into(), Some(why.clone()));
        }
        match peer.proof.as_ref().map(|p| (p.state(), p.path_mtu())) {
            None => (
                "sleeve".into(),
                Some("fastdp: waiting for the path MTU to be verified".into()),
            ),
            Some((PathState::Proving, mtu)) => (
                "sleeve".into(),
                Some(format!(
                    "fastdp: proving ({mtu}-byte heartbeats through the VXLAN vport)"
                )),
            ),
            Some((PathState::Fastdp, mtu)) => (
                "fastdp".into(),
                Some(format!("heartbeats of {mtu} bytes acknowledged")),
            ),
            Some((PathState::Userspace { reason, retry_at }, _)) => (
                "sleeve".into(),
                Some(format!(
                    "fastdp failed: {reason}; retry in {:.0}s",
                    retry_at.saturating_duration_since(now).as_secs_f64()
                )),
            ),
        }
    }

    /// Every peer that may send to us over fastdp (policy and port agree).
    fn update_peers(&mut self) {
        let accepted: Vec<IpAddr> = self
            .peers
            .values()
            .filter(|p| p.ineligible.is_none())
            .map(|p| p.ip)
            .collect();
        if self.switch.set_peers(accepted) {
            self.flush_flows();
        }
        self.update_sending();
    }

    fn update_sending(&mut self) {
        let sending: Vec<IpAddr> = self
            .peers
            .values()
            .filter(|p| p.proof.as_ref().is_some_and(|p| p.is_fastdp()))
            .map(|p| p.ip)
            .collect();
        for peer in self.peers.values_mut() {
            let name = match peer.proof.as_ref().map(|p| p.state()) {
                Some(PathState::Fastdp) => "fastdp",
                Some(PathState::Userspace { .. }) => "userspace",
                _ => peer.logged,
            };
            if name != peer.logged {
                match peer.proof.as_ref().map(|p| p.state()) {
                    Some(PathState::Userspace { reason, .. }) => {
                        tracing::warn!(peer = %peer.ip, "fastdp -> userspace sleeve: {reason}")
                    }
                    _ => {
                        tracing::info!(peer = %peer.ip, "fastdp proven: heartbeats through the VXLAN vport acknowledged")
                    }
                }
                peer.logged = name;
            }
        }
        let joined = sending.iter().any(|ip| !self.switch.sending().contains(ip));
        if self.switch.set_sending(sending) {
            self.flush_flows();
            // A peer that left fastdp: the bridge relearns its MACs on the
            // TAP when its frames arrive over the sleeve; until then frames
            // for it reach the datapath and are handed to the sleeve one by
            // one (no flood, no duplicates). A peer that joined fastdp: its
            // MACs were learned on the TAP, and as long as both hosts keep
            // answering over the sleeve the bridge would never move them, so
            // the TAP port forgets its MACs (the next frame to each is
            // flooded to both ports once, then relearned behind the
            // datapath port).
            if joined {
                self.flush_bridge_port();
            }
        }
    }

    /// Makes the bridge forget the MACs it learned on the TAP.
    fn flush_bridge_port(&mut self) {
        let tap = &self.cfg.tap;
        let flushed = self
            .netlink
            .require_link(tap)
            .and_then(|link| self.netlink.flush_bridge_port(link.index, tap));
        if let Err(e) = flushed {
            tracing::warn!("fastdp: {e}");
        }
    }

    fn flush_flows(&mut self) {
        match self.dp.flush_flows() {
            Ok(()) => self.counters.flushes += 1,
            Err(e) => {
                self.counters.errors += 1;
                tracing::warn!("fastdp: {e}");
            }
        }
        self.activity.clear();
    }

    /// The overlay MTU changed (a smaller path): the datapath's bridge
    /// port follows, so the bridge drops what the path cannot carry.
    pub fn set_overlay_mtu(&mut self, mtu: u16) {
        if mtu != self.cfg.overlay_mtu {
            let port = &self.cfg.datapath;
            let set = self
                .netlink
                .require_link(port)
                .and_then(|link| self.netlink.set_mtu(link.index, port, u32::from(mtu)));
            match set {
                Ok(()) => self.cfg.overlay_mtu = mtu,
                Err(e) => tracing::warn!("fastdp: {e}"),
            }
        }
    }

    /// Timers: heartbeats, idle flows, MAC ageing.
    pub fn poll(&mut self, now: Instant, actions: &mut Vec<FastdpAction>) {
        // Read once per poll, and only when a heartbeat is due.
        let mut underlay_mtu: Option<Option<usize>> = None;
        let (vni, vxlan_port) = (self.cfg.vni, self.dp.vxlan_port());
        let mut changed = false;
        for (token, peer) in self.peers.iter_mut() {
            let Some(proof) = peer.proof.as_mut() else {
                continue;
            };
            let before = proof.is_fastdp();
            let Some(heartbeat) = proof.poll(now) else {
                changed |= before != proof.is_fastdp()
                    || matches!(proof.state(), PathState::Userspace { .. });
                continue;
            };
            let outer = heartbeat.datagram_len;
            let mtu_now = *underlay_mtu
                .get_or_insert_with(|| current_mtu(&mut self.netlink, &self.cfg.underlay_iface));
            if let Some(mtu) = mtu_now.filter(|m| outer > *m) {
                // Never send a datagram larger than the interface MTU: a
                // path that needs this size cannot be proven now.
                proof.fail(
                    format!(
                        "heartbeat of {outer} bytes (the verified path MTU) does not fit the MTU {mtu} of {}: the path must be verified again",
                        self.cfg.underlay_iface
                    ),
                    now,
                );
                actions.push(FastdpAction::PathShrank { token: *token });
                changed = true;
                continue;
            }
            proof::build_heartbeat_frame(&heartbeat, &mut self.frame_buf);
            let actions = [
                Action::tunnel_to(vni, peer.ip, 64),
                Action::Output(vxlan_port),
            ];
            match self.dp.execute_from_local(&self.frame_buf, &actions) {
                Ok(()) => self.counters.heartbeats_sent += 1,
                Err(e) => {
                    self.counters.errors += 1;
                    tracing::debug!(peer = %peer.ip, "fastdp heartbeat: {e}");
                }
            }
            changed |= before != proof.is_fastdp();
        }
        if changed {
            self.update_sending();
        }
        if now >= self.next_sweep {
            self.next_sweep = now + Duration::from_secs(1);
            self.switch.expire(now);
            self.counters.flows_expired +=
                sweep_idle_flows(&mut self.dp, &mut self.activity, self.cfg.flow_idle, now);
        }
    }

    /// Handles the misses queued on the upcall socket.
    pub fn on_upcalls(&mut self, now: Instant, actions: &mut Vec<FastdpAction>) {
        loop {
            let misses = match self.dp.take_misses(64) {
                Ok(m) => m,
                Err(e) => {
                    self.counters.errors += 1;
                    tracing::warn!("fastdp: {e}");
                    return;
                }
            };
            if misses.is_empty() {
                return;
            }
            for miss in misses {
                self.counters.misses += 1;
                if miss.key.in_port == self.dp.vxlan_port() {
                    if let Some(seq) = proof::parse_heartbeat_frame(&miss.packet) {
                        let from = miss.key.tunnel.and_then(|t| t.src);
                        let token = self
                            .peers
                            .iter()
                            .find(|(_, p)| p.ineligible.is_none() && Some(p.ip) == from)
                            .map(|(t, _)| *t);
                        if let Some(token) = token {
                            self.counters.heartbeats_received += 1;
                            actions.push(FastdpAction::Ack { token, seq });
                        }
                        continue;
                    }
                }
                if miss.key.eth_src == Mac(proof::HEARTBEAT_SRC) {
                    continue; // our own heartbeat looped back: never a flow
                }
                let decision = self.switch.on_miss(&miss.key, now);
                if decision.flush {
                    self.flush_flows();
                }
                if let Some(peer_ip) = decision.to_userspace {
                    if let Some(token) = self
                        .peers
                        .iter()
                        .find(|(_, p)| p.ip == peer_ip)
                        .map(|(t, _)| *t)
                    {
                        self.counters.to_sleeve += 1;
                        actions.push(FastdpAction::ToSleeve {
                            token,
                            frame: miss.packet,
                        });
                    }
                    continue;
                }
                if let Some(key) = decision.flow {
                    match self.dp.install_flow(&key, &decision.actions) {
                        Ok(()) => self.counters.flows_installed += 1,
                        Err(e) if e.errno() == Some(libc::EEXIST) => {}
                        Err(e) => {
                            self.counters.errors += 1;
                            tracing::warn!("fastdp: {e}");
                        }
                    }
                }
                if !decision.actions.is_empty() {
                    if let Err(e) = self
                        .dp
                        .execute(&miss.packet, &miss.key_raw, &decision.actions)
                    {
                        self.counters.errors += 1;
                        tracing::debug!("fastdp: {e}");
                    }
                }
            }
        }
    }

    /// Deletes the datapath (its port leaves the bridge with it).
    pub fn shutdown(&mut self) {
        match self.dp.delete() {
            Ok(()) => tracing::info!("fastdp: deleted OVS datapath {}", self.cfg.datapath),
            Err(e) => tracing::error!("fastdp: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_subnets_decide_who_gets_plaintext() {
        let p =
            PlaintextPolicy::TrustedSubnets(vec![parse_trusted_subnet("198.18.0.0/24").unwrap()]);
        assert!(p.allows("198.18.0.2".parse().unwrap()).is_ok());
        // The same peer seen on a dual-stack socket.
        assert!(p.allows("::ffff:198.18.0.2".parse().unwrap()).is_ok());
        let e = p.allows("198.19.0.2".parse().unwrap()).unwrap_err();
        assert!(e.contains("outside every --trusted-subnet"), "{e}");
        assert!(p
            .allows("fd00::1".parse().unwrap())
            .unwrap_err()
            .contains("outside every --trusted-subnet"));
        assert!(PlaintextPolicy::AllPeers
            .allows("203.0.113.9".parse().unwrap())
            .is_ok());
        assert!(PlaintextPolicy::AllPeers
            .allows("2001:2::9".parse().unwrap())
            .is_ok());
        assert!(
            PlaintextPolicy::TrustedSubnets(vec![parse_trusted_subnet("0.0.0.0/0").unwrap()])
                .allows("198.19.1.1".parse().unwrap())
                .is_ok()
        );
        for bad in ["198.18.0.0", "198.18.0.0/33", "x/24", "2001:2::/129", ""] {
            assert!(
                parse_trusted_subnet(bad)
                    .unwrap_err()
                    .contains("--trusted-subnet"),
                "{bad}"
            );
        }
    }

    #[test]
    fn ipv6_trusted_subnets_admit_ipv6_peers_only_inside() {
        let p = PlaintextPolicy::TrustedSubnets(vec![
            parse_trusted_subnet("2001:2::/48").unwrap(),
            parse_trusted_subnet("198.18.0.0/24").unwrap(),
        ]);
        assert!(p.allows("2001:2::2".parse().unwrap()).is_ok());
        assert!(p.allows("2001:2:0:ff::9".parse().unwrap()).is_ok());
        assert!(p.allows("198.18.0.9".parse().unwrap()).is_ok());
        let e = p.allows("2001:3::2".parse().unwrap()).unwrap_err();
        assert!(
            e.contains("2001:3::2 is outside every --trusted-subnet"),
            "{e}"
        );
        // Host bits are ignored, as for IPv4.
        assert_eq!(
            parse_trusted_subnet("2001:2::1/48").unwrap().to_string(),
            "2001:2::/48"
        );
    }
}
