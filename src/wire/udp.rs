//! UDP headers (RFC 768) with IPv4 and IPv6 pseudo-header checksums: the
//! underlay transport of every weft and VXLAN datagram.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::{Field, Result, WireError};

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// IP protocol number of UDP, as used in pseudo-headers.
const PROTOCOL_UDP: u8 = 17;

/// A view over a UDP datagram (header and payload).
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

    /// Checks the buffer holds the header (else `Truncated`), the length
    /// field is at least the header length (else `Malformed`) and the
    /// buffer holds the length the field declares (else `Truncated`).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let declared = usize::from(self.len());
        if declared < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < declared {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Length field: header plus payload.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Checksum field (0 means "none" over IPv4).
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload: header end up to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// The datagram as the length field bounds it.
    #[inline]
    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }

    /// True if the checksum is correct for an IPv4 pseudo-header, or
    /// absent (0), which RFC 768 allows over IPv4.
    pub fn verify_checksum_v4(&self, src: &Ipv4Addr, dst: &Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL_UDP, self.len());
        checksum::combine(&[pseudo, checksum::data(self.datagram())]) == 0xffff
    }

    /// True if the checksum is correct for an IPv6 pseudo-header. A zero
    /// checksum is rejected (RFC 8200); tunnels that accept zero checksums
    /// per RFC 6935 must check for 0 themselves.
    pub fn verify_checksum_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        if self.checksum() == 0 {
            return false;
        }
        let pseudo = checksum::pseudo_header_v6(src, dst, PROTOCOL_UDP, u32::from(self.len()));
        checksum::combine(&[pseudo, checksum::data(self.datagram())]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, value: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the checksum field to a raw value.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes())
    }

    /// The payload, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// Computes and writes the checksum over an IPv4 pseudo-header (after
    /// the header and payload are in place).
    pub fn fill_checksum_v4(&mut self, src: &Ipv4Addr, dst: &Ipv4Addr) {
        self.set_checksum(0);
        let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL_UDP, self.len());
        let sum = checksum::combine(&[pseudo, checksum::data(self.datagram())]);
        self.set_checksum(transmitted(checksum::finish(sum)))
    }

    /// Computes and writes the checksum over an IPv6 pseudo-header.
    pub fn fill_checksum_v6(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let pseudo = checksum::pseudo_header_v6(src, dst, PROTOCOL_UDP, u32::from(self.len()));
        let sum = checksum::combine(&[pseudo, checksum::data(self.datagram())]);
        self.set_checksum(transmitted(checksum::finish(sum)))
    }
}

/// A computed checksum of 0 is sent as 0xffff, because 0 means "no
/// checksum" (RFC 768).
#[inline]
fn transmitted(value: u16) -> u16 {
    if value == 0 {
        0xffff
    } else {
        value
    }
}

/// The parsed form of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl Repr {
    /// Parses a datagram's header. The checksum is not verified here
    /// because that needs the IP addresses: use `verify_checksum_v4/v6`.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    /// Length of header plus payload.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header with a zero checksum. Write the payload into
    /// `packet.payload_mut()` next, then call `fill_checksum_v4/v6`.
    /// `Malformed` if the datagram length does not fit 16 bits,
    /// `Truncated` if the buffer cannot hold it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let length = u16::try_from(self.buffer_len()).map_err(|_| WireError::Malformed)?;
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(length);
        packet.set_checksum(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 20);

    // 49152 -> 4789, length 12, payload de ad be ef; checksum for
    // SRC_V4 -> DST_V4 computed with a separate script.
    static DATAGRAM_BYTES: [u8; 12] = [
        0xc0, 0x00, 0x12, 0xb5, 0x00, 0x0c, 0x0c, 0x14, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn repr() -> Repr {
        Repr {
            src_port: 49152,
            dst_port: 4789,
            payload_len: 4,
        }
    }

    #[test]
    fn deconstruct() {
        let packet = Packet::new_checked(&DATAGRAM_BYTES[..]).unwrap();
        assert_eq!(packet.src_port(), 49152);
        assert_eq!(packet.dst_port(), 4789);
        assert_eq!(packet.len(), 12);
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(packet.verify_checksum_v4(&SRC_V4, &DST_V4));
    }

    #[test]
    fn construct_parse_emit() {
        let mut bytes = [0u8; 12];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet).unwrap();
        packet
            .payload_mut()
            .copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        packet.fill_checksum_v4(&SRC_V4, &DST_V4);
        assert_eq!(bytes, DATAGRAM_BYTES);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap(),
            repr()
        );
    }

    #[test]
    fn truncated_and_malformed() {
        for len in 0..DATAGRAM_BYTES.len() {
            assert_eq!(
                Packet::new_checked(&DATAGRAM_BYTES[..len]).unwrap_err(),
                WireError::Truncated,
                "len {len}"
            );
        }
        let mut bytes = DATAGRAM_BYTES;
        bytes[5] = 7;
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            WireError::Malformed
        );
        let mut small = [0u8; 8];
        assert_eq!(
            repr().emit(&mut Packet::new_unchecked(&mut small[..])),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn corrupted_checksum_detected() {
        for byte in 0..DATAGRAM_BYTES.len() {
            if (4..6).contains(&byte) {
                continue; // length changes are caught by check_len instead
            }
            let mut bytes = DATAGRAM_BYTES;
            bytes[byte] ^= 0x10;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            assert!(
                !packet.verify_checksum_v4(&SRC_V4, &DST_V4),
                "flip in byte {byte}"
            );
        }
        // Wrong addresses are detected too.
        let packet = Packet::new_checked(&DATAGRAM_BYTES[..]).unwrap();
        assert!(!packet.verify_checksum_v4(&DST_V4, &Ipv4Addr::new(192, 168, 1, 21)));
    }

    #[test]
    fn ipv6_checksum_round_trip_and_zero() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut bytes = [0u8; 13];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            src_port: 6783,
            dst_port: 6783,
            payload_len: 5,
        }
        .emit(&mut packet)
        .unwrap();
        packet.payload_mut().copy_from_slice(b"hello");
        packet.fill_checksum_v6(&src, &dst);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum_v6(&src, &dst));
        assert!(!packet.verify_checksum_v6(&src, &"fd00::3".parse().unwrap()));
        let mut zeroed = bytes;
        zeroed[6] = 0;
        zeroed[7] = 0;
        let packet = Packet::new_checked(&zeroed[..]).unwrap();
        assert!(!packet.verify_checksum_v6(&src, &dst));
        assert!(
            packet.verify_checksum_v4(&SRC_V4, &DST_V4),
            "zero means no checksum over IPv4"
        );
    }
}
