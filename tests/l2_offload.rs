//! The L2 offloads against a real kernel: two namespaces, each with a TAP
//! opened with IFF_VNET_HDR and TSO4/TSO6/CSUM, and a userspace loop in
//! the test that moves frames between them the way bridge mode will: every
//! read is split with `split_read` (super-frames into Ethernet frames),
//! every batch is written coalesced by `L2Coalescer`. TCP transfers over
//! IPv4 and IPv6 then run between the namespaces; the bytes must arrive
//! intact (SHA-256), super-frames must have been read and super-frames
//! written, and the kernel must have taken every write.
//!
//! ```text
//!   ns A: l2tap 10.77.0.1 fd77::1  <-> test loop (split, coalesce) <->  ns B: l2tap 10.77.0.2 fd77::2
//! ```

mod common;

use common::{in_netns, is_root, next_id, run, Netns};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use weft::datapath::l2_offload::{
    classify_read, split_read, L2Coalescer, L2Read, Transport, VNET_HDR_LEN,
};

const TAP: &str = "l2tap";
/// Slots per batch; a super-frame at MSS 1440 makes at most 46 segments.
const SLOTS: usize = 128;
const SLOT_LEN: usize = VNET_HDR_LEN + 65_600;

/// What the forwarding loop saw, both directions together.
#[derive(Debug, Default, Clone)]
struct Counts {
    reads: u64,
    /// Reads of more than 1514 bytes (a full-size frame with its header).
    super_frames: u64,
    /// Super-frames of UDP (USO) segments.
    udp_super_frames: u64,
    segments: u64,
    writes: u64,
    coalesced_writes: u64,
    coalesced_segments: u64,
    largest_write: usize,
    split_errors: u64,
    write_errors: u64,
    bad_checksums: u64,
}

/// One direction's batch: frames split into slots, waiting to be written.
struct Batch {
    slots: Vec<Vec<u8>>,
    lens: Vec<usize>,
    used: usize,
    gro: L2Coalescer,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            slots: vec![vec![0u8; SLOT_LEN]; SLOTS],
            lens: vec![0; SLOTS],
            used: 0,
            gro: L2Coalescer::new(SLOTS),
        }
    }

    /// Writes the batch to `fd`, coalesced: one write(2) per output.
    fn flush(&mut self, fd: RawFd, counts: &mut Counts) {
        if self.used == 0 {
            return;
        }
        let writes = self
            .gro
            .coalesce(
                &mut self.slots[..self.used],
                &self.lens[..self.used],
                VNET_HDR_LEN,
            )
            .expect("batch is well formed");
        for w in writes {
            let bytes = &self.slots[w.buf][w.start..w.start + w.len];
            // SAFETY: a valid fd and a live buffer of bytes.len() bytes.
            let rc = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            counts.writes += 1;
            if rc != bytes.len() as isize {
                counts.write_errors += 1;
                eprintln!(
                    "TAP write of {} bytes ({} segments): {}",
                    bytes.len(),
                    w.segments,
                    std::io::Error::last_os_error()
                );
            }
            if w.segments > 1 {
                counts.coalesced_writes += 1;
                counts.coalesced_segments += w.segments as u64;
            }
            counts.largest_write = counts.largest_write.max(bytes.len());
        }
        counts.bad_checksums = self.gro.stats().bad_checksums;
        self.used = 0;
    }
}

/// Reads everything queued on `from` (non-blocking), splits it into
/// `batch` and writes the batch to `to`.
fn pump(from: RawFd, to: RawFd, read_buf: &mut [u8], batch: &mut Batch, counts: &mut Counts) {
    loop {
        // SAFETY: a valid fd and a live buffer of read_buf.len() bytes.
        let n = unsafe { libc::read(from, read_buf.as_mut_ptr().cast(), read_buf.len()) };
        if n <= 0 {
            break;
        }
        let read = &mut read_buf[..n as usize];
        counts.reads += 1;
        if read.len() > VNET_HDR_LEN + 1514 {
            counts.super_frames += 1;
        }
        let needed = match classify_read(read) {
            Ok(L2Read::Single(_)) => 1,
            Ok(L2Read::Segmented(sf)) => {
                if sf.transport() == Transport::Udp {
                    counts.udp_super_frames += 1;
                }
                sf.count()
            }
            Err(e) => {
                eprintln!("TAP read of {} bytes: {e}", read.len());
                counts.split_errors += 1;
                continue;
            }
        };
        if SLOTS - batch.used < needed {
            batch.flush(to, counts);
        }
        let at = batch.used;
        match split_read(
            read,
            &mut batch.slots[at..],
            &mut batch.lens[at..],
            VNET_HDR_LEN,
        ) {
            Ok(count) => {
                batch.used += count;
                counts.segments += count as u64;
            }
            Err(e) => {
                eprintln!("TAP read of {} bytes: {e}", read.len());
                counts.split_errors += 1;
            }
        }
    }
    batch.flush(to, counts);
}

