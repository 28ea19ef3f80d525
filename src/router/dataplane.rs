//! What the control thread shares with the datapath workers: the state a
//! worker needs to seal and open without asking (published as one
//! immutable [`DataPlane`] that workers load without a lock), the
//! counters workers add to, and the hand-offs of everything a worker does
//! not handle itself (heartbeats, relays, broadcasts, end-to-end traffic).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::api::l2_status::BatchCounters;
use crate::api::DropCounters;
use crate::mesh::PeerId;
use crate::noise::Session;

/// Traffic counters of one connection (or one end-to-end peer), added to
/// by every worker and read by the control thread for status.
#[derive(Debug, Default)]
pub struct PathCounters {
    /// Bytes of inner packets sent.
    pub tx_bytes: AtomicU64,
    /// Inner packets sent.
    pub tx_packets: AtomicU64,
    /// Bytes of inner packets received.
    pub rx_bytes: AtomicU64,
    /// Inner packets received.
    pub rx_packets: AtomicU64,
}

impl PathCounters {
    /// Adds sent traffic.
    pub fn sent(&self, packets: u64, bytes: u64) {
        if packets > 0 {
            self.tx_packets.fetch_add(packets, Ordering::Relaxed);
            self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Adds received traffic.
    pub fn received(&self, packets: u64, bytes: u64) {
        if packets > 0 {
            self.rx_packets.fetch_add(packets, Ordering::Relaxed);
            self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// (tx bytes, tx packets, rx bytes, rx packets).
    pub fn read(&self) -> (u64, u64, u64, u64) {
        (
            self.tx_bytes.load(Ordering::Relaxed),
            self.tx_packets.load(Ordering::Relaxed),
            self.rx_bytes.load(Ordering::Relaxed),
            self.rx_packets.load(Ordering::Relaxed),
        )
    }
}

/// Where a worker sends frames for a directly connected peer.
#[derive(Debug, Clone)]
pub struct LinkPath {
    /// The session to seal with.
    pub session: Arc<Session>,
    /// The peer's UDP endpoint.
    pub endpoint: SocketAddr,
    /// The largest inner packet (L3) or Ethernet payload (L2) the peer's
    /// verified path carries.
    pub payload_mtu: u16,
    /// The connection's counters.
    pub counters: Arc<PathCounters>,
}

/// Who a data session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOwner {
    /// The link of a direct control connection (its token).
    Link(usize),
    /// An end-to-end session with a peer reached through relays.
    E2e(PeerId),
}

/// A session a worker may open datagrams with.
#[derive(Debug, Clone)]
pub struct RecvSession {
    /// The keys.
    pub session: Arc<Session>,
    /// Whose it is.
    pub owner: SessionOwner,
    /// The peer that sends on it (inner sources must be its addresses).
    pub peer: Option<PeerId>,
    /// Where learned MACs live (bridge mode): the connection's token.
    pub location: usize,
    /// Where its traffic is counted.
    pub counters: Arc<PathCounters>,
    /// The peer's endpoint as the control thread knows it: a datagram
    /// from elsewhere is reported (the peer roamed).
    pub endpoint: Option<SocketAddr>,
    /// A session that is not the one in use yet: its first datagram is
    /// reported so the link switches to it.
    pub report_first: bool,
    /// Bridge mode with a CA: the sender's certificate when it limits the
    /// source MACs the peer may use.
    pub allowed_macs: Option<Arc<crate::identity::Certificate>>,
}

/// Everything a worker needs to move data, as of one moment. Published by
/// the control thread whenever sessions, endpoints or limits change.
#[derive(Debug, Default)]
pub struct DataPlane {
    /// Directly connected peers' sending state, by connection token.
    pub links: HashMap<usize, LinkPath>,
    /// Sessions by the receiver index datagrams carry.
    pub sessions: HashMap<u32, RecvSession>,
}

/// The published [`DataPlane`].
pub type SharedPlane = Arc<ArcSwap<DataPlane>>;

/// What a worker passes to the control thread.
#[derive(Debug)]
pub enum Handoff {
    /// A datagram the worker does not handle: heartbeat, probe, relay,
    /// broadcast, end-to-end, or a session it does not know (yet).
    Datagram {
        /// The datagram as received.
        bytes: Vec<u8>,
        /// Its sender.
        from: SocketAddr,
    },
    /// An IP packet read from the local device for a peer reached through
    /// relays (sealed end to end by the control thread).
    Local(Vec<u8>),
    /// Bridge mode: a frame read from the bridge for a MAC learned behind
    /// a peer reached through relays (its relay location).
    L2Relay {
        /// The MAC-learning location of that peer.
        location: usize,
        /// The frame.
        frame: Vec<u8>,
    },
    /// Bridge mode: a broadcast, multicast or unknown unicast frame from
    /// the bridge, sent along this host's broadcast tree.
    Flood(Vec<u8>),
    /// A datagram authenticated on a session the control thread must hear
    /// of: its first use, or from a new address.
    Authenticated {
        /// The receiver index.
        index: u32,
        /// The sender.
        from: SocketAddr,
        /// Whether it carried the newest counter seen.
        newest: bool,
    },
    /// The kernel refused a datagram to the peer on this connection as
    /// larger than the path.
    TooBig(usize),
}

/// Counters one worker adds to, read by the control thread for status.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Drops, by reason.
    pub drops: DropCounters,
    /// Packing and sending.
    pub batching: BatchCounters,
    /// Plaintext mode's receive drops.
    pub vxlan: crate::api::l2_status::VxlanDrops,
}

/// One worker's view from the control thread.
#[derive(Debug, Default)]
pub struct WorkerShared {
    /// Published every status interval by the worker.
    pub counters: Mutex<WorkerCounters>,
}

/// Set when the process must stop: SIGINT/SIGTERM, or a thread died.
#[derive(Debug, Default)]
pub struct StopFlag(AtomicBool);

impl StopFlag {
    /// Asks every loop to stop.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether stopping was asked for.
    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Adds `b` into `a`, field by field.
pub fn add_drops(a: &mut DropCounters, b: &DropCounters) {
    a.malformed += b.malformed;
    a.unknown_session += b.unknown_session;
    a.replay += b.replay;
    a.authentication += b.authentication;
    a.no_route += b.no_route;
    a.too_big += b.too_big;
    a.bad_record += b.bad_record;
    a.send_errors += b.send_errors;
    a.spoofed_source += b.spoofed_source;
}

/// Adds `b` into `a`, field by field.
pub fn add_batching(a: &mut BatchCounters, b: &BatchCounters) {
    a.sealed_datagrams += b.sealed_datagrams;
    a.sealed_frames += b.sealed_frames;
    a.largest_datagram = a.largest_datagram.max(b.largest_datagram);
    a.sendmmsg_calls += b.sendmmsg_calls;
    a.sendmmsg_datagrams += b.sendmmsg_datagrams;
    a.gso_sends += b.gso_sends;
    a.gso_datagrams += b.gso_datagrams;
}
