//! `weft preflight` end to end: every row of the known-kernel-issue table
//! and its mitigation, through the binary and its `--assume-*` flags, the
//! way a user asks "what would weft do on that host". Runs in its own
//! namespace (preflight opens a TUN device and an AF_XDP socket to probe).

mod common;

use common::*;
use serde_json::Value;

/// Runs `weft preflight --json --underlay-iface lo ARGS` in `ns`; returns
/// the exit code and the parsed report (None if stdout is not JSON).
fn preflight(ns: &str, args: &[&str]) -> (i32, Option<Value>, String) {
    let mut full = vec![WEFT, "preflight", "--json", "--underlay-iface", "lo"];
    full.extend_from_slice(args);
    let out = ns_exec(ns, &full);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).ok(),
        stderr,
    )
}

fn warnings(report: &Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn fastdp_allowed(report: &Value) -> bool {
    report["host_allows"]
        .as_array()
        .is_some_and(|a| a.iter().any(|d| d == "fastdp"))
}

/// (kernel, underlay MTU, UFO, the row that must match or None, text the fix must contain)
const CASES: &[(&str, &str, &str, Option<&str>, &str)] = &[
    // virtio_net UFO corruption: el7 3.10.0-123 with UFO on ...
    (
        "3.10.0-123.el7.x86_64",
        "1500",
        "on",
        Some("virtio-net-ufo-corruption"),
        "ethtool -K lo ufo off",
    ),
    (
        "3.10.0-123.4.4.el7.x86_64",
        "1500",
        "on",
        Some("virtio-net-ufo-corruption"),
        "ethtool -K lo ufo off",
    ),
    (
        "3.12.9",
        "1500",
        "on",
        Some("virtio-net-ufo-corruption"),
        "ethtool -K lo ufo off",
    ),
    // ... mitigated by UFO off, fixed in el7 3.10.0-229 and upstream 3.13.
    ("3.10.0-123.el7.x86_64", "1500", "off", None, ""),
    ("3.10.0-229.el7.x86_64", "1500", "on", None, ""),
    ("3.13.0", "1500", "on", None, ""),
    // DF-dropped VXLAN heartbeats: el7 3.10.0-327 below 1474 ...
    (
        "3.10.0-327.10.1.el7.x86_64",
        "1450",
        "off",
        Some("vxlan-df-heartbeat-dropped"),
        "raise the underlay MTU of lo to 1500",
    ),
    (
        "3.10.0-327.el7.x86_64",
        "1473",
        "off",
        Some("vxlan-df-heartbeat-dropped"),
        "ip link set dev lo mtu 1500",
    ),
    // ... mitigated by MTU 1500.
    ("3.10.0-327.10.1.el7.x86_64", "1500", "off", None, ""),
    // No usable ODP VXLAN vport before 3.12, except el7 backports.
    (
        "3.11.10",
        "1500",
        "off",
        Some("ovs-vxlan-vport-missing"),
        "3.12",
    ),
    ("3.12.0", "1500", "off", None, ""),
    ("3.10.0-229.el7.x86_64", "1500", "off", None, ""),
    // vxlan vport MTU capped at 1500 on 4.3/4.4 ...
    (
        "4.4.0-210-generic",
        "9000",
        "off",
        Some("vxlan-vport-mtu-1500"),
        "mtu 1500",
    ),
    (
        "4.3.3",
        "1501",
        "off",
        Some("vxlan-vport-mtu-1500"),
        "mtu 1500",
    ),
    // ... mitigated by MTU 1500, fixed in 4.5.
    ("4.4.0-210-generic", "1500", "off", None, ""),
    ("4.5.0", "9000", "off", None, ""),
    // OVS tunnel vports never released: Debian names the stable patch level
    // in the build string (`KERNEL|BUILD` passes --assume-kernel-build).
    (
        "6.1.0-48-amd64|#1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-15)",
        "1500",
        "off",
        Some("ovs-tunnel-vport-release-hang"),
        "upgrade to Linux 6.1.175 or later",
    ),
    (
        "6.1.0-56-amd64|#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-10-01)",
        "1500",
        "off",
        None,
        "",
    ),
    // Modern kernels in the formats distributions use.
    ("5.15.0-91-generic", "1500", "on", None, ""),
    ("6.1.0-56-amd64", "9000", "on", None, ""),
];

/// Every row fires under its condition with a concrete fix and rules out
/// fastdp; its mitigation (or a fixed kernel) makes it go away again.
#[test]
fn every_known_issue_row_and_its_mitigation_through_the_cli() {
    require_root!();
    let ns = Netns::new(format!("wt-{}-{}-p", std::process::id(), next_id()));
    for &(kernel, mtu, ufo, row, fix) in CASES {
        let (kernel, build) = kernel.split_once('|').unwrap_or((kernel, ""));
        let mut args = vec![
            "--assume-kernel",
            kernel,
            "--assume-mtu",
            mtu,
            "--assume-ufo",
            ufo,
            "--assume-ovs",
            "yes",
            "--assume-xdp",
            "no",
        ];
        if !build.is_empty() {
            args.extend(["--assume-kernel-build", build]);
        }
        let (code, report, stderr) = preflight(&ns.name, &args);
        let report = report.unwrap_or_else(|| panic!("{kernel}: no JSON (exit {code}): {stderr}"));
        assert_eq!(
            code, 0,
            "{kernel} mtu {mtu}: the userspace datapath can always run: {report:#}"
        );
        let warns = warnings(&report);
        match row {
            Some(id) => {
                let w = warns.iter().find(|w| w.starts_with(id)).unwrap_or_else(|| {
                    panic!("{kernel} mtu {mtu} ufo {ufo}: row {id} should fire: {report:#}")
                });
                assert!(w.contains(fix), "{kernel}: the fix should say {fix:?}: {w}");
                assert!(
                    !fastdp_allowed(&report),
                    "{kernel}: {id} must rule out fastdp: {report:#}"
                );
                let check = report["checks"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["name"] == "known-issue"))
                    .cloned();
                assert!(
                    check
                        .as_ref()
                        .is_some_and(|c| c["passed"] == false
                            && c["detail"].as_str().unwrap_or("").contains(id)),
                    "{kernel}: the known-issue check should fail naming {id}: {check:?}"
                );
            }
            None => {
                assert!(
                    warns.is_empty(),
                    "{kernel} mtu {mtu} ufo {ufo}: no row should fire: {warns:?}"
                );
                assert!(
                    fastdp_allowed(&report),
                    "{kernel} mtu {mtu} ufo {ufo}: a healthy host allows fastdp: {report:#}"
                );
            }
        }
        let expect_mtu = mtu.parse::<u64>().unwrap() - 70;
        assert_eq!(
            report["overlay_mtu"].as_u64(),
            Some(expect_mtu),
            "{kernel} mtu {mtu}: {report:#}"
        );
    }
}

