//! `weft preflight`: read the host, decide the datapath, say why.
//!
//! `run` is a thin printer around [`plan_for`] (gather + decide) and the
//! renderers [`render_text`] / [`render_json`], so tests check the output
//! without spawning the binary.

use super::facts::{Assumptions, Facts, UnderlaySelector};
use super::plan::{decide, Plan, Request};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

/// Smallest MTU accepted by `--assume-mtu` (the IPv4 minimum, RFC 791).
pub const MIN_ASSUMED_MTU: u32 = 68;
/// Largest MTU accepted by `--assume-mtu` (Linux loopback's 65536).
pub const MAX_ASSUMED_MTU: u32 = 65536;

/// `on` / `off` for `--assume-ufo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// The feature is on.
    On,
    /// The feature is off.
    Off,
}

/// `yes` / `no` for `--assume-ovs` and `--assume-xdp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum YesNo {
    /// Available.
    Yes,
    /// Not available.
    No,
}

/// Arguments of `weft preflight`.
///
/// Reads the host (kernel release, underlay interface, its MTU and offloads,
/// the kernel OVS datapath, AF_XDP, TUN) and prints each check, the chosen
/// datapath (fastdp, xdp or udp), the overlay MTU and warnings with a concrete
/// fix. Exit status: 0 when a datapath can run, 1 when none can, 2 on bad
/// arguments. Nothing is sent on the network; a TUN device named weftpf* exists
/// for a moment while its offloads are tried.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct PreflightArgs {
    /// Print one JSON object {datapath, overlay_mtu, runnable, checks: [{name, passed, detail}], warnings, reasons} instead of text.
    #[arg(long)]
    pub json: bool,

    /// Underlay interface to check (default: the interface of the IPv4 default route).
    #[arg(long, value_name = "IF", conflicts_with = "peer")]
    pub underlay_iface: Option<String>,

    /// Use the interface the kernel would route to this peer through (IP or IP:port; nothing is sent).
    #[arg(long, value_name = "ADDR", value_parser = parse_peer)]
    pub peer: Option<IpAddr>,

    /// Pretend the kernel release is RELEASE (e.g. 3.10.0-327.10.1.el7.x86_64) to see what weft would do there.
    #[arg(long, value_name = "RELEASE")]
    pub assume_kernel: Option<String>,

    /// Pretend the kernel build string (`uname -v`) is BUILD; Debian names the stable patch level there (e.g. "#1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-22)").
    #[arg(long, value_name = "BUILD")]
    pub assume_kernel_build: Option<String>,

    /// Pretend the underlay MTU is N (68..=65536).
    #[arg(long, value_name = "N", value_parser = parse_mtu)]
    pub assume_mtu: Option<u32>,

    /// Pretend UDP fragmentation offload (UFO) is on or off on the underlay interface.
    #[arg(long, value_name = "on|off")]
    pub assume_ufo: Option<OnOff>,

    /// Pretend the kernel OVS datapath (genetlink family ovs_datapath) is present or not.
    #[arg(long, value_name = "yes|no")]
    pub assume_ovs: Option<YesNo>,

    /// Pretend an AF_XDP socket can be opened or not.
    #[arg(long, value_name = "yes|no")]
    pub assume_xdp: Option<YesNo>,
}

/// Parses `--peer`: an IP address, optionally with a port.
fn parse_peer(text: &str) -> Result<IpAddr, String> {
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .map_err(|_| {
            format!("{text:?} is not an IP address (expected e.g. 198.18.0.2 or [fd00::2]:6783)")
        })
}

/// Parses `--assume-mtu` with a message that says the accepted range.
fn parse_mtu(text: &str) -> Result<u32, String> {
    let mtu: u32 = text.parse().map_err(|_| {
        format!(
            "{text:?} is not a number; an MTU is between {MIN_ASSUMED_MTU} and {MAX_ASSUMED_MTU}"
        )
    })?;
    check_mtu(mtu)
}

fn check_mtu(mtu: u32) -> Result<u32, String> {
    if (MIN_ASSUMED_MTU..=MAX_ASSUMED_MTU).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(format!(
            "MTU {mtu} is out of range: an MTU is between {MIN_ASSUMED_MTU} and {MAX_ASSUMED_MTU}"
        ))
    }
}

