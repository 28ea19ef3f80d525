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

pub mod cni;
pub mod containers;
pub mod kube_api;
pub mod switched;

use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// A scratch directory ($TMPDIR/weft-TAG-PID-N), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new empty directory named after `tag`.
    pub fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("weft-{tag}-{}-{}", std::process::id(), next_id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
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

/// A namespace holding the bridge `br0`: the switch of an underlay LAN.
pub fn new_switch(name: String) -> Netns {
    let switch = Netns::new(name);
    run(
        "ip",
        &["-n", &switch.name, "link", "add", "br0", "type", "bridge"],
    );
    run("ip", &["-n", &switch.name, "link", "set", "br0", "up"]);
    switch
}

/// Plugs namespace `ns` into `switch`'s `br0` with a veth pair: `u0` in
/// `ns` and `port` on the bridge, both up (the caller adds addresses).
pub fn plug_into_switch(ns: &str, switch: &Netns, port: &str) {
    run(
        "ip",
        &[
            "link",
            "add",
            "u0",
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &switch.name,
        ],
    );
    run(
        "ip",
        &[
            "-n",
            &switch.name,
            "link",
            "set",
            port,
            "master",
            "br0",
            "up",
        ],
    );
    run("ip", &["-n", ns, "link", "set", "u0", "up"]);
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
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

/// A command's exit status, stdout and stderr, for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
    spawn_in_netns(ns, f)
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
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
    ns_exec(ns, &["ping", "-n", "-q", "-c", "1", "-W", "1", target])
        .status
        .success()
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
    /// IPv4 underlay address on its veth `u0` (unused when `underlay6` is set).
    pub underlay: Ipv4Addr,
    /// IPv6 underlay address on `u0`: when set, weft listens and is dialled
    /// on it instead of `underlay` (see [`Net::pair_v6`]).
    pub underlay6: Option<Ipv6Addr>,
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
        let host = Host {
            ns,
            underlay,
            underlay6: None,
            overlay: overlay.into(),
            peers: Vec::new(),
            dir,
            weft: None,
            runs: 0,
        };
        run("ip", &["-n", &host.ns, "link", "set", "lo", "up"]);
        let _ = fs::remove_dir_all(&host.dir);
        fs::create_dir_all(&host.dir).expect("create the host's scratch directory");
        let secret = host.dir.join("secret");
        fs::write(&secret, SECRET).expect("write the secret");
        chmod(&secret, 0o600);
        let key = fs::File::create(host.dir.join("key")).expect("create the key file");
        let st = Command::new(WEFT)
            .arg("keygen")
            .stdout(key)
            .status()
            .expect("run weft keygen");
        assert!(st.success(), "weft keygen failed");
        host
    }

    /// The overlay address without its prefix length.
    pub fn overlay_ip(&self) -> String {
        self.overlay
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string()
    }

    /// The underlay address weft listens on: `underlay6` when set.
    pub fn underlay_ip(&self) -> IpAddr {
        self.underlay6.map_or(IpAddr::V4(self.underlay), IpAddr::V6)
    }

    /// This host's control address, `IP:PORT` (`[IPv6]:PORT`).
    pub fn control_addr(&self) -> String {
        std::net::SocketAddr::new(self.underlay_ip(), PORT).to_string()
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
            self.control_addr(),
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
        self.start_program(WEFT, args, env);
    }

    /// Starts `PROGRAM ARGS` in the namespace in place of weft (e.g. a
    /// shell script that ends by exec'ing weft), logged and stopped like it.
    pub fn start_program(&mut self, program: &str, args: &[String], env: &[(&str, &str)]) {
        assert!(self.weft.is_none(), "{}: weft already running", self.ns);
        self.runs += 1;
        let log_path = self.path(&format!("weft-{}.log", self.runs));
        let log = fs::File::create(&log_path).expect("create the weft log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, program])
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

    /// Waits up to `timeout` for weft to exit on its own; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(st))) = self.weft.as_mut().map(|c| c.try_wait()) {
                self.weft = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
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
    pub fn run_weft(
        &self,
        args: &[String],
        env: &[(&str, &str)],
        prefix: &[&str],
    ) -> (ExitStatus, String) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        cmd.args(prefix);
        cmd.arg(WEFT)
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1");
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The permission bits of `path` (e.g. 0o600).
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    meta.permissions().mode() & 0o7777
}

/// `weft pubkey < key`: the public key of the private key in `key`.
pub fn pubkey_of(key: &Path) -> Output {
    let file = fs::File::open(key).unwrap_or_else(|e| panic!("open {}: {e}", key.display()));
    Command::new(WEFT)
        .arg("pubkey")
        .stdin(file)
        .output()
        .expect("run weft pubkey")
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
    /// Makes the pair with underlay MTU `mtu` (IPv4 underlay).
    pub fn pair(mtu: u32) -> Net {
        Net::pair_family(mtu, false)
    }

    /// Makes the pair with an IPv6-only underlay of MTU `mtu`:
    /// 2001:2:0:N::1/64 and 2001:2:0:N::2/64 on `u0` (no IPv4 address there),
    /// each host's peer and listen address the IPv6 one.
    pub fn pair_v6(mtu: u32) -> Net {
        Net::pair_family(mtu, true)
    }

    fn pair_family(mtu: u32, ipv6: bool) -> Net {
        let id = next_id();
        let base = format!("wt-{}-{id}", std::process::id());
        // Each test's /24 (or /64) is distinct (not needed for isolation, but
        // it makes logs of parallel tests easy to tell apart).
        let subnet = (id % 250) as u8 + 1;
        let mut a = Host::new(
            format!("{base}-a"),
            Ipv4Addr::new(198, 18, subnet, 1),
            "10.40.0.1/16",
        );
        let mut b = Host::new(
            format!("{base}-b"),
            Ipv4Addr::new(198, 18, subnet, 2),
            "10.40.0.2/16",
        );
        if ipv6 {
            a.underlay6 = Some(Ipv6Addr::new(0x2001, 2, 0, subnet.into(), 0, 0, 0, 1));
            b.underlay6 = Some(Ipv6Addr::new(0x2001, 2, 0, subnet.into(), 0, 0, 0, 2));
        }
        run(
            "ip",
            &[
                "link",
                "add",
                "u0",
                "netns",
                &a.ns,
                "mtu",
                &mtu.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                "u0",
                "netns",
                &b.ns,
                "mtu",
                &mtu.to_string(),
            ],
        );
        for h in [&a, &b] {
            add_underlay_addr(h);
            run("ip", &["-n", &h.ns, "link", "set", "u0", "up"]);
        }
        a.peers = vec![b.control_addr()];
        b.peers = vec![a.control_addr()];
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
            assert!(
                ok,
                "{}: no established connection within {timeout:?}; status: {:?}",
                h.ns,
                status_json(&h.ns)
            );
        }
    }
}

/// Gives `h`'s `u0` its underlay address: `underlay6` (/64, without
/// duplicate address detection, so it is usable at once) when set, else
/// `underlay` (/24).
pub fn add_underlay_addr(h: &Host) {
    let (addr, extra): (String, &[&str]) = match h.underlay6 {
        Some(v6) => (format!("{v6}/64"), &["nodad"]),
        None => (format!("{}/24", h.underlay), &[]),
    };
    let mut args = vec!["-n", &h.ns, "addr", "add", &addr, "dev", "u0"];
    args.extend_from_slice(extra);
    run("ip", &args);
}

/// Mixed datagram sizes (UDP payload bytes): all fit every overlay MTU
/// here (the smallest: bridge mode, IPv6 inside, 1416 - 40 - 8).
pub const SIZES: &[usize] = &[8, 64, 512, 1000, 1300, 1360];

/// TCP both ways (checksums equal, every byte there) and UDP one way
/// (every datagram intact, almost all arrived) between `a_ip` and `b_ip`.
pub fn transfers(net: &Net, a_ip: &str, b_ip: &str, what: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || ping(&net.a.ns, b_ip)),
        "{what}: A cannot ping {b_ip}\n{}{}",
        net.a.logs(),
        net.b.logs()
    );
    let total = 16 << 20;
    let (sent, got, n) = tcp_transfer(&net.a.ns, &net.b.ns, b_ip, 7001, total, 11);
    assert_eq!(n, total, "{what}: A -> B TCP bytes");
    assert_eq!(sent, got, "{what}: A -> B TCP checksum");
    let (sent, got, n) = tcp_transfer(&net.b.ns, &net.a.ns, a_ip, 7002, total / 4, 12);
    assert_eq!(n, total / 4, "{what}: B -> A TCP bytes");
    assert_eq!(sent, got, "{what}: B -> A TCP checksum");
    let udp = udp_transfer(&net.a.ns, &net.b.ns, b_ip, 7003, 3000, SIZES);
    assert_eq!(
        udp.corrupted, 0,
        "{what}: UDP datagrams changed on the way: {udp:?}"
    );
    // UDP may drop under load (socket buffers of a starved receiver):
    // nearly all, not all, must arrive.
    assert!(
        udp.intact * 100 >= udp.sent * 90,
        "{what}: too few UDP datagrams arrived: {udp:?}"
    );
}

