//! ARP for IPv4 over Ethernet (RFC 826): the only kind a bridge overlay
//! needs to read (to learn and answer) and build.

use core::net::Ipv4Addr;

use super::ethernet::{EtherType, MacAddr};
use super::{Field, Result, WireError};

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Who has (1).
    Request,
    /// Is at (2).
    Reply,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(value: u16) -> Self {
        match value {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(value: Operation) -> u16 {
        match value {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

/// Hardware type Ethernet.
const HTYPE_ETHERNET: u16 = 1;

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;

/// A view over an Ethernet/IPv4 ARP packet (the Ethernet payload).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn read_u16(bytes: &[u8], field: Field) -> u16 {
    let b = &bytes[field];
    u16::from_be_bytes([b[0], b[1]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without any check; accessors may panic on a short
    /// buffer.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the buffer holds a whole Ethernet/IPv4 ARP packet (else
    /// `Truncated`, trailing Ethernet padding allowed) and that it is one:
    /// hardware type 1, protocol 0x0800, lengths 6 and 4 (else
    /// `Malformed`, since other kinds have a different layout).
    pub fn check_len(&self) -> Result<()> {
        let bytes = self.buffer.as_ref();
        if bytes.len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        if self.hardware_type() != HTYPE_ETHERNET
            || self.protocol_type() != EtherType::Ipv4
            || bytes[field::HLEN] != 6
            || bytes[field::PLEN] != 4
        {
            return Err(WireError::Malformed);
        }
        Ok(())
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 = Ethernet).
    #[inline]
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (an EtherType; IPv4 here).
    #[inline]
    pub fn protocol_type(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::PTYPE))
    }

    /// Operation.
    #[inline]
    pub fn operation(&self) -> Operation {
        Operation::from(read_u16(self.buffer.as_ref(), field::OPER))
    }

    /// Sender hardware (MAC) address.
    #[inline]
    pub fn source_hardware_addr(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::SHA].try_into().unwrap())
    }

    /// Sender protocol (IPv4) address.
    #[inline]
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(<[u8; 4]>::try_from(&self.buffer.as_ref()[field::SPA]).unwrap())
    }

    /// Target hardware (MAC) address (zero in requests).
    #[inline]
    pub fn target_hardware_addr(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::THA].try_into().unwrap())
    }

    /// Target protocol (IPv4) address.
    #[inline]
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(<[u8; 4]>::try_from(&self.buffer.as_ref()[field::TPA]).unwrap())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the fixed Ethernet/IPv4 type and length fields.
    #[inline]
    pub fn set_ethernet_ipv4_types(&mut self) {
        let bytes = self.buffer.as_mut();
        bytes[field::HTYPE].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        bytes[field::PTYPE].copy_from_slice(&u16::from(EtherType::Ipv4).to_be_bytes());
        bytes[field::HLEN] = 6;
        bytes[field::PLEN] = 4;
    }

    /// Sets the operation.
    #[inline]
    pub fn set_operation(&mut self, value: Operation) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&u16::from(value).to_be_bytes())
    }

    /// Sets the sender MAC address.
    #[inline]
    pub fn set_source_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0)
    }

    /// Sets the sender IPv4 address.
    #[inline]
    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&addr.octets())
    }

    /// Sets the target MAC address.
    #[inline]
    pub fn set_target_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0)
    }

    /// Sets the target IPv4 address.
    #[inline]
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&addr.octets())
    }
}

/// The parsed form of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Request, reply or other.
    pub operation: Operation,
    /// Sender MAC address.
    pub source_hardware_addr: MacAddr,
    /// Sender IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target MAC address.
    pub target_hardware_addr: MacAddr,
    /// Target IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// A request "who has `target`? tell `source_protocol_addr`".
    pub fn request(
        source_hardware_addr: MacAddr,
        source_protocol_addr: Ipv4Addr,
        target: Ipv4Addr,
    ) -> Repr {
        Repr {
            operation: Operation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr: MacAddr([0; 6]),
            target_protocol_addr: target,
        }
    }

    /// The reply to this request from the owner of its target address:
    /// "`target_protocol_addr` is at `owner`". `None` if `self` is not a
    /// request.
    pub fn reply(&self, owner: MacAddr) -> Option<Repr> {
        if self.operation != Operation::Request {
            return None;
        }
        Some(Repr {
            operation: Operation::Reply,
            source_hardware_addr: owner,
            source_protocol_addr: self.target_protocol_addr,
            target_hardware_addr: self.source_hardware_addr,
            target_protocol_addr: self.source_protocol_addr,
        })
    }

    /// True for a gratuitous ARP (sender and target address equal), which
    /// announces a binding rather than asking.
    pub fn is_gratuitous(&self) -> bool {
        self.source_protocol_addr == self.target_protocol_addr
    }

    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// Length of the packet this emits.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet; `Truncated` if the buffer is too short.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if packet.buffer.as_ref().len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        packet.set_ethernet_ipv4_types();
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQUEST_BYTES: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, //
        0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 10, 32, 0, 1, //
        0, 0, 0, 0, 0, 0, 10, 32, 0, 2,
    ];

    fn request() -> Repr {
        Repr::request(
            MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]),
            Ipv4Addr::new(10, 32, 0, 1),
            Ipv4Addr::new(10, 32, 0, 2),
        )
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(packet.hardware_type(), 1);
        assert_eq!(packet.protocol_type(), EtherType::Ipv4);
        assert_eq!(packet.operation(), Operation::Request);
        assert_eq!(
            packet.source_hardware_addr(),
            MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02])
        );
        assert_eq!(packet.source_protocol_addr(), Ipv4Addr::new(10, 32, 0, 1));
        assert_eq!(packet.target_hardware_addr(), MacAddr([0; 6]));
        assert_eq!(packet.target_protocol_addr(), Ipv4Addr::new(10, 32, 0, 2));
    }

    #[test]
    fn construct_parse_emit() {
        let mut bytes = [0xffu8; 28];
        request()
            .emit(&mut Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        assert_eq!(bytes, REQUEST_BYTES);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap(),
            request()
        );
    }

    #[test]
    fn reply_swaps_roles() {
        let owner = MacAddr([0x02, 0, 0, 0, 0, 9]);
        let reply = request().reply(owner).unwrap();
        assert_eq!(reply.operation, Operation::Reply);
        assert_eq!(reply.source_hardware_addr, owner);
        assert_eq!(reply.source_protocol_addr, Ipv4Addr::new(10, 32, 0, 2));
        assert_eq!(reply.target_hardware_addr, request().source_hardware_addr);
        assert_eq!(reply.target_protocol_addr, Ipv4Addr::new(10, 32, 0, 1));
        assert_eq!(reply.reply(owner), None);
        assert!(!request().is_gratuitous());
    }

    #[test]
    fn truncated_and_foreign() {
        for len in 0..PACKET_LEN {
            assert_eq!(
                Packet::new_checked(&REQUEST_BYTES[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        for byte in [1usize, 2, 4, 5] {
            let mut bytes = REQUEST_BYTES;
            bytes[byte] ^= 0x01;
            assert_eq!(
                Packet::new_checked(&bytes[..]).unwrap_err(),
                WireError::Malformed,
                "byte {byte}"
            );
        }
        let mut small = [0u8; 27];
        assert_eq!(
            request().emit(&mut Packet::new_unchecked(&mut small[..])),
            Err(WireError::Truncated)
        );
    }
}
