//! Open vSwitch datapath netlink message layouts (linux/openvswitch.h):
//! the attribute numbers weft uses, an attribute tree that emits through
//! netlink-packet-core's [`Nla`], and total parsers for what the kernel
//! sends back (flow keys of misses and dumps, flow stats, actions).
//!
//! The kernel validates flow keys strictly: a key names only the attributes
//! it matches on (absent ones are wildcarded); `ETHERTYPE` is left out so a
//! flow matches every protocol, and an IPv4 key with protocol 17 would also
//! need the UDP key (weft never matches on L3, so it never sends one).
//!
//! Tunnel keys carry either IPv4 (`IPV4_SRC`/`IPV4_DST`) or IPv6
//! (`IPV6_SRC`/`IPV6_DST`, Linux 4.4+) outer addresses, never both: the
//! kernel refuses a mixed key, and the parsers here do too.

use netlink_packet_core::{Emitable, Nla, NlasIterator};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `OVS_DATAPATH_FAMILY` and friends: the four generic-netlink families.
pub const FAMILY_DATAPATH: &str = "ovs_datapath";
/// Generic-netlink family for vports.
pub const FAMILY_VPORT: &str = "ovs_vport";
/// Generic-netlink family for flows.
pub const FAMILY_FLOW: &str = "ovs_flow";
/// Generic-netlink family for packets (misses up, executes down).
pub const FAMILY_PACKET: &str = "ovs_packet";

/// `OVS_DATAPATH_VERSION`.
pub const DATAPATH_VERSION: u8 = 2;
/// `OVS_VPORT_VERSION`, `OVS_FLOW_VERSION`, `OVS_PACKET_VERSION`.
pub const OTHER_VERSION: u8 = 1;

/// Commands shared by the datapath, vport and flow families (`OVS_*_CMD_*`).
pub const CMD_NEW: u8 = 1;
/// Delete a datapath, vport or flow (no key: flush all flows).
pub const CMD_DEL: u8 = 2;
/// Get one object, or dump them all with `NLM_F_DUMP`.
pub const CMD_GET: u8 = 3;

/// `OVS_PACKET_CMD_MISS`: a packet that matched no flow, sent up.
pub const PACKET_CMD_MISS: u8 = 1;
/// `OVS_PACKET_CMD_EXECUTE`: apply actions to a packet sent down.
pub const PACKET_CMD_EXECUTE: u8 = 3;

/// `OVS_DP_ATTR_*`.
pub const DP_ATTR_NAME: u16 = 1;
/// Netlink port that receives misses of the datapath's local port.
pub const DP_ATTR_UPCALL_PID: u16 = 2;
/// `struct ovs_dp_stats` (hit, missed, lost, flows).
pub const DP_ATTR_STATS: u16 = 3;

/// `OVS_VPORT_ATTR_*`.
pub const VPORT_ATTR_PORT_NO: u16 = 1;
/// `OVS_VPORT_TYPE_*` as u32.
pub const VPORT_ATTR_TYPE: u16 = 2;
/// Device name of the vport.
pub const VPORT_ATTR_NAME: u16 = 3;
/// Nested `OVS_TUNNEL_ATTR_*`.
pub const VPORT_ATTR_OPTIONS: u16 = 4;
/// Netlink port for misses on this vport; the kernel requires it.
pub const VPORT_ATTR_UPCALL_PID: u16 = 5;

/// `OVS_VPORT_TYPE_INTERNAL`: the datapath's own local port.
pub const VPORT_TYPE_INTERNAL: u32 = 2;
/// `OVS_VPORT_TYPE_VXLAN`: a metadata-collecting VXLAN device.
pub const VPORT_TYPE_VXLAN: u32 = 4;
/// `OVS_TUNNEL_ATTR_DST_PORT` (u16, host order): the UDP port of the tunnel.
pub const TUNNEL_ATTR_DST_PORT: u16 = 1;

/// `OVS_FLOW_ATTR_*`.
pub const FLOW_ATTR_KEY: u16 = 1;
/// Nested `OVS_ACTION_ATTR_*`.
pub const FLOW_ATTR_ACTIONS: u16 = 2;
/// `struct ovs_flow_stats { u64 n_packets; u64 n_bytes; }`.
pub const FLOW_ATTR_STATS: u16 = 3;
/// Milliseconds (kernel monotonic) when the flow last matched.
pub const FLOW_ATTR_USED: u16 = 5;

