//! Plaintext mode's sending side: frames from the local bridge, each in
//! its own standard RFC 7348 VXLAN datagram (one frame per datagram, as
//! the RFC requires), queued per burst and sent one batch per destination
//! (equal-size runs, a TCP burst, in one UDP GSO send). Buffers come from
//! a pool: nothing is allocated per frame.

use super::sleeve_batch::{send_by_destination, Queued};
use crate::api::l2_status::BatchCounters;
use crate::datapath::batch::BATCH;
use crate::datapath::underlay::Underlay;
use crate::wire::vxlan;
use std::net::SocketAddr;

/// Per-burst queue of VXLAN datagrams.
pub struct VxlanBatcher {
    queued: Vec<Queued>,
    pool: Vec<Box<[u8]>>,
    buf_len: usize,
    vni: u32,
    /// Sending counters, for status.
    pub counters: BatchCounters,
    /// Datagrams that could not be sent.
    pub send_errors: u64,
    /// Plaintext mode has no path-MTU search: refusals are only counted.
    too_big: Vec<usize>,
}

impl VxlanBatcher {
    /// A queue for frames of up to `max_frame` bytes, sent with `vni`.
    pub fn new(max_frame: usize, vni: u32) -> VxlanBatcher {
        VxlanBatcher {
            queued: Vec::with_capacity(BATCH),
            pool: Vec::new(),
            buf_len: vxlan::HEADER_LEN + max_frame,
            vni,
            counters: BatchCounters::default(),
            send_errors: 0,
            too_big: Vec::new(),
        }
    }

    /// Queues `frame` for `to` (a full queue is sent first). False when
    /// the frame is longer than the queue's frames may be.
    pub fn push(&mut self, underlay: &mut dyn Underlay, frame: &[u8], to: SocketAddr) -> bool {
        let len = vxlan::HEADER_LEN + frame.len();
        if len > self.buf_len {
            return false;
        }
        if self.queued.len() >= BATCH {
            self.flush(underlay);
        }
        let mut buf = self
            .pool
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buf_len].into_boxed_slice());
        vxlan::Packet::new_unchecked(&mut buf[..vxlan::HEADER_LEN]).set_header(self.vni);
        buf[vxlan::HEADER_LEN..len].copy_from_slice(frame);
        self.queued.push((buf, len, to, 0));
        true
    }

    /// Sends everything queued.
    pub fn flush(&mut self, underlay: &mut dyn Underlay) {
        send_by_destination(
            underlay,
            &self.queued,
            &mut self.counters,
            &mut self.send_errors,
            &mut self.too_big,
        );
        self.too_big.clear();
        self.counters.sealed_datagrams += self.queued.len() as u64;
        self.counters.sealed_frames += self.queued.len() as u64;
        for (b, _, _, _) in self.queued.drain(..) {
            self.pool.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::underlay::UdpUnderlay;

    #[test]
    fn frames_leave_as_standard_vxlan_in_order() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let mut u = UdpUnderlay::new(tx);
        let mut b = VxlanBatcher::new(1514, 42);
        let to = rx.local_addr().unwrap();
        for i in 0..5u8 {
            assert!(b.push(&mut u, &[i; 100], to));
        }
        assert!(!b.push(&mut u, &[0; 1515], to), "longer than a frame");
        b.flush(&mut u);
        let mut buf = [0u8; 200];
        for i in 0..5u8 {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, 108);
            let p = vxlan::Packet::new_checked(&buf[..n]).unwrap();
            assert_eq!(vxlan::Repr::parse(&p).unwrap().vni, 42);
            assert_eq!(buf[8], i);
        }
        assert_eq!(b.counters.sealed_datagrams, 5);
    }
}
