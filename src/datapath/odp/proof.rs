//! Sans-IO per-connection proof that fastdp works: heartbeats sent through
//! the VXLAN vport, sized so the outer datagram is exactly the verified
//! path MTU (never more than the interface MTU), must be acknowledged (the
//! peer reports them over the control connection). Until then, or after
//! missed heartbeats, the connection stays on / moves to the userspace
//! path with a reason; fastdp is retried periodically.

use crate::wire::overhead::{self, Framing};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Bytes the VXLAN vport puts in front of the inner Ethernet frame towards
/// `peer`: outer IP (20 for IPv4, 40 for IPv6) + UDP 8 + VXLAN 8, i.e. 36
/// or 56 (the inner Ethernet header is part of the frame).
pub fn vxlan_outer_overhead(peer: IpAddr) -> usize {
    usize::from(overhead::datagram_overhead(
        Framing::PlainVxlan,
        peer.is_ipv6(),
    ))
}

/// Timing of the proof.
#[derive(Debug, Clone, Copy)]
pub struct ProofConfig {
    /// Interval between heartbeats.
    pub interval: Duration,
    /// Consecutive unacknowledged heartbeats that fail the connection.
    pub max_missed: u32,
    /// After a failure, how long to wait before proving fastdp again.
    pub retry_after: Duration,
}

impl Default for ProofConfig {
    fn default() -> Self {
        ProofConfig {
            interval: Duration::from_millis(500),
            max_missed: 4,
            retry_after: Duration::from_secs(60),
        }
    }
}

/// Which path a connection uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathState {
    /// Heartbeats sent, none acknowledged yet: traffic on the userspace path.
    Proving,
    /// Heartbeats acknowledged: traffic on fastdp.
    Fastdp,
    /// Heartbeats missed: traffic on the userspace path until `retry_at`.
    Userspace {
        /// Why fastdp was given up (shown in `weft status`).
        reason: String,
        /// When to try fastdp again.
        retry_at: Instant,
    },
}

/// A heartbeat to send now: the inner Ethernet frame length and its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sequence number carried in the heartbeat (echoed in the ack).
    pub sequence: u64,
    /// Length of the inner Ethernet frame, so the outer datagram is the path MTU.
    pub frame_len: usize,
    /// Length of the outer IP datagram the vport makes of it.
    pub datagram_len: usize,
}

/// The proof state of one connection.
#[derive(Debug)]
pub struct Proof {
    config: ProofConfig,
    state: PathState,
    path_mtu: usize,
    /// Outer IP + UDP + VXLAN bytes ([`vxlan_outer_overhead`]).
    outer_overhead: usize,
    next_sequence: u64,
    last_acked: u64,
    next_send: Instant,
}

impl Proof {
    /// Starts proving a connection whose verified path MTU is `path_mtu`
    /// (already capped by the interface MTU: a heartbeat is never larger);
    /// `outer_overhead` is what the vport adds in front of a frame on this
    /// path ([`vxlan_outer_overhead`]: 36 over IPv4, 56 over IPv6).
    pub fn new(config: ProofConfig, path_mtu: usize, outer_overhead: usize, now: Instant) -> Proof {
        Proof {
            config,
            state: PathState::Proving,
            path_mtu,
            outer_overhead,
            next_sequence: 1,
            last_acked: 0,
            next_send: now,
        }
    }

    /// Current state.
    pub fn state(&self) -> &PathState {
        &self.state
    }

    /// Whether traffic may use fastdp now.
    pub fn is_fastdp(&self) -> bool {
        self.state == PathState::Fastdp
    }

    /// The path MTU changed (PMTU search): heartbeats follow it, and the
    /// connection must prove the new size again.
    pub fn set_path_mtu(&mut self, path_mtu: usize, now: Instant) {
        if path_mtu != self.path_mtu {
            self.path_mtu = path_mtu;
            if self.state == PathState::Fastdp {
                self.state = PathState::Proving;
                self.last_acked = self.next_sequence.saturating_sub(1);
                self.next_send = now;
            }
        }
    }

