//! `weft launch`: validate everything, set up the host, run the router,
//! and leave nothing behind.

use crate::api::http::StatusServer;
use crate::api::Status;
use crate::config::ConfigFile;
use crate::datapath::{tun::TunDevice, udp};
use crate::mesh::control::{CipherChoice, Hello, LocalDevice, PROTOCOL_VERSION};
use crate::mesh::link::{LinkConfig, Timers};
use crate::mesh::target::PeerTarget;
use crate::noise::{keys, CipherKind, NetworkSecret, StaticKey};
use crate::router::{Router, RouterConfig};
use crate::wire::overhead::{self, Framing};
use clap::Args;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The default control/data port.
pub const DEFAULT_PORT: u16 = 6783;

/// Arguments of `weft launch`. Every option can also come from `--config`.
#[derive(Args, Debug, Default)]
pub struct LaunchArgs {
    /// This host's overlay address and prefix, e.g. 10.40.0.1/16. Packets to
    /// other addresses in the prefix go to the peer that owns them. Repeat
    /// it for a dual-stack host: one IPv4 and one IPv6 address, e.g.
    /// --overlay 10.40.0.1/16 --overlay fd40::1/64.
    #[arg(long, value_name = "ADDR/PREFIX")]
    pub overlay: Vec<String>,
    /// Address for the TCP control listener and the UDP data socket
    /// [default: 0.0.0.0:6783].
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// A peer to connect to (repeat for more): IP, IP:PORT, HOST or
    /// HOST:PORT; port defaults to 6783. One reachable peer is enough: the
    /// others are learned by gossip. The same list may be used on every
    /// host (a host skips its own address). A host name is resolved when
    /// dialled and again after a failed dial.
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<String>,
    /// File holding the network secret shared by all hosts (or set WEFT_SECRET).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// This host's static private key (from `weft keygen`). Without it a
    /// fresh key is made for this run.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Name of the TUN device to create [default: weft0].
    #[arg(long, value_name = "NAME")]
    pub iface_name: Option<String>,
    /// Where to serve `weft status` and Prometheus /metrics [default: 127.0.0.1:6782].
    #[arg(long, value_name = "IP:PORT")]
    pub status_addr: Option<String>,
    /// VXLAN network identifier carried in every frame; all hosts must agree [default: 1].
    #[arg(long, value_name = "N")]
    pub vni: Option<u32>,
    /// Data cipher: auto (AES-256-GCM when both hosts have AES hardware,
    /// else ChaCha20-Poly1305), chacha20poly1305 or aes256gcm [default: auto].
    #[arg(long, value_name = "CIPHER")]
    pub cipher: Option<String>,
    /// Name shown to peers (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Datapath: auto (what preflight decides), fastdp, xdp or udp
    /// [default: auto]. An explicit mode that preflight finds unsafe refuses
    /// to start without --force. fastdp runs in bridge mode for peers in
    /// --trusted-subnet (or every peer with --insecure-plaintext), else falls
    /// back to udp; xdp falls back to udp when AF_XDP cannot be opened on
    /// the underlay interface; a log line says why.
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<crate::host::plan::Mode>,
    /// Start an explicitly requested --mode even though preflight found it unsafe (with a warning).
    #[arg(long)]
    pub force: bool,
    /// Let --mode auto use AF_XDP (xdp), which attaches an XDP program to the
    /// underlay interface, usually the host's main NIC. Without it auto never
    /// does; preflight says when xdp is possible.
    #[arg(long)]
    pub allow_xdp: bool,
    /// Turn off TUN segmentation offloads (IFF_VNET_HDR, TSO/USO and GRO
    /// coalescing): one packet per read and write. For debugging and for
    /// comparing; on by default where the kernel accepts them.
    #[arg(long)]
    pub no_offload: bool,
    /// Datapath worker threads, each with its own queue of the TUN/TAP
    /// device (multi-queue) and its own UDP socket (SO_REUSEPORT); the
    /// kernel spreads flows over them. Default: one per CPU core. The
    /// control connections, mesh and status run on a thread of their own.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: Option<u16>,
    /// TOML file with any of these options, keys named like the flags
    /// without dashes (`peer = ["198.18.0.2"]`, `secret-file = "secret"`);
    /// command-line flags win, paths are relative to the file. SIGHUP
    /// re-reads its peer list.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Local device: `tun` (L3, IP packets) or `bridge` (L2: a TAP on a
    /// Linux bridge; Ethernet frames, MAC learning). `--mode plain` implies bridge.
    #[arg(long, value_enum, value_name = "KIND")]
    pub iface: Option<IfaceKind>,
    /// Bridge mode: the Linux bridge to create, or attach to if it exists (default weft).
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Bridge mode: most MAC addresses learned behind any one peer or static
    /// VTEP (default 4096). A peer sending from more source MACs evicts its
    /// own oldest ones, never another host's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub mac_quota: Option<u32>,
    /// Allow `--mode plain`: frames cross the underlay unencrypted and
    /// unauthenticated (only for trusted links or measurements).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Plaintext mode: the VXLAN UDP port (default 4789, the IANA port).
    #[arg(long, value_name = "PORT")]
    pub vxlan_port: Option<u16>,
    /// Plaintext mode: a static VXLAN tunnel endpoint (IP[:PORT]) that
    /// speaks no weft protocol, e.g. a Linux vxlan device (repeat for more).
    #[arg(long = "vtep", value_name = "ADDR")]
    pub vteps: Vec<String>,
    /// Fast datapath: peers whose underlay address is inside this IPv4 or
    /// IPv6 subnet may get plaintext VXLAN through the kernel OVS datapath
    /// (repeat for more). Other peers stay on the encrypted sleeve. With
    /// --insecure-plaintext (and no --mode plain) every peer may.
    #[arg(long = "trusted-subnet", value_name = "CIDR")]
    pub trusted_subnets: Vec<String>,
    /// Fast datapath: UDP port of the kernel VXLAN vport [default: 6784]; all hosts must agree.
    #[arg(long, value_name = "PORT")]
    pub fastdp_port: Option<u16>,
    /// A network CA certificate (from `weft ca new`; repeat for more). With
    /// it every peer must present a certificate this CA signed for its key,
    /// and only the addresses its certificate covers are accepted from it.
    /// Needs --cert.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
    /// This host's certificate (from `weft cert sign`): for --key-file's
    /// key, covering --overlay, signed by a --ca-cert CA.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Revoked certificates: one fingerprint (`weft cert show`) per line,
    /// `#` comments. Re-read when it changes and on SIGHUP; a revoked
    /// peer's connections close and its claims are dropped.
    #[arg(long, value_name = "FILE")]
    pub revoked: Option<PathBuf>,
    /// Start even if --cert does not cover --overlay. Peers refuse the
    /// uncovered claim anyway: this exists to test that they do.
    #[arg(long, hide = true)]
    pub allow_uncovered_overlay: bool,
    /// IP address management for pods (Kubernetes CNI): hand out addresses
    /// from this IPv4 range, split among the hosts in chunks claimed
    /// through the mesh; the CNI plugin asks for them over --cni-socket.
    /// Every host must give the same range. With it --overlay is optional
    /// in bridge mode. Repeat it for dual-stack pods: one IPv4 and one
    /// IPv6 range, e.g. --ipalloc-range 10.32.0.0/12 --ipalloc-range
    /// fd32::/64; every pod then gets one address of each. In TUN mode
    /// each range must lie inside the --overlay prefix of its family.
    #[arg(long, value_name = "CIDR")]
    pub ipalloc_range: Vec<String>,
    /// Where IPAM records the addresses pods hold, so a restarted weft
    /// never hands one out twice [default: /var/lib/weft/ipam].
    #[arg(long, value_name = "DIR")]
    pub ipalloc_dir: Option<PathBuf>,
    /// How long a departed peer's chunks stay reserved (its pods may still
    /// run) before any host may claim them: e.g. 1h, 30m, 90s [default: 1h].
    /// `weft rmpeer NAME` frees them at once.
    #[arg(long, value_name = "DURATION")]
    pub ipalloc_reclaim_after: Option<String>,
    /// The abstract unix socket (in this network namespace) the CNI plugin
    /// talks to [default: weft-cni].
    #[arg(long, value_name = "NAME")]
    pub cni_socket: Option<String>,
    /// This host's own pod range, inside the --ipalloc-range of its
    /// family: IPAM hands out addresses from it only and claims it in the
    /// mesh as this host's one chunk (as a Kubernetes node's spec.podCIDR;
    /// --kube reads that from the API). Repeat it for dual-stack pods: at
    /// most one IPv4 and one IPv6 CIDR, e.g. --ipalloc-pod-cidr
    /// 10.32.7.0/24 --ipalloc-pod-cidr fd32:0:0:7::/64.
    #[arg(long, value_name = "CIDR")]
    pub ipalloc_pod_cidr: Vec<String>,
    /// NAT for pods: what they send to addresses outside --ipalloc-range
    /// leaves with this host's address (an nftables masquerade rule in
    /// table `ip weft`, and `ip6 weft` for an IPv6 range, of this network
    /// namespace, removed at exit), as flannel's --ip-masq. The host must
    /// forward (net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1 for
    /// IPv6). Needs --ipalloc-range.
    #[arg(long)]
    pub masquerade: bool,
    /// Peers from the Kubernetes API: every node's InternalIP but this
    /// node's, with this host's listen port, re-read every --kube-refresh
    /// (new nodes connected, removed ones forgotten; --peer still works
    /// alongside). With --ipalloc-range, this node's spec.podCIDR(s), when
    /// set, are its pod ranges (the IPv4 entry for the IPv4 range, the
    /// IPv6 entry for an IPv6 range). Needs get/list on nodes.
    #[arg(long)]
    pub kube: bool,
    /// The Kubernetes API server, e.g. https://10.0.0.1:6443, or
    /// http://127.0.0.1:8001 for `kubectl proxy` (plain http on loopback
    /// only) [default in a pod:
    /// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT].
    #[arg(long, value_name = "URL")]
    pub kube_api: Option<String>,
    /// The bearer token for the API, re-read for every request (tokens
    /// rotate) [default:
    /// /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[arg(long, value_name = "FILE")]
    pub kube_token_file: Option<PathBuf>,
    /// The cluster CA (PEM) the API server's certificate must chain to;
    /// the only trusted root [default:
    /// /var/run/secrets/kubernetes.io/serviceaccount/ca.crt].
    #[arg(long, value_name = "FILE")]
    pub kube_ca_file: Option<PathBuf>,
    /// This host's node name in the API (its node is not a peer, its
    /// podCIDR is the pod range) [default: $NODE_NAME, which the DaemonSet
    /// sets from spec.nodeName].
    #[arg(long, value_name = "NAME")]
    pub kube_node_name: Option<String>,
    /// How often the node list is read: e.g. 30s, 2s, 5m [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub kube_refresh: Option<String>,
}

/// `--kube` and its companions, checked.
struct KubePlan {
    api: crate::kube::client::ApiConfig,
    node: String,
    every: Duration,
}

/// The default `--kube-refresh`.
pub const DEFAULT_KUBE_REFRESH: Duration = Duration::from_secs(30);

/// Reads the `--kube` flags (or config keys); `None` without --kube.
fn kube_plan(args: &mut LaunchArgs, file: &ConfigFile) -> Result<Option<KubePlan>, LaunchError> {
    let on = args.kube || file.flag("kube").map_err(usage)?;
    let string = |flag: Option<String>, key: &str| -> Result<(Option<String>, bool), LaunchError> {
        let given = flag.is_some();
        match flag {
            Some(v) => Ok((Some(v), given)),
            None => Ok((file.string(key).map_err(usage)?, given)),
        }
    };
    let path = |flag: Option<PathBuf>, key: &str| -> Result<Option<PathBuf>, LaunchError> {
        match flag {
            Some(p) => Ok(Some(p)),
            None => file.path_value(key).map_err(usage),
        }
    };
    let (api, api_flag) = string(args.kube_api.take(), "kube-api")?;
    let token = path(args.kube_token_file.take(), "kube-token-file")?;
    let ca = path(args.kube_ca_file.take(), "kube-ca-file")?;
    let (node, node_flag) = string(args.kube_node_name.take(), "kube-node-name")?;
    let (refresh, refresh_flag) = string(args.kube_refresh.take(), "kube-refresh")?;
    if !on {
        if api.is_some() || token.is_some() || ca.is_some() || node.is_some() || refresh.is_some() {
            return Err(usage(
                "--kube-api, --kube-token-file, --kube-ca-file, --kube-node-name and --kube-refresh need --kube (peers from the Kubernetes API are off without it)",
            ));
        }
        return Ok(None);
    }
    let node_err = from_file(file, "kube-node-name", node_flag);
    let env_node = || std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
    let node = match node.or_else(env_node) {
        Some(n) if !n.trim().is_empty() && n.len() <= 253 => n.trim().to_string(),
        Some(n) => {
            return Err(node_err(format!(
                "--kube-node-name {n:?} is not a node name (1-253 characters)"
            )))
        }
        None => {
            return Err(usage(
                "--kube needs this host's node name: set --kube-node-name NAME (config kube-node-name), or NODE_NAME (the DaemonSet sets it from spec.nodeName through the downward API)",
            ))
        }
    };
    let api_err = from_file(file, "kube-api", api_flag);
    let api = crate::kube::client::ApiConfig::resolve(api.as_deref(), token, ca, &|k| {
        std::env::var(k).ok()
    })
    .map_err(&api_err)?;
    api.check_files().map_err(usage)?;
    let refresh_err = from_file(file, "kube-refresh", refresh_flag);
    let every = match refresh {
        Some(t) => parse_duration(&t, "--kube-refresh").map_err(&refresh_err)?,
        None => DEFAULT_KUBE_REFRESH,
    };
    if every.is_zero() {
        return Err(refresh_err(
            "--kube-refresh must be at least 1s (e.g. 30s)".into(),
        ));
    }
    Ok(Some(KubePlan { api, node, every }))
}

