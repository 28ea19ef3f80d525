//! The datapath decision: a pure function from [`Facts`] and a [`Request`]
//! to a [`Plan`] that says what runs, at which overlay MTU, and why.

use super::facts::{Facts, Offload, Tri};
use super::kernel::KernelRelease;
use super::known_issues::{self, Condition, KNOWN_ISSUES};
use crate::wire::overhead::{self, Framing};
use serde::Serialize;
use std::fmt;

/// How packets leave the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// The kernel Open vSwitch datapath with a VXLAN vport (plaintext only).
    Fastdp,
    /// Userspace frames through an AF_XDP socket on the underlay interface.
    Xdp,
    /// Userspace frames through an ordinary UDP socket (the sleeve).
    Udp,
}

impl Datapath {
    /// Best first: the order preflight prefers when a datapath is allowed.
    pub const PREFERENCE: [Datapath; 3] = [Datapath::Fastdp, Datapath::Xdp, Datapath::Udp];

    /// The lowercase name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Datapath::Fastdp => "fastdp",
            Datapath::Xdp => "xdp",
            Datapath::Udp => "udp",
        }
    }
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the network asks of this host (from the launch configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The network is encrypted (Noise sleeve); false = plaintext VXLAN.
    pub encrypted: bool,
    /// Some links may still use the encrypted sleeve although the network
    /// allows plaintext (`--trusted-subnet`: peers outside the subnets; and
    /// fastdp falls back to the sleeve): the overlay MTU must then fit the
    /// sleeve's overhead, since one device MTU serves every link.
    pub sleeve_possible: bool,
    /// Bridge (L2, TAP) mode: frames carry an inner Ethernet header.
    pub l2: bool,
    /// The overlay carries IPv6, which needs an overlay MTU of at least 1280.
    pub overlay_ipv6: bool,
}

impl Default for Request {
    /// weft's default network: encrypted, L3 (TUN), IPv4 inside.
    fn default() -> Self {
        Request {
            encrypted: true,
            sleeve_possible: true,
            l2: false,
            overlay_ipv6: false,
        }
    }
}

/// One line of preflight output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name (`kernel`, `underlay-mtu`, `known-issue`, ...).
    pub name: String,
    /// Whether the finding is good for weft.
    pub passed: bool,
    /// The finding, in words.
    pub detail: String,
}

/// A datapath the host does not allow, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The datapath ruled out.
    pub datapath: Datapath,
    /// Why, in words an operator can act on.
    pub reason: String,
}

/// The outcome of preflight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The chosen datapath. When `runnable` is false this is the datapath
    /// weft would have used had the blocking problem not existed.
    pub datapath: Datapath,
    /// Overlay (TUN/TAP) MTU; `None` when the underlay MTU is unknown or
    /// smaller than the encapsulation overhead.
    pub overlay_mtu: Option<u16>,
    /// Whether weft can run at all.
    pub runnable: bool,
    /// Whether the underlay MTU is known and leaves a usable overlay MTU
    /// (no datapath, forced or not, can run without it).
    pub mtu_usable: bool,
    /// Whether the request was for an encrypted network (fastdp never is).
    pub encrypted: bool,
    /// Datapaths the host itself allows (regardless of encryption), best first.
    pub host_allows: Vec<Datapath>,
    /// Datapaths the host rules out, with reasons.
    pub rejected: Vec<Rejection>,
    /// Every check, in output order.
    pub checks: Vec<Check>,
    /// Problems with a concrete fix each.
    pub warnings: Vec<String>,
    /// Why the decision is what it is.
    pub reasons: Vec<String>,
}

/// The framing a request uses on the wire.
fn framing(encrypted: bool) -> Framing {
    if encrypted {
        Framing::Sleeve
    } else {
        Framing::PlainVxlan
    }
}

/// Plaintext is standard VXLAN, which is bridge-only (and fastdp always
/// carries Ethernet frames), so the inner Ethernet header always counts there.
fn carries_ethernet(l2: bool, encrypted: bool) -> bool {
    l2 || !encrypted
}