    /// Advances time: returns a heartbeat to send, if one is due. Also
    /// moves the connection to userspace when too many heartbeats went
    /// unacknowledged, and back to proving when the retry time comes.
    pub fn poll(&mut self, now: Instant) -> Option<Heartbeat> {
        if let PathState::Userspace { retry_at, .. } = &self.state {
            if now < *retry_at {
                return None;
            }
            self.state = PathState::Proving;
            self.last_acked = self.next_sequence.saturating_sub(1);
            self.next_send = now;
        }
        if now < self.next_send {
            return None;
        }
        let outstanding = self
            .next_sequence
            .saturating_sub(1)
            .saturating_sub(self.last_acked);
        if outstanding >= u64::from(self.config.max_missed) {
            let frame_len = self.frame_len();
            self.state = PathState::Userspace {
                reason: format!(
                    "{outstanding} fastdp heartbeats of {} bytes (frame {frame_len}) not acknowledged: the VXLAN path drops them (MTU or firewall?)",
                    self.path_mtu
                ),
                retry_at: now + self.config.retry_after,
            };
            return None;
        }
        let frame_len = self.frame_len();
        let heartbeat = Heartbeat {
            sequence: self.next_sequence,
            frame_len,
            datagram_len: frame_len + self.outer_overhead,
        };
        self.next_sequence += 1;
        self.next_send = now + self.config.interval;
        Some(heartbeat)
    }

    /// The peer acknowledged heartbeat `sequence` (over the control connection).
    pub fn on_ack(&mut self, sequence: u64) {
        if sequence >= self.next_sequence || sequence <= self.last_acked {
            return; // never sent, or stale
        }
        self.last_acked = sequence;
        if self.state == PathState::Proving {
            self.state = PathState::Fastdp;
        }
    }

    /// Gives fastdp up now, without sending (e.g. the next heartbeat would
    /// not fit the underlay interface's MTU): userspace until the retry.
    pub fn fail(&mut self, reason: String, now: Instant) {
        self.state = PathState::Userspace {
            reason,
            retry_at: now + self.config.retry_after,
        };
    }

    /// The path MTU heartbeats are sized to (whole outer IP datagram).
    pub fn path_mtu(&self) -> usize {
        self.path_mtu
    }

    fn frame_len(&self) -> usize {
        self.path_mtu.saturating_sub(self.outer_overhead).max(60)
    }
}

/// Destination MAC of a fastdp heartbeat frame (locally administered;
/// weft never installs a flow for it, so every heartbeat is a miss at the
/// receiver and reaches weft).
pub const HEARTBEAT_DST: [u8; 6] = [0x02, 0x77, 0x65, 0x66, 0x74, 0x01];
/// Source MAC of a fastdp heartbeat frame.
pub const HEARTBEAT_SRC: [u8; 6] = [0x02, 0x77, 0x65, 0x66, 0x74, 0x02];
/// Ethertype of a heartbeat: IEEE 802 local experimental ethertype 1.
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;
const HEARTBEAT_MAGIC: &[u8; 8] = b"weftfdhb";

/// Builds the heartbeat frame for `heartbeat` into `buf` (resized to
/// exactly `heartbeat.frame_len`, padded with zeros).
pub fn build_heartbeat_frame(heartbeat: &Heartbeat, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&HEARTBEAT_DST);
    buf.extend_from_slice(&HEARTBEAT_SRC);
    buf.extend_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
    buf.extend_from_slice(HEARTBEAT_MAGIC);
    buf.extend_from_slice(&heartbeat.sequence.to_be_bytes());
    buf.resize(heartbeat.frame_len.max(buf.len()), 0);
}

