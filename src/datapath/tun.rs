//! The TUN device (L3 mode) and the queues of the TAP device (bridge mode),
//! through `tun-rs`, behind the batch [`Device`] interface. With
//! IFF_VNET_HDR offloads, reads are TSO/USO super-packets that are cut into
//! path-sized segments here (TUN: `offload`; TAP: `l2_offload`), and
//! writes are coalesced (GRO) into few large packets here: the router only
//! ever sees ordinary packets and frames.
//!
//! With several workers the device is multi-queue (IFF_MULTI_QUEUE): one
//! [`TunDevice`] per queue, each read and written by its own worker; the
//! kernel spreads flows over the queues.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use mio::{Registry, Token};

use super::device::{Device, DeviceStats, DeviceWriter, PacketBatch, HEADROOM};
use super::l2_offload::{self, L2Coalescer, L2Read};
use super::offload::{self, SuperPacket, VNET_HDR_LEN};

/// The largest read with offloads: virtio header, a 64 KiB IP packet and
/// an Ethernet header with a VLAN tag.
const MAX_READ: usize = VNET_HDR_LEN + 65535 + 18;

/// One queue of an open TUN or TAP device. Closing the last queue (drop)
/// removes the interface and the connected route the kernel added for its
/// address.
pub struct TunDevice {
    device: tun_rs::SyncDevice,
    name: String,
    vnet_hdr: bool,
    /// A TAP (Ethernet frames) rather than a TUN (IP packets).
    l2: bool,
    /// TAP offloads: merges received TCP segments for writing.
    coalescer: Option<L2Coalescer>,
    /// Offloads: one read (virtio header + up to 64 KiB).
    read_buf: Box<[u8]>,
    /// Offloads: a super-packet read that did not fit the last batch.
    pending: Option<usize>,
    sizes: Vec<usize>,
    gro_table: tun_rs::GROTable,
    stats: DeviceStats,
}

