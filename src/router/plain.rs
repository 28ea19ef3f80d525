//! Plaintext mode: standard RFC 7348 VXLAN between the local bridge and
//! static VXLAN tunnel endpoints (`--vtep`), with MAC learning.
//!
//! Plaintext mode speaks no weft control protocol at all: every remote host
//! is a static VTEP, whether it runs weft or a Linux vxlan device, a
//! switch or flannel. There is nothing to authenticate (the frames are not
//! protected anyway) and nothing to negotiate: VNI, port and MTU are
//! configuration, exactly as for a Linux vxlan device. One frame per
//! datagram, as the RFC requires; datagrams are read with recvmmsg and
//! written with sendmmsg, [`BATCH`] per call.

use super::l2::{Egress, L2Switch};
use crate::api::http::StatusServer;
use crate::api::l2_status::{L2Status, VtepStatus, VxlanDrops};
use crate::api::Status;
use crate::datapath::batch::{RecvBatch, SendBatch, BATCH};
use crate::datapath::tun::TunDevice;
use crate::datapath::{tap, udp};
use crate::mesh::fdb::Location;
use crate::wire::vxlan;
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TAP: Token = Token(0);
const UDP: Token = Token(1);
const SIGNALS: Token = Token(2);
const STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// Room for one datagram: the largest UDP payload.
const MAX_DATAGRAM: usize = 65536;

/// What `weft launch --mode plain` decided.
pub struct PlainLaunch {
    /// Where the VXLAN socket binds (listen IP, VXLAN port).
    pub bind: SocketAddr,
    /// Static remote VTEPs (IP, VXLAN port).
    pub vteps: Vec<SocketAddr>,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// Bridge to create or attach to.
    pub bridge: String,
    /// TAP device name.
    pub tap_name: String,
    /// Address put on the bridge.
    pub overlay: (IpAddr, u8),
    /// Bridge and TAP MTU.
    pub overlay_mtu: u16,
    /// Idle age of learned MAC addresses.
    pub mac_age: Duration,
    /// Most MAC addresses learned behind one static VTEP.
    pub mac_quota: usize,
    /// Status server address.
    pub status_addr: SocketAddr,
    /// The static part of the status.
    pub status_template: Status,
}

/// A plaintext-mode launch failure: `Usage` exits 2, `Runtime` 1.
#[derive(Debug)]
pub enum PlainError {
    /// Bad input or environment the user must fix.
    Usage(String),
    /// Failure while running.
    Runtime(String),
}

struct Vtep {
    addr: SocketAddr,
    status: VtepStatus,
}

/// Sets up the bridge, TAP and socket, runs until SIGINT/SIGTERM and
/// removes what it created.
pub fn launch(cfg: PlainLaunch) -> Result<(), PlainError> {
    tracing::warn!("plaintext mode: frames cross the underlay as standard VXLAN, unencrypted and unauthenticated");
    let socket = udp::bind_data_socket(cfg.bind).map_err(|e| PlainError::Usage(e.to_string()))?;
    let http = crate::api::http::bind(cfg.status_addr).map_err(PlainError::Usage)?;
    let (signal_rx, signal_tx) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| PlainError::Runtime(format!("cannot create the signal pipe: {e}")))?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let tx = signal_tx
            .try_clone()
            .map_err(|e| PlainError::Runtime(e.to_string()))?;
        signal_hook::low_level::pipe::register(sig, tx)
            .map_err(|e| PlainError::Runtime(format!("cannot handle signal {sig}: {e}")))?;
    }
    let (tap_dev, guard) = tap::create(
        &cfg.bridge,
        &cfg.tap_name,
        cfg.overlay_mtu,
        Some(cfg.overlay),
        1,
    )
    .map_err(PlainError::Usage)?;
    let Some(tap_dev) = tap_dev.into_iter().next() else {
        return Err(PlainError::Runtime("no TAP queue".into()));
    };
    tracing::info!(
        "bridge {} holds {}/{}; TAP {} on it, mtu {}; VXLAN VNI {} on {}; {} static VTEP(s)",
        cfg.bridge,
        cfg.overlay.0,
        cfg.overlay.1,
        cfg.tap_name,
        cfg.overlay_mtu,
        cfg.vni,
        cfg.bind,
        cfg.vteps.len()
    );
    let mut template = cfg.status_template.clone();
    template.l2 = Some(L2Status {
        bridge: cfg.bridge.clone(),
        bridge_created: guard.created(),
        mac_age_secs: cfg.mac_age.as_secs(),
        mac_quota: cfg.mac_quota as u64,
        ..Default::default()
    });
    let snapshot = Arc::new(Mutex::new(template.clone()));
    let _status_server = StatusServer::start(http, snapshot.clone());
    let mut plain = PlainRouter::new(tap_dev, socket, signal_rx, &cfg, template, snapshot)
        .map_err(|e| PlainError::Runtime(format!("cannot start the event loop: {e}")))?;
    plain
        .run()
        .map_err(|e| PlainError::Runtime(format!("event loop failed: {e}")))?;
    drop(plain);
    drop(guard);
    tracing::info!("stopped; the TAP device is gone");
    Ok(())
}

