//! AF_XDP underlay: weft's UDP datagrams sent and received through AF_XDP
//! sockets (crate `xsk-rs`) instead of the kernel's UDP stack, while every
//! other frame on the interface stays with the kernel.
//!
//! Pieces:
//! - [`filter`]: the XDP program (assembled in Rust, ports baked in at
//!   load) that redirects only weft's UDP datagrams to the sockets.
//! - [`bpf`]: the bpf(2) calls that create the XSKMAP and load the program.
//! - [`next_hop`]: next-hop MACs for the send path, looked up (routes and
//!   neighbours, through [`crate::sys`]) by a thread of their own so that
//!   sending never waits on netlink.
//! - [`frame`]: Ethernet/IP/UDP headers around weft's payload.
//! - [`XdpUnderlay`]: one AF_XDP socket (own UMEM) per RX queue, plus the
//!   kernel UDP socket weft already has. That socket keeps the port
//!   reserved, carries datagrams the XDP path cannot (a next hop whose MAC
//!   the kernel does not know yet: sending through the kernel makes it
//!   resolve ARP/ND, which is how weft provokes resolution without
//!   inventing traffic), and once every 10 s per peer carries one real
//!   datagram so the kernel keeps that neighbour entry confirmed (AF_XDP
//!   traffic is invisible to the kernel's neighbour state machine).

pub mod bpf;
pub mod filter;
pub mod frame;
pub mod next_hop;

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::sys::{AttachMode, Netlink};
use crate::wire::ethernet::MacAddr;
use next_hop::{NextHops, Resolver, Via};

/// UMEM frame size: one page, so a 1500-byte (and up to ~3.8 KB) frame fits
/// after the kernel's 256-byte XDP headroom.
const FRAME_SIZE: u32 = 4096;
/// Frames owned by the fill/RX side of each socket (= fill and RX ring size).
const RX_FRAMES: u32 = 2048;
/// Room the kernel keeps in front of each received frame (linux/bpf.h).
const XDP_PACKET_HEADROOM: u32 = 256;
/// Frames owned by the TX side of each socket (= TX and completion ring size).
const TX_FRAMES: u32 = 1024;
/// Descriptors taken from a ring in one go.
const BATCH: usize = 64;
/// How long a bind that fails with EBUSY (the previous owner of the queue
/// is still being torn down) is retried.
const BIND_RETRY_FOR: Duration = Duration::from_millis(500);

/// What to open.
#[derive(Debug, Clone)]
pub struct XdpConfig {
    /// The underlay interface (the one holding weft's underlay address).
    pub interface: String,
    /// UDP destination ports to redirect besides the kernel socket's own
    /// port (e.g. the VXLAN port in plaintext mode).
    pub extra_ports: Vec<u16>,
    /// Source address for transmitted datagrams; None: the kernel's
    /// preferred source for each peer's route.
    pub source: Option<IpAddr>,
}

