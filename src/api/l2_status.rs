//! Status of bridge (L2) mode, static VXLAN tunnel endpoints and sleeve
//! batching: the parts of the snapshot that `weft status` shows below the
//! connections.

use serde::{Deserialize, Serialize};

/// Ethernet frame counters of the L2 switch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct L2Counters {
    /// Frames from the bridge sent to one known location.
    pub unicast: u64,
    /// Frames from the bridge flooded to every peer (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// Frames from peers written to the bridge.
    pub delivered: u64,
    /// Frames larger than the overlay MTU allows, dropped.
    pub oversized: u64,
    /// Frames shorter than an Ethernet header, dropped.
    pub runts: u64,
    /// Frames from peers with a group (multicast) source address, dropped.
    pub bad_source: u64,
    /// MAC addresses that moved between locations.
    pub mac_moves: u64,
    /// MAC addresses that aged out.
    pub expired: u64,
    /// MAC addresses currently in the table.
    pub fdb_entries: u64,
}

/// Counters of one static VXLAN tunnel endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VtepStatus {
    /// Where frames for it are sent (`IP:PORT`).
    pub address: String,
    /// Frames sent to it.
    pub tx_packets: u64,
    /// Inner bytes sent to it.
    pub tx_bytes: u64,
    /// Frames accepted from it.
    pub rx_packets: u64,
    /// Inner bytes accepted from it.
    pub rx_bytes: u64,
}

/// Plaintext VXLAN receive drops.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VxlanDrops {
    /// VXLAN header with another VNI.
    pub wrong_vni: u64,
    /// Too short for a VXLAN header, or the I flag missing.
    pub bad_header: u64,
    /// From an address that is no configured VTEP.
    pub unknown_vtep: u64,
}

/// The L2 part of the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct L2Status {
    /// The Linux bridge the TAP is on.
    pub bridge: String,
    /// Whether weft created the bridge (it is removed on exit).
    pub bridge_created: bool,
    /// Idle age of learned MAC addresses, seconds.
    pub mac_age_secs: u64,
    /// Frame counters.
    pub counters: L2Counters,
    /// Static VXLAN tunnel endpoints (plaintext mode).
    pub vteps: Vec<VtepStatus>,
    /// Plaintext VXLAN receive drops.
    pub vxlan_drops: VxlanDrops,
}

/// How well the sleeve packs frames into sealed datagrams.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchCounters {
    /// Sealed data datagrams sent.
    pub sealed_datagrams: u64,
    /// Frames inside them (more than `sealed_datagrams` means packing worked).
    pub sealed_frames: u64,
    /// Largest sealed datagram sent (UDP payload bytes).
    pub largest_datagram: u64,
    /// Datagrams handed to the kernel by sendmmsg.
    pub sendmmsg_datagrams: u64,
    /// sendmmsg calls (datagrams per call = the ratio).
    pub sendmmsg_calls: u64,
}

impl L2Status {
    /// Lines for `weft status`.
    pub fn render_text(&self) -> String {
        let c = &self.counters;
        let mut out = format!(
            "         Bridge: {}{} mac-age={}s macs={} moves={} expired={}\n         Frames: unicast={} flooded={} delivered={} oversized={} runts={} bad-source={}\n",
            self.bridge,
            if self.bridge_created { " (created by weft)" } else { "" },
            self.mac_age_secs,
            c.fdb_entries,
            c.mac_moves,
            c.expired,
            c.unicast,
            c.flooded,
            c.delivered,
            c.oversized,
            c.runts,
            c.bad_source
        );
        if !self.vteps.is_empty() {
            let d = &self.vxlan_drops;
            out.push_str(&format!(
                "    Static VTEPs: {} (dropped: wrong-vni={} bad-header={} unknown-vtep={})\n",
                self.vteps.len(),
                d.wrong_vni,
                d.bad_header,
                d.unknown_vtep
            ));
            for v in &self.vteps {
                out.push_str(&format!(
                    "-> {:<21} vtep tx={}B/{}p rx={}B/{}p\n",
                    v.address, v.tx_bytes, v.tx_packets, v.rx_bytes, v.rx_packets
                ));
            }
        }
        out
    }
}
