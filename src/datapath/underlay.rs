//! The underlay socket the router sends and receives weft datagrams on:
//! a plain UDP socket, or the AF_XDP underlay around that same socket.
//! Same calls either way, so the router's framing and crypto code is shared.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::xdp::XdpUnderlay;

/// How many datagrams the AF_XDP path queues before telling the kernel;
/// the router also flushes once per event-loop turn.
const XDP_FLUSH_EVERY: usize = 32;

/// weft's underlay datagram socket.
pub enum Underlay {
    /// Kernel UDP socket.
    Udp(UdpSocket),
    /// AF_XDP sockets (with the kernel socket kept for the port and for
    /// next hops whose MAC is not known yet).
    Xdp {
        /// The driver.
        underlay: Box<XdpUnderlay>,
        /// Datagrams queued since the last flush.
        queued: usize,
    },
}

impl Underlay {
    /// Wraps a bound std UDP socket.
    pub fn udp(socket: std::net::UdpSocket) -> Underlay {
        Underlay::Udp(UdpSocket::from_std(socket))
    }

    /// Wraps an opened AF_XDP underlay.
    pub fn xdp(underlay: XdpUnderlay) -> Underlay {
        Underlay::Xdp {
            underlay: Box::new(underlay),
            queued: 0,
        }
    }

    /// Registers every file descriptor to poll under `token` (readable).
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Underlay::Udp(socket) => registry.register(socket, token, Interest::READABLE),
            Underlay::Xdp { underlay, .. } => {
                for fd in underlay.poll_fds() {
                    registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
                }
                Ok(())
            }
        }
    }

    /// Sends one datagram (AF_XDP: queued, kicked every few datagrams and
    /// at [`flush`](Self::flush)). EMSGSIZE when it exceeds the path, as
    /// with a DF socket.
    pub fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self {
            Underlay::Udp(socket) => socket.send_to(datagram, to),
            Underlay::Xdp { underlay, queued } => {
                underlay.queue(datagram, to)?;
                *queued += 1;
                if *queued >= XDP_FLUSH_EVERY {
                    underlay.flush();
                    *queued = 0;
                }
                Ok(datagram.len())
            }
        }
    }

    /// Receives one datagram; WouldBlock when none is waiting.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            Underlay::Udp(socket) => socket.recv_from(buf),
            Underlay::Xdp { underlay, .. } => underlay.recv_from(buf),
        }
    }

    /// Hands queued AF_XDP frames to the kernel (no-op for UDP).
    pub fn flush(&mut self) {
        if let Underlay::Xdp { underlay, queued } = self {
            if *queued > 0 {
                underlay.flush();
                *queued = 0;
            }
        }
    }

    /// The kernel UDP socket's fd (both variants have one).
    pub fn kernel_fd(&self) -> i32 {
        match self {
            Underlay::Udp(socket) => socket.as_raw_fd(),
            Underlay::Xdp { underlay, .. } => underlay.kernel_socket().as_raw_fd(),
        }
    }
}
