//! ICMP for IPv4 (RFC 792): a total parser, and the builder for the
//! "fragmentation needed" error (RFC 1191) that weft writes back into the
//! TUN device when a local sender's DF packet exceeds the overlay MTU.

use core::net::Ipv4Addr;

use super::checksum;
use super::ipv4::{self, IpProtocol};
use super::{Field, Result, WireError};

/// ICMPv4 message types weft cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// Echo reply (0).
    EchoReply,
    /// Destination unreachable (3).
    DstUnreachable,
    /// Source quench (4, deprecated).
    SourceQuench,
    /// Redirect (5).
    Redirect,
    /// Echo request (8).
    EchoRequest,
    /// Time exceeded (11).
    TimeExceeded,
    /// Parameter problem (12).
    ParamProblem,
    /// Any other type.
    Unknown(u8),
}

impl Message {
    /// True for error messages, which must never be answered with another
    /// error (RFC 1122 section 3.2.2).
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            Message::DstUnreachable
                | Message::SourceQuench
                | Message::Redirect
                | Message::TimeExceeded
                | Message::ParamProblem
        )
    }
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            0 => Message::EchoReply,
            3 => Message::DstUnreachable,
            4 => Message::SourceQuench,
            5 => Message::Redirect,
            8 => Message::EchoRequest,
            11 => Message::TimeExceeded,
            12 => Message::ParamProblem,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> u8 {
        match value {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::SourceQuench => 4,
            Message::Redirect => 5,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::ParamProblem => 12,
            Message::Unknown(other) => other,
        }
    }
}

/// Destination-unreachable code "fragmentation needed and DF set".
pub const CODE_FRAG_NEEDED: u8 = 4;

/// Most bytes of the offending packet quoted in an error: like Linux, keep
/// the whole error within 576 bytes (576 - 20 IPv4 - 8 ICMP).
pub const MAX_QUOTE_LEN: usize = 548;

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const UNUSED: Field = 4..6;
    pub const NEXT_HOP_MTU: Field = 6..8;
    pub const REST_OF_HEADER: Field = 4..8;
    pub const DATA: usize = 8;
}

/// Length of the ICMPv4 header (type, code, checksum, 4 bytes of rest).
pub const HEADER_LEN: usize = field::DATA;

/// A view over an ICMPv4 message (the IPv4 payload).
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

    /// Wraps a buffer after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` if the buffer is shorter than the header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (echo request/reply only).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (echo request/reply only).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQNO)
    }

    /// Next-hop MTU (destination unreachable code 4 only, RFC 1191).
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// The four type-specific header bytes after the checksum.
    #[inline]
    pub fn rest_of_header(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::REST_OF_HEADER]
            .try_into()
            .unwrap()
    }

    /// Everything after the header (for errors: the quoted packet).
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    /// True if the checksum over the whole message is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, value: Message) {
        self.buffer.as_mut()[field::TYPE] = value.into()
    }

    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value
    }

    /// Sets the checksum field to a raw value.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        self.buffer.as_mut()[field::ECHO_IDENT].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        self.buffer.as_mut()[field::ECHO_SEQNO].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the next-hop MTU and zeroes the unused field before it.
    #[inline]
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        self.buffer.as_mut()[field::UNUSED].copy_from_slice(&[0, 0]);
        self.buffer.as_mut()[field::NEXT_HOP_MTU].copy_from_slice(&value.to_be_bytes())
    }

    /// Sets the four type-specific header bytes.
    #[inline]
    pub fn set_rest_of_header(&mut self, value: [u8; 4]) {
        self.buffer.as_mut()[field::REST_OF_HEADER].copy_from_slice(&value)
    }

    /// Everything after the header, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }

    /// Computes and writes the checksum over the whole buffer (after the
    /// data is in place).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::data(self.buffer.as_ref());
        self.set_checksum(checksum::finish(sum))
    }
}

