//! Receiver indices: the 32-bit number a peer puts in every datagram so
//! this host finds the session that opens it. Each is drawn at random and
//! drawn again while it collides with one in use, so two sessions (links,
//! end-to-end sessions, handshakes in flight) never share one.
//!
//! The router's map from index to session is the authority on which
//! indices are live; [`IndexRegistry`] mirrors it (the router registers
//! every index it installs and releases every one it removes) and adds the
//! indices of handshakes in flight, which the map does not hold yet. Links
//! and the end-to-end manager draw from it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The receiver indices in use on this host. Cloning shares the set.
#[derive(Debug, Clone, Default)]
pub struct IndexRegistry {
    in_use: Arc<Mutex<HashSet<u32>>>,
}

impl IndexRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Draws indices from `draw` until one is not in use, reserves it and
    /// returns it. (With at most a few thousand indices in use among 2^32,
    /// a redraw is rare; the loop ends with probability 1.)
    pub fn allocate_with(&self, mut draw: impl FnMut() -> u32) -> u32 {
        let mut in_use = self.lock();
        loop {
            let index = draw();
            if in_use.insert(index) {
                return index;
            }
        }
    }

    /// Draws a fresh index from the OS random source.
    pub fn allocate(&self) -> u32 {
        self.allocate_with(os_random_u32)
    }

    /// Marks `index` as in use (an index installed from elsewhere); false
    /// when it already was.
    pub fn reserve(&self, index: u32) -> bool {
        self.lock().insert(index)
    }

    /// Returns `index` to the pool: its session was removed, or its
    /// handshake abandoned.
    pub fn release(&self, index: u32) {
        self.lock().remove(&index);
    }

    /// Whether `index` is in use.
    pub fn contains(&self, index: u32) -> bool {
        self.lock().contains(&index)
    }

    /// How many indices are in use.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no index is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        // A panic while holding this lock cannot leave the set half-updated
        // (every operation is one insert or remove), so a poisoned lock is
        // still usable.
        self.in_use.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn os_random_u32() -> u32 {
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the OS random source works");
    u32::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_draws_are_drawn_again() {
        let reg = IndexRegistry::new();
        assert!(reg.reserve(7));
        assert!(reg.reserve(9));
        // The source returns indices in use first; the allocator skips them.
        let mut draws = [7u32, 9, 7, 42, 5].into_iter();
        let got = reg.allocate_with(|| draws.next().unwrap());
        assert_eq!(got, 42);
        assert_eq!(draws.next(), Some(5), "drew exactly until a free index");
        assert!(reg.contains(42));
        // 42 is now taken too.
        let mut draws = [42u32, 9, 11].into_iter();
        assert_eq!(reg.allocate_with(|| draws.next().unwrap()), 11);
        reg.release(42);
        let mut draws = [7u32, 42].into_iter();
        assert_eq!(reg.allocate_with(|| draws.next().unwrap()), 42);
        assert_eq!(reg.len(), 4);
        // Clones share the set.
        let other = reg.clone();
        assert!(!other.reserve(11));
        assert!(reg.allocate() != 0 || reg.len() == 5);
        assert_eq!(reg.len(), 5);
    }
}
