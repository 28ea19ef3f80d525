//! Reconnect backoff: 2 s, then x1.5 each failure, capped at 6 minutes.

use std::time::{Duration, Instant};

/// First retry delay.
pub const INITIAL: Duration = Duration::from_secs(2);
/// Longest delay between attempts.
pub const CAP: Duration = Duration::from_secs(6 * 60);
/// A connection that lasted this long resets the backoff when it is lost;
/// one lost sooner counts as a failed attempt.
pub const STABLE: Duration = Duration::from_secs(60);

/// When to try a configured peer next.
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
    next_attempt: Instant,
}

impl Backoff {
    /// Ready to try now.
    pub fn new(now: Instant) -> Self {
        Backoff {
            delay: INITIAL,
            next_attempt: now,
        }
    }

    /// Whether an attempt is due.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_attempt
    }

    /// When the next attempt is due.
    pub fn next_attempt(&self) -> Instant {
        self.next_attempt
    }

    /// Records a failed attempt (or a lost connection) and schedules the next.
    pub fn failed(&mut self, now: Instant) {
        self.next_attempt = now + self.delay;
        self.delay = (self.delay.mul_f64(1.5)).min(CAP);
    }

    /// A connection worked: the next loss retries after the initial delay.
    pub fn succeeded(&mut self) {
        self.delay = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let t0 = Instant::now();
        let mut b = Backoff::new(t0);
        assert!(b.due(t0));
        let mut now = t0;
        let mut delays = vec![];
        for _ in 0..20 {
            b.failed(now);
            delays.push(b.next_attempt() - now);
            now = b.next_attempt();
        }
        assert_eq!(delays[0], Duration::from_secs(2));
        assert_eq!(delays[1], Duration::from_secs(3));
        assert_eq!(delays[2], Duration::from_millis(4500));
        assert_eq!(*delays.last().unwrap(), CAP);
        assert!(delays.iter().all(|d| *d <= CAP));
        b.succeeded();
        b.failed(now);
        assert_eq!(b.next_attempt() - now, INITIAL);
    }
}
