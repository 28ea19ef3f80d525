//! The TUN device (L3 mode), through `tun-rs`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

/// An open TUN device. Closing it (drop) removes the interface and the
/// connected route the kernel added for its address.
pub struct TunDevice {
    device: tun_rs::SyncDevice,
    name: String,
    vnet_hdr: bool,
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

impl TunDevice {
    /// Creates the device with the overlay address and MTU, and brings it up.
    /// With `offload`, the device is opened with IFF_VNET_HDR and TSO/USO
    /// (if the kernel accepts them): reads may then return 64 KiB
    /// super-packets behind a virtio_net header, and writes carry one.
    pub fn create(
        name: &str,
        address: IpAddr,
        prefix: u8,
        mtu: u16,
        offload: bool,
    ) -> Result<TunDevice, TunError> {
        if crate::sys::link_exists(name).unwrap_or(false) {
            return Err(TunError::Exists { name: name.into() });
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTun);
        }
        let builder = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .offload(offload);
        let builder = match address {
            IpAddr::V4(a) => builder.ipv4(a, prefix, None),
            IpAddr::V6(a) => builder.ipv6(a, prefix),
        };
        let device = builder.build_sync().map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TunError::Permission { name: name.into() },
            Some(libc::EBUSY) | Some(libc::EEXIST) => TunError::Exists { name: name.into() },
            _ => TunError::Other {
                name: name.into(),
                source: e,
            },
        })?;
        device.set_nonblocking(true).map_err(|e| TunError::Other {
            name: name.into(),
            source: e,
        })?;
        let vnet_hdr = device.tcp_gso();
        Ok(TunDevice {
            device,
            name: name.to_string(),
            vnet_hdr,
        })
    }

    /// Wraps a device opened elsewhere (the TAP of bridge mode, see
    /// `datapath::tap`): reads and writes work the same for both layers.
    pub fn from_device(device: tun_rs::SyncDevice, name: String) -> TunDevice {
        let vnet_hdr = device.tcp_gso();
        TunDevice {
            device,
            name,
            vnet_hdr,
        }
    }

    /// Whether reads and writes carry a virtio_net header (offloads on).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
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
            const NO_OFFLOAD: [u8; crate::datapath::offload::VNET_HDR_LEN] =
                [0; crate::datapath::offload::VNET_HDR_LEN];
            self.device.send_vectored(&[
                std::io::IoSlice::new(&NO_OFFLOAD),
                std::io::IoSlice::new(packet),
            ])
        } else {
            self.device.send(packet)
        }
    }

    /// Writes a batch of packets, each at `offset` in its buffer (with at
    /// least the header's 10 bytes free in front), coalescing TCP segments
    /// of one flow into super-packets (GRO) so the kernel sees few, large
    /// packets. Only with offloads on.
    pub fn send_coalesced(
        &self,
        table: &mut tun_rs::GROTable,
        bufs: &mut [bytes::BytesMut],
        offset: usize,
    ) -> io::Result<usize> {
        self.device.send_multiple(table, bufs, offset)
    }

    /// Changes the device MTU (when the path MTU shrinks).
    pub fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        self.device.set_mtu(mtu)
    }
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}