/// The parsed form of an ICMPv4 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo payload.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echo payload.
        data: &'a [u8],
    },
    /// Destination unreachable; `next_hop_mtu` is meaningful for code 4.
    DstUnreachable {
        /// Reason code (4 = fragmentation needed).
        code: u8,
        /// Next-hop MTU (RFC 1191), 0 from routers that predate it.
        next_hop_mtu: u16,
        /// The quoted offending packet (IPv4 header and leading bytes).
        data: &'a [u8],
    },
    /// Any other message, kept raw.
    Other {
        /// Message type.
        msg_type: Message,
        /// Message code.
        code: u8,
        /// The four type-specific header bytes.
        rest_of_header: [u8; 4],
        /// Everything after the header.
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parses a message; a bad checksum is `Malformed`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::Malformed);
        }
        let data = &packet.buffer.as_ref()[field::DATA..];
        Ok(match packet.msg_type() {
            Message::EchoRequest => Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            Message::EchoReply => Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            },
            Message::DstUnreachable => Repr::DstUnreachable {
                code: packet.msg_code(),
                next_hop_mtu: packet.next_hop_mtu(),
                data,
            },
            msg_type => Repr::Other {
                msg_type,
                code: packet.msg_code(),
                rest_of_header: packet.rest_of_header(),
                data,
            },
        })
    }

    /// The data carried after the header.
    fn data(&self) -> &'a [u8] {
        match *self {
            Repr::EchoRequest { data, .. }
            | Repr::EchoReply { data, .. }
            | Repr::DstUnreachable { data, .. }
            | Repr::Other { data, .. } => data,
        }
    }

    /// Length of header plus data.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data().len()
    }

    /// Writes the whole message with its checksum into `packet`, which
    /// must be exactly [`buffer_len`](Self::buffer_len) bytes long
    /// (`Truncated` if shorter, `Malformed` if longer, since the checksum
    /// covers the whole buffer).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let len = packet.buffer.as_ref().len();
        if len < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        if len > self.buffer_len() {
            return Err(WireError::Malformed);
        }
        match *self {
            Repr::EchoRequest { ident, seq_no, .. } | Repr::EchoReply { ident, seq_no, .. } => {
                let msg_type = if matches!(self, Repr::EchoRequest { .. }) {
                    Message::EchoRequest
                } else {
                    Message::EchoReply
                };
                packet.set_msg_type(msg_type);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Repr::DstUnreachable {
                code, next_hop_mtu, ..
            } => {
                packet.set_msg_type(Message::DstUnreachable);
                packet.set_msg_code(code);
                packet.set_next_hop_mtu(next_hop_mtu);
            }
            Repr::Other {
                msg_type,
                code,
                rest_of_header,
                ..
            } => {
                packet.set_msg_type(msg_type);
                packet.set_msg_code(code);
                packet.set_rest_of_header(rest_of_header);
            }
        }
        packet.data_mut().copy_from_slice(self.data());
        packet.fill_checksum();
        Ok(())
    }
}

/// True if RFC 1122 (section 3.2.2) allows answering `offending` with an
/// ICMP error: not a non-first fragment, not an ICMP error (or ICMP too
/// short to tell), not from an unspecified/broadcast/multicast source, and
/// not to a broadcast/multicast/unspecified destination (its address
/// would become the error's source).
pub fn error_allowed<T: AsRef<[u8]>>(offending: &ipv4::Packet<T>) -> bool {
    let src = offending.src_addr();
    let dst = offending.dst_addr();
    let bad_addr =
        |addr: Ipv4Addr| addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast();
    if offending.frag_offset() != 0 || bad_addr(src) || bad_addr(dst) {
        return false;
    }
    if offending.protocol() == IpProtocol::Icmp {
        return match offending.payload().first() {
            Some(&msg_type) => !Message::from(msg_type).is_error(),
            None => false,
        };
    }
    true
}

/// Builds, into `out`, the IPv4 packet "destination unreachable /
/// fragmentation needed" (type 3 code 4) that tells the sender of
/// `offending` to use `next_hop_mtu`. The reply goes from the offending
/// packet's destination to its source (so the sender's kernel files the
/// MTU under the right route) and quotes up to [`MAX_QUOTE_LEN`] bytes of
/// it (at least its IP header and 8 bytes, RFC 792).
///
/// Returns `Ok(Some(len))` with the reply length, `Ok(None)` when an error
/// must not be sent (see [`error_allowed`]), `Err` when `offending` is not
/// a valid IPv4 packet or `out` cannot hold header + minimum quote
/// (`Truncated`). Only send this for packets with DF set; others may be
/// fragmented instead.
pub fn build_frag_needed(
    offending: &[u8],
    next_hop_mtu: u16,
    out: &mut [u8],
) -> Result<Option<usize>> {
    build_dst_unreachable(offending, CODE_FRAG_NEEDED, next_hop_mtu, out)
}

/// ICMP destination unreachable code 1: host unreachable (RFC 792).
pub const CODE_HOST_UNREACHABLE: u8 = 1;