/// `OVS_PACKET_ATTR_*`.
pub const PACKET_ATTR_PACKET: u16 = 1;
/// Nested flow key of the packet.
pub const PACKET_ATTR_KEY: u16 = 2;
/// Nested actions to execute.
pub const PACKET_ATTR_ACTIONS: u16 = 3;

/// `OVS_KEY_ATTR_*` weft uses.
pub const KEY_ATTR_PRIORITY: u16 = 2;
/// u32 datapath port number the packet came in on.
pub const KEY_ATTR_IN_PORT: u16 = 3;
/// `struct ovs_key_ethernet { u8 src[6]; u8 dst[6]; }`.
pub const KEY_ATTR_ETHERNET: u16 = 4;
/// be16 ethertype (left out of flow keys: match any).
pub const KEY_ATTR_ETHERTYPE: u16 = 6;
/// Nested `OVS_TUNNEL_KEY_ATTR_*`.
pub const KEY_ATTR_TUNNEL: u16 = 16;

/// `OVS_TUNNEL_KEY_ATTR_ID`: be64 tunnel id (the VNI in the low 24 bits).
pub const TUNNEL_KEY_ATTR_ID: u16 = 0;
/// be32 outer source address.
pub const TUNNEL_KEY_ATTR_IPV4_SRC: u16 = 1;
/// be32 outer destination address.
pub const TUNNEL_KEY_ATTR_IPV4_DST: u16 = 2;
/// u8 outer TOS.
pub const TUNNEL_KEY_ATTR_TOS: u16 = 3;
/// u8 outer TTL (the kernel requires it in a tunnel key).
pub const TUNNEL_KEY_ATTR_TTL: u16 = 4;
/// Flag: set DF on the outer header (IPv4 only: IPv6 routers never fragment).
pub const TUNNEL_KEY_ATTR_DONT_FRAGMENT: u16 = 5;
/// Flag: compute the outer UDP checksum (weft sets it over IPv6, where a
/// zero UDP checksum is only allowed by exception, RFC 6935).
pub const TUNNEL_KEY_ATTR_CSUM: u16 = 6;
/// `struct in6_addr` outer source address (Linux 4.4+). The enum counts
/// from `ID` = 0, so this is 12 (14 is `PAD`, which the kernel wants empty).
pub const TUNNEL_KEY_ATTR_IPV6_SRC: u16 = 12;
/// `struct in6_addr` outer destination address (Linux 4.4+).
pub const TUNNEL_KEY_ATTR_IPV6_DST: u16 = 13;

/// `OVS_ACTION_ATTR_OUTPUT`: u32 port number.
pub const ACTION_ATTR_OUTPUT: u16 = 1;
/// `OVS_ACTION_ATTR_SET`: nested key attribute to set (here: the tunnel).
pub const ACTION_ATTR_SET: u16 = 3;

/// One netlink attribute to emit: bytes or nested attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    /// A leaf attribute with its raw value.
    Bytes {
        /// Attribute type.
        kind: u16,
        /// Value as it goes on the wire.
        value: Vec<u8>,
    },
    /// An attribute whose value is a list of attributes.
    Nested {
        /// Attribute type.
        kind: u16,
        /// The inner attributes.
        children: Vec<Attr>,
    },
}

impl Attr {
    /// A u32 attribute in host byte order (OVS convention for port numbers, pids).
    pub fn u32(kind: u16, value: u32) -> Attr {
        Attr::Bytes {
            kind,
            value: value.to_ne_bytes().to_vec(),
        }
    }
    /// A u16 attribute in host byte order.
    pub fn u16(kind: u16, value: u16) -> Attr {
        Attr::Bytes {
            kind,
            value: value.to_ne_bytes().to_vec(),
        }
    }
    /// A NUL-terminated string attribute (device names).
    pub fn string(kind: u16, value: &str) -> Attr {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        Attr::Bytes { kind, value: bytes }
    }
    /// A flag attribute (no value).
    pub fn flag(kind: u16) -> Attr {
        Attr::Bytes {
            kind,
            value: Vec::new(),
        }
    }
    /// Raw bytes.
    pub fn bytes(kind: u16, value: &[u8]) -> Attr {
        Attr::Bytes {
            kind,
            value: value.to_vec(),
        }
    }
    /// Nested attributes.
    pub fn nested(kind: u16, children: Vec<Attr>) -> Attr {
        Attr::Nested { kind, children }
    }
    /// The attribute's type.
    pub fn kind_of(&self) -> u16 {
        match self {
            Attr::Bytes { kind, .. } | Attr::Nested { kind, .. } => *kind,
        }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes { value, .. } => value.len(),
            Attr::Nested { children, .. } => children.iter().map(Emitable::buffer_len).sum(),
        }
    }
    fn kind(&self) -> u16 {
        self.kind_of()
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes { value, .. } => buffer[..value.len()].copy_from_slice(value),
            Attr::Nested { children, .. } => {
                let mut offset = 0;
                for child in children {
                    let len = child.buffer_len();
                    child.emit(&mut buffer[offset..offset + len]);
                    offset += len;
                }
            }
        }
    }
}

