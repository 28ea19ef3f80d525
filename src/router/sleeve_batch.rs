//! Packing frames into sealed sleeve datagrams, Weave-sleeve style: frames
//! read from the local device in one burst and bound for the same peer
//! share one datagram (one header, one AEAD tag, one syscall slot) as long
//! as the datagram stays within the peer's limit. Sealed datagrams leave in
//! sendmmsg batches. Buffers come from a pool and go back to it: nothing is
//! allocated per frame.

use crate::api::l2_status::BatchCounters;
use crate::datapath::batch::BATCH;
use crate::datapath::underlay::Underlay;
use crate::noise::Session;
use crate::wire::sleeve;
use std::net::SocketAddr;
use std::sync::Arc;

/// A datagram being filled for one peer.
struct Pending {
    peer: usize,
    session: Arc<Session>,
    to: SocketAddr,
    /// Largest UDP payload allowed towards this peer.
    limit: usize,
    buf: Box<[u8]>,
    /// Plaintext bytes (records) written after the sleeve header.
    plain_len: usize,
    frames: u64,
}

/// Per-burst packer of sleeve datagrams.
pub struct SleeveBatcher {
    pending: Vec<Pending>,
    /// Sealed datagrams waiting for sendmmsg: buffer, length, destination, peer.
    sealed: Vec<Queued>,
    pool: Vec<Box<[u8]>>,
    buf_len: usize,
    vni: u32,
    /// Packing and sending counters, for status.
    pub counters: BatchCounters,
    /// Datagrams that could not be sealed or sent.
    pub send_errors: u64,
    /// Peers whose datagram the kernel refused with EMSGSIZE (the path
    /// MTU shrank): the router restarts their path-MTU search.
    pub too_big_peers: Vec<usize>,
    /// The lane sealed datagrams carry (the worker's number).
    lane: u8,
}

impl SleeveBatcher {
    /// A packer whose datagrams are at most `max_datagram` bytes (the
    /// largest limit any peer can have: the local underlay's UDP payload).
    pub fn new(max_datagram: usize, vni: u32) -> SleeveBatcher {
        SleeveBatcher {
            pending: Vec::with_capacity(BATCH),
            sealed: Vec::with_capacity(BATCH),
            pool: Vec::new(),
            buf_len: max_datagram,
            vni,
            counters: BatchCounters::default(),
            send_errors: 0,
            too_big_peers: Vec::new(),
            lane: 0,
        }
    }

    /// Seals in `lane` from now on (a worker's number: the receiver keeps
    /// each lane on one of its workers).
    pub fn set_lane(&mut self, lane: u8) {
        self.lane = lane;
    }

