//! Plaintext mode: standard RFC 7348 VXLAN between the local bridge and
//! static VXLAN tunnel endpoints (`--vtep`), with MAC learning.
//!
//! Plaintext mode speaks no weft control protocol at all: every remote host
//! is a static VTEP, whether it runs weft or a Linux vxlan device, a
//! switch or flannel. There is nothing to authenticate (the frames are not
//! protected anyway) and nothing to negotiate: VNI, port and MTU are
//! configuration, exactly as for a Linux vxlan device. One frame per
//! datagram, as the RFC requires. The datapath workers of the encrypted
//! mode move the frames here too (`Codec::Vxlan`): each with its own TAP
//! queue (offloads on) and its own SO_REUSEPORT socket, batches in and
//! out, equal-size runs in one UDP GSO send.

use super::dataplane::StopFlag;
use super::l2::L2Switch;
use super::worker::{Codec, ControlLink, Vtep, WorkerConfig, WorkerParts, WorkerSet};
use crate::api::http::StatusServer;
use crate::api::l2_status::{L2Status, VtepStatus, VxlanDrops};
use crate::api::{DropCounters, Status};
use crate::datapath::underlay::UdpUnderlay;
use crate::datapath::{tap, udp};
use crate::mesh::ForwardingReader;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIGNALS: Token = Token(0);
const WAKE: Token = Token(1);
const STATUS_INTERVAL: Duration = Duration::from_millis(100);

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
    /// Addresses put on the bridge (one per family at most).
    pub overlays: Vec<(IpAddr, u8)>,
    /// Bridge and TAP MTU.
    pub overlay_mtu: u16,
    /// Idle age of learned MAC addresses.
    pub mac_age: Duration,
    /// Most MAC addresses learned behind one static VTEP.
    pub mac_quota: usize,
    /// Status server address.
    pub status_addr: SocketAddr,
    /// Datapath worker threads.
    pub workers: usize,
    /// TAP offloads (IFF_VNET_HDR).
    pub offload: bool,
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

/// Sets up the bridge, TAP and sockets, runs the workers until
/// SIGINT/SIGTERM and removes what it created.
pub fn launch(cfg: PlainLaunch) -> Result<(), PlainError> {
    tracing::warn!("plaintext mode: frames cross the underlay as standard VXLAN, unencrypted and unauthenticated");
    let sockets = udp::bind_data_sockets(cfg.bind, cfg.workers, udp::Steering::InnerFlow)
        .map_err(|e| PlainError::Usage(e.to_string()))?;
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
    let overlay_text = cfg.status_template.overlay.clone();
    let (taps, guard) = tap::create(
        &cfg.bridge,
        &cfg.tap_name,
        cfg.overlay_mtu,
        &cfg.overlays,
        cfg.workers,
        cfg.offload,
    )
    .map_err(PlainError::Usage)?;
    tracing::info!(
        "bridge {} holds {overlay_text}; TAP {} on it, mtu {}, offloads {}; VXLAN VNI {} on {}; {} static VTEP(s); {} worker(s)",
        cfg.bridge,
        cfg.tap_name,
        cfg.overlay_mtu,
        if taps[0].vnet_hdr() { "on" } else { "off" },
        cfg.vni,
        cfg.bind,
        cfg.vteps.len(),
        cfg.workers
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
    let result = run(&cfg, taps, sockets, signal_rx, template, snapshot);
    drop(guard);
    result?;
    tracing::info!("stopped; the TAP device is gone");
    Ok(())
}

/// The plaintext mode's control thread: starts the workers, expires MAC
/// entries, publishes the status, and stops everything on a signal (or
/// when a worker dies).
fn run(
    cfg: &PlainLaunch,
    taps: Vec<crate::datapath::tun::TunDevice>,
    sockets: Vec<std::net::UdpSocket>,
    signals: std::os::unix::net::UnixStream,
    template: Status,
    snapshot: Arc<Mutex<Status>>,
) -> Result<(), PlainError> {
    let runtime = |e: std::io::Error| PlainError::Runtime(format!("plaintext mode: {e}"));
    let mut poll = Poll::new().map_err(runtime)?;
    signals.set_nonblocking(true).map_err(runtime)?;
    poll.registry()
        .register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )
        .map_err(runtime)?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).map_err(runtime)?);
    let vteps: Arc<Vec<Vtep>> = Arc::new(
        cfg.vteps
            .iter()
            .map(|&addr| Vtep {
                addr,
                counters: Default::default(),
            })
            .collect(),
    );
    let switch = Arc::new(Mutex::new(L2Switch::new(
        cfg.overlay_mtu,
        cfg.mac_age,
        cfg.mac_quota,
    )));
    let parts: Vec<WorkerParts> = taps
        .into_iter()
        .zip(sockets)
        .map(|(tap, socket)| WorkerParts {
            device: Box::new(tap),
            underlay: Box::new(UdpUnderlay::receiving(socket)),
        })
        .collect();
    let stop = Arc::new(StopFlag::default());
    // Plaintext workers hand nothing off; the channel is only there for
    // the shape (the waker tells of a worker's death).
    let (handoff, _handoffs) = crossbeam_channel::unbounded();
    let mut workers = WorkerSet::start(
        parts,
        |index| WorkerConfig {
            index,
            vni: cfg.vni,
            overlay_mtu: cfg.overlay_mtu,
            l2: Some(switch.clone()),
            overlay_text: cfg.status_template.overlay.clone(),
            panic_after: None,
            codec: Codec::Vxlan(vteps.clone()),
        },
        Arc::default(),
        ForwardingReader::empty(),
        ControlLink {
            handoff,
            waker: waker.clone(),
        },
        stop.clone(),
    )
    .map_err(runtime)?;
    let started = Instant::now();
    let mut events = Events::with_capacity(8);
    let result = loop {
        if let Err(e) = poll.poll(&mut events, Some(STATUS_INTERVAL)) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(runtime(e));
        }
        if events.iter().any(|e| e.token() == SIGNALS) {
            break Ok(());
        }
        if stop.stopped() {
            break Err(PlainError::Runtime(
                "a datapath worker stopped unexpectedly (see the error above); weft stops with it"
                    .into(),
            ));
        }
        let now = Instant::now();
        let counters = switch.lock().map(|mut s| {
            s.tick(now);
            s.counters.clone()
        });
        let mut status = template.clone();
        status.uptime_secs = now.duration_since(started).as_secs();
        let mut drops = DropCounters::default();
        let mut vxlan_drops = VxlanDrops::default();
        workers.add_counters(&mut drops, &mut status.batching, Some(&mut vxlan_drops));
        status.dropped.send_errors = drops.send_errors;
        status.dropped.malformed = vxlan_drops.bad_header;
        status.dropped.bad_record = vxlan_drops.wrong_vni;
        status.dropped.too_big = drops.too_big;
        if let Some(l2) = status.l2.as_mut() {
            if let Ok(c) = counters {
                l2.counters = c;
            }
            l2.vteps = vteps
                .iter()
                .map(|v| {
                    let (tx_bytes, tx_packets, rx_bytes, rx_packets) = v.counters.read();
                    VtepStatus {
                        address: v.addr.to_string(),
                        tx_packets,
                        tx_bytes,
                        rx_packets,
                        rx_bytes,
                    }
                })
                .collect();
            l2.vxlan_drops = vxlan_drops;
        }
        if let Ok(mut g) = snapshot.lock() {
            *g = status;
        }
    };
    workers.stop();
    result
}