/// The overlay MTU for an underlay MTU, by the overhead math in
/// `wire::overhead` (1500 -> 1430 encrypted L3, 1416 encrypted L2, 1450
/// plaintext VXLAN). Takes `u32` because interface MTUs can exceed 65535
/// (loopback has 65536); those are clamped to 65535. `None` if the underlay
/// MTU cannot carry anything.
pub fn overlay_mtu(underlay_mtu: u32, ipv6: bool, l2: bool, encrypted: bool) -> Option<u16> {
    let underlay = u16::try_from(underlay_mtu).unwrap_or(u16::MAX);
    overhead::overlay_mtu(
        underlay,
        framing(encrypted),
        ipv6,
        carries_ethernet(l2, encrypted),
    )
}

/// Bytes added to each overlay packet on the underlay (see [`overlay_mtu`]).
pub fn encapsulation_overhead(ipv6: bool, l2: bool, encrypted: bool) -> u32 {
    let ethernet = if carries_ethernet(l2, encrypted) {
        overhead::ETHERNET_HEADER
    } else {
        0
    };
    u32::from(overhead::datagram_overhead(framing(encrypted), ipv6)) + u32::from(ethernet)
}

/// The smallest overlay MTU an IP overlay may have (RFC 791 / RFC 8200).
pub fn minimum_overlay_mtu(overlay_ipv6: bool) -> u16 {
    if overlay_ipv6 {
        overhead::MIN_OVERLAY_MTU_IPV6
    } else {
        overhead::MIN_OVERLAY_MTU_IPV4
    }
}