    fn take_buf(&mut self) -> Box<[u8]> {
        self.pool
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buf_len].into_boxed_slice())
    }

    /// The UDP payload a datagram carrying one frame of `overlay_mtu`
    /// payload bytes (+ `l2_header` Ethernet bytes) needs: the packing limit.
    pub fn limit_for(overlay_mtu: u16, l2_header: usize) -> usize {
        usize::from(overlay_mtu)
            + l2_header
            + sleeve::HEADER_LEN
            + sleeve::RECORD_OVERHEAD
            + sleeve::TAG_LEN
    }

    /// Adds `frame` for `peer`. `limit` is the largest UDP payload towards
    /// that peer. Returns false when the frame cannot fit even alone
    /// (the caller counts the drop). A full datagram is sealed and queued
    /// first; a full send queue is flushed to `fd`.
    pub fn push(
        &mut self,
        underlay: &mut dyn Underlay,
        peer: usize,
        session: &Arc<Session>,
        to: SocketAddr,
        limit: usize,
        frame: &[u8],
    ) -> bool {
        let record_len = sleeve::RECORD_OVERHEAD + frame.len();
        let limit = limit.min(self.buf_len);
        if sleeve::HEADER_LEN + record_len + sleeve::TAG_LEN > limit {
            return false;
        }
        let idx = match self.pending.iter().position(|p| p.peer == peer) {
            Some(i)
                if !Arc::ptr_eq(&self.pending[i].session, session)
                    || self.pending[i].to != to
                    || sleeve::HEADER_LEN
                        + self.pending[i].plain_len
                        + record_len
                        + sleeve::TAG_LEN
                        > limit =>
            {
                // Full, or the session changed under it: seal what is there.
                let p = self.pending.swap_remove(i);
                self.seal(underlay, p);
                None
            }
            found => found,
        };
        let idx = match idx {
            Some(i) => i,
            None => {
                if self.pending.len() >= BATCH {
                    self.flush(underlay);
                }
                let buf = self.take_buf();
                self.pending.push(Pending {
                    peer,
                    session: session.clone(),
                    to,
                    limit,
                    buf,
                    plain_len: 0,
                    frames: 0,
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[idx];
        let start = sleeve::HEADER_LEN + p.plain_len;
        let Some(out) = p.buf.get_mut(start..start + record_len) else {
            return false;
        };
        if sleeve::emit_record(out, self.vni, frame).is_none() {
            return false;
        }
        p.plain_len += record_len;
        p.frames += 1;
        true
    }

    fn seal(&mut self, underlay: &mut dyn Underlay, mut p: Pending) {
        match p.session.seal_in_lane(
            self.lane,
            sleeve::MessageType::Data,
            &mut p.buf,
            p.plain_len,
        ) {
            Ok(len) if len <= p.limit => {
                self.counters.sealed_datagrams += 1;
                self.counters.sealed_frames += p.frames;
                self.counters.largest_datagram = self.counters.largest_datagram.max(len as u64);
                if self.sealed.len() >= BATCH {
                    self.send_sealed(underlay);
                }
                self.sealed.push((p.buf, len, p.to, p.peer));
            }
            _ => {
                self.send_errors += 1;
                self.pool.push(p.buf);
            }
        }
    }

    fn send_sealed(&mut self, underlay: &mut dyn Underlay) {
        send_by_destination(
            underlay,
            &self.sealed,
            &mut self.counters,
            &mut self.send_errors,
            &mut self.too_big_peers,
        );
        for (b, _, _, _) in self.sealed.drain(..) {
            self.pool.push(b);
        }
    }

    /// Seals every datagram being filled and sends all of them.
    pub fn flush(&mut self, underlay: &mut dyn Underlay) {
        while let Some(p) = self.pending.pop() {
            self.seal(underlay, p);
        }
        self.send_sealed(underlay);
    }
}

/// A datagram waiting to be sent: buffer, length, destination, and the
/// peer (connection token) it is for.
pub type Queued = (Box<[u8]>, usize, SocketAddr, usize);

/// Sends queued datagrams with one send per destination, each keeping its
/// datagrams in order (the driver turns equal-size runs into one UDP GSO
/// send). Counts into `counters` and `send_errors`; peers whose datagram
/// the kernel refused as too big go to `too_big` once.
pub fn send_by_destination(
    underlay: &mut dyn Underlay,
    queued: &[Queued],
    counters: &mut BatchCounters,
    send_errors: &mut u64,
    too_big: &mut Vec<usize>,
) {
    if queued.is_empty() {
        return;
    }
    let mut done = [false; BATCH];
    for first in 0..queued.len().min(BATCH) {
        if done[first] {
            continue;
        }
        let (_, _, to, peer) = queued[first];
        let mut parts: [&[u8]; BATCH] = [&[]; BATCH];
        let mut n = 0;
        for (k, (b, len, t, _)) in queued.iter().enumerate().take(BATCH).skip(first) {
            if *t == to && !done[k] {
                done[k] = true;
                parts[n] = &b[..*len];
                n += 1;
            }
        }
        let report = underlay.send_batch(&parts[..n], to);
        if report.too_big && !too_big.contains(&peer) {
            too_big.push(peer);
        }
        counters.sendmmsg_calls += report.calls as u64;
        counters.sendmmsg_datagrams += report.sent as u64;
        counters.gso_sends += report.gso_sends as u64;
        counters.gso_datagrams += report.gso_datagrams as u64;
        *send_errors += report.failed as u64;
    }
    underlay.flush();
}
