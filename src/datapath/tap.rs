//! Bridge (L2) mode's local device: a TAP interface on a Linux bridge.
//!
//! The TAP is made with `tun-rs` (Layer 2). The bridge is created, or an
//! existing one attached, through [`crate::sys`] (rtnetlink). Everything
//! weft created is removed again by [`BridgeGuard`]'s drop; a pre-existing
//! bridge is left as it was (only the address weft added is taken off
//! again).

use super::tun::TunDevice;
use crate::sys::addr::Added;
use crate::sys::{Netlink, SysError};
use std::net::IpAddr;

/// Undoes the host changes of [`create`] when dropped: deletes a bridge
/// weft created, or removes the overlay address weft put on an existing one.
/// The TAP itself disappears when its [`TunDevice`] is closed.
#[derive(Debug)]
pub struct BridgeGuard {
    bridge: String,
    created: bool,
    added_addresses: Vec<(IpAddr, u8)>,
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
        let bridge = &self.bridge;
        let result = Netlink::open().and_then(|mut netlink| {
            let Some(link) = netlink.link(bridge)? else {
                return Ok(false);
            };
            if self.created {
                netlink.delete_link(link.index, bridge)?;
                Ok(true)
            } else {
                for &(addr, prefix) in &self.added_addresses {
                    netlink.delete_address(link.index, bridge, addr, prefix)?;
                }
                Ok(false)
            }
        });
        match result {
            Ok(true) => tracing::info!("removed bridge {bridge}"),
            Ok(false) => {}
            Err(e) if self.created => tracing::warn!(
                "could not remove bridge {bridge}: {e}; remove it with `ip link del {bridge}`"
            ),
            Err(e) => tracing::warn!("could not remove weft's addresses from bridge {bridge}: {e}"),
        }
    }
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
/// the overlay MTU, puts the `overlays` addresses on the bridge and brings
/// both up. On error nothing weft made is left behind.
pub fn create(
    bridge: &str,
    tap_name: &str,
    overlay_mtu: u16,
    overlays: &[(IpAddr, u8)],
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
    let text = |e: SysError| e.to_string();
    let mut netlink = Netlink::open().map_err(text)?;
    if netlink.link_exists(tap_name).map_err(text)? {
        return Err(format!(
            "an interface named {tap_name} already exists: pick another TAP name with --iface-name, or remove it (`ip link del {tap_name}`)"
        ));
    }
    let (bridge_link, created) = match netlink.link(bridge).map_err(text)? {
        Some(link) => {
            if !link.is_bridge() {
                return Err(format!(
                    "{bridge} exists but is not a Linux bridge: choose another --bridge name"
                ));
            }
            tracing::info!("attaching to the existing bridge {bridge}");
            (link, false)
        }
        None => {
            let link = netlink
                .create_bridge(bridge)
                .map_err(|e| format!("cannot create bridge {bridge}: {e}"))?;
            (link, true)
        }
    };
    let mut guard = BridgeGuard {
        bridge: bridge.to_string(),
        created,
        added_addresses: Vec::new(),
    };
    let index = bridge_link.index;
    if created {
        netlink
            .set_mtu(index, bridge, u32::from(overlay_mtu))
            .map_err(text)?;
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
    let tap_link = netlink.require_link(tap_name).map_err(text)?;
    netlink
        .set_controller(tap_link.index, tap_name, index, bridge)
        .map_err(text)?;
    netlink.set_up(tap_link.index, tap_name).map_err(text)?;
    if !created {
        // Read after the TAP joined: a bridge takes its ports' smallest MTU
        // unless someone set one.
        if let Ok(Some(now)) = netlink.link_by_index(index) {
            if now.mtu > u32::from(overlay_mtu) {
                tracing::warn!(
                    "bridge {bridge} has mtu {}, above the overlay MTU {overlay_mtu}: larger frames will be dropped; lower the MTU of the bridge's ports to {overlay_mtu}",
                    now.mtu
                );
            }
        }
    }
    for &(addr, prefix) in overlays {
        match netlink.add_address(index, bridge, addr, prefix) {
            Ok(Added::Added) if !created => guard.added_addresses.push((addr, prefix)),
            Ok(Added::Added) => {}
            Ok(Added::AlreadyThere) => {}
            Err(e) => {
                return Err(format!(
                    "cannot put {addr}/{prefix} on bridge {bridge}: {e}"
                ))
            }
        }
    }
    netlink.set_up(index, bridge).map_err(text)?;
    Ok((taps, guard))
}
