//! A small synchronous rtnetlink client for the CNI plugin: links (veth
//! pairs, up, MTU, bridge port, alias, per-interface IPv4 settings),
//! addresses and routes, with messages from `netlink-packet-route` (the
//! rust-netlink project's typed rtnetlink messages) sent over a blocking
//! `netlink-sys` socket. `rtnetlink` (the same project's high-level crate)
//! is async and would bring a tokio runtime into a process that lives for
//! one request; this is the synchronous core of what it does.
//!
//! A socket belongs to the network namespace of the thread that opened it,
//! so the pod side is configured through a socket opened on a thread that
//! has entered the pod's namespace ([`in_netns`]).

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};

use rscni_types::ipnet::Ipv4Net;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What a failed rtnetlink request says: the operation and the errno.
#[derive(Debug)]
pub struct RtnlError {
    /// What was asked, e.g. `create veth vweft1a2b3c4d`.
    pub what: String,
    /// The kernel's (or the socket's) error.
    pub source: io::Error,
}

impl std::fmt::Display for RtnlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for RtnlError {}

impl RtnlError {
    /// Whether the kernel answered "no such device / entry".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }

    /// Whether the kernel answered "already exists".
    pub fn is_exists(&self) -> bool {
        self.source.raw_os_error() == Some(libc::EEXIST)
    }
}

/// Result of an rtnetlink request.
pub type Result<T> = std::result::Result<T, RtnlError>;

/// One link as a dump or GETLINK reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Interface alias (`ip link set ... alias`), empty when none.
    pub alias: String,
    /// Hardware address, `aa:bb:...`; empty when the link has none.
    pub mac: String,
    /// Hardware address, raw.
    pub hw: Vec<u8>,
    /// MTU.
    pub mtu: u32,
    /// Whether IFF_UP is set.
    pub up: bool,
    /// Index of the bridge (controller) this link is a port of.
    pub controller: Option<u32>,
}

/// A blocking rtnetlink socket in the namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

fn err(what: impl Into<String>, source: io::Error) -> RtnlError {
    RtnlError {
        what: what.into(),
        source,
    }
}

impl Rtnl {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> Result<Rtnl> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| err("open a NETLINK_ROUTE socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| err("bind the NETLINK_ROUTE socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect the NETLINK_ROUTE socket", e))?;
        Ok(Rtnl { socket, seq: 1 })
    }

    /// Sends one request and collects every reply message until the ACK (or
    /// DONE for a dump). A kernel error becomes `RtnlError` naming `what`.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| err(format!("{what} (send)"), e))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| err(format!("{what} (receive)"), e))?;
            let mut offset = 0;
            while offset < bytes.len() {
                let rest = &bytes[offset..];
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(|e| {
                        err(
                            format!("{what} (reply)"),
                            io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                        )
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(err(
                        format!("{what} (reply)"),
                        io::Error::new(io::ErrorKind::InvalidData, "zero-length netlink message"),
                    ));
                }
                offset += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => {
                            return Err(err(what, io::Error::from_raw_os_error(-code.get())))
                        }
                        // An ACK (error 0) ends a non-dump request.
                        None => return Ok(replies),
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every link of this namespace.
    pub fn links(&mut self) -> Result<Vec<LinkState>> {
        let replies = self.request(
            "list links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_state(&l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`, or None when there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<LinkState>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("look up interface {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_state(&l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether link `name` forwards IPv4 (`net.ipv4.conf.NAME.forwarding`);
    /// `None` when there is no such link or the kernel did not say.
    pub fn ipv4_forwarding(&mut self, name: &str) -> Result<Option<bool>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        let replies = match self.request(
            &format!("look up interface {name}"),
            RouteNetlinkMessage::GetLink(msg),
            0,
        ) {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(replies.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                LinkAttribute::AfSpecUnspec(specs) => specs.iter().find_map(|s| match s {
                    AfSpecUnspec::Inet(inet) => inet.iter().find_map(|i| match i {
                        AfSpecInet::DevConf(conf) => Some(conf.forwarding != 0),
                        _ => None,
                    }),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        }))
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
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(host_name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.request(
            &format!("create veth pair {host_name} / {peer_name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Deletes link `index` (for a veth: both ends).
    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            &format!("delete interface {name}"),
            RouteNetlinkMessage::DelLink(msg),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Changes link `index`: the given attributes and, with `up`, IFF_UP.
    pub fn set_link(
        &mut self,
        index: u32,
        what: &str,
        attributes: Vec<LinkAttribute>,
        up: bool,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes = attributes;
        self.request(what, RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)?;
        Ok(())
    }

    /// Brings link `index` up.
    pub fn set_up(&mut self, index: u32, name: &str) -> Result<()> {
        self.set_link(index, &format!("bring {name} up"), Vec::new(), true)
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

    /// Adds `address/prefix_len` to link `index`.
    pub fn add_address(
        &mut self,
        index: u32,
        name: &str,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<()> {
        match self.request(
            &format!("add address {address}/{prefix_len} to {name}"),
            RouteNetlinkMessage::NewAddress(address_message(index, address, prefix_len)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Removes `address/prefix_len` from link `index` (with it the
    /// kernel removes the prefix route it made).
    pub fn del_address(
        &mut self,
        index: u32,
        name: &str,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<()> {
        self.request(
            &format!("remove address {address}/{prefix_len} from {name}"),
            RouteNetlinkMessage::DelAddress(address_message(index, address, prefix_len)),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// The addresses of link `index`, as (address, prefix length).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let replies = self.request(
            "list addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for m in replies {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if a.header.index != index {
                    continue;
                }
                let local = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = local.or(address) {
                    out.push((ip, a.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Sets a permanent neighbour entry: `ip` is at `mac` on link `index`.
    pub fn set_neighbour(
        &mut self,
        index: u32,
        name: &str,
        ip: Ipv4Addr,
        mac: &[u8],
    ) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            &format!("add neighbour {ip} on {name}"),
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Adds a route in the main table: `dst/prefix_len` out of link
    /// `index`, via `gateway` when given (scope universe), else on-link
    /// (scope link).
    pub fn add_route(
        &mut self,
        dst: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        index: u32,
        name: &str,
    ) -> Result<()> {
        let (prefix_len, dst) = (dst.prefix_len(), dst.addr());
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        match self.request(
            &format!("add route {dst}/{prefix_len}{via} dev {name}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// `address/prefix_len` on link `index`, for adding or removing it.
fn address_message(index: u32, address: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(address);
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(address));
    msg.attributes.push(AddressAttribute::Address(address));
    msg
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn link_state(l: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: l.header.index,
        name: String::new(),
        alias: String::new(),
        mac: String::new(),
        hw: Vec::new(),
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        controller: None,
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => state.name = n.clone(),
            LinkAttribute::IfAlias(a) => state.alias = a.clone(),
            LinkAttribute::Mtu(m) => state.mtu = *m,
            LinkAttribute::Controller(c) => state.controller = Some(*c),
            LinkAttribute::Address(mac) => {
                state.hw = mac.clone();
                state.mac = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            }
            _ => {}
        }
    }
    state
}

/// Runs `f` on a new thread that has entered the network namespace `netns`
/// (an open nsfs file); sockets `f` opens belong to that namespace. The
/// calling thread never changes namespace.
pub fn in_netns<T: Send>(
    netns: &File,
    f: impl FnOnce() -> T + Send,
) -> std::result::Result<T, io::Error> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on an fd we hold open; it changes only this
            // thread, which ends when `f` returns.
            let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}
