//! Bridge (L2) forwarding: the decisions for Ethernet frames, shared by the
//! encrypted sleeve loop and the plaintext VXLAN loop. Sans-IO: frames and
//! time in, a decision out.
//!
//! Forwarding follows a split horizon over the full mesh: frames from the
//! local bridge go to one peer (known unicast) or to every peer once
//! (broadcast, multicast, unknown unicast); frames from a peer only ever go
//! to the local bridge, so nothing is sent back where it came from and no
//! frame loops between hosts.

use crate::api::l2_status::L2Counters;
use crate::mesh::fdb::{Fdb, Location, Mac};
use std::time::{Duration, Instant};

/// Ethernet header without VLAN tag.
const ETHERNET_HEADER: usize = 14;
/// Extra bytes an 802.1Q tag adds (a tagged frame may be that much longer).
const VLAN_TAG: usize = 4;
/// The 802.1Q TPID.
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Destination MAC of an Ethernet frame, if it has a whole header.
#[inline]
pub fn destination_mac(frame: &[u8]) -> Option<Mac> {
    Mac::from_bytes(frame)
}

/// Source MAC of an Ethernet frame, if it has a whole header.
#[inline]
pub fn source_mac(frame: &[u8]) -> Option<Mac> {
    Mac::from_bytes(frame.get(6..)?)
}

/// Bridge-mode settings the router needs.
#[derive(Debug, Clone)]
pub struct L2Config {
    /// The Linux bridge the TAP is on (for status).
    pub bridge: String,
    /// Whether weft created it.
    pub bridge_created: bool,
    /// Idle age of learned MAC addresses.
    pub mac_age: Duration,
    /// Most MAC addresses learned behind one peer.
    pub mac_quota: usize,
}

/// Where a frame read from the local bridge goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// To the one location the destination was learned at.
    Unicast(Location),
    /// To every peer and static VTEP once.
    Flood,
    /// Nowhere (counted).
    Drop,
}

/// The L2 switch of one host: the MAC table and the frame size limit.
#[derive(Debug)]
pub struct L2Switch {
    /// Learned MAC addresses.
    pub fdb: Fdb,
    /// Frames forwarded, flooded and dropped.
    pub counters: L2Counters,
    /// The overlay MTU: the largest Ethernet payload carried.
    overlay_mtu: usize,
    last_expiry: Option<Instant>,
}

impl L2Switch {
    /// A switch for frames with up to `overlay_mtu` bytes of payload,
    /// whose learned addresses age out after `mac_age`, holding at most
    /// `mac_quota` addresses behind any one peer or VTEP.
    pub fn new(overlay_mtu: u16, mac_age: Duration, mac_quota: usize) -> L2Switch {
        L2Switch {
            fdb: Fdb::with_quota(mac_age, mac_quota),
            counters: L2Counters::default(),
            overlay_mtu: usize::from(overlay_mtu),
            last_expiry: None,
        }
    }

    /// Whether a frame is a whole Ethernet frame no larger than the MTU
    /// allows; counts the ones that are not.
    fn size_ok(&mut self, frame: &[u8]) -> bool {
        if frame.len() < ETHERNET_HEADER {
            self.counters.runts += 1;
            return false;
        }
        let tagged = frame
            .get(12..14)
            .is_some_and(|t| u16::from_be_bytes([t[0], t[1]]) == ETHERTYPE_VLAN);
        let limit = self.overlay_mtu + ETHERNET_HEADER + if tagged { VLAN_TAG } else { 0 };
        if frame.len() > limit {
            self.counters.oversized += 1;
            return false;
        }
        true
    }

    /// Learns the source of a frame read from the local bridge (TAP) and
    /// says where it goes.
    pub fn from_local(&mut self, frame: &[u8], now: Instant) -> Egress {
        if !self.size_ok(frame) {
            return Egress::Drop;
        }
        let (Some(dst), Some(src)) = (destination_mac(frame), source_mac(frame)) else {
            return Egress::Drop;
        };
        self.fdb.learn(src, Location::Local, now);
        if dst.is_multicast() {
            self.counters.flooded += 1;
            return Egress::Flood;
        }
        match self.fdb.lookup(&dst, now) {
            Some(Location::Local) | None => {
                // The bridge only hands us a frame for a MAC it does not know
                // on any port; if we still think it is local, it moved away
                // (its port is gone): flood so it is found wherever it is now.
                self.counters.flooded += 1;
                Egress::Flood
            }
            Some(remote) => {
                self.counters.unicast += 1;
                Egress::Unicast(remote)
            }
        }
    }