/// Why the TUN device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// No permission for /dev/net/tun.
    #[error("no permission to create TUN device {name} (/dev/net/tun): run weft as root or give it CAP_NET_ADMIN")]
    Permission {
        /// Interface name.
        name: String,
    },
    /// The name is taken.
    #[error("an interface named {name} already exists: pick another with --iface-name, or remove it (`ip link del {name}`)")]
    Exists {
        /// Interface name.
        name: String,
    },
    /// No TUN support.
    #[error("/dev/net/tun is missing: the kernel needs CONFIG_TUN (try `modprobe tun`)")]
    NoTun,
    /// Anything else.
    #[error("cannot create TUN device {name}: {source}")]
    Other {
        /// Interface name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Puts `addresses` on link `name` (already there counts as done).
fn add_addresses(name: &str, addresses: &[(IpAddr, u8)]) -> Result<(), crate::sys::SysError> {
    let mut netlink = crate::sys::Netlink::open()?;
    let link = netlink.require_link(name)?;
    for &(ip, prefix) in addresses {
        netlink.add_address(link.index, name, ip, prefix)?;
    }
    Ok(())
}

impl TunDevice {
    /// Creates the device with the overlay address and MTU, brings it up,
    /// and opens `queues` queues of it (multi-queue when more than one).
    /// With `offload`, the device is opened with IFF_VNET_HDR and TSO/USO
    /// (if the kernel accepts them): reads may then return 64 KiB
    /// super-packets behind a virtio_net header, and writes carry one.
    /// The first of `addresses` is given at creation, the others (a
    /// dual-stack host's second family) are added over netlink after it.
    pub fn create(
        name: &str,
        addresses: &[(IpAddr, u8)],
        mtu: u16,
        offload: bool,
        queues: usize,
    ) -> Result<Vec<TunDevice>, TunError> {
        if crate::sys::link_exists(name).unwrap_or(false) {
            return Err(TunError::Exists { name: name.into() });
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTun);
        }
        let builder = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload)
            .multi_queue(queues > 1);
        let builder = match addresses.first() {
            Some(&(IpAddr::V4(a), prefix)) => builder.ipv4(a, prefix, None),
            Some(&(IpAddr::V6(a), prefix)) => builder.ipv6(a, prefix),
            None => builder,
        };
        let other = |source: io::Error| TunError::Other {
            name: name.into(),
            source,
        };
        let device = builder.build_sync().map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TunError::Permission { name: name.into() },
            Some(libc::EBUSY) | Some(libc::EEXIST) => TunError::Exists { name: name.into() },
            _ => other(e),
        })?;
        let first = TunDevice::from_device(device, name.to_string(), false).map_err(other)?;
        if addresses.len() > 1 {
            add_addresses(name, &addresses[1..]).map_err(|e| other(io::Error::other(e)))?;
        }
        let mut all = Vec::with_capacity(queues);
        for _ in 1..queues.max(1) {
            all.push(first.add_queue().map_err(other)?);
        }
        all.insert(0, first);
        Ok(all)
    }

    /// Wraps a device opened elsewhere (the TAP of bridge mode, see
    /// `datapath::tap`, with `l2`): reads and writes work the same for
    /// both layers. Makes it non-blocking.
    pub fn from_device(
        device: tun_rs::SyncDevice,
        name: String,
        l2: bool,
    ) -> io::Result<TunDevice> {
        device.set_nonblocking(true)?;
        let vnet_hdr = device.tcp_gso();
        Ok(TunDevice {
            device,
            name,
            vnet_hdr,
            l2,
            coalescer: (l2 && vnet_hdr).then(|| L2Coalescer::new(super::device::DEVICE_BATCH)),
            read_buf: vec![0u8; MAX_READ].into_boxed_slice(),
            pending: None,
            sizes: vec![0; super::device::DEVICE_BATCH],
            gro_table: tun_rs::GROTable::default(),
            stats: DeviceStats::default(),
        })
    }

    /// Opens one more queue of this (multi-queue) device.
    pub fn add_queue(&self) -> io::Result<TunDevice> {
        TunDevice::from_device(self.device.try_clone()?, self.name.clone(), self.l2)
    }

    /// Whether reads and writes carry a virtio_net header (offloads on).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A write-only handle on this queue for another thread.
    pub fn writer(&self) -> io::Result<DeviceWriter> {
        DeviceWriter::dup(self.device.as_raw_fd(), self.vnet_hdr, &self.name)
    }

    /// Reads one packet (with offloads: header and maybe a super-packet);
    /// `WouldBlock` when none is queued.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf)
    }

    /// Writes one packet (with offloads, behind an all-zero header: no
    /// segmentation, checksum complete).
    #[inline]
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        if self.vnet_hdr {
            const NO_OFFLOAD: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];
            self.device.send_vectored(&[
                std::io::IoSlice::new(&NO_OFFLOAD),
                std::io::IoSlice::new(packet),
            ])
        } else {
            self.device.send(packet)
        }
    }

    /// One read: `Some(len)`, or `None` when nothing is queued (or the read
    /// failed, which is logged).
    fn read_once(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            match self.device.recv(buf) {
                Ok(n) => return Some(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    tracing::warn!(device = %self.name, error = %e, "reading the local device failed");
                    return None;
                }
            }
        }
    }

    /// TAP offloads: puts the read in `read_buf[..n]` into the batch, cut
    /// into Ethernet frames if it is a super-frame. False when it does not
    /// fit the batch's free room (kept for the next batch).
    fn take_l2_read(&mut self, n: usize, batch: &mut PacketBatch) -> bool {
        let read = &mut self.read_buf[..n];
        match l2_offload::classify_read(read) {
            Ok(L2Read::Single(len)) => {
                if batch.room() == 0 {
                    return false;
                }
                if !batch.push(&read[VNET_HDR_LEN..VNET_HDR_LEN + len]) {
                    self.stats.too_big += 1;
                }
                true
            }
            Ok(L2Read::Segmented(sf)) => {
                let count = sf.count();
                if count > batch.capacity() || sf.segment_len() > batch.max_packet() {
                    self.stats.too_big += 1;
                    return true;
                }
                if count > batch.room() {
                    return false;
                }
                let slots = batch.free_slots();
                match l2_offload::split_super_frame(
                    &read[VNET_HDR_LEN..],
                    &sf,
                    &mut slots[..count],
                    &mut self.sizes[..count],
                    HEADROOM,
                ) {
                    Ok(k) => batch.commit_many(&self.sizes[..k]),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot segment a super-frame from the TAP device");
                        self.stats.too_big += 1;
                    }
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "unreadable frame from the TAP device");
                self.stats.malformed += 1;
                true
            }
        }
    }

    /// Offloads: puts the read in `read_buf[..n]` into the batch, cut into
    /// segments if it is a super-packet. False when it does not fit the
    /// batch's free room (kept for the next batch).
    fn take_read(&mut self, n: usize, batch: &mut PacketBatch) -> bool {
        if self.l2 {
            return self.take_l2_read(n, batch);
        }
        match offload::classify(&mut self.read_buf, n) {
            Ok((_, SuperPacket::Single(len))) => {
                if batch.room() == 0 {
                    return false;
                }
                if !batch.push(&self.read_buf[VNET_HDR_LEN..VNET_HDR_LEN + len]) {
                    self.stats.too_big += 1;
                }
                true
            }
            Ok((hdr, SuperPacket::Segmented { segment_len, count })) => {
                if count > batch.capacity() || segment_len > batch.max_packet() {
                    self.stats.too_big += 1;
                    return true;
                }
                if count > batch.room() {
                    return false;
                }
                let slots = batch.free_slots();
                match offload::split_super_packet(
                    &mut self.read_buf[VNET_HDR_LEN..n],
                    hdr,
                    &mut slots[..count],
                    &mut self.sizes[..count],
                    HEADROOM,
                ) {
                    Ok(k) => batch.commit_many(&self.sizes[..k]),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot segment a super-packet from the TUN device");
                        self.stats.too_big += 1;
                    }
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "unreadable packet from the TUN device");
                self.stats.malformed += 1;
                true
            }
        }
    }
}