/// The forwarding loop on its own thread; stopped and joined on drop, so
/// the TAPs close before the namespaces go.
struct Forwarder {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(a: tun_rs::SyncDevice, b: tun_rs::SyncDevice) -> Forwarder {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let (stop2, counts2) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
            let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
            let mut read_buf = vec![0u8; VNET_HDR_LEN + 70_000];
            let mut batch = Batch::new();
            let mut local = Counts::default();
            while !stop2.load(Ordering::Relaxed) {
                let mut fds = [
                    libc::pollfd {
                        fd: fa,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: fb,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                // SAFETY: two valid pollfd entries.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, 20) };
                pump(fa, fb, &mut read_buf, &mut batch, &mut local);
                pump(fb, fa, &mut read_buf, &mut batch, &mut local);
                *counts2.lock().unwrap() = local.clone();
            }
        });
        Forwarder {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TAP with IFF_VNET_HDR and TCP offloads in namespace `ns`, up, with
/// `v4` and `v6` on it.
fn offload_tap(ns: &str, v4: &str, v6: &str) -> tun_rs::SyncDevice {
    let dev = in_netns(ns, || {
        tun_rs::DeviceBuilder::new()
            .name(TAP)
            .layer(tun_rs::Layer::L2)
            .offload(true)
            .build_sync()
            .expect("TAP with offloads")
    });
    run("ip", &["-n", ns, "addr", "add", v4, "dev", TAP]);
    run("ip", &["-n", ns, "addr", "add", v6, "dev", TAP, "nodad"]);
    run("ip", &["-n", ns, "link", "set", TAP, "up"]);
    dev
}

/// Deterministic bytes that do not repeat with any short period.
fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `len` bytes from namespace `from` to `to_addr` (listening in
/// `to`) over TCP; returns the SHA-256 of what was sent and of what
/// arrived, and the time it took.
fn transfer(
    from: &str,
    to: &str,
    to_addr: SocketAddr,
    len: usize,
) -> ([u8; 32], [u8; 32], Duration) {
    let listener = in_netns(to, move || TcpListener::bind(to_addr).expect("listen"));
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = conn.read(&mut buf).expect("receive");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        <[u8; 32]>::from(hash.finalize())
    });
    let data = test_bytes(len, to_addr.port().into());
    let sent = <[u8; 32]>::from(Sha256::digest(&data));
    let start = Instant::now();
    let mut conn = in_netns(from, move || {
        TcpStream::connect_timeout(&to_addr, Duration::from_secs(5)).expect("connect")
    });
    conn.set_write_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    conn.write_all(&data).expect("send");
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let received = receiver.join().expect("receiver");
    (sent, received, start.elapsed())
}

/// Sends `messages` UDP GSO messages of `segments` datagrams of `segment`
/// bytes each (UDP_SEGMENT: the kernel hands them to the TAP as USO
/// super-frames) from `from` to `to_addr`; returns how many datagrams
/// arrived intact and how many arrived at all.
fn udp_gso_transfer(
    from: &str,
    to: &str,
    to_addr: SocketAddr,
    messages: usize,
    segments: usize,
    segment: usize,
) -> (usize, usize) {
    let rx = in_netns(to, move || UdpSocket::bind(to_addr).expect("bind"));
    let big: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with a pointer to a live c_int of the right size.
    unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tx = in_netns(from, || UdpSocket::bind("[::]:0").expect("bind"));
    let gso = segment as libc::c_int;
    // SAFETY: as above.
    let rc = unsafe {
        libc::setsockopt(
            tx.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&gso as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    for m in 0..messages {
        let message: Vec<u8> = (0..segments)
            .flat_map(|s| test_bytes(segment, (m * segments + s) as u64 + 1))
            .collect();
        tx.send_to(&message, to_addr).expect("send");
        // Pace the sender so the receive queue never overflows.
        std::thread::sleep(Duration::from_micros(200));
    }
    let (mut intact, mut arrived) = (0, 0);
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = rx.recv(&mut buf) {
        arrived += 1;
        let ok = (0..messages * segments)
            .any(|k| n == segment && buf[..n] == test_bytes(segment, k as u64 + 1)[..]);
        intact += usize::from(ok);
    }
    (intact, arrived)
}

#[test]
fn tcp_through_split_and_coalesce_between_two_offload_taps() {
    if !is_root() {
        eprintln!("skipped: this test needs root (network namespaces, TAP devices)");
        return;
    }
    let id = format!("wt-{}-{}", std::process::id(), next_id());
    let ns_a = Netns::new(format!("{id}-l2a"));
    let ns_b = Netns::new(format!("{id}-l2b"));
    let tap_a = offload_tap(&ns_a.name, "10.77.0.1/24", "fd77::1/64");
    let tap_b = offload_tap(&ns_b.name, "10.77.0.2/24", "fd77::2/64");
    let forwarder = Forwarder::start(tap_a, tap_b);

    const LEN: usize = 64 << 20;
    for (addr, what) in [("10.77.0.2:5201", "IPv4"), ("[fd77::2]:5202", "IPv6")] {
        let before = forwarder.counts();
        let (sent, received, took) = transfer(&ns_a.name, &ns_b.name, addr.parse().unwrap(), LEN);
        assert_eq!(sent, received, "{what}: the bytes that arrived differ");
        let c = forwarder.counts();
        let super_frames = c.super_frames - before.super_frames;
        let coalesced = c.coalesced_writes - before.coalesced_writes;
        let merged = c.coalesced_segments - before.coalesced_segments;
        eprintln!(
            "{what}: {} MiB in {took:.2?} ({:.2} Gbit/s); {} reads, {super_frames} super-frames, {} segments ({:.1} per read); {} writes, {coalesced} coalesced ({:.1} segments each), largest write {} bytes",
            LEN >> 20,
            (LEN * 8) as f64 / took.as_secs_f64() / 1e9,
            c.reads - before.reads,
            c.segments - before.segments,
            (c.segments - before.segments) as f64 / (c.reads - before.reads) as f64,
            c.writes - before.writes,
            merged as f64 / coalesced.max(1) as f64,
            c.largest_write,
        );
        assert!(
            super_frames > 0,
            "{what}: no super-frame was read from the TAP"
        );
        assert!(coalesced > 0, "{what}: no coalesced write happened");
        assert!(
            merged >= 2 * coalesced,
            "{what}: coalesced writes carry {merged} segments in {coalesced} writes"
        );
    }
    // UDP GSO (USO): split by weft, written as single datagrams.
    let before = forwarder.counts();
    let (messages, segments) = (40, 8);
    let (intact, arrived) = udp_gso_transfer(
        &ns_a.name,
        &ns_b.name,
        "[fd77::2]:5203".parse().unwrap(),
        messages,
        segments,
        1200,
    );
    let c = forwarder.counts();
    eprintln!(
        "UDP: {arrived} datagrams arrived, {intact} intact, of {}; {} USO super-frames read",
        messages * segments,
        c.udp_super_frames - before.udp_super_frames
    );
    assert_eq!(intact, messages * segments, "UDP datagrams lost or damaged");
    assert!(
        c.udp_super_frames > before.udp_super_frames,
        "no USO super-frame was read (does the kernel take TUN_F_USO4|USO6?)"
    );

    let c = forwarder.counts();
    assert_eq!(c.split_errors, 0, "the kernel's reads were rejected: {c:?}");
    assert_eq!(c.write_errors, 0, "the kernel refused writes: {c:?}");
    assert_eq!(c.bad_checksums, 0, "split frames had bad checksums: {c:?}");
    assert!(c.largest_write > 1514 + VNET_HDR_LEN);
    drop(forwarder);
}
