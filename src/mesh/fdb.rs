//! Sans-IO MAC learning for bridge (L2) mode: which side of the overlay a
//! MAC address lives on, learned from the source address of every frame,
//! with idle aging (Weave Net uses 10 minutes, as do most switches).
//!
//! The table never touches a clock: every call takes `now`. Entries older
//! than the age are treated as absent on lookup and removed by [`Fdb::expire`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A 48-bit Ethernet MAC address.
pub use crate::wire::ethernet::MacAddr as Mac;

/// Default idle age of a learned MAC address.
pub const DEFAULT_MAC_AGE: Duration = Duration::from_secs(600);

/// Upper bound on learned addresses, so a flood of random source MACs from
/// one peer cannot grow memory without limit. When it is reached, the
/// remote location with the most addresses loses its oldest one; if only
/// this host's bridge is left to take from, new addresses are not learned
/// (their frames are flooded, which is still correct).
pub const MAX_ENTRIES: usize = 65536;

/// Default bound on the addresses learned behind one peer or one static
/// VTEP. A peer that sends frames from more source MACs than this evicts
/// its own oldest addresses, never anybody else's: one misbehaving (or
/// compromised) host cannot fill the table and push out the others. 4096
/// is far above what one host's containers and VMs use, and 16 such peers
/// still fit in [`MAX_ENTRIES`].
pub const DEFAULT_MAC_QUOTA: usize = 4096;

/// Where frames for a MAC address go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// Behind the local bridge (learned from a frame read from the TAP).
    Local,
    /// Behind a weft peer; the value is the router's id for that connection.
    Peer(usize),
    /// Behind a static VXLAN tunnel endpoint that speaks no weft protocol.
    Vtep(SocketAddr),
}

impl Location {
    /// Peers and static VTEPs are held to the quota; the local bridge is not.
    fn is_remote(&self) -> bool {
        !matches!(self, Location::Local)
    }
}

/// What a call to [`Fdb::learn`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A MAC address not in the table (or expired) was added.
    New,
    /// The address was known at another location and moved.
    Moved,
    /// The address was already known there; its idle timer restarted.
    Refreshed,
    /// The table is full; the address was not learned.
    Full,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    location: Location,
    last_seen: Instant,
    /// When (in learning order) the address arrived at this location: the
    /// quota evicts a location's addresses oldest first.
    seq: u64,
}

/// The addresses learned behind one remote location, oldest first.
#[derive(Debug, Default)]
struct Held {
    /// Entries whose location is this one.
    count: usize,
    /// (address, seq) in learning order; an item whose entry has since
    /// moved, expired or been relearned is stale and skipped.
    order: VecDeque<(Mac, u64)>,
}

/// The forwarding database: MAC address -> location, with idle aging and
/// a per-location quota.
#[derive(Debug)]
pub struct Fdb {
    entries: HashMap<Mac, Entry>,
    held: HashMap<Location, Held>,
    age: Duration,
    quota: usize,
    next_seq: u64,
    /// Addresses that moved to another location (a VM or container migrated).
    pub moves: u64,
    /// Addresses evicted because their location was over its quota (or
    /// had the most addresses when the table was full).
    pub quota_evictions: u64,
}

impl Fdb {
    /// An empty table whose entries expire after `age` without a frame,
    /// with the default per-location quota.
    pub fn new(age: Duration) -> Fdb {
        Fdb::with_quota(age, DEFAULT_MAC_QUOTA)
    }

    /// An empty table holding at most `quota` addresses (at least 1)
    /// behind any one peer or VTEP.
    pub fn with_quota(age: Duration, quota: usize) -> Fdb {
        Fdb {
            entries: HashMap::new(),
            held: HashMap::new(),
            age,
            quota: quota.max(1),
            next_seq: 0,
            moves: 0,
            quota_evictions: 0,
        }
    }

    /// The idle age.
    pub fn age(&self) -> Duration {
        self.age
    }

    /// The per-location quota.
    pub fn quota(&self) -> usize {
        self.quota
    }