/// Decides the datapath and overlay MTU from the facts. Pure.
pub fn decide(facts: &Facts, request: &Request) -> Plan {
    let mut checks = Vec::new();
    let mut warnings = Vec::new();
    let mut reasons = Vec::new();
    let mut rejected: Vec<Rejection> = Vec::new();
    let mut reject = |datapath: Datapath, reason: String| {
        if !rejected
            .iter()
            .any(|r| r.datapath == datapath && r.reason == reason)
        {
            rejected.push(Rejection { datapath, reason });
        }
    };
    let check = |name: &str, passed: bool, detail: String| Check {
        name: name.to_string(),
        passed,
        detail,
    };
    let iface = facts
        .underlay_iface
        .as_deref()
        .unwrap_or("<underlay interface>");

    // Kernel release.
    let release = KernelRelease::parse_with_build(&facts.kernel_release, &facts.kernel_build);
    match &release {
        Ok(release) => {
            let source = if facts.kernel_source == "uname" {
                String::new()
            } else {
                format!(", {}", facts.kernel_source)
            };
            checks.push(check(
                "kernel",
                true,
                format!("{} ({}{source})", release.raw, release.describe()),
            ));
        }
        Err(e) => {
            checks.push(check(
                "kernel",
                false,
                format!("{e}: known kernel issues cannot be ruled out"),
            ));
            reject(
                Datapath::Fastdp,
                format!(
                    "kernel release unknown ({e}): treated conservatively, no kernel fast datapath"
                ),
            );
        }
    }

    // Underlay interface and MTU.
    match &facts.underlay_iface {
        Ok(name) => checks.push(check(
            "underlay",
            true,
            format!("{name} ({})", facts.underlay_source),
        )),
        Err(why) => {
            checks.push(check(
                "underlay",
                false,
                format!("{why} ({})", facts.underlay_source),
            ));
            warnings.push(format!(
                "underlay interface not found: {why}; fix: pass --underlay-iface IF or --peer ADDR"
            ));
        }
    }
    let floor = minimum_overlay_mtu(request.overlay_ipv6);
    // The framing with the largest overhead any link may use.
    let mtu_framing_encrypted = request.encrypted || request.sleeve_possible;
    let overlay =
        facts.underlay_mtu.as_ref().ok().and_then(|mtu| {
            overlay_mtu(*mtu, facts.underlay_ipv6, request.l2, mtu_framing_encrypted)
        });
    let mtu_ok = match (&facts.underlay_mtu, overlay) {
        (Ok(mtu), Some(overlay)) if overlay >= floor => {
            checks.push(check("underlay-mtu", true, format!("{mtu} on {iface}")));
            true
        }
        (Ok(mtu), _) => {
            let needed = u32::from(floor)
                + encapsulation_overhead(facts.underlay_ipv6, request.l2, mtu_framing_encrypted);
            let inner = if request.overlay_ipv6 { "IPv6" } else { "IPv4" };
            checks.push(check(
                "underlay-mtu",
                false,
                format!(
                    "{mtu} on {iface} leaves overlay MTU {} (< {floor} for {inner})",
                    overlay.map_or(0, u32::from)
                ),
            ));
            warnings.push(format!(
                "the underlay MTU {mtu} of {iface} is too small for any overlay; fix: raise the underlay MTU of {iface} to at least {needed} (ip link set dev {iface} mtu 1500)"
            ));
            reasons.push(format!(
                "no datapath can run: an overlay MTU below {floor} cannot carry {inner} traffic"
            ));
            false
        }
        (Err(why), _) => {
            checks.push(check("underlay-mtu", false, why.clone()));
            warnings.push(format!("cannot read the underlay MTU: {why}; fix: check the interface, or pass --assume-mtu N"));
            reasons.push("no datapath can run: the underlay MTU is unknown, and weft never sends a datagram larger than it".to_string());
            false
        }
    };

    // Offloads. UFO on is only a problem where a known issue says so.
    let issue_matches = release
        .as_ref()
        .ok()
        .map(|r| known_issues::evaluate_release(r, facts));
    let ufo_bites = issue_matches
        .iter()
        .flatten()
        .any(|m| m.issue.condition == Condition::UfoOn);
    let ufo_detail = if facts.ufo.state == Offload::On && !ufo_bites {
        format!(
            "{} (no known issue with UFO on this kernel)",
            facts.ufo.detail
        )
    } else {
        facts.ufo.detail.clone()
    };
    checks.push(check("ufo", !ufo_bites, ufo_detail));
    checks.push(check(
        "udp-gso",
        true,
        format!("{}; {}", facts.uso.detail, facts.gso.detail),
    ));

    // Capabilities.
    checks.push(check(
        "ovs-datapath",
        facts.ovs_datapath.state == Tri::Yes,
        facts.ovs_datapath.detail.clone(),
    ));
    checks.push(check(
        "af-xdp",
        facts.af_xdp.state == Tri::Yes,
        facts.af_xdp.detail.clone(),
    ));
    if let Some(driver) = &facts.underlay_driver {
        let zc = if COPY_ONLY_DRIVERS.contains(&driver.as_str()) {
            "AF_XDP copy mode only"
        } else {
            "may support AF_XDP zero-copy"
        };
        checks.push(check("driver", true, format!("{driver} ({zc})")));
    }
    checks.push(check(
        "tun",
        facts.tun.state == Tri::Yes,
        facts.tun.detail.clone(),
    ));
    let offload_detail = format!("{}; {}", facts.tun_offloads.detail, facts.tun_uso.detail);
    checks.push(check(
        "tun-offloads",
        facts.tun_offloads.state == Tri::Yes,
        offload_detail,
    ));
    if facts.tun.state == Tri::Yes && facts.tun_offloads.state != Tri::Yes {
        warnings.push(format!(
            "the TUN device refuses segmentation offloads ({}): every packet crosses the TUN singly, which is slower; fix: a kernel with TUNSETOFFLOAD support (2.6.27+; USO needs 6.2+)",
            facts.tun_offloads.detail
        ));
    }
    if facts.ovs_datapath.state != Tri::Yes {
        reject(
            Datapath::Fastdp,
            format!(
                "kernel OVS datapath unavailable: {}",
                facts.ovs_datapath.detail
            ),
        );
    }
    if facts.af_xdp.state != Tri::Yes {
        reject(
            Datapath::Xdp,
            format!("AF_XDP unavailable: {}", facts.af_xdp.detail),
        );
    }
    if facts.tun.state != Tri::Yes {
        let reason = format!("no TUN device for the local side: {}", facts.tun.detail);
        reject(Datapath::Xdp, reason.clone());
        reject(Datapath::Udp, reason);
        warnings.push(format!(
            "/dev/net/tun does not work: {}; fix: run as root with CONFIG_TUN (modprobe tun)",
            facts.tun.detail
        ));
    }

    // Known kernel issues.
    if let Some(matches) = issue_matches {
        if matches.is_empty() {
            checks.push(check(
                "known-issues",
                true,
                format!(
                    "none of the {} known kernel issues apply",
                    KNOWN_ISSUES.len()
                ),
            ));
        }
        for m in &matches {
            let ruled_out: Vec<&str> = m.issue.rules_out.iter().map(|d| d.name()).collect();
            checks.push(check(
                "known-issue",
                false,
                format!(
                    "{}: {}; {} (rules out {}; source: {})",
                    m.issue.id,
                    m.why,
                    m.issue.consequence,
                    ruled_out.join(", "),
                    m.issue.source
                ),
            ));
            warnings.push(format!(
                "{}: {}; fix: {}",
                m.issue.id, m.issue.consequence, m.mitigation
            ));
            for datapath in m.issue.rules_out {
                reject(
                    *datapath,
                    format!(
                        "known kernel issue {} ({}): {}",
                        m.issue.id, m.issue.consequence, m.why
                    ),
                );
            }
        }
    } else {
        checks.push(check(
            "known-issues",
            false,
            "not evaluated: kernel release unparsable".to_string(),
        ));
    }

    // The decision.
    let host_allows: Vec<Datapath> = Datapath::PREFERENCE
        .into_iter()
        .filter(|d| !rejected.iter().any(|r| r.datapath == *d))
        .collect();
    let mut chosen = None;
    for datapath in Datapath::PREFERENCE {
        if !host_allows.contains(&datapath) {
            for r in rejected.iter().filter(|r| r.datapath == datapath) {
                reasons.push(format!("{datapath} not used: {}", r.reason));
            }
            continue;
        }
        if datapath == Datapath::Xdp {
            if let Some(driver) = facts
                .underlay_driver
                .as_deref()
                .filter(|d| COPY_ONLY_DRIVERS.contains(d))
            {
                reasons.push(format!(
                    "xdp is allowed by the host, but {driver} has no AF_XDP zero-copy: in copy mode the UDP socket path with GSO is as fast or faster (perf/RESULTS.md), so auto stays on udp; --mode xdp uses it anyway"
                ));
                continue;
            }
        }
        if datapath == Datapath::Fastdp && request.encrypted {
            reasons.push(
                "fastdp is allowed by the host, but it carries no encryption and this network is encrypted: traffic stays on the userspace sleeve".to_string(),
            );
            continue;
        }
        chosen = Some(datapath);
        break;
    }
    let datapath = chosen.unwrap_or(Datapath::Udp);
    match chosen {
        Some(d) => reasons.push(format!("{d} chosen: {}", why_chosen(d, facts))),
        None => {
            reasons.push("no datapath can run: every datapath is ruled out (see above)".to_string())
        }
    }
    let runnable = chosen.is_some() && mtu_ok;
    Plan {
        datapath,
        overlay_mtu: overlay,
        runnable,
        mtu_usable: mtu_ok,
        encrypted: request.encrypted,
        host_allows,
        rejected,
        checks,
        warnings,
        reasons,
    }
}

