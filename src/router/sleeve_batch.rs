//! Packing frames into sealed sleeve datagrams, Weave-sleeve style: frames
//! read from the local device in one burst and bound for the same peer
//! share one datagram (one header, one AEAD tag, one syscall slot) as long
//! as the datagram stays within the peer's limit. Sealed datagrams leave in
//! sendmmsg batches. Buffers come from a pool and go back to it: nothing is
//! allocated per frame.

use crate::api::l2_status::BatchCounters;
use crate::datapath::batch::{self, BATCH};
use crate::datapath::underlay::Underlay;
use crate::noise::Session;
use crate::wire::sleeve;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
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
    sealed: Vec<(Box<[u8]>, usize, SocketAddr, usize)>,
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
    /// Whether UDP GSO works on this socket (cleared on the first refusal).
    gso: bool,
}

/// How many datagrams from `start` form a UDP GSO run: same destination,
/// every one but the last exactly as long as the first, at most 64
/// segments and 64 KB in all.
fn gso_run(sealed: &[(Box<[u8]>, usize, SocketAddr, usize)], start: usize) -> usize {
    let (_, seg, to, _) = sealed[start];
    let mut n = 1;
    let mut total = seg;
    while start + n < sealed.len() && n < crate::datapath::offload::MAX_GSO_SEGMENTS {
        let (_, len, next_to, _) = sealed[start + n];
        // The previous one must be full-size for this one to join.
        if next_to != to || len > seg || total + len > crate::datapath::offload::MAX_GSO_BYTES {
            break;
        }
        total += len;
        n += 1;
        if len < seg {
            break; // a short datagram ends the run
        }
    }
    n
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
            gso: true,
        }
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
        underlay: &mut Underlay,
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

    fn seal(&mut self, underlay: &mut Underlay, mut p: Pending) {
        match p
            .session
            .seal(sleeve::MessageType::Data, &mut p.buf, p.plain_len)
        {
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

    fn send_sealed(&mut self, underlay: &mut Underlay) {
        if self.sealed.is_empty() {
            return;
        }
        let sealed = &self.sealed;
        let too_big = &mut self.too_big_peers;
        let mut on_error = |i: usize, errno: i32| {
            if errno == libc::EMSGSIZE {
                if let Some((_, _, _, peer)) = sealed.get(i) {
                    if !too_big.contains(peer) {
                        too_big.push(*peer);
                    }
                }
            }
        };
        let (sent, calls) = match underlay {
            Underlay::Udp(socket) => {
                let fd = socket.as_raw_fd();
                let (mut sent, mut calls) = (0u64, 0u64);
                // Runs of equal-size datagrams to one peer (a TCP burst cut
                // into full segments) leave in one UDP GSO sendmsg; the rest,
                // in order, in sendmmsg batches.
                let mut singles_from = 0;
                let mut i = 0;
                while i < sealed.len() {
                    let run = if self.gso { gso_run(sealed, i) } else { 1 };
                    if run < 2 {
                        i += 1;
                        continue;
                    }
                    if singles_from < i {
                        let (s, c) = batch::send_slices(
                            fd,
                            sealed[singles_from..i]
                                .iter()
                                .map(|(b, len, to, _)| (&b[..*len], *to)),
                            |k, errno| on_error(singles_from + k, errno),
                        );
                        sent += s;
                        calls += c;
                    }
                    let (_, seg_len, to, _) = sealed[i];
                    let mut parts: [&[u8]; crate::datapath::offload::MAX_GSO_SEGMENTS] =
                        [&[]; crate::datapath::offload::MAX_GSO_SEGMENTS];
                    for (k, (b, len, _, _)) in sealed[i..i + run].iter().enumerate() {
                        parts[k] = &b[..*len];
                    }
                    match crate::datapath::offload::send_gso_slices(
                        fd,
                        &parts[..run],
                        seg_len as u16,
                        to,
                    ) {
                        Ok(_) => {
                            sent += run as u64;
                            self.counters.gso_sends += 1;
                            self.counters.gso_datagrams += run as u64;
                            singles_from = i + run;
                        }
                        Err(e) if crate::datapath::offload::gso_unsupported(&e) => {
                            tracing::info!("UDP GSO refused ({e}); sending datagrams one by one with sendmmsg from now on");
                            self.gso = false;
                            // Leave the run to the sendmmsg path below.
                            singles_from = singles_from.min(i);
                        }
                        Err(e) => {
                            on_error(i, e.raw_os_error().unwrap_or(0));
                            singles_from = i + run;
                        }
                    }
                    i += run;
                }
                if singles_from < sealed.len() {
                    let (s, c) = batch::send_slices(
                        fd,
                        sealed[singles_from..]
                            .iter()
                            .map(|(b, len, to, _)| (&b[..*len], *to)),
                        |k, errno| on_error(singles_from + k, errno),
                    );
                    sent += s;
                    calls += c;
                }
                (sent, calls)
            }
            // AF_XDP queues frames itself and kicks the kernel in batches.
            other => {
                let mut sent = 0;
                for (i, (b, len, to, _)) in sealed.iter().enumerate() {
                    match other.send_to(&b[..*len], *to) {
                        Ok(_) => sent += 1,
                        Err(e) => on_error(i, e.raw_os_error().unwrap_or(0)),
                    }
                }
                other.flush();
                (sent, 0)
            }
        };
        self.counters.sendmmsg_calls += calls;
        self.counters.sendmmsg_datagrams += sent;
        self.send_errors += self.sealed.len() as u64 - sent;
        for (b, _, _, _) in self.sealed.drain(..) {
            self.pool.push(b);
        }
    }

    /// Seals every datagram being filled and sends all of them.
    pub fn flush(&mut self, underlay: &mut Underlay) {
        while let Some(p) = self.pending.pop() {
            self.seal(underlay, p);
        }
        self.send_sealed(underlay);
    }
}
