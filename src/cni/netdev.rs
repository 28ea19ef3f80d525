//! The real [`System`] of the CNI plugin: the weft socket, network
//! namespaces and rtnetlink. It does what the sans-IO core planned and
//! reports failures naming the interface, namespace or route. Also the
//! host-side steps weft itself takes for its pods: re-attaching them to a
//! new bridge, and the bridge's gateway address.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

use rscni_types::error::Error;

use super::api::{CniRequest, CniSuccess};
use super::client::{self, WeftError};
use super::plugin::{
    parse_alias, AttachPlan, Attached, HostLink, Inspection, Mode, PlannedRoute, System,
    ALIAS_PREFIX, CODE_SETUP,
};
use crate::sys::{in_netns, Link, Netlink, SysError};

/// nsfs's filesystem magic (linux/magic.h): what a network namespace file is on.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// `NS_GET_NSTYPE` (linux/nsfs.h, `_IO(0xb7, 0x3)`): the CLONE_NEW* type of
/// a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The plugin's effects on this host.
#[derive(Debug, Default)]
pub struct LinuxSystem;

fn setup(e: SysError) -> Error {
    Error::Custom(CODE_SETUP, "Network setup failed".into(), e.to_string())
}

fn setup_msg(what: String) -> Error {
    Error::Custom(CODE_SETUP, "Network setup failed".into(), what)
}

/// Opens `path` and checks that it is a namespace file (nsfs).
fn open_netns(path: &str) -> Result<File, Error> {
    let file = File::open(path).map_err(|e| {
        Error::NotExist(format!(
            "CNI_NETNS={path:?}: cannot open the network namespace ({e}); does the container still exist?"
        ))
    })?;
    // SAFETY: fstatfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    if rc != 0 || st.f_type as i64 != NSFS_MAGIC {
        return Err(Error::NotExist(format!(
            "CNI_NETNS={path:?} is not a network namespace (not an nsfs file)"
        )));
    }
    // SAFETY: an ioctl without arguments on an fd we hold.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    // -1 (kernels before 4.11 do not know the ioctl): nsfs is enough then.
    if kind != -1 && kind != libc::CLONE_NEWNET {
        return Err(Error::NotExist(format!(
            "CNI_NETNS={path:?} is a namespace, but not a network namespace"
        )));
    }
    Ok(file)
}

impl System for LinuxSystem {
    fn weft(&mut self, socket: &str, request: &CniRequest) -> Result<CniSuccess, WeftError> {
        client::call(socket, request)
    }

    fn check_netns(&mut self, path: &str) -> Result<(), Error> {
        open_netns(path).map(|_| ())
    }

    fn attach(&mut self, plan: &AttachPlan) -> Result<Attached, Error> {
        let netns = open_netns(&plan.netns)?;
        let mut host = Netlink::open().map_err(setup)?;
        // A host end left by an earlier ADD of the same attachment (ADD is
        // retried after failures): start again from nothing.
        if let Some(old) = host.link(&plan.host_veth).map_err(setup)? {
            host.delete_link(old.index, &plan.host_veth)
                .map_err(setup)?;
        }
        let bridge_index = match &plan.mode {
            Mode::Bridge { bridge } => Some(
                host.link(bridge)
                    .map_err(setup)?
                    .ok_or_else(|| {
                        setup_msg(format!(
                            "weft's bridge {bridge} does not exist in this network namespace; is weft running in bridge mode here?"
                        ))
                    })?
                    .index,
            ),
            Mode::Routed => None,
        };
        host.create_veth(&plan.host_veth, &plan.ifname, netns.as_raw_fd(), plan.mtu)
            .map_err(|e| {
                if e.is_exists() {
                    setup_msg(format!(
                        "{e}: an interface named {} already exists in {} (or {} on the host)",
                        plan.ifname, plan.netns, plan.host_veth
                    ))
                } else {
                    setup(e)
                }
            })?;
        let result = configure(&mut host, &netns, plan, bridge_index);
        if result.is_err() {
            if let Ok(Some(link)) = host.link(&plan.host_veth) {
                let _ = host.delete_link(link.index, &plan.host_veth);
            }
        }
        result
    }

    fn detach(&mut self, host_veth: &str) -> Result<bool, Error> {
        let mut host = Netlink::open().map_err(setup)?;
        let Some(link) = host.link(host_veth).map_err(setup)? else {
            return Ok(false);
        };
        match host.delete_link(link.index, host_veth) {
            Ok(()) => Ok(true),
            // Gone in between (the pod's namespace went away): fine.
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(setup(e)),
        }
    }

