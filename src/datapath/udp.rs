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

/// How a group of data sockets shares what arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// weft's sleeve: by the lane in the header (the sending worker).
    Lane,
    /// Plaintext VXLAN: by a hash of the inner frame's addresses and ports.
    InnerFlow,
}

/// Binds `count` data sockets on `addr` (with SO_REUSEPORT when more than
/// one: each datapath worker gets its own, and a classic BPF program
/// picks the socket per `steering`), each as [`bind_data_socket`] makes it.
pub fn bind_data_sockets(
    addr: SocketAddr,
    count: usize,
    steering: Steering,
) -> Result<Vec<UdpSocket>, BindError> {
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
    let program = match steering {
        Steering::Lane => lane_program(count as u32),
        Steering::InnerFlow => inner_flow_program(count as u32),
    };
    if let Err(e) = attach_reuseport_program(&all[0], &program) {
        // The kernel's 4-tuple hash still spreads peers over the sockets.
        tracing::warn!("cannot attach the SO_REUSEPORT steering program ({e}): each peer's traffic stays on one worker");
    }
    Ok(all)
}

// Classic BPF (see linux/filter.h): the few opcodes the programs use.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const LD_W_IND: u16 = 0x40; // BPF_LD | BPF_W | BPF_IND
const LDX_B_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH: X = 4 * (P[k] & 0xf)
const LDX_MEM: u16 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
const ST: u16 = 0x02;
const ALU_XOR_X: u16 = 0xac;
const ALU_RSH_K: u16 = 0x74;
const ALU_MOD_K: u16 = 0x94;
const JA: u16 = 0x05;
const JEQ_K: u16 = 0x15;
const TAX: u16 = 0x07;
const RET_A: u16 = 0x16;
const RET_K: u16 = 0x06;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Socket `lane % count`, the lane being the second byte of weft's sleeve
/// header (the sending worker's number): one peer's traffic spreads over
/// this host's workers, each sending worker's flows staying on one
/// receiving worker, in order. The program sees the UDP payload (the
/// kernel pulls the UDP header first); a datagram shorter than two bytes
/// goes to socket 0.
fn lane_program(count: u32) -> Vec<libc::sock_filter> {
    vec![
        insn(LD_B_ABS, 0, 0, 1),
        insn(ALU_MOD_K, 0, 0, count),
        insn(RET_A, 0, 0, 0),
    ]
}

/// Socket `hash % count`, the hash folding the inner IPv4/IPv6 addresses
/// (the last word of each for IPv6) and the word after the IP header (TCP
/// and UDP ports) of the Ethernet frame in a VXLAN datagram: a Linux
/// vxlan device spreads flows over source ports, but a weft sending from
/// its one port does not, so the inner flow decides. Anything else goes
/// to socket 0.
fn inner_flow_program(count: u32) -> Vec<libc::sock_filter> {
    // VXLAN header 8, Ethernet type at 20, IP header at 22.
    vec![
        insn(LD_H_ABS, 0, 0, 20),
        insn(JEQ_K, 0, 9, 0x0800), // IPv4, else to 11
        insn(LD_W_ABS, 0, 0, 22 + 12),
        insn(ST, 0, 0, 0),
        insn(LD_W_ABS, 0, 0, 22 + 16),
        insn(LDX_MEM, 0, 0, 0),
        insn(ALU_XOR_X, 0, 0, 0),
        insn(ST, 0, 0, 0),
        insn(LDX_B_MSH, 0, 0, 22),
        insn(LD_W_IND, 0, 0, 22),
        insn(JA, 0, 0, 8),          // to 19
        insn(JEQ_K, 0, 14, 0x86dd), // IPv6, else to 26
        insn(LD_W_ABS, 0, 0, 22 + 8 + 12),
        insn(ST, 0, 0, 0),
        insn(LD_W_ABS, 0, 0, 22 + 24 + 12),
        insn(LDX_MEM, 0, 0, 0),
        insn(ALU_XOR_X, 0, 0, 0),
        insn(ST, 0, 0, 0),
        insn(LD_W_ABS, 0, 0, 22 + 40),
        insn(LDX_MEM, 0, 0, 0), // 19: A = ports ^ addresses
        insn(ALU_XOR_X, 0, 0, 0),
        insn(TAX, 0, 0, 0),
        insn(ALU_RSH_K, 0, 0, 16),
        insn(ALU_XOR_X, 0, 0, 0),
        insn(ALU_MOD_K, 0, 0, count),
        insn(RET_A, 0, 0, 0),
        insn(RET_K, 0, 0, 0), // 26
    ]
}

