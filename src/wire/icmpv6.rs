//! ICMPv6 (RFC 4443): a total parser, and the builder for the "packet too
//! big" error that weft writes back into the TUN device when a local
//! sender's IPv6 packet exceeds the overlay MTU (IPv6 routers never
//! fragment, so this is the only signal the sender gets).

use core::net::Ipv6Addr;

use super::checksum;
use super::ipv6::{self, IpProtocol};
use super::{Field, Result, WireError};

/// ICMPv6 message types weft cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// Destination unreachable (1).
    DstUnreachable,
    /// Packet too big (2).
    PacketTooBig,
    /// Time exceeded (3).
    TimeExceeded,
    /// Parameter problem (4).
    ParamProblem,
    /// Echo request (128).
    EchoRequest,
    /// Echo reply (129).
    EchoReply,
    /// Any other type.
    Unknown(u8),
}

impl Message {
    /// True for error messages (types 0..=127, RFC 4443 section 2.1),
    /// which must never be answered with another error.
    pub fn is_error(&self) -> bool {
        u8::from(*self) < 128
    }
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            1 => Message::DstUnreachable,
            2 => Message::PacketTooBig,
            3 => Message::TimeExceeded,
            4 => Message::ParamProblem,
            128 => Message::EchoRequest,
            129 => Message::EchoReply,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> u8 {
        match value {
            Message::DstUnreachable => 1,
            Message::PacketTooBig => 2,
            Message::TimeExceeded => 3,
            Message::ParamProblem => 4,
            Message::EchoRequest => 128,
            Message::EchoReply => 129,
            Message::Unknown(other) => other,
        }
    }
}

/// Most bytes of the offending packet quoted in an error: the whole error
/// must fit the IPv6 minimum MTU (1280 - 40 IPv6 - 8 ICMPv6).
pub const MAX_QUOTE_LEN: usize = ipv6::MIN_MTU - ipv6::HEADER_LEN - HEADER_LEN;

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const MTU: Field = 4..8;
    pub const REST_OF_HEADER: Field = 4..8;
    pub const DATA: usize = 8;
}

/// Length of the ICMPv6 header (type, code, checksum, 4 bytes of rest).
pub const HEADER_LEN: usize = field::DATA;

