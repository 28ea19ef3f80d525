//! The TUN device (L3 mode), through `tun-rs`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

/// An open TUN device. Closing it (drop) removes the interface and the
/// connected route the kernel added for its address.
pub struct TunDevice {
    device: tun_rs::SyncDevice,
    name: String,
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
    pub fn create(name: &str, address: IpAddr, prefix: u8, mtu: u16) -> Result<TunDevice, TunError> {
        if std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(TunError::Exists { name: name.into() });
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTun);
        }
        let builder = tun_rs::DeviceBuilder::new().name(name).mtu(mtu);
        let builder = match address {
            IpAddr::V4(a) => builder.ipv4(a, prefix, None),
            IpAddr::V6(a) => builder.ipv6(a, prefix),
        };
        let device = builder.build_sync().map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TunError::Permission { name: name.into() },
            Some(libc::EBUSY) | Some(libc::EEXIST) => TunError::Exists { name: name.into() },
            _ => TunError::Other { name: name.into(), source: e },
        })?;
        device
            .set_nonblocking(true)
            .map_err(|e| TunError::Other { name: name.into(), source: e })?;
        Ok(TunDevice { device, name: name.to_string() })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet; `WouldBlock` when none is queued.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf)
    }

    /// Writes one packet.
    #[inline]
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.device.send(packet)
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
