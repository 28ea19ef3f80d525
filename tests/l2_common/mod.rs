//! A small harness for the bridge-mode and plaintext tests: network
//! namespaces that delete themselves, "containers" on a bridge through
//! veth pairs, weft processes that are stopped by PID, sockets opened
//! inside a namespace, and `weft status --json` readers.
//!
//! Underlay addresses are 198.18.0.0/15; overlay addresses exist only
//! inside the namespaces made here.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The weft binary under test: `WEFT_BIN` if set (a copy of this tree's
/// build when several worktrees share one target directory), else cargo's.
pub fn weft_bin() -> String {
    std::env::var("WEFT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weft").to_string())
}

/// Runs a command line through `sh -c`, returning (success, stdout+stderr).
pub fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs a command and panics with its output if it fails.
pub fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "`{cmd}` failed: {out}");
    out
}

/// A short name prefix unique to this test process and call.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}{}{}",
        std::process::id() % 10000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` until it returns `Some`, or gives up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network namespace, deleted on drop (after the processes in it are killed).
pub struct Netns {
    /// Its name for `ip netns`.
    pub name: String,
}

impl Netns {
    /// Creates the namespace with loopback up and IPv6 off (no router
    /// solicitations or MLD reports refreshing MAC tables behind a test's back).
    pub fn new(name: &str) -> Netns {
        let _ = sh(&format!("ip netns del {name} 2>/dev/null"));
        must(&format!("ip netns add {name}"));
        let ns = Netns {
            name: name.to_string(),
        };
        ns.run("ip link set lo up");
        ns.run("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
        ns
    }

    /// Runs a command inside, panicking on failure.
    pub fn run(&self, cmd: &str) -> String {
        must(&format!("ip netns exec {} {cmd}", self.name))
    }

    /// Runs a command inside, returning (success, output).
    pub fn try_run(&self, cmd: &str) -> (bool, String) {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }

    /// Runs `f` on a thread that joined this namespace (sockets made there stay in it).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("namespace file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns pids {} | xargs -r kill -9", self.name));
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// Two underlay "hosts" joined by a veth pair: h1 has 198.18.0.1/24 and
/// h2 198.18.0.2/24 on interface `ul`.
pub struct Underlay {
    /// Host 1.
    pub h1: Netns,
    /// Host 2.
    pub h2: Netns,
}

impl Underlay {
    /// Makes both hosts.
    pub fn new(tag: &str) -> Underlay {
        let p = unique(tag);
        let h1 = Netns::new(&format!("{p}h1"));
        let h2 = Netns::new(&format!("{p}h2"));
        must(&format!(
            "ip link add {p}a netns {} type veth peer name {p}b netns {}",
            h1.name, h2.name
        ));
        h1.run(&format!("ip link set {p}a name ul"));
        h2.run(&format!("ip link set {p}b name ul"));
        h1.run("ip addr add 198.18.0.1/24 dev ul");
        h2.run("ip addr add 198.18.0.2/24 dev ul");
        h1.run("ip link set ul up");
        h2.run("ip link set ul up");
        Underlay { h1, h2 }
    }
}

/// A "container": a namespace with `eth0` (fixed MAC and address) whose
/// veth peer sits on a bridge in a host namespace.
pub struct Container {
    /// Its namespace.
    pub ns: Netns,
    /// Its MAC address.
    pub mac: String,
    /// Its overlay address (no prefix).
    pub ip: String,
    host_end: String,
}

impl Container {
    /// Makes a container and plugs it into `bridge` on `host`.
    pub fn new(name: &str, mac: &str, ip: &str, mtu: u16, host: &Netns, bridge: &str) -> Container {
        let ns = Netns::new(name);
        ns.run("sysctl -qw net.ipv4.icmp_echo_ignore_broadcasts=0");
        // Announce the address with a gratuitous ARP whenever the link comes
        // up, as container runtimes do after attaching or moving a container.
        ns.run("sysctl -qw net.ipv4.conf.all.arp_notify=1 net.ipv4.conf.default.arp_notify=1");
        let c = Container {
            ns,
            mac: mac.into(),
            ip: ip.into(),
            host_end: format!("v{name}"),
        };
        c.plug(host, bridge, mtu);
        c
    }

    /// (Re)connects the container to `bridge` on `host` with the same MAC
    /// and address (a container moving between hosts).
    pub fn plug(&self, host: &Netns, bridge: &str, mtu: u16) {
        let (name, he) = (&self.ns.name, &self.host_end);
        must(&format!(
            "ip link add {he} netns {} type veth peer name {he}c netns {name}",
            host.name
        ));
        self.ns.run(&format!("ip link set {he}c name eth0"));
        self.ns
            .run(&format!("ip link set eth0 address {} mtu {mtu}", self.mac));
        self.ns.run(&format!("ip addr add {}/16 dev eth0", self.ip));
        self.ns.run("sysctl -qw net.ipv4.conf.eth0.arp_notify=1");
        // Host side on the bridge first, so the announcement is not lost.
        host.run(&format!("ip link set {he} mtu {mtu} master {bridge} up"));
        self.ns.run("ip link set eth0 up");
    }

    /// Waits until the bridge forwards on the container's port, then sends
    /// a gratuitous ARP from it (what a container runtime does after it
    /// attaches or moves a container: `arping -U`).
    pub fn announce(&self, host: &Netns) {
        let he = self.host_end.clone();
        let forwarding = wait_for(Duration::from_secs(3), || {
            host.try_run(&format!("bridge link show dev {he}"))
                .1
                .contains("state forwarding")
                .then_some(())
        });
        assert!(
            forwarding.is_some(),
            "bridge port {he} never started forwarding"
        );
        let mac: Vec<u8> = self
            .mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        let ip: std::net::Ipv4Addr = self.ip.parse().unwrap();
        let mut frame = vec![0xffu8; 6];
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&mac);
        frame.extend_from_slice(&ip.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&ip.octets());
        frame.resize(60, 0);
        self.send_frames(vec![frame]);
    }

    /// Writes whole Ethernet frames onto the container's eth0 with a raw
    /// packet socket (a bounded list: one send each).
    pub fn send_frames(&self, frames: Vec<Vec<u8>>) {
        self.ns.enter(move || {
            // SAFETY: a raw packet socket we own, sockaddr_ll on the stack.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
                let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_ifindex = ifindex as i32;
                sll.sll_halen = 6;
                sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
                for frame in &frames {
                    let n = libc::sendto(
                        fd,
                        frame.as_ptr() as *const libc::c_void,
                        frame.len(),
                        0,
                        &sll as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    assert_eq!(
                        n,
                        frame.len() as isize,
                        "raw frame: {}",
                        std::io::Error::last_os_error()
                    );
                }
                libc::close(fd);
            }
        });
    }

    /// Unplugs the container from whatever host it is on.
    pub fn unplug(&self) {
        self.ns.run("ip link del eth0");
    }
}

/// A running `weft launch`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Weft {
    child: Option<Child>,
    /// The namespace it runs in.
    pub ns: String,
    /// Its log file.
    pub log: std::path::PathBuf,
}

impl Weft {
    /// Starts `weft launch ARGS` inside `ns`; its log goes to a temp file.
    pub fn start(ns: &Netns, args: &str) -> Weft {
        let log = std::env::temp_dir().join(format!("weft-{}.log", ns.name));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, &weft_bin(), "launch"])
            .args(args.split_whitespace())
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("weft starts");
        Weft {
            child: Some(child),
            ns: ns.name.clone(),
            log,
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling the process we spawned, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `weft status --json` from inside `ns`, parsed.
pub fn status(ns: &Netns) -> Option<serde_json::Value> {
    let (ok, out) = ns.try_run(&format!("{} status --json", weft_bin()));
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// Reads a u64 at a JSON pointer of the status (0 when absent).
pub fn stat(ns: &Netns, pointer: &str) -> u64 {
    status(ns)
        .and_then(|s| s.pointer(pointer).and_then(|v| v.as_u64()))
        .unwrap_or(0)
}

/// Writes a file with restrictive permissions (secrets, configs).
pub fn write_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(name);
    let mut f = std::fs::File::create(&path).expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    path
}

/// Whether an interface exists in a namespace.
pub fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.try_run(&format!("ip link show dev {name}")).0
}

/// Receives UDP datagrams on `port` inside `ns` for `window`, counting them.
/// Returns a handle that yields the count.
pub fn count_udp(ns: &Netns, port: u16, window: Duration) -> std::thread::JoinHandle<usize> {
    let path = format!("/var/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd affects only this thread.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let sock = std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind counter");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + window;
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if sock.recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    });
    rx.recv().expect("counter ready");
    handle
}

/// Captures IPv4 packets seen inside `ns` (AF_PACKET, all interfaces) for
/// `window`, returning each IP packet's bytes.
pub fn capture_ipv4(ns: &Netns, window: Duration) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let path = format!("/var/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd affects only this thread;
        // socket/setsockopt/recv on the fd we own.
        unsafe {
            assert_eq!(libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET), 0);
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                (libc::ETH_P_IP as u16).to_be() as i32,
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
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
            tx.send(()).unwrap();
            let deadline = Instant::now() + window;
            let mut packets = Vec::new();
            let mut buf = vec![0u8; 65536];
            while Instant::now() < deadline {
                let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                if n > 0 {
                    packets.push(buf[..n as usize].to_vec());
                }
            }
            libc::close(fd);
            packets
        }
    });
    rx.recv().expect("capture ready");
    handle
}

/// The UDP payload of an IPv4 packet to `dst_port`, if it is one.
pub fn udp_payload_to(packet: &[u8], dst_port: u16) -> Option<&[u8]> {
    if packet.len() < 20 || packet[0] >> 4 != 4 || packet[9] != 17 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0xf) * 4;
    let udp = packet.get(ihl..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != dst_port {
        return None;
    }
    Some(&udp[8..])
}
