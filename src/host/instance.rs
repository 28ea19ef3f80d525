//! One running weft per interface name and network namespace, and what a
//! weft that did not exit cleanly (kill -9, a crash, power loss of the
//! process) left behind.
//!
//! A running `weft launch` holds an exclusive `flock` on
//! `/run/weft/<netns>-<iface>.lock` and writes into it what it changed on
//! the host: its pid, the bridge it created (with the overlay address on
//! it), the interface it attached XDP to. The kernel drops the lock when
//! the process dies, however it dies. So at start:
//!
//! - the lock is held by another process: a weft is running with this
//!   interface; say which pid and never advise deleting its interface;
//! - the lock is free but a record is there: an earlier weft died without
//!   cleaning up; remove what the record lists (only if it still looks
//!   like what weft made) and say so in one line;
//! - no record: nothing to clear.
//!
//! The namespace is named by its cookie (SO_NETNS_COOKIE, never reused
//! while the machine runs) so records of a deleted namespace never match a
//! new one; kernels without cookies fall back to the namespace inode.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Where the lock files live (systemd: `RuntimeDirectory=weft`).
pub const RUN_DIR: &str = "/run/weft";

/// What a running weft changed on the host, as written in its lock file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Record {
    /// The weft process.
    pub pid: u32,
    /// Its TUN or TAP device.
    pub iface: String,
    /// A bridge it created (bridge mode), to be deleted if it died.
    pub bridge: Option<String>,
    /// The overlay address/prefix it put on that bridge.
    pub overlay: Option<String>,
    /// An interface it attached its XDP program to.
    pub xdp: Option<String>,
    /// Its status server, for messages.
    pub status_addr: Option<String>,
}

impl Record {
    fn render(&self) -> String {
        let mut text = format!("pid={}\niface={}\n", self.pid, self.iface);
        for (k, v) in [
            ("bridge", &self.bridge),
            ("overlay", &self.overlay),
            ("xdp", &self.xdp),
            ("status_addr", &self.status_addr),
        ] {
            if let Some(v) = v {
                text.push_str(&format!("{k}={v}\n"));
            }
        }
        text
    }

    fn parse(text: &str) -> Option<Record> {
        let mut r = Record::default();
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            let v = v.trim().to_string();
            match k.trim() {
                "pid" => r.pid = v.parse().ok()?,
                "iface" => r.iface = v,
                "bridge" => r.bridge = Some(v),
                "overlay" => r.overlay = Some(v),
                "xdp" => r.xdp = Some(v),
                "status_addr" => r.status_addr = Some(v),
                _ => {}
            }
        }
        (r.pid != 0).then_some(r)
    }
}

/// The lock of a running weft; removed again (with its record) on drop.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
    record: Record,
}

/// The outcome of [`claim`].
#[derive(Debug)]
pub enum Claim {
    /// This process now owns the interface name. `leftover` is the record
    /// of an earlier weft that died without cleaning up, if any.
    Owned {
        /// The lock, to keep while running.
        lock: InstanceLock,
        /// What the dead weft left (clear it with [`clear_leftovers`]).
        leftover: Option<Record>,
    },
    /// A weft is running with this interface name.
    Running(Record),
    /// No lock could be taken (no /run/weft, e.g. not root): carry on
    /// without one; the reason is for a debug line.
    Unavailable(String),
}

/// This network namespace's name for lock files.
fn netns_id() -> String {
    // SO_NETNS_COOKIE (71): unique per namespace for the machine's uptime.
    if let Ok(sock) = std::net::UdpSocket::bind("127.0.0.1:0") {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt on a valid socket into a u64 of the given length.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                71,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc == 0 && cookie != 0 {
            return format!("netns{cookie}");
        }
    }
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net")
        .map(|m| format!("ino{}", m.ino()))
        .unwrap_or_else(|_| "netns".into())
}

/// The lock file of interface `iface` in this namespace.
pub fn lock_path(iface: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{}-{iface}.lock", netns_id()))
}

