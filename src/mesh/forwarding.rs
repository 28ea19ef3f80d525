//! The forwarding table: what the datapath reads per packet.
//!
//! `mesh::Node` builds a new immutable [`ForwardingTable`] whenever routes,
//! claims or connections change and publishes it through an
//! [`arc_swap::ArcSwap`]: each datapath worker holds a
//! [`ForwardingReader`] and loads the current table without a lock and
//! without contending with the other workers (arc-swap's loads are a few
//! atomic operations, no writes to shared cache lines in the common case).
//! A lookup allocates nothing: longest-prefix match is one hash probe per
//! distinct prefix length in use (usually one or two).

use super::claims::{left_aligned, mask, Claim, IpPrefix};
use super::peer::{ConnectionId, PeerId};
use crate::wire::ethernet::MacAddr;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Where a packet for some overlay address goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// This host owns the address.
    Local,
    /// Another peer owns it; send to `next_hop` over connection `conn`
    /// (sealed for `peer`: a relay forwards what it cannot read).
    Peer {
        /// The owner: the end-to-end destination.
        peer: PeerId,
        /// The neighbour to hand it to (`peer` itself when direct).
        next_hop: PeerId,
        /// The driver's handle of the connection to `next_hop`.
        conn: ConnectionId,
    },
    /// A live peer owns it but no working path reaches it now.
    Unreachable {
        /// The owner.
        peer: PeerId,
    },
}

/// One next hop of a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The neighbour.
    pub peer: PeerId,
    /// The driver's handle of the connection to it.
    pub conn: ConnectionId,
}

/// Prefixes of one family, for longest-prefix match.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PrefixTable {
    /// Prefix lengths in use, longest first.
    lens: Vec<u8>,
    /// (length, left-aligned network bits) -> destination.
    entries: HashMap<(u8, u128), Destination>,
}

impl PrefixTable {
    fn insert(&mut self, prefix: IpPrefix, destination: Destination) {
        self.entries
            .insert((prefix.len(), prefix.bits()), destination);
        if let Err(at) = self.lens.binary_search_by(|l| prefix.len().cmp(l)) {
            self.lens.insert(at, prefix.len());
        }
    }

    fn lookup(&self, bits: u128) -> Option<&Destination> {
        self.lens
            .iter()
            .find_map(|&l| self.entries.get(&(l, bits & mask(l))))
    }
}

/// An immutable snapshot: overlay address -> destination peer -> next hop
/// -> connection, plus broadcast next hops per source.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ForwardingTable {
    generation: u64,
    v4: PrefixTable,
    v6: PrefixTable,
    macs: HashMap<MacAddr, Destination>,
    peers: HashMap<PeerId, Destination>,
    broadcast: HashMap<PeerId, Vec<NextHop>>,
}

impl ForwardingTable {
    /// Builds a table. `claims` are the accepted claims with where their
    /// owner is; `peers` where each live peer is; `broadcast` the next hops
    /// per broadcast source (this host included).
    pub fn build(
        generation: u64,
        claims: impl IntoIterator<Item = (Claim, Destination)>,
        peers: HashMap<PeerId, Destination>,
        broadcast: HashMap<PeerId, Vec<NextHop>>,
    ) -> ForwardingTable {
        let mut table = ForwardingTable {
            generation,
            peers,
            broadcast,
            ..ForwardingTable::default()
        };
        for (claim, destination) in claims {
            match claim {
                Claim::Ip(p) if p.is_ipv4() => table.v4.insert(p, destination),
                Claim::Ip(p) => table.v6.insert(p, destination),
                Claim::Mac(m) => {
                    table.macs.insert(m, destination);
                }
            }
        }
        table
    }

    /// Increases on every published change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether two tables forward identically (generation aside).
    pub fn same_forwarding(&self, other: &ForwardingTable) -> bool {
        self.v4 == other.v4
            && self.v6 == other.v6
            && self.macs == other.macs
            && self.peers == other.peers
            && self.broadcast == other.broadcast
    }