/// Why AF_XDP cannot be used, naming the step that failed so launch can
/// log it and fall back to UDP sockets.
#[derive(Debug, thiserror::Error)]
#[error("AF_XDP on {interface}: {step} failed: {detail}")]
pub struct XdpError {
    /// The interface.
    pub interface: String,
    /// The step, e.g. "load the XDP filter program".
    pub step: &'static str,
    /// The OS or library error, with a hint where one helps.
    pub detail: String,
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStats {
    /// Datagrams received through AF_XDP.
    pub rx_frames: u64,
    /// Redirected frames that did not parse as weft's UDP (dropped).
    pub rx_malformed: u64,
    /// Datagrams received on the kernel socket (not via the XDP path).
    pub rx_kernel: u64,
    /// Datagrams sent through AF_XDP.
    pub tx_frames: u64,
    /// Datagrams sent through the kernel socket (next hop unresolved,
    /// neighbour refresh, or a route via another interface).
    pub tx_kernel: u64,
    /// Datagrams dropped because the TX ring had no room.
    pub tx_ring_full: u64,
}

/// One AF_XDP socket on one RX queue, with its own UMEM.
struct QueueSocket {
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
    /// TX frames not in flight.
    tx_free: Vec<FrameDesc>,
    /// Received frames waiting to go back to the fill ring.
    refill: Vec<FrameDesc>,
    zero_copy: bool,
}

/// The AF_XDP underlay for one interface. Dropping it detaches the program
/// and closes the sockets.
pub struct XdpUnderlay {
    interface: String,
    ifindex: u32,
    mac: MacAddr,
    ports: Vec<u16>,
    local_port: u16,
    attach: AttachMode,
    program_id: u32,
    netlink: Netlink,
    next_hops: NextHops,
    resolver: Resolver,
    sockets: Vec<QueueSocket>,
    rx_pending: VecDeque<(usize, FrameDesc)>,
    kernel: UdpSocket,
    stats: XdpStats,
    max_frame: usize,
    _map: OwnedFd,
    _program: OwnedFd,
}

/// Removes a weft XDP program a killed process left on `ifindex`. A
/// program by any other name is not weft's: refuse rather than replace it.
fn clear_stale(netlink: &mut Netlink, interface: &str, ifindex: u32) -> Result<(), String> {
    if let Some(id) = detach_weft_program(netlink, interface, ifindex)? {
        tracing::warn!(
            interface,
            program_id = id,
            "removed a stale weft XDP program left by a process that did not exit cleanly"
        );
    }
    Ok(())
}

/// Detaches weft's XDP program from `ifindex`; `Ok(Some(id))` when one was
/// there, `Err` when another program is attached (never replaced).
fn detach_weft_program(
    netlink: &mut Netlink,
    interface: &str,
    ifindex: u32,
) -> Result<Option<u32>, String> {
    let Some(program) = netlink.xdp_program(ifindex).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let id = program.id;
    let name = bpf::program_name(id).unwrap_or_else(|e| format!("<unreadable: {e}>"));
    if name != bpf::PROGRAM_NAME {
        return Err(format!(
            "{interface} already runs XDP program {name} (id {id}); weft does not replace another program: \
             remove it (`ip link set dev {interface} xdp off`) or use --mode udp"
        ));
    }
    netlink
        .detach_xdp(ifindex, interface, program.mode)
        .map_err(|e| format!("removing stale weft program id {id}: {e}"))?;
    Ok(Some(id))
}

/// Removes the XDP program an earlier weft that did not exit cleanly left
/// on `interface`: `Ok(true)` when there was one. Another program (not
/// weft's) is left alone and reported as an error.
pub fn clear_leftover_program(interface: &str) -> Result<bool, String> {
    let mut netlink = Netlink::open().map_err(|e| e.to_string())?;
    let link = netlink.require_link(interface).map_err(|e| e.to_string())?;
    Ok(detach_weft_program(&mut netlink, interface, link.index)?.is_some())
}

fn program_id(program: &OwnedFd) -> u32 {
    // The id is what the interface reports; read it back through the
    // same info call used for names (id at offset 4 of bpf_prog_info).
    let mut info = [0u8; 96];
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD (15) with a valid attr and buffer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            15,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        return 0;
    }
    u32::from_ne_bytes([info[4], info[5], info[6], info[7]])
}

fn is_zero_copy(fd: RawFd) -> bool {
    let mut options: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt(XDP_OPTIONS) writes a u32 flags word.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_XDP,
            libc::XDP_OPTIONS,
            &mut options as *mut u32 as *mut libc::c_void,
            &mut len,
        )
    };
    rc == 0 && options & libc::XDP_OPTIONS_ZEROCOPY != 0
}