/// Why a message from the kernel could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ParseError {}

/// Splits an attribute stream into `(type, value)` pairs (flags masked off).
/// Total: a truncated or overlong attribute is an error, never a panic.
pub fn split_attrs(buffer: &[u8]) -> Result<Vec<(u16, &[u8])>, ParseError> {
    let mut out = Vec::new();
    for nla in NlasIterator::new(buffer) {
        let nla = nla.map_err(|e| ParseError(format!("malformed netlink attribute: {e}")))?;
        let kind = nla.kind() & netlink_packet_core::NLA_TYPE_MASK;
        let length = usize::from(nla.length());
        let whole: &[u8] = nla.into_inner();
        let value = whole
            .get(netlink_packet_core::NLA_HEADER_SIZE..length)
            .ok_or_else(|| {
                ParseError(format!("netlink attribute {kind} with bad length {length}"))
            })?;
        out.push((kind, value));
    }
    Ok(out)
}

fn find<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn fixed<const N: usize>(value: &[u8], what: &str) -> Result<[u8; N], ParseError> {
    value
        .get(..N)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ParseError(format!("{what}: {} bytes, expected {N}", value.len())))
}

/// A MAC address: the one type the wire parsers use.
pub use crate::wire::ethernet::MacAddr as Mac;

/// The outer (underlay) side of a packet that arrived through the VXLAN
/// vport: IPv4 or IPv6 addresses, one family per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelKey {
    /// Tunnel id (VNI).
    pub id: u64,
    /// Outer source address: the sending peer.
    pub src: Option<IpAddr>,
    /// Outer destination address: this host.
    pub dst: Option<IpAddr>,
}

/// The parts of a kernel flow key weft decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    /// Datapath port the packet came in on.
    pub in_port: u32,
    /// Ethernet source.
    pub eth_src: Mac,
    /// Ethernet destination.
    pub eth_dst: Mac,
    /// Ethertype (absent for 802.2 frames and in wildcarding flow keys).
    pub ethertype: Option<u16>,
    /// Present when the packet came out of a tunnel.
    pub tunnel: Option<TunnelKey>,
}

impl FlowKey {
    /// Parses a nested `OVS_KEY_ATTR_*` stream (from a miss or a flow dump).
    pub fn parse(buffer: &[u8]) -> Result<FlowKey, ParseError> {
        let attrs = split_attrs(buffer)?;
        let in_port = find(&attrs, KEY_ATTR_IN_PORT)
            .ok_or_else(|| ParseError("flow key without in_port".into()))?;
        let in_port = u32::from_ne_bytes(fixed(in_port, "in_port")?);
        let eth = find(&attrs, KEY_ATTR_ETHERNET)
            .ok_or_else(|| ParseError("flow key without ethernet addresses".into()))?;
        let eth: [u8; 12] = fixed(eth, "ethernet key")?;
        let mut eth_src = [0u8; 6];
        let mut eth_dst = [0u8; 6];
        eth_src.copy_from_slice(&eth[..6]);
        eth_dst.copy_from_slice(&eth[6..]);
        let ethertype = match find(&attrs, KEY_ATTR_ETHERTYPE) {
            Some(v) => Some(u16::from_be_bytes(fixed(v, "ethertype")?)),
            None => None,
        };
        let tunnel = match find(&attrs, KEY_ATTR_TUNNEL) {
            Some(v) => Some(TunnelKey::parse(v)?),
            None => None,
        };
        Ok(FlowKey {
            in_port,
            eth_src: Mac(eth_src),
            eth_dst: Mac(eth_dst),
            ethertype,
            tunnel,
        })
    }

