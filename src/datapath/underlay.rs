//! The underlay side of the datapath: one batch interface for the kernel
//! UDP socket and the AF_XDP driver, in the spirit of wireguard-go's
//! `conn.Bind`: receive a batch of datagrams with their senders, send a
//! batch to one destination. Segmentation offload (UDP GSO) happens inside
//! the driver, so the router only hands over sealed datagrams.
//!
//! With several workers each has its own UDP socket on the same address
//! (SO_REUSEPORT); the kernel keeps each flow on one socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use mio::{Registry, Token};

use super::batch::{self, RecvBatch};
use super::offload;
use super::xdp::XdpUnderlay;

/// What one [`Underlay::send_batch`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams refused (counted as send errors).
    pub failed: usize,
    /// One was refused as larger than the path (EMSGSIZE): the path MTU
    /// shrank and must be searched again.
    pub too_big: bool,
    /// sendmmsg calls made (GSO sends are counted apart).
    pub calls: usize,
    /// Of those, UDP GSO sends, and the datagrams they carried.
    pub gso_sends: usize,
    /// Datagrams that left in GSO sends.
    pub gso_datagrams: usize,
}

impl SendReport {
    fn add(&mut self, other: SendReport) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.too_big |= other.too_big;
        self.calls += other.calls;
        self.gso_sends += other.gso_sends;
        self.gso_datagrams += other.gso_datagrams;
    }
}

/// The underlay, one socket (or AF_XDP driver) of it: a worker receives
/// and sends batches.
pub trait Underlay: Send {
    /// Receives what is queued into `batch` (at most its size). Returns the
    /// count; 0 when nothing was queued.
    fn recv_batch(&mut self, batch: &mut RecvBatch) -> usize;

    /// Sends `datagrams`, in order, to `to`.
    fn send_batch(&mut self, datagrams: &[&[u8]], to: SocketAddr) -> SendReport;

    /// Hands queued frames to the kernel (AF_XDP); nothing for sockets.
    fn flush(&mut self) {}

    /// Watches for readability under `token`.
    fn register(&self, registry: &Registry, token: Token) -> io::Result<()>;
}

/// A kernel UDP socket: recvmmsg in, UDP GSO and sendmmsg out.
pub struct UdpUnderlay {
    socket: UdpSocket,
    /// Whether UDP GSO works on this socket (cleared on the first refusal).
    gso: bool,
}

impl UdpUnderlay {
    /// Wraps a bound, non-blocking socket.
    pub fn new(socket: UdpSocket) -> UdpUnderlay {
        UdpUnderlay { socket, gso: true }
    }

    /// Wraps a bound, non-blocking socket a worker reads, with UDP GRO on
    /// where the kernel offers it (a line says when it does not).
    pub fn receiving(socket: UdpSocket) -> UdpUnderlay {
        if let Err(e) = enable_udp_gro(&socket) {
            tracing::info!("UDP GRO unavailable ({e}): one datagram per received message");
        }
        UdpUnderlay::new(socket)
    }

    /// Another handle on the same socket (for the control thread's sends).
    pub fn try_clone(&self) -> io::Result<UdpUnderlay> {
        Ok(UdpUnderlay {
            socket: self.socket.try_clone()?,
            gso: self.gso,
        })
    }