fn open_queue(interface: &str, queue: u32) -> Result<QueueSocket, String> {
    let umem_config = UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| e.to_string())?)
        .fill_queue_size(QueueSize::new(RX_FRAMES).map_err(|e| e.to_string())?)
        .comp_queue_size(QueueSize::new(TX_FRAMES).map_err(|e| e.to_string())?)
        .build()
        .map_err(|e| e.to_string())?;
    let (umem, mut frames) = Umem::new(
        umem_config,
        NonZeroU32::new(RX_FRAMES + TX_FRAMES).unwrap(),
        false,
    )
    .map_err(|e| format!("create UMEM: {e}: {}", source_of(&e)))?;
    let socket_config = SocketConfig::builder()
        .rx_queue_size(QueueSize::new(RX_FRAMES).map_err(|e| e.to_string())?)
        .tx_queue_size(QueueSize::new(TX_FRAMES).map_err(|e| e.to_string())?)
        // weft loads its own filter; libxdp must not load its default
        // program, which would take ARP and everything else too.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        // No XDP_COPY/XDP_ZEROCOPY: the kernel takes zero-copy where the
        // driver offers it and copy mode otherwise (veth).
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let name = Interface::new(CString::new(interface).map_err(|e| e.to_string())?);
    let deadline = Instant::now() + BIND_RETRY_FOR;
    let (tx, rx, rings) = loop {
        // SAFETY: the UMEM is not shared with another socket.
        match unsafe { Socket::new(socket_config, &umem, &name, queue) } {
            Ok(ok) => break ok,
            Err(e) => {
                let busy = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .and_then(|s| s.raw_os_error())
                    == Some(libc::EBUSY);
                if busy && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                return Err(format!(
                    "bind AF_XDP socket to queue {queue}: {e}: {}",
                    source_of(&e)
                ));
            }
        }
    };
    let (mut fill, comp) = rings.ok_or("the UMEM came back without fill/completion rings")?;
    let tx_free = frames.split_off(RX_FRAMES as usize);
    // SAFETY: these frames belong to this UMEM and are not used elsewhere.
    let filled = unsafe { fill.produce(&frames) };
    if filled != frames.len() {
        return Err(format!(
            "fill ring took {filled} of {} frames",
            frames.len()
        ));
    }
    let zero_copy = is_zero_copy(rx.fd().as_raw_fd());
    Ok(QueueSocket {
        umem,
        fill,
        comp,
        tx,
        rx,
        tx_free,
        refill: Vec::with_capacity(BATCH),
        zero_copy,
    })
}

fn source_of(e: &dyn std::error::Error) -> String {
    e.source()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "no OS error".to_string())
}

impl XdpUnderlay {
    /// Opens the AF_XDP underlay on `config.interface` around `kernel`,
    /// weft's already-bound, non-blocking UDP data socket (its port is the
    /// one filtered). Clears a stale weft program, loads and attaches the
    /// filter (native mode, else generic), binds one socket per RX queue.
    pub fn open(config: &XdpConfig, kernel: UdpSocket) -> Result<XdpUnderlay, XdpError> {
        let interface = config.interface.clone();
        let fail = |step: &'static str, detail: String| XdpError {
            interface: interface.clone(),
            step,
            detail,
        };
        let local_port = kernel
            .local_addr()
            .map_err(|e| fail("read the UDP socket's port", e.to_string()))?
            .port();
        kernel
            .set_nonblocking(true)
            .map_err(|e| fail("make the UDP socket non-blocking", e.to_string()))?;
        let mut ports = vec![local_port];
        ports.extend(
            config
                .extra_ports
                .iter()
                .copied()
                .filter(|p| *p != local_port),
        );
        ports.truncate(filter::MAX_PORTS);

        let mut netlink = Netlink::open().map_err(|e| fail("open route netlink", e.to_string()))?;
        let link = netlink.require_link(&interface).map_err(|e| {
            fail(
                "find the interface",
                format!("{e} (is {interface} an interface of this host?)"),
            )
        })?;
        let ifindex = link.index;
        let mac = link.mac().ok_or_else(|| {
            fail(
                "read the interface MAC",
                "not an Ethernet interface".to_string(),
            )
        })?;
        let mtu = link.mtu as usize;
        let max_frame = (FRAME_SIZE - XDP_PACKET_HEADROOM) as usize;
        if mtu + 14 > max_frame {
            return Err(fail(
                "check the MTU",
                format!("MTU {mtu} does not fit a {FRAME_SIZE}-byte UMEM frame (at most {}); use --mode udp for jumbo frames", max_frame - 14),
            ));
        }
        let queues = link.rx_queues;