impl Device for TunDevice {
    fn read_batch(&mut self, batch: &mut PacketBatch) -> usize {
        let before = batch.len();
        if !self.vnet_hdr {
            while let Some(slot) = batch.next_slot() {
                let Some(n) = self.read_once(slot) else {
                    break;
                };
                batch.commit(n);
            }
            return batch.len() - before;
        }
        if let Some(n) = self.pending.take() {
            if !self.take_read(n, batch) {
                self.pending = Some(n);
                return batch.len() - before;
            }
        }
        while batch.room() > 0 {
            let mut buf = std::mem::take(&mut self.read_buf);
            let read = self.read_once(&mut buf);
            self.read_buf = buf;
            let Some(n) = read else {
                break;
            };
            if !self.take_read(n, batch) {
                self.pending = Some(n);
                break;
            }
        }
        batch.len() - before
    }

    fn write_batch(&mut self, batch: &mut PacketBatch) {
        if batch.is_empty() {
            return;
        }
        if let Some(coalescer) = self.coalescer.as_mut() {
            let (bufs, lens) = batch.used();
            match coalescer.coalesce(bufs, lens, HEADROOM) {
                Ok(writes) => {
                    for w in writes {
                        // The virtio header is in the buffer already.
                        if self
                            .device
                            .send(&bufs[w.buf][w.start..w.start + w.len])
                            .is_err()
                        {
                            self.stats.write_errors += 1;
                        }
                        self.stats.coalesced_writes += u64::from(w.segments > 1);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot coalesce frames for the TAP device");
                    for i in 0..batch.len() {
                        if self.send(batch.get(i)).is_err() {
                            self.stats.write_errors += 1;
                        }
                    }
                }
            }
        } else if self.vnet_hdr {
            let n = batch.len();
            let (device, table) = (&self.device, &mut self.gro_table);
            if let Err(e) =
                batch.with_exact_bufs(|bufs| device.send_multiple(table, bufs, HEADROOM))
            {
                tracing::debug!(error = %e, "coalesced write to the TUN device failed");
                self.stats.write_errors += 1;
            }
            if n > 1 {
                self.stats.coalesced_writes += 1;
            }
        } else {
            for i in 0..batch.len() {
                if self.device.send(batch.get(i)).is_err() {
                    self.stats.write_errors += 1;
                }
            }
        }
        batch.clear();
    }

    fn write_one(&mut self, packet: &[u8]) -> io::Result<()> {
        self.send(packet).map(|_| ())
    }

    fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        super::device::register_fd(self.device.as_raw_fd(), registry, token)
    }

    fn write_room(&self) -> usize {
        // With offloads, received segments are coalesced into the first
        // one's buffer (TAP: our coalescer; TUN: tun-rs's, which only
        // merges into a buffer whose capacity holds the result): room
        // for 64 KiB.
        if self.vnet_hdr {
            MAX_READ - VNET_HDR_LEN
        } else {
            0
        }
    }

    fn take_stats(&mut self) -> DeviceStats {
        std::mem::take(&mut self.stats)
    }
}