    fn inspect(&mut self, netns: &str, ifname: &str, host_veth: &str) -> Result<Inspection, Error> {
        let file = open_netns(netns)?;
        let mut host = Netlink::open().map_err(setup)?;
        let host_exists = host.link(host_veth).map_err(setup)?.is_some();
        let ifname = ifname.to_string();
        let pod = in_netns(&file, move || -> Result<_, SysError> {
            let mut rtnl = Netlink::open()?;
            let Some(link) = rtnl.link(&ifname)? else {
                return Ok(None);
            };
            let addresses = rtnl.addresses(link.index)?;
            Ok(Some((link, addresses)))
        })
        .map_err(|e| setup_msg(format!("cannot enter network namespace {netns}: {e}")))?
        .map_err(setup)?;
        Ok(match pod {
            Some((link, addresses)) => Inspection {
                pod_addresses: Some(addresses),
                pod_mtu: link.mtu,
                pod_up: link.up,
                host_veth: host_exists,
            },
            None => Inspection {
                pod_addresses: None,
                pod_mtu: 0,
                pod_up: false,
                host_veth: host_exists,
            },
        })
    }

    fn host_links(&mut self) -> Result<Vec<HostLink>, Error> {
        let mut host = Netlink::open().map_err(setup)?;
        Ok(host
            .links()
            .map_err(setup)?
            .into_iter()
            .filter(|l| l.alias.starts_with(ALIAS_PREFIX))
            .map(|l| HostLink {
                name: l.name,
                alias: l.alias,
            })
            .collect())
    }
}

/// Adds a planned route out of link `index`.
fn add_route(
    netlink: &mut Netlink,
    route: &PlannedRoute,
    index: u32,
    name: &str,
) -> Result<(), SysError> {
    netlink.add_route(
        route.dst.addr().into(),
        route.dst.prefix_len(),
        route.gateway.map(IpAddr::V4),
        index,
        name,
    )
}

/// Configures both ends of a new veth pair as `plan` says.
fn configure(
    host: &mut Netlink,
    netns: &File,
    plan: &AttachPlan,
    bridge_index: Option<u32>,
) -> Result<Attached, Error> {
    let link = host.link(&plan.host_veth).map_err(setup)?.ok_or_else(|| {
        setup_msg(format!(
            "{} vanished right after it was made",
            plan.host_veth
        ))
    })?;
    host.set_alias(link.index, &plan.host_veth, &plan.alias)
        .map_err(setup)?;
    match (&plan.mode, bridge_index) {
        (Mode::Bridge { bridge }, Some(bridge_index)) => host
            .set_controller(link.index, &plan.host_veth, bridge_index, bridge)
            .map_err(setup)?,
        _ => host
            .set_proxy_arp_and_forwarding(link.index, &plan.host_veth)
            .map_err(setup)?,
    }
    host.set_up(link.index, &plan.host_veth).map_err(setup)?;
    for route in &plan.host_routes {
        add_route(host, route, link.index, &plan.host_veth).map_err(setup)?;
    }
    for dst in &plan.host_routes6 {
        host.add_route(
            dst.addr().into(),
            dst.prefix_len(),
            None,
            link.index,
            &plan.host_veth,
        )
        .map_err(setup)?;
    }

    let pod_plan = plan.clone();
    let host_hw = link.hw.clone();
    let pod_mac = in_netns(netns, move || -> Result<String, SysError> {
        let mut rtnl = Netlink::open()?;
        let Some(pod) = rtnl.link(&pod_plan.ifname)? else {
            return Err(SysError::Refused {
                what: format!("find {} in {}", pod_plan.ifname, pod_plan.netns),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
                kernel_says: None,
            });
        };
        rtnl.add_address(
            pod.index,
            &pod_plan.ifname,
            IpAddr::V4(pod_plan.address.addr()),
            pod_plan.address.prefix_len(),
        )?;
        // The sys layer adds IPv6 addresses without duplicate address
        // detection (IFA_F_NODAD): IPAM made it unique, and a tentative
        // address could not be used for the first second or two.
        if let Some(address6) = pod_plan.address6 {
            rtnl.add_address(
                pod.index,
                &pod_plan.ifname,
                IpAddr::V6(address6.addr()),
                address6.prefix_len(),
            )?;
        }
        rtnl.set_up(pod.index, &pod_plan.ifname)?;
        if let Some(lo) = rtnl.link("lo")? {
            rtnl.set_up(lo.index, "lo")?;
        }
        if let Some(next_hop) = pod_plan.next_hop {
            rtnl.set_neighbour(pod.index, &pod_plan.ifname, next_hop.into(), &host_hw)?;
        }
        for route in &pod_plan.pod_routes {
            add_route(&mut rtnl, route, pod.index, &pod_plan.ifname)?;
        }
        if let Some(next_hop) = pod_plan.next_hop6 {
            rtnl.set_neighbour(pod.index, &pod_plan.ifname, next_hop.into(), &host_hw)?;
        }
        for route in &pod_plan.pod_routes6 {
            rtnl.add_route(
                route.dst.addr().into(),
                route.dst.prefix_len(),
                Some(IpAddr::V6(route.gateway)),
                pod.index,
                &pod_plan.ifname,
            )?;
        }
        Ok(pod.mac_text())
    })
    .map_err(|e| {
        setup_msg(format!(
            "cannot enter network namespace {}: {e}",
            plan.netns
        ))
    })?
    .map_err(setup)?;
    Ok(Attached {
        host_mac: link.mac_text(),
        pod_mac,
    })
}

