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

/// Up to [`BATCH`] received datagrams and their senders. Each slot is its
/// own buffer so a caller can swap one out (see [`RecvBatch::swap_slot`])
/// and process the datagram in its own buffer without copying it.
pub struct RecvBatch {
    slots: Vec<Box<[u8]>>,
    slot_len: usize,
    lens: [usize; BATCH],
    from: Box<[libc::sockaddr_storage; BATCH]>,
    count: usize,
}

impl RecvBatch {
    /// Room for [`BATCH`] datagrams of up to `max_datagram` bytes each.
    pub fn new(max_datagram: usize) -> RecvBatch {
        RecvBatch {
            slots: (0..BATCH)
                .map(|_| vec![0u8; max_datagram].into_boxed_slice())
                .collect(),
            slot_len: max_datagram,
            lens: [0; BATCH],
            // SAFETY: all-zero sockaddr_storage values are valid.
            from: Box::new(unsafe { std::mem::zeroed() }),
            count: 0,
        }
    }

    /// Receives as many datagrams as are queued (at most [`BATCH`]) with one
    /// recvmmsg call. `WouldBlock` when none is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iov: [MaybeUninit<libc::iovec>; BATCH] = [const { MaybeUninit::uninit() }; BATCH];
        // SAFETY: mmsghdr is plain old data; zero is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            let slot = &mut self.slots[i];
            iov[i].write(libc::iovec {
                iov_base: slot.as_mut_ptr() as *mut libc::c_void,
                iov_len: slot.len(),
            });
            msgs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &mut self.from[i] as *mut _ as *mut libc::c_void;
            msgs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every header points at live buffers owned by self for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            self.lens[i] = (m.msg_len as usize).min(self.slots[i].len());
        }
        self.count = n;
        Ok(n)
    }

    /// Fills the batch from a driver that hands over one datagram at a
    /// time (AF_XDP): `recv` writes one into the buffer it gets and says
    /// how long it is and who sent it; it stops at the first error
    /// (WouldBlock: nothing more queued). Returns the count.
    pub fn fill(
        &mut self,
        mut recv: impl FnMut(&mut [u8]) -> io::Result<(usize, SocketAddr)>,
    ) -> usize {
        self.count = 0;
        while self.count < BATCH {
            let i = self.count;
            match recv(&mut self.slots[i]) {
                Ok((n, from)) => {
                    self.lens[i] = n.min(self.slot_len);
                    self.from[i] = to_storage(from).0;
                    self.count += 1;
                }
                Err(_) => break,
            }
        }
        self.count
    }

    /// How many datagrams the last [`RecvBatch::recv`] returned.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive returned nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last receive (mutable, for in-place decryption)
    /// and its sender; `None` past the end or for an unknown address family.
    pub fn get_mut(&mut self, i: usize) -> Option<(&mut [u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let from = from_storage(&self.from[i])?;
        let len = self.lens[i];
        Some((&mut self.slots[i][..len], from))
    }

    /// Datagram `i`'s length and sender, without borrowing its bytes.
    pub fn meta(&self, i: usize) -> Option<(usize, SocketAddr)> {
        if i >= self.count {
            return None;
        }
        Some((self.lens[i], from_storage(&self.from[i])?))
    }

    /// Exchanges slot `i` with `buffer` (which must be at least as long as
    /// a slot, or nothing happens and false is returned). The datagram
    /// then lives in `buffer[..len]`; swap back after processing it.
    pub fn swap_slot(&mut self, i: usize, buffer: &mut Box<[u8]>) -> bool {
        if i >= BATCH || buffer.len() < self.slot_len {
            return false;
        }
        std::mem::swap(&mut self.slots[i], buffer);
        true
    }
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