    /// Longest-prefix match of an overlay IP address; `None` if no peer
    /// claims it.
    #[inline]
    pub fn lookup_ip(&self, addr: IpAddr) -> Option<&Destination> {
        let bits = left_aligned(&addr);
        if addr.is_ipv4() {
            self.v4.lookup(bits)
        } else {
            self.v6.lookup(bits)
        }
    }

    /// The owner of a MAC address, if one claims it.
    #[inline]
    pub fn lookup_mac(&self, mac: &MacAddr) -> Option<&Destination> {
        self.macs.get(mac)
    }

    /// Where a live peer is.
    #[inline]
    pub fn peer(&self, peer: &PeerId) -> Option<&Destination> {
        self.peers.get(peer)
    }

    /// Where a broadcast from `source` that arrived here goes next (for
    /// this host's own broadcasts, pass its own identity). Empty when it
    /// stops here.
    #[inline]
    pub fn broadcast_next_hops(&self, source: &PeerId) -> &[NextHop] {
        self.broadcast.get(source).map_or(&[], |v| v.as_slice())
    }
}

/// A datapath worker's handle on the current table.
#[derive(Debug, Clone)]
pub struct ForwardingReader(Arc<ArcSwap<ForwardingTable>>);

impl ForwardingReader {
    pub(crate) fn new(shared: Arc<ArcSwap<ForwardingTable>>) -> ForwardingReader {
        ForwardingReader(shared)
    }

    /// A reader of a table that stays empty (plaintext mode: no mesh).
    pub fn empty() -> ForwardingReader {
        ForwardingReader(Arc::new(ArcSwap::from_pointee(ForwardingTable::default())))
    }

    /// The current table; hold the guard for a batch of packets, not
    /// longer (a held guard keeps an old table alive).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<ForwardingTable>> {
        self.0.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_match() {
        let peer = |b: u8| Destination::Peer {
            peer: PeerId([b; 32]),
            next_hop: PeerId([b; 32]),
            conn: ConnectionId(u64::from(b)),
        };
        let claims = [
            (Claim::Ip("10.40.0.0/16".parse().unwrap()), peer(1)),
            (Claim::Ip("10.40.7.0/24".parse().unwrap()), peer(2)),
            (Claim::Ip("10.40.7.9".parse().unwrap()), Destination::Local),
            (Claim::Ip("fd00::/64".parse().unwrap()), peer(3)),
            (Claim::Mac(MacAddr([2, 0, 0, 0, 0, 1])), peer(4)),
        ];
        let t = ForwardingTable::build(1, claims, HashMap::new(), HashMap::new());
        let at = |s: &str| t.lookup_ip(s.parse().unwrap()).copied();
        assert_eq!(at("10.40.1.1"), Some(peer(1)));
        assert_eq!(at("10.40.7.1"), Some(peer(2)));
        assert_eq!(at("10.40.7.9"), Some(Destination::Local));
        assert_eq!(at("10.41.0.1"), None);
        assert_eq!(at("fd00::5"), Some(peer(3)));
        assert_eq!(at("fd01::5"), None);
        assert_eq!(t.lookup_mac(&MacAddr([2, 0, 0, 0, 0, 1])), Some(&peer(4)));
        assert!(t.broadcast_next_hops(&PeerId([9; 32])).is_empty());
    }

    #[test]
    fn readers_see_published_tables() {
        let shared = Arc::new(ArcSwap::from_pointee(ForwardingTable::default()));
        let reader = ForwardingReader::new(shared.clone());
        let worker = std::thread::spawn({
            let reader = reader.clone();
            move || {
                while reader.load().generation() < 5 {
                    std::thread::yield_now();
                }
            }
        });
        for g in 1..=5 {
            shared.store(Arc::new(ForwardingTable::build(
                g,
                [],
                HashMap::new(),
                HashMap::new(),
            )));
        }
        worker.join().unwrap();
        assert_eq!(reader.load().generation(), 5);
    }
}
