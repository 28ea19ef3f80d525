//! Batched datagram I/O on the underlay UDP socket: recvmmsg(2) and
//! sendmmsg(2), up to [`BATCH`] datagrams per system call, into and out of
//! buffers allocated once (no allocation per datagram).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::sockaddr::{from_storage, to_storage};

/// Datagrams per system call (wireguard-go and Tailscale use 64-128).
pub const BATCH: usize = 64;

/// Fixed-size slots in one contiguous allocation.
struct Slots {
    bytes: Box<[u8]>,
    slot_len: usize,
}

impl Slots {
    fn new(slot_len: usize) -> Slots {
        Slots {
            bytes: vec![0u8; slot_len * BATCH].into_boxed_slice(),
            slot_len,
        }
    }

    fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.slot_len;
        &mut self.bytes[start..start + self.slot_len]
    }

    fn slot(&self, i: usize) -> &[u8] {
        let start = i * self.slot_len;
        &self.bytes[start..start + self.slot_len]
    }
}

/// Room for one control message carrying an `int` (UDP_GRO's segment size).
const CONTROL_LEN: usize = 32;

/// What the last receive of a [`RecvBatch`] holds: up to [`BATCH`]
/// messages, each one datagram or, with UDP GRO, a run of datagrams the
/// kernel coalesced (all of one size but the last) that is cut up here.
pub struct RecvBatch {
    slots: Vec<Box<[u8]>>,
    slot_len: usize,
    from: Box<[libc::sockaddr_storage; BATCH]>,
    control: Box<[[u8; CONTROL_LEN]; BATCH]>,
    /// The datagrams: (slot, start, length).
    datagrams: Vec<(usize, usize, usize)>,
    /// Messages that were coalesced runs (UDP GRO), since creation.
    pub coalesced: u64,
    /// Messages asked for per receive: fewer when the kernel coalesces,
    /// so one receive holds about [`TARGET_DATAGRAMS`] datagrams and the
    /// worker gets back to its device (TCP's ACKs) soon.
    vlen: usize,
}

/// About how many datagrams one receive should hold.
const TARGET_DATAGRAMS: usize = 128;

impl RecvBatch {
    /// Room for [`BATCH`] messages of up to `max_message` bytes each (64
    /// KiB for UDP GRO's coalesced runs).
    pub fn new(max_message: usize) -> RecvBatch {
        RecvBatch {
            slots: (0..BATCH)
                .map(|_| vec![0u8; max_message].into_boxed_slice())
                .collect(),
            slot_len: max_message,
            // SAFETY: all-zero sockaddr_storage values are valid.
            from: Box::new(unsafe { std::mem::zeroed() }),
            control: Box::new([[0; CONTROL_LEN]; BATCH]),
            datagrams: Vec::with_capacity(BATCH * 4),
            coalesced: 0,
            vlen: BATCH,
        }
    }

    /// Receives as many messages as are queued (at most [`BATCH`]) with one
    /// recvmmsg call and returns how many datagrams they hold (runs the
    /// kernel coalesced with UDP GRO are cut at their segment size).
    /// `WouldBlock` when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.datagrams.clear();
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: mmsghdr is plain old data; zero is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            let slot = &mut self.slots[i];
            iov[i].write(libc::iovec {
                iov_base: slot.as_mut_ptr() as *mut libc::c_void,
                iov_len: slot.len(),
            });
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_iov = iov[i].as_mut_ptr();
            hdr.msg_iovlen = 1;
            hdr.msg_name = &mut self.from[i] as *mut _ as *mut libc::c_void;
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_control = self.control[i].as_mut_ptr() as *mut libc::c_void;
            hdr.msg_controllen = CONTROL_LEN;
        }
        // SAFETY: every header points at live buffers owned by self for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                self.vlen as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let messages = (n as usize).max(1);
        for (i, m) in msgs.iter().take(n as usize).enumerate() {
            let len = (m.msg_len as usize).min(self.slot_len);
            match gro_segment(&m.msg_hdr) {
                Some(seg) if seg > 0 && len > seg => {
                    self.coalesced += 1;
                    let mut start = 0;
                    while start < len {
                        let l = seg.min(len - start);
                        self.datagrams.push((i, start, l));
                        start += l;
                    }
                }
                _ => self.datagrams.push((i, 0, len)),
            }
        }
        // Datagrams per message this time decide the next receive's size.
        let per_message = self.datagrams.len().div_ceil(messages).max(1);
        self.vlen = (TARGET_DATAGRAMS / per_message).clamp(1, BATCH);
        Ok(self.datagrams.len())
    }

    /// Fills the batch from a driver that hands over one datagram at a
    /// time (AF_XDP): `recv` writes one into the buffer it gets and says
    /// how long it is and who sent it; it stops at the first error
    /// (WouldBlock: nothing more queued). Returns the count.
    pub fn fill(
        &mut self,
        mut recv: impl FnMut(&mut [u8]) -> io::Result<(usize, SocketAddr)>,
    ) -> usize {
        self.datagrams.clear();
        for i in 0..BATCH {
            match recv(&mut self.slots[i]) {
                Ok((n, from)) => {
                    self.from[i] = to_storage(from).0;
                    self.datagrams.push((i, 0, n.min(self.slot_len)));
                }
                Err(_) => break,
            }
        }
        self.datagrams.len()
    }

    /// How many datagrams the last receive returned.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Whether the last receive returned nothing.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Datagram `i` of the last receive (mutable, for in-place decryption)
    /// and its sender; `None` past the end or for an unknown address family.
    pub fn get_mut(&mut self, i: usize) -> Option<(&mut [u8], SocketAddr)> {
        let &(slot, start, len) = self.datagrams.get(i)?;
        let from = from_storage(&self.from[slot])?;
        Some((&mut self.slots[slot][start..start + len], from))
    }
}