/// Drivers of virtual devices that only offer AF_XDP in copy mode, where
/// the UDP socket path with GSO/GRO measured at least as fast.
pub const COPY_ONLY_DRIVERS: [&str; 8] = [
    "veth", "tun", "bridge", "dummy", "macvlan", "ipvlan", "vxlan", "geneve",
];

fn why_chosen(datapath: Datapath, facts: &Facts) -> String {
    match datapath {
        Datapath::Fastdp => {
            "kernel OVS datapath present and no known kernel issue rules it out".to_string()
        }
        Datapath::Xdp => format!("AF_XDP sockets work ({})", facts.af_xdp.detail),
        Datapath::Udp => "the userspace UDP sleeve works on every kernel with TUN".to_string(),
    }
}

/// The `--mode` of `weft launch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Use the preflight decision.
    Auto,
    /// Insist on the kernel OVS fast datapath.
    Fastdp,
    /// Insist on AF_XDP.
    Xdp,
    /// Insist on the userspace UDP sleeve.
    Udp,
    /// Plaintext, standard RFC 7348 VXLAN through the userspace UDP
    /// datapath, bridge mode only; needs `--insecure-plaintext`.
    Plain,
}

/// The datapath to run, plus a warning when `--force` overrode preflight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeResolution {
    /// The datapath to start.
    pub datapath: Datapath,
    /// Set when an unsafe explicit mode was forced.
    pub warning: Option<String>,
}