/// Unparsable releases are treated conservatively (no fastdp, with a reason
/// that says why); an MTU too small for any overlay exits 1; bad arguments exit 2.
#[test]
fn unknown_kernel_tiny_mtu_and_bad_arguments() {
    require_root!();
    let ns = Netns::new(format!("wt-{}-{}-p", std::process::id(), next_id()));
    let (code, report, stderr) = preflight(
        &ns.name,
        &[
            "--assume-kernel",
            "not-a-kernel",
            "--assume-mtu",
            "1500",
            "--assume-ovs",
            "yes",
            "--assume-ufo",
            "off",
        ],
    );
    let report = report.unwrap_or_else(|| panic!("no JSON (exit {code}): {stderr}"));
    assert_eq!(code, 0, "{report:#}");
    assert!(
        !fastdp_allowed(&report),
        "an unparsable kernel must not get fastdp: {report:#}"
    );
    let reasons = report["reasons"].to_string();
    assert!(
        reasons.contains("not-a-kernel"),
        "the reason should name the release it could not parse: {reasons}"
    );

    let (code, report, _) = preflight(&ns.name, &["--assume-mtu", "100"]);
    assert_eq!(code, 1, "MTU 100 leaves no room for an overlay: {report:?}");
    assert!(report
        .is_some_and(|r| !warnings(&r).is_empty() || r["reasons"].to_string().contains("100")));

    let (code, _, stderr) = preflight(&ns.name, &["--assume-ufo", "maybe"]);
    assert_eq!(code, 2, "bad argument: {stderr}");
    assert!(
        stderr.contains("maybe") || stderr.contains("ufo"),
        "the error should name the bad value: {stderr}"
    );
}

/// Over an IPv6 underlay (`--peer` an IPv6 address) the kernel's OVS
/// datapath needs IPv6 tunnels: before Linux 4.4 row
/// `ovs-ipv6-tunnel-missing` rules fastdp out with its fix (and the
/// overlay MTU counts the 40-byte IPv6 header); 4.4 and later allow it; the
/// same old kernel over IPv4 allows it too.
#[test]
fn ipv6_underlay_needs_a_kernel_with_ovs_ipv6_tunnels() {
    require_root!();
    let ns = Netns::new(format!("wt-{}-{}-p", std::process::id(), next_id()));
    let run = |peer: &str, kernel: &str| {
        let out = ns_exec(
            &ns.name,
            &[
                WEFT,
                "preflight",
                "--json",
                "--peer",
                peer,
                "--assume-kernel",
                kernel,
                "--assume-mtu",
                "1500",
                "--assume-ufo",
                "off",
                "--assume-ovs",
                "yes",
                "--assume-xdp",
                "no",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{peer} {kernel}: no JSON: {stderr}"));
        assert_eq!(out.status.code(), Some(0), "{report:#}");
        report
    };
    let old = run("::1", "4.3.3");
    let w = warnings(&old);
    let row = w
        .iter()
        .find(|w| w.starts_with("ovs-ipv6-tunnel-missing"))
        .unwrap_or_else(|| panic!("4.3.3 over IPv6: the row should fire: {old:#}"));
    assert!(row.contains("Linux 4.4"), "{row}");
    assert!(!fastdp_allowed(&old), "{old:#}");
    assert!(
        old["reasons"]
            .to_string()
            .contains("fastdp not used: known kernel issue ovs-ipv6-tunnel-missing"),
        "{old:#}"
    );
    // 1500 - 40 (IPv6) - 8 (UDP) - 16 - 2 - 8 - 16 (sleeve): 1410.
    assert_eq!(old["overlay_mtu"].as_u64(), Some(1410), "{old:#}");
    let modern = run("::1", "6.1.0-56-amd64");
    assert!(warnings(&modern).is_empty(), "{modern:#}");
    assert!(fastdp_allowed(&modern), "{modern:#}");
    let old_v4 = run("127.0.0.1", "4.3.3");
    assert!(
        !warnings(&old_v4)
            .iter()
            .any(|w| w.starts_with("ovs-ipv6-tunnel-missing")),
        "{old_v4:#}"
    );
    assert!(fastdp_allowed(&old_v4), "{old_v4:#}");
}