/// `--ipalloc-range` and its companions, checked.
struct IpamPlan {
    range: crate::ipam::AllocRange,
    /// A second `--ipalloc-range`, IPv6 (dual-stack pods).
    range6: Option<crate::ipam::AllocRange<std::net::Ipv6Addr>>,
    /// `--ipalloc-pod-cidr`, IPv4.
    pod_cidr: Option<crate::mesh::IpPrefix>,
    /// `--ipalloc-pod-cidr`, IPv6 (inside `range6`).
    pod_cidr6: Option<crate::mesh::IpPrefix>,
    dir: PathBuf,
    reclaim_after: Duration,
    socket: String,
    /// `--masquerade`.
    masquerade: bool,
}

/// Turns on IPv4 forwarding for packets arriving on `iface` (netlink).
fn enable_forwarding(iface: &str) -> Result<(), LaunchError> {
    let mut netlink = crate::sys::Netlink::open().map_err(|e| usage(e.to_string()))?;
    let link = netlink
        .link(iface)
        .map_err(|e| usage(e.to_string()))?
        .ok_or_else(|| usage(format!("{iface} vanished right after weft created it")))?;
    netlink
        .set_inet_conf(link.index, iface, false)
        .map_err(|e| {
            usage(format!(
                "cannot turn on forwarding on {iface} for routed pods: {e}"
            ))
        })
}

/// The default `--ipalloc-dir`.
pub const DEFAULT_IPALLOC_DIR: &str = "/var/lib/weft/ipam";
/// The default `--ipalloc-reclaim-after`.
pub const DEFAULT_RECLAIM_AFTER: Duration = Duration::from_secs(3600);

/// Parses a duration like `1h`, `30m`, `90s` or `3600` (seconds).
pub fn parse_duration(text: &str, flag: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{flag} {text:?} is not a duration; write it like 1h, 30m or 90s"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "{flag} {text:?}: unknown unit {unit:?}; use s, m, h or d (e.g. 1h)"
            ))
        }
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{flag} {text:?} is too long"))
}

/// The longest prefix length for `addr` whose prefix holds all of `range`
/// (0 when the families differ).
fn widened(addr: IpAddr, range: crate::mesh::IpPrefix) -> u8 {
    let common = match (addr, range.addr()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros(),
        _ => 0,
    };
    (common as u8).min(range.len())
}

/// TUN mode: the pod range `range` must lie inside the `--overlay` prefix
/// of its family, whose route carries the pods' traffic to the TUN device.
fn tun_range_inside_overlay(
    overlays: &[(IpAddr, u8)],
    range: crate::mesh::IpPrefix,
) -> Result<(), LaunchError> {
    let family = if range.is_ipv4() { "IPv4" } else { "IPv6" };
    let Some(&(addr, len)) = overlays
        .iter()
        .find(|(a, _)| a.is_ipv4() == range.is_ipv4())
    else {
        return Err(usage(format!(
            "--ipalloc-range {range} without an {family} --overlay is implemented in bridge mode only: TUN mode needs an overlay address of the range's family to route pods' traffic through the TUN device. Add --iface bridge, or give this host an {family} --overlay ADDR/PREFIX whose prefix holds the range"
        )));
    };
    let prefix = crate::mesh::IpPrefix::new(addr, len);
    if !prefix.is_some_and(|p| p.contains(&range)) {
        return Err(usage(format!(
            "--ipalloc-range {range} must lie inside the --overlay prefix {addr}/{len} in TUN mode (the TUN device's route carries the pods' traffic); widen --overlay (e.g. {addr}/{}) or use --iface bridge",
            widened(addr, range)
        )));
    }
    Ok(())
}

/// The `--ipalloc-range` values: at most one IPv4 and one IPv6 range, the
/// IPv4 one required (IPv6-only IPAM is not implemented); `None` without
/// any. Errors name the values.
#[allow(clippy::type_complexity)]
fn parse_ipalloc_ranges(
    texts: &[String],
) -> Result<
    Option<(
        crate::ipam::AllocRange,
        Option<crate::ipam::AllocRange<std::net::Ipv6Addr>>,
    )>,
    String,
> {
    use crate::ipam::AnyRange;
    let mut v4: Option<(&str, crate::ipam::AllocRange)> = None;
    let mut v6: Option<(&str, crate::ipam::AllocRange<std::net::Ipv6Addr>)> = None;
    for text in texts {
        match AnyRange::parse(text)? {
            AnyRange::V4(r) => {
                if let Some((first, _)) = v4 {
                    return Err(format!(
                        "--ipalloc-range {text:?}: a second IPv4 range (after {first:?}); give at most one IPv4 and one IPv6 range"
                    ));
                }
                v4 = Some((text, r));
            }
            AnyRange::V6(r) => {
                if let Some((first, _)) = v6 {
                    return Err(format!(
                        "--ipalloc-range {text:?}: a second IPv6 range (after {first:?}); give at most one IPv4 and one IPv6 range"
                    ));
                }
                v6 = Some((text, r));
            }
        }
    }
    match (v4, v6) {
        (None, None) => Ok(None),
        (None, Some((text, _))) => Err(format!(
            "--ipalloc-range {text:?} is IPv6 and no IPv4 range is given: IPv6-only IPAM is not implemented yet; add an IPv4 --ipalloc-range next to it (pods get one address of each family)"
        )),
        (Some((_, r4)), r6) => Ok(Some((r4, r6.map(|(_, r)| r)))),
    }
}

/// The `--ipalloc-pod-cidr` values: at most one IPv4 pod range, inside
/// `range`, and one IPv6, inside `range6` (an IPv6 one without an IPv6
/// range is refused). Errors name the values and say what to do.
fn parse_pod_cidrs(
    texts: &[String],
    range: &crate::ipam::AllocRange,
    range6: Option<&crate::ipam::AllocRange<std::net::Ipv6Addr>>,
) -> Result<(Option<crate::mesh::IpPrefix>, Option<crate::mesh::IpPrefix>), String> {
    let mut v4: Option<(&str, crate::mesh::IpPrefix)> = None;
    let mut v6: Option<(&str, crate::mesh::IpPrefix)> = None;
    for text in texts {
        let ipv6 = crate::ipam::AnyRange::is_ipv6_text(text);
        let (slot, family) = if ipv6 {
            (&mut v6, "IPv6")
        } else {
            (&mut v4, "IPv4")
        };
        if let Some((first, _)) = slot {
            return Err(format!(
                "--ipalloc-pod-cidr {text:?}: a second {family} pod range (after {first:?}); give at most one IPv4 and one IPv6 --ipalloc-pod-cidr, this host's own pod range of each family"
            ));
        }
        let cidr = match (ipv6, range6) {
            (false, _) => crate::ipam::parse_pod_cidr(text, range)?,
            (true, Some(r6)) => crate::ipam::parse_pod_cidr(text, r6)?,
            (true, None) => {
                return Err(format!(
                    "--ipalloc-pod-cidr {text} is IPv6, and no IPv6 --ipalloc-range is given to hold it: add an IPv6 --ipalloc-range that holds it (the same on every host, e.g. the cluster's IPv6 pod CIDR), or drop this --ipalloc-pod-cidr"
                ))
            }
        };
        *slot = Some((text, cidr));
    }
    Ok((v4.map(|(_, c)| c), v6.map(|(_, c)| c)))
}

/// Where one family's pod addresses come from at start: this host's
/// `--ipalloc-pod-cidr`, the node's podCIDR under `--kube` (nothing is
/// handed out until the API has said), or chunks of the range. Returns it
/// for the startup log.
fn start_pod_range<A: crate::ipam::Family>(
    ipam: &mut crate::ipam::Ipam<A>,
    pod_cidr: Option<crate::mesh::IpPrefix>,
    kube: Option<&KubePlan>,
) -> Result<String, LaunchError> {
    let chunk_len = crate::ipam::chunk_len(&ipam.range());
    Ok(match (pod_cidr, kube) {
        (Some(cidr), _) => ipam.set_pod_cidr(Some(cidr)).map_err(usage)?,
        (None, Some(k)) => {
            ipam.await_pod_cidr();
            let entry = if A::BITS == 32 {
                "spec.podCIDR"
            } else {
                "IPv6 spec.podCIDRs entry"
            };
            format!(
                "this host's pod range is node {}'s {entry} from the Kubernetes API when it has one, else /{chunk_len} chunks (nothing is handed out until the API answers)",
                k.node
            )
        }
        (None, None) => format!("divided among the hosts in /{chunk_len} chunks"),
    })
}

/// Reads the IPAM flags (or config keys); `None` without --ipalloc-range.
fn ipam_plan(args: &mut LaunchArgs, file: &ConfigFile) -> Result<Option<IpamPlan>, LaunchError> {
    let range_err = from_file(file, "ipalloc-range", !args.ipalloc_range.is_empty());
    let range_texts = if args.ipalloc_range.is_empty() {
        file.list("ipalloc-range").map_err(usage)?
    } else {
        std::mem::take(&mut args.ipalloc_range)
    };
    let pod_err = from_file(file, "ipalloc-pod-cidr", !args.ipalloc_pod_cidr.is_empty());
    let pod_cidr_texts = if args.ipalloc_pod_cidr.is_empty() {
        file.list("ipalloc-pod-cidr").map_err(usage)?
    } else {
        std::mem::take(&mut args.ipalloc_pod_cidr)
    };
    let dir_given = args.ipalloc_dir.is_some() || file.has("ipalloc-dir");
    let reclaim_given = args.ipalloc_reclaim_after.is_some() || file.has("ipalloc-reclaim-after");
    let masquerade = args.masquerade || file.flag("masquerade").map_err(usage)?;
    let ranges = parse_ipalloc_ranges(&range_texts).map_err(&range_err)?;
    let Some((range, range6)) = ranges else {
        if dir_given || reclaim_given || !pod_cidr_texts.is_empty() {
            return Err(usage(
                "--ipalloc-dir, --ipalloc-reclaim-after and --ipalloc-pod-cidr need --ipalloc-range (IPAM is off without it)",
            ));
        }
        if masquerade {
            return Err(usage(
                "--masquerade needs --ipalloc-range: it masquerades what pods send out of that range",
            ));
        }
        return Ok(None);
    };
    let (pod_cidr, pod_cidr6) =
        parse_pod_cidrs(&pod_cidr_texts, &range, range6.as_ref()).map_err(&pod_err)?;
    let dir = match args.ipalloc_dir.take() {
        Some(d) => d,
        None => file
            .path_value("ipalloc-dir")
            .map_err(usage)?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IPALLOC_DIR)),
    };
    let reclaim_err = from_file(
        file,
        "ipalloc-reclaim-after",
        args.ipalloc_reclaim_after.is_some(),
    );
    let reclaim_after = match args.ipalloc_reclaim_after.take() {
        Some(t) => Some(t),
        None => file.string("ipalloc-reclaim-after").map_err(usage)?,
    };
    let reclaim_after = match reclaim_after {
        Some(t) => parse_duration(&t, "--ipalloc-reclaim-after").map_err(&reclaim_err)?,
        None => DEFAULT_RECLAIM_AFTER,
    };
    let socket_err = from_file(file, "cni-socket", args.cni_socket.is_some());
    let socket = match args.cni_socket.take() {
        Some(s) => s,
        None => file
            .string("cni-socket")
            .map_err(usage)?
            .unwrap_or_else(|| crate::cni::api::DEFAULT_SOCKET.to_string()),
    };
    if socket.is_empty() || socket.len() > 100 || socket.contains('\0') {
        return Err(socket_err(format!(
            "--cni-socket {socket:?} must be 1-100 bytes without NUL (an abstract socket name, without @)"
        )));
    }
    Ok(Some(IpamPlan {
        range,
        range6,
        pod_cidr,
        pod_cidr6,
        dir,
        reclaim_after,
        socket,
        masquerade,
    }))
}

/// The local device kind of `--iface`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfaceKind {
    /// L3: a TUN device carrying IP packets.
    Tun,
    /// L2: a TAP device on a Linux bridge carrying Ethernet frames.
    Bridge,
}

/// A launch failure and its exit code.
#[derive(Debug)]
pub enum LaunchError {
    /// Bad input or environment the user must fix: exit 2.
    Usage(String),
    /// Failure while running: exit 1.
    Runtime(String),
}

fn usage(msg: impl Into<String>) -> LaunchError {
    LaunchError::Usage(msg.into())
}