/// The segment size of a UDP GRO message (its UDP_GRO control message).
fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled,
    // within msg_controllen; the data of a UDP_GRO message is an int.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                return usize::try_from(v).ok();
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

/// Up to [`BATCH`] datagrams waiting to be sent with one sendmmsg call.
pub struct SendBatch {
    slots: Slots,
    lens: [usize; BATCH],
    to: Box<[(libc::sockaddr_storage, libc::socklen_t); BATCH]>,
    count: usize,
    /// Datagrams handed to the kernel since creation.
    pub sent: u64,
    /// Datagrams the kernel refused (buffer full, EMSGSIZE, unreachable).
    pub failed: u64,
    /// sendmmsg calls made.
    pub calls: u64,
}

impl SendBatch {
    /// Room for [`BATCH`] datagrams of up to `max_datagram` bytes each.
    pub fn new(max_datagram: usize) -> SendBatch {
        SendBatch {
            slots: Slots::new(max_datagram),
            lens: [0; BATCH],
            // SAFETY: all-zero sockaddr_storage values are valid.
            to: Box::new(unsafe { std::mem::zeroed() }),
            count: 0,
            sent: 0,
            failed: 0,
            calls: 0,
        }
    }

    /// Whether every slot is taken (flush before adding more).
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The next free slot to build a datagram in; `None` when full.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        Some(self.slots.slot_mut(self.count))
    }

    /// Queues the datagram built in the slot from [`SendBatch::next_slot`].
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        if self.is_full() {
            return;
        }
        self.lens[self.count] = len.min(self.slots.slot_len);
        self.to[self.count] = to_storage(to);
        self.count += 1;
    }

    /// Copies `datagram` into the next slot and queues it; false when full
    /// or too long.
    pub fn push(&mut self, datagram: &[u8], to: SocketAddr) -> bool {
        let Some(slot) = self.next_slot() else {
            return false;
        };
        let Some(dst) = slot.get_mut(..datagram.len()) else {
            return false;
        };
        dst.copy_from_slice(datagram);
        self.commit(datagram.len(), to);
        true
    }

    /// Queues a copy of the already queued datagram `index` to another
    /// address (flooding one frame to several endpoints); false when full.
    pub fn push_copy_of(&mut self, index: usize, to: SocketAddr) -> bool {
        if index >= self.count || self.is_full() {
            return false;
        }
        let len = self.lens[index];
        let slot_len = self.slots.slot_len;
        let (src, dst) = (index * slot_len, self.count * slot_len);
        self.slots.bytes.copy_within(src..src + len, dst);
        self.commit(len, to);
        true
    }

    /// Sends everything queued with as few sendmmsg calls as the kernel
    /// allows. A datagram the kernel refuses is counted in `failed` and
    /// skipped; the batch is empty afterwards.
    pub fn flush(&mut self, fd: RawFd) {
        let mut start = 0;
        while start < self.count {
            let mut iov: [MaybeUninit<libc::iovec>; BATCH] =
                [const { MaybeUninit::uninit() }; BATCH];
            // SAFETY: mmsghdr is plain old data; zero is valid.
            let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let n = self.count - start;
            for k in 0..n {
                let i = start + k;
                let slot = self.slots.slot(i);
                iov[k].write(libc::iovec {
                    iov_base: slot.as_ptr() as *mut libc::c_void,
                    iov_len: self.lens[i],
                });
                msgs[k].msg_hdr.msg_iov = iov[k].as_mut_ptr();
                msgs[k].msg_hdr.msg_iovlen = 1;
                msgs[k].msg_hdr.msg_name = &mut self.to[i].0 as *mut _ as *mut libc::c_void;
                msgs[k].msg_hdr.msg_namelen = self.to[i].1;
            }
            self.calls += 1;
            // SAFETY: every header points at live buffers owned by self for the call.
            let rc = unsafe {
                libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT)
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first datagram failed: skip it and go on with the rest.
                self.failed += 1;
                start += 1;
            } else {
                self.sent += rc as u64;
                start += (rc as usize).max(1);
                if rc == 0 {
                    self.failed += 1;
                }
            }
        }
        self.count = 0;
    }
}

