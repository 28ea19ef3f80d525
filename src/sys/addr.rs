//! Addresses: list, add, delete, and which link holds an address.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::link::Link;
use super::{family, Netlink, Result};

/// One address of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Index of the link holding it.
    pub index: u32,
    /// The address (IFA_LOCAL, else IFA_ADDRESS).
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// Whether [`Netlink::add_address`] added the address or found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The address is new on the link.
    Added,
    /// The link already had it.
    AlreadyThere,
}

fn parse_address(message: &AddressMessage) -> Option<Address> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    Some(Address {
        index: message.header.index,
        ip: local.or(address)?,
        prefix_len: message.header.prefix_len,
    })
}

/// The message for `ip/prefix_len` on link `index`. IPv6 addresses carry
/// IFA_F_NODAD (in the header and in IFA_FLAGS): weft's addresses are
/// unique by construction (IPAM, `--overlay`), and duplicate address
/// detection would leave them tentative, unusable, for a second or more.
fn address_message(index: u32, ip: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family(ip);
    message.header.prefix_len = prefix_len;
    message.header.index = index;
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv6() {
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    message
}

impl Netlink {
    /// Every address of every link in this namespace.
    pub fn all_addresses(&mut self) -> Result<Vec<Address>> {
        let replies = self.request(
            "list the addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_address(a),
                _ => None,
            })
            .collect())
    }

    /// The addresses of link `index`, as (address, prefix length).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        Ok(self
            .all_addresses()?
            .into_iter()
            .filter(|a| a.index == index)
            .map(|a| (a.ip, a.prefix_len))
            .collect())
    }

    /// The link that holds `ip`, or None when no link does.
    pub fn link_holding(&mut self, ip: IpAddr) -> Result<Option<Link>> {
        let Some(address) = self.all_addresses()?.into_iter().find(|a| a.ip == ip) else {
            return Ok(None);
        };
        self.link_by_index(address.index)
    }

    /// Adds `ip/prefix_len` to link `index`; an address the link already
    /// has is no error.
    pub fn add_address(
        &mut self,
        index: u32,
        name: &str,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<Added> {
        match self.request(
            &format!("add address {ip}/{prefix_len} to {name}"),
            RouteNetlinkMessage::NewAddress(address_message(index, ip, prefix_len)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(Added::Added),
            Err(e) if e.is_exists() => Ok(Added::AlreadyThere),
            Err(e) => Err(e),
        }
    }

    /// Removes `ip/prefix_len` from link `index`.
    pub fn delete_address(
        &mut self,
        index: u32,
        name: &str,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<()> {
        self.request(
            &format!("remove address {ip}/{prefix_len} from {name}"),
            RouteNetlinkMessage::DelAddress(address_message(index, ip, prefix_len)),
            NLM_F_ACK,
        )?;
        Ok(())
    }
}