/// The host ends of pods (alias `weft-cni NETWORK CONTAINER IFNAME`) that
/// are ports of no bridge. In bridge mode these are pods whose bridge went
/// away: weft deletes the bridge it made when it stops, which detaches
/// every port, and makes a new one when it starts again.
pub fn detached_pod_ends(links: &[Link]) -> Vec<&Link> {
    links
        .iter()
        .filter(|l| parse_alias(&l.alias).is_some() && l.controller.is_none())
        .collect()
}

/// At `weft launch` in bridge mode: puts the host ends of pods attached by
/// an earlier run back on `bridge` and brings them up, so a restart of weft
/// keeps its pods connected. Returns the interfaces re-attached; an
/// interface that cannot be re-attached is an error naming it.
pub fn reattach_pods(bridge: &str) -> Result<Vec<String>, String> {
    let mut rtnl = Netlink::open().map_err(|e| e.to_string())?;
    let links = rtnl.links().map_err(|e| e.to_string())?;
    let ends = detached_pod_ends(&links);
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    let Some(br) = links.iter().find(|l| l.name == bridge) else {
        return Err(format!("bridge {bridge} not found"));
    };
    let mut done = Vec::new();
    for end in ends {
        rtnl.set_controller(end.index, &end.name, br.index, bridge)
            .and_then(|()| rtnl.set_up(end.index, &end.name))
            .map_err(|e| {
                format!(
                    "{e}; the pod behind {} stays cut off until `ip link set {} master {bridge} up`",
                    end.name, end.name
                )
            })?;
        done.push(end.name.clone());
    }
    Ok(done)
}

/// Bridge mode without a host address in the range: puts the pods'
/// gateway `gateway/prefix_len` (an address IPAM gave the bridge) on
/// `bridge`, so pods route through it and, by the prefix route the kernel
/// adds with it, this host reaches the pod network through the bridge.
/// Already there is fine.
pub fn add_bridge_gateway(bridge: &str, gateway: IpAddr, prefix_len: u8) -> Result<(), String> {
    let mut rtnl = Netlink::open().map_err(|e| e.to_string())?;
    let br = rtnl
        .link(bridge)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("bridge {bridge} not found"))?;
    rtnl.add_address(br.index, bridge, gateway, prefix_len)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Takes the gateway off `bridge` again (weft stops, or the gateway is no
/// longer IPAM's); a bridge or address already gone is fine.
pub fn remove_bridge_gateway(bridge: &str, gateway: IpAddr, prefix_len: u8) -> Result<(), String> {
    let mut rtnl = Netlink::open().map_err(|e| e.to_string())?;
    let Some(br) = rtnl.link(bridge).map_err(|e| e.to_string())? else {
        return Ok(());
    };
    match rtnl.delete_address(br.index, bridge, gateway, prefix_len) {
        Err(e) if !e.is_not_found() => Err(e.to_string()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, alias: &str, controller: Option<u32>) -> Link {
        Link {
            index,
            name: name.into(),
            alias: alias.into(),
            mtu: 1376,
            up: true,
            controller,
            ..Link::default()
        }
    }

    #[test]
    fn only_pod_ends_without_a_bridge_are_reattached() {
        let links = [
            link(1, "lo", "", None),
            link(2, "weft", "", None),
            link(3, "vweft00000001", "weft-cni weftnet c1 eth0", None),
            link(4, "vweft00000002", "weft-cni weftnet c2 eth0", Some(2)),
            link(5, "veth-other", "", None),
            link(6, "vweft00000003", "weft-cni malformed", None),
            link(7, "vweft00000004", "weft-cni other c3 net1", None),
        ];
        let names: Vec<&str> = detached_pod_ends(&links)
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, ["vweft00000001", "vweft00000004"]);
    }
}
