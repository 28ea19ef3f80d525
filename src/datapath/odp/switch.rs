//! Sans-IO forwarding decisions for the fast datapath: MAC learning and
//! the flow (match + actions) to install for each miss.
//!
//! Topology: one local port (the weft device) and one VXLAN vport that
//! reaches every peer; peers are a full mesh, so frames from the tunnel
//! only ever go to the local port (no transit through this host).

use super::attr::{Action, FlowKey, Mac};
use super::datapath::LOCAL_PORT;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Where a MAC address lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Behind the local port.
    Local,
    /// Behind the peer with this underlay address (IPv4 or IPv6).
    Peer(IpAddr),
}

/// What to do with a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Install a flow with this key (None: only execute, e.g. heartbeats).
    pub flow: Option<FlowKey>,
    /// The destination is behind this peer, but fastdp towards it is not
    /// proven: the frame goes to the userspace path (no flow installed).
    pub to_userspace: Option<IpAddr>,
    /// Actions for the flow and for the missed packet (empty: drop).
    pub actions: Vec<Action>,
    /// The MAC table changed in a way that can make installed flows wrong
    /// (a MAC moved, or a flooded destination became known): flush flows.
    pub flush: bool,
}

/// Settings of the switch.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// VXLAN network identifier of this network.
    pub vni: u32,
    /// Datapath port of the VXLAN vport.
    pub vxlan_port: u32,
    /// Outer TTL.
    pub ttl: u8,
    /// How long a learned MAC stays without being seen.
    pub mac_max_age: Duration,
}

/// MAC learning table plus the set of peers reachable over fastdp.
#[derive(Debug)]
pub struct Switch {
    config: SwitchConfig,
    peers: Vec<IpAddr>,
    /// Peers whose fastdp path is proven: floods and unicast flows go to
    /// these only. A subset of `peers`.
    sending: Vec<IpAddr>,
    macs: HashMap<Mac, (Location, Instant)>,
}

impl Switch {
    /// An empty table.
    pub fn new(config: SwitchConfig) -> Switch {
        Switch {
            config,
            peers: Vec::new(),
            sending: Vec::new(),
            macs: HashMap::new(),
        }
    }

    /// Replaces the peers that use fastdp. Returns true when the set changed
    /// (the caller flushes flows: flood flows and unicast flows to a removed
    /// peer would be wrong). MACs behind removed peers are forgotten.
    pub fn set_peers(&mut self, mut peers: Vec<IpAddr>) -> bool {
        peers.sort();
        peers.dedup();
        if peers == self.peers {
            return false;
        }
        self.macs.retain(|_, (loc, _)| match loc {
            Location::Local => true,
            Location::Peer(ip) => peers.contains(ip),
        });
        self.sending.retain(|ip| peers.contains(ip));
        self.peers = peers;
        true
    }

    /// Replaces the peers fastdp may send to (their heartbeats are
    /// acknowledged); others only receive. Returns true when the set
    /// changed (the caller flushes flows). Call after [`Switch::set_peers`]:
    /// only known peers are kept. Without a call, every peer is sending.
    pub fn set_sending(&mut self, mut sending: Vec<IpAddr>) -> bool {
        sending.retain(|ip| self.peers.contains(ip));
        sending.sort();
        sending.dedup();
        if sending == self.sending {
            return false;
        }
        self.sending = sending;
        true
    }

    /// The peers fastdp sends to.
    pub fn sending(&self) -> &[IpAddr] {
        &self.sending
    }

    /// The peers currently on fastdp.
    pub fn peers(&self) -> &[IpAddr] {
        &self.peers
    }

    /// Where `mac` was last seen.
    pub fn lookup(&self, mac: &Mac) -> Option<Location> {
        self.macs.get(mac).map(|(loc, _)| *loc)
    }

