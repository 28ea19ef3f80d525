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
    /// Learned MAC addresses evicted because the peer (or static VTEP)
    /// they were behind went over its quota.
    #[serde(default)]
    pub mac_quota_evictions: u64,
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
    /// Most MAC addresses learned behind one peer or static VTEP.
    #[serde(default)]
    pub mac_quota: u64,
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
    /// UDP GSO sendmsg calls (each sends a run of equal-size datagrams).
    #[serde(default)]
    pub gso_sends: u64,
    /// Datagrams sent through UDP GSO.
    #[serde(default)]
    pub gso_datagrams: u64,
}

impl L2Status {
    /// Lines for `weft status`.
    pub fn render_text(&self) -> String {
        let c = &self.counters;
        let mut out = format!(
            "         Bridge: {}{} mac-age={}s mac-quota={}/peer macs={} moves={} expired={} quota-evicted={}\n         Frames: unicast={} flooded={} delivered={} oversized={} runts={} bad-source={}\n",
            self.bridge,
            if self.bridge_created { " (created by weft)" } else { "" },
            self.mac_age_secs,
            self.mac_quota,
            c.fdb_entries,
            c.mac_moves,
            c.expired,
            c.mac_quota_evictions,
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

/// Adds the bridge-mode, static-VTEP and batching metrics to `registry`.
pub fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    l2: Option<&L2Status>,
    batching: &BatchCounters,
) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    type Labels = Vec<(String, String)>;
    let counter = |n: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        c
    };
    registry.register(
        "sealed_datagrams",
        "Sealed data datagrams sent",
        counter(batching.sealed_datagrams),
    );
    registry.register(
        "sealed_frames",
        "Frames carried in sealed data datagrams (more than datagrams: packing)",
        counter(batching.sealed_frames),
    );
    registry.register(
        "sendmmsg_calls",
        "sendmmsg system calls",
        counter(batching.sendmmsg_calls),
    );
    registry.register(
        "sendmmsg_datagrams",
        "Datagrams sent by sendmmsg",
        counter(batching.sendmmsg_datagrams),
    );
    registry.register(
        "gso_sends",
        "UDP GSO sendmsg calls",
        counter(batching.gso_sends),
    );
    registry.register(
        "gso_datagrams",
        "Datagrams sent through UDP GSO",
        counter(batching.gso_datagrams),
    );
    let Some(l2) = l2 else { return };
    let frames = Family::<Labels, Counter>::default();
    let c = &l2.counters;
    for (kind, n) in [
        ("unicast", c.unicast),
        ("flooded", c.flooded),
        ("delivered", c.delivered),
        ("oversized", c.oversized),
        ("runt", c.runts),
        ("bad_source", c.bad_source),
    ] {
        frames
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc_by(n);
    }
    registry.register(
        "l2_frames",
        "Ethernet frames by what happened to them",
        frames,
    );
    let macs = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    macs.set(c.fdb_entries as i64);
    registry.register("l2_mac_entries", "Learned MAC addresses", macs);
    registry.register(
        "l2_mac_moves",
        "MAC addresses that moved between hosts",
        counter(c.mac_moves),
    );
    registry.register(
        "l2_mac_quota_evictions",
        "Learned MAC addresses evicted because their peer or VTEP went over its quota",
        counter(c.mac_quota_evictions),
    );
    let vtep_tx = Family::<Labels, Counter>::default();
    let vtep_rx = Family::<Labels, Counter>::default();
    for v in &l2.vteps {
        let l: Labels = vec![("vtep".into(), v.address.clone())];
        vtep_tx.get_or_create(&l).inc_by(v.tx_packets);
        vtep_rx.get_or_create(&l).inc_by(v.rx_packets);
    }
    registry.register(
        "vtep_tx_packets",
        "Frames sent to a static VXLAN endpoint",
        vtep_tx,
    );
    registry.register(
        "vtep_rx_packets",
        "Frames accepted from a static VXLAN endpoint",
        vtep_rx,
    );
    let drops = Family::<Labels, Counter>::default();
    for (reason, n) in [
        ("wrong_vni", l2.vxlan_drops.wrong_vni),
        ("bad_header", l2.vxlan_drops.bad_header),
        ("unknown_vtep", l2.vxlan_drops.unknown_vtep),
    ] {
        drops
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc_by(n);
    }
    registry.register(
        "vxlan_dropped",
        "Plaintext VXLAN datagrams dropped, by reason",
        drops,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_metrics_show_vteps_and_packing() {
        let l2 = L2Status {
            bridge: "weft".into(),
            bridge_created: true,
            mac_age_secs: 600,
            vteps: vec![VtepStatus {
                address: "198.18.0.2:4789".into(),
                tx_packets: 3,
                rx_packets: 4,
                ..Default::default()
            }],
            vxlan_drops: VxlanDrops {
                wrong_vni: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = l2.render_text();
        assert!(
            text.contains("Static VTEPs: 1")
                && text.contains("198.18.0.2:4789")
                && text.contains("wrong-vni=2"),
            "{text}"
        );
        let status = crate::api::Status {
            l2: Some(l2),
            batching: BatchCounters {
                sealed_datagrams: 2,
                sealed_frames: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        let m = status.render_metrics();
        assert!(
            m.contains("weft_vtep_tx_packets_total{vtep=\"198.18.0.2:4789\"} 3"),
            "{m}"
        );
        assert!(m.contains("weft_sealed_frames_total 5"), "{m}");
        assert!(
            m.contains("weft_vxlan_dropped_total{reason=\"wrong_vni\"} 2"),
            "{m}"
        );
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            serde_json::from_str::<crate::api::Status>(&json).unwrap(),
            status
        );
    }
}
