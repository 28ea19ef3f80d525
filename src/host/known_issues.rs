//! The one table of known kernel issues that make a datapath unsafe.
//!
//! Data, not scattered ifs: each row says which kernels, under which
//! condition, what goes wrong, how to avoid it, and where we learned it.
//! [`evaluate`] matches the table against [`Facts`].

use super::facts::{Facts, Offload};
use super::kernel::{join_build, KernelParseError, KernelRelease, KernelVersion};
use super::plan::Datapath;

/// A half-open range of upstream versions `[from, before)`; `None` = unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// First affected version (inclusive).
    pub from: Option<KernelVersion>,
    /// First unaffected version (exclusive).
    pub before: Option<KernelVersion>,
}

impl VersionRange {
    /// Whether `version` lies in the range.
    pub fn contains(&self, version: KernelVersion) -> bool {
        self.from.map_or(true, |from| version >= from)
            && self.before.map_or(true, |before| version < before)
    }
}

/// How a row treats RHEL/CentOS 7 kernels, whose upstream version (3.10.0)
/// says little because Red Hat backports features and fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum El7Scope {
    /// Judge el7 kernels by their upstream version like any other.
    AsUpstream,
    /// el7 kernels are not affected (the feature was backported).
    NotAffected,
    /// el7 builds `[from, before)` are affected (`before: None` = no fixed build known).
    Builds {
        /// First affected build (inclusive), e.g. `&[123]`.
        from: &'static [u32],
        /// First fixed build (exclusive), e.g. `&[229]`.
        before: Option<&'static [u32]>,
    },
}

/// Which kernels a row applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRange {
    /// Affected upstream versions (`None` = no upstream kernel is affected).
    pub upstream: Option<VersionRange>,
    /// How RHEL/CentOS 7 kernels are judged.
    pub el7: El7Scope,
}

impl KernelRange {
    /// Whether `release` is in the range.
    pub fn contains(&self, release: &KernelRelease) -> bool {
        let upstream_match = || {
            self.upstream
                .is_some_and(|range| range.contains(release.upstream))
        };
        match (release.el7_build(), self.el7) {
            (Some(_), El7Scope::NotAffected) => false,
            (Some(build), El7Scope::Builds { from, before }) => {
                build >= from && before.map_or(true, |before| build < before)
            }
            (Some(_), El7Scope::AsUpstream) | (None, _) => upstream_match(),
        }
    }

    /// A human description of the range, for documentation and `--help`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(range) = self.upstream {
            parts.push(match (range.from, range.before) {
                (Some(from), Some(before)) => format!("upstream {from} to before {before}"),
                (None, Some(before)) => format!("upstream before {before}"),
                (Some(from), None) => format!("upstream {from} and later"),
                (None, None) => "every upstream kernel".to_string(),
            });
        }
        match self.el7 {
            El7Scope::AsUpstream => {}
            El7Scope::NotAffected => parts.push("not el7 (backported)".to_string()),
            El7Scope::Builds { from, before } => parts.push(match before {
                Some(before) => format!(
                    "el7 builds {} to before {}",
                    join_build(from),
                    join_build(before)
                ),
                None => format!(
                    "el7 builds {} and later (no fixed build known)",
                    join_build(from)
                ),
            }),
        }
        parts.join("; ")
    }
}

/// The host condition under which a row bites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Whenever the kernel is in range.
    Always,
    /// When UDP fragmentation offload is on (or unknown) on the underlay.
    UfoOn,
    /// When the underlay MTU is below this value (or unknown).
    UnderlayMtuBelow(u32),
    /// When the underlay MTU is above this value (or unknown).
    UnderlayMtuAbove(u32),
    /// When the underlay is IPv6 (peers are reached over IPv6).
    Ipv6Underlay,
}

/// One known kernel issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownIssue {
    /// Short stable identifier, used in check names and JSON.
    pub id: &'static str,
    /// Affected kernels.
    pub kernels: KernelRange,
    /// When it bites.
    pub condition: Condition,
    /// What goes wrong.
    pub consequence: &'static str,
    /// What the operator can do; `{iface}` is replaced by the underlay interface.
    pub mitigation: &'static str,
    /// The datapaths this issue makes unsafe.
    pub rules_out: &'static [Datapath],
    /// Where this is documented (commit, bug, issue).
    pub source: &'static str,
}