/// Takes the lock of `iface` in this namespace.
pub fn claim(iface: &str) -> Claim {
    if let Err(e) = std::fs::create_dir_all(RUN_DIR) {
        return Claim::Unavailable(format!("cannot create {RUN_DIR}: {e}"));
    }
    let path = lock_path(iface);
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return Claim::Unavailable(format!("cannot open {}: {e}", path.display())),
    };
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let previous = Record::parse(&text);
    // SAFETY: flock on an open file.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Claim::Running(previous.unwrap_or(Record {
                iface: iface.to_string(),
                ..Record::default()
            }));
        }
        return Claim::Unavailable(format!("cannot lock {}: {err}", path.display()));
    }
    // The record may have been written between the read and the lock.
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let leftover = Record::parse(&text).filter(|r| r.pid != std::process::id());
    let lock = InstanceLock {
        file,
        path,
        record: Record {
            pid: std::process::id(),
            iface: iface.to_string(),
            ..Record::default()
        },
    };
    Claim::Owned { lock, leftover }
}

impl InstanceLock {
    /// Updates the record of what this weft changed on the host.
    pub fn record(&mut self, update: impl FnOnce(&mut Record)) {
        update(&mut self.record);
        let text = self.record.render();
        let _ = self.file.set_len(0);
        let _ = self.file.rewind();
        let _ = self.file.write_all(text.as_bytes());
        let _ = self.file.flush();
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Remove while still locked, so no other weft can see a stale record.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether `addresses` hold `overlay` (`ADDR/PREFIX` as the record has it).
fn holds(addresses: &[(std::net::IpAddr, u8)], overlay: &str) -> bool {
    addresses
        .iter()
        .any(|(ip, prefix)| format!("{ip}/{prefix}") == overlay)
}

/// Removes what a dead weft left, as its record lists it and only where it
/// still looks like weft's: its device, the bridge it created (if the
/// bridge still carries the overlay address), its XDP program. Returns the
/// one line to log, or `None` when nothing was left.
pub fn clear_leftovers(record: &Record) -> Result<Option<String>, String> {
    let mut cleared = Vec::new();
    let mut netlink = crate::sys::Netlink::open().map_err(|e| e.to_string())?;
    let pid = record.pid;
    if let Some(link) = netlink.link(&record.iface).map_err(|e| e.to_string())? {
        netlink
            .delete_link(link.index, &record.iface)
            .map_err(|e| format!("cannot remove {} left by weft pid {pid}: {e}", record.iface))?;
        cleared.push(format!("device {}", record.iface));
    }
    if let (Some(bridge), Some(overlay)) = (&record.bridge, &record.overlay) {
        if let Some(link) = netlink.link(bridge).map_err(|e| e.to_string())? {
            let addresses = netlink.addresses(link.index).map_err(|e| e.to_string())?;
            if link.is_bridge() && holds(&addresses, overlay) {
                netlink.delete_link(link.index, bridge).map_err(|e| {
                    format!("cannot remove bridge {bridge} left by weft pid {pid}: {e}")
                })?;
                cleared.push(format!("bridge {bridge} with {overlay} and its route"));
            }
        }
    }
    if let Some(iface) = &record.xdp {
        if netlink.link_exists(iface).map_err(|e| e.to_string())?
            && crate::datapath::xdp::clear_leftover_program(iface)?
        {
            cleared.push(format!("XDP program on {iface}"));
        }
    }
    if cleared.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "cleared what an earlier weft (pid {}, no longer running) left: {}",
        record.pid,
        cleared.join(", ")
    )))
}

/// The one-line error for a start while weft `running` holds `iface`.
pub fn running_message(running: &Record, iface: &str) -> String {
    let who = if running.pid != 0 {
        format!("the weft running as pid {}", running.pid)
    } else {
        "a running weft".to_string()
    };
    let status = running
        .status_addr
        .as_deref()
        .map(|a| format!(" (status: `weft status --status-addr {a}`)"))
        .unwrap_or_default();
    format!(
        "{iface} belongs to {who}{status}: stop that weft first (SIGTERM; `systemctl stop weft@NAME` for the service), or start this one with another --iface-name"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = Record {
            pid: 42,
            iface: "weft-tap".into(),
            bridge: Some("weft".into()),
            overlay: Some("10.40.0.1/16".into()),
            xdp: None,
            status_addr: Some("127.0.0.1:6782".into()),
        };
        assert_eq!(Record::parse(&r.render()), Some(r));
        assert_eq!(Record::parse(""), None);
        let m = running_message(
            &Record {
                pid: 7,
                ..Record::default()
            },
            "weft0",
        );
        assert!(m.contains("pid 7") && !m.contains("ip link del"), "{m}");
        let held = [("10.40.0.1".parse().unwrap(), 16)];
        assert!(holds(&held, "10.40.0.1/16"));
        assert!(!holds(&held, "10.40.0.1/24"));
    }
}
