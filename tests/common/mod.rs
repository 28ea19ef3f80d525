//! Test harness for weft integration tests in network namespaces.
//!
//! Every test builds its own hosts: each [`Host`] is a uniquely named network
//! namespace (`wt-<pid>-<counter>-<letter>`) with its own scratch directory.
//! Dropping a `Host` stops the weft processes it started (by PID: SIGTERM,
//! wait, then SIGKILL), deletes the namespace and the directory, so cleanup
//! happens even when the test panics.
//!
//! Traffic only ever flows between namespaces made here: underlay addresses
//! come from 198.18.0.0/15, overlay addresses exist only inside namespaces.
//!
//! Talking to sockets inside a namespace is done without helper programs: a
//! dedicated thread enters the namespace with `setns(2)` ([`in_netns`]) and then
//! uses std's `TcpStream`/`UdpSocket`.

#![allow(dead_code)]

use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The weft binary cargo built for these tests.
pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// weft's default control/data port.
pub const PORT: u16 = 6783;

/// The network secret every host of a [`Net`] shares.
pub const SECRET: &str = "integration-test-network-secret\n";

/// True when the tests can create namespaces and TUN devices.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns early from a test (with a reason on stderr) when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: this test needs root (network namespaces, TUN devices); CI runs it as root");
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh number, unique within this test process.
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs `args` inside namespace `ns` (`ip netns exec`, which also gives the
/// command the namespace's own /sys) and returns its output, success or not.
pub fn ns_exec(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec {ns}: {e}"))
}

/// Runs `f` on a new thread that has entered network namespace `ns`, and
/// returns its result. Sockets made by `f` live in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Like [`in_netns`] but returns the thread handle without waiting.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &str) {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; only this thread changes namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns({path}) failed: {}", std::io::Error::last_os_error());
    }
}