    /// Records that a frame with source `mac` arrived from `location`.
    /// Group addresses (broadcast, multicast) are never sources and are ignored.
    pub fn learn(&mut self, mac: Mac, location: Location, now: Instant) -> Learned {
        if mac.is_multicast() || mac == Mac::default() {
            return Learned::Refreshed;
        }
        let age = self.age;
        if let Some(e) = self.entries.get_mut(&mac) {
            let expired = now.saturating_duration_since(e.last_seen) >= age;
            let moved = e.location != location;
            e.last_seen = now;
            if moved {
                let old = std::mem::replace(&mut e.location, location);
                self.release(old);
                self.hold(mac, location);
            }
            return match (expired, moved) {
                (true, _) => Learned::New,
                (false, true) => {
                    self.moves += 1;
                    Learned::Moved
                }
                (false, false) => Learned::Refreshed,
            };
        }
        if location.is_remote()
            && self
                .held
                .get(&location)
                .is_some_and(|h| h.count >= self.quota)
        {
            self.evict_oldest(location);
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.expire(now);
            if self.entries.len() >= MAX_ENTRIES {
                // Take from the remote location holding the most addresses
                // (the one filling the table), unless that is the newcomer
                // itself with no more than the others.
                let biggest = self
                    .held
                    .iter()
                    .filter(|(_, h)| h.count > 0)
                    .max_by_key(|(_, h)| h.count)
                    .map(|(l, _)| *l);
                match biggest {
                    Some(l) => self.evict_oldest(l),
                    None => return Learned::Full,
                }
                if self.entries.len() >= MAX_ENTRIES {
                    return Learned::Full;
                }
            }
        }
        self.entries.insert(
            mac,
            Entry {
                location,
                last_seen: now,
                seq: 0,
            },
        );
        self.hold(mac, location);
        Learned::New
    }

    /// Counts `mac` (whose entry is at `location`) against the location.
    fn hold(&mut self, mac: Mac, location: Location) {
        self.next_seq += 1;
        let seq = self.next_seq;
        if let Some(e) = self.entries.get_mut(&mac) {
            e.seq = seq;
        }
        if location.is_remote() {
            let h = self.held.entry(location).or_default();
            h.count += 1;
            h.order.push_back((mac, seq));
            // Stale items pile up when addresses move away; keep the queue
            // within a small factor of the live count.
            if h.order.len() > 2 * h.count + 64 {
                let entries = &self.entries;
                h.order.retain(|(m, s)| {
                    entries
                        .get(m)
                        .is_some_and(|e| e.seq == *s && e.location == location)
                });
            }
        }
    }

    /// An entry left `location`.
    fn release(&mut self, location: Location) {
        if let Some(h) = self.held.get_mut(&location) {
            h.count = h.count.saturating_sub(1);
            if h.count == 0 {
                self.held.remove(&location);
            }
        }
    }

    /// Removes the oldest address learned behind `location`.
    fn evict_oldest(&mut self, location: Location) {
        while let Some((mac, seq)) = self
            .held
            .get_mut(&location)
            .and_then(|h| h.order.pop_front())
        {
            let live = self
                .entries
                .get(&mac)
                .is_some_and(|e| e.seq == seq && e.location == location);
            if live {
                self.entries.remove(&mac);
                self.release(location);
                self.quota_evictions += 1;
                return;
            }
        }
    }

    /// Where `mac` lives, if it was seen within the age.
    pub fn lookup(&self, mac: &Mac, now: Instant) -> Option<Location> {
        let e = self.entries.get(mac)?;
        (now.saturating_duration_since(e.last_seen) < self.age).then_some(e.location)
    }

