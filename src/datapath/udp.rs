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

/// Binds `count` data sockets on `addr` (with SO_REUSEPORT when more than
/// one: each datapath worker gets its own, and the kernel keeps each flow
/// on one of them), each as [`bind_data_socket`] makes it.
pub fn bind_data_sockets(addr: SocketAddr, count: usize) -> Result<Vec<UdpSocket>, BindError> {
    if count <= 1 {
        return Ok(vec![bind_data_socket(addr)?]);
    }
    let first = bind_socket(addr, true)?;
    // Port 0: the others join the port the first one got.
    let addr = first.local_addr().map_err(|e| map_bind("UDP", addr, e))?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_socket(addr, true)?);
    }
    if let Err(e) = steer_by_lane(&all[0], count) {
        // The kernel's 4-tuple hash still spreads peers over the sockets.
        tracing::warn!("cannot attach the SO_REUSEPORT lane program ({e}): each peer's traffic stays on one worker");
    }
    Ok(all)
}

/// Attaches a classic BPF program to the SO_REUSEPORT group of `socket`
/// that hands a datagram to socket `lane % count`, the lane being the
/// second byte of weft's sleeve header (the sending worker's number): one
/// peer's traffic then spreads over this host's workers, each sending
/// worker's flows staying on one receiving worker, in order. The program
/// sees the UDP payload (the kernel pulls the UDP header first); datagrams
/// shorter than two bytes go to socket 0.
fn steer_by_lane(socket: &UdpSocket, count: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const BPF_LD_B_ABS: u16 = 0x10 | 0x20; // BPF_LD (0) | BPF_B | BPF_ABS
    const BPF_ALU_MOD_K: u16 = 0x04 | 0x90; // BPF_ALU | BPF_MOD | BPF_K
    const BPF_RET_A: u16 = 0x06 | 0x10; // BPF_RET | BPF_A
    let program = [
        libc::sock_filter {
            code: BPF_LD_B_ABS,
            jt: 0,
            jf: 0,
            k: 1,
        },
        libc::sock_filter {
            code: BPF_ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: count as u32,
        },
        libc::sock_filter {
            code: BPF_RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt with a valid fd and a sock_fprog pointing at a
    // program that lives for the call (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds the data socket: non-blocking, large buffers, and DF on every
/// datagram (IP_PMTUDISC_DO) so the kernel never fragments weft's traffic
/// and an oversized send fails with EMSGSIZE instead of going out.
pub fn bind_data_socket(addr: SocketAddr) -> Result<UdpSocket, BindError> {
    bind_socket(addr, false)
}

fn bind_socket(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket, BindError> {
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
    if reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(|e| map_bind("UDP", addr, e))?;
    }
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
    fn lanes_pick_the_socket() {
        let socks = bind_data_sockets("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let to = socks[0].local_addr().unwrap();
        assert_eq!(socks[1].local_addr().unwrap(), to, "one port for the group");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for lane in [0u8, 1, 2, 3, 1, 0] {
            tx.send_to(&[1, lane, 0, 0], to).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut got = [Vec::new(), Vec::new()];
        let mut buf = [0u8; 16];
        for (i, s) in socks.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                assert_eq!(n, 4);
                got[i].push(buf[1]);
            }
        }
        // Same source, same 4-tuple: only the lane program spreads them.
        assert_eq!(got[0], vec![0, 2, 0]);
        assert_eq!(got[1], vec![1, 3, 1]);
    }

    #[test]
    fn port_in_use_is_explained() {
        let first = bind_data_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_data_socket(addr).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
