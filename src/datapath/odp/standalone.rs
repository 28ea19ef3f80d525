//! `weft fastdp`: drive a kernel OVS datapath with weft's own netlink code.
//!
//! `weft fastdp run` is the fast datapath without weft's control plane:
//! plaintext VXLAN to a static list of peers, MAC learning on misses, flow
//! installation and idle expiry. It exists to exercise and debug the
//! kernel datapath on its own (tests/vm runs it against a real
//! openvswitch module); `weft fastdp flows` and `weft fastdp stats` inspect
//! a running datapath from another process.

use super::attr::FlowKey;
use super::datapath::{Datapath, LOCAL_PORT};
use super::switch::{Switch, SwitchConfig};
use clap::{Args, Subcommand};
use std::collections::HashMap;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `weft fastdp ...`.
#[derive(Args, Debug)]
pub struct FastdpArgs {
    #[command(subcommand)]
    command: FastdpCommand,
}

#[derive(Subcommand, Debug)]
enum FastdpCommand {
    /// Create datapath IFACE with a VXLAN vport and forward between the local device and static peers until SIGTERM (plaintext, no control plane).
    Run {
        /// Datapath and local device name.
        #[arg(long, default_value = "weft")]
        iface: String,
        /// UDP port of the VXLAN vport (weft's fastdp port).
        #[arg(long, default_value_t = 6784)]
        port: u16,
        /// VXLAN network identifier.
        #[arg(long, default_value_t = 1)]
        vni: u32,
        /// Underlay address of a peer, IPv4 or IPv6 (repeat for each peer; IPv6 tunnels need Linux 4.4+).
        #[arg(long = "peer", value_name = "IP")]
        peers: Vec<IpAddr>,
        /// Delete flows that matched nothing for this long.
        #[arg(long, default_value_t = 10)]
        flow_idle_secs: u64,
        /// Where to write counters (JSON) on exit.
        #[arg(long)]
        counters_file: Option<std::path::PathBuf>,
        /// Run even on a kernel with a known issue that rules the fast datapath out (weft's exit may then hang on the kernel; it gives up after a deadline).
        #[arg(long)]
        force: bool,
    },
    /// Delete datapath IFACE (e.g. one left behind by a killed weft); weft runs this in a child process so that a kernel that never completes the deletion cannot hang weft itself.
    Delete {
        /// Datapath name.
        #[arg(long, default_value = "weft")]
        iface: String,
    },
    /// Print the flows of datapath IFACE with their packet counts.
    Flows {
        /// Datapath name.
        #[arg(long, default_value = "weft")]
        iface: String,
    },
    /// Print the hit/missed/lost counters of datapath IFACE.
    Stats {
        /// Datapath name.
        #[arg(long, default_value = "weft")]
        iface: String,
    },
}

/// Entry point of `weft fastdp`.
pub fn run(args: &FastdpArgs) -> ExitCode {
    let result = match &args.command {
        FastdpCommand::Run {
            iface,
            port,
            vni,
            peers,
            flow_idle_secs,
            counters_file,
            force,
        } => refuse_known_bad_kernel(*force, peers.iter().any(|p| p.to_canonical().is_ipv6()))
            .and_then(|()| {
                run_switch(
                    iface,
                    *port,
                    *vni,
                    peers,
                    Duration::from_secs(*flow_idle_secs),
                    counters_file.as_deref(),
                )
                .map_err(Refusal::from)
            }),
        FastdpCommand::Delete { iface } => {
            super::datapath::delete_command(iface).map_err(Refusal::from)
        }
        FastdpCommand::Flows { iface } => print_flows(iface).map_err(Refusal::from),
        FastdpCommand::Stats { iface } => print_stats(iface).map_err(Refusal::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Refusal::Usage(e)) => {
            eprintln!("weft fastdp: {e}");
            ExitCode::from(2)
        }
        Err(Refusal::Failed(e)) => {
            eprintln!("weft fastdp: {e}");
            ExitCode::from(1)
        }
    }
}

/// How `weft fastdp` fails: refused before touching the kernel (exit 2),
/// or failed while running (exit 1).
enum Refusal {
    Usage(String),
    Failed(String),
}

impl From<String> for Refusal {
    fn from(e: String) -> Self {
        Refusal::Failed(e)
    }
}

/// Refuses to create a datapath on a kernel whose known issues rule the
/// fast datapath out whatever the configuration, or for IPv6 peers
/// (`ipv6_peers`) where the kernel has no IPv6 tunnels, unless forced
/// (then warns).
fn refuse_known_bad_kernel(force: bool, ipv6_peers: bool) -> Result<(), Refusal> {
    use crate::host::known_issues::{ipv6_underlay_blockers, kernel_blockers};
    use crate::host::plan::Datapath::Fastdp;
    let release = crate::host::facts::running_kernel().map_err(|e| {
        Refusal::Usage(format!(
            "{e}: known kernel issues cannot be ruled out; pass --force to run anyway"
        ))
    })?;
    let mut blockers = kernel_blockers(&release, Fastdp);
    if ipv6_peers {
        blockers.extend(ipv6_underlay_blockers(&release, Fastdp));
    }
    let Some(issue) = blockers.first() else {
        return Ok(());
    };
    let what = format!(
        "kernel {} ({}) has known issue {}: {}",
        release.raw,
        release.describe(),
        issue.id,
        issue.consequence
    );
    if force {
        eprintln!(
            "weft fastdp: warning: --force: {what}; exit may hang on the kernel: weft gives up on the deletion after {} s",
            super::datapath::DELETE_DEADLINE.as_secs()
        );
        Ok(())
    } else {
        Err(Refusal::Usage(format!(
            "refused: {what}; fix: {}; or pass --force",
            issue.mitigation
        )))
    }
}