    /// Removes entries idle for the age or longer; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let age = self.age;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < age);
        if self.entries.len() != before {
            self.recount();
        }
        before - self.entries.len()
    }

    /// Rebuilds the per-location counts and queues from the entries.
    fn recount(&mut self) {
        let mut live: Vec<(u64, Mac, Location)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.location.is_remote())
            .map(|(m, e)| (e.seq, *m, e.location))
            .collect();
        live.sort_unstable_by_key(|(seq, _, _)| *seq);
        self.held.clear();
        for (seq, mac, location) in live {
            let h = self.held.entry(location).or_default();
            h.count += 1;
            h.order.push_back((mac, seq));
        }
    }

    /// Forgets everything learned behind `location` (a peer went away).
    pub fn forget(&mut self, location: Location) {
        self.entries.retain(|_, e| e.location != location);
        self.held.remove(&location);
    }

    /// Addresses currently counted against `location`.
    pub fn held_by(&self, location: Location) -> usize {
        self.held.get(&location).map_or(0, |h| h.count)
    }

    /// Number of entries (expired ones included until [`Fdb::expire`] runs).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Live entries, for status output.
    pub fn entries(&self, now: Instant) -> impl Iterator<Item = (Mac, Location)> + '_ {
        let age = self.age;
        self.entries
            .iter()
            .filter(move |(_, e)| now.saturating_duration_since(e.last_seen) < age)
            .map(|(m, e)| (*m, e.location))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x02, 0, 0, 0, 0, 0xa]);
    const B: Mac = Mac([0x02, 0, 0, 0, 0, 0xb]);

    #[test]
    fn learn_lookup_move_and_age() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(Duration::from_secs(10));
        assert_eq!(fdb.lookup(&A, t0), None);
        assert_eq!(fdb.learn(A, Location::Local, t0), Learned::New);
        assert_eq!(fdb.learn(A, Location::Local, t0), Learned::Refreshed);
        assert_eq!(fdb.lookup(&A, t0), Some(Location::Local));
        // The container moved to another host: relearned on its first frame.
        assert_eq!(
            fdb.learn(A, Location::Peer(7), t0 + Duration::from_secs(1)),
            Learned::Moved
        );
        assert_eq!(fdb.moves, 1);
        assert_eq!(
            fdb.lookup(&A, t0 + Duration::from_secs(2)),
            Some(Location::Peer(7))
        );
        // Idle for the age: gone.
        assert_eq!(fdb.lookup(&A, t0 + Duration::from_secs(11)), None);
        fdb.learn(B, Location::Local, t0 + Duration::from_secs(5));
        assert_eq!(fdb.expire(t0 + Duration::from_secs(11)), 1);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.expire(t0 + Duration::from_secs(15)), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn group_addresses_are_never_learned() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(DEFAULT_MAC_AGE);
        fdb.learn(Mac([0xff; 6]), Location::Local, t0);
        fdb.learn(Mac([0x01, 0, 0x5e, 0, 0, 1]), Location::Local, t0);
        fdb.learn(Mac([0; 6]), Location::Local, t0);
        assert!(fdb.is_empty());
        assert!(Mac([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(!A.is_multicast());
    }

    #[test]
    fn forget_a_peer() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(DEFAULT_MAC_AGE);
        fdb.learn(A, Location::Peer(1), t0);
        fdb.learn(B, Location::Peer(2), t0);
        fdb.forget(Location::Peer(1));
        assert_eq!(fdb.lookup(&A, t0), None);
        assert_eq!(fdb.lookup(&B, t0), Some(Location::Peer(2)));
        assert_eq!(A.to_string(), "02:00:00:00:00:0a");
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(DEFAULT_MAC_AGE);
        for i in 0..MAX_ENTRIES as u32 {
            let b = i.to_be_bytes();
            fdb.learn(Mac([0x02, 0, b[0], b[1], b[2], b[3]]), Location::Local, t0);
        }
        assert_eq!(
            fdb.learn(Mac([0x02, 1, 0, 0, 0, 0]), Location::Local, t0),
            Learned::Full
        );
        assert_eq!(fdb.len(), MAX_ENTRIES);
    }
    #[test]
    fn a_peer_over_its_quota_evicts_its_own_oldest_addresses() {
        let t0 = Instant::now();
        let mut fdb = Fdb::with_quota(DEFAULT_MAC_AGE, 100);
        fdb.learn(A, Location::Peer(1), t0);
        fdb.learn(B, Location::Local, t0);
        // Peer 2 floods 1000 random source addresses.
        for i in 0..1000u32 {
            let b = i.to_be_bytes();
            fdb.learn(
                Mac([0x02, 9, b[0], b[1], b[2], b[3]]),
                Location::Peer(2),
                t0,
            );
        }
        assert_eq!(fdb.held_by(Location::Peer(2)), 100);
        assert_eq!(fdb.quota_evictions, 900);
        // The others keep theirs; peer 2 keeps its newest 100.
        assert_eq!(fdb.lookup(&A, t0), Some(Location::Peer(1)));
        assert_eq!(fdb.lookup(&B, t0), Some(Location::Local));
        assert_eq!(fdb.lookup(&Mac([0x02, 9, 0, 0, 0, 0]), t0), None);
        assert_eq!(
            fdb.lookup(&Mac([0x02, 9, 0, 0, 0x03, 0xe7]), t0),
            Some(Location::Peer(2))
        );
        assert_eq!(fdb.len(), 102);
    }

    #[test]
    fn moves_and_expiry_keep_the_counts_right() {
        let t0 = Instant::now();
        let mut fdb = Fdb::with_quota(Duration::from_secs(10), 2);
        fdb.learn(A, Location::Peer(1), t0);
        fdb.learn(B, Location::Peer(1), t0);
        assert_eq!(fdb.held_by(Location::Peer(1)), 2);
        // A moves to peer 2: peer 1 has room again, nothing evicted.
        fdb.learn(A, Location::Peer(2), t0);
        assert_eq!(fdb.held_by(Location::Peer(1)), 1);
        assert_eq!(fdb.held_by(Location::Peer(2)), 1);
        let c = Mac([0x02, 0, 0, 0, 0, 0xc]);
        fdb.learn(c, Location::Peer(1), t0);
        assert_eq!(fdb.quota_evictions, 0);
        assert_eq!(fdb.lookup(&B, t0), Some(Location::Peer(1)));
        // A third address on peer 1 evicts its oldest live one (B), not A.
        let d = Mac([0x02, 0, 0, 0, 0, 0xd]);
        fdb.learn(d, Location::Peer(1), t0);
        assert_eq!(fdb.lookup(&B, t0), None);
        assert_eq!(fdb.lookup(&A, t0), Some(Location::Peer(2)));
        assert_eq!(fdb.quota_evictions, 1);
        // Everything of peer 1 ages out; the counts follow.
        fdb.learn(A, Location::Peer(2), t0 + Duration::from_secs(8));
        fdb.expire(t0 + Duration::from_secs(11));
        assert_eq!(fdb.held_by(Location::Peer(1)), 0);
        assert_eq!(fdb.held_by(Location::Peer(2)), 1);
        fdb.forget(Location::Peer(2));
        assert_eq!(fdb.held_by(Location::Peer(2)), 0);
        assert!(fdb.is_empty());
    }

    #[test]
    fn a_full_table_takes_from_the_biggest_remote_location() {
        let t0 = Instant::now();
        let mut fdb = Fdb::with_quota(DEFAULT_MAC_AGE, MAX_ENTRIES);
        for i in 0..MAX_ENTRIES as u32 - 1 {
            let b = i.to_be_bytes();
            fdb.learn(
                Mac([0x02, 7, b[0], b[1], b[2], b[3]]),
                Location::Peer(5),
                t0,
            );
        }
        fdb.learn(A, Location::Peer(1), t0);
        assert_eq!(fdb.len(), MAX_ENTRIES);
        // The local bridge's new address is learned; peer 5 pays for it.
        assert_eq!(fdb.learn(B, Location::Local, t0), Learned::New);
        assert_eq!(fdb.held_by(Location::Peer(5)), MAX_ENTRIES - 2);
        assert_eq!(fdb.lookup(&A, t0), Some(Location::Peer(1)));
        assert_eq!(fdb.len(), MAX_ENTRIES);
    }
}