/// Sends datagrams that live in the caller's own buffers with sendmmsg,
/// [`BATCH`] per call. A datagram the kernel refuses is reported to
/// `on_error` (its index in the iteration, errno) and skipped. Returns
/// (datagrams sent, sendmmsg calls made).
pub fn send_slices<'a>(
    fd: RawFd,
    datagrams: impl Iterator<Item = (&'a [u8], SocketAddr)>,
    mut on_error: impl FnMut(usize, i32),
) -> (u64, u64) {
    let mut sent = 0u64;
    let mut calls = 0u64;
    let mut iov: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    let mut names: [(libc::sockaddr_storage, libc::socklen_t); BATCH] =
        // SAFETY: all-zero sockaddr_storage values are valid.
        unsafe { std::mem::zeroed() };
    let mut datagrams = datagrams.peekable();
    let mut base = 0usize;
    while datagrams.peek().is_some() {
        let mut n = 0;
        while n < BATCH {
            let Some((bytes, to)) = datagrams.next() else {
                break;
            };
            iov[n] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            names[n] = to_storage(to);
            n += 1;
        }
        // SAFETY: mmsghdr is plain old data; zero is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for k in 0..n {
            msgs[k].msg_hdr.msg_iov = &mut iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            msgs[k].msg_hdr.msg_name = &mut names[k].0 as *mut _ as *mut libc::c_void;
            msgs[k].msg_hdr.msg_namelen = names[k].1;
        }
        let mut start = 0;
        while start < n {
            calls += 1;
            // SAFETY: headers point at the caller's slices, alive for the call.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    msgs[start..].as_mut_ptr(),
                    (n - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc <= 0 {
                let e = io::Error::last_os_error();
                if rc < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                on_error(base + start, e.raw_os_error().unwrap_or(0));
                start += 1; // skip the datagram the kernel refused
            } else {
                sent += rc as u64;
                start += rc as usize;
            }
        }
        base += n;
    }
    (sent, calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn send_and_receive_a_batch_on_loopback() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut out = SendBatch::new(2048);
        for i in 0..10u8 {
            assert!(out.push(&[i; 100][..usize::from(i) + 1], to));
        }
        assert_eq!(out.len(), 10);
        out.flush(tx.as_raw_fd());
        assert_eq!((out.sent, out.failed), (10, 0));
        assert!(out.is_empty());
        let mut batch = RecvBatch::new(2048);
        let mut got = 0;
        for _ in 0..100 {
            match batch.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (d, from) = batch.get_mut(i).unwrap();
                        assert_eq!(from, tx.local_addr().unwrap());
                        assert_eq!(d.len(), usize::from(d[0]) + 1);
                        got += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            if got == 10 {
                break;
            }
        }
        assert_eq!(got, 10);
        assert!(batch.get_mut(batch.len()).is_none());
    }

    #[test]
    fn gro_runs_are_cut_into_their_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        crate::datapath::underlay::enable_udp_gro(&rx).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b, c) = ([1u8; 100], [2u8; 100], [3u8; 40]);
        let parts: [&[u8]; 3] = [&a, &b, &c];
        crate::datapath::offload::send_gso_slices(
            tx.as_raw_fd(),
            &parts,
            100,
            rx.local_addr().unwrap(),
        )
        .unwrap();
        let mut batch = RecvBatch::new(65536);
        let mut got = Vec::new();
        for _ in 0..100 {
            match batch.recv(rx.as_raw_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        let (d, _) = batch.get_mut(i).unwrap();
                        got.push((d.len(), d[0]));
                    }
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
            if got.len() >= 3 {
                break;
            }
        }
        assert_eq!(got, vec![(100, 1), (100, 2), (40, 3)]);
        // Over loopback the kernel hands the GSO send over as one run.
        assert_eq!(batch.coalesced, 1);
    }

    #[test]
    fn full_batch_refuses_more() {
        let mut out = SendBatch::new(16);
        for _ in 0..BATCH {
            assert!(out.push(b"x", "127.0.0.1:9".parse().unwrap()));
        }
        assert!(out.is_full());
        assert!(!out.push(b"x", "127.0.0.1:9".parse().unwrap()));
        let mut small = SendBatch::new(4);
        assert!(!small.push(b"too long", "127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["198.18.0.1:4789", "[fd00::1]:6783"] {
            let sa: SocketAddr = a.parse().unwrap();
            assert_eq!(from_storage(&to_storage(sa).0), Some(sa));
        }
    }
}