/// One ping (1 s timeout) from namespace `ns` to `target`.
pub fn ping(ns: &str, target: &str) -> bool {
    ns_exec(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", target]).status.success()
}

/// `weft status --json` inside the namespace, parsed; None if it fails.
pub fn status_json(ns: &str) -> Option<Value> {
    let out = ns_exec(ns, &[WEFT, "status", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The first connection of a status snapshot (the tests have one peer).
pub fn first_connection(status: &Value) -> Option<&Value> {
    status.get("connections")?.as_array()?.first()
}

/// A drop counter from a status snapshot (0 when absent).
pub fn dropped(status: &Value, name: &str) -> u64 {
    status["dropped"][name].as_u64().unwrap_or(0)
}

/// Whether interface `name` exists in namespace `ns`.
pub fn link_exists(ns: &str, name: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether namespace `ns` has any route mentioning `needle` (all tables).
pub fn has_route(ns: &str, needle: &str) -> bool {
    let out = run("ip", &["-n", ns, "route", "show", "table", "all"]);
    String::from_utf8_lossy(&out.stdout).contains(needle)
}

/// A deterministic pseudo-random byte stream (xorshift64*), the same on
/// both ends of a transfer without sending the seed along.
pub struct ByteStream(u64);

impl ByteStream {
    /// A stream from a non-zero seed.
    pub fn new(seed: u64) -> ByteStream {
        ByteStream(seed | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b) % n
    }
}

/// One host: a network namespace, a scratch directory with its key and the
/// network secret, and at most one running weft.
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Underlay address on its veth `u0`.
    pub underlay: Ipv4Addr,
    /// Overlay address with prefix, e.g. `10.40.0.1/16`.
    pub overlay: String,
    /// Control addresses of its peers.
    pub peers: Vec<String>,
    /// Scratch directory (key, secret, config, logs).
    pub dir: PathBuf,
    weft: Option<Child>,
    runs: u32,
}

impl Host {
    /// A new empty namespace with loopback up (weft's status server binds 127.0.0.1 there).
    pub fn new(ns: String, underlay: Ipv4Addr, overlay: &str) -> Host {
        run("ip", &["netns", "add", &ns]);
        let dir = std::env::temp_dir().join(format!("weft-itest-{ns}"));
        // Build the Host before anything else can fail, so Drop cleans up.
        let host = Host { ns, underlay, overlay: overlay.into(), peers: Vec::new(), dir, weft: None, runs: 0 };
        run("ip", &["-n", &host.ns, "link", "set", "lo", "up"]);
        let _ = fs::remove_dir_all(&host.dir);
        fs::create_dir_all(&host.dir).expect("create the host's scratch directory");
        let secret = host.dir.join("secret");
        fs::write(&secret, SECRET).expect("write the secret");
        chmod(&secret, 0o600);
        let key = fs::File::create(host.dir.join("key")).expect("create the key file");
        let st = Command::new(WEFT).arg("keygen").stdout(key).status().expect("run weft keygen");
        assert!(st.success(), "weft keygen failed");
        host
    }

    /// The overlay address without its prefix length.
    pub fn overlay_ip(&self) -> String {
        self.overlay.split('/').next().unwrap_or_default().to_string()
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The usual `weft launch` arguments for this host.
    pub fn launch_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "launch".into(),
            "--overlay".into(),
            self.overlay.clone(),
            "--listen".into(),
            format!("{}:{PORT}", self.underlay),
            "--secret-file".into(),
            self.path("secret").display().to_string(),
            "--key-file".into(),
            self.path("key").display().to_string(),
            "--name".into(),
            self.ns.clone(),
        ];
        for p in &self.peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        args
    }

    /// Starts weft with the usual arguments plus `extra`.
    pub fn start(&mut self, extra: &[&str]) {
        let mut args = self.launch_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start_with(&args, &[]);
    }

    /// Starts `weft ARGS` in the namespace (stdout/stderr to a log file in the
    /// scratch directory). The PID is weft's own: `ip netns exec` execs it.
    pub fn start_with(&mut self, args: &[String], env: &[(&str, &str)]) {
        assert!(self.weft.is_none(), "{}: weft already running", self.ns);
        self.runs += 1;
        let log_path = self.path(&format!("weft-{}.log", self.runs));
        let log = fs::File::create(&log_path).expect("create the weft log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, WEFT])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn weft");
        self.weft = Some(child);
    }

    /// PID of the running weft.
    pub fn pid(&self) -> Option<u32> {
        self.weft.as_ref().map(|c| c.id())
    }

    /// Whether weft is still running.
    pub fn weft_running(&mut self) -> bool {
        match self.weft.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` to weft and waits for it to exit (SIGKILL after `grace`).
    /// Returns its exit status, or None if it was not running.
    pub fn stop(&mut self, signal: libc::c_int, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.weft.take()?;
        stop_child(&mut child, signal, grace)
    }

    /// Stops weft with SIGKILL (as a crash would).
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        self.stop(libc::SIGKILL, Duration::from_secs(5))
    }

    /// Stops weft with SIGTERM (up to 5 s to exit cleanly).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.stop(libc::SIGTERM, Duration::from_secs(5))
    }

    /// All logs weft wrote on this host so far.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for i in 1..=self.runs {
            if let Ok(t) = fs::read_to_string(self.path(&format!("weft-{i}.log"))) {
                text.push_str(&format!("--- {} run {i} ---\n{t}", self.ns));
            }
        }
        text
    }

    /// Runs `weft ARGS` to completion (killed after 10 s) in the namespace and
    /// returns its exit status and stderr. For input weft must reject.
    pub fn run_weft(&self, args: &[String], env: &[(&str, &str)], prefix: &[&str]) -> (ExitStatus, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        cmd.args(prefix);
        cmd.arg(WEFT).args(args).envs(env.iter().copied()).env("NO_COLOR", "1");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft");
        let mut stderr = child.stderr.take().expect("stderr pipe");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Ok(Some(st)) = child.try_wait() {
                break st;
            }
            if Instant::now() >= deadline {
                let st = stop_child(&mut child, libc::SIGKILL, Duration::from_secs(5));
                panic!("weft {args:?} did not exit within 10 s ({st:?}): it should have rejected its input");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, reader.join().unwrap_or_default())
    }
}

/// Sends `signal`, waits up to `grace`, then SIGKILLs and reaps.
fn stop_child(child: &mut Child, signal: libc::c_int, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: kill on the PID of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Some(mut child) = self.weft.take() {
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(3));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).stderr(Stdio::null()).status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Two hosts joined by a veth pair (`u0` in each), underlay 198.18.N.1/24 and
/// 198.18.N.2/24, overlay 10.40.0.1/16 and 10.40.0.2/16, each the other's peer.
pub struct Net {
    /// Host A (198.18.N.1, 10.40.0.1).
    pub a: Host,
    /// Host B (198.18.N.2, 10.40.0.2).
    pub b: Host,
}

impl Net {
    /// Makes the pair with underlay MTU `mtu`.
    pub fn pair(mtu: u32) -> Net {
        let id = next_id();
        let base = format!("wt-{}-{id}", std::process::id());
        // Each test's /24 is distinct (not needed for isolation, but it makes
        // logs of parallel tests easy to tell apart).
        let subnet = (id % 250) as u8 + 1;
        let mut a = Host::new(format!("{base}-a"), Ipv4Addr::new(198, 18, subnet, 1), "10.40.0.1/16");
        let mut b = Host::new(format!("{base}-b"), Ipv4Addr::new(198, 18, subnet, 2), "10.40.0.2/16");
        run(
            "ip",
            &["link", "add", "u0", "netns", &a.ns, "mtu", &mtu.to_string(), "type", "veth", "peer", "name", "u0", "netns", &b.ns, "mtu", &mtu.to_string()],
        );
        for h in [&a, &b] {
            run("ip", &["-n", &h.ns, "addr", "add", &format!("{}/24", h.underlay), "dev", "u0"]);
            run("ip", &["-n", &h.ns, "link", "set", "u0", "up"]);
        }
        a.peers = vec![format!("{}:{PORT}", b.underlay)];
        b.peers = vec![format!("{}:{PORT}", a.underlay)];
        Net { a, b }
    }

    /// Starts weft on both hosts with the usual arguments.
    pub fn start_both(&mut self, extra: &[&str]) {
        self.a.start(extra);
        self.b.start(extra);
    }

    /// Waits until both report an established connection; panics with logs if not.
    pub fn wait_established(&self, timeout: Duration) {
        for h in [&self.a, &self.b] {
            let ok = wait_until(timeout, || {
                status_json(&h.ns)
                    .and_then(|s| first_connection(&s).map(|c| c["state"] == "established"))
                    .unwrap_or(false)
            });
            assert!(ok, "{}: no established connection within {timeout:?}; status: {:?}", h.ns, status_json(&h.ns));
        }
    }
}

/// Sends `total` bytes of [`ByteStream`] `seed` from namespace `from` to
/// `to_ip:port` over TCP (listener in namespace `to`) and returns the SHA-256
/// computed by the sender and by the receiver, and the bytes received.
pub fn tcp_transfer(from: &str, to: &str, to_ip: &str, port: u16, total: usize, seed: u64) -> ([u8; 32], [u8; 32], usize) {
    use sha2::{Digest, Sha256};
    let addr: std::net::SocketAddr = format!("{to_ip}:{port}").parse().expect("address");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = spawn_in_netns(to, move || {
        let listener = std::net::TcpListener::bind(addr).expect("bind the receiver");
        ready_tx.send(()).expect("signal ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0usize;
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    received += n;
                }
                Err(e) => panic!("receiver: read failed after {received} bytes: {e}"),
            }
        }
        (<[u8; 32]>::from(hasher.finalize()), received)
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("receiver ready");
    let sent_hash = in_netns(from, move || {
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect through the overlay");
        conn.set_write_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut stream = ByteStream::new(seed);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len());
            stream.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            conn.write_all(&buf[..n]).unwrap_or_else(|e| panic!("sender: write failed with {left} bytes left: {e}"));
            left -= n;
        }
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        <[u8; 32]>::from(hasher.finalize())
    });
    let (recv_hash, received) = server.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    (sent_hash, recv_hash, received)
}

/// The header of one weft datagram seen on the wire.
#[derive(Debug, Clone, Copy)]
pub struct SeenDatagram {
    /// Sender's underlay address and port.
    pub source: std::net::SocketAddrV4,
    /// weft type byte (1 DATA, 2 HEARTBEAT, 3 PMTU_PROBE).
    pub kind: u8,
    /// Receiver index (little-endian in the header).
    pub receiver_index: u32,
    /// UDP payload length.
    pub len: usize,
}

/// Headers of the UDP datagrams to port [`PORT`] with at least a weft
/// header's 16 bytes that reach this thread's namespace during `window`
/// (a packet socket, so nothing else is needed; call inside [`in_netns`]).
pub fn capture_weft_datagrams(window: Duration) -> Vec<SeenDatagram> {
    let mut seen = Vec::new();
    // SAFETY: plain socket calls on a fd we own; the buffer outlives recv.
    unsafe {
        let proto = (libc::ETH_P_IP as u16).to_be() as libc::c_int;
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto);
        assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
        let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let deadline = Instant::now() + window;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
            if n <= 0 {
                continue;
            }
            let p = &buf[..n as usize];
            if p.len() < 20 || p[0] >> 4 != 4 || p[9] != libc::IPPROTO_UDP as u8 {
                continue;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let Some(udp) = p.get(ihl..) else { continue };
            if udp.len() < 8 + 16 || u16::from_be_bytes([udp[2], udp[3]]) != PORT {
                continue;
            }
            let weft = &udp[8..];
            seen.push(SeenDatagram {
                source: std::net::SocketAddrV4::new(
                    Ipv4Addr::new(p[12], p[13], p[14], p[15]),
                    u16::from_be_bytes([udp[0], udp[1]]),
                ),
                kind: weft[0],
                receiver_index: u32::from_le_bytes([weft[4], weft[5], weft[6], weft[7]]),
                len: weft.len(),
            });
        }
        libc::close(fd);
    }
    seen
}