    /// Learns the source of a frame that arrived from `from` (a peer or a
    /// static VTEP). True when it should be written to the local bridge.
    pub fn from_remote(&mut self, frame: &[u8], from: Location, now: Instant) -> bool {
        if !self.size_ok(frame) {
            return false;
        }
        let Some(src) = source_mac(frame) else {
            return false;
        };
        if src.is_multicast() {
            // A group address is never a valid source (IEEE 802.3).
            self.counters.bad_source += 1;
            return false;
        }
        self.fdb.learn(src, from, now);
        self.counters.delivered += 1;
        true
    }

    /// Expires idle entries, at most once a second (call from the timer path).
    pub fn tick(&mut self, now: Instant) {
        if self
            .last_expiry
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_expiry = Some(now);
        self.counters.expired += self.fdb.expire(now) as u64;
        self.counters.mac_moves = self.fdb.moves;
        self.counters.mac_quota_evictions = self.fdb.quota_evictions;
        self.counters.fdb_entries = self.fdb.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f
    }

    const A: Mac = Mac([2, 0, 0, 0, 0, 0xa]);
    const B: Mac = Mac([2, 0, 0, 0, 0, 0xb]);
    const BCAST: Mac = Mac::BROADCAST;

    #[test]
    fn flood_learn_unicast() {
        let t = Instant::now();
        let mut sw = L2Switch::new(
            1416,
            Duration::from_secs(600),
            crate::mesh::fdb::DEFAULT_MAC_QUOTA,
        );
        // A (local) asks for B: broadcast floods.
        assert_eq!(sw.from_local(&frame(BCAST, A, 60), t), Egress::Flood);
        // B answers from peer 3: delivered, learned.
        assert!(sw.from_remote(&frame(A, B, 60), Location::Peer(3), t));
        // Now A -> B is unicast to peer 3.
        assert_eq!(
            sw.from_local(&frame(B, A, 60), t),
            Egress::Unicast(Location::Peer(3))
        );
        // B moves to this host: relearned on its first frame (to A, which
        // is local too, so the bridge would not even hand it to us; a stale
        // local entry floods).
        assert_eq!(sw.from_local(&frame(A, B, 60), t), Egress::Flood);
        assert_eq!(sw.fdb.moves, 1);
        assert_eq!(sw.from_local(&frame(B, A, 60), t), Egress::Flood);
    }

    #[test]
    fn sizes_and_bad_sources() {
        let t = Instant::now();
        let mut sw = L2Switch::new(
            1416,
            Duration::from_secs(600),
            crate::mesh::fdb::DEFAULT_MAC_QUOTA,
        );
        assert_eq!(sw.from_local(&frame(BCAST, A, 1416 + 14), t), Egress::Flood);
        assert_eq!(sw.from_local(&frame(BCAST, A, 1416 + 15), t), Egress::Drop);
        let mut tagged = frame(BCAST, A, 1416 + 18);
        tagged[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        assert_eq!(sw.from_local(&tagged, t), Egress::Flood);
        assert_eq!(sw.from_local(&[0u8; 13], t), Egress::Drop);
        assert!(!sw.from_remote(&frame(A, BCAST, 60), Location::Peer(1), t));
        assert!(!sw.from_remote(&frame(A, B, 2000), Location::Peer(1), t));
        assert_eq!(
            (
                sw.counters.oversized,
                sw.counters.runts,
                sw.counters.bad_source
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn entries_age_out() {
        let t = Instant::now();
        let mut sw = L2Switch::new(
            1416,
            Duration::from_secs(2),
            crate::mesh::fdb::DEFAULT_MAC_QUOTA,
        );
        assert!(sw.from_remote(&frame(A, B, 60), Location::Peer(3), t));
        assert_eq!(
            sw.from_local(&frame(B, A, 60), t + Duration::from_secs(1)),
            Egress::Unicast(Location::Peer(3))
        );
        sw.tick(t + Duration::from_secs(3));
        assert_eq!(
            sw.from_local(&frame(B, A, 60), t + Duration::from_secs(3)),
            Egress::Flood
        );
        assert_eq!(sw.counters.expired, 2); // B (remote) and A (local, seen at t+1)
    }
}
