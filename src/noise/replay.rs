//! Sliding anti-replay window over 64-bit counters (RFC 6479 style, as in
//! WireGuard): a ring of 64-bit words, so out-of-order packets within the
//! window are accepted once and anything older or repeated is rejected.

/// Words in the bitmap ring: 128 words of window (8192 counters, at least
/// WireGuard's today) plus the one being recycled. Not a power of two, so
/// the index math is a remainder by a constant (a multiply, not a divide).
const WORDS: usize = 129;
const BITS_PER_WORD: u64 = 64;
/// How far behind the newest counter a packet may be and still be accepted.
/// One word of the ring is always being recycled, hence `WORDS - 1`.
pub const WINDOW_SIZE: u64 = (WORDS as u64 - 1) * BITS_PER_WORD;

/// Tracks which counters have been seen.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    bitmap: [u64; WORDS],
    newest: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter from 0 on is fresh.
    pub const fn new() -> Self {
        ReplayWindow {
            bitmap: [0; WORDS],
            newest: 0,
        }
    }

    /// The highest counter accepted so far (0 before any).
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// True when `counter` would be accepted (not seen, not too old).
    /// Does not change the window: use it to drop early, before the AEAD.
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.newest {
            return true;
        }
        if self.newest - counter >= WINDOW_SIZE {
            return false;
        }
        let (word, bit) = Self::position(counter);
        self.bitmap[word] & bit == 0
    }

    /// Marks `counter` as seen if it is acceptable; returns whether it was.
    /// Call only after the packet authenticated, so forged counters cannot
    /// move the window.
    pub fn update(&mut self, counter: u64) -> bool {
        if counter > self.newest {
            let current_block = self.newest / BITS_PER_WORD;
            let new_block = counter / BITS_PER_WORD;
            let advance = (new_block - current_block).min(WORDS as u64);
            for i in 1..=advance {
                self.bitmap[((current_block + i) % WORDS as u64) as usize] = 0;
            }
            self.newest = counter;
        } else if self.newest - counter >= WINDOW_SIZE {
            return false;
        }
        let (word, bit) = Self::position(counter);
        if self.bitmap[word] & bit != 0 {
            return false;
        }
        self.bitmap[word] |= bit;
        true
    }

    #[inline]
    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / BITS_PER_WORD) % WORDS as u64) as usize,
            1u64 << (counter % BITS_PER_WORD),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_replay() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000u64 {
            assert!(w.check(c));
            assert!(w.update(c));
            assert!(!w.update(c), "counter {c} replayed");
        }
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::new();
        assert!(w.update(20_000));
        // Everything within the window behind the newest is accepted once.
        for c in (20_000 - WINDOW_SIZE + 1..20_000).rev() {
            assert!(w.update(c), "counter {c}");
        }
        for c in 20_000 - WINDOW_SIZE + 1..=20_000 {
            assert!(!w.update(c), "counter {c} accepted twice");
        }
        // Too old.
        assert!(!w.check(20_000 - WINDOW_SIZE));
        assert!(!w.update(0));
    }

    #[test]
    fn window_is_at_least_2048() {
        const { assert!(WINDOW_SIZE >= 2048) };
        let mut w = ReplayWindow::new();
        assert!(w.update(3000));
        assert!(w.update(3000 - 2048));
    }

    #[test]
    fn window_is_at_least_8192() {
        const { assert!(WINDOW_SIZE >= 8192) };
        let mut w = ReplayWindow::new();
        assert!(w.update(100_000));
        assert!(w.update(100_000 - 8191));
        assert!(!w.update(100_000 - 8191));
        assert!(!w.update(100_000 - 8192));
        assert!(!w.check(100_000 - WINDOW_SIZE));
        // Around the ring's wrap: every counter of a long in-order run is
        // accepted once and refused the second time, after the ring has
        // wrapped several times.
        let mut w = ReplayWindow::new();
        let run: Vec<u64> = (0..5 * WORDS as u64 * 64).step_by(3).collect();
        for &c in &run {
            assert!(w.update(c), "{c}");
        }
        let newest = *run.last().unwrap();
        let mut refused = 0;
        for &c in run.iter().filter(|&&c| newest - c < WINDOW_SIZE) {
            assert!(!w.update(c), "{c} accepted twice");
            refused += 1;
        }
        assert!(refused > 2700, "{refused}");
        // Counters skipped by the run but inside the window are still fresh.
        assert!(w.update(newest - 1));
        assert!(w.update(newest - WINDOW_SIZE + 1) || (newest - WINDOW_SIZE + 1) % 3 == 0);
    }

    #[test]
    fn big_jump_clears_the_ring() {
        let mut w = ReplayWindow::new();
        for c in 0..200 {
            assert!(w.update(c));
        }
        assert!(w.update(1_000_000));
        // Old bits must not leak into new positions after the jump.
        assert!(w.update(1_000_000 - 64));
        assert!(w.update(1_000_000 - 1));
        assert!(!w.update(199));
    }
}
