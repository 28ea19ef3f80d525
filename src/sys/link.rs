//! Links: look up by name or index, create (veth pair, bridge), delete,
//! up, MTU, alias, bridge ports (controller, isolation, forgetting learned
//! MACs) and the per-interface IPv4 settings (forwarding, proxy ARP).

use std::os::fd::RawFd;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, InetDevConf, InfoBridgePort, InfoData, InfoKind,
    InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
    XdpAttached,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::xdp::{AttachMode, XdpProgram};
use super::{Netlink, Result, SysError};
use crate::wire::ethernet::MacAddr;

/// One link as the kernel reports it (RTM_NEWLINK).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Interface alias (IFLA_IFALIAS), empty when none.
    pub alias: String,
    /// Hardware address, raw; empty when the link has none.
    pub hw: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// Whether IFF_UP is set.
    pub up: bool,
    /// Index of the bridge (controller) this link is a port of.
    pub controller: Option<u32>,
    /// The link's kind (IFLA_INFO_KIND: `bridge`, `veth`, `tun`...), empty
    /// for links without one (physical NICs, loopback).
    pub kind: String,
    /// Number of RX queues (at least 1).
    pub rx_queues: u32,
    /// The XDP program attached, if any.
    pub xdp: Option<XdpProgram>,
}

impl Link {
    /// The hardware address as a MAC (None unless Ethernet-like).
    pub fn mac(&self) -> Option<MacAddr> {
        (self.hw.len() == 6).then(|| MacAddr::from_bytes(&self.hw))?
    }

    /// The hardware address as `aa:bb:...` text; empty when none.
    pub fn mac_text(&self) -> String {
        self.hw
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Whether this link is a Linux bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind == "bridge"
    }
}

/// Parses a link message; total (unknown attributes are skipped).
pub(super) fn parse_link(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        rx_queues: 1,
        ..Link::default()
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::IfAlias(a) => link.alias = a.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::Address(hw) => link.hw = hw.clone(),
            LinkAttribute::NumRxQueues(n) => link.rx_queues = (*n).max(1),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = kind.to_string();
                    }
                }
            }
            LinkAttribute::Xdp(xdp) => link.xdp = parse_xdp(xdp),
            _ => {}
        }
    }
    link
}

fn parse_xdp(attributes: &[LinkXdp]) -> Option<XdpProgram> {
    let mut mode = None;
    let mut id = 0;
    for attribute in attributes {
        match attribute {
            LinkXdp::Attached(attached) => {
                mode = match attached {
                    XdpAttached::None => None,
                    XdpAttached::Driver => Some(AttachMode::Native),
                    XdpAttached::SocketBuffer => Some(AttachMode::Generic),
                    XdpAttached::Hardware => Some(AttachMode::Offload),
                    _ => Some(AttachMode::Multi),
                }
            }
            LinkXdp::ProgId(p) => id = *p,
            _ => {}
        }
    }
    mode.map(|mode| XdpProgram { id, mode })
}

fn link_replies(replies: Vec<RouteNetlinkMessage>) -> impl Iterator<Item = Link> {
    replies.into_iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
        _ => None,
    })
}

fn by_index(index: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message
}