    /// Forgets MACs not seen for `mac_max_age`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let max_age = self.config.mac_max_age;
        let before = self.macs.len();
        self.macs
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < max_age);
        before - self.macs.len()
    }

    fn to_peer(&self, peer: IpAddr) -> [Action; 2] {
        [
            Action::tunnel_to(self.config.vni, peer, self.config.ttl),
            Action::Output(self.config.vxlan_port),
        ]
    }

    /// Decides a miss: learns the source, then forwards by destination.
    pub fn on_miss(&mut self, key: &FlowKey, now: Instant) -> Decision {
        let source = if key.in_port == LOCAL_PORT {
            Some(Location::Local)
        } else if key.in_port == self.config.vxlan_port {
            match key.tunnel {
                Some(t) if t.id == u64::from(self.config.vni) => t
                    .src
                    .filter(|ip| self.peers.contains(ip))
                    .map(Location::Peer),
                _ => None,
            }
        } else {
            None
        };
        let Some(source) = source else {
            // Unknown port, VNI or sender: drop, and install the drop so the
            // kernel stops asking (it expires like any idle flow).
            return Decision {
                flow: Some(*key),
                actions: Vec::new(),
                flush: false,
                to_userspace: None,
            };
        };
        let mut flush = false;
        if !key.eth_src.is_multicast() {
            match self.macs.insert(key.eth_src, (source, now)) {
                Some((old, _)) if old != source => flush = true, // moved
                None => flush = true,                            // flood flows towards it are stale
                _ => {}
            }
        }
        let destination = if key.eth_dst.is_multicast() {
            None
        } else {
            self.lookup(&key.eth_dst)
        };
        let actions: Vec<Action> = match (source, destination) {
            (Location::Local, Some(Location::Peer(peer))) if !self.sending.contains(&peer) => {
                return Decision {
                    flow: None,
                    actions: Vec::new(),
                    flush,
                    to_userspace: Some(peer),
                };
            }
            (Location::Local, Some(Location::Peer(peer))) => self.to_peer(peer).to_vec(),
            (Location::Local, Some(Location::Local)) => Vec::new(),
            (Location::Local, None) => self.sending.iter().flat_map(|p| self.to_peer(*p)).collect(),
            (Location::Peer(_), Some(Location::Peer(_))) => Vec::new(), // no transit
            (Location::Peer(_), _) => vec![Action::Output(LOCAL_PORT)],
        };
        Decision {
            flow: Some(*key),
            actions,
            flush,
            to_userspace: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::odp::attr::TunnelKey;

    const VXLAN: u32 = 1;
    use std::net::{Ipv4Addr, Ipv6Addr};
    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3));
    const PEER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2));
    const A: Mac = Mac([2, 0, 0, 0, 0, 0xa]);
    const B: Mac = Mac([2, 0, 0, 0, 0, 0xb]);
    const BROADCAST: Mac = Mac([0xff; 6]);

    fn switch() -> Switch {
        let mut s = Switch::new(SwitchConfig {
            vni: 42,
            vxlan_port: VXLAN,
            ttl: 64,
            mac_max_age: Duration::from_secs(300),
        });
        s.set_peers(vec![PEER, OTHER]);
        s.set_sending(vec![PEER, OTHER]);
        s
    }
    fn local(src: Mac, dst: Mac) -> FlowKey {
        FlowKey {
            in_port: LOCAL_PORT,
            eth_src: src,
            eth_dst: dst,
            ethertype: Some(0x0800),
            tunnel: None,
        }
    }
    fn tunnel(src: Mac, dst: Mac, from: IpAddr, vni: u64) -> FlowKey {
        FlowKey {
            in_port: VXLAN,
            eth_src: src,
            eth_dst: dst,
            ethertype: Some(0x0806),
            tunnel: Some(TunnelKey {
                id: vni,
                src: Some(from),
                dst: None,
            }),
        }
    }

    #[test]
    fn broadcast_from_local_floods_to_every_peer() {
        let mut s = switch();
        let d = s.on_miss(&local(A, BROADCAST), Instant::now());
        assert_eq!(d.actions.len(), 4);
        assert!(d.actions.contains(&Action::Output(VXLAN)));
        assert!(d.flush, "learning A must flush stale flood flows");
        assert_eq!(s.lookup(&A), Some(Location::Local));
    }

    #[test]
    fn learned_peer_mac_gets_a_unicast_tunnel_flow() {
        let mut s = switch();
        let now = Instant::now();
        let d = s.on_miss(&tunnel(B, BROADCAST, PEER, 42), now);
        assert_eq!(d.actions, vec![Action::Output(LOCAL_PORT)]);
        let d = s.on_miss(&local(A, B), now);
        assert_eq!(
            d.actions,
            vec![
                Action::SetTunnel {
                    vni: 42,
                    dst: PEER,
                    ttl: 64,
                    dont_fragment: true,
                    checksum: false,
                },
                Action::Output(VXLAN)
            ]
        );
    }

    #[test]
    fn wrong_vni_or_unknown_sender_is_dropped_and_not_learned() {
        let mut s = switch();
        let d = s.on_miss(&tunnel(B, A, PEER, 7), Instant::now());
        assert!(d.actions.is_empty());
        let d = s.on_miss(
            &tunnel(B, A, "198.18.9.9".parse().unwrap(), 42),
            Instant::now(),
        );
        assert!(d.actions.is_empty());
        assert_eq!(s.lookup(&B), None);
    }

    #[test]
    fn no_transit_between_peers_and_moves_flush() {
        let mut s = switch();
        let now = Instant::now();
        s.on_miss(&tunnel(B, BROADCAST, PEER, 42), now);
        assert!(!s.on_miss(&tunnel(B, BROADCAST, PEER, 42), now).flush);
        let d = s.on_miss(&tunnel(A, B, OTHER, 42), now);
        assert!(d.actions.is_empty());
        assert!(
            s.on_miss(&tunnel(B, BROADCAST, OTHER, 42), now).flush,
            "B moved to another peer"
        );
    }

    #[test]
    fn removing_a_peer_forgets_its_macs_and_macs_age_out() {
        let mut s = switch();
        let now = Instant::now();
        s.on_miss(&tunnel(B, BROADCAST, PEER, 42), now);
        s.on_miss(&local(A, BROADCAST), now);
        assert!(s.set_peers(vec![OTHER]));
        assert_eq!(s.lookup(&B), None);
        assert!(!s.set_peers(vec![OTHER]));
        assert_eq!(s.expire(now + Duration::from_secs(301)), 1);
        assert_eq!(s.lookup(&A), None);
    }

    #[test]
    fn unproven_peer_gets_no_flood_and_its_unicast_goes_to_userspace() {
        let mut s = switch();
        let now = Instant::now();
        assert!(s.set_sending(vec![OTHER]));
        assert!(
            !s.set_sending(vec![OTHER, "198.18.9.9".parse().unwrap()]),
            "unknown peers are not sending"
        );
        s.on_miss(&tunnel(B, BROADCAST, PEER, 42), now);
        let d = s.on_miss(&local(A, B), now);
        assert_eq!((d.flow, d.to_userspace), (None, Some(PEER)));
        let d = s.on_miss(&local(A, BROADCAST), now);
        assert_eq!(
            d.actions.len(),
            2,
            "flood only to the proven peer: {:?}",
            d.actions
        );
        // Frames from the unproven peer are still accepted.
        let d = s.on_miss(&tunnel(B, A, PEER, 42), now);
        assert_eq!(d.actions, vec![Action::Output(LOCAL_PORT)]);
    }

    #[test]
    fn ipv6_peers_learn_and_get_ipv6_tunnel_flows_with_checksums() {
        let mut s = switch();
        s.set_peers(vec![PEER, PEER6]);
        s.set_sending(vec![PEER, PEER6]);
        let now = Instant::now();
        let d = s.on_miss(&tunnel(B, BROADCAST, PEER6, 42), now);
        assert_eq!(d.actions, vec![Action::Output(LOCAL_PORT)]);
        assert_eq!(s.lookup(&B), Some(Location::Peer(PEER6)));
        let d = s.on_miss(&local(A, B), now);
        assert_eq!(
            d.actions,
            vec![
                Action::SetTunnel {
                    vni: 42,
                    dst: PEER6,
                    ttl: 64,
                    dont_fragment: false,
                    checksum: true,
                },
                Action::Output(VXLAN)
            ]
        );
        // An IPv6 sender that is not a peer is dropped, not learned.
        let stranger: IpAddr = "2001:2::99".parse().unwrap();
        let d = s.on_miss(&tunnel(A, B, stranger, 42), now);
        assert!(d.actions.is_empty());
        // Floods reach both families.
        let d = s.on_miss(&local(A, BROADCAST), now);
        assert_eq!(d.actions.len(), 4, "{:?}", d.actions);
    }
}