    /// The key weft installs: in_port and both MACs (and, for tunnel
    /// ingress, nothing of the tunnel: the VXLAN vport only carries this
    /// network's traffic, and a tunnel match would need TTL/TOS masks).
    /// Ethertype is left out so the flow matches every protocol.
    pub fn to_match_attrs(&self) -> Vec<Attr> {
        let mut eth = Vec::with_capacity(12);
        eth.extend_from_slice(&self.eth_src.0);
        eth.extend_from_slice(&self.eth_dst.0);
        vec![
            Attr::u32(KEY_ATTR_IN_PORT, self.in_port),
            Attr::bytes(KEY_ATTR_ETHERNET, &eth),
        ]
    }
}

impl TunnelKey {
    /// Parses nested `OVS_TUNNEL_KEY_ATTR_*`. A key with both IPv4 and
    /// IPv6 addresses is refused, as the kernel refuses it.
    pub fn parse(buffer: &[u8]) -> Result<TunnelKey, ParseError> {
        let attrs = split_attrs(buffer)?;
        let id = match find(&attrs, TUNNEL_KEY_ATTR_ID) {
            Some(v) => u64::from_be_bytes(fixed(v, "tunnel id")?),
            None => 0,
        };
        let (src, dst) = tunnel_addresses(&attrs)?;
        Ok(TunnelKey { id, src, dst })
    }

    /// The key as nested attributes (id, then the addresses of its family).
    pub fn to_attrs(&self) -> Vec<Attr> {
        let mut attrs = vec![Attr::bytes(TUNNEL_KEY_ATTR_ID, &self.id.to_be_bytes())];
        if let Some(src) = self.src {
            attrs.push(address_attr(
                src,
                TUNNEL_KEY_ATTR_IPV4_SRC,
                TUNNEL_KEY_ATTR_IPV6_SRC,
            ));
        }
        if let Some(dst) = self.dst {
            attrs.push(address_attr(
                dst,
                TUNNEL_KEY_ATTR_IPV4_DST,
                TUNNEL_KEY_ATTR_IPV6_DST,
            ));
        }
        attrs
    }
}

/// An outer address as the attribute of its family.
fn address_attr(addr: IpAddr, v4_kind: u16, v6_kind: u16) -> Attr {
    match addr {
        IpAddr::V4(a) => Attr::bytes(v4_kind, &a.octets()),
        IpAddr::V6(a) => Attr::bytes(v6_kind, &a.octets()),
    }
}

/// The outer source and destination of a tunnel key: IPv4 or IPv6, never
/// a mix (the kernel's rule). Total.
fn tunnel_addresses(
    attrs: &[(u16, &[u8])],
) -> Result<(Option<IpAddr>, Option<IpAddr>), ParseError> {
    let v4 = |kind, what| -> Result<Option<IpAddr>, ParseError> {
        find(attrs, kind)
            .map(|v| fixed::<4>(v, what).map(|b| IpAddr::V4(Ipv4Addr::from(b))))
            .transpose()
    };
    let v6 = |kind, what| -> Result<Option<IpAddr>, ParseError> {
        find(attrs, kind)
            .map(|v| fixed::<16>(v, what).map(|b| IpAddr::V6(Ipv6Addr::from(b))))
            .transpose()
    };
    let (src4, dst4) = (
        v4(TUNNEL_KEY_ATTR_IPV4_SRC, "tunnel ipv4_src")?,
        v4(TUNNEL_KEY_ATTR_IPV4_DST, "tunnel ipv4_dst")?,
    );
    let (src6, dst6) = (
        v6(TUNNEL_KEY_ATTR_IPV6_SRC, "tunnel ipv6_src")?,
        v6(TUNNEL_KEY_ATTR_IPV6_DST, "tunnel ipv6_dst")?,
    );
    if (src4.is_some() || dst4.is_some()) && (src6.is_some() || dst6.is_some()) {
        return Err(ParseError(
            "tunnel key with both IPv4 and IPv6 addresses".into(),
        ));
    }
    Ok((src4.or(src6), dst4.or(dst6)))
}

