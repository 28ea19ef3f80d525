//! IPv6 fixed headers (RFC 8200) and a total walker over extension headers.

use core::net::Ipv6Addr;

pub use super::ipv4::IpProtocol;
use super::{Field, Result, WireError};

mod field {
    use super::Field;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// The minimum link MTU every IPv6 link must carry (RFC 8200 section 5).
pub const MIN_MTU: usize = 1280;

/// A view over an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without any check; accessors may panic on a short
    /// buffer. Use for buffers the caller sized itself (e.g. before emit).
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

    /// Checks the buffer holds the fixed header (else `Truncated`), the
    /// version is 6 (else `Malformed`) and the buffer holds the declared
    /// payload length (else `Truncated`). Jumbograms (payload length 0 with
    /// a jumbo option) are not supported: their payload reads as empty.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 6 {
            return Err(WireError::Malformed);
        }
        if len < HEADER_LEN + usize::from(self.payload_len()) {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// IP version (6 for a checked packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Traffic class (DSCP and ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    /// 20-bit flow label.
    #[inline]
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Payload length (everything after the fixed header, extension
    /// headers included).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Type of the header after the fixed header.
    #[inline]
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::NXT_HDR])
    }

    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::SRC_ADDR].try_into().unwrap();
        Ipv6Addr::from(b)
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        let b: [u8; 16] = self.buffer.as_ref()[field::DST_ADDR].try_into().unwrap();
        Ipv6Addr::from(b)
    }

    /// The payload: `payload_len` bytes after the fixed header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// Walks the extension headers; see [`skip_extension_headers`].
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        skip_extension_headers(self.next_header(), self.payload())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    fn set_ver_tc_flow(&mut self, value: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the version nibble.
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let v = (self.ver_tc_flow() & 0x0fff_ffff) | (u32::from(version & 0x0f) << 28);
        self.set_ver_tc_flow(v)
    }

    /// Sets the traffic class.
    #[inline]
    pub fn set_traffic_class(&mut self, value: u8) {
        let v = (self.ver_tc_flow() & 0xf00f_ffff) | (u32::from(value) << 20);
        self.set_ver_tc_flow(v)
    }

    /// Sets the flow label (low 20 bits of `value`).
    #[inline]
    pub fn set_flow_label(&mut self, value: u32) {
        let v = (self.ver_tc_flow() & 0xfff0_0000) | (value & 0x000f_ffff);
        self.set_ver_tc_flow(v)
    }

    /// Sets the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, value: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = value.into()
    }

    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, value: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = value
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets())
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets())
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// Where the upper-layer header starts, after any extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The first header that is not a skippable extension header (may be
    /// `Esp`, which cannot be looked through, or `Ipv6NoNxt`).
    pub protocol: IpProtocol,
    /// Its offset inside the IPv6 payload.
    pub offset: usize,
    /// True if a fragment header with a non-zero offset was passed: the
    /// bytes at `offset` are then the middle of a packet, not a header.
    pub non_first_fragment: bool,
}

/// Skips IPv6 extension headers (hop-by-hop, routing, fragment,
/// destination options, AH) starting with `next_header` at the start of
/// `payload`. Total: every step moves forward by at least 8 bytes inside
/// `payload`, and a header that runs past it gives `Truncated`.
pub fn skip_extension_headers(mut next_header: IpProtocol, payload: &[u8]) -> Result<UpperLayer> {
    let mut offset = 0usize;
    let mut non_first_fragment = false;
    loop {
        let header_len = match next_header {
            IpProtocol::HopByHop | IpProtocol::Ipv6Route | IpProtocol::Ipv6Opts => {
                // Length field counts 8-octet units, not including the first 8.
                let len_field = *payload.get(offset + 1).ok_or(WireError::Truncated)?;
                (usize::from(len_field) + 1) * 8
            }
            IpProtocol::Ipv6Frag => {
                let frag = payload
                    .get(offset..offset + 8)
                    .ok_or(WireError::Truncated)?;
                let frag_offset = u16::from_be_bytes([frag[2], frag[3]]) >> 3;
                non_first_fragment |= frag_offset != 0;
                8
            }
            IpProtocol::Ah => {
                // RFC 4302: length in 4-octet units, minus 2.
                let len_field = *payload.get(offset + 1).ok_or(WireError::Truncated)?;
                (usize::from(len_field) + 2) * 4
            }
            protocol => {
                return Ok(UpperLayer {
                    protocol,
                    offset,
                    non_first_fragment,
                })
            }
        };
        let header = payload
            .get(offset..offset + header_len)
            .ok_or(WireError::Truncated)?;
        next_header = IpProtocol::from(header[0]);
        offset += header_len;
    }
}