/// Everything validated, before touching the host.
struct Plan {
    /// This host's overlay addresses and prefixes, at most one per family
    /// (IPv4 first): empty only with --ipalloc-range in bridge mode (the
    /// host serves pods without an address of its own).
    overlays: Vec<(IpAddr, u8)>,
    listen: SocketAddr,
    peers: Vec<PeerTarget>,
    /// `None` only in plaintext mode, which authenticates nothing.
    secret: Option<NetworkSecret>,
    key: StaticKey,
    iface_name: String,
    status_addr: SocketAddr,
    vni: u32,
    cipher: CipherChoice,
    name: String,
    mode: crate::host::plan::Mode,
    force: bool,
    allow_xdp: bool,
    offload: bool,
    /// Datapath worker threads.
    workers: usize,
    /// The config file, re-read on SIGHUP for its peer list (`None`, or
    /// peers given with --peer, which win: nothing to re-read).
    reload_peers_from: Option<PathBuf>,
    timers: Timers,
    mesh_timers: crate::mesh::MeshTimers,
    l2: Option<L2Plan>,
    /// Who may get plaintext over fastdp (`None`: nobody, encrypted network).
    plaintext_policy: Option<crate::router::fastdp::PlaintextPolicy>,
    fastdp_port: u16,
    fastdp_proof: crate::datapath::odp::proof::ProofConfig,
    fastdp_flow_idle: Duration,
    /// Networks with a CA: the trust, this host's certificate, revocations.
    identity: Option<IdentityPlan>,
    /// `--ipalloc-range`: IPAM and the CNI socket.
    ipam: Option<IpamPlan>,
    /// `--kube`: peers and the pod range from the Kubernetes API.
    kube: Option<KubePlan>,
}

/// `--ca-cert`, `--cert` and `--revoked`, checked.
struct IdentityPlan {
    trust: crate::identity::Trust,
    cert: crate::identity::Certificate,
    revocation: Option<crate::identity::trust::RevocationFile>,
}

/// The certificate flags of `weft launch`.
struct IdentityArgs {
    ca_certs: Vec<PathBuf>,
    cert: Option<PathBuf>,
    revoked: Option<PathBuf>,
    allow_uncovered_overlay: bool,
}

/// Reads and checks `--ca-cert`, `--cert` and `--revoked` (flags or
/// config keys) against this host's key and overlay address.
fn identity_plan(
    args: &IdentityArgs,
    file: &ConfigFile,
    key: &StaticKey,
    overlays: &[crate::identity::InterfaceAddr],
    plain: bool,
    bridge: bool,
    log: &mut StartupLog,
) -> Result<Option<IdentityPlan>, LaunchError> {
    use crate::identity::commands::{read_cert, read_trust, unix_now};
    let ca_paths = if args.ca_certs.is_empty() {
        file.list("ca-cert")
            .map_err(usage)?
            .iter()
            .map(|p| file.resolve_path(p))
            .collect()
    } else {
        args.ca_certs.clone()
    };
    let cert_path = match &args.cert {
        Some(p) => Some(p.clone()),
        None => file.path_value("cert").map_err(usage)?,
    };
    let revoked_path = match &args.revoked {
        Some(p) => Some(p.clone()),
        None => file.path_value("revoked").map_err(usage)?,
    };
    let cert_path = match (ca_paths.is_empty(), cert_path) {
        (true, None) if revoked_path.is_none() => return Ok(None),
        (true, _) => {
            return Err(usage(
                "--cert and --revoked need --ca-cert: the network CA certificate that peers' certificates are checked against",
            ))
        }
        (false, None) => {
            return Err(usage(
                "--ca-cert needs --cert: this host's certificate (`weft cert sign ... --out FILE`), which peers require",
            ))
        }
        (false, Some(p)) => p,
    };
    if plain {
        return Err(usage(
            "--ca-cert cannot be used with --mode plain, which authenticates nobody",
        ));
    }
    let mut trust = read_trust(&ca_paths).map_err(usage)?;
    let cert = read_cert(&cert_path).map_err(|e| usage(format!("--cert {e}")))?;
    let cert_text = cert_path.display();
    let revocation = match revoked_path {
        Some(p) => {
            let (f, list) = crate::identity::trust::RevocationFile::open(p)
                .map_err(|e| usage(format!("--revoked: {e}")))?;
            trust.set_revoked(std::sync::Arc::new(list));
            Some(f)
        }
        None => None,
    };
    let checked = trust
        .authenticate(cert.encoded())
        .and_then(|c| trust.check_current(&c, unix_now()).map(|()| c))
        .map_err(|e| {
            usage(format!(
                "--cert {cert_text} refused: {}",
                e.to_string()
                    .replacen("its certificate", "the certificate", 1)
            ))
        })?;
    if checked.body.public_key != key.public() {
        return Err(usage(format!(
            "--cert {cert_text} is for the key {} but this host's key is {}: pass the --key-file the certificate was signed for, or sign one for this key",
            {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(checked.body.public_key)
            },
            key.public_base64()
        )));
    }
    for overlay in overlays
        .iter()
        .filter(|o| !checked.body.overlay.contains(o))
    {
        let listed: Vec<String> = checked.body.overlay.iter().map(|o| o.to_string()).collect();
        let msg = format!(
            "--cert {cert_text} does not cover --overlay {overlay}: it lists {}; use one of those or sign a certificate for {overlay}",
            listed.join(", ")
        );
        if !args.allow_uncovered_overlay {
            return Err(usage(msg));
        }
        log.warn(format!(
            "{msg} (started anyway: peers will refuse the claim)"
        ));
    }
    if bridge && checked.body.macs == crate::identity::MacPolicy::List(Vec::new()) {
        return Err(usage(format!(
            "--cert {cert_text} lists no MAC address, and peers drop bridge-mode frames from MACs a certificate does not list: sign it with --mac MAC (repeatable) or --any-mac"
        )));
    }
    log.info(format!(
        "certificate {} of {} verified, valid until {}; peers must present certificates from {} CA(s)",
        checked.fingerprint().short(),
        checked.body.name,
        crate::identity::cert::utc_text(checked.body.not_after),
        ca_paths.len()
    ));
    Ok(Some(IdentityPlan {
        trust,
        cert: checked,
        revocation,
    }))
}

/// Bridge-mode settings.
struct L2Plan {
    bridge: String,
    mac_age: Duration,
    mac_quota: usize,
    vxlan_port: u16,
    vteps: Vec<SocketAddr>,
}

/// Parses `ADDR/PREFIX`.
pub fn parse_overlay(text: &str) -> Result<(IpAddr, u8), String> {
    let bad = || {
        format!("--overlay {text:?} is not an address with a prefix length; write it like 10.40.0.1/16 (this host's address inside the overlay)")
    };
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix == 0 || prefix > max {
        return Err(format!(
            "--overlay {text:?}: prefix length must be between 1 and {max}"
        ));
    }
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        return Err(format!("--overlay {text:?}: {addr} cannot be a host address; use a unicast address such as 10.40.0.1/16"));
    }
    if let IpAddr::V4(a) = addr {
        if prefix <= 30 {
            let host_bits = u32::from(a) & (u32::MAX >> prefix);
            if host_bits == 0 || host_bits == u32::MAX >> prefix {
                return Err(format!(
                    "--overlay {text:?}: {a} is the network or broadcast address of its /{prefix}; pick a host address"
                ));
            }
        }
    }
    Ok((addr, prefix))
}