/// The worker count weft reported at start.
pub fn assert_workers(h: &Host, workers: usize) {
    let log = h.logs();
    assert!(
        log.contains(&format!("datapath: {workers} worker thread(s)")),
        "{}: expected {workers} worker(s):\n{log}",
        h.ns
    );
}

/// Sends `total` bytes of [`ByteStream`] `seed` from namespace `from` to
/// `to_ip:port` over TCP (listener in namespace `to`) and returns the SHA-256
/// computed by the sender and by the receiver, and the bytes received.
pub fn tcp_transfer(
    from: &str,
    to: &str,
    to_ip: &str,
    port: u16,
    total: usize,
    seed: u64,
) -> ([u8; 32], [u8; 32], usize) {
    use sha2::{Digest, Sha256};
    // Bare ("fd40::2") and bracketed ("[fd40::2]") IPv6 both work.
    let bare = to_ip.trim_start_matches('[').trim_end_matches(']');
    let addr = std::net::SocketAddr::new(bare.parse().expect("address"), port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = spawn_in_netns(to, move || {
        let listener = std::net::TcpListener::bind(addr).expect("bind the receiver");
        ready_tx.send(()).expect("signal ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
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
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    let sent_hash = in_netns(from, move || {
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("connect through the overlay");
        conn.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut stream = ByteStream::new(seed);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len());
            stream.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            conn.write_all(&buf[..n])
                .unwrap_or_else(|e| panic!("sender: write failed with {left} bytes left: {e}"));
            left -= n;
        }
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        <[u8; 32]>::from(hasher.finalize())
    });
    let (recv_hash, received) = server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    (sent_hash, recv_hash, received)
}

/// What [`udp_transfer`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpTransfer {
    /// Datagrams sent.
    pub sent: usize,
    /// Datagrams received with exactly the bytes sent.
    pub intact: usize,
    /// Datagrams received with other bytes (or another length).
    pub corrupted: usize,
}

/// Sends `count` UDP datagrams from namespace `from` to `to_ip:port`
/// (receiver in namespace `to`), their payload lengths taken in turn from
/// `sizes`, each holding its sequence number and bytes derived from it, so
/// the receiver checks every datagram on its own. Paced (a short pause
/// every 8 datagrams) so socket buffers do not overflow on a busy machine.
pub fn udp_transfer(
    from: &str,
    to: &str,
    to_ip: &str,
    port: u16,
    count: usize,
    sizes: &[usize],
) -> UdpTransfer {
    fn fill(seq: u64, buf: &mut [u8]) {
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in buf[8..].iter_mut().enumerate() {
            *b = (seq.wrapping_mul(31) as usize + i * 7) as u8;
        }
    }
    let addr: std::net::SocketAddr =
        std::net::SocketAddr::new(to_ip.parse().expect("address"), port);
    let sizes: Vec<usize> = sizes.iter().map(|s| (*s).max(8)).collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let expect = sizes.clone();
    let server = spawn_in_netns(to, move || {
        let socket = std::net::UdpSocket::bind(addr).expect("bind the receiver");
        ready_tx.send(()).expect("signal ready");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let (mut intact, mut corrupted) = (0, 0);
        let mut buf = vec![0u8; 65536];
        let mut want = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            if n < 8 {
                corrupted += 1;
                continue;
            }
            let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
            let len = expect[seq as usize % expect.len()];
            if n != len {
                corrupted += 1;
                continue;
            }
            fill(seq, &mut want[..len]);
            if buf[..n] == want[..n] {
                intact += 1;
            } else {
                corrupted += 1;
            }
        }
        (intact, corrupted)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    let sent = in_netns(from, move || {
        let socket = std::net::UdpSocket::bind(if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .expect("bind the sender");
        let mut buf = vec![0u8; 65536];
        let mut sent = 0;
        for seq in 0..count as u64 {
            let len = sizes[seq as usize % sizes.len()];
            fill(seq, &mut buf[..len]);
            if socket.send_to(&buf[..len], addr).is_ok() {
                sent += 1;
            }
            if seq % 8 == 7 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        sent
    });
    let (intact, corrupted) = server
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    UdpTransfer {
        sent,
        intact,
        corrupted,
    }
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
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
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

/// A bare network namespace (no weft, no keys), deleted on drop. Used for
/// the router in the middle of a [`Routed`] topology.
pub struct Netns {
    /// Namespace name.
    pub name: String,
}

impl Netns {
    /// A new namespace with loopback up.
    pub fn new(name: String) -> Netns {
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Two weft hosts that reach each other through a router namespace, so the
/// path MTU can be smaller than either host's interface MTU:
///
/// ```text
///   A u0 198.18.N.1/24 ==(mtu_a)== r0 198.18.N.254  R  198.19.N.254 r1 ==(mtu_b)== u0 198.19.N.2/24 B
/// ```
///
/// R has `net.ipv4.ip_forward=1`, so a DF datagram too big for the second
/// hop is answered with ICMP frag-needed (next-hop MTU = `mtu_b`) instead of
/// being forwarded or fragmented. Overlay 10.40.0.1/16 and 10.40.0.2/16.
pub struct Routed {
    /// Host A (198.18.N.1, 10.40.0.1), on the `mtu_a` side.
    pub a: Host,
    /// Host B (198.19.N.2, 10.40.0.2), on the `mtu_b` side.
    pub b: Host,
    /// The router between them (interfaces `r0` towards A, `r1` towards B).
    pub router: Netns,
    /// R's address on A's link (the source of its ICMP errors to A).
    pub router_a_side: Ipv4Addr,
}

impl Routed {
    /// Builds the topology: A's link has MTU `mtu_a`, B's link `mtu_b`.
    pub fn new(mtu_a: u32, mtu_b: u32) -> Routed {
        let id = next_id();
        let base = format!("wt-{}-{id}", std::process::id());
        let subnet = (id % 250) as u8 + 1;
        let router = Netns::new(format!("{base}-r"));
        let router_a_side = Ipv4Addr::new(198, 18, subnet, 254);
        let router_b_side = Ipv4Addr::new(198, 19, subnet, 254);
        let mut a = Host::new(
            format!("{base}-a"),
            Ipv4Addr::new(198, 18, subnet, 1),
            "10.40.0.1/16",
        );
        let mut b = Host::new(
            format!("{base}-b"),
            Ipv4Addr::new(198, 19, subnet, 2),
            "10.40.0.2/16",
        );
        let (ma, mb) = (mtu_a.to_string(), mtu_b.to_string());
        run(
            "ip",
            &[
                "link",
                "add",
                "u0",
                "netns",
                &a.ns,
                "mtu",
                &ma,
                "type",
                "veth",
                "peer",
                "name",
                "r0",
                "netns",
                &router.name,
                "mtu",
                &ma,
            ],
        );
        run(
            "ip",
            &[
                "link",
                "add",
                "u0",
                "netns",
                &b.ns,
                "mtu",
                &mb,
                "type",
                "veth",
                "peer",
                "name",
                "r1",
                "netns",
                &router.name,
                "mtu",
                &mb,
            ],
        );
        for (ns, dev, addr) in [
            (a.ns.as_str(), "u0", a.underlay),
            (b.ns.as_str(), "u0", b.underlay),
            (router.name.as_str(), "r0", router_a_side),
            (router.name.as_str(), "r1", router_b_side),
        ] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev],
            );
            run("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        run(
            "ip",
            &[
                "-n",
                &a.ns,
                "route",
                "add",
                &format!("198.19.{subnet}.0/24"),
                "via",
                &router_a_side.to_string(),
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &b.ns,
                "route",
                "add",
                &format!("198.18.{subnet}.0/24"),
                "via",
                &router_b_side.to_string(),
            ],
        );
        // Forwarding is what makes R a router: without it the first hop's
        // DF probes would be dropped without the ICMP that tells A the size.
        let out = ns_exec(
            &router.name,
            &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        );
        assert!(
            out.status.success(),
            "enable forwarding in {}: {}",
            router.name,
            String::from_utf8_lossy(&out.stderr)
        );
        a.peers = vec![format!("{}:{PORT}", b.underlay)];
        b.peers = vec![format!("{}:{PORT}", a.underlay)];
        Routed {
            a,
            b,
            router,
            router_a_side,
        }
    }

    /// Starts weft on both hosts with the usual arguments.
    pub fn start_both(&mut self, extra: &[&str]) {
        self.a.start(extra);
        self.b.start(extra);
    }
}

/// Turns off TSO, GSO and GRO on `iface` in `ns`. With them on, a packet
/// socket sees TCP "super-packets" of up to 64 KiB that the NIC (here: the
/// veth, which passes them unsegmented to its peer, so the receiving side
/// sees them too) would only cut into MTU-sized segments later; with them
/// off every captured packet is exactly one datagram on the wire.
pub fn disable_offloads(ns: &str, iface: &str) {
    // tx-udp-segmentation too: weft sends runs of equal-size datagrams with
    // UDP GSO, and veth would pass such a run on as one super-packet.
    let out = ns_exec(
        ns,
        &[
            "ethtool",
            "-K",
            iface,
            "tso",
            "off",
            "gso",
            "off",
            "gro",
            "off",
            "tx-udp-segmentation",
            "off",
        ],
    );
    assert!(
        out.status.success(),
        "ethtool -K {iface} tso off gso off gro off in {ns}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One IP packet seen by an [`UnderlayCapture`].
#[derive(Debug, Clone)]
pub struct WirePacket {
    /// Sent by this namespace (`PACKET_OUTGOING`) rather than received.
    pub outgoing: bool,
    /// 4 or 6.
    pub ip_version: u8,
    /// Bytes of the whole IP datagram as handed to the packet socket.
    pub len: usize,
    /// The IP header's own length field (total length; payload + 40 for IPv6).
    pub header_len_field: usize,
    /// IP protocol / IPv6 next header.
    pub protocol: u8,
    /// Source address.
    pub src: std::net::IpAddr,
    /// Destination address.
    pub dst: std::net::IpAddr,
    /// IPv4 DF bit (false for IPv6).
    pub dont_fragment: bool,
    /// A fragment: IPv4 MF or offset set, or an IPv6 fragment header.
    pub fragment: bool,
    /// UDP/TCP source and destination ports (first fragment only).
    pub ports: Option<(u16, u16)>,
    /// weft type byte, for UDP to or from [`PORT`] with a full weft header.
    pub weft_kind: Option<u8>,
    /// ICMPv4 (type, code, next-hop MTU field).
    pub icmp: Option<(u8, u8, u16)>,
    /// TCP flags byte (first fragment only).
    pub tcp_flags: Option<u8>,
}

impl WirePacket {
    /// TCP to or from weft's control port.
    pub fn is_weft_control(&self) -> bool {
        self.protocol == libc::IPPROTO_TCP as u8
            && self.ports.is_some_and(|(s, d)| s == PORT || d == PORT)
    }

    /// A TCP SYN (without ACK): the first segment of a connection.
    pub fn is_syn(&self) -> bool {
        self.tcp_flags.is_some_and(|f| f & 0x12 == 0x02)
    }

    /// ICMPv4 destination unreachable, fragmentation needed.
    pub fn frag_needed_mtu(&self) -> Option<u16> {
        match self.icmp {
            Some((3, 4, mtu)) => Some(mtu),
            _ => None,
        }
    }
}

/// Parses one IP packet from a packet socket; None for anything else.
pub fn parse_wire_packet(p: &[u8], len: usize, outgoing: bool) -> Option<WirePacket> {
    use std::net::{IpAddr, Ipv6Addr};
    let version = p.first()? >> 4;
    let (header_len_field, protocol, src, dst, dont_fragment, fragment, first, l4) = match version {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let hdr = p.get(..20)?;
            let flags_off = u16::from_be_bytes([hdr[6], hdr[7]]);
            let src = IpAddr::V4(Ipv4Addr::new(hdr[12], hdr[13], hdr[14], hdr[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]));
            let more = flags_off & 0x2000 != 0;
            let offset = flags_off & 0x1fff;
            (
                usize::from(u16::from_be_bytes([hdr[2], hdr[3]])),
                hdr[9],
                src,
                dst,
                flags_off & 0x4000 != 0,
                more || offset != 0,
                offset == 0,
                p.get(ihl..).unwrap_or(&[]),
            )
        }
        6 => {
            let hdr = p.get(..40)?;
            let src: [u8; 16] = hdr[8..24].try_into().ok()?;
            let dst: [u8; 16] = hdr[24..40].try_into().ok()?;
            let next = hdr[6];
            (
                usize::from(u16::from_be_bytes([hdr[4], hdr[5]])) + 40,
                next,
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                false,
                next == 44,
                next != 44,
                &p[40..],
            )
        }
        _ => return None,
    };
    let ports = (first && (protocol == 6 || protocol == 17))
        .then(|| {
            Some((
                u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
                u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
            ))
        })
        .flatten();
    let weft_kind = (protocol == 17
        && ports.is_some_and(|(s, d)| s == PORT || d == PORT)
        && l4.len() >= 8 + 16)
        .then(|| l4[8]);
    let icmp = (version == 4 && protocol == 1 && first && l4.len() >= 8)
        .then(|| (l4[0], l4[1], u16::from_be_bytes([l4[6], l4[7]])));
    let tcp_flags = (protocol == 6 && first)
        .then(|| l4.get(13).copied())
        .flatten();
    Some(WirePacket {
        outgoing,
        ip_version: version,
        len,
        header_len_field,
        protocol,
        src,
        dst,
        dont_fragment,
        fragment,
        ports,
        weft_kind,
        icmp,
        tcp_flags,
    })
}

/// Records every IP packet on one interface of one namespace, both
/// directions, from [`UnderlayCapture::start`] (which returns only once the
/// packet socket is bound, so start it before weft) until
/// [`UnderlayCapture::finish`]. Bounded: it stops by itself after 120 s.
pub struct UnderlayCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<WirePacket>>>,
}

impl UnderlayCapture {
    /// Opens an `AF_PACKET` socket on `iface` inside `ns` and starts recording.
    pub fn start(ns: &str, iface: &str) -> UnderlayCapture {
        use std::sync::atomic::AtomicBool;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let iface = iface.to_string();
        let flag = stop.clone();
        let thread = spawn_in_netns(ns, move || capture_packets(&iface, &flag, ready_tx));
        let mut capture = UnderlayCapture {
            stop,
            thread: Some(thread),
        };
        if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            // The thread failed before binding: surface its panic.
            let thread = capture.thread.take().expect("thread");
            let _ = thread
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            panic!("capture on {ns} did not become ready within 5 s");
        }
        capture
    }

    /// Stops recording and returns what was seen, in arrival order.
    pub fn finish(mut self) -> Vec<WirePacket> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("capture thread");
        thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for UnderlayCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn capture_packets(
    iface: &str,
    stop: &std::sync::atomic::AtomicBool,
    ready: std::sync::mpsc::Sender<()>,
) -> Vec<WirePacket> {
    let mut seen = Vec::new();
    let name = std::ffi::CString::new(iface).expect("interface name");
    // SAFETY: plain socket calls on a fd we own; buffers outlive the calls.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert!(
            ifindex != 0,
            "no interface {iface}: {}",
            std::io::Error::last_os_error()
        );
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, libc::c_int::from(proto));
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let rc = libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert!(
            rc == 0,
            "bind the packet socket to {iface}: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        // Room for the largest datagram: a 1 MiB receive buffer so nothing is
        // lost while the test thread is busy elsewhere.
        let rcvbuf: libc::c_int = 1 << 20;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &rcvbuf as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let _ = ready.send(());
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = vec![0u8; 65536];
        // Drain what is queued even after the stop flag, so nothing sent
        // before `finish` is missed.
        let mut idle_after_stop = false;
        let mut stopped_at: Option<Instant> = None;
        while Instant::now() < deadline && !idle_after_stop {
            let stopping = stop.load(Ordering::SeqCst);
            if stopping {
                // At most one more second of draining under continuous traffic.
                let t = *stopped_at.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
            let mut from: libc::sockaddr_ll = std::mem::zeroed();
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // MSG_TRUNC: the return value is the real length even if larger than the buffer.
            let n = libc::recvfrom(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut from_len,
            );
            if n <= 0 {
                idle_after_stop = stopping;
                continue;
            }
            let len = n as usize;
            let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
            if let Some(p) = parse_wire_packet(&buf[..len.min(buf.len())], len, outgoing) {
                seen.push(p);
            }
        }
        libc::close(fd);
    }
    seen
}

/// `/etc/hosts` of a namespace: `ip netns exec` bind-mounts
/// `/etc/netns/NS/hosts` over it. Removed on drop.
pub struct NetnsHosts(std::path::PathBuf);

impl NetnsHosts {
    pub fn new(ns: &str) -> NetnsHosts {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).expect("create /etc/netns/NS");
        let h = NetnsHosts(dir);
        h.set("127.0.0.1 localhost\n");
        h
    }

    /// Rewrites the file in place (the bind mount keeps its inode).
    pub fn set(&self, text: &str) {
        std::fs::write(self.0.join("hosts"), text).expect("write the hosts file");
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