        clear_stale(&mut netlink, &interface, ifindex)
            .map_err(|d| fail("clear a stale XDP program", d))?;
        // The resolver's socket is opened here, so it is in this thread's
        // network namespace whatever thread it then runs on.
        let resolver = Netlink::open()
            .map_err(|e| e.to_string())
            .and_then(|n| Resolver::spawn(n, ifindex, &interface).map_err(|e| e.to_string()))
            .map_err(|d| fail("start the next-hop resolver", d))?;

        let map = bpf::create_xsk_map(queues).map_err(|e| {
            fail(
                "create the XSKMAP",
                format!("{e} (needs CAP_BPF/CAP_NET_ADMIN and CONFIG_XDP_SOCKETS)"),
            )
        })?;
        let insns = filter::program(&ports, map.as_raw_fd(), filter::XDP_PASS);
        let program = bpf::load_xdp_program(&insns)
            .map_err(|e| fail("load the XDP filter program", e.to_string()))?;

        // Sockets first, program second: the program only ever redirects
        // to a queue that has a socket, and redirects to empty slots pass.
        let mut sockets = Vec::with_capacity(queues as usize);
        for queue in 0..queues {
            let socket = match open_queue(&interface, queue) {
                Ok(socket) => socket,
                // More queues allocated than active (e.g. channels reduced
                // with ethtool): the active ones come first.
                Err(d) if queue > 0 && d.contains("Invalid argument") => {
                    tracing::info!(
                        interface,
                        queue,
                        "queue not active; using {queue} AF_XDP sockets: {d}"
                    );
                    break;
                }
                Err(d) => return Err(fail("open an AF_XDP socket", d)),
            };
            bpf::xsk_map_insert(&map, queue, socket.rx.fd().as_raw_fd())
                .map_err(|e| fail("put the socket into the XSKMAP", e.to_string()))?;
            sockets.push(socket);
        }