struct PlainRouter {
    poll: Poll,
    tap: TunDevice,
    udp: UdpSocket,
    signals: std::os::unix::net::UnixStream,
    vni: u32,
    vteps: Vec<Vtep>,
    switch: L2Switch,
    drops: VxlanDrops,
    send_errors: u64,
    recv: RecvBatch,
    send: SendBatch,
    template: Status,
    snapshot: Arc<Mutex<Status>>,
    started: Instant,
}

impl PlainRouter {
    fn new(
        tap: TunDevice,
        udp: std::net::UdpSocket,
        signals: std::os::unix::net::UnixStream,
        cfg: &PlainLaunch,
        template: Status,
        snapshot: Arc<Mutex<Status>>,
    ) -> io::Result<PlainRouter> {
        let poll = Poll::new()?;
        let mut udp = UdpSocket::from_std(udp);
        signals.set_nonblocking(true)?;
        poll.registry()
            .register(&mut SourceFd(&tap.as_raw_fd()), TAP, Interest::READABLE)?;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let frame_room = usize::from(cfg.overlay_mtu) + 14 + 4 + vxlan::HEADER_LEN;
        Ok(PlainRouter {
            poll,
            tap,
            udp,
            signals,
            vni: cfg.vni,
            vteps: cfg
                .vteps
                .iter()
                .map(|&addr| Vtep {
                    addr,
                    status: VtepStatus {
                        address: addr.to_string(),
                        ..Default::default()
                    },
                })
                .collect(),
            switch: L2Switch::new(cfg.overlay_mtu, cfg.mac_age, cfg.mac_quota),
            drops: VxlanDrops::default(),
            send_errors: 0,
            recv: RecvBatch::new(MAX_DATAGRAM),
            // One more than the largest frame, so an oversized read is seen as such.
            send: SendBatch::new(frame_room + 1),
            template,
            snapshot,
            started: Instant::now(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        let mut last_status = Instant::now() - STATUS_INTERVAL;
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(STATUS_INTERVAL)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut stop = false;
            for event in events.iter() {
                match event.token() {
                    TAP => self.on_tap_readable(),
                    UDP => self.on_udp_readable(),
                    SIGNALS => stop = true,
                    _ => {}
                }
            }
            if stop {
                let _ = &self.signals;
                return Ok(());
            }
            let now = Instant::now();
            self.switch.tick(now);
            if now.duration_since(last_status) >= STATUS_INTERVAL {
                self.publish_status(now);
                last_status = now;
            }
        }
    }

    /// Frames from the bridge: VXLAN header written in front of the frame,
    /// read straight into the send batch (no copy for unicast).
    fn on_tap_readable(&mut self) {
        let fd = self.udp.as_raw_fd();
        let now = Instant::now();
        loop {
            if self.send.len() + self.vteps.len() > BATCH {
                self.flush(fd);
            }
            let Some(slot) = self.send.next_slot() else {
                self.flush(fd);
                continue;
            };
            let n = match self.tap.recv(&mut slot[vxlan::HEADER_LEN..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the TAP device failed");
                    break;
                }
            };
            let frame = &slot[vxlan::HEADER_LEN..vxlan::HEADER_LEN + n];
            let egress = self.switch.from_local(frame, now);
            vxlan::Packet::new_unchecked(&mut slot[..vxlan::HEADER_LEN]).set_header(self.vni);
            let datagram_len = vxlan::HEADER_LEN + n;
            match egress {
                Egress::Unicast(Location::Vtep(addr)) => {
                    if let Some(v) = self.vteps.iter_mut().find(|v| v.addr == addr) {
                        v.status.tx_packets += 1;
                        v.status.tx_bytes += n as u64;
                    }
                    self.send.commit(datagram_len, addr);
                }
                Egress::Flood => {
                    // The first VTEP gets the slot itself, the others a copy.
                    let Some(first) = self.vteps.first_mut() else {
                        continue;
                    };
                    first.status.tx_packets += 1;
                    first.status.tx_bytes += n as u64;
                    let first_addr = first.addr;
                    self.send.commit(datagram_len, first_addr);
                    let idx = self.send.len() - 1;
                    for v in self.vteps.iter_mut().skip(1) {
                        if self.send.push_copy_of(idx, v.addr) {
                            v.status.tx_packets += 1;
                            v.status.tx_bytes += n as u64;
                        } else {
                            self.send_errors += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        self.flush(fd);
    }

    fn flush(&mut self, fd: std::os::fd::RawFd) {
        let before = self.send.failed;
        self.send.flush(fd);
        self.send_errors += self.send.failed - before;
    }

    fn on_udp_readable(&mut self) {
        let fd = self.udp.as_raw_fd();
        let now = Instant::now();
        loop {
            let count = match self.recv.recv(fd) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => continue, // ICMP errors surface here
            };
            for i in 0..count {
                let Some((datagram, from)) = self.recv.get_mut(i) else {
                    continue;
                };
                // Linux vxlan devices send from a per-flow source port: match the IP only.
                let Some(vtep) = self.vteps.iter_mut().find(|v| v.addr.ip() == from.ip()) else {
                    self.drops.unknown_vtep += 1;
                    continue;
                };
                let Ok(header) = vxlan::Packet::new_checked(&*datagram) else {
                    self.drops.bad_header += 1;
                    continue;
                };
                let Ok(repr) = vxlan::Repr::parse(&header) else {
                    self.drops.bad_header += 1;
                    continue;
                };
                if repr.vni != self.vni {
                    self.drops.wrong_vni += 1;
                    continue;
                }
                let frame = &datagram[vxlan::HEADER_LEN..];
                if !self
                    .switch
                    .from_remote(frame, Location::Vtep(vtep.addr), now)
                {
                    continue;
                }
                vtep.status.rx_packets += 1;
                vtep.status.rx_bytes += frame.len() as u64;
                if self.tap.send(frame).is_err() {
                    self.send_errors += 1;
                }
            }
        }
    }

    fn publish_status(&mut self, now: Instant) {
        let mut status = self.template.clone();
        status.uptime_secs = now.duration_since(self.started).as_secs();
        status.dropped.send_errors = self.send_errors;
        status.dropped.malformed = self.drops.bad_header;
        status.dropped.bad_record = self.drops.wrong_vni;
        status.batching.sendmmsg_datagrams = self.send.sent;
        status.batching.sendmmsg_calls = self.send.calls;
        if let Some(l2) = status.l2.as_mut() {
            l2.counters = self.switch.counters.clone();
            l2.vteps = self.vteps.iter().map(|v| v.status.clone()).collect();
            l2.vxlan_drops = self.drops.clone();
        }
        if let Ok(mut g) = self.snapshot.lock() {
            *g = status;
        }
    }
}