fn print_flows(iface: &str) -> Result<(), String> {
    let mut dp = Datapath::open_existing(iface)?;
    for flow in dp.dump_flows().map_err(|e| e.to_string())? {
        let actions: Vec<String> = flow.actions.iter().map(|a| a.to_string()).collect();
        let actions = if actions.is_empty() {
            "drop".to_string()
        } else {
            actions.join(",")
        };
        println!(
            "in_port({}),eth(src={},dst={}) packets:{} bytes:{} actions:{}",
            flow.key.in_port, flow.key.eth_src, flow.key.eth_dst, flow.packets, flow.bytes, actions
        );
    }
    Ok(())
}

fn print_stats(iface: &str) -> Result<(), String> {
    let mut dp = Datapath::open_existing(iface)?;
    let s = dp.stats().map_err(|e| e.to_string())?;
    println!(
        "hit:{} missed:{} lost:{} flows:{}",
        s.hit, s.missed, s.lost, s.flows
    );
    Ok(())
}

/// Per flow (in_port, eth src, eth dst): packet count at the last sweep and
/// when it last changed.
pub type FlowActivity = HashMap<(u32, [u8; 6], [u8; 6]), (u64, Instant)>;

/// What the userspace side did: every miss is a packet weft handled itself.
#[derive(Debug, Default, serde::Serialize)]
struct Counters {
    misses: u64,
    executed: u64,
    flows_installed: u64,
    flows_expired: u64,
    flushes: u64,
    errors: u64,
}

fn run_switch(
    iface: &str,
    port: u16,
    vni: u32,
    peers: &[IpAddr],
    flow_idle: Duration,
    counters_file: Option<&std::path::Path>,
) -> Result<(), String> {
    // An IPv4 peer written as an IPv4-mapped IPv6 address is an IPv4 peer.
    let peers: Vec<IpAddr> = peers.iter().map(|p| p.to_canonical()).collect();
    if let Some(bad) = peers
        .iter()
        .find(|p| !super::datapath::is_tunnel_destination(**p))
    {
        return Err(format!(
            "--peer {bad} is not a unicast address a tunnel can be sent to"
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let mut dp = Datapath::create(iface, port)?;
    eprintln!(
        "weft fastdp: datapath {iface} up: local port {LOCAL_PORT} ({iface}), VXLAN vport {} on UDP {port}, vni {vni}, {} peer(s)",
        dp.vxlan_port(),
        peers.len()
    );
    let mut switch = Switch::new(SwitchConfig {
        vni,
        vxlan_port: dp.vxlan_port(),
        ttl: 64,
        mac_max_age: Duration::from_secs(300),
    });
    switch.set_peers(peers.to_vec());
    // Static peers: no proof, every peer is sent to.
    switch.set_sending(peers.to_vec());
    let mut counters = Counters::default();
    let mut activity = FlowActivity::new();
    let mut next_sweep = Instant::now() + Duration::from_secs(1);
    while !stop.load(Ordering::Relaxed) {
        let misses = dp.receive_misses(200).map_err(|e| e.to_string())?;
        let now = Instant::now();
        for miss in misses {
            counters.misses += 1;
            let decision = switch.on_miss(&miss.key, now);
            if decision.flush {
                match dp.flush_flows() {
                    Ok(()) => counters.flushes += 1,
                    Err(e) => {
                        counters.errors += 1;
                        tracing::warn!("{e}");
                    }
                }
                activity.clear();
            }
            if let Some(key) = decision.flow {
                match dp.install_flow(&key, &decision.actions) {
                    Ok(()) => counters.flows_installed += 1,
                    // EEXIST: two misses of one flow raced; the first installed it.
                    Err(e) if e.errno() == Some(libc::EEXIST) => {}
                    Err(e) => {
                        counters.errors += 1;
                        eprintln!("weft fastdp: {e}");
                    }
                }
            }
            if !decision.actions.is_empty() {
                match dp.execute(&miss.packet, &miss.key_raw, &decision.actions) {
                    Ok(()) => counters.executed += 1,
                    Err(e) => {
                        counters.errors += 1;
                        eprintln!("weft fastdp: {e}");
                    }
                }
            }
        }
        if now >= next_sweep {
            next_sweep = now + Duration::from_secs(1);
            switch.expire(now);
            counters.flows_expired += sweep_idle_flows(&mut dp, &mut activity, flow_idle, now);
        }
    }
    if let Some(path) = counters_file {
        let json = serde_json::to_string(&counters).unwrap_or_default();
        std::fs::write(path, json)
            .map_err(|e| format!("writing counters to {}: {e}", path.display()))?;
    }
    eprintln!("weft fastdp: stopping, {counters:?}");
    dp.delete().map_err(|e| e.to_string())
}

/// Deletes flows whose packet count has not moved for `idle`.
pub fn sweep_idle_flows(
    dp: &mut Datapath,
    activity: &mut FlowActivity,
    idle: Duration,
    now: Instant,
) -> u64 {
    let Ok(flows) = dp.dump_flows() else { return 0 };
    let mut expired = 0;
    let mut seen = HashMap::new();
    for flow in flows {
        let id = (flow.key.in_port, flow.key.eth_src.0, flow.key.eth_dst.0);
        let (last_packets, last_change) = activity.get(&id).copied().unwrap_or((u64::MAX, now));
        let last_change = if flow.packets != last_packets {
            now
        } else {
            last_change
        };
        if now.saturating_duration_since(last_change) >= idle {
            let key = FlowKey {
                ethertype: None,
                tunnel: None,
                ..flow.key
            };
            if dp.delete_flow(&key).is_ok() {
                expired += 1;
            }
            continue;
        }
        seen.insert(id, (flow.packets, last_change));
    }
    *activity = seen;
    expired
}