/// The parsed form of a fixed IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Header following the fixed header.
    pub next_header: IpProtocol,
    /// Payload length in bytes.
    pub payload_len: usize,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Parses a packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// Length of the header this emits.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header into `packet`. Fails with `Malformed` if the
    /// payload length exceeds 65535 and `Truncated` if the buffer is
    /// shorter than [`HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let payload_len = u16::try_from(self.payload_len).map_err(|_| WireError::Malformed)?;
        if packet.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        packet.set_ver_tc_flow(0);
        packet.set_version(6);
        packet.set_traffic_class(self.traffic_class);
        packet.set_flow_label(self.flow_label);
        packet.set_payload_len(payload_len);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2001:db8::1 -> 2001:db8::2, traffic class 0xb8, flow 0x12345,
    // next header UDP, hop limit 64, 4 payload bytes.
    static PACKET_BYTES: [u8; 44] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x04, 0x11, 0x40, //
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, //
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, //
        0xde, 0xad, 0xbe, 0xef,
    ];

    fn repr() -> Repr {
        Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: IpProtocol::Udp,
            payload_len: 4,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.traffic_class(), 0xb8);
        assert_eq!(packet.flow_label(), 0x12345);
        assert_eq!(packet.payload_len(), 4);
        assert_eq!(packet.next_header(), IpProtocol::Udp);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(
            packet.src_addr(),
            "2001:db8::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            packet.dst_addr(),
            "2001:db8::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            packet.upper_layer().unwrap(),
            UpperLayer {
                protocol: IpProtocol::Udp,
                offset: 0,
                non_first_fragment: false
            }
        );
    }

    #[test]
    fn construct_parse_emit() {
        let mut bytes = [0xffu8; 44];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet).unwrap();
        packet
            .payload_mut()
            .copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(bytes, PACKET_BYTES);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap(),
            repr()
        );
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..PACKET_BYTES.len() {
            assert_eq!(
                Packet::new_checked(&PACKET_BYTES[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x4b;
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn walks_extension_headers() {
        // hop-by-hop (8 bytes) -> fragment (offset 0) -> destination options
        // (16 bytes) -> ICMPv6.
        let mut payload = [0u8; 36];
        payload[0] = 44; // hop-by-hop: next = fragment, len 0
        payload[8] = 60; // fragment: next = dest opts, offset 0
        payload[16] = 58; // dest opts: next = ICMPv6, len 1 -> 16 bytes
        payload[17] = 1;
        let upper = skip_extension_headers(IpProtocol::HopByHop, &payload).unwrap();
        assert_eq!(
            upper,
            UpperLayer {
                protocol: IpProtocol::Icmpv6,
                offset: 32,
                non_first_fragment: false
            }
        );
        // A non-first fragment is flagged.
        payload[10] = 0x05; // fragment offset 0x05 << 5 ... non-zero
        let upper = skip_extension_headers(IpProtocol::HopByHop, &payload).unwrap();
        assert!(upper.non_first_fragment);
        // Every truncation of the chain is an error, never a panic.
        for len in 0..32 {
            assert_eq!(
                skip_extension_headers(IpProtocol::HopByHop, &payload[..len]),
                Err(WireError::Truncated)
            );
        }
        // AH: length 1 -> (1 + 2) * 4 = 12 bytes.
        let ah = [17u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            skip_extension_headers(IpProtocol::Ah, &ah).unwrap().offset,
            12
        );
    }
}