/// Applies `--mode` and `--force` to a plan. An explicit mode that preflight
/// finds unsafe is refused unless forced. Never forced: running with no
/// usable MTU, and fastdp on an encrypted network (it would send plaintext).
pub fn resolve_mode(plan: &Plan, requested: Mode, force: bool) -> Result<ModeResolution, String> {
    if !plan.mtu_usable || (requested == Mode::Auto && !plan.runnable) {
        // The warnings carry a fix each; the reasons list every datapath.
        let why = if plan.warnings.is_empty() {
            plan.reasons.join("; ")
        } else {
            plan.warnings.join("; ")
        };
        return Err(format!("preflight found no runnable datapath: {why}"));
    }
    let datapath = match requested {
        Mode::Auto => {
            return Ok(ModeResolution {
                datapath: plan.datapath,
                warning: None,
            })
        }
        Mode::Fastdp => Datapath::Fastdp,
        Mode::Xdp => Datapath::Xdp,
        Mode::Udp | Mode::Plain => Datapath::Udp,
    };
    if datapath == Datapath::Fastdp && plan.encrypted {
        return Err(
            "--mode fastdp refused: the kernel fast datapath carries no encryption and this network is encrypted (--force does not override this); use --mode auto, or a plaintext network".to_string(),
        );
    }
    if plan.host_allows.contains(&datapath) {
        return Ok(ModeResolution {
            datapath,
            warning: None,
        });
    }
    let why: Vec<&str> = plan
        .rejected
        .iter()
        .filter(|r| r.datapath == datapath)
        .map(|r| r.reason.as_str())
        .collect();
    let why = why.join("; ");
    if force {
        Ok(ModeResolution {
            datapath,
            warning: Some(format!(
                "--force: running datapath {datapath} although preflight found it unsafe: {why}"
            )),
        })
    } else {
        Err(format!(
            "--mode {datapath} refused: preflight found it unsafe on this host: {why}; use --mode auto, fix the problem, or pass --force"
        ))
    }
}

/// How a user opts in to XDP under `--mode auto` (flag and config key).
pub const XDP_OPT_IN: &str = "--allow-xdp (config key allow-xdp = true)";

/// `--mode auto` never attaches an XDP program to an interface the user
/// did not offer: the underlay is usually the host's main NIC, and a
/// router must not put the host's network at risk to go faster. When auto
/// resolved to xdp without `allow_xdp`, this keeps udp and returns the line
/// that says xdp is possible and how to enable it. An explicit `--mode xdp`
/// is itself the opt-in.
pub fn require_xdp_opt_in(
    resolved: ModeResolution,
    requested: Mode,
    allow_xdp: bool,
    iface: &str,
) -> (ModeResolution, Option<String>) {
    if requested != Mode::Auto || resolved.datapath != Datapath::Xdp || allow_xdp {
        return (resolved, None);
    }
    let line = format!(
        "xdp is possible on {iface} but not enabled: it attaches an XDP program to {iface}, which --mode auto does only when asked; staying on udp (pass {XDP_OPT_IN} to use AF_XDP)"
    );
    (
        ModeResolution {
            datapath: Datapath::Udp,
            warning: resolved.warning,
        },
        Some(line),
    )
}

