//! The local device side of the datapath: one batch interface for TUN (IP
//! packets) and TAP (Ethernet frames), in the spirit of wireguard-go's
//! `tun.Device`. A worker reads a batch, routes it, and writes what it
//! received as a batch; segmentation and coalescing offloads (IFF_VNET_HDR)
//! happen inside the driver, so the router never sees a virtio header or a
//! 64 KiB super-packet.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::offload::VNET_HDR_LEN;

/// Bytes kept free in front of every packet of a [`PacketBatch`]: room for
/// the virtio_net header a driver with offloads writes in front of it.
pub const HEADROOM: usize = VNET_HDR_LEN;

/// Packets per batch (wireguard-go and tun-rs use 128).
pub const DEVICE_BATCH: usize = 128;

/// A batch of packets, each in its own buffer behind [`HEADROOM`] bytes.
/// Allocated once per worker and reused: nothing is allocated per packet.
/// Buffers stay `HEADROOM + max_packet` bytes long (allocated zeroed, so
/// untouched pages cost no memory); the packet lengths are kept apart.
/// (`Default` is an empty batch with no room, for swapping out.)
#[derive(Default)]
pub struct PacketBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    count: usize,
    max_packet: usize,
}

impl PacketBatch {
    /// Room for `capacity` packets of up to `max_packet` bytes each.
    pub fn new(capacity: usize, max_packet: usize) -> PacketBatch {
        PacketBatch {
            bufs: (0..capacity)
                .map(|_| vec![0u8; HEADROOM + max_packet])
                .collect(),
            lens: vec![0; capacity],
            count: 0,
            max_packet,
        }
    }

    /// How many packets the batch can hold.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// The largest packet a slot holds.
    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch holds no packet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Free slots.
    pub fn room(&self) -> usize {
        self.bufs.len() - self.count
    }

    /// Forgets every packet (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Packet `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i][HEADROOM..HEADROOM + self.lens[i]]
    }

    /// Packet `i`, writable.
    pub fn get_mut(&mut self, i: usize) -> &mut [u8] {
        let len = self.lens[i];
        &mut self.bufs[i][HEADROOM..HEADROOM + len]
    }

    /// The packets, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.count]
            .iter()
            .zip(&self.lens)
            .map(|(b, &len)| &b[HEADROOM..HEADROOM + len])
    }

    /// Appends a copy of `packet`; false when the batch is full or the
    /// packet longer than a slot.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if packet.len() > self.max_packet {
            return false;
        }
        let Some(slot) = self.next_slot() else {
            return false;
        };
        slot[..packet.len()].copy_from_slice(packet);
        self.commit(packet.len());
        true
    }

    /// The next free slot, `max_packet` bytes long (after the headroom),
    /// for a driver to read into; [`commit`](Self::commit) keeps it.
    pub fn next_slot(&mut self) -> Option<&mut [u8]> {
        let buf = self.bufs.get_mut(self.count)?;
        Some(&mut buf[HEADROOM..])
    }

    /// Keeps the first `len` bytes of the slot [`next_slot`](Self::next_slot)
    /// gave as the next packet.
    pub fn commit(&mut self, len: usize) {
        if self.count < self.bufs.len() {
            self.lens[self.count] = len.min(self.max_packet);
            self.count += 1;
        }
    }

    /// The free slots, whole (headroom included): a driver that splits a
    /// super-packet writes the segments straight into them, then calls
    /// [`commit_many`](Self::commit_many).
    pub fn free_slots(&mut self) -> &mut [Vec<u8>] {
        &mut self.bufs[self.count..]
    }

    /// Keeps `lens.len()` packets written into the free slots at
    /// [`HEADROOM`], `lens[k]` bytes each.
    pub fn commit_many(&mut self, lens: &[usize]) {
        for &len in lens {
            self.commit(len);
        }
    }

    /// The used buffers, whole, and the packet lengths: what a coalescing
    /// writer needs (each packet at [`HEADROOM`] in its buffer, the rest
    /// of the buffer room to grow into).
    pub fn used(&mut self) -> (&mut [Vec<u8>], &[usize]) {
        (&mut self.bufs[..self.count], &self.lens[..self.count])
    }

    /// Runs `write` over the used buffers cut to `HEADROOM + length`, the
    /// headroom zeroed (what tun-rs's coalescing writer takes: it fills in
    /// the headers of what it merges), then makes them whole again.
    pub fn with_exact_bufs<T>(&mut self, write: impl FnOnce(&mut [Vec<u8>]) -> T) -> T {
        let full = HEADROOM + self.max_packet;
        for (b, &len) in self.bufs[..self.count].iter_mut().zip(&self.lens) {
            b.truncate(HEADROOM + len);
            // The headroom is the virtio header of what is not coalesced:
            // it must say "no offload" (a stale one would be obeyed).
            b[..HEADROOM].fill(0);
        }
        let out = write(&mut self.bufs[..self.count]);
        for b in &mut self.bufs[..self.count] {
            if b.capacity() >= full && b.len() <= full {
                // SAFETY: every buffer was allocated zeroed at `full` bytes
                // and is only ever truncated or grown (Vec::resize, which
                // initialises, or a reallocation, which keeps the old
                // allocation's bytes), so its first `full` bytes are
                // initialised u8s within its capacity.
                unsafe { b.set_len(full) };
            } else {
                b.resize(full, 0);
            }
        }
        out
    }
}