impl PreflightArgs {
    /// The underlay selector these arguments ask for; `Err` on contradictory
    /// arguments (clap already rejects them when parsing a command line).
    pub fn underlay(&self) -> Result<UnderlaySelector, String> {
        match (&self.underlay_iface, self.peer) {
            (Some(_), Some(_)) => {
                Err("--underlay-iface and --peer cannot be used together".to_string())
            }
            (Some(iface), None) => Ok(UnderlaySelector::Iface(iface.clone())),
            (None, Some(peer)) => Ok(UnderlaySelector::Peer(peer)),
            (None, None) => Ok(UnderlaySelector::DefaultRoute),
        }
    }

    /// The `--assume-*` overrides; `Err` on a value out of range.
    pub fn assumptions(&self) -> Result<Assumptions, String> {
        Ok(Assumptions {
            kernel: self.assume_kernel.clone(),
            kernel_build: self.assume_kernel_build.clone(),
            mtu: self.assume_mtu.map(check_mtu).transpose()?,
            ufo: self.assume_ufo.map(|v| v == OnOff::On),
            ovs: self.assume_ovs.map(|v| v == YesNo::Yes),
            xdp: self.assume_xdp.map(|v| v == YesNo::Yes),
        })
    }
}

/// Gathers the facts, applies the assumptions and decides, for weft's
/// default network (encrypted, L3). `Err` means bad arguments (exit 2).
/// `weft launch` should call `Facts::gather` + `decide` with its own `Request`.
pub fn plan_for(args: &PreflightArgs) -> Result<Plan, String> {
    let underlay = args.underlay()?;
    let assumptions = args.assumptions()?;
    let mut facts = Facts::gather(underlay);
    facts.apply(&assumptions);
    Ok(decide(&facts, &Request::default()))
}