/// One datapath action weft uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the tunnel metadata for the next output to the VXLAN vport.
    SetTunnel {
        /// VNI.
        vni: u32,
        /// Underlay address of the peer (IPv4 or IPv6: the outer header's family).
        dst: IpAddr,
        /// Outer TTL (IPv6: hop limit).
        ttl: u8,
        /// Set DF on the outer IPv4 header (weft never lets the kernel fragment).
        dont_fragment: bool,
        /// Compute the outer UDP checksum.
        checksum: bool,
    },
    /// Send out of a datapath port.
    Output(u32),
}

impl Action {
    /// The tunnel weft sets towards a peer: DF on an IPv4 outer header (the
    /// kernel never fragments for weft), the UDP checksum on an IPv6 one
    /// (a zero checksum over IPv6 is an exception receivers may refuse).
    pub fn tunnel_to(vni: u32, peer: IpAddr, ttl: u8) -> Action {
        Action::SetTunnel {
            vni,
            dst: peer,
            ttl,
            dont_fragment: peer.is_ipv4(),
            checksum: peer.is_ipv6(),
        }
    }

    /// The action as a netlink attribute.
    pub fn to_attr(&self) -> Attr {
        match *self {
            Action::Output(port) => Attr::u32(ACTION_ATTR_OUTPUT, port),
            Action::SetTunnel {
                vni,
                dst,
                ttl,
                dont_fragment,
                checksum,
            } => {
                let mut tunnel = vec![
                    Attr::bytes(TUNNEL_KEY_ATTR_ID, &u64::from(vni).to_be_bytes()),
                    address_attr(dst, TUNNEL_KEY_ATTR_IPV4_DST, TUNNEL_KEY_ATTR_IPV6_DST),
                    Attr::bytes(TUNNEL_KEY_ATTR_TTL, &[ttl]),
                ];
                if dont_fragment {
                    tunnel.push(Attr::flag(TUNNEL_KEY_ATTR_DONT_FRAGMENT));
                }
                if checksum {
                    tunnel.push(Attr::flag(TUNNEL_KEY_ATTR_CSUM));
                }
                Attr::nested(ACTION_ATTR_SET, vec![Attr::nested(KEY_ATTR_TUNNEL, tunnel)])
            }
        }
    }

    /// Parses a nested action list (from a flow dump). Unknown actions are
    /// reported, not skipped: weft installed every flow it reads back.
    pub fn parse_list(buffer: &[u8]) -> Result<Vec<Action>, ParseError> {
        let mut actions = Vec::new();
        for (kind, value) in split_attrs(buffer)? {
            match kind {
                ACTION_ATTR_OUTPUT => actions.push(Action::Output(u32::from_ne_bytes(fixed(
                    value,
                    "output port",
                )?))),
                ACTION_ATTR_SET => {
                    let inner = split_attrs(value)?;
                    let tunnel = find(&inner, KEY_ATTR_TUNNEL)
                        .ok_or_else(|| ParseError("set action without a tunnel key".into()))?;
                    let t = split_attrs(tunnel)?;
                    let id = find(&t, TUNNEL_KEY_ATTR_ID)
                        .map(|v| fixed::<8>(v, "tunnel id"))
                        .transpose()?;
                    let (_, dst) = tunnel_addresses(&t)?;
                    let dst = dst.ok_or_else(|| {
                        ParseError("tunnel set without a destination address".into())
                    })?;
                    let ttl = find(&t, TUNNEL_KEY_ATTR_TTL)
                        .and_then(|v| v.first().copied())
                        .unwrap_or(0);
                    actions.push(Action::SetTunnel {
                        vni: id.map(|b| u64::from_be_bytes(b) as u32).unwrap_or(0),
                        dst,
                        ttl,
                        dont_fragment: find(&t, TUNNEL_KEY_ATTR_DONT_FRAGMENT).is_some(),
                        checksum: find(&t, TUNNEL_KEY_ATTR_CSUM).is_some(),
                    });
                }
                other => {
                    return Err(ParseError(format!(
                        "unexpected datapath action type {other}"
                    )))
                }
            }
        }
        Ok(actions)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output(port) => write!(f, "output:{port}"),
            Action::SetTunnel {
                vni,
                dst,
                ttl,
                dont_fragment,
                checksum,
            } => write!(
                f,
                "set(tunnel(vni={vni},dst={dst},ttl={ttl}{}{}))",
                if *dont_fragment { ",df" } else { "" },
                if *checksum { ",csum" } else { "" }
            ),
        }
    }
}