/// What a device driver counted while reading and writing (folded into
/// the drop counters `weft status` shows).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStats {
    /// Super-packets that could not be cut into path-sized segments, or
    /// packets larger than a slot.
    pub too_big: u64,
    /// Reads the driver could not make sense of (bad virtio header).
    pub malformed: u64,
    /// Packets the kernel refused on write.
    pub write_errors: u64,
    /// Writes that carried several packets coalesced into one (GRO).
    pub coalesced_writes: u64,
}

/// The local device, one queue of it: a worker reads and writes batches.
pub trait Device: Send {
    /// Reads what is queued into `batch` while it has room for one more
    /// read (a super-packet is cut into segments here). Returns the packets
    /// added; 0 when nothing was queued.
    fn read_batch(&mut self, batch: &mut PacketBatch) -> usize;

    /// Writes every packet of `batch` to the device (coalesced when the
    /// device has offloads) and empties it.
    fn write_batch(&mut self, batch: &mut PacketBatch);

    /// Writes one packet (ICMP answers to local senders).
    fn write_one(&mut self, packet: &[u8]) -> io::Result<()>;

    /// Watches the device for readability under `token`.
    fn register(&self, registry: &Registry, token: Token) -> io::Result<()>;

    /// How long a packet buffer of the write batch should be for the
    /// driver to coalesce in place (0: any slot will do).
    fn write_room(&self) -> usize {
        0
    }

    /// Counters since the last call (then reset).
    fn take_stats(&mut self) -> DeviceStats;
}

/// A second handle on a device queue for the control thread: it writes
/// (frames delivered through relays and broadcast trees, ICMP answers) but
/// never reads, so it adds no queue the kernel would spread packets to.
pub struct DeviceWriter {
    fd: OwnedFd,
    vnet_hdr: bool,
    name: String,
}

impl DeviceWriter {
    /// A writer on a duplicate of `fd` (a queue of the device `name`);
    /// `vnet_hdr`: the queue was opened with IFF_VNET_HDR.
    pub fn dup(fd: RawFd, vnet_hdr: bool, name: &str) -> io::Result<DeviceWriter> {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller holds open.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if new < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `new` is a fresh descriptor nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new) };
        Ok(DeviceWriter {
            fd,
            vnet_hdr,
            name: name.to_string(),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the device's MTU (when the path MTU shrinks), over rtnetlink.
    pub fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        let fail = |e: crate::sys::SysError| io::Error::other(e.to_string());
        let mut netlink = crate::sys::Netlink::open().map_err(fail)?;
        let link = netlink.require_link(&self.name).map_err(fail)?;
        netlink
            .set_mtu(link.index, &self.name, u32::from(mtu))
            .map_err(fail)
    }

    /// Writes one packet (behind an all-zero virtio header when the queue
    /// has offloads: no segmentation, checksum complete).
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        const NO_OFFLOAD: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: NO_OFFLOAD.as_ptr() as *mut libc::c_void,
                iov_len: NO_OFFLOAD.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut libc::c_void,
                iov_len: packet.len(),
            },
        ];
        let iov: &mut [libc::iovec] = if self.vnet_hdr {
            &mut iov[..]
        } else {
            &mut iov[1..]
        };
        loop {
            // SAFETY: the iovecs point at live buffers for the call.
            let rc = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Registers `fd` for readability with a mio registry (drivers use it so
/// that no raw descriptor leaves them).
pub(crate) fn register_fd(fd: RawFd, registry: &Registry, token: Token) -> io::Result<()> {
    registry.register(&mut SourceFd(&fd), token, Interest::READABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_keep_headroom_and_lengths() {
        let mut b = PacketBatch::new(3, 100);
        assert!(b.push(&[1, 2, 3]));
        let slot = b.next_slot().unwrap();
        assert_eq!(slot.len(), 100);
        slot[..2].copy_from_slice(&[9, 9]);
        b.commit(2);
        assert_eq!(b.len(), 2);
        assert_eq!(b.get(0), &[1, 2, 3]);
        assert_eq!(b.get(1), &[9, 9]);
        assert_eq!(b.used().1, &[3, 2]);
        assert!(!b.push(&[0; 101]), "longer than a slot");
        assert!(b.push(&[7; 100]));
        assert!(!b.push(&[1]), "full");
        assert!(b.next_slot().is_none());
        let lens: Vec<usize> = b.with_exact_bufs(|bufs| bufs.iter().map(Vec::len).collect());
        assert_eq!(lens, vec![HEADROOM + 3, HEADROOM + 2, HEADROOM + 100]);
        assert_eq!(b.get(0), &[1, 2, 3], "whole again afterwards");
        assert!(b.used().0.iter().all(|s| s.len() == HEADROOM + 100));
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.room(), 3);
        let free = b.free_slots();
        assert_eq!(free.len(), 3);
        assert!(free.iter().all(|s| s.len() == HEADROOM + 100));
        b.commit_many(&[5, 6]);
        assert_eq!(b.iter().map(<[u8]>::len).collect::<Vec<_>>(), vec![5, 6]);
    }
}
