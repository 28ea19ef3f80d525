//! Routes: the kernel's route to a destination (RTM_GETROUTE, what `ip
//! route get` asks), the main table, default routes, and adding routes.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{family, Netlink, Result};

/// The route the kernel would use towards one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTo {
    /// Outgoing interface index.
    pub oif: u32,
    /// Gateway, when the destination is not on-link.
    pub gateway: Option<IpAddr>,
    /// Preferred source address.
    pub prefsrc: Option<IpAddr>,
}

/// One route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (the unspecified address for a default route).
    pub dst: IpAddr,
    /// Destination prefix length (0 for a default route).
    pub prefix_len: u8,
    /// Outgoing interface (the first hop's for a multipath route).
    pub oif: Option<u32>,
    /// Gateway (the first hop's for a multipath route).
    pub gateway: Option<IpAddr>,
    /// Metric (RTA_PRIORITY); lower wins.
    pub metric: u32,
}

impl Route {
    /// Whether this is a default route.
    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn unspecified(family: AddressFamily) -> IpAddr {
    if family == AddressFamily::Inet6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    }
}

/// A main-table unicast route from a dump message; None for other tables
/// and kinds (local, broadcast, unreachable...).
fn parse_main_route(message: &RouteMessage) -> Option<Route> {
    let table = message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || message.header.kind != RouteType::Unicast {
        return None;
    }
    let mut route = Route {
        dst: unspecified(message.header.address_family),
        prefix_len: message.header.destination_prefix_length,
        oif: None,
        gateway: None,
        metric: 0,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => route.dst = route_ip(a)?,
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
            RouteAttribute::Priority(p) => route.metric = *p,
            RouteAttribute::MultiPath(hops) => {
                if let Some(hop) = hops.first() {
                    route.oif = route.oif.or(Some(hop.interface_index));
                    route.gateway = route.gateway.or_else(|| {
                        hop.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => route_ip(g),
                            _ => None,
                        })
                    });
                }
            }
            _ => {}
        }
    }
    Some(route)
}

/// The lowest-metric default route among `routes`.
pub fn lowest_default(routes: &[Route]) -> Option<Route> {
    routes
        .iter()
        .filter(|r| r.is_default() && r.oif.is_some())
        .min_by_key(|r| r.metric)
        .copied()
}

impl Netlink {
    /// The kernel's route to `dst` (RTM_GETROUTE, like `ip route get`).
    pub fn route_to(&mut self, dst: IpAddr) -> Result<RouteTo> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(dst);
        message.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        message
            .attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        let what = format!("look up the route to {dst}");
        let replies = self.request(&what, RouteNetlinkMessage::GetRoute(message), 0)?;
        let reply = replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .ok_or_else(|| {
                super::refused(what, std::io::Error::from_raw_os_error(libc::ENETUNREACH))
            })?;
        let mut route = RouteTo {
            oif: 0,
            gateway: None,
            prefsrc: None,
        };
        for attribute in &reply.attributes {
            match attribute {
                RouteAttribute::Oif(i) => route.oif = *i,
                RouteAttribute::Gateway(a) => route.gateway = route_ip(a),
                RouteAttribute::PrefSource(a) => route.prefsrc = route_ip(a),
                _ => {}
            }
        }
        Ok(route)
    }

    /// The unicast routes of the main table for IPv4 (`ipv6` false) or IPv6.
    pub fn main_routes(&mut self, ipv6: bool) -> Result<Vec<Route>> {
        let mut message = RouteMessage::default();
        message.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.request(
            &format!("list the IPv{} routes", if ipv6 { 6 } else { 4 }),
            RouteNetlinkMessage::GetRoute(message),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_main_route(r),
                _ => None,
            })
            .collect())
    }

    /// The interface name of the lowest-metric default route (IPv4, or
    /// IPv6 with `ipv6`), or None when there is no default route.
    pub fn default_route_iface(&mut self, ipv6: bool) -> Result<Option<String>> {
        let routes = self.main_routes(ipv6)?;
        let Some(index) = lowest_default(&routes).and_then(|r| r.oif) else {
            return Ok(None);
        };
        Ok(self.link_by_index(index)?.map(|l| l.name))
    }

    /// Adds a route in the main table: `dst/prefix_len` out of link
    /// `index`, via `gateway` when given (scope universe), else on-link
    /// (scope link). A route that is already there is no error.
    pub fn add_route(
        &mut self,
        dst: IpAddr,
        prefix_len: u8,
        gateway: Option<IpAddr>,
        index: u32,
        name: &str,
    ) -> Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(dst);
        message.header.destination_prefix_length = prefix_len;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.kind = RouteType::Unicast;
        message.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if prefix_len > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(route_address(dst)));
        }
        if let Some(gw) = gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        message.attributes.push(RouteAttribute::Oif(index));
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        match self.request(
            &format!("add route {dst}/{prefix_len}{via} dev {name}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_exists() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix_len: u8, oif: Option<u32>, metric: u32) -> Route {
        Route {
            dst: "0.0.0.0".parse().unwrap(),
            prefix_len,
            oif,
            gateway: None,
            metric,
        }
    }

    #[test]
    fn lowest_metric_default_route_wins() {
        let routes = [
            route(0, Some(3), 200),
            route(0, Some(2), 100),
            route(24, Some(4), 0),
            route(0, None, 0),
        ];
        assert_eq!(lowest_default(&routes).unwrap().oif, Some(2));
        assert_eq!(lowest_default(&[]), None);
        assert_eq!(lowest_default(&routes[2..]), None);
    }

    #[test]
    fn only_main_table_unicast_routes_are_parsed() {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.kind = RouteType::Unicast;
        message.header.destination_prefix_length = 24;
        message.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet("198.18.0.0".parse().unwrap())),
            RouteAttribute::Oif(5),
            RouteAttribute::Priority(7),
        ];
        let parsed = parse_main_route(&message).unwrap();
        assert_eq!(parsed.dst, "198.18.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(
            (parsed.prefix_len, parsed.oif, parsed.metric),
            (24, Some(5), 7)
        );
        let mut local = message.clone();
        local.header.kind = RouteType::Local;
        assert_eq!(parse_main_route(&local), None);
        let mut other_table = message.clone();
        other_table.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(parse_main_route(&other_table), None);
        let mut default = message;
        default.header.destination_prefix_length = 0;
        default.attributes.remove(0);
        assert!(parse_main_route(&default).unwrap().is_default());
    }
}