/// Runs `weft preflight`: prints the report, returns 0 (runnable), 1 (none
/// runnable) or 2 (bad arguments).
pub fn run(args: &PreflightArgs) -> ExitCode {
    let plan = match plan_for(args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("weft preflight: {message}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&render_json(&plan))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        );
    } else {
        print!("{}", render_text(&plan));
    }
    ExitCode::from(exit_code(&plan))
}

/// 0 when a datapath can run, 1 when none can.
pub fn exit_code(plan: &Plan) -> u8 {
    if plan.runnable {
        0
    } else {
        1
    }
}

/// The report as lines: one per check, then the decision, reasons and warnings.
pub fn log_lines(plan: &Plan) -> Vec<String> {
    let mut lines = Vec::new();
    for check in &plan.checks {
        let status = if check.passed { "ok" } else { "no" };
        lines.push(format!(
            "check  {:<15} {:<5} {}",
            check.name, status, check.detail
        ));
    }
    let mtu = plan
        .overlay_mtu
        .map_or_else(|| "unknown".to_string(), |m| m.to_string());
    if plan.runnable {
        lines.push(format!(
            "decision  datapath {}, overlay mtu {mtu}",
            plan.datapath
        ));
    } else {
        lines.push(format!("decision  no datapath can run (overlay mtu {mtu})"));
    }
    let allowed: Vec<&str> = plan.host_allows.iter().map(|d| d.name()).collect();
    let allowed = if allowed.is_empty() {
        "none".to_string()
    } else {
        allowed.join(", ")
    };
    lines.push(format!("allowed   {allowed} (by this host)"));
    for reason in &plan.reasons {
        lines.push(format!("reason    {reason}"));
    }
    if plan.runnable && plan.datapath == super::plan::Datapath::Xdp {
        lines.push(format!(
            "opt-in    xdp attaches an XDP program to the underlay interface: `weft launch --mode auto` uses it only with {}, otherwise udp",
            super::plan::XDP_OPT_IN
        ));
    }
    for warning in &plan.warnings {
        lines.push(format!("warning   {warning}"));
    }
    lines
}

/// The human-readable report (what `weft preflight` prints).
pub fn render_text(plan: &Plan) -> String {
    let mut text = log_lines(plan).join("\n");
    text.push('\n');
    text
}

/// The `--json` report.
pub fn render_json(plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "datapath": plan.datapath,
        "overlay_mtu": plan.overlay_mtu,
        "runnable": plan.runnable,
        "host_allows": plan.host_allows,
        "checks": plan.checks,
        "warnings": plan.warnings,
        "reasons": plan.reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::Offload;
    use crate::host::known_issues::tests::facts;
    use crate::host::plan::Datapath;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PreflightArgs,
    }

    fn parse(argv: &[&str]) -> Result<PreflightArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("preflight").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn parses_every_flag() {
        let args = parse(&[
            "--json",
            "--underlay-iface",
            "eth0",
            "--assume-kernel",
            "4.4.0",
            "--assume-mtu",
            "9000",
            "--assume-ufo",
            "on",
            "--assume-ovs",
            "yes",
            "--assume-xdp",
            "no",
        ])
        .unwrap();
        assert!(args.json);
        assert_eq!(
            args.underlay().unwrap(),
            UnderlaySelector::Iface("eth0".into())
        );
        let a = args.assumptions().unwrap();
        assert_eq!(
            (a.kernel.as_deref(), a.mtu, a.ufo, a.ovs, a.xdp),
            (
                Some("4.4.0"),
                Some(9000),
                Some(true),
                Some(true),
                Some(false)
            )
        );
        let args = parse(&["--peer", "198.18.0.2:6783"]).unwrap();
        assert_eq!(
            args.underlay().unwrap(),
            UnderlaySelector::Peer("198.18.0.2".parse().unwrap())
        );
        assert_eq!(
            parse(&[]).unwrap().underlay().unwrap(),
            UnderlaySelector::DefaultRoute
        );
    }

    #[test]
    fn bad_arguments_exit_2_with_clear_messages() {
        let e = parse(&["--underlay-iface", "eth0", "--peer", "198.18.0.2"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["--assume-mtu", "0"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("between 68 and 65536"), "{e}");
        assert_eq!(parse(&["--assume-mtu", "x"]).unwrap_err().exit_code(), 2);
        assert_eq!(
            parse(&["--assume-ufo", "maybe"]).unwrap_err().exit_code(),
            2
        );
        assert!(parse(&["--peer", "host.example"])
            .unwrap_err()
            .to_string()
            .contains("not an IP address"));
        // Constructed programmatically, the same checks hold.
        let args = PreflightArgs {
            assume_mtu: Some(0),
            ..Default::default()
        };
        assert!(plan_for(&args).unwrap_err().contains("out of range"));
    }

    #[test]
    fn text_report_is_aligned_and_complete() {
        let plan = decide(
            &facts("3.10.0-327.10.1.el7.x86_64", 1450, Offload::Off),
            &Request::default(),
        );
        let text = render_text(&plan);
        assert!(
            text.contains("check  kernel          ok    3.10.0-327.10.1.el7.x86_64 (upstream 3.10.0, el7 build 327.10.1, test)"),
            "{text}"
        );
        assert!(
            text.contains(
                "check  known-issue     no    vxlan-df-heartbeat-dropped: kernel 3.10.0-327.10.1"
            ),
            "{text}"
        );
        assert!(
            text.contains("decision  datapath xdp, overlay mtu 1380"),
            "{text}"
        );
        assert!(
            text.contains("warning   vxlan-df-heartbeat-dropped:"),
            "{text}"
        );
        assert!(
            text.contains("raise the underlay MTU of eth0 to 1500"),
            "{text}"
        );
        assert_eq!(log_lines(&plan).len(), text.lines().count());
        assert_eq!(exit_code(&plan), 0);
    }

    #[test]
    fn json_report_has_the_promised_fields() {
        let plan = decide(
            &facts("6.1.0-56-amd64", 600, Offload::Off),
            &Request::default(),
        );
        let json = render_json(&plan);
        assert_eq!(json["datapath"], "xdp");
        assert_eq!(json["overlay_mtu"], 530);
        assert_eq!(json["runnable"], false);
        let checks = json["checks"].as_array().unwrap();
        assert!(checks
            .iter()
            .all(|c| c["name"].is_string() && c["passed"].is_boolean() && c["detail"].is_string()));
        assert!(json["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("raise the underlay MTU")));
        assert!(json["reasons"].is_array());
        assert_eq!(exit_code(&plan), 1);
    }

    #[test]
    fn preflight_on_loopback_with_assumptions() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root for the TUN probe");
            return;
        }
        let _guard = crate::host::facts::tests::GATHER_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let args = parse(&[
            "--underlay-iface",
            "lo",
            "--assume-mtu",
            "1500",
            "--assume-xdp",
            "no",
            "--assume-ovs",
            "no",
        ])
        .unwrap();
        let plan = plan_for(&args).unwrap();
        assert!(plan.runnable, "{}", render_text(&plan));
        assert_eq!(plan.datapath, Datapath::Udp);
        assert_eq!(plan.overlay_mtu, Some(1430));
        let args = parse(&["--underlay-iface", "lo", "--assume-mtu", "100"]).unwrap();
        assert_eq!(exit_code(&plan_for(&args).unwrap()), 1);
    }
}