/// Attaches a classic BPF program to the SO_REUSEPORT group of `socket`:
/// its return value picks the socket (in the order they were bound).
fn attach_reuseport_program(socket: &UdpSocket, program: &[libc::sock_filter]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
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
        lanes_pick_the_socket_on("127.0.0.1");
    }

    /// The program reads the UDP payload, not the IP header: the same
    /// offsets steer an IPv6 group (the kernel pulls the UDP header for
    /// both families).
    #[test]
    fn lanes_pick_the_socket_over_ipv6() {
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        }
        lanes_pick_the_socket_on("[::1]");
    }

    fn lanes_pick_the_socket_on(host: &str) {
        let any: SocketAddr = format!("{host}:0").parse().unwrap();
        let socks = bind_data_sockets(any, 2, Steering::Lane).unwrap();
        let to = socks[0].local_addr().unwrap();
        assert_eq!(socks[1].local_addr().unwrap(), to, "one port for the group");
        let tx = std::net::UdpSocket::bind(any).unwrap();
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

    /// A VXLAN datagram carrying an IPv4 (or IPv6) UDP frame between
    /// these ports.
    fn vxlan_udp(v6: bool, sport: u16, dport: u16) -> Vec<u8> {
        let mut d = vec![0u8; 8 + 14];
        d[0] = 0x08;
        if v6 {
            d[20..22].copy_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[6] = 17;
            ip[23] = 1;
            ip[39] = 2;
            d.extend_from_slice(&ip);
        } else {
            d[20..22].copy_from_slice(&0x0800u16.to_be_bytes());
            d.extend_from_slice(&[
                0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
            ]);
        }
        d.extend_from_slice(&sport.to_be_bytes());
        d.extend_from_slice(&dport.to_be_bytes());
        d.extend_from_slice(&[0, 8, 0, 0]);
        d
    }

    #[test]
    fn inner_flows_keep_their_socket_and_spread() {
        let socks =
            bind_data_sockets("127.0.0.1:0".parse().unwrap(), 2, Steering::InnerFlow).unwrap();
        let to = socks[0].local_addr().unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let flows: Vec<Vec<u8>> = (0..16u16)
            .map(|i| vxlan_udp(i % 2 == 1, 40000 + i, 5201))
            .collect();
        for _ in 0..3 {
            for f in &flows {
                tx.send_to(f, to).unwrap();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut seen: Vec<Vec<usize>> = vec![Vec::new(); flows.len()];
        let mut buf = [0u8; 200];
        for (i, s) in socks.iter().enumerate() {
            while let Ok(n) = s.recv(&mut buf) {
                let f = flows.iter().position(|f| f[..] == buf[..n]).unwrap();
                seen[f].push(i);
            }
        }
        for (f, socks) in seen.iter().enumerate() {
            assert_eq!(socks.len(), 3, "flow {f}");
            assert!(
                socks.iter().all(|s| *s == socks[0]),
                "flow {f} moved: {socks:?}"
            );
        }
        let on_first = seen.iter().filter(|s| s[0] == 0).count();
        assert!(
            (1..flows.len()).contains(&on_first),
            "{on_first} of 16 on socket 0"
        );
    }

    #[test]
    fn port_in_use_is_explained() {
        let first = bind_data_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_data_socket(addr).unwrap_err();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
