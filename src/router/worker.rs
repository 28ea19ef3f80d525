//! A datapath worker: one thread with its own queue of the local device,
//! its own underlay socket and its own mio loop. It moves data between the
//! two in batches, reading the forwarding table and the [`DataPlane`]
//! without a lock, and hands everything else (heartbeats, relays,
//! broadcasts, end-to-end sessions) to the control thread.
//!
//! device → route → pack → seal → underlay, and underlay → open → check
//! the inner source → device; one batch in, one batch out.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use super::dataplane::{
    add_batching, add_drops, DataPlane, Handoff, LinkPath, PathCounters, RecvSession, SessionOwner,
    SharedPlane, StopFlag, WorkerShared,
};
use super::l2::{Egress, L2Switch};
use super::sleeve_batch::SleeveBatcher;
use super::vxlan_batch::VxlanBatcher;
use crate::api::l2_status::VxlanDrops;
use crate::api::DropCounters;
use crate::datapath::batch::RecvBatch;
use crate::datapath::device::{Device, PacketBatch, DEVICE_BATCH};
use crate::datapath::underlay::Underlay;
use crate::mesh::fdb::Location;
use crate::mesh::{Destination, ForwardingReader};
use crate::noise::session::OpenError;
use crate::wire::sleeve;
use crate::wire::vxlan;

const DEVICE: Token = Token(0);
const UNDERLAY: Token = Token(1);
const WAKE: Token = Token(2);

/// How often a worker adds its counters to what the control thread reads.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Batches of one kind handled before the other side gets a turn: small,
/// so a flood one way never holds up the other (a TCP sender waits for
/// the ACKs that come the other way).
const BATCHES_PER_TURN: usize = 2;
/// Room for one datagram: the largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// MAC-learning locations of peers reached through relays start here,
/// above every connection token (the control thread owns them).
pub const RELAY_LOCATION_BASE: usize = 1 << 40;

/// How a worker frames what it sends to the underlay.
#[derive(Clone)]
pub enum Codec {
    /// weft's encrypted sleeve between mesh peers.
    Sleeve,
    /// Plaintext mode: standard VXLAN to static VTEPs.
    Vxlan(Arc<Vec<Vtep>>),
}

/// A static VXLAN tunnel endpoint of plaintext mode and its counters.
#[derive(Debug)]
pub struct Vtep {
    /// Where its frames go (IP, VXLAN port).
    pub addr: SocketAddr,
    /// Frames and bytes to and from it.
    pub counters: PathCounters,
}

/// What a worker is told at start.
pub struct WorkerConfig {
    /// Its number (0-based), for logs and thread names.
    pub index: usize,
    /// The VNI records must carry.
    pub vni: u32,
    /// The device MTU (the most any peer gets).
    pub overlay_mtu: u16,
    /// Bridge mode: the MAC switch shared by every worker.
    pub l2: Option<Arc<Mutex<L2Switch>>>,
    /// This host's `ADDR/PREFIX` (its broadcast is never answered with
    /// ICMP unreachable).
    pub overlay_text: String,
    /// Test builds: panic after this many packets read from the device.
    pub panic_after: Option<u64>,
    /// Sleeve or plaintext VXLAN.
    pub codec: Codec,
}

/// The control thread's side of the hand-offs.
#[derive(Clone)]
pub struct ControlLink {
    /// Where hand-offs go.
    pub handoff: crossbeam_channel::Sender<Handoff>,
    /// Wakes the control thread.
    pub waker: Arc<Waker>,
}

/// One datapath worker.
pub struct Worker {
    cfg: WorkerConfig,
    poll: Poll,
    device: Box<dyn Device>,
    underlay: Box<dyn Underlay>,
    plane: SharedPlane,
    fwd: ForwardingReader,
    control: ControlLink,
    stop: Arc<StopFlag>,
    shared: Arc<WorkerShared>,
    batcher: SleeveBatcher,
    /// Plaintext mode's sending queue.
    vxlan_out: VxlanBatcher,
    vxlan_drops: VxlanDrops,
    read: PacketBatch,
    write: PacketBatch,
    /// `None` only while a batch is being handled.
    recv: Option<RecvBatch>,
    drops: DropCounters,
    icmp_buf: Box<[u8]>,
    unreachable: UnreachableLimit,
    /// Sessions reported to the control thread in this batch.
    reported: Vec<(u32, SocketAddr)>,
    /// Bridge and plaintext modes: where each frame of the batch read from
    /// the bridge goes (decided under the switch's lock, acted on after).
    egress: Vec<Egress>,
    last_publish: Instant,
    packets_read: u64,
}

