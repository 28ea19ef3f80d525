//! Sans-IO MAC learning for bridge (L2) mode: which side of the overlay a
//! MAC address lives on, learned from the source address of every frame,
//! with idle aging (Weave Net uses 10 minutes, as do most switches).
//!
//! The table never touches a clock: every call takes `now`. Entries older
//! than the age are treated as absent on lookup and removed by [`Fdb::expire`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A 48-bit Ethernet MAC address.
pub use crate::wire::ethernet::MacAddr as Mac;

/// Default idle age of a learned MAC address.
pub const DEFAULT_MAC_AGE: Duration = Duration::from_secs(600);

/// Upper bound on learned addresses, so a flood of random source MACs from
/// one peer cannot grow memory without limit. New addresses beyond it are
/// not learned (their frames are flooded, which is still correct).
pub const MAX_ENTRIES: usize = 65536;

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
}

/// The forwarding database: MAC address -> location, with idle aging.
#[derive(Debug)]
pub struct Fdb {
    entries: HashMap<Mac, Entry>,
    age: Duration,
    /// Addresses that moved to another location (a VM or container migrated).
    pub moves: u64,
}

impl Fdb {
    /// An empty table whose entries expire after `age` without a frame.
    pub fn new(age: Duration) -> Fdb {
        Fdb {
            entries: HashMap::new(),
            age,
            moves: 0,
        }
    }

    /// The idle age.
    pub fn age(&self) -> Duration {
        self.age
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
            e.location = location;
            e.last_seen = now;
            return match (expired, moved) {
                (true, _) => Learned::New,
                (false, true) => {
                    self.moves += 1;
                    Learned::Moved
                }
                (false, false) => Learned::Refreshed,
            };
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.expire(now);
            if self.entries.len() >= MAX_ENTRIES {
                return Learned::Full;
            }
        }
        self.entries.insert(
            mac,
            Entry {
                location,
                last_seen: now,
            },
        );
        Learned::New
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
        before - self.entries.len()
    }

    /// Forgets everything learned behind `location` (a peer went away).
    pub fn forget(&mut self, location: Location) {
        self.entries.retain(|_, e| e.location != location);
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
}
