//! The status snapshot and its renderings.

use serde::{Deserialize, Serialize};

/// Datagrams and connections dropped, by reason. None of these is answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropCounters {
    /// Too short, unknown type or bad reserved bytes: not a weft datagram.
    pub malformed: u64,
    /// Receiver index matches no live session.
    pub unknown_session: u64,
    /// The AEAD rejected it (forged, corrupted, another key).
    pub authentication: u64,
    /// Counter seen before or older than the replay window.
    pub replay: u64,
    /// Decrypted fine but the records inside were malformed or had another VNI.
    pub bad_record: u64,
    /// A packet from the local device for an overlay address no peer has.
    pub no_route: u64,
    /// Control connections closed because they failed authentication or
    /// spoke something else.
    pub control_rejected: u64,
    /// Packets that could not be sent (socket buffer full, EMSGSIZE, ...).
    pub send_errors: u64,
    /// Local packets larger than the peer's path carries (answered with
    /// ICMP fragmentation-needed / packet-too-big).
    #[serde(default)]
    pub too_big: u64,
    /// Packets from an authenticated peer whose inner source address that
    /// peer does not own (TUN mode): spoofing, or a misconfigured host.
    #[serde(default)]
    pub spoofed_source: u64,
    /// Inbound control connections refused, by reason, before any
    /// handshake work or reply (see `mesh::admission`).
    #[serde(flatten)]
    pub refused: ControlRefusals,
}

/// Inbound control connections refused by admission control, by reason.
/// None of these got a byte back (a backlog close aside: that peer had
/// authenticated and stopped reading).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ControlRefusals {
    /// Too many handshakes in progress from the same address.
    #[serde(default)]
    pub control_per_source: u64,
    /// Too many handshakes in progress in total (or the replay memory was
    /// full); includes idle connections closed to make room.
    #[serde(default)]
    pub control_busy: u64,
    /// The source address exceeded its handshake token bucket.
    #[serde(default)]
    pub control_rate_limited: u64,
    /// Message 1 without a timestamp within the freshness window.
    #[serde(default)]
    pub control_stale: u64,
    /// Message 1 replayed (its ephemeral key was seen before).
    #[serde(default)]
    pub control_replayed: u64,
    /// The bound on authenticated connections was reached.
    #[serde(default)]
    pub control_peer_limit: u64,
    /// No message 1 within the deadline.
    #[serde(default)]
    pub control_slow: u64,
    /// A peer let too many unsent bytes pile up (it does not read).
    #[serde(default)]
    pub control_backlog: u64,
}

impl ControlRefusals {
    /// Name and count of each reason, for the text and metrics renderings.
    pub fn reasons(&self) -> [(&'static str, u64); 8] {
        [
            ("per-source", self.control_per_source),
            ("busy", self.control_busy),
            ("rate-limited", self.control_rate_limited),
            ("stale", self.control_stale),
            ("replayed", self.control_replayed),
            ("peer-limit", self.control_peer_limit),
            ("slow", self.control_slow),
            ("backlog", self.control_backlog),
        ]
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.reasons().iter().map(|(_, n)| n).sum()
    }
}

impl DropCounters {
    /// Datagrams dropped from the network (everything but local drops).
    pub fn network_total(&self) -> u64 {
        self.malformed
            + self.unknown_session
            + self.authentication
            + self.replay
            + self.bad_record
            + self.spoofed_source
    }
}

/// Traffic relayed for other peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayCounters {
    /// Datagrams passed on.
    pub datagrams: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Relayed datagrams dropped (no route to the destination, hop limit,
    /// too big for the next hop).
    pub dropped: u64,
}

/// One connection (or configured peer), as in `weave status connections`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionStatus {
    /// `->` we connected, `<-` the peer connected.
    pub direction: String,
    /// The peer's control address.
    pub address: String,
    /// `connecting`, `established` or `failed`.
    pub state: String,
    /// Why it failed (or what it waits for).
    pub reason: Option<String>,
    /// `sleeve` (encrypted userspace path) or `fastdp` (kernel OVS datapath).
    pub mode: String,
    /// Why this mode (fastdp proven, proving, failed with a reason, or why
    /// fastdp is not used for this peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_reason: Option<String>,
    /// The data cipher, once agreed.
    pub encryption: Option<String>,
    /// The overlay MTU used towards this peer.
    pub overlay_mtu: u16,
    /// The verified path MTU (whole IP datagram), once probed.
    #[serde(default)]
    pub path_mtu: Option<u16>,
    /// Last heartbeat round-trip time, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Inner bytes sent.
    pub tx_bytes: u64,
    /// Inner packets sent.
    pub tx_packets: u64,
    /// Inner bytes received.
    pub rx_bytes: u64,
    /// Inner packets received.
    pub rx_packets: u64,
    /// The peer's host name.
    pub peer_name: Option<String>,
    /// The peer's public key (base64).
    pub peer_key: Option<String>,
    /// The peer's overlay addresses.
    pub peer_overlay: Vec<String>,
    /// Where datagrams for the peer go (learned from authenticated packets).
    pub endpoint: Option<String>,
}