impl Netlink {
    /// Every link of this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.request(
            "list the interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(link_replies(replies).collect())
    }

    /// The link named `name`, or None when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        if name.is_empty() || name.len() > 15 || name.contains(['/', '\0']) {
            // The kernel would say EINVAL or ERANGE: no such link can exist.
            return Ok(None);
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("look up interface {name}"),
            RouteNetlinkMessage::GetLink(message),
            0,
        ) {
            Ok(replies) => Ok(link_replies(replies).next()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link named `name`; [`SysError::NoSuchLink`] when there is none.
    pub fn require_link(&mut self, name: &str) -> Result<Link> {
        self.link(name)?.ok_or_else(|| SysError::NoSuchLink {
            name: name.to_string(),
        })
    }

    /// The link with index `index`, or None when there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        match self.request(
            &format!("look up interface index {index}"),
            RouteNetlinkMessage::GetLink(by_index(index)),
            0,
        ) {
            Ok(replies) => Ok(link_replies(replies).next()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a link named `name` exists.
    pub fn link_exists(&mut self, name: &str) -> Result<bool> {
        Ok(self.link(name)?.is_some())
    }

    /// Creates the veth pair `host_name` (here) / `peer_name` (in the
    /// namespace `peer_netns`), both with `mtu`.
    pub fn create_veth(
        &mut self,
        host_name: &str,
        peer_name: &str,
        peer_netns: RawFd,
        mtu: u32,
    ) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        peer.attributes.push(LinkAttribute::Mtu(mtu));
        peer.attributes.push(LinkAttribute::NetNsFd(peer_netns));
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        message.attributes.push(LinkAttribute::Mtu(mtu));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            &format!("create veth pair {host_name} / {peer_name}"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Creates the Linux bridge `name` (down, default settings) and
    /// returns it.
    pub fn create_bridge(&mut self, name: &str) -> Result<Link> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        self.require_link(name)
    }

    /// Deletes link `index` (for a veth: both ends).
    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<()> {
        self.request(
            &format!("delete interface {name}"),
            RouteNetlinkMessage::DelLink(by_index(index)),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Changes link `index`: the given attributes and, with `up`, IFF_UP.
    fn set_link(
        &mut self,
        index: u32,
        what: &str,
        attributes: Vec<LinkAttribute>,
        up: bool,
    ) -> Result<()> {
        let mut message = by_index(index);
        if up {
            message.header.flags = LinkFlags::Up;
            message.header.change_mask = LinkFlags::Up;
        }
        message.attributes = attributes;
        self.request(what, RouteNetlinkMessage::SetLink(message), NLM_F_ACK)?;
        Ok(())
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_link(index, &format!("bring {name} up"), Vec::new(), true)
    }

    /// Sets the MTU of link `index`.
    pub fn set_mtu(&mut self, index: u32, name: &str, mtu: u32) -> Result<()> {
        self.set_link(
            index,
            &format!("set the MTU of {name} to {mtu}"),
            vec![LinkAttribute::Mtu(mtu)],
            false,
        )
    }

    /// Sets the alias of link `index`.
    pub fn set_alias(&mut self, index: u32, name: &str, alias: &str) -> Result<()> {
        self.set_link(
            index,
            &format!("set the alias of {name}"),
            vec![LinkAttribute::IfAlias(alias.to_string())],
            false,
        )
    }

    /// Makes link `index` a port of bridge `bridge_index`.
    pub fn set_controller(
        &mut self,
        index: u32,
        name: &str,
        bridge_index: u32,
        bridge: &str,
    ) -> Result<()> {
        self.set_link(
            index,
            &format!("attach {name} to bridge {bridge}"),
            vec![LinkAttribute::Controller(bridge_index)],
            false,
        )
    }

    /// Changes bridge port settings of link `index` (a port of a bridge):
    /// IFLA_LINKINFO with the port kind `bridge`, as `ip link set dev X
    /// type bridge_slave ...` sends. RTM_NEWLINK on an existing link, not
    /// RTM_SETLINK: only the former hands IFLA_LINKINFO to the bridge.
    fn set_bridge_port(
        &mut self,
        index: u32,
        what: &str,
        settings: Vec<InfoBridgePort>,
    ) -> Result<()> {
        let mut message = by_index(index);
        message.attributes = vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(settings)),
        ])];
        self.request(what, RouteNetlinkMessage::NewLink(message), NLM_F_ACK)?;
        Ok(())
    }

    /// Isolates bridge port `index`: it forwards only to non-isolated
    /// ports (Linux 4.18+).
    pub fn set_bridge_port_isolated(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_bridge_port(
            index,
            &format!("isolate bridge port {name}"),
            vec![InfoBridgePort::Isolated(true)],
        )
    }

    /// Makes the bridge forget the MACs it learned on port `index`
    /// (IFLA_BRPORT_FLUSH: dynamic FDB entries only).
    pub fn flush_bridge_port(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_bridge_port(
            index,
            &format!("forget the MACs the bridge learned on {name}"),
            vec![InfoBridgePort::Flush],
        )
    }

    /// Whether link `name` forwards IPv4 (`net.ipv4.conf.NAME.forwarding`);
    /// `None` when there is no such link or the kernel did not say.
    pub fn ipv4_forwarding(&mut self, name: &str) -> Result<Option<bool>> {
        self.forwarding(name, false)
    }

    /// Whether link `name` forwards IPv6 (`net.ipv6.conf.NAME.forwarding`,
    /// which `net.ipv6.conf.all.forwarding` sets on every link); `None`
    /// when there is no such link or the kernel did not say.
    pub fn ipv6_forwarding(&mut self, name: &str) -> Result<Option<bool>> {
        self.forwarding(name, true)
    }

    fn forwarding(&mut self, name: &str, v6: bool) -> Result<Option<bool>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let replies = match self.request(
            &format!("look up interface {name}"),
            RouteNetlinkMessage::GetLink(message),
            0,
        ) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let of_spec = |s: &AfSpecUnspec| match s {
            AfSpecUnspec::Inet(inet) if !v6 => inet.iter().find_map(|i| match i {
                AfSpecInet::DevConf(conf) => Some(conf.forwarding != 0),
                _ => None,
            }),
            AfSpecUnspec::Inet6(inet6) if v6 => inet6.iter().find_map(|i| match i {
                AfSpecInet6::DevConf(conf) => Some(conf.forwarding != 0),
                _ => None,
            }),
            _ => None,
        };
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(of_spec),
                _ => None,
            }),
            _ => None,
        }))
    }

    /// Turns on proxy ARP and IPv4 forwarding on link `index` (the host end
    /// of a routed pod link): the host answers the pod's ARP for its
    /// link-local next hop, and forwards what the pod sends.
    pub fn set_proxy_arp_and_forwarding(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_inet_conf(index, name, true)
    }

    /// Turns on IPv4 forwarding of packets arriving on link `index` (and
    /// proxy ARP with `proxy_arp`). Only the values set are sent: the
    /// link's other settings stay as they are.
    pub fn set_inet_conf(&mut self, index: u32, name: &str, proxy_arp: bool) -> Result<()> {
        let mut conf = InetDevConf::default();
        conf.proxy_arp = i32::from(proxy_arp);
        conf.forwarding = 1;
        let what = if proxy_arp {
            format!("turn on proxy ARP and forwarding on {name}")
        } else {
            format!("turn on forwarding on {name}")
        };
        self.set_link(
            index,
            &what,
            vec![LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])])],
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_parse_reads_what_weft_uses() {
        let mut message = LinkMessage::default();
        message.header.index = 7;
        message.header.flags = LinkFlags::Up;
        message.attributes = vec![
            LinkAttribute::IfName("weft".into()),
            LinkAttribute::Mtu(1376),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Controller(3),
            LinkAttribute::NumRxQueues(0),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
            LinkAttribute::Xdp(vec![
                LinkXdp::Attached(XdpAttached::SocketBuffer),
                LinkXdp::ProgId(42),
            ]),
        ];
        let link = parse_link(&message);
        assert_eq!(link.index, 7);
        assert!(link.up && link.is_bridge());
        assert_eq!(link.mtu, 1376);
        assert_eq!(link.mac_text(), "02:00:00:00:00:01");
        assert_eq!(link.mac(), Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(link.controller, Some(3));
        assert_eq!(link.rx_queues, 1);
        assert_eq!(
            link.xdp,
            Some(XdpProgram {
                id: 42,
                mode: AttachMode::Generic
            })
        );
        let empty = parse_link(&LinkMessage::default());
        assert_eq!(empty.mac(), None);
        assert_eq!(empty.xdp, None);
        assert!(!empty.is_bridge());
    }
}