/// Parses every `--overlay` (or the config's `overlay` list): at most one
/// IPv4 and one IPv6 address, returned IPv4 first.
pub fn parse_overlays(texts: &[String]) -> Result<Vec<(IpAddr, u8)>, String> {
    let mut overlays: Vec<(IpAddr, u8)> = Vec::with_capacity(texts.len());
    for text in texts {
        let (addr, prefix) = parse_overlay(text)?;
        if let Some((other, other_prefix)) =
            overlays.iter().find(|(a, _)| a.is_ipv4() == addr.is_ipv4())
        {
            return Err(format!(
                "--overlay {addr}/{prefix} and --overlay {other}/{other_prefix} are both {}: a host holds at most one IPv4 and one IPv6 overlay address",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
        overlays.push((addr, prefix));
    }
    overlays.sort_by_key(|(a, _)| a.is_ipv6());
    Ok(overlays)
}

/// `ADDR/PREFIX` of every overlay address, joined by ", " ("none" without one).
fn overlays_text(overlays: &[(IpAddr, u8)]) -> String {
    if overlays.is_empty() {
        return "none".to_string();
    }
    overlays
        .iter()
        .map(|(a, p)| format!("{a}/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a `--peer`: `IP[:PORT]`, `[IPv6]:PORT`, `HOST[:PORT]`.
pub fn parse_peer_target(text: &str) -> Result<PeerTarget, String> {
    PeerTarget::parse(text).map_err(|e| format!("--peer {e}"))
}

/// Parses `IP[:PORT]` (IPv6 as `[addr]:port`): static VXLAN endpoints.
pub fn parse_peer(text: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("--peer {text:?}: port 0 is not a valid peer port"));
        }
        return Ok(sa);
    }
    if let Ok(ip) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(format!(
        "--peer {text:?} is not an address; write it as IP or IP:PORT, e.g. 198.18.0.2:6783 (host names are not resolved)"
    ))
}

fn parse_listen(text: &str, flag: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("{flag} {text:?} is not IP:PORT, e.g. 198.18.0.1:6783 or 0.0.0.0:6783")
    })
}

fn parse_cipher(text: &str) -> Result<CipherChoice, String> {
    match text {
        "auto" => Ok(CipherChoice::Auto),
        "chacha20poly1305" | "chachapoly" => Ok(CipherChoice::Exactly(CipherKind::ChaChaPoly)),
        "aes256gcm" | "aesgcm" => Ok(CipherChoice::Exactly(CipherKind::AesGcm)),
        other => Err(format!(
            "--cipher {other:?} is not known; use auto, chacha20poly1305 or aes256gcm"
        )),
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "weft".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Where a value came from: a flag, or a key of the config file. Errors
/// about a value from the file name the file, the line and the key.
fn from_file(file: &ConfigFile, key: &str, flag_given: bool) -> impl Fn(String) -> LaunchError {
    let context = (!flag_given && file.has(key)).then(|| file.context(key));
    move |message| match &context {
        Some(c) => usage(format!("{c}: {message}")),
        None => usage(message),
    }
}

/// The one startup line saying a passphrase-like secret was stretched.
fn stretched_line(source: &str) -> String {
    let p = keys::StretchParams::NETWORK;
    format!(
        "network secret from {source} is a passphrase, not a key from `weft secret new`: stretched it with Argon2id (m = {} MiB, t = {}, p = {}) into the PSK",
        p.m_cost_kib / 1024,
        p.t_cost,
        p.p_cost
    )
}

fn build_plan(mut args: LaunchArgs, log: &mut StartupLog) -> Result<Plan, LaunchError> {
    let identity_args = IdentityArgs {
        ca_certs: std::mem::take(&mut args.ca_certs),
        cert: args.cert.take(),
        revoked: args.revoked.take(),
        allow_uncovered_overlay: args.allow_uncovered_overlay,
    };
    let file = match &args.config {
        Some(path) => ConfigFile::load(path).map_err(usage)?,
        None => ConfigFile::default(),
    };
    for line in &file.deprecations {
        log.warn(line.clone());
    }
    let ipam = ipam_plan(&mut args, &file)?;
    let kube = kube_plan(&mut args, &file)?;
    let overlay_err = from_file(&file, "overlay", !args.overlay.is_empty());
    let overlay_texts = if args.overlay.is_empty() {
        file.list("overlay").map_err(usage)?
    } else {
        std::mem::take(&mut args.overlay)
    };
    let overlays = parse_overlays(&overlay_texts).map_err(&overlay_err)?;
    if overlays.is_empty() && ipam.is_none() {
        return Err(usage("--overlay is required: this host's overlay address with prefix, e.g. --overlay 10.40.0.1/16 (or --ipalloc-range CIDR in bridge mode, to serve pods without an address of its own)"));
    }
    let listen_err = from_file(&file, "listen", args.listen.is_some());
    let listen = match args
        .listen
        .map_or_else(|| file.string("listen"), |l| Ok(Some(l)))
    {
        Ok(Some(l)) => parse_listen(&l, "--listen").map_err(&listen_err)?,
        Ok(None) => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), DEFAULT_PORT),
        Err(e) => return Err(usage(e)),
    };
    let peers_from_flags = !args.peers.is_empty();
    let peer_err = from_file(&file, "peer", peers_from_flags);
    let peer_texts = if peers_from_flags {
        args.peers
    } else {
        file.list("peer").map_err(usage)?
    };
    let (peers, own_skipped) = parse_peer_list(&peer_texts, listen).map_err(&peer_err)?;
    if let Some(line) = own_skipped {
        log.info(line);
    }
    let mode_err = from_file(&file, "mode", args.mode.is_some());
    let mode = match (args.mode, file.string("mode").map_err(usage)?) {
        (Some(m), _) => m,
        (None, Some(text)) => <crate::host::plan::Mode as clap::ValueEnum>::from_str(&text, true)
            .map_err(|_| {
            mode_err(format!(
                "mode {text:?} is not one of auto, fastdp, xdp, udp, plain"
            ))
        })?,
        (None, None) => crate::host::plan::Mode::Auto,
    };
    let plain = mode == crate::host::plan::Mode::Plain;
    let insecure = args.insecure_plaintext || file.flag("insecure-plaintext").map_err(usage)?;
    if plain && ipam.is_some() {
        return Err(usage(
            "--ipalloc-range is not implemented with --mode plain (plaintext mode has static VTEPs and no mesh to split the range through); drop one of them",
        ));
    }
    if plain && kube.is_some() {
        return Err(usage(
            "--kube is not implemented with --mode plain (plaintext mode has static VTEPs, given with --vtep, and no peers to connect); drop one of them",
        ));
    }
    if plain && !insecure {
        return Err(usage(
            "--mode plain sends every frame unencrypted and unauthenticated (standard VXLAN): anyone on the path can read and inject traffic. Add --insecure-plaintext to confirm this is a trusted link, or drop --mode plain for the encrypted sleeve",
        ));
    }
    let iface_err = from_file(&file, "iface", args.iface.is_some());
    let file_iface = match file.string("iface").map_err(usage)? {
        None => None,
        Some(text) => Some(
            <IfaceKind as clap::ValueEnum>::from_str(&text, true)
                .map_err(|_| iface_err(format!("iface {text:?} is not tun or bridge")))?,
        ),
    };
    let iface_kind = match args.iface.or(file_iface) {
        Some(IfaceKind::Tun) if plain => {
            return Err(usage("--mode plain is standard VXLAN, which carries Ethernet frames: use --iface bridge (or leave --iface out)"))
        }
        Some(k) => k,
        None if plain => IfaceKind::Bridge,
        None => IfaceKind::Tun,
    };
    let vxlan_port = match args.vxlan_port {
        Some(p) => p,
        None => file
            .number::<u16>("vxlan-port")
            .map_err(usage)?
            .unwrap_or(crate::wire::vxlan::DEFAULT_PORT),
    };
    if vxlan_port == 0 {
        return Err(usage(
            "--vxlan-port 0 is not a port; the standard VXLAN port is 4789",
        ));
    }
    let vtep_err = from_file(&file, "vtep", !args.vteps.is_empty());
    let vtep_texts = if args.vteps.is_empty() {
        file.list("vtep").map_err(usage)?
    } else {
        args.vteps
    };
    let vteps = vtep_texts
        .iter()
        .map(|t| {
            parse_peer(t).map(|a| {
                if t.parse::<SocketAddr>().is_ok() {
                    a
                } else {
                    SocketAddr::new(a.ip(), vxlan_port)
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| vtep_err(e.replace("--peer", "--vtep")))?;
    if !vteps.is_empty() && !plain {
        return Err(usage("--vtep adds a plaintext VXLAN endpoint: it needs --mode plain --insecure-plaintext (the encrypted sleeve only talks to weft peers, given with --peer)"));
    }
    if plain && !peers.is_empty() {
        return Err(usage("--mode plain speaks only standard VXLAN and no weft control protocol: list the other hosts with --vtep ADDR (their VXLAN port defaults to --vxlan-port) instead of --peer"));
    }
    let l2 = match iface_kind {
        IfaceKind::Tun => None,
        IfaceKind::Bridge => Some(L2Plan {
            bridge: match args.bridge {
                Some(b) => b,
                None => file
                    .string("bridge")
                    .map_err(usage)?
                    .unwrap_or_else(|| "weft".into()),
            },
            mac_age: Duration::from_secs(
                file.timer::<u64>("mac_age_secs")
                    .map_err(usage)?
                    .unwrap_or(600)
                    .max(1),
            ),
            mac_quota: match args.mac_quota {
                Some(q) => q as usize,
                None => match file.number::<u32>("mac-quota").map_err(usage)? {
                    Some(q @ 1..=65536) => q as usize,
                    Some(q) => {
                        return Err(usage(format!(
                            "{}: mac-quota = {q} is out of range: give 1 to 65536",
                            file.context("mac-quota")
                        )))
                    }
                    None => crate::mesh::fdb::DEFAULT_MAC_QUOTA,
                },
            },
            vxlan_port,
            vteps,
        }),
    };
    let secret_err = from_file(&file, "secret-file", args.secret_file.is_some());
    let secret_path = match args.secret_file {
        Some(p) => Some(p),
        None => file.path_value("secret-file").map_err(usage)?,
    };
    let secret = match secret_path {
        Some(path) => {
            if let Some(w) = keys::permission_warning(&path) {
                log.warn(w);
            }
            let s = NetworkSecret::from_file(&path).map_err(|e| secret_err(e.to_string()))?;
            if s.was_stretched() {
                log.info(stretched_line(&path.display().to_string()));
            }
            Some(s)
        }
        None => match std::env::var_os("WEFT_SECRET") {
            Some(v) => {
                let s = NetworkSecret::from_user(v.as_encoded_bytes(), "WEFT_SECRET")
                    .map_err(|e| usage(e.to_string()))?;
                if s.was_stretched() {
                    log.info(stretched_line("WEFT_SECRET"));
                }
                Some(s)
            }
            None if plain => None,
            None => {
                return Err(usage(
                    "no network secret: pass --secret-file FILE (the same file on every host; make one with `weft secret new FILE`) or set WEFT_SECRET",
                ))
            }
        },
    };
    let key_err = from_file(&file, "key-file", args.key_file.is_some());
    let key_path = match args.key_file {
        Some(p) => Some(p),
        None => file.path_value("key-file").map_err(usage)?,
    };
    let key = match key_path {
        Some(path) => {
            if let Some(w) = keys::permission_warning(&path) {
                log.warn(w);
            }
            StaticKey::from_file(&path).map_err(|e| key_err(e.to_string()))?
        }
        None => {
            log.info("no --key-file: using a fresh static key for this run (make a lasting one with `weft keygen FILE`)");
            StaticKey::generate()
        }
    };
    let identity = identity_plan(
        &identity_args,
        &file,
        &key,
        &overlays
            .iter()
            .map(|&(addr, len)| crate::identity::InterfaceAddr { addr, len })
            .collect::<Vec<_>>(),
        plain,
        l2.is_some(),
        log,
    )?;
    if let (Some(id), Some(ipam)) = (&identity, &ipam) {
        // Peers refuse chunk claims a certificate does not cover: say so now.
        let ranges = std::iter::once(ipam.range.prefix()).chain(ipam.range6.map(|r| r.prefix()));
        for range in ranges {
            if !id.cert.covers(&crate::mesh::Claim::Ip(range)) {
                return Err(usage(format!(
                    "this host's --cert does not cover --ipalloc-range {range}: peers would refuse every chunk it claims; sign its certificate with --subnet {range} (weft cert sign)"
                )));
            }
        }
    }
    let default_iface = match &l2 {
        Some(l2) => format!("{}-tap", l2.bridge).chars().take(15).collect(),
        None => "weft0".to_string(),
    };
    let iface_name_err = from_file(&file, "iface-name", args.iface_name.is_some());
    let iface_name = match args.iface_name {
        Some(n) => n,
        None => file
            .string("iface-name")
            .map_err(usage)?
            .unwrap_or(default_iface),
    };
    if iface_name.is_empty() || iface_name.len() > 15 || iface_name.contains(['/', ' ', ':']) {
        return Err(iface_name_err(format!(
            "--iface-name {iface_name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )));
    }
    let status_err = from_file(&file, "status-addr", args.status_addr.is_some());
    let status_text = match args.status_addr {
        Some(s) => s,
        None => file
            .string("status-addr")
            .map_err(usage)?
            .unwrap_or_else(|| crate::cli::DEFAULT_STATUS_ADDR.into()),
    };
    let status_addr = parse_listen(&status_text, "--status-addr").map_err(&status_err)?;
    let vni_err = from_file(&file, "vni", args.vni.is_some());
    let vni = match args.vni {
        Some(v) => v,
        None => file.number::<u32>("vni").map_err(usage)?.unwrap_or(1),
    };
    if vni > crate::wire::vxlan::MAX_VNI {
        return Err(vni_err(format!(
            "--vni {vni} does not fit VXLAN's 24 bits (0..=16777215)"
        )));
    }
    let cipher_err = from_file(&file, "cipher", args.cipher.is_some());
    let cipher_text = match args.cipher {
        Some(c) => c,
        None => file
            .string("cipher")
            .map_err(usage)?
            .unwrap_or_else(|| "auto".into()),
    };
    let cipher = parse_cipher(&cipher_text).map_err(&cipher_err)?;
    let name = match args.name {
        Some(n) => n,
        None => file.string("name").map_err(usage)?.unwrap_or_else(hostname),
    };
    let mut timers = Timers::default();
    if let Some(ms) = file
        .timer::<u64>("heartbeat_connecting_ms")
        .map_err(usage)?
    {
        timers.heartbeat_connecting = Duration::from_millis(ms.max(10));
    }
    if let Some(ms) = file
        .timer::<u64>("heartbeat_established_ms")
        .map_err(usage)?
    {
        timers.heartbeat_established = Duration::from_millis(ms.max(10));
    }
    if let Some(n) = file.timer::<u32>("missed_limit").map_err(usage)? {
        timers.missed_limit = n.max(1);
    }
    if let Some(s) = file.timer::<u64>("rekey_after_secs").map_err(usage)? {
        timers.rekey_after = Duration::from_secs(s.max(1));
    }
    let mut mesh_timers = crate::mesh::MeshTimers::default();
    if let Some(ms) = file.timer::<u64>("gossip_interval_ms").map_err(usage)? {
        mesh_timers.gossip_interval = Duration::from_millis(ms.max(10));
    }
    if let Some(s) = file
        .timer::<u64>("peer_failure_timeout_secs")
        .map_err(usage)?
    {
        mesh_timers.failure_timeout = Duration::from_secs(s.max(1));
    }
    let mut fastdp_proof = crate::datapath::odp::proof::ProofConfig::default();
    if let Some(ms) = file.timer::<u64>("fastdp_heartbeat_ms").map_err(usage)? {
        fastdp_proof.interval = Duration::from_millis(ms.max(10));
    }
    if let Some(n) = file.timer::<u32>("fastdp_missed_limit").map_err(usage)? {
        fastdp_proof.max_missed = n.max(1);
    }
    if let Some(s) = file.timer::<u64>("fastdp_retry_secs").map_err(usage)? {
        fastdp_proof.retry_after = Duration::from_secs(s.max(1));
    }
    let fastdp_flow_idle = Duration::from_secs(
        file.timer::<u64>("fastdp_flow_idle_secs")
            .map_err(usage)?
            .unwrap_or(10)
            .max(1),
    );
    let trusted_err = from_file(&file, "trusted-subnet", !args.trusted_subnets.is_empty());
    let trusted_texts = if args.trusted_subnets.is_empty() {
        file.list("trusted-subnet").map_err(usage)?
    } else {
        args.trusted_subnets
    };
    let trusted = trusted_texts
        .iter()
        .map(|t| crate::router::fastdp::parse_trusted_subnet(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(&trusted_err)?;
    let plaintext_policy = if plain {
        None
    } else if insecure {
        Some(crate::router::fastdp::PlaintextPolicy::AllPeers)
    } else if !trusted.is_empty() {
        Some(crate::router::fastdp::PlaintextPolicy::TrustedSubnets(
            trusted,
        ))
    } else {
        None
    };
    let fastdp_port_err = from_file(&file, "fastdp-port", args.fastdp_port.is_some());
    let fastdp_port = match args.fastdp_port {
        Some(p) => p,
        None => file
            .number::<u16>("fastdp-port")
            .map_err(usage)?
            .unwrap_or(6784),
    };
    // The fastdp port matters only where fastdp can run: bridge mode with
    // the control protocol and a plaintext policy. Elsewhere (TUN mode,
    // an encrypted network) --listen may use 6784 like any other port.
    let fastdp_possible = l2.is_some() && !plain && plaintext_policy.is_some();
    if fastdp_possible && (fastdp_port == 0 || fastdp_port == listen.port()) {
        return Err(fastdp_port_err(format!(
            "--fastdp-port {fastdp_port} must be a port other than 0 and the --listen port {}; choose another --fastdp-port (all hosts must agree) or another --listen port",
            listen.port()
        )));
    }
    let force = args.force || file.flag("force").map_err(usage)?;
    let allow_xdp = args.allow_xdp || file.flag("allow-xdp").map_err(usage)?;
    let no_offload = args.no_offload || file.flag("no-offload").map_err(usage)?;
    let workers = match args.workers {
        Some(n) => usize::from(n),
        None => match file.number::<u16>("workers").map_err(usage)? {
            Some(n) if (1..=64).contains(&n) => usize::from(n),
            Some(n) => {
                return Err(usage(format!(
                    "{}: workers = {n} is out of range: give 1 to 64 datapath threads",
                    file.context("workers")
                )))
            }
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(64)),
        },
    };
    let reload_peers_from = if peers_from_flags {
        None
    } else {
        file.path.clone()
    };
    if let (Some(ipam), None) = (&ipam, &l2) {
        // TUN mode: pods' traffic reaches the TUN device by the route of
        // the overlay prefix, so each range must lie inside the overlay
        // prefix of its family.
        tun_range_inside_overlay(&overlays, ipam.range.prefix())?;
        if let Some(r6) = &ipam.range6 {
            tun_range_inside_overlay(&overlays, r6.prefix())?;
        }
    }
    Ok(Plan {
        overlays,
        listen,
        peers,
        secret,
        key,
        iface_name,
        status_addr,
        vni,
        cipher,
        name,
        mode,
        force,
        allow_xdp,
        offload: !no_offload,
        workers,
        reload_peers_from,
        timers,
        mesh_timers,
        l2,
        plaintext_policy,
        fastdp_port,
        fastdp_proof,
        fastdp_flow_idle,
        identity,
        ipam,
        kube,
    })
}

/// Parses the peer list and leaves out this host's own address, so that
/// one peer list can serve every host of a network (each skips itself).
/// Returns the peers and the line to log about a skipped own address.
fn parse_peer_list(
    texts: &[String],
    listen: SocketAddr,
) -> Result<(Vec<PeerTarget>, Option<String>), String> {
    let parsed = texts
        .iter()
        .map(|p| parse_peer_target(p))
        .collect::<Result<Vec<_>, _>>()?;
    // One probe per peer (is_own_address may bind a socket). A host name
    // that leads here is found when it is dialled (the mesh recognises
    // its own identity and never dials it again).
    let (own, peers): (Vec<PeerTarget>, Vec<PeerTarget>) = parsed
        .into_iter()
        .partition(|p| p.addr().is_some_and(|a| is_own_address(a, listen)));
    let note = (!own.is_empty()).then(|| {
        let own: Vec<String> = own.iter().map(PeerTarget::to_string).collect();
        format!(
            "peer {} is this host's own address: skipped",
            own.join(", ")
        )
    });
    Ok((peers, note))
}

/// Whether `peer` is where this host listens: the --listen address itself,
/// or, when listening on every address, one of this host's addresses with
/// the same port (binding a socket to it succeeds only for a local address;
/// nothing is sent).
fn is_own_address(peer: SocketAddr, listen: SocketAddr) -> bool {
    if peer.port() != listen.port() {
        return false;
    }
    if peer.ip() == listen.ip() {
        return true;
    }
    listen.ip().is_unspecified()
        && peer.is_ipv4() == listen.is_ipv4()
        && std::net::UdpSocket::bind(SocketAddr::new(peer.ip(), 0)).is_ok()
}

/// Re-reads the peer list from the config file (on SIGHUP).
pub fn reload_peers(path: &std::path::Path, listen: SocketAddr) -> Result<Vec<PeerTarget>, String> {
    let file = ConfigFile::load(path)?;
    let texts = file.list("peer")?;
    parse_peer_list(&texts, listen)
        .map(|(peers, _)| peers)
        .map_err(|e| format!("{}: {e}", file.context("peer")))
}

/// Refuses an overlay prefix that an existing route already covers.
fn check_overlay_route(plan: &Plan) -> Result<(), LaunchError> {
    for &(addr, prefix) in &plan.overlays {
        if let Some(route) = overlapping_route(addr, prefix) {
            return Err(usage(format!(
                "--overlay {addr}/{prefix} collides with the existing route {route}: choose an overlay prefix no route on this host uses"
            )));
        }
    }
    Ok(())
}

/// An existing route that overlaps the overlay prefix, if any, as text.
/// Default routes overlap everything by design and do not count, nor do
/// IPv6 link-local, multicast and loopback routes.
pub fn overlapping_route(addr: IpAddr, prefix: u8) -> Option<String> {
    let mut netlink = crate::sys::Netlink::open().ok()?;
    let routes = netlink.main_routes(addr.is_ipv6()).ok()?;
    let route = routes
        .iter()
        .find(|r| !r.is_default() && !ignored_route(r) && overlaps(addr, prefix, r))?;
    let dev = route
        .oif
        .and_then(|index| netlink.link_by_index(index).ok().flatten())
        .map(|link| format!(" dev {}", link.name))
        .unwrap_or_default();
    Some(format!("{}/{}{dev}", route.dst, route.prefix_len))
}

/// IPv6 routes every interface has (link-local, multicast, loopback).
fn ignored_route(route: &crate::sys::Route) -> bool {
    match route.dst {
        IpAddr::V6(ip) => ip.is_loopback() || ip.is_multicast() || (u128::from(ip) >> 118) == 0x3fa,
        IpAddr::V4(_) => false,
    }
}

/// Whether `addr/prefix` and the route's prefix share addresses.
fn overlaps(addr: IpAddr, prefix: u8, route: &crate::sys::Route) -> bool {
    let common = prefix.min(route.prefix_len);
    match (addr, route.dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(common.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(common.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Finds the underlay interface and its MTU, saying how it was found.
fn underlay(
    listen: SocketAddr,
    peers: &[SocketAddr],
) -> Result<(String, u16, String), LaunchError> {
    use crate::host::facts::{iface_for_peer, iface_owning_address, interface_mtu};
    let (iface, why) = if !listen.ip().is_unspecified() {
        let ip = listen.ip();
        let iface = iface_owning_address(ip)
            .map_err(LaunchError::Runtime)?
            .ok_or_else(|| {
                usage(format!(
                    "no interface holds {ip}; use one of this host's addresses in --listen"
                ))
            })?;
        (iface, format!("it holds the --listen address {ip}"))
    } else {
        let Some(p) = peers.first() else {
            return Err(usage(
                "cannot tell the underlay interface: give --listen a concrete address (or at least one --peer)",
            ));
        };
        let (iface, _) = iface_for_peer(p.ip()).map_err(usage)?;
        (iface, format!("the route to peer {p} leaves through it"))
    };
    let mtu = interface_mtu(&iface)
        .map_err(|e| LaunchError::Runtime(format!("cannot read the MTU of {iface}: {e}")))?;
    Ok((iface, u16::try_from(mtu).unwrap_or(u16::MAX), why))
}

/// Opens the AF_XDP underlay on `iface` around a duplicate of weft's UDP
/// socket (the original stays usable for the UDP fallback).
fn open_xdp(
    iface: &str,
    listen: SocketAddr,
    udp_socket: &std::net::UdpSocket,
) -> Result<crate::datapath::xdp::XdpUnderlay, String> {
    let kernel = udp_socket
        .try_clone()
        .map_err(|e| format!("AF_XDP: cannot duplicate the UDP socket: {e}"))?;
    let config = crate::datapath::xdp::XdpConfig {
        interface: iface.to_string(),
        extra_ports: Vec::new(),
        source: Some(listen.ip()).filter(|ip| !ip.is_unspecified()),
    };
    crate::datapath::xdp::XdpUnderlay::open(&config, kernel).map_err(|e| e.to_string())
}

/// Start-up lines (underlay, MTU, preflight, datapath) held back until every
/// input is validated, every port bound and the device made: a usage error
/// is then the only line at the default log level. When start-up fails the
/// held lines go out at DEBUG (`RUST_LOG=debug` shows them).
#[derive(Debug, Default)]
pub struct StartupLog {
    lines: Vec<(tracing::Level, String)>,
    flushed: bool,
}

impl StartupLog {
    /// Holds an INFO line (printed at once after [`StartupLog::flush`]).
    pub fn info(&mut self, line: impl Into<String>) {
        self.push(tracing::Level::INFO, line.into());
    }

    /// Holds a WARN line.
    pub fn warn(&mut self, line: impl Into<String>) {
        self.push(tracing::Level::WARN, line.into());
    }

    fn push(&mut self, level: tracing::Level, line: String) {
        if self.flushed {
            emit(level, &line);
        } else {
            self.lines.push((level, line));
        }
    }

    /// Start-up succeeded: print the held lines; later lines print at once.
    pub fn flush(&mut self) {
        for (level, line) in std::mem::take(&mut self.lines) {
            emit(level, &line);
        }
        self.flushed = true;
    }

    /// Start-up failed: the held lines at DEBUG only.
    pub fn discard(&mut self) {
        for (_, line) in std::mem::take(&mut self.lines) {
            tracing::debug!("{line}");
        }
    }
}

fn emit(level: tracing::Level, line: &str) {
    if level == tracing::Level::WARN {
        tracing::warn!("{line}");
    } else {
        tracing::info!("{line}");
    }
}

/// Runs `weft launch` to completion and returns the exit code.
pub fn run(args: LaunchArgs) -> ExitCode {
    crate::logging::init();
    let mut log = StartupLog::default();
    let result = launch(args, &mut log);
    if result.is_err() {
        log.discard();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(LaunchError::Usage(m)) => {
            tracing::error!("{m}");
            ExitCode::from(2)
        }
        Err(LaunchError::Runtime(m)) => {
            tracing::error!("{m}");
            ExitCode::from(1)
        }
    }
}

/// Takes this interface name for this process, clearing what an earlier
/// weft that died left behind; refuses when a weft is running with it.
fn claim_interface(
    iface: &str,
    status_addr: SocketAddr,
    log: &mut StartupLog,
) -> Result<Option<crate::host::instance::InstanceLock>, LaunchError> {
    use crate::host::instance::{self, Claim};
    match instance::claim(iface) {
        Claim::Running(record) => Err(usage(instance::running_message(&record, iface))),
        Claim::Owned { mut lock, leftover } => {
            if let Some(record) = leftover {
                if let Some(line) = instance::clear_leftovers(&record).map_err(usage)? {
                    log.info(line);
                }
            }
            lock.record(|r| r.status_addr = Some(status_addr.to_string()));
            Ok(Some(lock))
        }
        Claim::Unavailable(why) => {
            tracing::debug!("no instance lock ({why}); carrying on without one");
            Ok(None)
        }
    }
}

/// The error for an interface that exists though no weft holds it here:
/// a running weft of another kind (it answers on the status address) or
/// not weft's at all.
fn existing_interface_error(iface: &str, status_addr: SocketAddr) -> LaunchError {
    if let Ok(status) = crate::api::http::fetch(status_addr) {
        if status.interface == iface {
            return usage(format!(
                "{iface} belongs to the weft answering on {status_addr} (`weft status --status-addr {status_addr}`): stop that weft first, or start this one with another --iface-name"
            ));
        }
    }
    usage(format!(
        "an interface named {iface} already exists and no weft on this host holds it: start weft with another --iface-name, or remove {iface} if you know nothing uses it (`ip link del {iface}`)"
    ))
}

fn launch(args: LaunchArgs, log: &mut StartupLog) -> Result<(), LaunchError> {
    let config_for_reload = args.config.clone();
    let plan = build_plan(args, log)?;
    let plain = plan.mode == crate::host::plan::Mode::Plain;
    let l2 = plan.l2.is_some();
    let framing = if plain {
        Framing::PlainVxlan
    } else {
        Framing::Sleeve
    };
    let remotes: Vec<SocketAddr> = match &plan.l2 {
        Some(l2) if plain => l2.vteps.clone(),
        // Only to find the underlay interface when --listen does not name
        // it: then a host name is resolved here once (and again whenever
        // weft dials it).
        _ => plan
            .peers
            .iter()
            .filter_map(|p| match p {
                PeerTarget::Addr(a) => Some(*a),
                PeerTarget::Name { host, port } if plan.listen.ip().is_unspecified() => {
                    let family = crate::mesh::target::Family::of_listener(plan.listen);
                    crate::mesh::target::resolve(host, *port, family).ok()
                }
                PeerTarget::Name { .. } => None,
            })
            .collect(),
    };

    let (underlay_iface, underlay_mtu, why) = underlay(plan.listen, &remotes)?;
    log.info(format!(
        "underlay: {underlay_iface} mtu {underlay_mtu} ({why})"
    ));
    let ipv6_underlay = plan.listen.is_ipv6() || remotes.first().is_some_and(|p| p.is_ipv6());
    // Preflight: the same checks `weft preflight` prints, logged line by
    // line, on the underlay found above. Its plan is the one launch runs:
    // the datapath and the overlay MTU come from it, nothing is computed twice.
    let mut facts = crate::host::facts::Facts::gather(crate::host::facts::UnderlaySelector::Iface(
        underlay_iface.clone(),
    ));
    facts.apply(&crate::host::facts::Assumptions::default());
    facts.underlay_ipv6 = ipv6_underlay;
    facts.underlay_mtu = Ok(u32::from(underlay_mtu));
    let request = crate::host::plan::Request {
        // Fastdp sends plaintext: only a plaintext network (--insecure-plaintext)
        // or trusted subnets make this request unencrypted.
        encrypted: !plain && plan.plaintext_policy.is_none(),
        // Without --mode plain the sleeve may carry any link (untrusted
        // peers, the fastdp fallback), so the device MTU fits its overhead.
        sleeve_possible: !plain,
        l2,
        overlay_ipv6: plan.overlays.iter().any(|(a, _)| a.is_ipv6()),
    };
    let preflight = crate::host::plan::decide(&facts, &request);
    for line in crate::host::preflight::log_lines(&preflight) {
        log.info(format!("preflight: {line}"));
    }
    let overhead_bytes = overhead::datagram_overhead(framing, ipv6_underlay)
        + if l2 { overhead::ETHERNET_HEADER } else { 0 };
    let overlay_mtu = match preflight.overlay_mtu {
        Some(m) if preflight.mtu_usable => m,
        _ => {
            let min = crate::host::plan::minimum_overlay_mtu(request.overlay_ipv6);
            return Err(LaunchError::Runtime(format!(
                "underlay MTU {underlay_mtu} of {underlay_iface} minus weft's {overhead_bytes}-byte overhead leaves less than the {min} bytes {}: raise the MTU of {underlay_iface} to at least {}{}",
                if request.overlay_ipv6 {
                    "an IPv6 overlay address needs (every IPv6 link carries 1280)"
                } else {
                    "an overlay needs"
                },
                u32::from(min) + overhead_bytes as u32,
                if request.overlay_ipv6 {
                    ", or give only an IPv4 --overlay"
                } else {
                    ""
                }
            )));
        }
    };
    if plain {
        log.info(format!("overlay MTU {overlay_mtu} = underlay {underlay_mtu} - {overhead_bytes} (outer IP+UDP, VXLAN, inner Ethernet)"));
    } else {
        log.info(format!(
            "overlay MTU {overlay_mtu} = underlay {underlay_mtu} - {overhead_bytes} (outer IP+UDP, weft header, record, VXLAN, AEAD tag{})",
            if l2 { ", inner Ethernet" } else { "" }
        ));
    }
    if facts.tun.state != crate::host::facts::Tri::Yes {
        // Without /dev/net/tun nothing local can run: say that, not every datapath's story.
        return Err(usage(format!(
            "cannot create the {} device {}: /dev/net/tun does not work ({}); run weft as root or give it CAP_NET_ADMIN",
            if l2 { "TAP" } else { "TUN" },
            plan.iface_name,
            facts.tun.detail
        )));
    }
    let resolved =
        crate::host::plan::resolve_mode(&preflight, plan.mode, plan.force).map_err(usage)?;
    let (resolved, opt_in_line) =
        crate::host::plan::require_xdp_opt_in(resolved, plan.mode, plan.allow_xdp, &underlay_iface);
    if let Some(line) = &opt_in_line {
        log.info(line.clone());
    }
    if let Some(w) = &resolved.warning {
        log.warn(w.clone());
    }
    // Fastdp is implemented for bridge mode with a plaintext policy (a
    // plaintext network or trusted subnets), over IPv4 or IPv6 underlays
    // (whether the kernel has IPv6 tunnels is preflight's known-issues table).
    let fastdp_unusable = if !l2 || plain {
        Some("fastdp needs bridge mode (--iface bridge) with the control protocol (not --mode plain)")
    } else if plan.plaintext_policy.is_none() {
        Some("fastdp carries no encryption: give --trusted-subnet CIDR or --insecure-plaintext")
    } else {
        None
    };
    let mut implemented = vec![
        crate::host::plan::Datapath::Xdp,
        crate::host::plan::Datapath::Udp,
    ];
    if fastdp_unusable.is_none() {
        implemented.push(crate::host::plan::Datapath::Fastdp);
    }
    let (mut datapath, mut fallback) =
        crate::host::plan::launch_datapath(resolved.datapath, &implemented);
    if let (Some(why), true) = (
        fastdp_unusable,
        resolved.datapath == crate::host::plan::Datapath::Fastdp,
    ) {
        fallback = Some(format!("fastdp chosen by preflight is not usable here ({why}); falling back to udp (the userspace sleeve)"));
    }
    let mut datapath_reason = match (&fallback, &opt_in_line) {
        (Some(line), _) => {
            log.info(line.clone());
            line.clone()
        }
        (None, Some(line)) => line.clone(),
        (None, None) if plan.mode == crate::host::plan::Mode::Auto => preflight.reasons.join("; "),
        (None, None) => format!("--mode {datapath} requested"),
    };
    log.info(format!("datapath: {datapath} ({datapath_reason})"));

    if let (true, Some(l2plan)) = (plain, plan.l2.as_ref()) {
        if plan.overlays.is_empty() {
            return Err(usage("--mode plain needs --overlay ADDR/PREFIX"));
        }
        let _lock = claim_interface(&plan.iface_name, plan.status_addr, log)?;
        check_overlay_route(&plan)?;
        log.flush();
        return crate::router::plain::launch(crate::router::plain::PlainLaunch {
            bind: SocketAddr::new(plan.listen.ip(), l2plan.vxlan_port),
            vteps: l2plan.vteps.clone(),
            vni: plan.vni,
            bridge: l2plan.bridge.clone(),
            tap_name: plan.iface_name.clone(),
            overlays: plan.overlays.clone(),
            overlay_mtu,
            mac_age: l2plan.mac_age,
            mac_quota: l2plan.mac_quota,
            status_addr: plan.status_addr,
            workers: plan.workers,
            offload: plan.offload,
            status_template: Status {
                version: crate::VERSION.into(),
                name: plan.name.clone(),
                public_key: plan.key.public_base64(),
                interface: plan.iface_name.clone(),
                overlay: overlays_text(&plan.overlays),
                overlay_mtu,
                underlay: underlay_iface.clone(),
                underlay_mtu,
                listen: SocketAddr::new(plan.listen.ip(), l2plan.vxlan_port).to_string(),
                datapath: format!("{datapath} (plaintext VXLAN)"),
                workers: plan.workers as u32,
                datapath_reason,
                encryption: "none: plaintext VXLAN (--insecure-plaintext)".into(),
                ..Status::default()
            },
        })
        .map_err(|e| match e {
            crate::router::plain::PlainError::Usage(m) => LaunchError::Usage(m),
            crate::router::plain::PlainError::Runtime(m) => LaunchError::Runtime(m),
        });
    }
    let Some(secret) = plan.secret.clone() else {
        return Err(usage("no network secret: pass --secret-file FILE (the same file on every host) or set WEFT_SECRET"));
    };

    // Bind everything before touching the host, so an error leaves nothing
    // behind. TCP first: the UDP sockets share their port (SO_REUSEPORT),
    // and a second weft on the same address must fail before it joins them.
    let listener = udp::bind_control_listener(plan.listen).map_err(|e| usage(e.to_string()))?;
    let mut workers = plan.workers;
    if datapath == crate::host::plan::Datapath::Xdp && workers > 1 {
        log.info(format!(
            "datapath: 1 worker, not {workers}: the AF_XDP driver serves every queue's socket from one thread"
        ));
        workers = 1;
    }
    let mut udp_sockets = udp::bind_data_sockets(plan.listen, workers, udp::Steering::Lane)
        .map_err(|e| usage(e.to_string()))?;
    let http = crate::api::http::bind(plan.status_addr).map_err(usage)?;
    let control = crate::api::control::bind(plan.status_addr).map_err(usage)?;
    let ipam_parts = match &plan.ipam {
        Some(p) => {
            let listener = crate::cni::server::bind(&p.socket).map_err(usage)?;
            let own = plan.overlays.iter().find_map(|(a, _)| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            });
            let mut ipam = crate::ipam::Ipam::new(
                p.range,
                crate::mesh::PeerId(plan.key.public()),
                own,
                p.reclaim_after,
            );
            let how = start_pod_range(&mut ipam, p.pod_cidr, plan.kube.as_ref())?;
            let state = crate::ipam::store::load(&p.dir).map_err(usage)?;
            let held = state.as_ref().map_or(0, |s| s.allocations.len());
            if let Some(state) = state {
                ipam.restore(state).map_err(usage)?;
            }
            // Fail now, not at the first pod, if the directory is unusable.
            crate::ipam::store::save(&p.dir, &ipam.state()).map_err(usage)?;
            log.info(format!(
                "IPAM: range {}, {how}; {held} address(es) held in {}; CNI socket @{}",
                p.range,
                p.dir.display(),
                p.socket
            ));
            let ipam6 = match p.range6 {
                Some(range6) => {
                    let own6 = plan.overlays.iter().find_map(|(a, _)| match a {
                        IpAddr::V6(a) => Some(*a),
                        IpAddr::V4(_) => None,
                    });
                    let mut ipam6 = crate::ipam::Ipam::new(
                        range6,
                        crate::mesh::PeerId(plan.key.public()),
                        own6,
                        p.reclaim_after,
                    );
                    // Before the state is restored, as in IPv4: a pod range
                    // of its own is taken back as one chunk.
                    let how6 = start_pod_range(&mut ipam6, p.pod_cidr6, plan.kube.as_ref())?;
                    let state6 =
                        crate::ipam::store::load::<std::net::Ipv6Addr>(&p.dir).map_err(usage)?;
                    let held6 = state6.as_ref().map_or(0, |s| s.allocations.len());
                    if let Some(state6) = state6 {
                        ipam6.restore(state6).map_err(usage)?;
                    }
                    crate::ipam::store::save(&p.dir, &ipam6.state()).map_err(usage)?;
                    log.info(format!(
                        "IPAM: IPv6 range {range6}, {how6}; {held6} address(es) held in {}",
                        crate::ipam::store::path_of::<std::net::Ipv6Addr>(&p.dir).display()
                    ));
                    Some(ipam6)
                }
                None => None,
            };
            Some((ipam, ipam6, listener, p.dir.clone(), p.range, p.range6))
        }
        None => None,
    };

    // One weft per interface name: refuse if one runs, clear what a dead one left.
    let mut instance_lock = claim_interface(&plan.iface_name, plan.status_addr, log)?;
    let device_exists = crate::sys::link_exists(&plan.iface_name).unwrap_or(false);
    if device_exists {
        return Err(existing_interface_error(&plan.iface_name, plan.status_addr));
    }
    check_overlay_route(&plan)?;
    let masquerade = install_masquerade(plan.ipam.as_ref(), &underlay_iface, log)?;
    if plan.l2.is_none() {
        if let Some(r6) = plan.ipam.as_ref().and_then(|p| p.range6.as_ref()) {
            warn_unless_ipv6_forwarding(r6, &underlay_iface, log);
        }
    }

    // The control thread sends heartbeats, probes and relayed datagrams
    // through a handle on the first socket (it never reads from it).
    let control_udp = crate::datapath::underlay::UdpUnderlay::new(
        udp_sockets[0]
            .try_clone()
            .map_err(|e| LaunchError::Runtime(format!("cannot duplicate the UDP socket: {e}")))?,
    );
    let mut underlays: Vec<Box<dyn crate::datapath::underlay::Underlay>> = Vec::new();
    if datapath == crate::host::plan::Datapath::Xdp {
        if let Some(lock) = instance_lock.as_mut() {
            lock.record(|r| r.xdp = Some(underlay_iface.clone()));
        }
        match open_xdp(&underlay_iface, plan.listen, &udp_sockets[0]) {
            Ok(xdp) => {
                let mode = xdp.mode();
                log.info(format!(
                    "datapath xdp: AF_XDP {mode} on {underlay_iface}, {} queue(s)",
                    xdp.queue_count()
                ));
                datapath_reason = format!("AF_XDP {mode} on {underlay_iface}; {datapath_reason}");
                underlays.push(Box::new(xdp));
                udp_sockets.clear();
            }
            Err(e) => {
                log.warn(format!("{e}; falling back to udp"));
                datapath = crate::host::plan::Datapath::Udp;
                datapath_reason = format!("xdp unusable, fell back to udp: {e}");
            }
        }
    }
    for socket in udp_sockets {
        underlays.push(Box::new(crate::datapath::underlay::UdpUnderlay::receiving(
            socket,
        )));
    }

    let (signal_rx, signal_tx) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| LaunchError::Runtime(format!("cannot create the signal pipe: {e}")))?;
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let tx = signal_tx
            .try_clone()
            .map_err(|e| LaunchError::Runtime(e.to_string()))?;
        signal_hook::low_level::pipe::register(sig, tx)
            .map_err(|e| LaunchError::Runtime(format!("cannot handle signal {sig}: {e}")))?;
    }
    // SIGHUP: re-read the peer list (its own pipe: the byte says nothing of the signal).
    let (reload_rx, reload_tx) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| LaunchError::Runtime(format!("cannot create the reload pipe: {e}")))?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, reload_tx)
        .map_err(|e| LaunchError::Runtime(format!("cannot handle SIGHUP: {e}")))?;
    let listen_for_reload = plan.listen;
    let reload = crate::router::PeerReload {
        signal: reload_rx,
        read: match (&plan.reload_peers_from, config_for_reload) {
            (Some(path), _) => {
                let path = path.clone();
                Box::new(move || reload_peers(&path, listen_for_reload))
            }
            (None, Some(_)) => Box::new(|| {
                Err("the peers come from --peer on the command line, which wins over the config file: nothing to re-read".to_string())
            }),
            (None, None) => Box::new(|| {
                Err("no --config file: nothing to re-read (peers come from --peer)".to_string())
            }),
        },
    };

    // Bridge mode: a TAP on a bridge that holds the overlay address; the
    // guard removes what weft created when launch returns.
    let mut bridge_guard = None;
    let overlay_text = if plan.overlays.is_empty() {
        "no overlay address".to_string()
    } else {
        overlays_text(&plan.overlays)
    };
    let tun = match &plan.l2 {
        None => {
            if plan.overlays.is_empty() {
                return Err(usage("TUN mode needs --overlay ADDR/PREFIX"));
            }
            let tun = TunDevice::create(
                &plan.iface_name,
                &plan.overlays,
                overlay_mtu,
                plan.offload,
                workers,
            )
            .map_err(|e| usage(e.to_string()))?;
            match (plan.offload, tun[0].vnet_hdr()) {
                (true, true) => log.info("TUN offloads on: IFF_VNET_HDR with TSO/USO; weft segments super-packets itself and coalesces what it writes (GRO)"),
                (true, false) => log.info("TUN offloads off: the kernel refused IFF_VNET_HDR/TUNSETOFFLOAD; one packet per read and write"),
                (false, _) => log.info("TUN offloads off (--no-offload): one packet per read and write"),
            }
            if plan.ipam.is_some() {
                // Pods are routed: packets from the overlay for a pod
                // arrive on the TUN device and leave on the pod's veth.
                // Per-device forwarding, gone with the device on exit.
                enable_forwarding(&plan.iface_name)?;
                log.info(format!(
                    "IPAM: forwarding on {} so routed pods receive from the overlay",
                    plan.iface_name
                ));
            }
            tun
        }
        Some(l2plan) => {
            let (tap, guard) = crate::datapath::tap::create(
                &l2plan.bridge,
                &plan.iface_name,
                overlay_mtu,
                &plan.overlays,
                workers,
                plan.offload,
            )
            .map_err(usage)?;
            log.info(match (plan.offload, tap[0].vnet_hdr()) {
                (true, true) => "TAP offloads on: IFF_VNET_HDR with TSO; weft segments super-frames itself and coalesces what it writes (GRO)",
                (true, false) => "TAP offloads off: the kernel refused IFF_VNET_HDR/TUNSETOFFLOAD; one frame per read and write",
                (false, _) => "TAP offloads off (--no-offload): one frame per read and write",
            });
            if guard.created() {
                if let Some(lock) = instance_lock.as_mut() {
                    lock.record(|r| {
                        r.bridge = Some(l2plan.bridge.clone());
                        r.overlay = plan.overlays.first().map(|(a, p)| format!("{a}/{p}"));
                    });
                }
            }
            log.info(format!(
                "bridge {} holds {overlay_text}; TAP {} on it, mtu {overlay_mtu}",
                l2plan.bridge, plan.iface_name
            ));
            if plan.ipam.is_some() {
                // Pods of an earlier run lost their bridge when it stopped
                // (weft deletes the bridge it made): put them back on it.
                match crate::cni::netdev::reattach_pods(&l2plan.bridge) {
                    Ok(ends) if ends.is_empty() => {}
                    Ok(ends) => log.info(format!(
                        "IPAM: re-attached {} pod interface(s) of an earlier run to bridge {}: {}",
                        ends.len(),
                        l2plan.bridge,
                        ends.join(", ")
                    )),
                    Err(e) => log.warn(format!(
                        "IPAM: cannot re-attach the pods of an earlier run to bridge {}: {e}",
                        l2plan.bridge
                    )),
                }
            }
            bridge_guard = Some(guard);
            tap
        }
    };
    log.info(format!(
        "created {} with {overlay_text} mtu {overlay_mtu}, {} queue(s)",
        plan.iface_name,
        tun.len()
    ));
    log.flush();

    // Fast datapath: the OVS datapath's port joins the bridge next to the TAP.
    let mut fastdp = None;
    if let (crate::host::plan::Datapath::Fastdp, Some(l2plan), Some(policy)) =
        (datapath, plan.l2.as_ref(), plan.plaintext_policy.clone())
    {
        let config = crate::router::fastdp::FastdpConfig {
            datapath: format!("{}-odp", l2plan.bridge).chars().take(15).collect(),
            bridge: l2plan.bridge.clone(),
            tap: plan.iface_name.clone(),
            port: plan.fastdp_port,
            vni: plan.vni,
            policy: policy.clone(),
            proof: plan.fastdp_proof,
            underlay_iface: underlay_iface.clone(),
            flow_idle: plan.fastdp_flow_idle,
            mac_age: l2plan.mac_age,
            overlay_mtu,
        };
        match crate::router::fastdp::Fastdp::start(config) {
            Ok(f) => {
                let who = match &policy {
                    crate::router::fastdp::PlaintextPolicy::AllPeers => {
                        "every peer (--insecure-plaintext)".to_string()
                    }
                    crate::router::fastdp::PlaintextPolicy::TrustedSubnets(nets) => format!(
                        "peers in --trusted-subnet {}",
                        nets.iter()
                            .map(|net| net.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                datapath_reason = format!(
                    "kernel OVS datapath {} for {who}, once each connection's heartbeats are acknowledged; other peers on the encrypted sleeve; {datapath_reason}",
                    f.datapath_name()
                );
                fastdp = Some(f);
            }
            Err(e) => {
                tracing::warn!("fastdp: {e}; falling back to udp (the userspace sleeve)");
                datapath = crate::host::plan::Datapath::Udp;
                datapath_reason = format!("fastdp unusable, fell back to udp: {e}");
            }
        }
    }

    let public = plan.key.public_base64();
    let cipher_desc = match plan.cipher {
        CipherChoice::Auto => {
            "encrypted (Noise XXpsk0; data cipher negotiated per peer)".to_string()
        }
        CipherChoice::Exactly(c) => format!("encrypted (Noise XXpsk0; data cipher {})", c.name()),
    };
    let status_template = Status {
        version: crate::VERSION.into(),
        name: plan.name.clone(),
        public_key: public.clone(),
        interface: plan.iface_name.clone(),
        overlay: overlays_text(&plan.overlays),
        overlay_mtu,
        underlay: underlay_iface.clone(),
        underlay_mtu,
        listen: plan.listen.to_string(),
        datapath: datapath.to_string(),
        workers: workers as u32,
        datapath_reason,
        encryption: cipher_desc,
        ..Status::default()
    };
    let snapshot = Arc::new(Mutex::new(status_template.clone()));
    let _status_server = StatusServer::start(http, snapshot.clone());
    tracing::info!(
        "status on http://{}/status (and /metrics); `weft status --status-addr {}`",
        plan.status_addr,
        plan.status_addr
    );

    let mesh = mesh_config(&plan, &underlay_iface, l2)?;
    let link = Arc::new(LinkConfig {
        key: plan.key,
        secret,
        hello: Hello {
            version: PROTOCOL_VERSION,
            name: plan.name,
            overlay: plan
                .overlays
                .iter()
                .map(|(a, p)| format!("{a}/{p}"))
                .collect(),
            vni: plan.vni,
            udp_port: plan.listen.port(),
            device: if l2 {
                LocalDevice::Bridge
            } else {
                LocalDevice::Tun
            },
            cipher: plan.cipher,
            aes_hw: crate::noise::cipher::cpu_has_aes(),
            session_index: 0,
            overlay_mtu,
            fastdp_port: fastdp.as_ref().map(|f| f.port()),
            cert: plan.identity.as_ref().map(|i| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(i.cert.encoded())
            }),
        },
        timers: plan.timers,
        underlay_mtu,
        ipv6_underlay,
        indices: crate::noise::IndexRegistry::new(),
    });
    tracing::info!(
        "weft {} up: key {public}, listening on {}, {} configured peer(s)",
        crate::VERSION,
        plan.listen,
        plan.peers.len()
    );
    let kube = plan.kube.map(|k| crate::kube::refresh::RefreshSetup {
        api: k.api,
        node: k.node,
        port: plan.listen.port(),
        v6: plan.listen.is_ipv6(),
        every: k.every,
        fixed: plan.peers.iter().filter_map(PeerTarget::addr).collect(),
        pod_cidr: plan.ipam.as_ref().is_some_and(|p| p.pod_cidr.is_none()),
        pod_cidr6: plan
            .ipam
            .as_ref()
            .is_some_and(|p| p.range6.is_some() && p.pod_cidr6.is_none()),
        ipv4_only_ipam: plan.ipam.as_ref().is_some_and(|p| p.range6.is_none()),
    });
    if let Some(k) = &kube {
        tracing::info!(
            "--kube: peers from the node list at {}, every {} s; this host is node {}{}",
            k.api.nodes_url(),
            k.every.as_secs(),
            k.node,
            match (k.pod_cidr, k.pod_cidr6) {
                (true, true) => "; its spec.podCIDRs are the pod ranges (one IPv4, one IPv6)",
                (true, false) => "; its spec.podCIDR is the pod range",
                (false, true) => "; its IPv6 spec.podCIDRs entry is the IPv6 pod range",
                (false, false) => "",
            }
        );
    }
    let device_writer = tun[0]
        .writer()
        .map_err(|e| LaunchError::Runtime(format!("cannot duplicate the device queue: {e}")))?;
    let worker_parts: Vec<crate::router::WorkerParts> = tun
        .into_iter()
        .zip(underlays)
        .map(|(device, underlay)| crate::router::WorkerParts {
            device: Box::new(device),
            underlay,
        })
        .collect();
    let router =
        Router::new(
            device_writer,
            control_udp,
            worker_parts,
            listener,
            signal_rx,
            RouterConfig {
                link,
                peers: plan.peers,
                mesh,
                vni: plan.vni,
                overlay_mtu,
                datagram_overhead: overhead_bytes,
                status_template,
                l2: plan.l2.as_ref().zip(bridge_guard.as_ref()).map(|(p, g)| {
                    crate::router::L2Config {
                        bridge: p.bridge.clone(),
                        bridge_created: g.created(),
                        mac_age: p.mac_age,
                        mac_quota: p.mac_quota,
                    }
                }),
                fastdp,
                reload: Some(reload),
                control: Some(control),
                ipam: ipam_parts.map(|(ipam, ipam6, listener, dir, range, range6)| {
                    let l2plan = plan.l2.as_ref();
                    crate::router::ipam::IpamSetup {
                        ipam,
                        ipam6,
                        dir,
                        listener,
                        network: crate::router::ipam::PodNetwork {
                            mode: if l2plan.is_some() {
                                crate::cni::api::AttachMode::Bridge
                            } else {
                                crate::cni::api::AttachMode::Tun
                            },
                            bridge: l2plan.map(|p| p.bridge.clone()),
                            gateway: l2plan.and_then(|_| {
                                crate::router::ipam::bridge_gateway(
                                    plan.overlays.iter().map(|(a, _)| *a).find(IpAddr::is_ipv4),
                                    &range,
                                )
                            }),
                            gateway6: l2plan.zip(range6).and_then(|(_, r6)| {
                                crate::router::ipam::bridge_gateway(
                                    plan.overlays.iter().map(|(a, _)| *a).find(IpAddr::is_ipv6),
                                    &r6,
                                )
                            }),
                            mtu: u32::from(overlay_mtu),
                        },
                    }
                }),
                kube,
                panic_after: test_hook_panic_after(),
                identity: plan.identity.map(|i| crate::router::RouterIdentity {
                    trust: i.trust,
                    revocation: i.revocation,
                    own_not_after: i.cert.body.not_after,
                }),
            },
            snapshot,
        )
        .map_err(|e| LaunchError::Runtime(format!("cannot start the event loop: {e}")))?;
    router
        .run()
        .map_err(|e| LaunchError::Runtime(format!("event loop failed: {e}")))?;
    drop(masquerade);
    drop(bridge_guard);
    drop(instance_lock);
    tracing::info!(
        "stopped; the {} device and its route are gone",
        if l2 { "TAP" } else { "TUN" }
    );
    Ok(())
}

/// TUN mode with an IPv6 pod range: the kernel forwards pods' IPv6
/// packets between their veths and the TUN device only with
/// `net.ipv6.conf.all.forwarding = 1` (IPv6 has no per-link switch, as
/// IPv4 has for routed pods' veths). weft does not set it: on a host that
/// takes its IPv6 route from router advertisements, forwarding stops
/// accepting them. Kubernetes nodes with IPv6 pods need it anyway.
fn warn_unless_ipv6_forwarding(
    range6: &crate::ipam::AllocRange<std::net::Ipv6Addr>,
    underlay: &str,
    log: &mut StartupLog,
) {
    warn_unless_forwarding(
        underlay,
        true,
        &format!("IPv6 pods ({range6}) in TUN mode"),
        "pods cannot reach other hosts over IPv6 until net.ipv6.conf.all.forwarding = 1",
        log,
    );
}

/// Warns, as `context`, when `underlay` does not forward IPv4 (IPv6 with
/// `v6`): `consequence` says what then fails and what to set.
fn warn_unless_forwarding(
    underlay: &str,
    v6: bool,
    context: &str,
    consequence: &str,
    log: &mut StartupLog,
) {
    let (family, sysctl) = if v6 {
        ("IPv6", "ipv6")
    } else {
        ("IPv4", "ipv4")
    };
    let forwards = crate::sys::Netlink::open().and_then(|mut r| {
        if v6 {
            r.ipv6_forwarding(underlay)
        } else {
            r.ipv4_forwarding(underlay)
        }
    });
    match forwards {
        Ok(Some(false)) => log.warn(format!(
            "{context}: {underlay} does not forward {family} (net.{sysctl}.conf.{underlay}.forwarding = 0): {consequence}"
        )),
        Ok(_) => {}
        Err(e) => log.warn(format!(
            "{context}: cannot read whether {underlay} forwards {family}: {e}"
        )),
    }
}

/// `--masquerade`: NAT for pods leaving the pod network, in this network
/// namespace only (`src/cni/nft.rs`); the table goes when the guard drops.
/// Warns when `underlay` does not forward a family it masquerades (then
/// replies to pods' masqueraded packets are not forwarded back to them).
fn install_masquerade(
    ipam: Option<&IpamPlan>,
    underlay: &str,
    log: &mut StartupLog,
) -> Result<Option<crate::sys::nft::Masquerade>, LaunchError> {
    let Some(p) = ipam.filter(|p| p.masquerade) else {
        return Ok(None);
    };
    let mut ranges = vec![(p.range.prefix().addr(), p.range.len())];
    if let Some(r6) = &p.range6 {
        ranges.push((r6.prefix().addr(), r6.len()));
    }
    let nat = crate::sys::nft::Masquerade::install(&ranges).map_err(|e| {
        usage(format!(
            "--masquerade: {e}; weft needs CAP_NET_ADMIN and a kernel with nf_tables and NAT (nf_nat, nft_masq)"
        ))
    })?;
    for rule in nat.rules() {
        log.info(format!(
            "--masquerade: nftables {rule}{}",
            if nat.owned() {
                " (owned by weft: the kernel removes it when weft exits)"
            } else {
                " (removed when weft exits)"
            }
        ));
    }
    warn_unless_forwarding(
        underlay,
        false,
        "--masquerade",
        "pods cannot reach beyond this host until net.ipv4.ip_forward = 1 (Kubernetes nodes need it anyway)",
        log,
    );
    if p.range6.is_some() {
        warn_unless_forwarding(
            underlay,
            true,
            "--masquerade",
            "pods' IPv6 traffic cannot reach beyond this host until net.ipv6.conf.all.forwarding = 1",
            log,
        );
    }
    Ok(Some(nat))
}

/// Test builds (`--features test-hooks`): `WEFT_TEST_WORKER_PANIC_AFTER=N`
/// makes a datapath worker panic after it read N packets from the device, so the
/// tests can check that weft then stops whole and leaves nothing behind.
fn test_hook_panic_after() -> Option<u64> {
    if cfg!(feature = "test-hooks") {
        std::env::var("WEFT_TEST_WORKER_PANIC_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
    } else {
        None
    }
}

/// The mesh node's configuration: identity, name, where peers can dial
/// this host, what it claims.
fn mesh_config(
    plan: &Plan,
    underlay_iface: &str,
    l2: bool,
) -> Result<crate::mesh::NodeConfig, LaunchError> {
    use crate::mesh::{NodeConfig, PeerId, PeerName};
    let mut cfg = NodeConfig::new(
        PeerId(plan.key.public()),
        PeerName::from_untrusted(plan.name.as_bytes()),
    );
    cfg.endpoints = if plan.listen.ip().is_unspecified() {
        // 0.0.0.0 takes IPv4 only; [::] is a dual-stack socket: both.
        interface_addresses(underlay_iface, plan.listen.is_ipv6())
            .into_iter()
            .map(|ip| SocketAddr::new(ip, plan.listen.port()))
            .collect()
    } else {
        vec![plan.listen]
    };
    for &(addr, prefix) in &plan.overlays {
        let text = format!("{addr}/{prefix}");
        let (claim, subnet) = crate::mesh::claims::interface_address(&text)
            .map_err(|e| usage(format!("--overlay {text}: {e}")))?;
        cfg.claims.push(claim);
        cfg.subnets.push(subnet);
    }
    cfg.broadcast_trees = l2;
    cfg.timers = plan.mesh_timers.clone();
    // Wall-clock seconds: a restarted host starts above its old records.
    cfg.initial_version = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs().max(1));
    if let Some(identity) = &plan.identity {
        cfg.cert = identity.cert.encoded().to_vec();
        cfg.trust = Some(identity.trust.clone());
        cfg.unix_time = crate::identity::commands::unix_now();
    }
    Ok(cfg)
}

/// The addresses of one interface, for the control endpoints a host
/// announces when it listens on every address: the IPv4 ones, and with
/// `ipv6` (a dual-stack `[::]` listener) the IPv6 ones too.
fn interface_addresses(iface: &str, ipv6: bool) -> Vec<IpAddr> {
    let addresses = crate::sys::Netlink::open().and_then(|mut netlink| {
        let Some(link) = netlink.link(iface)? else {
            return Ok(Vec::new());
        };
        netlink.addresses(link.index)
    });
    addresses
        .unwrap_or_default()
        .into_iter()
        .map(|(ip, _)| ip)
        .filter(|ip| match ip {
            IpAddr::V4(_) => true,
            // fe80::/10: link-local addresses are not dialled.
            IpAddr::V6(v6) => ipv6 && v6.segments()[0] & 0xffc0 != 0xfe80,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::mesh::target::PeerTarget;

    #[test]
    fn ipalloc_ranges_take_one_of_each_family_and_name_bad_values() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(super::parse_ipalloc_ranges(&[]), Ok(None));
        let (v4, v6) = super::parse_ipalloc_ranges(&list(&["fd32::/64", "10.32.0.0/16"]))
            .unwrap()
            .unwrap();
        assert_eq!(v4.to_string(), "10.32.0.0/16");
        assert_eq!(v6.unwrap().to_string(), "fd32::/64");
        let (_, none) = super::parse_ipalloc_ranges(&list(&["10.32.0.0/16"]))
            .unwrap()
            .unwrap();
        assert!(none.is_none());
        for (bad, says) in [
            (
                vec!["10.32.0.0/16", "10.40.0.0/16"],
                "\"10.40.0.0/16\": a second IPv4",
            ),
            (
                vec!["10.32.0.0/16", "fd32::/64", "fd40::/64"],
                "\"fd40::/64\": a second IPv6",
            ),
            (vec!["fd32::/64"], "IPv6-only IPAM is not implemented"),
            (vec!["10.32.0.0/16", "fd32::/124"], "fd32::/124"),
            (vec!["10.32.0.0/16", "fd32::1/64"], "did you mean fd32::/64"),
            (vec!["10.32.0.0/16", "fd32::zz/64"], "fd32::zz"),
        ] {
            let e = super::parse_ipalloc_ranges(&list(&bad)).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn pod_cidrs_take_one_of_each_family_inside_its_range() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let range = crate::ipam::AllocRange::parse("10.32.0.0/16").unwrap();
        let range6 = crate::ipam::AllocRange::parse_v6("fd32::/48").unwrap();
        let both = Some(&range6);
        assert_eq!(super::parse_pod_cidrs(&[], &range, both), Ok((None, None)));
        let (v4, v6) =
            super::parse_pod_cidrs(&list(&["fd32:0:0:7::/64", "10.32.7.0/24"]), &range, both)
                .unwrap();
        assert_eq!(v4, Some("10.32.7.0/24".parse().unwrap()));
        assert_eq!(v6, Some("fd32:0:0:7::/64".parse().unwrap()));
        let (v4, v6) = super::parse_pod_cidrs(&list(&["fd32:0:0:7::/64"]), &range, both).unwrap();
        assert_eq!((v4, v6.is_some()), (None, true));
        for (bad, r6, says) in [
            (
                vec!["10.32.7.0/24", "fd33::/64"],
                both,
                vec!["fd33::/64", "does not lie inside --ipalloc-range fd32::/48"],
            ),
            (
                vec!["fd32:0:0:7::/64"],
                None,
                vec![
                    "fd32:0:0:7::/64",
                    "no IPv6 --ipalloc-range",
                    "add an IPv6 --ipalloc-range",
                ],
            ),
            (
                vec!["fd32:0:0:7::/64", "10.32.7.0/24", "fd32:0:0:8::/64"],
                both,
                vec![
                    "\"fd32:0:0:8::/64\": a second IPv6",
                    "after \"fd32:0:0:7::/64\"",
                ],
            ),
            (
                vec!["10.32.7.0/24", "10.32.8.0/24"],
                both,
                vec!["\"10.32.8.0/24\": a second IPv4", "after \"10.32.7.0/24\""],
            ),
            (vec!["fd32::1/64"], both, vec!["fd32::1/64", "host bits"]),
            (
                vec!["10.99.0.0/24"],
                both,
                vec!["10.99.0.0/24", "10.32.0.0/16"],
            ),
        ] {
            let e = super::parse_pod_cidrs(&list(&bad), &range, r6).unwrap_err();
            for s in says {
                assert!(e.contains(s), "{bad:?}: {s:?} not in {e}");
            }
        }
    }

    #[test]
    fn the_same_peer_list_serves_every_host() {
        let texts: Vec<String> = ["198.18.0.1:6783", "198.18.0.2", "127.0.0.1:6783"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Listening on 198.18.0.1:6783: that entry is this host.
        let (peers, note) =
            super::parse_peer_list(&texts, "198.18.0.1:6783".parse().unwrap()).unwrap();
        assert_eq!(
            peers,
            vec![
                PeerTarget::Addr("198.18.0.2:6783".parse().unwrap()),
                PeerTarget::Addr("127.0.0.1:6783".parse().unwrap())
            ]
        );
        assert_eq!(
            note.as_deref(),
            Some("peer 198.18.0.1:6783 is this host's own address: skipped")
        );
        // Listening everywhere: a local address with the listen port is this
        // host (127.0.0.1 is local everywhere), other ports are not.
        let (peers, note) =
            super::parse_peer_list(&texts, "0.0.0.0:6783".parse().unwrap()).unwrap();
        assert!(
            !peers.contains(&PeerTarget::Addr("127.0.0.1:6783".parse().unwrap())),
            "{peers:?}"
        );
        assert!(note.unwrap().contains("127.0.0.1:6783"));
        let (peers, note) =
            super::parse_peer_list(&texts, "0.0.0.0:7000".parse().unwrap()).unwrap();
        assert_eq!(peers.len(), 3);
        assert_eq!(note, None);
    }

    use super::*;

    #[test]
    fn durations_parse_and_refuse_by_value() {
        assert_eq!(
            parse_duration("1h", "--x").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            parse_duration("90", "--x").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration("30m", "--x").unwrap(),
            Duration::from_secs(1800)
        );
        assert_eq!(
            parse_duration("2d", "--x").unwrap(),
            Duration::from_secs(172800)
        );
        for bad in ["", "h", "1y", "-1s", "99999999999999999999d"] {
            let e = parse_duration(bad, "--x").unwrap_err();
            assert!(e.contains("--x"), "{bad}: {e}");
        }
    }

    #[test]
    fn overlay_parsing() {
        assert_eq!(
            parse_overlay("10.40.0.1/16").unwrap(),
            ("10.40.0.1".parse().unwrap(), 16)
        );
        assert_eq!(parse_overlay("fd00::1/64").unwrap().1, 64);
        for bad in [
            "10.40.0.1",
            "10.40.0.1/33",
            "10.40.0.1/0",
            "x/16",
            "10.40.0.0/16",
            "10.40.255.255/16",
            "127.0.0.1/8",
            "",
        ] {
            let e = parse_overlay(bad).unwrap_err();
            assert!(e.contains("--overlay"), "{bad}: {e}");
        }
    }

    #[test]
    fn dual_stack_overlays() {
        let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let both = parse_overlays(&texts(&["fd40::1/64", "10.40.0.1/16"])).unwrap();
        assert_eq!(
            both,
            vec![
                ("10.40.0.1".parse().unwrap(), 16),
                ("fd40::1".parse().unwrap(), 64)
            ],
            "IPv4 first"
        );
        assert_eq!(overlays_text(&both), "10.40.0.1/16, fd40::1/64");
        assert_eq!(overlays_text(&[]), "none");
        assert!(parse_overlays(&[]).unwrap().is_empty());
        let e = parse_overlays(&texts(&["10.40.0.1/16", "10.41.0.1/16"])).unwrap_err();
        assert!(
            e.contains("10.41.0.1/16")
                && e.contains("10.40.0.1/16")
                && e.contains("one IPv4 and one IPv6"),
            "{e}"
        );
        assert!(parse_overlays(&texts(&["fd40::1/64", "fd41::1/64"])).is_err());
        assert!(parse_overlays(&texts(&["10.40.0.1/16", "nonsense"])).is_err());
    }

    #[test]
    fn peer_parsing() {
        assert_eq!(
            parse_peer("198.18.0.2:7000").unwrap(),
            "198.18.0.2:7000".parse().unwrap()
        );
        assert_eq!(parse_peer("198.18.0.2").unwrap().port(), DEFAULT_PORT);
        assert_eq!(parse_peer("[fd00::2]:6783").unwrap().port(), 6783);
        assert!(parse_peer("host.example:6783")
            .unwrap_err()
            .contains("--peer"));
        assert_eq!(
            parse_peer_target("host.example:6783").unwrap(),
            PeerTarget::Name {
                host: "host.example".into(),
                port: 6783
            }
        );
        assert!(parse_peer_target("a b")
            .unwrap_err()
            .starts_with("--peer \"a b\" is not an address"));
        assert!(parse_peer("198.18.0.2:0").is_err());
    }

    #[test]
    fn every_launch_flag_is_a_config_key() {
        use clap::Args;
        let cmd = LaunchArgs::augment_args(clap::Command::new("launch"));
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // Hidden test-only flags have no key.
            if long == "config" || arg.is_hide_set() {
                continue;
            }
            assert!(
                crate::config::KEYS.iter().any(|(k, _)| *k == long),
                "flag --{long} has no config key"
            );
        }
    }

    #[test]
    fn cipher_names() {
        assert_eq!(parse_cipher("auto").unwrap(), CipherChoice::Auto);
        assert!(parse_cipher("rot13").unwrap_err().contains("rot13"));
    }

    #[test]
    fn loopback_route_collides() {
        // 127.0.0.0/8 is always routed (but in the local table, not the
        // main one, so check something on the main table when one exists).
        let routes = crate::sys::Netlink::open()
            .and_then(|mut n| n.main_routes(false))
            .unwrap_or_default();
        if let Some(route) = routes.iter().find(|r| !r.is_default()) {
            let IpAddr::V4(dst) = route.dst else {
                unreachable!()
            };
            let ip = std::net::Ipv4Addr::from(u32::from(dst) | 1);
            assert!(overlapping_route(IpAddr::V4(ip), 24).is_some());
        }
        assert!(overlapping_route("10.213.77.1".parse().unwrap(), 24).is_none_or(|r| !r.is_empty()));
    }

    #[test]
    fn overlap_is_on_the_shorter_prefix() {
        let route = |dst: &str, prefix_len| crate::sys::Route {
            dst: dst.parse().unwrap(),
            prefix_len,
            oif: Some(2),
            gateway: None,
            metric: 0,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(overlaps(ip("10.40.0.1"), 16, &route("10.40.3.0", 24)));
        assert!(overlaps(ip("10.40.0.1"), 24, &route("10.0.0.0", 8)));
        assert!(!overlaps(ip("10.41.0.1"), 16, &route("10.40.0.0", 16)));
        assert!(!overlaps(ip("10.40.0.1"), 16, &route("fd00::", 64)));
        assert!(overlaps(ip("fd00:1::1"), 64, &route("fd00::", 16)));
        assert!(!overlaps(ip("fd01::1"), 64, &route("fd00::", 16)));
        assert!(ignored_route(&route("fe80::", 64)));
        assert!(ignored_route(&route("ff00::", 8)));
        assert!(!ignored_route(&route("fd00::", 64)));
    }
}