/// Maps a decided datapath onto what this build implements. Until the fast
/// datapath and AF_XDP land, those decisions fall back to `udp` and the
/// returned line says so (log it at launch).
pub fn launch_datapath(decided: Datapath, implemented: &[Datapath]) -> (Datapath, Option<String>) {
    if implemented.contains(&decided) {
        return (decided, None);
    }
    (
        Datapath::Udp,
        Some(format!(
            "datapath {decided} chosen by preflight is not implemented in this build; falling back to udp (the userspace sleeve)"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::Finding;
    use crate::host::known_issues::tests::facts;

    fn plaintext() -> Request {
        Request {
            encrypted: false,
            sleeve_possible: false,
            l2: true,
            overlay_ipv6: false,
        }
    }

    /// Bridge mode with `--trusted-subnet`: plaintext allowed (fastdp may
    /// run), but untrusted peers and the fastdp fallback use the sleeve.
    fn trusted_subnets() -> Request {
        Request {
            sleeve_possible: true,
            ..plaintext()
        }
    }

    #[test]
    fn trusted_subnets_size_the_overlay_for_the_sleeve_and_still_allow_fastdp() {
        let f = facts("6.1.0", 1500, Offload::Off);
        // One device MTU serves every link: the sleeve's 1416, not VXLAN's 1450.
        let plan = decide(&f, &trusted_subnets());
        assert_eq!(plan.overlay_mtu, Some(1416));
        assert!(!plan.encrypted, "fastdp stays possible: {plan:?}");
        assert_eq!(decide(&f, &plaintext()).overlay_mtu, Some(1450));
        let log = crate::host::preflight::log_lines(&plan).join("\n");
        assert!(log.contains("overlay mtu 1416"), "{log}");
    }

    #[test]
    fn overlay_mtu_matches_the_wire_format_note() {
        assert_eq!(overlay_mtu(1500, false, false, true), Some(1430));
        assert_eq!(overlay_mtu(9000, false, false, true), Some(8930));
        assert_eq!(overlay_mtu(1500, false, true, true), Some(1416));
        assert_eq!(overlay_mtu(1500, true, false, true), Some(1410));
        assert_eq!(overlay_mtu(1500, false, true, false), Some(1450));
        assert_eq!(overlay_mtu(1500, false, false, false), Some(1450));
        assert_eq!(overlay_mtu(1500, true, true, false), Some(1430));
        assert_eq!(overlay_mtu(70, false, false, true), None);
        assert_eq!(overlay_mtu(0, false, false, true), None);
        assert_eq!(overlay_mtu(65536, false, false, true), Some(65465));
        assert_eq!(overlay_mtu(u32::MAX, false, false, true), Some(65465));
        assert_eq!(encapsulation_overhead(false, false, true), 70);
        assert_eq!(encapsulation_overhead(true, true, true), 104);
        assert_eq!(encapsulation_overhead(false, false, false), 50);
    }

    #[test]
    fn healthy_plaintext_host_gets_fastdp() {
        let plan = decide(
            &facts("6.1.0-56-amd64", 1500, Offload::NotOffered),
            &plaintext(),
        );
        assert_eq!(plan.datapath, Datapath::Fastdp);
        assert!(plan.runnable);
        assert_eq!(plan.overlay_mtu, Some(1450));
        assert_eq!(
            plan.host_allows,
            vec![Datapath::Fastdp, Datapath::Xdp, Datapath::Udp]
        );
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn encrypted_network_stays_on_the_sleeve_even_when_fastdp_is_allowed() {
        let plan = decide(
            &facts("6.1.0-56-amd64", 1500, Offload::NotOffered),
            &Request::default(),
        );
        assert_eq!(plan.datapath, Datapath::Xdp);
        assert!(plan.host_allows.contains(&Datapath::Fastdp));
        assert_eq!(plan.overlay_mtu, Some(1430));
        assert!(
            plan.reasons.iter().any(|r| r.contains("no encryption")),
            "{:?}",
            plan.reasons
        );
    }

    #[test]
    fn without_ovs_xdp_then_udp() {
        let mut f = facts("6.18.44-fc-v669", 1500, Offload::NotOffered);
        f.ovs_datapath = Finding::new(Tri::No, "family not found");
        let plan = decide(&f, &plaintext());
        assert_eq!(plan.datapath, Datapath::Xdp);
        assert!(plan
            .reasons
            .iter()
            .any(|r| r.starts_with("fastdp not used") && r.contains("family not found")));
        f.af_xdp = Finding::new(Tri::No, "EAFNOSUPPORT");
        let plan = decide(&f, &plaintext());
        assert_eq!(plan.datapath, Datapath::Udp);
        assert!(plan.runnable);
        assert_eq!(plan.host_allows, vec![Datapath::Udp]);
    }

    #[test]
    fn unparsable_kernel_means_no_fastdp_with_a_reason() {
        let plan = decide(&facts("not-a-kernel", 1500, Offload::Off), &plaintext());
        assert_eq!(plan.datapath, Datapath::Xdp);
        assert!(!plan.host_allows.contains(&Datapath::Fastdp));
        assert!(
            plan.reasons
                .iter()
                .any(|r| r.contains("treated conservatively")),
            "{:?}",
            plan.reasons
        );
        assert!(plan.checks.iter().any(|c| c.name == "kernel" && !c.passed));
    }

    #[test]
    fn ufo_kernel_rules_out_fastdp_until_ufo_is_off() {
        let plan = decide(
            &facts("3.10.0-123.el7.x86_64", 1500, Offload::On),
            &plaintext(),
        );
        assert!(!plan.host_allows.contains(&Datapath::Fastdp));
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("ethtool -K eth0 ufo off")),
            "{:?}",
            plan.warnings
        );
        assert!(plan.checks.iter().any(|c| c.name == "known-issue"
            && c.detail.starts_with("virtio-net-ufo-corruption:")
            && !c.passed));
        assert!(plan.checks.iter().any(|c| c.name == "ufo" && !c.passed));
        // UFO on where no issue applies is reported but passes.
        let plan = decide(&facts("6.1.0", 1500, Offload::On), &plaintext());
        let ufo = plan.checks.iter().find(|c| c.name == "ufo").unwrap();
        assert!(
            ufo.passed && ufo.detail.contains("no known issue"),
            "{ufo:?}"
        );
        let plan = decide(
            &facts("3.10.0-123.el7.x86_64", 1500, Offload::Off),
            &plaintext(),
        );
        assert_eq!(plan.datapath, Datapath::Fastdp);
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    }

    #[test]
    fn df_kernel_with_small_mtu_keeps_fastdp_off_with_the_fix() {
        let plan = decide(
            &facts("3.10.0-327.10.1.el7.x86_64", 1450, Offload::Off),
            &plaintext(),
        );
        assert_eq!(plan.datapath, Datapath::Xdp);
        assert!(plan
            .warnings
            .iter()
            .any(|w| w.contains("raise the underlay MTU of eth0 to 1500")));
        assert_eq!(plan.overlay_mtu, Some(1400));
        let plan = decide(
            &facts("3.10.0-327.10.1.el7.x86_64", 1500, Offload::Off),
            &plaintext(),
        );
        assert_eq!(plan.datapath, Datapath::Fastdp);
    }

    #[test]
    fn tiny_mtu_is_not_runnable() {
        let plan = decide(&facts("6.1.0", 600, Offload::Off), &Request::default());
        assert!(!plan.runnable);
        assert_eq!(plan.overlay_mtu, Some(530));
        assert!(
            plan.warnings.iter().any(|w| w.contains("at least 646")),
            "{:?}",
            plan.warnings
        );
        let plan = decide(&facts("6.1.0", 646, Offload::Off), &Request::default());
        assert!(plan.runnable);
        let v6 = Request {
            overlay_ipv6: true,
            ..Request::default()
        };
        assert!(!decide(&facts("6.1.0", 1349, Offload::Off), &v6).runnable);
        assert!(decide(&facts("6.1.0", 1350, Offload::Off), &v6).runnable);
        let plan = decide(&facts("6.1.0", 50, Offload::Off), &Request::default());
        assert!(!plan.runnable);
        assert_eq!(plan.overlay_mtu, None);
        assert!(
            plan.warnings.iter().any(|w| w.contains("at least 646")),
            "{:?}",
            plan.warnings
        );
    }

    #[test]
    fn ipv6_underlay_costs_20_more_bytes() {
        let mut f = facts("6.1.0", 1500, Offload::Off);
        f.underlay_ipv6 = true;
        assert_eq!(decide(&f, &Request::default()).overlay_mtu, Some(1410));
        assert_eq!(decide(&f, &plaintext()).overlay_mtu, Some(1430));
    }

    #[test]
    fn unknown_mtu_is_not_runnable() {
        let mut f = facts("6.1.0", 1500, Offload::Off);
        f.underlay_mtu = Err("SIOCGIFMTU failed".into());
        let plan = decide(&f, &Request::default());
        assert!(!plan.runnable);
        assert_eq!(plan.overlay_mtu, None);
    }

    #[test]
    fn no_tun_means_only_fastdp_which_encryption_forbids() {
        let mut f = facts("6.1.0", 1500, Offload::Off);
        f.tun = Finding::new(Tri::No, "EPERM");
        let plan = decide(&f, &Request::default());
        assert!(!plan.runnable);
        assert_eq!(plan.host_allows, vec![Datapath::Fastdp]);
        let plan = decide(&f, &plaintext());
        assert!(plan.runnable);
        assert_eq!(plan.datapath, Datapath::Fastdp);
    }

    #[test]
    fn explicit_modes_refuse_unsafe_unless_forced() {
        let mut f = facts("3.10.0-123.el7.x86_64", 1500, Offload::On);
        f.af_xdp = Finding::new(Tri::No, "EAFNOSUPPORT");
        let plan = decide(&f, &plaintext());
        assert_eq!(
            resolve_mode(&plan, Mode::Auto, false).unwrap().datapath,
            Datapath::Udp
        );
        assert_eq!(
            resolve_mode(&plan, Mode::Udp, false).unwrap(),
            ModeResolution {
                datapath: Datapath::Udp,
                warning: None
            }
        );
        let refused = resolve_mode(&plan, Mode::Fastdp, false).unwrap_err();
        assert!(
            refused.contains("virtio-net-ufo-corruption") && refused.contains("--force"),
            "{refused}"
        );
        let forced = resolve_mode(&plan, Mode::Fastdp, true).unwrap();
        assert_eq!(forced.datapath, Datapath::Fastdp);
        assert!(forced.warning.unwrap().contains("unsafe"));
        assert!(resolve_mode(&plan, Mode::Xdp, false)
            .unwrap_err()
            .contains("EAFNOSUPPORT"));
        // Encryption is never forced away.
        let plan = decide(&facts("6.1.0", 1500, Offload::Off), &Request::default());
        assert!(resolve_mode(&plan, Mode::Fastdp, true).is_err());
        // No MTU: nothing runs, forced or not.
        let plan = decide(&facts("6.1.0", 100, Offload::Off), &Request::default());
        assert!(resolve_mode(&plan, Mode::Udp, true).is_err());
        assert!(resolve_mode(&plan, Mode::Auto, false).is_err());
    }

    #[test]
    fn unimplemented_datapaths_fall_back_to_udp_with_a_line() {
        assert_eq!(
            launch_datapath(Datapath::Udp, &[Datapath::Udp]),
            (Datapath::Udp, None)
        );
        let (d, line) = launch_datapath(Datapath::Fastdp, &[Datapath::Udp]);
        assert_eq!(d, Datapath::Udp);
        assert!(line
            .unwrap()
            .contains("fastdp chosen by preflight is not implemented"));
        assert_eq!(
            launch_datapath(Datapath::Xdp, &[Datapath::Xdp, Datapath::Udp]),
            (Datapath::Xdp, None)
        );
    }
}

#[cfg(test)]
mod xdp_opt_in_tests {
    use super::*;
    use crate::host::facts::Offload;
    use crate::host::known_issues::tests::facts;

    #[test]
    fn auto_never_attaches_xdp_unasked_but_says_how() {
        // A virtio_net uplink: the host allows xdp and auto would pick it.
        let mut f = facts("6.18.0", 1500, Offload::Off);
        f.underlay_driver = Some("virtio_net".into());
        let plan = decide(&f, &Request::default());
        assert_eq!(plan.datapath, Datapath::Xdp);
        let resolved = resolve_mode(&plan, Mode::Auto, false).unwrap();
        let (kept, line) = require_xdp_opt_in(resolved.clone(), Mode::Auto, false, "eth0");
        assert_eq!(kept.datapath, Datapath::Udp);
        let line = line.unwrap();
        assert!(
            line.contains("xdp is possible on eth0") && line.contains("--allow-xdp"),
            "{line}"
        );
        // Opted in: xdp.
        let (opted, none) = require_xdp_opt_in(resolved, Mode::Auto, true, "eth0");
        assert_eq!((opted.datapath, none), (Datapath::Xdp, None));
        // --mode xdp is an explicit choice.
        let explicit = resolve_mode(&plan, Mode::Xdp, false).unwrap();
        assert_eq!(
            require_xdp_opt_in(explicit, Mode::Xdp, false, "eth0")
                .0
                .datapath,
            Datapath::Xdp
        );
        // Preflight still reports xdp as possible, with the opt-in.
        let text = crate::host::preflight::render_text(&plan);
        assert!(text.contains("decision  datapath xdp"), "{text}");
        assert!(text.contains("--allow-xdp"), "{text}");
    }
}

#[cfg(test)]
mod copy_only_tests {
    use super::*;
    use crate::host::facts::Offload;
    use crate::host::known_issues::tests::facts;

    #[test]
    fn auto_stays_on_udp_over_copy_only_drivers_but_xdp_is_allowed() {
        let mut f = facts("6.1.0-56-amd64", 1500, Offload::Off);
        f.underlay_driver = Some("veth".into());
        let plan = decide(&f, &Request::default());
        assert_eq!(plan.datapath, Datapath::Udp);
        assert!(plan.host_allows.contains(&Datapath::Xdp));
        assert!(
            plan.reasons
                .iter()
                .any(|r| r.contains("veth has no AF_XDP zero-copy")),
            "{:?}",
            plan.reasons
        );
        assert_eq!(
            resolve_mode(&plan, Mode::Xdp, false).unwrap().datapath,
            Datapath::Xdp
        );
        f.underlay_driver = Some("ice".into());
        assert_eq!(decide(&f, &Request::default()).datapath, Datapath::Xdp);
    }
}
