//! Bridge (L2) mode's local device: a TAP interface on a Linux bridge.
//!
//! The TAP is made with `tun-rs` (Layer 2). The bridge is created, or an
//! existing one attached, with `ip link`: iproute2 is on every host weft
//! supports, its errors are readable as they are, and the few commands run
//! once at start and once at exit, so a netlink client of our own would add
//! code without adding anything the user can see. Everything weft created is
//! removed again by [`BridgeGuard`]'s drop; a pre-existing bridge is left
//! as it was (only the address weft added is taken off again).

use super::tun::TunDevice;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

/// Undoes the host changes of [`create`] when dropped: deletes a bridge
/// weft created, or removes the overlay address weft put on an existing one.
/// The TAP itself disappears when its [`TunDevice`] is closed.
#[derive(Debug)]
pub struct BridgeGuard {
    bridge: String,
    created: bool,
    added_address: Option<String>,
}

impl BridgeGuard {
    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Whether weft created the bridge (and will delete it on exit).
    pub fn created(&self) -> bool {
        self.created
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = ip(&["link", "del", "dev", &self.bridge]) {
                tracing::warn!(
                    "could not remove bridge {}: {e}; remove it with `ip link del {}`",
                    self.bridge,
                    self.bridge
                );
            } else {
                tracing::info!("removed bridge {}", self.bridge);
            }
        } else if let Some(addr) = &self.added_address {
            let _ = ip(&["addr", "del", addr, "dev", &self.bridge]);
        }
    }
}

/// Runs `ip ARGS`, returning stderr as the error.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether interface `name` is a Linux bridge.
pub(crate) fn is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .exists()
}

/// Whether interface `name` exists (in this network namespace).
pub(crate) fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A random locally administered unicast MAC address for the TAP.
fn random_mac() -> [u8; 6] {
    use rand_core::RngCore;
    let mut mac = [0u8; 6];
    rand_core::OsRng.fill_bytes(&mut mac);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Creates (or attaches to) `bridge`, creates the TAP `tap_name` on it with
/// the overlay MTU, puts `overlay` on the bridge (if given) and brings both
/// up. On error nothing weft made is left behind.
pub fn create(
    bridge: &str,
    tap_name: &str,
    overlay_mtu: u16,
    overlay: Option<(IpAddr, u8)>,
    queues: usize,
    offload: bool,
) -> Result<(Vec<TunDevice>, BridgeGuard), String> {
    for (what, name) in [("--bridge", bridge), ("--iface-name", tap_name)] {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
            return Err(format!("{what} {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"));
        }
    }
    if bridge == tap_name {
        return Err(format!(
            "--bridge and --iface-name are both {bridge:?}: the TAP needs its own name"
        ));
    }
    if exists(tap_name) {
        return Err(format!(
            "an interface named {tap_name} already exists: pick another TAP name with --iface-name, or remove it (`ip link del {tap_name}`)"
        ));
    }
    let created = if exists(bridge) {
        if !is_bridge(bridge) {
            return Err(format!(
                "{bridge} exists but is not a Linux bridge: choose another --bridge name"
            ));
        }
        tracing::info!("attaching to the existing bridge {bridge}");
        false
    } else {
        ip(&["link", "add", "name", bridge, "type", "bridge"])
            .map_err(|e| format!("cannot create bridge {bridge}: {e}"))?;
        true
    };
    let mut guard = BridgeGuard {
        bridge: bridge.to_string(),
        created,
        added_address: None,
    };
    let mtu_text = overlay_mtu.to_string();
    if created {
        ip(&["link", "set", "dev", bridge, "mtu", &mtu_text])?;
    }
    let device = tun_rs::DeviceBuilder::new()
        .name(tap_name)
        .layer(tun_rs::Layer::L2)
        .mac_addr(random_mac())
        .mtu(overlay_mtu)
        .multi_queue(queues > 1)
        .offload(offload)
        .build_sync()
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                format!("no permission to create TAP device {tap_name} (/dev/net/tun): run weft as root or give it CAP_NET_ADMIN")
            }
            _ => format!("cannot create TAP device {tap_name}: {e}"),
        })?;
    let tap = TunDevice::from_device(device, tap_name.to_string(), true)
        .map_err(|e| format!("cannot make TAP {tap_name} non-blocking: {e}"))?;
    let mut taps = Vec::with_capacity(queues.max(1));
    for _ in 1..queues.max(1) {
        taps.push(
            tap.add_queue()
                .map_err(|e| format!("cannot open another queue of TAP {tap_name}: {e}"))?,
        );
    }
    taps.insert(0, tap);
    ip(&["link", "set", "dev", tap_name, "master", bridge])?;
    ip(&["link", "set", "dev", tap_name, "up"])?;
    if !created {
        if let Ok(m) = crate::host::facts::interface_mtu(bridge) {
            if m > u32::from(overlay_mtu) {
                tracing::warn!(
                    "bridge {bridge} has mtu {m}, above the overlay MTU {overlay_mtu}: larger frames will be dropped; lower the MTU of the bridge's ports to {overlay_mtu}"
                );
            }
        }
    }
    if let Some((addr, prefix)) = overlay {
        let cidr = format!("{addr}/{prefix}");
        match ip(&["addr", "add", &cidr, "dev", bridge]) {
            Ok(()) => guard.added_address = (!created).then(|| cidr.clone()),
            Err(e) if e.contains("File exists") => {}
            Err(e) => return Err(format!("cannot put {cidr} on bridge {bridge}: {e}")),
        }
    }
    ip(&["link", "set", "dev", bridge, "up"])?;
    Ok((taps, guard))
}
