//! Path-MTU search, sans-IO.
//!
//! Binary search for the largest IP datagram that reaches the peer, between
//! a safe floor (576 for IPv4, 1280 for IPv6: every path must carry those)
//! and the underlay interface MTU. Probes are sealed datagrams with DF set,
//! padded to the size under test, and never larger than the interface MTU;
//! the peer acknowledges each over the control connection. A timeout or a
//! local EMSGSIZE (the kernel learned a smaller path from ICMP) shrinks the
//! range. This is what Weave's 60000-byte probe should have been.

use std::time::{Duration, Instant};

/// How long to wait for a probe's acknowledgement.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// Attempts per size before it counts as too big (one loss is not a verdict).
pub const PROBE_TRIES: u32 = 2;
/// Re-run the search this often, to notice a path that grew or shrank.
pub const RESEARCH_INTERVAL: Duration = Duration::from_secs(600);

/// The IPv4 floor (RFC 791).
pub const FLOOR_IPV4: u16 = 576;
/// The IPv6 floor (RFC 8200).
pub const FLOOR_IPV6: u16 = 1280;

/// A probe that is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Identifies the acknowledgement.
    pub id: u32,
    /// Whole IP datagram size being tested.
    pub size: u16,
    sent_at: Instant,
    tries: u32,
}

/// The search state for one peer.
#[derive(Debug, Clone)]
pub struct PmtuSearch {
    floor: u16,
    ceiling: u16,
    lo: u16,
    hi: u16,
    verified: Option<u16>,
    probe: Option<Probe>,
    next_id: u32,
    searching: bool,
    next_search: Option<Instant>,
}

impl PmtuSearch {
    /// A search between `floor` and the interface MTU `ceiling` (IP sizes).
    pub fn new(floor: u16, ceiling: u16) -> Self {
        let floor = floor.min(ceiling);
        PmtuSearch {
            floor,
            ceiling,
            lo: floor,
            hi: ceiling,
            verified: None,
            probe: None,
            next_id: 1,
            searching: false,
            next_search: None,
        }
    }

    /// The largest size the peer acknowledged in the last finished search.
    pub fn verified(&self) -> Option<u16> {
        self.verified
    }

    /// The interface MTU (upper bound of every probe).
    pub fn ceiling(&self) -> u16 {
        self.ceiling
    }

    /// Whether a search is running.
    pub fn searching(&self) -> bool {
        self.searching
    }

    /// Starts (or restarts) a search now.
    pub fn start(&mut self) {
        self.lo = self.floor;
        self.hi = self.ceiling;
        self.searching = true;
        self.probe = None;
    }

    fn candidate(&self) -> u16 {
        // Try the ceiling first: on most paths it works and one probe suffices.
        if self.lo == self.floor && self.hi == self.ceiling {
            self.hi
        } else {
            self.lo + (self.hi - self.lo).div_ceil(2)
        }
    }

    fn finish(&mut self, now: Instant) -> Option<u16> {
        self.searching = false;
        self.probe = None;
        self.next_search = Some(now + RESEARCH_INTERVAL);
        let changed = self.verified != Some(self.lo);
        self.verified = Some(self.lo);
        changed.then_some(self.lo)
    }