/// The whole snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Status {
    /// weft version.
    pub version: String,
    /// This host's name.
    pub name: String,
    /// This host's public key (base64).
    pub public_key: String,
    /// The local device.
    pub interface: String,
    /// This host's overlay address.
    pub overlay: String,
    /// The local device MTU.
    pub overlay_mtu: u16,
    /// The underlay interface and its MTU.
    pub underlay: String,
    /// The underlay MTU.
    pub underlay_mtu: u16,
    /// The listen address (TCP control and UDP data).
    pub listen: String,
    /// The datapath in use (`udp`).
    pub datapath: String,
    /// Datapath worker threads (0 in statuses of older versions).
    #[serde(default)]
    pub workers: u32,
    /// Why that datapath.
    pub datapath_reason: String,
    /// `encrypted (...)` or `plaintext`.
    pub encryption: String,
    /// Seconds since launch.
    pub uptime_secs: u64,
    /// Connections and configured peers.
    pub connections: Vec<ConnectionStatus>,
    /// Drops by reason.
    pub dropped: DropCounters,
    /// Bridge mode: MAC learning, frame counters, static VTEPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<super::l2_status::L2Status>,
    /// Frames per sealed datagram and datagrams per sendmmsg call.
    #[serde(default)]
    pub batching: super::l2_status::BatchCounters,
    /// Fast datapath: the OVS datapath's name and what weft's userspace did for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastdp: Option<(String, crate::router::fastdp::FastdpCounters)>,
    /// Datagrams this host passed on for other peers (sealed end to end:
    /// it could not read them).
    #[serde(default)]
    pub relayed: RelayCounters,
    /// The mesh: every known peer and how this host reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<super::mesh_status::MeshStatus>,
    /// IPAM (`--ipalloc-range`): the chunks each host owns, addresses in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<crate::ipam::IpamStatus>,
}

/// A base64 public key's 32 bytes.
fn base64_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?
        .try_into()
        .ok()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

impl ConnectionStatus {
    /// One line, in the spirit of `weave status connections`:
    /// `-> 198.18.0.2:6783  established  sleeve  chacha20poly1305  mtu=1430  rtt=0.21ms  ...`
    pub fn line(&self) -> String {
        let mut s = format!("{} {:<21} {:<11}", self.direction, self.address, self.state);
        if self.state == "failed" || self.state == "connecting" {
            if let Some(r) = &self.reason {
                s.push_str(&format!(" {r}"));
            }
            if self.peer_key.is_none() {
                return s;
            }
        }
        s.push_str(&format!(
            " {} {} mtu={} pmtu={}",
            self.mode,
            self.encryption.as_deref().unwrap_or("-"),
            self.overlay_mtu,
            self.path_mtu.map_or("-".to_string(), |p| p.to_string())
        ));
        match self.rtt_ms {
            Some(r) => s.push_str(&format!(" rtt={r:.2}ms")),
            None => s.push_str(" rtt=-"),
        }
        s.push_str(&format!(
            " tx={}/{}p rx={}/{}p",
            human_bytes(self.tx_bytes),
            self.tx_packets,
            human_bytes(self.rx_bytes),
            self.rx_packets
        ));
        if let Some(name) = &self.peer_name {
            s.push_str(&format!(" peer={name}"));
        }
        if !self.peer_overlay.is_empty() {
            s.push_str(&format!(" overlay={}", self.peer_overlay.join(",")));
        }
        if let Some(why) = &self.mode_reason {
            s.push_str(&format!(" ({}: {why})", self.mode));
        }
        s
    }
}

