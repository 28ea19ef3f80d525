//! Neighbours (ARP / NDP entries): lookup and permanent entries.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::RouteNetlinkMessage;

use super::{family, Netlink, Result};
use crate::wire::ethernet::MacAddr;

/// Whether a neighbour in `state` has a link-layer address that can be
/// used (reachable, or stale / being re-checked, or static).
fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

fn neighbour_ip(address: &NeighbourAddress) -> Option<IpAddr> {
    match address {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// The usable MAC of `ip` on link `index` among dumped neighbour messages.
fn find_neighbour(messages: &[RouteNetlinkMessage], index: u32, ip: IpAddr) -> Option<MacAddr> {
    messages.iter().find_map(|m| {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            return None;
        };
        if n.header.ifindex != index || !usable(n.header.state) {
            return None;
        }
        let mut dst = None;
        let mut mac = None;
        for attribute in &n.attributes {
            match attribute {
                NeighbourAttribute::Destination(a) => dst = neighbour_ip(a),
                NeighbourAttribute::LinkLayerAddress(hw) => mac = MacAddr::from_bytes(hw),
                _ => {}
            }
        }
        (dst == Some(ip)).then_some(mac).flatten()
    })
}

impl Netlink {
    /// The usable link-layer address of neighbour `ip` on link `index`
    /// (None: unknown, still resolving, or failed). A dump rather than a
    /// single RTM_GETNEIGH: the single form needs Linux 5.0.
    pub fn neighbour(&mut self, index: u32, ip: IpAddr) -> Result<Option<MacAddr>> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(ip);
        let replies = self.request(
            &format!("look up neighbour {ip}"),
            RouteNetlinkMessage::GetNeighbour(message),
            NLM_F_DUMP,
        )?;
        Ok(find_neighbour(&replies, index, ip))
    }

    /// Sets a permanent neighbour entry: `ip` is at `mac` on link `index`.
    pub fn set_neighbour(&mut self, index: u32, name: &str, ip: IpAddr, mac: &[u8]) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(ip);
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.kind = RouteType::Unicast;
        let destination = match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        message
            .attributes
            .push(NeighbourAttribute::Destination(destination));
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            &format!("add neighbour {ip} on {name}"),
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u32, ip: &str, state: NeighbourState, mac: u8) -> RouteNetlinkMessage {
        let mut n = NeighbourMessage::default();
        n.header.ifindex = index;
        n.header.state = state;
        n.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip.parse().unwrap())),
            NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, mac]),
        ];
        RouteNetlinkMessage::NewNeighbour(n)
    }

    #[test]
    fn only_usable_entries_on_the_link_count() {
        let ip: IpAddr = "198.18.0.2".parse().unwrap();
        let dump = [
            entry(3, "198.18.0.2", NeighbourState::Reachable, 1),
            entry(2, "198.18.0.2", NeighbourState::Failed, 2),
            entry(2, "198.18.0.3", NeighbourState::Reachable, 3),
            entry(2, "198.18.0.2", NeighbourState::Stale, 4),
        ];
        assert_eq!(
            find_neighbour(&dump, 2, ip),
            Some(MacAddr([2, 0, 0, 0, 0, 4]))
        );
        assert_eq!(find_neighbour(&dump[..3], 2, ip), None);
        assert_eq!(find_neighbour(&dump, 9, ip), None);
        assert!(!usable(NeighbourState::Incomplete));
    }
}