    /// Sends one datagram. EMSGSIZE when it exceeds the path (the socket
    /// sets DF).
    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(datagram, to)
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Turns on UDP GRO (UDP_GRO) on `socket`: the kernel may then hand over
/// a run of datagrams from one sender as one message, which
/// [`RecvBatch`] cuts up. Only for sockets read through a `RecvBatch`.
pub fn enable_udp_gro(socket: &UdpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many datagrams from `start` form a UDP GSO run: every one but the
/// last exactly as long as the first, at most 64 segments and 64 KB in all.
fn gso_run(datagrams: &[&[u8]], start: usize) -> usize {
    let seg = datagrams[start].len();
    let mut n = 1;
    let mut total = seg;
    while start + n < datagrams.len() && n < offload::MAX_GSO_SEGMENTS {
        let len = datagrams[start + n].len();
        // The previous one must be full-size for this one to join.
        if len > seg || total + len > offload::MAX_GSO_BYTES {
            break;
        }
        total += len;
        n += 1;
        if len < seg {
            break; // a short datagram ends the run
        }
    }
    n
}

impl Underlay for UdpUnderlay {
    fn recv_batch(&mut self, batch: &mut RecvBatch) -> usize {
        loop {
            match batch.recv(self.socket.as_raw_fd()) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock; ICMP errors also surface here: nothing to do.
                Err(_) => return 0,
            }
        }
    }

    fn send_batch(&mut self, datagrams: &[&[u8]], to: SocketAddr) -> SendReport {
        let fd = self.socket.as_raw_fd();
        let mut report = SendReport::default();
        let singles = |from: usize, upto: usize, report: &mut SendReport| {
            let mut part = SendReport::default();
            let (sent, calls) = batch::send_slices(
                fd,
                datagrams[from..upto].iter().map(|d| (*d, to)),
                |_, errno| {
                    part.too_big |= errno == libc::EMSGSIZE;
                },
            );
            part.sent = sent as usize;
            part.calls = calls as usize;
            part.failed = (upto - from) - part.sent;
            report.add(part);
        };
        // Runs of equal-size datagrams (a TCP burst cut into full segments)
        // leave in one UDP GSO sendmsg; the rest, in order, with sendmmsg.
        let mut singles_from = 0;
        let mut i = 0;
        while i < datagrams.len() {
            let run = if self.gso { gso_run(datagrams, i) } else { 1 };
            if run < 2 {
                i += 1;
                continue;
            }
            if singles_from < i {
                singles(singles_from, i, &mut report);
            }
            let seg_len = datagrams[i].len() as u16;
            match offload::send_gso_slices(fd, &datagrams[i..i + run], seg_len, to) {
                Ok(_) => {
                    report.sent += run;
                    report.gso_sends += 1;
                    report.gso_datagrams += run;
                    singles_from = i + run;
                }
                Err(e) if offload::gso_unsupported(&e) => {
                    tracing::info!("UDP GSO refused ({e}); sending datagrams one by one with sendmmsg from now on");
                    self.gso = false;
                    // The run goes with the singles below.
                }
                Err(e) => {
                    report.too_big |= e.raw_os_error() == Some(libc::EMSGSIZE);
                    report.failed += run;
                    singles_from = i + run;
                }
            }
            i += run;
        }
        if singles_from < datagrams.len() {
            singles(singles_from, datagrams.len(), &mut report);
        }
        report
    }

    fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        super::device::register_fd(self.socket.as_raw_fd(), registry, token)
    }
}

impl Underlay for XdpUnderlay {
    fn recv_batch(&mut self, batch: &mut RecvBatch) -> usize {
        batch.fill(|buf| self.recv_from(buf))
    }

    fn send_batch(&mut self, datagrams: &[&[u8]], to: SocketAddr) -> SendReport {
        let mut report = SendReport::default();
        for d in datagrams {
            match self.queue(d, to) {
                Ok(()) => report.sent += 1,
                Err(e) => {
                    report.failed += 1;
                    report.too_big |= e.raw_os_error() == Some(libc::EMSGSIZE);
                }
            }
        }
        self.flush();
        report
    }

    fn flush(&mut self) {
        XdpUnderlay::flush(self);
    }

    fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        for fd in self.poll_fds() {
            super::device::register_fd(fd, registry, token)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_runs_take_equal_sizes_and_one_short_tail() {
        let a = [0u8; 100];
        let b = [0u8; 50];
        let c = [0u8; 120];
        let d: Vec<&[u8]> = vec![&a, &a, &a, &b, &a, &c];
        assert_eq!(gso_run(&d, 0), 4, "three full, one short tail");
        assert_eq!(gso_run(&d, 4), 1, "a longer one never joins");
        assert_eq!(gso_run(&d, 5), 1);
    }

    #[test]
    fn a_batch_to_one_destination_arrives_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let mut u = UdpUnderlay::new(tx);
        let bufs: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; if i == 6 { 30 } else { 80 }])
            .collect();
        let parts: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
        let report = u.send_batch(&parts, rx.local_addr().unwrap());
        assert_eq!((report.sent, report.failed), (10, 0));
        let mut r = [0u8; 200];
        for i in 0..10u8 {
            let n = rx.recv(&mut r).unwrap();
            assert_eq!((r[0], n), (i, if i == 6 { 30 } else { 80 }));
        }
    }
}