    /// When `poll` next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match (&self.probe, self.searching) {
            (Some(p), _) => Some(p.sent_at + PROBE_TIMEOUT),
            (None, true) => None, // a probe is due now; the caller polls anyway
            (None, false) => self.next_search,
        }
    }

    /// Advances timers. Returns a probe to send (its size and id), and a
    /// newly verified path MTU if the search just finished with a change.
    pub fn poll(&mut self, now: Instant) -> (Option<Probe>, Option<u16>) {
        if !self.searching {
            if self.next_search.is_some_and(|t| now >= t) {
                self.start();
            } else {
                return (None, None);
            }
        }
        if let Some(p) = self.probe {
            if now.duration_since(p.sent_at) < PROBE_TIMEOUT {
                return (None, None);
            }
            if p.tries < PROBE_TRIES {
                let retry = Probe {
                    id: self.take_id(),
                    size: p.size,
                    sent_at: now,
                    tries: p.tries + 1,
                };
                self.probe = Some(retry);
                return (Some(retry), None);
            }
            // Lost every time: too big for the path.
            self.hi = p.size - 1;
            self.probe = None;
        }
        if self.lo >= self.hi {
            return (None, self.finish(now));
        }
        let probe = Probe {
            id: self.take_id(),
            size: self.candidate(),
            sent_at: now,
            tries: 1,
        };
        self.probe = Some(probe);
        (Some(probe), None)
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// The peer acknowledged probe `id`. Returns a newly verified path MTU
    /// if this finished the search with a change.
    pub fn on_ack(&mut self, id: u32, now: Instant) -> Option<u16> {
        let p = self.probe.filter(|p| p.id == id)?;
        self.lo = self.lo.max(p.size);
        self.probe = None;
        if self.lo >= self.hi {
            return self.finish(now);
        }
        None
    }

    /// Sending probe `id` failed locally with EMSGSIZE: the kernel knows the
    /// path is smaller. Shrinks at once instead of waiting for a timeout.
    pub fn on_too_big(&mut self, id: u32) {
        if let Some(p) = self.probe.filter(|p| p.id == id) {
            self.hi = p.size.saturating_sub(1).max(self.lo);
            self.probe = None;
        }
    }

    /// Data to the peer hit EMSGSIZE: the path shrank. Search again now.
    pub fn path_shrank(&mut self) {
        if !self.searching {
            self.start();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a path that carries at most `path` bytes.
    /// `emsgsize` models a kernel that already knows the path MTU.
    fn run(path: u16, ceiling: u16, emsgsize: bool) -> (u16, Vec<u16>) {
        let mut s = PmtuSearch::new(FLOOR_IPV4, ceiling);
        s.start();
        let mut now = Instant::now();
        let mut sizes = vec![];
        for _ in 0..200 {
            let (probe, done) = s.poll(now);
            if let Some(v) = done {
                return (v, sizes);
            }
            if let Some(p) = probe {
                assert!(p.size <= ceiling, "probe above the interface MTU");
                assert!(p.size >= FLOOR_IPV4);
                sizes.push(p.size);
                if p.size <= path {
                    if let Some(v) = s.on_ack(p.id, now) {
                        return (v, sizes);
                    }
                } else if emsgsize {
                    s.on_too_big(p.id);
                }
            }
            now += Duration::from_millis(100);
            if !s.searching() {
                return (s.verified().unwrap(), sizes);
            }
        }
        panic!("search did not finish");
    }

    #[test]
    fn full_path_needs_one_probe() {
        let (v, sizes) = run(1500, 1500, false);
        assert_eq!(v, 1500);
        assert_eq!(sizes, vec![1500]);
    }

    #[test]
    fn finds_smaller_paths_exactly() {
        for path in [576, 577, 1000, 1280, 1400, 1450, 1499] {
            for emsg in [false, true] {
                let (v, sizes) = run(path, 1500, emsg);
                assert_eq!(v, path, "path {path} emsgsize {emsg}");
                assert!(sizes.iter().all(|s| *s <= 1500));
            }
        }
        let (v, _) = run(8000, 9000, true);
        assert_eq!(v, 8000);
    }

    #[test]
    fn a_single_loss_is_retried() {
        let mut s = PmtuSearch::new(FLOOR_IPV4, 1500);
        s.start();
        let t0 = Instant::now();
        let (p1, _) = s.poll(t0);
        let p1 = p1.unwrap();
        let t1 = t0 + PROBE_TIMEOUT + Duration::from_millis(1);
        let (p2, _) = s.poll(t1);
        let p2 = p2.unwrap();
        assert_eq!(p2.size, p1.size, "same size retried");
        assert_eq!(s.on_ack(p2.id, t1), Some(1500));
    }

    #[test]
    fn stale_ack_is_ignored_and_research_happens() {
        let mut s = PmtuSearch::new(FLOOR_IPV4, 1500);
        s.start();
        let t0 = Instant::now();
        let p = s.poll(t0).0.unwrap();
        assert_eq!(s.on_ack(p.id + 100, t0), None);
        assert_eq!(s.on_ack(p.id, t0), Some(1500));
        assert!(!s.searching());
        assert!(s.poll(t0 + RESEARCH_INTERVAL).0.is_some());
    }
}