/// The table. Keep rows sorted by kernel age; add a test for every row.
pub static KNOWN_ISSUES: &[KnownIssue] = &[
    KnownIssue {
        id: "ovs-vxlan-vport-missing",
        kernels: KernelRange {
            upstream: Some(VersionRange { from: None, before: Some(KernelVersion::new(3, 12, 0)) }),
            el7: El7Scope::NotAffected,
        },
        condition: Condition::Always,
        consequence: "the kernel OVS datapath has no usable VXLAN vport before Linux 3.12, so the fast datapath cannot encapsulate",
        mitigation: "upgrade to Linux 3.12 or later (RHEL/CentOS 7 kernels have the backport); weft uses the userspace datapath meanwhile",
        rules_out: &[Datapath::Fastdp],
        source: "upstream commit \"openvswitch: Add vxlan tunneling support\" (merged for Linux 3.12); el7 kernels carry it as a backport",
    },
    KnownIssue {
        id: "virtio-net-ufo-corruption",
        kernels: KernelRange {
            upstream: Some(VersionRange { from: None, before: Some(KernelVersion::new(3, 13, 0)) }),
            el7: El7Scope::Builds { from: &[0], before: Some(&[229]) },
        },
        condition: Condition::UfoOn,
        consequence: "oversized UDP sends with UDP fragmentation offload on can corrupt virtio_net and stop the VM's network until the driver is reloaded",
        mitigation: "ethtool -K {iface} ufo off (or upgrade to el7 3.10.0-229 / upstream 3.13 or later)",
        rules_out: &[Datapath::Fastdp],
        source: "weaveworks/weave#2289 (CentOS 7 3.10.0-123.4.4.el7, virtio_net: network lost after weave connect); fixed in el7 3.10.0-229 and upstream 3.13",
    },
    KnownIssue {
        id: "vxlan-df-heartbeat-dropped",
        kernels: KernelRange {
            upstream: None,
            el7: El7Scope::Builds { from: &[327], before: None },
        },
        condition: Condition::UnderlayMtuBelow(1474),
        consequence: "skb_scrub_packet resets ignore_df, so DF-set VXLAN packets larger than the underlay MTU are dropped silently; fast-datapath heartbeats time out",
        mitigation: "raise the underlay MTU of {iface} to 1500 (ip link set dev {iface} mtu 1500) or keep the userspace datapath",
        rules_out: &[Datapath::Fastdp],
        source: "weaveworks/weave#2634 (CentOS 3.10.0-327.28.2.el7: fastdp falls back to sleeve, \"timed out waiting for vxlan heartbeat\"); no fixed el7 build is known to weft",
    },
    KnownIssue {
        id: "vxlan-vport-mtu-1500",
        kernels: KernelRange {
            upstream: Some(VersionRange {
                from: Some(KernelVersion::new(4, 3, 0)),
                before: Some(KernelVersion::new(4, 5, 0)),
            }),
            el7: El7Scope::AsUpstream,
        },
        condition: Condition::UnderlayMtuAbove(1500),
        consequence: "Linux 4.3 and 4.4 cap the MTU of an OVS VXLAN vport at 1500, so fast-datapath packets sized for the larger underlay MTU are dropped",
        mitigation: "set the underlay MTU of {iface} to 1500 (ip link set dev {iface} mtu 1500) or upgrade to Linux 4.5 or later",
        rules_out: &[Datapath::Fastdp],
        source: "weaveworks/weave#1853 (CoreOS, Linux 4.3; torvalds/linux commit 614732eaa12d), weaveworks/weave#2376",
    },
    KnownIssue {
        id: "ovs-ipv6-tunnel-missing",
        kernels: KernelRange {
            upstream: Some(VersionRange { from: None, before: Some(KernelVersion::new(4, 4, 0)) }),
            el7: El7Scope::AsUpstream,
        },
        condition: Condition::Ipv6Underlay,
        consequence: "the kernel OVS datapath has no IPv6 tunnel keys (OVS_TUNNEL_KEY_ATTR_IPV6_SRC/DST) before Linux 4.4 and its VXLAN vport listens on IPv4 only, so the fast datapath cannot carry an IPv6 underlay",
        mitigation: "upgrade to Linux 4.4 or later, or give the hosts IPv4 underlay addresses; over IPv6 weft uses the userspace sleeve meanwhile",
        rules_out: &[Datapath::Fastdp],
        source: "upstream commits \"openvswitch: netlink attributes for IPv6 tunneling\" and \"vxlan: support both IPv4 and IPv6 sockets in a single vxlan device\" (a metadata-collecting VXLAN device such as the OVS vport opens an IPv6 socket too), both merged for Linux 4.4; whether el7 backports carry them is not known to weft, so el7 kernels are treated as lacking them; weft's VM test (tests/vm/fastdp_launch.sh) runs fastdp over IPv6 on Debian's 6.1",
    },
    KnownIssue {
        id: "ovs-tunnel-vport-release-hang",
        kernels: KernelRange {
            upstream: Some(VersionRange {
                from: Some(KernelVersion::new(6, 1, 168)),
                before: Some(KernelVersion::new(6, 1, 175)),
            }),
            el7: El7Scope::AsUpstream,
        },
        condition: Condition::Always,
        consequence: "deleting an OVS VXLAN vport never completes (unregister_netdevice: waiting for vxlan_sys_PORT to become free): the datapath, its network namespace and weft's exit hang",
        mitigation: "upgrade to Linux 6.1.175 or later (Debian 12: linux-image-6.1.0-50-amd64, 6.1.176-1, or later); weft uses the userspace datapath meanwhile",
        rules_out: &[Datapath::Fastdp],
        source: "Linux 6.1.168 took \"net: openvswitch: Avoid releasing netdev before teardown completes\" and \"openvswitch: defer tunnel netdev_put to RCU release\"; 6.1.175 has \"openvswitch: vport: fix self-deadlock on release of tunnel ports\". weft's VM test (tests/vm/vport_teardown.sh) hangs on Debian 6.1.170-1 to 6.1.174-1 and completes on 6.1.164-1 and 6.1.176-1 and later; other stable series were not tested",
    },
];