impl Status {
    /// The text `weft status` prints.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("        Version: weft {}\n", self.version));
        out.push_str(&format!(
            "           Name: {} ({})\n",
            self.name, self.public_key
        ));
        out.push_str(&format!(
            "      Interface: {} {} mtu={}\n",
            self.interface, self.overlay, self.overlay_mtu
        ));
        out.push_str(&format!(
            "       Underlay: {} mtu={} listen={}\n",
            self.underlay, self.underlay_mtu, self.listen
        ));
        let workers = match self.workers {
            0 => String::new(),
            1 => ", 1 worker".to_string(),
            n => format!(", {n} workers"),
        };
        out.push_str(&format!(
            "       Datapath: {}{workers} - {}\n",
            self.datapath, self.datapath_reason
        ));
        out.push_str(&format!("     Encryption: {}\n", self.encryption));
        out.push_str(&format!("         Uptime: {}s\n", self.uptime_secs));
        let d = &self.dropped;
        out.push_str(&format!(
            "        Dropped: malformed={} unknown-session={} auth={} replay={} bad-record={} spoofed-source={} no-route={} too-big={} control-rejected={} send-errors={}\n",
            d.malformed, d.unknown_session, d.authentication, d.replay, d.bad_record, d.spoofed_source, d.no_route, d.too_big, d.control_rejected, d.send_errors
        ));
        let r = &d.refused;
        if r.total() > 0 {
            let reasons: Vec<String> = r
                .reasons()
                .iter()
                .map(|(name, n)| format!("{name}={n}"))
                .collect();
            out.push_str(&format!("        Refused: {}\n", reasons.join(" ")));
        }
        if let Some(l2) = &self.l2 {
            out.push_str(&l2.render_text());
        }
        let b = &self.batching;
        if b.sealed_datagrams > 0 || b.sendmmsg_calls > 0 {
            out.push_str(&format!(
                "       Batching: sealed={} frames={} largest={}B sendmmsg={}/{} calls gso={}/{} calls\n",
                b.sealed_datagrams, b.sealed_frames, b.largest_datagram, b.sendmmsg_datagrams, b.sendmmsg_calls, b.gso_datagrams, b.gso_sends
            ));
        }
        if let Some((name, f)) = &self.fastdp {
            out.push_str(&format!(
                "         Fastdp: datapath {name} misses={} flows-installed={} flows-expired={} flushes={} heartbeats-sent={} heartbeats-received={} to-sleeve={} errors={}\n",
                f.misses, f.flows_installed, f.flows_expired, f.flushes, f.heartbeats_sent, f.heartbeats_received, f.to_sleeve, f.errors
            ));
        }
        out.push_str(&format!("    Connections: {}\n", self.connections.len()));
        for c in &self.connections {
            out.push_str(&c.line());
            out.push('\n');
        }
        if self.relayed.datagrams > 0 || self.relayed.dropped > 0 {
            out.push_str(&format!(
                "        Relayed: {} datagrams {} for other peers (sealed end to end), {} dropped\n",
                self.relayed.datagrams,
                human_bytes(self.relayed.bytes),
                self.relayed.dropped
            ));
        }
        if let Some(m) = &self.mesh {
            out.push_str(&m.render_text());
        }
        out
    }

    /// Prometheus text exposition, built with `prometheus-client`.
    pub fn render_metrics(&self) -> String {
        use prometheus_client::encoding::text::encode;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::registry::Registry;

        type Labels = Vec<(String, String)>;
        let mut registry = Registry::with_prefix("weft");
        let up = Family::<Labels, Gauge>::default();
        let tx_bytes = Family::<Labels, Counter>::default();
        let rx_bytes = Family::<Labels, Counter>::default();
        let tx_packets = Family::<Labels, Counter>::default();
        let rx_packets = Family::<Labels, Counter>::default();
        let rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let dropped = Family::<Labels, Counter>::default();
        let overlay_mtu = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        for c in &self.connections {
            // Peers are named by name and identity, which stay the same
            // across reconnects (addresses and directions do not); a peer
            // not yet authenticated by its address.
            let l: Labels = match (&c.peer_name, &c.peer_key) {
                (Some(name), Some(key)) => vec![
                    ("peer".into(), name.clone()),
                    (
                        "peer_id".into(),
                        crate::mesh::PeerId(base64_key(key).unwrap_or_default()).to_string(),
                    ),
                ],
                _ => vec![
                    ("peer".into(), c.address.clone()),
                    ("peer_id".into(), String::new()),
                ],
            };
            up.get_or_create(&l)
                .set(i64::from(c.state == "established"));
            tx_bytes.get_or_create(&l).inc_by(c.tx_bytes);
            rx_bytes.get_or_create(&l).inc_by(c.rx_bytes);
            tx_packets.get_or_create(&l).inc_by(c.tx_packets);
            rx_packets.get_or_create(&l).inc_by(c.rx_packets);
            if let Some(r) = c.rtt_ms {
                rtt.get_or_create(&l).set(r / 1000.0);
            }
        }
        let d = &self.dropped;
        for (reason, n) in [
            ("malformed", d.malformed),
            ("unknown_session", d.unknown_session),
            ("authentication", d.authentication),
            ("replay", d.replay),
            ("bad_record", d.bad_record),
            ("no_route", d.no_route),
            ("spoofed_source", d.spoofed_source),
            ("control_rejected", d.control_rejected),
            ("send_error", d.send_errors),
            ("too_big", d.too_big),
            ("control_per_source", d.refused.control_per_source),
            ("control_busy", d.refused.control_busy),
            ("control_rate_limited", d.refused.control_rate_limited),
            ("control_stale", d.refused.control_stale),
            ("control_replayed", d.refused.control_replayed),
            ("control_peer_limit", d.refused.control_peer_limit),
            ("control_slow", d.refused.control_slow),
            ("control_backlog", d.refused.control_backlog),
        ] {
            dropped
                .get_or_create(&vec![("reason".into(), reason.into())])
                .inc_by(n);
        }
        overlay_mtu.set(i64::from(self.overlay_mtu));
        registry.register("connection_up", "1 when the connection is established", up);
        registry.register("tx_bytes", "Inner bytes sent to a peer", tx_bytes);
        registry.register("rx_bytes", "Inner bytes received from a peer", rx_bytes);
        registry.register("tx_packets", "Inner packets sent to a peer", tx_packets);
        registry.register(
            "rx_packets",
            "Inner packets received from a peer",
            rx_packets,
        );
        registry.register("rtt_seconds", "Last heartbeat round-trip time", rtt);
        registry.register(
            "dropped",
            "Datagrams, packets or connections dropped, by reason",
            dropped,
        );
        registry.register(
            "overlay_mtu",
            "MTU of the local overlay device",
            overlay_mtu,
        );
        super::l2_status::register_metrics(&mut registry, self.l2.as_ref(), &self.batching);
        if let Some(ipam) = &self.ipam {
            // One series per range: the IPv4 one and, dual stack, the IPv6.
            let in_use = Family::<Labels, Gauge>::default();
            let chunks = Family::<Labels, Gauge>::default();
            for s in std::iter::once(ipam).chain(ipam.ipv6.as_deref()) {
                let range: Labels = vec![("range".into(), s.range.clone())];
                in_use.get_or_create(&range).set(i64::from(s.in_use));
                for state in ["owned", "claiming", "refused", "reserved"] {
                    let mine = |c: &&crate::ipam::ChunkStatus| {
                        c.state == state && (c.owner == s.host || state == "reserved")
                    };
                    let n = s.chunks.iter().filter(mine).count();
                    chunks
                        .get_or_create(&vec![
                            ("range".into(), s.range.clone()),
                            ("state".into(), state.into()),
                        ])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            registry.register(
                "ipam_addresses_in_use",
                "Pod addresses this host has handed out, by range",
                in_use,
            );
            registry.register(
                "ipam_chunks",
                "Chunks of the range this host claims (owned, claiming, refused) or that are reserved for departed peers",
                chunks,
            );
        }
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0".into(),
            overlay_mtu: 1430,
            connections: vec![ConnectionStatus {
                direction: "->".into(),
                address: "198.18.0.2:6783".into(),
                state: "established".into(),
                reason: None,
                mode: "sleeve".into(),
                mode_reason: None,
                encryption: Some("aes256gcm".into()),
                overlay_mtu: 1430,
                path_mtu: Some(1500),
                rtt_ms: Some(0.25),
                tx_bytes: 2048,
                tx_packets: 2,
                rx_bytes: 10,
                rx_packets: 1,
                peer_name: Some("h2".into()),
                peer_key: Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    [7u8; 32],
                )),
                peer_overlay: vec!["10.40.0.2/16".into()],
                endpoint: Some("198.18.0.2:6783".into()),
            }],
            dropped: DropCounters {
                authentication: 3,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn text_line_has_the_fields() {
        let line = sample().connections[0].line();
        for want in [
            "-> 198.18.0.2:6783",
            "established",
            "sleeve",
            "aes256gcm",
            "mtu=1430",
            "rtt=0.25ms",
            "tx=2.0KiB/2p",
        ] {
            assert!(line.contains(want), "{want} missing from {line}");
        }
    }

    #[test]
    fn ipam_metrics_have_one_series_per_range() {
        let chunk = |chunk: &str, owner: &str, state: &str| crate::ipam::ChunkStatus {
            chunk: chunk.into(),
            owner: owner.into(),
            state: state.into(),
            in_use: None,
            size: 64,
            reclaim_in: None,
        };
        let v6 = crate::ipam::IpamStatus {
            range: "fd32::/64".into(),
            chunk_len: 122,
            host: "h1".into(),
            in_use: 1,
            chunks: vec![chunk("fd32::40/122", "h1", "owned")],
            ..Default::default()
        };
        let s = Status {
            ipam: Some(crate::ipam::IpamStatus {
                range: "10.32.0.0/16".into(),
                chunk_len: 26,
                host: "h1".into(),
                in_use: 2,
                chunks: vec![
                    chunk("10.32.1.0/26", "h1", "owned"),
                    chunk("10.32.2.0/26", "h2", "owned"),
                    chunk("10.32.3.0/26", "h3", "reserved"),
                ],
                ipv6: Some(Box::new(v6)),
                ..Default::default()
            }),
            ..sample()
        };
        let m = s.render_metrics();
        for want in [
            "weft_ipam_addresses_in_use{range=\"10.32.0.0/16\"} 2",
            "weft_ipam_addresses_in_use{range=\"fd32::/64\"} 1",
            "weft_ipam_chunks{range=\"10.32.0.0/16\",state=\"owned\"} 1",
            "weft_ipam_chunks{range=\"10.32.0.0/16\",state=\"reserved\"} 1",
            "weft_ipam_chunks{range=\"fd32::/64\",state=\"owned\"} 1",
        ] {
            assert!(m.contains(want), "{want} missing from\n{m}");
        }
    }

    #[test]
    fn json_round_trip_and_metrics() {
        let s = sample();
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&j).unwrap(), s);
        let m = s.render_metrics();
        // Labelled by name and identity (the short key), not by address.
        let short = crate::mesh::PeerId([7; 32]).to_string();
        assert!(
            m.contains(&format!(
                "weft_tx_bytes_total{{peer=\"h2\",peer_id=\"{short}\"}} 2048"
            )),
            "{m}"
        );
        assert!(
            m.contains("weft_dropped_total{reason=\"authentication\"} 3"),
            "{m}"
        );
    }
}