/// A view over an ICMPv6 message (the upper-layer part of an IPv6 packet).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
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
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Echo identifier (echo request/reply only).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ECHO_IDENT];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Echo sequence number (echo request/reply only).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ECHO_SEQNO];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// MTU of the next hop (packet too big only).
    #[inline]
    pub fn mtu(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::MTU];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
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

    /// True if the checksum (over the IPv6 pseudo-header and the whole
    /// message) is correct for these addresses.
    pub fn verify_checksum(&self, src: &Ipv6Addr, dst: &Ipv6Addr) -> bool {
        let bytes = self.buffer.as_ref();
        let Ok(length) = u32::try_from(bytes.len()) else {
            return false;
        };
        let pseudo = checksum::pseudo_header_v6(src, dst, IpProtocol::Icmpv6.into(), length);
        checksum::combine(&[pseudo, checksum::data(bytes)]) == 0xffff
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

    /// Sets the MTU field (packet too big).
    #[inline]
    pub fn set_mtu(&mut self, value: u32) {
        self.buffer.as_mut()[field::MTU].copy_from_slice(&value.to_be_bytes())
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

    /// Computes and writes the checksum for these addresses (after the
    /// data is in place). The buffer must be the whole message.
    pub fn fill_checksum(&mut self, src: &Ipv6Addr, dst: &Ipv6Addr) {
        self.set_checksum(0);
        let bytes = self.buffer.as_ref();
        // An ICMPv6 message lives in one IPv6 packet, so its length fits
        // in 32 bits; saturate rather than panic on absurd buffers.
        let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let pseudo = checksum::pseudo_header_v6(src, dst, IpProtocol::Icmpv6.into(), length);
        let sum = checksum::combine(&[pseudo, checksum::data(bytes)]);
        self.set_checksum(checksum::finish(sum))
    }
}

/// The parsed form of an ICMPv6 message.
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
    /// Packet too big.
    PacketTooBig {
        /// MTU of the next hop.
        mtu: u32,
        /// The quoted offending packet.
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
    /// Parses a message sent from `src` to `dst`; a bad checksum is
    /// `Malformed`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
        packet: &Packet<&'a T>,
    ) -> Result<Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
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
            Message::PacketTooBig if packet.msg_code() == 0 => Repr::PacketTooBig {
                mtu: packet.mtu(),
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

    fn data(&self) -> &'a [u8] {
        match *self {
            Repr::EchoRequest { data, .. }
            | Repr::EchoReply { data, .. }
            | Repr::PacketTooBig { data, .. }
            | Repr::Other { data, .. } => data,
        }
    }

    /// Length of header plus data.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.data().len()
    }

    /// Writes the whole message with its checksum for `src` -> `dst` into
    /// `packet`, which must be exactly [`buffer_len`](Self::buffer_len)
    /// bytes long (`Truncated` if shorter, `Malformed` if longer).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        src: &Ipv6Addr,
        dst: &Ipv6Addr,
        packet: &mut Packet<T>,
    ) -> Result<()> {
        let len = packet.buffer.as_ref().len();
        if len < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        if len > self.buffer_len() {
            return Err(WireError::Malformed);
        }
        match *self {
            Repr::EchoRequest { ident, seq_no, .. } => {
                packet.set_msg_type(Message::EchoRequest);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Repr::EchoReply { ident, seq_no, .. } => {
                packet.set_msg_type(Message::EchoReply);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
            }
            Repr::PacketTooBig { mtu, .. } => {
                packet.set_msg_type(Message::PacketTooBig);
                packet.set_msg_code(0);
                packet.set_mtu(mtu);
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
        packet.fill_checksum(src, dst);
        Ok(())
    }
}

/// True if RFC 4443 (section 2.4 e) allows answering `offending` with a
/// "packet too big": not from an unspecified or multicast source, not an
/// ICMPv6 error (or a packet whose headers cannot be walked to tell), and
/// not to a multicast/unspecified destination. RFC 4443 would allow
/// multicast destinations, but the reply is sourced from the offending
/// destination, which must be unicast.
pub fn error_allowed<T: AsRef<[u8]>>(offending: &ipv6::Packet<T>) -> bool {
    let src = offending.src_addr();
    let dst = offending.dst_addr();
    if src.is_unspecified() || src.is_multicast() || dst.is_unspecified() || dst.is_multicast() {
        return false;
    }
    match offending.upper_layer() {
        Ok(upper) if upper.protocol == IpProtocol::Icmpv6 && !upper.non_first_fragment => {
            match offending.payload().get(upper.offset) {
                Some(&msg_type) => !Message::from(msg_type).is_error(),
                None => false,
            }
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Builds, into `out`, the IPv6 packet "packet too big" (type 2, code 0)
/// that tells the sender of `offending` to use `mtu`. The reply goes from
/// the offending packet's destination to its source and quotes as much of
/// it as fits in 1280 bytes (RFC 4443 section 3.2), or in `out`.
///
/// Returns `Ok(Some(len))` with the reply length, `Ok(None)` when an error
/// must not be sent (see [`error_allowed`]), `Err` when `offending` is not
/// a valid IPv6 packet or `out` cannot hold the headers plus the IPv6
/// header and 8 bytes of the offending packet (`Truncated`). An `mtu`
/// below 1280 is sent as given; receivers clamp it to 1280 (RFC 8201).
pub fn build_packet_too_big(offending: &[u8], mtu: u32, out: &mut [u8]) -> Result<Option<usize>> {
    build_error(offending, out, |quote| Repr::PacketTooBig {
        mtu,
        data: quote,
    })
}

/// ICMPv6 destination unreachable code 3: address unreachable (RFC 4443).
pub const CODE_ADDRESS_UNREACHABLE: u8 = 3;

/// Builds, into `out`, "destination unreachable / address unreachable"
/// (type 1 code 3) for `offending`: no host owns its destination. Same
/// addressing, quoting and return values as [`build_packet_too_big`].
pub fn build_address_unreachable(offending: &[u8], out: &mut [u8]) -> Result<Option<usize>> {
    build_error(offending, out, |quote| Repr::Other {
        msg_type: Message::DstUnreachable,
        code: CODE_ADDRESS_UNREACHABLE,
        rest_of_header: [0; 4],
        data: quote,
    })
}

/// An ICMPv6 error about `offending`, from its destination to its source,
/// quoting as much of it as fits the minimum IPv6 MTU.
fn build_error<'q>(
    offending: &'q [u8],
    out: &mut [u8],
    message: impl FnOnce(&'q [u8]) -> Repr<'q>,
) -> Result<Option<usize>> {
    let offending = ipv6::Packet::new_checked(offending)?;
    if !error_allowed(&offending) {
        return Ok(None);
    }
    let offending_len = ipv6::HEADER_LEN + usize::from(offending.payload_len());
    let min_quote = offending_len.min(ipv6::HEADER_LEN + 8);
    let room = out
        .len()
        .checked_sub(ipv6::HEADER_LEN + HEADER_LEN)
        .ok_or(WireError::Truncated)?;
    let quote_len = offending_len.min(MAX_QUOTE_LEN).min(room);
    if quote_len < min_quote {
        return Err(WireError::Truncated);
    }
    let reply_src = offending.dst_addr();
    let reply_dst = offending.src_addr();
    let quote = &offending.into_inner()[..quote_len];
    let icmp_len = HEADER_LEN + quote_len;
    let total_len = ipv6::HEADER_LEN + icmp_len;
    let ip_repr = ipv6::Repr {
        src_addr: reply_src,
        dst_addr: reply_dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp_len,
        hop_limit: 64,
        traffic_class: 0,
        flow_label: 0,
    };
    let out = &mut out[..total_len];
    ip_repr.emit(&mut ipv6::Packet::new_unchecked(&mut *out))?;
    let icmp_repr = message(quote);
    icmp_repr.emit(
        &reply_src,
        &reply_dst,
        &mut Packet::new_unchecked(&mut out[ipv6::HEADER_LEN..]),
    )?;
    Ok(Some(total_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    // Echo request fd00::1 -> fd00::2, ident 0x1234, seq 1, "abcd";
    // checksum computed with a separate script.
    static ECHO_BYTES: [u8; 12] = [
        0x80, 0x00, 0xae, 0xb8, 0x12, 0x34, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64,
    ];

    #[test]
    fn deconstruct_echo() {
        let packet = Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        assert_eq!(packet.msg_type(), Message::EchoRequest);
        assert_eq!(packet.echo_ident(), 0x1234);
        assert_eq!(packet.echo_seq_no(), 1);
        assert_eq!(packet.data(), b"abcd");
        assert!(packet.verify_checksum(&addr("fd00::1"), &addr("fd00::2")));
        assert!(!packet.verify_checksum(&addr("fd00::1"), &addr("fd00::3")));
    }

    #[test]
    fn echo_parse_emit_round_trip() {
        let (src, dst) = (addr("fd00::1"), addr("fd00::2"));
        let repr = Repr::parse(&src, &dst, &Packet::new_checked(&ECHO_BYTES[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr::EchoRequest {
                ident: 0x1234,
                seq_no: 1,
                data: b"abcd"
            }
        );
        let mut bytes = [0u8; 12];
        repr.emit(&src, &dst, &mut Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        assert_eq!(bytes, ECHO_BYTES);
    }

    #[test]
    fn truncated_and_corrupted() {
        let (src, dst) = (addr("fd00::1"), addr("fd00::2"));
        for len in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&ECHO_BYTES[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        for byte in 0..ECHO_BYTES.len() {
            let mut bytes = ECHO_BYTES;
            bytes[byte] ^= 0x40;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(
                Repr::parse(&src, &dst, &packet),
                Err(WireError::Malformed),
                "flip in byte {byte}"
            );
        }
    }

    /// A UDP packet fd00::a -> fd00::b with `payload_len` bytes after an
    /// 8-byte UDP header (contents are a counting pattern).
    fn offending_udp(payload_len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; 40 + 8 + payload_len];
        let repr = ipv6::Repr {
            src_addr: addr("fd00::a"),
            dst_addr: addr("fd00::b"),
            next_header: IpProtocol::Udp,
            payload_len: 8 + payload_len,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        };
        repr.emit(&mut ipv6::Packet::new_unchecked(&mut bytes[..]))
            .unwrap();
        for (i, b) in bytes[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        bytes
    }

    #[test]
    fn packet_too_big_golden() {
        let offending = offending_udp(0);
        let mut out = [0u8; 1280];
        let len = build_packet_too_big(&offending, 1410, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(len, 40 + 8 + 48);
        #[rustfmt::skip]
        let expected_head: [u8; 48] = [
            0x60, 0, 0, 0, 0x00, 0x38, 58, 64,
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b,
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
            0x02, 0x00, 0x86, 0x85, 0x00, 0x00, 0x05, 0x82,
        ];
        assert_eq!(&out[..48], &expected_head);
        assert_eq!(&out[48..len], &offending[..]);
    }

    #[test]
    fn packet_too_big_fills_1280_and_parses_back() {
        let offending = offending_udp(2000);
        let mut out = [0u8; 2000];
        let len = build_packet_too_big(&offending, 1410, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(len, 1280);
        let ip = ipv6::Packet::new_checked(&out[..len]).unwrap();
        assert_eq!(ip.src_addr(), addr("fd00::b"));
        assert_eq!(ip.dst_addr(), addr("fd00::a"));
        assert_eq!(ip.next_header(), IpProtocol::Icmpv6);
        let icmp = Packet::new_checked(ip.payload()).unwrap();
        match Repr::parse(&ip.src_addr(), &ip.dst_addr(), &icmp).unwrap() {
            Repr::PacketTooBig { mtu, data } => {
                assert_eq!(mtu, 1410);
                assert_eq!(data, &offending[..MAX_QUOTE_LEN]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn address_unreachable_parses_back() {
        let offending = offending_udp(20);
        let mut out = [0u8; 1280];
        let len = build_address_unreachable(&offending, &mut out)
            .unwrap()
            .unwrap();
        let ip = ipv6::Packet::new_checked(&out[..len]).unwrap();
        assert_eq!(ip.src_addr(), addr("fd00::b"));
        assert_eq!(ip.dst_addr(), addr("fd00::a"));
        let icmp = Packet::new_checked(ip.payload()).unwrap();
        match Repr::parse(&ip.src_addr(), &ip.dst_addr(), &icmp).unwrap() {
            Repr::Other {
                msg_type,
                code,
                data,
                ..
            } => {
                assert_eq!(msg_type, Message::DstUnreachable);
                assert_eq!(code, CODE_ADDRESS_UNREACHABLE);
                assert_eq!(data, &offending[..]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn packet_too_big_small_output_and_bad_input() {
        let offending = offending_udp(100);
        let mut out = [0u8; 96];
        assert_eq!(
            build_packet_too_big(&offending, 1400, &mut out).unwrap(),
            Some(96)
        );
        for len in 0..96 {
            let mut out = vec![0u8; len];
            assert_eq!(
                build_packet_too_big(&offending, 1400, &mut out),
                Err(WireError::Truncated),
                "out len {len}"
            );
        }
        for len in 0..offending.len() {
            assert!(build_packet_too_big(&offending[..len], 1400, &mut [0u8; 1280]).is_err());
        }
    }

    #[test]
    fn packet_too_big_suppressed_per_rfc4443() {
        let mut out = [0u8; 1280];
        let mut icmp_error = offending_udp(8);
        icmp_error[6] = 58;
        icmp_error[40] = 1; // destination unreachable
        assert_eq!(build_packet_too_big(&icmp_error, 1400, &mut out), Ok(None));
        icmp_error[40] = 128; // echo request is answered
        assert!(build_packet_too_big(&icmp_error, 1400, &mut out)
            .unwrap()
            .is_some());
        let mut multicast_src = offending_udp(8);
        multicast_src[8] = 0xff;
        assert_eq!(
            build_packet_too_big(&multicast_src, 1400, &mut out),
            Ok(None)
        );
        let mut bad_ext = offending_udp(8);
        bad_ext[6] = 0; // hop-by-hop claiming 8 * 256 bytes
        bad_ext[41] = 0xff;
        assert_eq!(build_packet_too_big(&bad_ext, 1400, &mut out), Ok(None));
    }
}