/// The rows that rule out `datapath` on `release` whatever the host's
/// configuration ([`Condition::Always`]): what `weft fastdp run`, which has no
/// underlay facts, must refuse, and what a stuck kernel deletion is blamed on.
pub fn kernel_blockers(release: &KernelRelease, datapath: Datapath) -> Vec<&'static KnownIssue> {
    KNOWN_ISSUES
        .iter()
        .filter(|issue| issue.condition == Condition::Always)
        .filter(|issue| issue.rules_out.contains(&datapath))
        .filter(|issue| issue.kernels.contains(release))
        .collect()
}

/// The rows that rule out `datapath` on `release` when the underlay is
/// IPv6 ([`Condition::Ipv6Underlay`]): what `weft fastdp run` with an IPv6
/// `--peer` must refuse.
pub fn ipv6_underlay_blockers(
    release: &KernelRelease,
    datapath: Datapath,
) -> Vec<&'static KnownIssue> {
    KNOWN_ISSUES
        .iter()
        .filter(|issue| issue.condition == Condition::Ipv6Underlay)
        .filter(|issue| issue.rules_out.contains(&datapath))
        .filter(|issue| issue.kernels.contains(release))
        .collect()
}

/// A row that applies to this host, with the evidence and the concrete fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueMatch {
    /// The table row.
    pub issue: &'static KnownIssue,
    /// Why it applies here (kernel and condition as found).
    pub why: String,
    /// The mitigation with the underlay interface filled in.
    pub mitigation: String,
}

/// The rows of [`KNOWN_ISSUES`] that apply to `facts`. An unparsable kernel
/// release is returned as an error: the caller must be conservative.
pub fn evaluate(facts: &Facts) -> Result<Vec<IssueMatch>, KernelParseError> {
    let release = KernelRelease::parse_with_build(&facts.kernel_release, &facts.kernel_build)?;
    Ok(evaluate_release(&release, facts))
}

/// [`evaluate`] for an already parsed release.
pub fn evaluate_release(release: &KernelRelease, facts: &Facts) -> Vec<IssueMatch> {
    let iface = facts
        .underlay_iface
        .as_deref()
        .unwrap_or("<underlay interface>");
    KNOWN_ISSUES
        .iter()
        .filter(|issue| issue.kernels.contains(release))
        .filter_map(|issue| {
            let condition = condition_holds(issue.condition, facts, iface)?;
            Some(IssueMatch {
                issue,
                why: format!(
                    "kernel {} ({}); {condition}",
                    release.raw,
                    release.describe()
                ),
                mitigation: issue.mitigation.replace("{iface}", iface),
            })
        })
        .collect()
}