        let attach = match netlink.attach_xdp(
            ifindex,
            &interface,
            program.as_raw_fd(),
            AttachMode::Native,
        ) {
            Ok(()) => AttachMode::Native,
            Err(native) => match netlink.attach_xdp(
                ifindex,
                &interface,
                program.as_raw_fd(),
                AttachMode::Generic,
            ) {
                Ok(()) => {
                    tracing::info!(interface, %native, "native XDP refused; using generic (SKB) mode");
                    AttachMode::Generic
                }
                Err(generic) => {
                    return Err(fail(
                        "attach the XDP program",
                        format!("native mode: {native}; generic mode: {generic}"),
                    ))
                }
            },
        };
        let program_id = program_id(&program);
        let underlay = XdpUnderlay {
            interface: interface.clone(),
            ifindex,
            mac,
            ports,
            local_port,
            attach,
            program_id,
            netlink,
            next_hops: NextHops::new(config.source.filter(|s| !s.is_unspecified())),
            resolver,
            sockets,
            rx_pending: VecDeque::with_capacity(BATCH * 2),
            kernel,
            stats: XdpStats::default(),
            max_frame: (mtu + 14).min(max_frame),
            _map: map,
            _program: program,
        };
        tracing::info!(interface, mode = %underlay.mode(), queues = underlay.sockets.len(), ports = %underlay.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","), "AF_XDP underlay up");
        Ok(underlay)
    }

    /// How the program and sockets run, for `weft status`:
    /// "native, copy", "generic, copy", "native, zero-copy".
    pub fn mode(&self) -> String {
        let attach = self.attach.name();
        let copy = if self.sockets.iter().all(|s| s.zero_copy) {
            "zero-copy"
        } else {
            "copy"
        };
        format!("{attach}, {copy}")
    }

    /// The interface the underlay runs on.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The UDP ports the filter redirects.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Counters.
    pub fn stats(&self) -> XdpStats {
        self.stats
    }

    /// Number of AF_XDP sockets (one per RX queue).
    pub fn queue_count(&self) -> usize {
        self.sockets.len()
    }

    /// File descriptors to poll for readability: every AF_XDP socket and
    /// the kernel UDP socket.
    pub fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.sockets.iter().map(|s| s.rx.fd().as_raw_fd()).collect();
        fds.push(self.kernel.as_raw_fd());
        fds
    }

    /// The kernel UDP socket (same port).
    pub fn kernel_socket(&self) -> &UdpSocket {
        &self.kernel
    }

    /// Receives one datagram into `buf`: (length, sender). WouldBlock when
    /// nothing is waiting, like a non-blocking UDP socket. Frames are taken
    /// from the RX rings in batches and go back to the fill ring in batches.
    pub fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            if self.rx_pending.is_empty() {
                self.refill_all();
                self.take_rx_batch();
            }
            let Some((index, desc)) = self.rx_pending.pop_front() else {
                break;
            };
            let socket = &mut self.sockets[index];
            // SAFETY: desc came from this socket's RX ring, so it is a frame
            // of this UMEM the kernel has handed over and not yet got back.
            let data = unsafe { socket.umem.data(&desc) };
            let frame = data.contents();
            let parsed = frame::parse(frame).filter(|r| self.ports.contains(&r.dst.port()));
            let result = parsed.and_then(|r| {
                let payload = frame.get(r.payload)?;
                let n = payload.len().min(buf.len());
                buf[..n].copy_from_slice(&payload[..n]);
                Some((n, r.src))
            });
            socket.refill.push(desc);
            if socket.refill.len() >= BATCH {
                Self::refill(socket);
            }
            match result {
                Some(ok) => {
                    self.stats.rx_frames += 1;
                    return Ok(ok);
                }
                None => self.stats.rx_malformed += 1,
            }
        }
        // Datagrams that did not come through the XDP path (another
        // interface, loopback, or before the program was attached).
        let got = self.kernel.recv_from(buf)?;
        self.stats.rx_kernel += 1;
        Ok(got)
    }

    fn take_rx_batch(&mut self) {
        let mut descs = [FrameDesc::default(); BATCH];
        for (index, socket) in self.sockets.iter_mut().enumerate() {
            // SAFETY: the descriptors are filled from this socket's RX ring.
            let n = unsafe { socket.rx.consume(&mut descs) };
            self.rx_pending
                .extend(descs[..n].iter().map(|d| (index, *d)));
        }
    }

    fn refill_all(&mut self) {
        for socket in &mut self.sockets {
            if !socket.refill.is_empty() {
                Self::refill(socket);
            }
        }
    }

    /// Gives received frames back to the kernel, keeping the fill ring
    /// full, and wakes the driver only if it asked (need_wakeup).
    fn refill(socket: &mut QueueSocket) {
        // SAFETY: every frame in refill came off this socket's RX ring and
        // is no longer read.
        let n = unsafe { socket.fill.produce(&socket.refill) };
        if n == socket.refill.len() {
            socket.refill.clear();
        }
        // else: produce is all-or-nothing; keep them and retry next time.
        if socket.fill.needs_wakeup() {
            let _ = socket.fill.wakeup(socket.rx.fd_mut(), 0);
        }
    }

    /// Where datagrams to `dst` go: Some(MAC and source) for the XDP path,
    /// None for the kernel socket. Never waits: lookups run on the
    /// resolver thread, and their answers are taken here.
    fn next_hop(&mut self, dst: IpAddr, now: Instant) -> Option<(MacAddr, IpAddr)> {
        // Answers also come unasked (a watched next hop resolved): an
        // empty channel costs a load or two.
        for answer in self.resolver.answers() {
            self.next_hops.answer(answer, now);
        }
        let resolver = &self.resolver;
        match self.next_hops.via(dst, now, |d| resolver.ask(d)) {
            Via::Xdp { mac, src } => Some((mac, src)),
            Via::Kernel => None,
        }
    }

    /// Sends one datagram to `dst`: built into a UMEM frame and put on the
    /// TX ring (kicking the kernel only if it asks), or through the kernel
    /// socket when the next hop's MAC is not known yet. EMSGSIZE if the
    /// frame would exceed the interface MTU, like a DF UDP socket.
    pub fn send_to(&mut self, payload: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.queue(payload, dst)?;
        self.flush();
        Ok(payload.len())
    }

    /// Like [`send_to`](Self::send_to) without the kick: call
    /// [`flush`](Self::flush) after a batch.
    pub fn queue(&mut self, payload: &[u8], dst: SocketAddr) -> io::Result<()> {
        if frame::header_len(dst.is_ipv6()) + payload.len() > self.max_frame {
            return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
        }
        let Some((dst_mac, src_ip)) = self.next_hop(dst.ip(), Instant::now()) else {
            self.stats.tx_kernel += 1;
            return self.kernel.send_to(payload, dst).map(|_| ());
        };
        let ends = frame::Endpoints {
            src_mac: self.mac,
            dst_mac,
            src: SocketAddr::new(src_ip, self.local_port),
            dst,
        };
        let socket = &mut self.sockets[0];
        Self::reclaim(socket);
        if socket.tx_free.is_empty() {
            Self::kick(socket);
            Self::reclaim(socket);
        }
        let Some(mut desc) = socket.tx_free.pop() else {
            self.stats.tx_ring_full += 1;
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        // SAFETY: desc is a free TX frame of this UMEM (not on any ring).
        let built = unsafe {
            let mut data = socket.umem.data_mut(&mut desc);
            data.cursor().set_pos(usize::MAX);
            let n = frame::build(data.contents_mut(), &ends, payload);
            data.cursor().set_pos(n.unwrap_or(0));
            n
        };
        if built.is_none() {
            socket.tx_free.push(desc);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination families differ",
            ));
        }
        // SAFETY: the frame is ours and now handed to the kernel until it
        // comes back on the completion ring.
        if unsafe { socket.tx.produce_one(&desc) } == 0 {
            socket.tx_free.push(desc);
            self.stats.tx_ring_full += 1;
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        self.stats.tx_frames += 1;
        Ok(())
    }

    /// Tells the kernel about queued frames if it needs telling.
    pub fn flush(&mut self) {
        for socket in &mut self.sockets {
            Self::kick(socket);
        }
    }

    fn kick(socket: &mut QueueSocket) {
        if socket.tx.needs_wakeup() {
            let _ = socket.tx.wakeup();
        }
    }

    fn reclaim(socket: &mut QueueSocket) {
        let mut descs = [FrameDesc::default(); BATCH];
        loop {
            // SAFETY: the completion ring returns frames of this UMEM.
            let n = unsafe { socket.comp.consume(&mut descs) };
            socket.tx_free.extend_from_slice(&descs[..n]);
            if n < BATCH {
                break;
            }
        }
    }
}

impl Drop for XdpUnderlay {
    fn drop(&mut self) {
        // Detach only our own program (someone may have replaced it).
        match self.netlink.xdp_program(self.ifindex) {
            Ok(Some(program)) if program.id == self.program_id => {
                if let Err(e) = self
                    .netlink
                    .detach_xdp(self.ifindex, &self.interface, program.mode)
                {
                    tracing::warn!(interface = %self.interface, "could not detach the XDP program: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(interface = %self.interface, "could not query the XDP program: {e}")
            }
        }
        // The sockets and UMEMs close as the fields drop, after the
        // program stopped redirecting to them.
    }
}