/// The sequence number of a heartbeat frame, or `None` if `frame` is not
/// one. Total.
pub fn parse_heartbeat_frame(frame: &[u8]) -> Option<u64> {
    if frame.get(..6)? != HEARTBEAT_DST || frame.get(6..12)? != HEARTBEAT_SRC {
        return None;
    }
    if frame.get(12..14)? != HEARTBEAT_ETHERTYPE.to_be_bytes()
        || frame.get(14..22)? != HEARTBEAT_MAGIC
    {
        return None;
    }
    Some(u64::from_be_bytes(frame.get(22..30)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: usize = 36;

    fn config() -> ProofConfig {
        ProofConfig {
            interval: Duration::from_millis(100),
            max_missed: 3,
            retry_after: Duration::from_secs(10),
        }
    }

    #[test]
    fn heartbeat_fills_the_path_mtu_exactly() {
        let now = Instant::now();
        let mut p = Proof::new(config(), 1500, V4, now);
        let hb = p.poll(now).unwrap();
        // Ethernet frame 1464 + VXLAN 8 + UDP 8 + IPv4 20 = 1500.
        assert_eq!(hb.frame_len + 8 + 8 + 20, 1500);
        assert_eq!(hb.datagram_len, 1500);
        assert!(
            p.poll(now).is_none(),
            "next heartbeat waits for the interval"
        );
    }

    #[test]
    fn ack_moves_to_fastdp_and_missed_heartbeats_move_back_with_a_reason() {
        let t0 = Instant::now();
        let mut p = Proof::new(config(), 1500, V4, t0);
        let hb = p.poll(t0).unwrap();
        assert_eq!(p.state(), &PathState::Proving);
        p.on_ack(hb.sequence);
        assert!(p.is_fastdp());
        let mut t = t0;
        for _ in 0..3 {
            t += Duration::from_millis(100);
            assert!(p.poll(t).is_some());
        }
        t += Duration::from_millis(100);
        assert!(p.poll(t).is_none());
        match p.state() {
            PathState::Userspace { reason, .. } => {
                assert!(reason.contains("3 fastdp heartbeats of 1500 bytes"))
            }
            other => panic!("expected userspace, got {other:?}"),
        }
        // Retry after retry_after: proving again, and an ack restores fastdp.
        assert!(p.poll(t + Duration::from_secs(5)).is_none());
        let hb = p.poll(t + Duration::from_secs(10)).unwrap();
        assert_eq!(p.state(), &PathState::Proving);
        p.on_ack(hb.sequence);
        assert!(p.is_fastdp());
    }

    #[test]
    fn stale_or_unsent_acks_do_nothing_and_mtu_change_reproves() {
        let t0 = Instant::now();
        let mut p = Proof::new(config(), 1500, V4, t0);
        p.on_ack(1);
        assert_eq!(p.state(), &PathState::Proving);
        let hb = p.poll(t0).unwrap();
        p.on_ack(hb.sequence + 5);
        assert_eq!(p.state(), &PathState::Proving);
        p.on_ack(hb.sequence);
        assert!(p.is_fastdp());
        p.set_path_mtu(1400, t0);
        assert_eq!(p.state(), &PathState::Proving);
        assert_eq!(p.poll(t0).unwrap().frame_len, 1400 - 36);
    }

    #[test]
    fn heartbeat_frames_round_trip_and_parsing_is_total() {
        let mut buf = Vec::new();
        build_heartbeat_frame(
            &Heartbeat {
                sequence: 77,
                frame_len: 1464,
                datagram_len: 1500,
            },
            &mut buf,
        );
        assert_eq!(buf.len(), 1464);
        assert_eq!(parse_heartbeat_frame(&buf), Some(77));
        for n in 0..40 {
            assert_eq!(parse_heartbeat_frame(&buf[..n.min(29)]), None);
        }
        let mut other = buf.clone();
        other[13] ^= 1;
        assert_eq!(parse_heartbeat_frame(&other), None);
    }

    #[test]
    fn fail_moves_to_userspace_until_the_retry() {
        let t0 = Instant::now();
        let mut p = Proof::new(config(), 1500, V4, t0);
        p.fail("does not fit".into(), t0);
        assert!(
            matches!(p.state(), PathState::Userspace { reason, .. } if reason == "does not fit")
        );
        assert!(p.poll(t0 + Duration::from_secs(1)).is_none());
        assert!(p.poll(t0 + Duration::from_secs(10)).is_some());
    }

    #[test]
    fn ipv6_heartbeats_leave_room_for_the_40_byte_header() {
        let v6 = vxlan_outer_overhead("2001:2::2".parse().unwrap());
        assert_eq!(v6, 56);
        assert_eq!(vxlan_outer_overhead("198.18.0.2".parse().unwrap()), V4);
        let now = Instant::now();
        let hb = Proof::new(config(), 1500, v6, now).poll(now).unwrap();
        // Ethernet frame 1444 + VXLAN 8 + UDP 8 + IPv6 40 = 1500.
        assert_eq!((hb.frame_len, hb.datagram_len), (1444, 1500));
    }
}