/// Builds, into `out`, "destination unreachable / host unreachable" (type
/// 3 code 1) for `offending`: no host owns its destination. Same
/// addressing, quoting and return values as [`build_frag_needed`], for
/// any packet (DF or not).
pub fn build_host_unreachable(offending: &[u8], out: &mut [u8]) -> Result<Option<usize>> {
    build_dst_unreachable(offending, CODE_HOST_UNREACHABLE, 0, out)
}

/// A destination-unreachable message with `code` about `offending`.
fn build_dst_unreachable(
    offending: &[u8],
    code: u8,
    next_hop_mtu: u16,
    out: &mut [u8],
) -> Result<Option<usize>> {
    let offending = ipv4::Packet::new_checked(offending)?;
    if !error_allowed(&offending) {
        return Ok(None);
    }
    let offending_len = usize::from(offending.total_len());
    let min_quote = offending_len.min(offending.header_len() + 8);
    let room = out
        .len()
        .checked_sub(ipv4::HEADER_LEN + HEADER_LEN)
        .ok_or(WireError::Truncated)?;
    let quote_len = offending_len.min(MAX_QUOTE_LEN).min(room);
    if quote_len < min_quote {
        return Err(WireError::Truncated);
    }
    let quote = &offending.into_inner()[..quote_len];
    let icmp_len = HEADER_LEN + quote_len;
    let total_len = ipv4::HEADER_LEN + icmp_len;
    let ip_repr = ipv4::Repr {
        src_addr: Ipv4Addr::from(<[u8; 4]>::try_from(&quote[16..20]).unwrap()),
        dst_addr: Ipv4Addr::from(<[u8; 4]>::try_from(&quote[12..16]).unwrap()),
        protocol: IpProtocol::Icmp,
        payload_len: icmp_len,
        ttl: 64,
        // DSCP CS6 ("internetwork control"), as Linux marks ICMP errors.
        dscp_ecn: 0xc0,
        ident: 0,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
    };
    let out = &mut out[..total_len];
    ip_repr.emit(&mut ipv4::Packet::new_unchecked(&mut *out))?;
    let icmp_repr = Repr::DstUnreachable {
        code,
        next_hop_mtu,
        data: quote,
    };
    icmp_repr.emit(&mut Packet::new_unchecked(&mut out[ipv4::HEADER_LEN..]))?;
    Ok(Some(total_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Echo request, ident 0x1234, seq 1, data "abcd"; checksum computed
    // with a separate script.
    static ECHO_BYTES: [u8; 12] = [
        0x08, 0x00, 0x21, 0x04, 0x12, 0x34, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64,
    ];

    #[test]
    fn deconstruct_echo() {
        let packet = Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        assert_eq!(packet.msg_type(), Message::EchoRequest);
        assert_eq!(packet.msg_code(), 0);
        assert_eq!(packet.echo_ident(), 0x1234);
        assert_eq!(packet.echo_seq_no(), 1);
        assert_eq!(packet.data(), b"abcd");
        assert!(packet.verify_checksum());
    }

    #[test]
    fn echo_parse_emit_round_trip() {
        let repr = Repr::parse(&Packet::new_checked(&ECHO_BYTES[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"abcd"
            }
        );
        let mut bytes = [0u8; 12];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        assert_eq!(bytes, ECHO_BYTES);
        let mut long = [0u8; 13];
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut long[..])),
            Err(WireError::Malformed)
        );
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..11])),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn truncated_and_corrupted() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&ECHO_BYTES[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        for byte in 0..ECHO_BYTES.len() {
            let mut bytes = ECHO_BYTES;
            bytes[byte] ^= 0x04;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            assert!(!packet.verify_checksum(), "flip in byte {byte}");
            assert_eq!(Repr::parse(&packet), Err(WireError::Malformed));
        }
    }

    /// A UDP packet 10.1.0.2:40000 -> 10.1.0.3:5201 with DF and
    /// `payload_len` payload bytes (pattern 0, 1, 2, ...).
    fn offending_udp(payload_len: usize) -> Vec<u8> {
        let total = 20 + 8 + payload_len;
        let mut bytes = vec![0u8; total];
        let repr = ipv4::Repr {
            src_addr: Ipv4Addr::new(10, 1, 0, 2),
            dst_addr: Ipv4Addr::new(10, 1, 0, 3),
            protocol: IpProtocol::Udp,
            payload_len: 8 + payload_len,
            ttl: 64,
            dscp_ecn: 0,
            ident: 7,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        };
        repr.emit(&mut ipv4::Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        for (i, b) in bytes[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        bytes
    }

    #[test]
    fn frag_needed_golden() {
        // Small offender: quoted whole. Golden bytes computed with a
        // separate script from the RFC 791/792/1191 layouts.
        let offending = offending_udp(4);
        let mut out = [0u8; 600];
        let len = build_frag_needed(&offending, 1430, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(len, 20 + 8 + 32);
        #[rustfmt::skip]
        let expected_head: [u8; 28] = [
            0x45, 0xc0, 0x00, 0x3c, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01, 0x65, 0xfb,
            10, 1, 0, 3, 10, 1, 0, 2,
            0x03, 0x04, 0xf5, 0x61, 0x00, 0x00, 0x05, 0x96,
        ];
        assert_eq!(&out[..28], &expected_head);
        assert_eq!(&out[28..len], &offending[..]);
    }

    #[test]
    fn host_unreachable_parses_back() {
        let offending = offending_udp(40);
        let mut out = [0u8; 600];
        let len = build_host_unreachable(&offending, &mut out)
            .unwrap()
            .unwrap();
        let ip = ipv4::Packet::new_checked(&out[..len]).unwrap();
        let ip_repr = ipv4::Repr::parse(&ip).unwrap();
        assert_eq!(ip_repr.src_addr, Ipv4Addr::new(10, 1, 0, 3));
        assert_eq!(ip_repr.dst_addr, Ipv4Addr::new(10, 1, 0, 2));
        match Repr::parse(&Packet::new_checked(ip.payload()).unwrap()).unwrap() {
            Repr::DstUnreachable { code, data, .. } => {
                assert_eq!(code, CODE_HOST_UNREACHABLE);
                assert_eq!(data, &offending[..]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn frag_needed_parses_back() {
        let offending = offending_udp(1500 - 28);
        let mut out = [0u8; 1500];
        let len = build_frag_needed(&offending, 1430, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(len, 576);
        let ip = ipv4::Packet::new_checked(&out[..len]).unwrap();
        let ip_repr = ipv4::Repr::parse(&ip).unwrap();
        assert_eq!(ip_repr.src_addr, Ipv4Addr::new(10, 1, 0, 3));
        assert_eq!(ip_repr.dst_addr, Ipv4Addr::new(10, 1, 0, 2));
        assert_eq!(ip_repr.protocol, IpProtocol::Icmp);
        let icmp = Packet::new_checked(ip.payload()).unwrap();
        match Repr::parse(&icmp).unwrap() {
            Repr::DstUnreachable {
                code,
                next_hop_mtu,
                data,
            } => {
                assert_eq!(code, CODE_FRAG_NEEDED);
                assert_eq!(next_hop_mtu, 1430);
                assert_eq!(data, &offending[..MAX_QUOTE_LEN]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn frag_needed_small_output_and_bad_input() {
        let offending = offending_udp(100);
        // Room for exactly header + 28-byte quote.
        let mut out = [0u8; 56];
        assert_eq!(
            build_frag_needed(&offending, 1400, &mut out).unwrap(),
            Some(56)
        );
        for len in 0..56 {
            let mut out = vec![0u8; len];
            assert_eq!(
                build_frag_needed(&offending, 1400, &mut out),
                Err(WireError::Truncated),
                "out len {len}"
            );
        }
        for len in 0..offending.len() {
            assert!(build_frag_needed(&offending[..len], 1400, &mut [0u8; 600]).is_err());
        }
    }

    #[test]
    fn frag_needed_suppressed_per_rfc1122() {
        let mut out = [0u8; 600];
        // An ICMP error is never answered with an error.
        let mut icmp_error = offending_udp(4);
        icmp_error[9] = 1;
        icmp_error[20] = 3;
        assert_eq!(build_frag_needed(&icmp_error, 1400, &mut out), Ok(None));
        // ... but an echo request is.
        icmp_error[20] = 8;
        assert!(build_frag_needed(&icmp_error, 1400, &mut out)
            .unwrap()
            .is_some());
        // Multicast destination and non-first fragments are not.
        let mut multicast = offending_udp(4);
        multicast[16] = 224;
        assert_eq!(build_frag_needed(&multicast, 1400, &mut out), Ok(None));
        let mut fragment = offending_udp(4);
        fragment[7] = 1;
        assert_eq!(build_frag_needed(&fragment, 1400, &mut out), Ok(None));
    }
}