/// `struct ovs_flow_stats`.
pub fn parse_flow_stats(value: &[u8]) -> Result<(u64, u64), ParseError> {
    let b: [u8; 16] = fixed(value, "flow stats")?;
    let packets = u64::from_ne_bytes(
        b[..8]
            .try_into()
            .map_err(|_| ParseError("flow stats".into()))?,
    );
    let bytes = u64::from_ne_bytes(
        b[8..]
            .try_into()
            .map_err(|_| ParseError("flow stats".into()))?,
    );
    Ok((packets, bytes))
}

/// Finds one attribute's value in a parsed attribute list.
pub fn attr_value<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    find(attrs, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(attrs: &[Attr]) -> Vec<u8> {
        let mut buffer = vec![0u8; attrs.buffer_len()];
        attrs.emit(&mut buffer);
        buffer
    }

    #[test]
    fn flow_key_round_trips_and_leaves_out_ethertype() {
        let key = FlowKey {
            in_port: 2,
            eth_src: Mac([2, 0, 0, 0, 0, 1]),
            eth_dst: Mac([0xff; 6]),
            ethertype: None,
            tunnel: None,
        };
        let attrs = key.to_match_attrs();
        assert!(attrs.iter().all(|a| a.kind_of() != KEY_ATTR_ETHERTYPE));
        assert_eq!(FlowKey::parse(&emit(&attrs)).unwrap(), key);
    }

    #[test]
    fn actions_round_trip() {
        let actions = vec![
            Action::tunnel_to(0x123456, "198.18.0.2".parse().unwrap(), 64),
            Action::Output(1),
            Action::tunnel_to(7, "2001:2::2".parse().unwrap(), 64),
            Action::Output(1),
        ];
        let attrs: Vec<Attr> = actions.iter().map(Action::to_attr).collect();
        assert_eq!(Action::parse_list(&emit(&attrs)).unwrap(), actions);
        assert_eq!(
            actions[0].to_string(),
            "set(tunnel(vni=1193046,dst=198.18.0.2,ttl=64,df))"
        );
        assert_eq!(
            actions[2].to_string(),
            "set(tunnel(vni=7,dst=2001:2::2,ttl=64,csum))"
        );
    }

    /// The IPv6 set(tunnel) action byte for byte, as the kernel expects it
    /// (linux/openvswitch.h: IPV6_DST = 13 with a 16-byte in6_addr, TTL
    /// required, CSUM a flag): set { tunnel { id, ipv6_dst, ttl, csum } }.
    /// (An IPV6_DST of 14, which is PAD, was refused by Debian's 6.1:
    /// "Tunnel attr 14 has unexpected len 16 expected 0".)
    #[test]
    fn ipv6_tunnel_action_golden_bytes() {
        let bytes = emit(&[Action::tunnel_to(1, "2001:2::2".parse().unwrap(), 64).to_attr()]);
        let mut expected = vec![
            52, 0, 3, 0, // OVS_ACTION_ATTR_SET, 4 + 48
            48, 0, 16, 0, // OVS_KEY_ATTR_TUNNEL, 4 + 44
            12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // ID (be64 1)
            20, 0, 13, 0, // IPV6_DST
        ];
        expected.extend_from_slice(&"2001:2::2".parse::<Ipv6Addr>().unwrap().octets());
        expected.extend_from_slice(&[5, 0, 4, 0, 64, 0, 0, 0]); // TTL 64, padded
        expected.extend_from_slice(&[4, 0, 6, 0]); // CSUM flag
        assert_eq!(bytes, expected);
    }

    #[test]
    fn tunnel_key_parses_vni_and_addresses() {
        let attrs = vec![
            Attr::u32(KEY_ATTR_IN_PORT, 1),
            Attr::bytes(KEY_ATTR_ETHERNET, &[1; 12]),
            Attr::nested(
                KEY_ATTR_TUNNEL,
                vec![
                    Attr::bytes(TUNNEL_KEY_ATTR_ID, &7u64.to_be_bytes()),
                    Attr::bytes(TUNNEL_KEY_ATTR_IPV4_SRC, &[198, 18, 0, 1]),
                ],
            ),
        ];
        let key = FlowKey::parse(&emit(&attrs)).unwrap();
        let tunnel = key.tunnel.unwrap();
        assert_eq!(tunnel.id, 7);
        assert_eq!(tunnel.src, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(tunnel.dst, None);
    }

    #[test]
    fn ipv6_tunnel_keys_parse_and_round_trip() {
        let key = TunnelKey {
            id: 42,
            src: Some("2001:2::1".parse().unwrap()),
            dst: Some("2001:2::2".parse().unwrap()),
        };
        let mut attrs = vec![
            Attr::u32(KEY_ATTR_IN_PORT, 1),
            Attr::bytes(KEY_ATTR_ETHERNET, &[1; 12]),
        ];
        let mut tunnel = key.to_attrs();
        // What a miss from the kernel also carries: TTL, TOS, ports, flags.
        tunnel.push(Attr::bytes(TUNNEL_KEY_ATTR_TTL, &[64]));
        tunnel.push(Attr::bytes(9, &[0xc0, 0x01])); // TP_SRC
        tunnel.push(Attr::flag(TUNNEL_KEY_ATTR_CSUM));
        attrs.push(Attr::nested(KEY_ATTR_TUNNEL, tunnel));
        let parsed = FlowKey::parse(&emit(&attrs)).unwrap();
        assert_eq!(parsed.tunnel, Some(key));
        assert_eq!(TunnelKey::parse(&emit(&key.to_attrs())).unwrap(), key);
    }

    #[test]
    fn mixed_or_short_tunnel_addresses_are_refused() {
        let mixed = emit(&[
            Attr::bytes(TUNNEL_KEY_ATTR_IPV4_SRC, &[198, 18, 0, 1]),
            Attr::bytes(TUNNEL_KEY_ATTR_IPV6_DST, &[0x20; 16]),
        ]);
        assert!(TunnelKey::parse(&mixed)
            .unwrap_err()
            .0
            .contains("both IPv4 and IPv6"));
        let short = emit(&[Attr::bytes(TUNNEL_KEY_ATTR_IPV6_SRC, &[0x20; 15])]);
        assert!(TunnelKey::parse(&short).unwrap_err().0.contains("ipv6_src"));
        // A set(tunnel) with a mixed key, or none, is refused too.
        let set = |tunnel: Vec<Attr>| {
            emit(&[Attr::nested(
                ACTION_ATTR_SET,
                vec![Attr::nested(KEY_ATTR_TUNNEL, tunnel)],
            )])
        };
        assert!(Action::parse_list(&set(vec![
            Attr::bytes(TUNNEL_KEY_ATTR_IPV4_DST, &[198, 18, 0, 2]),
            Attr::bytes(TUNNEL_KEY_ATTR_IPV6_DST, &[0x20; 16]),
        ]))
        .is_err());
        assert!(Action::parse_list(&set(vec![Attr::bytes(TUNNEL_KEY_ATTR_TTL, &[64])])).is_err());
    }

    #[test]
    fn parsers_are_total_on_garbage() {
        for len in 0..64usize {
            for seed in 0..32u8 {
                let buf: Vec<u8> = (0..len)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                    .collect();
                let _ = FlowKey::parse(&buf);
                let _ = TunnelKey::parse(&buf);
                let _ = Action::parse_list(&buf);
                let _ = parse_flow_stats(&buf);
            }
        }
        // Every prefix of real IPv4 and IPv6 keys and actions.
        let real = [
            emit(&[Action::tunnel_to(1, "2001:2::2".parse().unwrap(), 64).to_attr()]),
            emit(&[Action::tunnel_to(1, "198.18.0.2".parse().unwrap(), 64).to_attr()]),
            emit(
                &TunnelKey {
                    id: 1,
                    src: Some("2001:2::1".parse().unwrap()),
                    dst: Some("2001:2::2".parse().unwrap()),
                }
                .to_attrs(),
            ),
        ];
        for bytes in &real {
            for end in 0..=bytes.len() {
                let _ = FlowKey::parse(&bytes[..end]);
                let _ = TunnelKey::parse(&bytes[..end]);
                let _ = Action::parse_list(&bytes[..end]);
            }
        }
        // Truncated attribute: header says 12 bytes, only 6 present.
        assert!(split_attrs(&[12, 0, 3, 0, 1, 0]).is_err());
    }
}
