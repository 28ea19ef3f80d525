//! The underlay UDP socket and the TCP listener for control connections.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Socket buffer size asked for: room for bursts at multi-gigabit rates.
const SOCKET_BUFFER: usize = 4 << 20;

/// Why the listen address could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process holds the port.
    #[error("{proto} port {addr} is already in use (another weft, or another service): stop it or choose another with --listen")]
    InUse {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// The address is not on this host.
    #[error("cannot bind {proto} {addr}: the address is not assigned to any interface of this host; use one of its addresses (`ip -br addr`) or 0.0.0.0")]
    NotLocal {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// Anything else.
    #[error("cannot bind {proto} {addr}: {source}")]
    Other {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

fn map_bind(proto: &'static str, addr: SocketAddr, e: io::Error) -> BindError {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => BindError::InUse { proto, addr },
        Some(libc::EADDRNOTAVAIL) => BindError::NotLocal { proto, addr },
        _ => BindError::Other {
            proto,
            addr,
            source: e,
        },
    }
}

/// Binds the data socket: non-blocking, large buffers, and DF on every
/// datagram (IP_PMTUDISC_DO) so the kernel never fragments weft's traffic
/// and an oversized send fails with EMSGSIZE instead of going out.
pub fn bind_data_socket(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| map_bind("UDP", addr, e))?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    set_dont_fragment(&socket, addr.is_ipv4()).map_err(|e| map_bind("UDP", addr, e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| map_bind("UDP", addr, e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| map_bind("UDP", addr, e))?;
    Ok(socket.into())
}

fn set_dont_fragment(socket: &socket2::Socket, ipv4: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if ipv4 {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    };
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds the control listener (non-blocking, SO_REUSEADDR so a restart
/// does not wait for TIME_WAIT).
pub fn bind_control_listener(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| map_bind("TCP", addr, e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| map_bind("TCP", addr, e))?;
    socket
        .bind(&addr.into())
        .map_err(|e| map_bind("TCP", addr, e))?;
    socket.listen(128).map_err(|e| map_bind("TCP", addr, e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| map_bind("TCP", addr, e))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_in_use_is_explained() {
        let first = bind_data_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_data_socket(addr).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