impl Worker {
    /// A worker on `device` and `underlay`. Returns it and the waker that
    /// makes its loop look at the stop flag.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: WorkerConfig,
        device: Box<dyn Device>,
        underlay: Box<dyn Underlay>,
        plane: SharedPlane,
        fwd: ForwardingReader,
        control: ControlLink,
        stop: Arc<StopFlag>,
        shared: Arc<WorkerShared>,
    ) -> std::io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        device.register(poll.registry(), DEVICE)?;
        let device_room = device.write_room();
        underlay.register(poll.registry(), UNDERLAY)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let l2_header = if cfg.l2.is_some() { 14 } else { 0 };
        let max_packet = usize::from(cfg.overlay_mtu).max(1500) + 64 + l2_header;
        let now = Instant::now();
        let mut batcher = SleeveBatcher::new(
            SleeveBatcher::limit_for(cfg.overlay_mtu, l2_header),
            cfg.vni,
        );
        batcher.set_lane(cfg.index as u8);
        let worker = Worker {
            vxlan_out: VxlanBatcher::new(max_packet, cfg.vni),
            vxlan_drops: VxlanDrops::default(),
            batcher,
            unreachable: UnreachableLimit::new(&cfg.overlay_text, now),
            cfg,
            poll,
            device,
            underlay,
            plane,
            fwd,
            control,
            stop,
            shared,
            read: PacketBatch::new(DEVICE_BATCH, max_packet),
            write: PacketBatch::new(DEVICE_BATCH, max_packet.max(device_room)),
            recv: Some(RecvBatch::new(MAX_DATAGRAM)),
            drops: DropCounters::default(),
            icmp_buf: vec![0u8; 1280].into_boxed_slice(),
            reported: Vec::new(),
            egress: Vec::new(),
            last_publish: now,
            packets_read: 0,
        };
        Ok((worker, waker))
    }

    /// Runs until the stop flag is set.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(16);
        // Edge-triggered: a side with more queued than one turn handles
        // keeps its flag, and the next poll does not wait.
        let (mut device_more, mut underlay_more) = (false, false);
        loop {
            let timeout = if device_more || underlay_more {
                Duration::ZERO
            } else {
                PUBLISH_INTERVAL
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.cfg.index, "worker event loop failed: {e}");
                    self.stop.stop();
                    let _ = self.control.waker.wake();
                    return;
                }
            }
            if self.stop.stopped() {
                break;
            }
            for event in events.iter() {
                match event.token() {
                    DEVICE => device_more = true,
                    UNDERLAY => underlay_more = true,
                    _ => {}
                }
            }
            if underlay_more {
                underlay_more = self.on_underlay();
            }
            if device_more {
                device_more = self.on_device();
            }
            let now = Instant::now();
            if now.duration_since(self.last_publish) >= PUBLISH_INTERVAL {
                self.publish(now);
            }
        }
        self.publish(Instant::now());
    }

    /// Adds this worker's counters to the shared ones.
    fn publish(&mut self, now: Instant) {
        self.last_publish = now;
        let stats = self.device.take_stats();
        self.drops.too_big += stats.too_big;
        self.drops.send_errors +=
            stats.write_errors + self.batcher.send_errors + self.vxlan_out.send_errors;
        self.batcher.send_errors = 0;
        self.vxlan_out.send_errors = 0;
        let batching = std::mem::take(&mut self.batcher.counters);
        let vxlan_batching = std::mem::take(&mut self.vxlan_out.counters);
        let drops = std::mem::take(&mut self.drops);
        let vxlan = std::mem::take(&mut self.vxlan_drops);
        if let Ok(mut c) = self.shared.counters.lock() {
            add_drops(&mut c.drops, &drops);
            add_batching(&mut c.batching, &batching);
            add_batching(&mut c.batching, &vxlan_batching);
            c.vxlan.wrong_vni += vxlan.wrong_vni;
            c.vxlan.bad_header += vxlan.bad_header;
            c.vxlan.unknown_vtep += vxlan.unknown_vtep;
        }
    }

    fn hand_off(&self, handoff: Handoff) {
        if self.control.handoff.send(handoff).is_ok() {
            let _ = self.control.waker.wake();
        }
    }

    // ---- local device → underlay ------------------------------------------

    /// Up to [`BATCHES_PER_TURN`] batches from the device; true when more
    /// may be queued.
    fn on_device(&mut self) -> bool {
        for _ in 0..BATCHES_PER_TURN {
            let mut read = std::mem::take(&mut self.read);
            let n = self.device.read_batch(&mut read);
            if n == 0 {
                self.read = read;
                return false;
            }
            self.packets_read += n as u64;
            if self
                .cfg
                .panic_after
                .is_some_and(|limit| self.packets_read >= limit)
            {
                panic!(
                    "test hook: worker {} panics after {} packets from the device",
                    self.cfg.index, self.packets_read
                );
            }
            let plane = self.plane.load();
            match (self.cfg.l2.clone(), self.cfg.codec.clone()) {
                (Some(switch), Codec::Vxlan(vteps)) => self.switch_vxlan(&read, &switch, &vteps),
                (Some(switch), Codec::Sleeve) => self.switch_l2(&read, &switch, &plane),
                (None, _) => {
                    for packet in read.iter() {
                        self.route_l3(packet, &plane);
                    }
                }
            }
            read.clear();
            self.read = read;
            self.flush_batcher();
            self.vxlan_out.flush(self.underlay.as_mut());
        }
        true
    }

    /// Seals and sends what the batcher holds; peers whose datagram the
    /// kernel refused as too big are reported.
    fn flush_batcher(&mut self) {
        self.batcher.flush(self.underlay.as_mut());
        while let Some(token) = self.batcher.too_big_peers.pop() {
            self.hand_off(Handoff::TooBig(token));
        }
    }

    /// Routes one IP packet to its peer's datagram, or answers it.
    fn route_l3(&mut self, packet: &[u8], plane: &DataPlane) {
        let Some(dst) = destination(packet) else {
            return;
        };
        let target = self.fwd.load().lookup_ip(dst).copied();
        match target {
            Some(Destination::Peer {
                peer,
                next_hop,
                conn,
            }) if peer == next_hop => {
                let token = conn.0 as usize;
                let Some(path) = plane.links.get(&token) else {
                    return; // no session yet: the handshake is under way
                };
                // Larger than the peer's verified path carries: tell the
                // local sender the real MTU instead of dropping silently.
                if packet.len() > usize::from(path.payload_mtu) {
                    self.drops.too_big += 1;
                    self.answer_too_big(packet, path.payload_mtu);
                    return;
                }
                self.pack(token, path, packet, 0);
            }
            // Through relays: sealed end to end by the control thread.
            Some(Destination::Peer { .. }) => self.hand_off(Handoff::Local(packet.to_vec())),
            // Addressed to this host: the kernel answers it, not the overlay.
            Some(Destination::Local) => {}
            Some(Destination::Unreachable { .. }) | None => self.unreachable(packet, dst),
        }
    }

    /// Packs `frame` into the datagram being filled for the peer on
    /// connection `token` (`l2_header`: 14 in bridge mode).
    fn pack(&mut self, token: usize, path: &LinkPath, frame: &[u8], l2_header: usize) {
        let limit = SleeveBatcher::limit_for(path.payload_mtu, l2_header);
        if self.batcher.push(
            self.underlay.as_mut(),
            token,
            &path.session,
            path.endpoint,
            limit,
            frame,
        ) {
            path.counters.sent(1, frame.len() as u64);
        } else {
            self.drops.too_big += 1;
        }
    }

    /// No peer claims `dst`: tell the local sender at once (host/address
    /// unreachable) instead of letting it time out.
    fn unreachable(&mut self, packet: &[u8], dst: IpAddr) {
        // Multicast (IGMP, MLD, mDNS) has no single owner in L3 mode.
        if dst.is_multicast() || Some(dst) == self.unreachable.broadcast {
            return;
        }
        self.drops.no_route += 1;
        if !self.unreachable.allow(Instant::now()) {
            return;
        }
        let reply = match packet[0] >> 4 {
            4 => crate::wire::icmpv4::build_host_unreachable(packet, &mut self.icmp_buf),
            6 => crate::wire::icmpv6::build_address_unreachable(packet, &mut self.icmp_buf),
            _ => Ok(None),
        };
        if let Ok(Some(len)) = reply {
            let _ = self.device.write_one(&self.icmp_buf[..len]);
        }
    }

    /// ICMP fragmentation-needed / packet-too-big naming `limit`.
    fn answer_too_big(&mut self, packet: &[u8], limit: u16) {
        if let Some(len) = too_big_reply(packet, limit, &mut self.icmp_buf) {
            let _ = self.device.write_one(&self.icmp_buf[..len]);
        }
    }

    /// Bridge mode: learns sources and forwards each frame read from the
    /// bridge (the switch is locked once per batch, only while it decides;
    /// sealing and sending happen after).
    fn switch_l2(&mut self, read: &PacketBatch, switch: &Mutex<L2Switch>, plane: &DataPlane) {
        self.decide(read, switch);
        let egress = std::mem::take(&mut self.egress);
        for (frame, decision) in read.iter().zip(egress.iter()) {
            match *decision {
                Egress::Unicast(Location::Peer(id)) if id >= RELAY_LOCATION_BASE => {
                    self.hand_off(Handoff::L2Relay {
                        location: id,
                        frame: frame.to_vec(),
                    });
                }
                Egress::Unicast(Location::Peer(token)) => {
                    if let Some(path) = plane.links.get(&token) {
                        self.pack(token, path, frame, 14);
                    }
                }
                // Along this host's broadcast tree: the control thread.
                Egress::Flood => self.hand_off(Handoff::Flood(frame.to_vec())),
                _ => {}
            }
        }
        self.egress = egress;
    }

    /// Learns the sources of a batch read from the bridge and decides where
    /// each frame goes (into `self.egress`), under one short lock.
    fn decide(&mut self, read: &PacketBatch, switch: &Mutex<L2Switch>) {
        self.egress.clear();
        let now = Instant::now();
        let Ok(mut switch) = switch.lock() else {
            return;
        };
        self.egress
            .extend(read.iter().map(|frame| switch.from_local(frame, now)));
    }

    /// Plaintext mode: learns sources and sends each frame read from the
    /// bridge to its VTEP, or to every VTEP (flood), as VXLAN.
    fn switch_vxlan(&mut self, read: &PacketBatch, switch: &Mutex<L2Switch>, vteps: &[Vtep]) {
        self.decide(read, switch);
        let egress = std::mem::take(&mut self.egress);
        for (frame, decision) in read.iter().zip(egress.iter()) {
            let bytes = frame.len() as u64;
            match *decision {
                Egress::Unicast(Location::Vtep(addr)) => {
                    if self.vxlan_out.push(self.underlay.as_mut(), frame, addr) {
                        if let Some(v) = vteps.iter().find(|v| v.addr == addr) {
                            v.counters.sent(1, bytes);
                        }
                    } else {
                        self.drops.too_big += 1;
                    }
                }
                Egress::Flood => {
                    for v in vteps {
                        if self.vxlan_out.push(self.underlay.as_mut(), frame, v.addr) {
                            v.counters.sent(1, bytes);
                        } else {
                            self.drops.too_big += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        self.egress = egress;
    }

    // ---- underlay → local device ------------------------------------------

    /// Up to [`BATCHES_PER_TURN`] batches from the underlay; true when more
    /// may be queued.
    fn on_underlay(&mut self) -> bool {
        for _ in 0..BATCHES_PER_TURN {
            let Some(mut recv) = self.recv.take() else {
                return false;
            };
            let count = self.underlay.recv_batch(&mut recv);
            if count == 0 {
                self.recv = Some(recv);
                self.flush_writes();
                return false;
            }
            let plane = self.plane.load();
            self.reported.clear();
            // The MAC table is locked per datagram, after decryption, so
            // that workers open datagrams in parallel.
            let switch = self.cfg.l2.clone();
            for i in 0..count {
                let Some((datagram, from)) = recv.get_mut(i) else {
                    continue;
                };
                self.on_datagram(datagram, from, &plane, switch.as_deref());
            }
            self.recv = Some(recv);
            self.flush_writes();
        }
        true
    }

    fn flush_writes(&mut self) {
        self.device.write_batch(&mut self.write);
    }

    /// Opens one datagram and queues its frames for the device, or hands
    /// it to the control thread.
    fn on_datagram(
        &mut self,
        datagram: &mut [u8],
        from: SocketAddr,
        plane: &DataPlane,
        switch: Option<&Mutex<L2Switch>>,
    ) {
        let switch = match (&self.cfg.codec, switch) {
            (Codec::Vxlan(vteps), Some(switch)) => {
                let vteps = vteps.clone();
                if let Ok(mut switch) = switch.lock() {
                    self.on_vxlan(datagram, from, &vteps, &mut switch);
                }
                return;
            }
            (_, switch) => switch,
        };
        let Ok(packet) = sleeve::Packet::new_checked(&*datagram) else {
            self.drops.malformed += 1;
            return;
        };
        let Ok(repr) = sleeve::Repr::parse(&packet) else {
            self.drops.malformed += 1;
            return;
        };
        let session = match plane.sessions.get(&repr.receiver_index) {
            Some(s)
                if repr.message_type == sleeve::MessageType::Data
                    && matches!(s.owner, SessionOwner::Link(_)) =>
            {
                s
            }
            // Heartbeats, probes, relays, broadcasts, end-to-end traffic
            // and sessions this worker does not know (yet): the control
            // thread decides.
            _ => {
                self.hand_off(Handoff::Datagram {
                    bytes: datagram.to_vec(),
                    from,
                });
                return;
            }
        };
        let (plain_len, newest) = match session.session.open_tracked(repr.counter, datagram) {
            Ok(opened) => (opened.len, opened.newest),
            Err(OpenError::Replay) => {
                self.drops.replay += 1;
                return;
            }
            Err(_) => {
                self.drops.authentication += 1;
                return;
            }
        };
        if (session.report_first || (newest && session.endpoint != Some(from)))
            && !self.reported.contains(&(repr.receiver_index, from))
        {
            self.reported.push((repr.receiver_index, from));
            self.hand_off(Handoff::Authenticated {
                index: repr.receiver_index,
                from,
                newest,
            });
        }
        let plaintext = &datagram[sleeve::HEADER_LEN..sleeve::HEADER_LEN + plain_len];
        self.deliver_records(plaintext, session, switch);
    }

    /// Plaintext mode: a VXLAN datagram from a static VTEP.
    fn on_vxlan(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        vteps: &[Vtep],
        switch: &mut L2Switch,
    ) {
        // Linux vxlan devices send from a per-flow source port: match the IP only.
        let Some(vtep) = vteps.iter().find(|v| v.addr.ip() == from.ip()) else {
            self.vxlan_drops.unknown_vtep += 1;
            return;
        };
        let Ok(header) = vxlan::Packet::new_checked(datagram) else {
            self.vxlan_drops.bad_header += 1;
            return;
        };
        let Ok(repr) = vxlan::Repr::parse(&header) else {
            self.vxlan_drops.bad_header += 1;
            return;
        };
        if repr.vni != self.cfg.vni {
            self.vxlan_drops.wrong_vni += 1;
            return;
        }
        let frame = &datagram[vxlan::HEADER_LEN..];
        if !switch.from_remote(frame, Location::Vtep(vtep.addr), Instant::now()) {
            return;
        }
        if self.write.room() == 0 {
            self.flush_writes();
        }
        if self.write.push(frame) {
            vtep.counters.received(1, frame.len() as u64);
        } else {
            self.drops.too_big += 1;
        }
    }

    /// Queues the records of an opened `Data` datagram for the device.
    fn deliver_records(
        &mut self,
        plaintext: &[u8],
        session: &RecvSession,
        switch: Option<&Mutex<L2Switch>>,
    ) {
        let mut switch = switch.and_then(|s| s.lock().ok());
        let (mut packets, mut bytes) = (0u64, 0u64);
        let table = self.fwd.load();
        let now = Instant::now();
        for record in sleeve::Records::new(plaintext) {
            let Ok(record) = record else {
                self.drops.bad_record += 1;
                break;
            };
            if record.vni != self.cfg.vni {
                self.drops.bad_record += 1;
                continue;
            }
            let frame = record.frame;
            let sender = Sender {
                peer: session.peer,
                location: session.location,
                allowed_macs: session.allowed_macs.as_deref(),
            };
            if !accept_frame(
                frame,
                &sender,
                switch.as_deref_mut(),
                &table,
                &mut self.drops,
                now,
            ) {
                continue;
            }
            if self.write.room() == 0 {
                self.flush_writes();
            }
            if self.write.push(frame) {
                packets += 1;
                bytes += frame.len() as u64;
            } else {
                self.drops.too_big += 1;
            }
        }
        session.counters.received(packets, bytes);
    }
}

/// One datapath worker's device queue and underlay socket.
pub struct WorkerParts {
    /// Its queue of the local device.
    pub device: Box<dyn Device>,
    /// Its underlay socket (or AF_XDP driver).
    pub underlay: Box<dyn Underlay>,
}

/// A running worker as the control thread sees it.
struct WorkerHandle {
    thread: Option<std::thread::JoinHandle<()>>,
    waker: Arc<Waker>,
    shared: Arc<WorkerShared>,
}

/// The running workers: started together, stopped together (also when
/// dropped).
pub struct WorkerSet {
    handles: Vec<WorkerHandle>,
    stop: Arc<StopFlag>,
}

impl WorkerSet {
    /// Starts one thread per part, worker `i` configured by `config(i)`.
    /// When one panics, `stop` is set and the control thread woken.
    pub fn start(
        parts: Vec<WorkerParts>,
        config: impl Fn(usize) -> WorkerConfig,
        plane: SharedPlane,
        fwd: ForwardingReader,
        control: ControlLink,
        stop: Arc<StopFlag>,
    ) -> std::io::Result<WorkerSet> {
        let mut set = WorkerSet {
            handles: Vec::new(),
            stop: stop.clone(),
        };
        for (index, part) in parts.into_iter().enumerate() {
            let shared = Arc::new(WorkerShared::default());
            let (worker, waker) = Worker::new(
                config(index),
                part.device,
                part.underlay,
                plane.clone(),
                fwd.clone(),
                control.clone(),
                stop.clone(),
                shared.clone(),
            )?;
            let death = WorkerDeath {
                index,
                stop: stop.clone(),
                waker: control.waker.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("weft-worker-{index}"))
                .spawn(move || {
                    let _watch = death;
                    worker.run();
                })?;
            set.handles.push(WorkerHandle {
                thread: Some(thread),
                waker,
                shared,
            });
        }
        Ok(set)
    }

    /// Adds every worker's counters to these (and plaintext mode's VXLAN
    /// drops to `vxlan`).
    pub fn add_counters(
        &self,
        drops: &mut DropCounters,
        batching: &mut crate::api::l2_status::BatchCounters,
        vxlan: Option<&mut VxlanDrops>,
    ) {
        let mut v = VxlanDrops::default();
        for h in &self.handles {
            if let Ok(c) = h.shared.counters.lock() {
                add_drops(drops, &c.drops);
                add_batching(batching, &c.batching);
                v.wrong_vni += c.vxlan.wrong_vni;
                v.bad_header += c.vxlan.bad_header;
                v.unknown_vtep += c.vxlan.unknown_vtep;
            }
        }
        if let Some(out) = vxlan {
            *out = v;
        }
    }

    /// Asks every worker to stop and waits for them.
    pub fn stop(&mut self) {
        self.stop.stop();
        for h in &self.handles {
            let _ = h.waker.wake();
        }
        for h in &mut self.handles {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for WorkerSet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops the router when a worker thread ends by panicking: the process
/// never runs half alive (the panic message is on stderr already).
struct WorkerDeath {
    index: usize,
    stop: Arc<StopFlag>,
    waker: Arc<Waker>,
}

impl Drop for WorkerDeath {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "datapath worker {} panicked: weft stops (goodbyes to peers, devices removed)",
                self.index
            );
            self.stop.stop();
            let _ = self.waker.wake();
        }
    }
}

/// Who sent a datagram's frames, as the receive check needs it.
pub(super) struct Sender<'a> {
    /// The peer (inner sources must be its addresses in TUN mode).
    pub peer: Option<crate::mesh::PeerId>,
    /// Where its MACs are learned (bridge mode).
    pub location: usize,
    /// Bridge mode with a CA: its certificate, when it limits source MACs.
    pub allowed_macs: Option<&'a crate::identity::Certificate>,
}

/// Whether a frame that arrived from `sender` may go to the local device:
/// in bridge mode the switch learns its source (and a certificate may
/// limit the source MACs); in TUN mode its inner source must be an
/// address the sender owns. Refusals are counted.
pub(super) fn accept_frame(
    frame: &[u8],
    sender: &Sender,
    switch: Option<&mut L2Switch>,
    table: &crate::mesh::ForwardingTable,
    drops: &mut DropCounters,
    now: Instant,
) -> bool {
    match switch {
        Some(switch) => {
            if let Some(cert) = sender.allowed_macs {
                let covered = super::l2::source_mac(frame)
                    .is_some_and(|m| cert.covers(&crate::mesh::Claim::Mac(m)));
                if !covered {
                    // A source MAC its certificate does not list.
                    drops.spoofed_source += 1;
                    return false;
                }
            }
            // Counted by the switch (oversized, bad source) when refused.
            switch.from_remote(frame, Location::Peer(sender.location), now)
        }
        None => match source(frame) {
            None => {
                drops.bad_record += 1;
                false
            }
            Some(src) => {
                let owned = match table.lookup_ip(src) {
                    Some(Destination::Peer { peer, .. })
                    | Some(Destination::Unreachable { peer }) => Some(*peer) == sender.peer,
                    _ => false,
                };
                // An authenticated peer sending as an address it does not
                // own: spoofing, dropped.
                drops.spoofed_source += u64::from(!owned);
                owned
            }
        },
    }
}

/// ICMP fragmentation-needed (IPv4 with DF) or packet-too-big (IPv6) for a
/// local packet larger than `limit`, built in `buf`; its length.
pub(super) fn too_big_reply(packet: &[u8], limit: u16, buf: &mut [u8]) -> Option<usize> {
    let reply = match packet.first()? >> 4 {
        4 if packet.len() > 6 && packet[6] & 0x40 != 0 => {
            crate::wire::icmpv4::build_frag_needed(packet, limit, buf)
        }
        6 => crate::wire::icmpv6::build_packet_too_big(packet, u32::from(limit), buf),
        _ => Ok(None),
    };
    reply.ok().flatten()
}

/// The source address of an IP packet.
#[inline]
pub(super) fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[12..16].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[8..24].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// The destination address of an IP packet, or `None` if it is not one.
#[inline]
pub(super) fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => {
            let b: [u8; 4] = packet[16..20].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if packet.len() >= 40 => {
            let b: [u8; 16] = packet[24..40].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// ICMP unreachable replies for overlay addresses no peer claims: a token
/// bucket (burst [`UnreachableLimit::BURST`], refilled
/// [`UnreachableLimit::PER_SECOND`] per second), like the kernel's
/// icmp_ratelimit, so a scan of the overlay cannot make weft flood.
pub(super) struct UnreachableLimit {
    tokens: u32,
    refilled: Instant,
    /// The overlay's IPv4 broadcast address (never answered).
    pub(super) broadcast: Option<IpAddr>,
}

impl UnreachableLimit {
    const BURST: u32 = 10;
    const PER_SECOND: u32 = 10;

    /// `overlay` is this host's `ADDR/PREFIX` (a dual-stack host's are
    /// joined by ", ": the IPv4 one has the broadcast address).
    pub(super) fn new(overlay: &str, now: Instant) -> UnreachableLimit {
        let broadcast = overlay
            .split(", ")
            .filter_map(|o| crate::launch::parse_overlay(o).ok())
            .find_map(|(addr, prefix)| match addr {
                IpAddr::V4(a) if prefix < 32 => Some(IpAddr::V4(std::net::Ipv4Addr::from(
                    u32::from(a) | (u32::MAX >> prefix),
                ))),
                _ => None,
            });
        UnreachableLimit {
            tokens: Self::BURST,
            refilled: now,
            broadcast,
        }
    }

    /// Takes one token if there is one.
    pub(super) fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let fresh = (elapsed.as_millis() as u64 * u64::from(Self::PER_SECOND) / 1000) as u32;
        if fresh > 0 {
            self.tokens = (self.tokens + fresh).min(Self::BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_replies_are_rate_limited() {
        let t0 = Instant::now();
        let mut limit = UnreachableLimit::new("10.40.0.1/16", t0);
        assert_eq!(limit.broadcast, Some("10.40.255.255".parse().unwrap()));
        let dual = UnreachableLimit::new("10.41.0.1/24, fd40::1/64", t0);
        assert_eq!(dual.broadcast, Some("10.41.0.255".parse().unwrap()));
        let sent = (0..100).filter(|_| limit.allow(t0)).count();
        assert_eq!(sent, UnreachableLimit::BURST as usize);
        assert!(limit.allow(t0 + Duration::from_millis(100)));
        assert!(!limit.allow(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(10);
        let sent = (0..100).filter(|_| limit.allow(later)).count();
        assert_eq!(sent, UnreachableLimit::BURST as usize);
    }

    #[test]
    fn addresses_of_ip_packets() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(source(&v4), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(destination(&v4), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(destination(&v4[..19]), None);
        assert_eq!(source(&[0x60; 39]), None);
        assert_eq!(destination(&[]), None);
    }
}