/// `Some(evidence)` when the condition holds; unknown facts count as holding.
fn condition_holds(condition: Condition, facts: &Facts, iface: &str) -> Option<String> {
    match condition {
        Condition::Always => Some("applies regardless of configuration".to_string()),
        Condition::UfoOn => match facts.ufo.state {
            Offload::On => Some(format!("UFO is on on {iface}")),
            Offload::Unknown => Some(format!(
                "UFO state of {iface} unknown ({}), assumed on",
                facts.ufo.detail
            )),
            Offload::Off | Offload::NotOffered => None,
        },
        Condition::UnderlayMtuBelow(limit) => match &facts.underlay_mtu {
            Ok(mtu) if *mtu < limit => {
                Some(format!("underlay MTU {mtu} of {iface} is below {limit}"))
            }
            Ok(_) => None,
            Err(why) => Some(format!(
                "underlay MTU unknown ({why}), assumed below {limit}"
            )),
        },
        Condition::Ipv6Underlay => facts
            .underlay_ipv6
            .then(|| "the underlay is IPv6".to_string()),
        Condition::UnderlayMtuAbove(limit) => match &facts.underlay_mtu {
            Ok(mtu) if *mtu > limit => {
                Some(format!("underlay MTU {mtu} of {iface} is above {limit}"))
            }
            Ok(_) => None,
            Err(why) => Some(format!(
                "underlay MTU unknown ({why}), assumed above {limit}"
            )),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::facts::{Finding, Tri};

    /// Facts of a healthy host; tests change one thing at a time.
    pub(crate) fn facts(kernel: &str, mtu: u32, ufo: Offload) -> Facts {
        Facts {
            kernel_release: kernel.to_string(),
            kernel_source: "test".to_string(),
            kernel_build: String::new(),
            underlay_iface: Ok("eth0".to_string()),
            underlay_source: "test".to_string(),
            underlay_ipv6: false,
            underlay_mtu: Ok(mtu),
            ufo: Finding::new(ufo, format!("{ufo}")),
            uso: Finding::new(Offload::On, "on"),
            gso: Finding::new(Offload::On, "on"),
            ovs_datapath: Finding::new(Tri::Yes, "present"),
            af_xdp: Finding::new(Tri::Yes, "openable"),
            underlay_driver: None,
            tun: Finding::new(Tri::Yes, "works"),
            tun_offloads: Finding::new(Tri::Yes, "accepted"),
            tun_uso: Finding::new(Tri::Yes, "accepted"),
        }
    }

    fn ids(facts: &Facts) -> Vec<&'static str> {
        evaluate(facts)
            .expect("parsable")
            .iter()
            .map(|m| m.issue.id)
            .collect()
    }

    #[test]
    fn every_row_has_its_own_test_and_rules_out_something() {
        for issue in KNOWN_ISSUES {
            assert!(!issue.rules_out.is_empty(), "{}", issue.id);
            assert!(
                !issue.source.is_empty() && !issue.mitigation.is_empty(),
                "{}",
                issue.id
            );
        }
        let unique: std::collections::HashSet<_> = KNOWN_ISSUES.iter().map(|i| i.id).collect();
        assert_eq!(unique.len(), KNOWN_ISSUES.len());
    }

    #[test]
    fn ufo_row_and_its_mitigations() {
        let row = "virtio-net-ufo-corruption";
        // Affected: el7 3.10.0-123 with UFO on, and with UFO unknown (conservative).
        assert!(ids(&facts("3.10.0-123.el7.x86_64", 1500, Offload::On)).contains(&row));
        assert!(ids(&facts("3.10.0-123.4.4.el7.x86_64", 1500, Offload::Unknown)).contains(&row));
        let matched = evaluate(&facts("3.10.0-123.el7.x86_64", 1500, Offload::On)).unwrap();
        let ufo = matched.iter().find(|m| m.issue.id == row).unwrap();
        assert!(
            ufo.mitigation.starts_with("ethtool -K eth0 ufo off"),
            "{}",
            ufo.mitigation
        );
        // Mitigation applied: UFO off (or not offered) -> no match.
        assert!(!ids(&facts("3.10.0-123.el7.x86_64", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("3.10.0-123.el7.x86_64", 1500, Offload::NotOffered)).contains(&row));
        // Fixed kernels: el7 3.10.0-229 and upstream 3.13.
        assert!(!ids(&facts("3.10.0-229.el7.x86_64", 1500, Offload::On)).contains(&row));
        assert!(!ids(&facts("3.10.0-229.1.2.el7.x86_64", 1500, Offload::On)).contains(&row));
        assert!(!ids(&facts("3.13.0", 1500, Offload::On)).contains(&row));
        assert!(ids(&facts("3.12.9", 1500, Offload::On)).contains(&row));
    }

    #[test]
    fn df_heartbeat_row_and_its_mitigation() {
        let row = "vxlan-df-heartbeat-dropped";
        assert!(ids(&facts("3.10.0-327.el7.x86_64", 1450, Offload::Off)).contains(&row));
        assert!(ids(&facts("3.10.0-327.10.1.el7.x86_64", 1473, Offload::Off)).contains(&row));
        // Mitigation: MTU 1500 (anything >= 1474) is fine.
        assert!(!ids(&facts("3.10.0-327.10.1.el7.x86_64", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("3.10.0-327.el7.x86_64", 1474, Offload::Off)).contains(&row));
        // Earlier el7 builds and non-el7 kernels are not in range.
        assert!(!ids(&facts("3.10.0-229.el7.x86_64", 1450, Offload::Off)).contains(&row));
        assert!(!ids(&facts("5.15.0-91-generic", 1450, Offload::Off)).contains(&row));
        let matched = evaluate(&facts("3.10.0-327.el7.x86_64", 1450, Offload::Off)).unwrap();
        let m = matched.iter().find(|m| m.issue.id == row).unwrap();
        assert!(
            m.mitigation
                .contains("raise the underlay MTU of eth0 to 1500"),
            "{}",
            m.mitigation
        );
        assert!(m.why.contains("1450"), "{}", m.why);
    }

    #[test]
    fn vxlan_vport_row_needs_3_12_except_el7() {
        let row = "ovs-vxlan-vport-missing";
        assert!(ids(&facts("3.11.10", 1500, Offload::Off)).contains(&row));
        assert!(ids(&facts("2.6.32", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("3.12.0", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("3.10.0-229.el7.x86_64", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("6.1.0-56-amd64", 1500, Offload::Off)).contains(&row));
    }

    #[test]
    fn vport_mtu_cap_row_on_4_3_and_4_4() {
        let row = "vxlan-vport-mtu-1500";
        assert!(ids(&facts("4.4.0", 9000, Offload::Off)).contains(&row));
        assert!(ids(&facts("4.4.0-210-generic", 1501, Offload::Off)).contains(&row));
        assert!(ids(&facts("4.3.3", 9000, Offload::Off)).contains(&row));
        // Mitigation: MTU 1500; and unaffected kernels.
        assert!(!ids(&facts("4.4.0", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("4.2.2", 9000, Offload::Off)).contains(&row));
        assert!(!ids(&facts("4.5.0", 9000, Offload::Off)).contains(&row));
    }

    #[test]
    fn ipv6_tunnel_row_needs_4_4_and_an_ipv6_underlay() {
        let row = "ovs-ipv6-tunnel-missing";
        let v6 = |kernel: &str| {
            let mut f = facts(kernel, 1500, Offload::Off);
            f.underlay_ipv6 = true;
            ids(&f)
        };
        assert!(v6("4.3.3").contains(&row));
        assert!(v6("3.13.0").contains(&row));
        assert!(v6("3.10.0-1160.el7.x86_64").contains(&row));
        assert!(!v6("4.4.0").contains(&row));
        assert!(!v6("6.1.0-56-amd64").contains(&row));
        // Mitigation: an IPv4 underlay on the same old kernel.
        assert!(!ids(&facts("4.3.3", 1500, Offload::Off)).contains(&row));
        let mut f = facts("4.3.3", 1500, Offload::Off);
        f.underlay_ipv6 = true;
        let matched = evaluate(&f).unwrap();
        let m = matched.iter().find(|m| m.issue.id == row).unwrap();
        assert!(m.why.contains("the underlay is IPv6"), "{}", m.why);
        assert!(m.mitigation.contains("Linux 4.4"), "{}", m.mitigation);
        // Not a blocker whatever the configuration: `weft fastdp run` with
        // IPv4 peers stays possible on such a kernel.
        let release = KernelRelease::parse("4.3.3").unwrap();
        assert!(kernel_blockers(&release, Datapath::Fastdp)
            .iter()
            .all(|i| i.id != row));
        let blockers = ipv6_underlay_blockers(&release, Datapath::Fastdp);
        assert_eq!(blockers.iter().map(|i| i.id).collect::<Vec<_>>(), [row]);
        let modern = KernelRelease::parse("6.1.0-56-amd64").unwrap();
        assert!(ipv6_underlay_blockers(&modern, Datapath::Fastdp).is_empty());
    }

    #[test]
    fn vport_release_hang_row_on_debian_6_1_builds() {
        let row = "ovs-tunnel-vport-release-hang";
        let debian = |release: &str, package: &str| {
            let mut f = facts(release, 1500, Offload::Off);
            f.kernel_build = format!("#1 SMP PREEMPT_DYNAMIC Debian {package} (2026-05-22)");
            ids(&f)
        };
        // The builds the VM test saw hang, and the ones it saw complete.
        for (release, package) in [
            ("6.1.0-45-amd64", "6.1.170-1"),
            ("6.1.0-47-amd64", "6.1.170-3"),
            ("6.1.0-48-amd64", "6.1.172-1"),
            ("6.1.0-49-amd64", "6.1.174-1"),
        ] {
            assert!(debian(release, package).contains(&row), "{package}");
        }
        for (release, package) in [
            ("6.1.0-44-amd64", "6.1.164-1"),
            ("6.1.0-50-amd64", "6.1.176-1"),
            ("6.1.0-56-amd64", "6.1.192-2"),
        ] {
            assert!(!debian(release, package).contains(&row), "{package}");
        }
        // Without the build string a Debian release says 6.1.0: not matched.
        assert!(!ids(&facts("6.1.0-48-amd64", 1500, Offload::Off)).contains(&row));
        // Plain upstream releases by their own numbers; other series untouched.
        assert!(ids(&facts("6.1.168", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("6.1.175", 1500, Offload::Off)).contains(&row));
        assert!(!ids(&facts("6.6.170", 1500, Offload::Off)).contains(&row));
        let matched = {
            let mut f = facts("6.1.0-48-amd64", 1500, Offload::Off);
            f.kernel_build = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-22)".into();
            evaluate(&f).unwrap()
        };
        let m = matched.iter().find(|m| m.issue.id == row).unwrap();
        assert!(m.why.contains("from Debian 6.1.172-1"), "{}", m.why);
        let release = KernelRelease::parse("6.1.170").unwrap();
        let blockers = kernel_blockers(&release, Datapath::Fastdp);
        assert_eq!(blockers.len(), 1);
        assert_eq!(blockers[0].id, row);
        assert!(kernel_blockers(&release, Datapath::Udp).is_empty());
    }

    #[test]
    fn modern_kernels_match_nothing() {
        for kernel in [
            "6.18.44-fc-v669",
            "6.1.0-56-amd64",
            "5.15.0-91-generic",
            "3.10.0-1160.el7.x86_64",
        ] {
            assert_eq!(
                ids(&facts(kernel, 1500, Offload::NotOffered)),
                Vec::<&str>::new(),
                "{kernel}"
            );
        }
    }

    #[test]
    fn unparsable_release_is_an_error() {
        assert!(evaluate(&facts("garbage", 1500, Offload::Off)).is_err());
    }

    #[test]
    fn ranges_describe_themselves() {
        let d: Vec<String> = KNOWN_ISSUES.iter().map(|i| i.kernels.describe()).collect();
        assert_eq!(d[0], "upstream before 3.12.0; not el7 (backported)");
        assert_eq!(d[1], "upstream before 3.13.0; el7 builds 0 to before 229");
        assert_eq!(d[2], "el7 builds 327 and later (no fixed build known)");
        assert_eq!(d[3], "upstream 4.3.0 to before 4.5.0");
        assert_eq!(d[4], "upstream before 4.4.0");
        assert_eq!(d[5], "upstream 6.1.168 to before 6.1.175");
    }
}
