//! weft's own sleeve header and the record framing inside sealed datagrams.
//!
//! Every weft UDP datagram starts with a 16-byte header that is also the
//! AEAD associated data, followed by a Noise transport message (ciphertext
//! and a 16-byte tag):
//!
//! ```text
//! 0        1        2..3      4..7                   8..15
//! type u8  lane u8  reserved  receiver_index u32 LE  counter u64 LE
//! ```
//!
//! The lane is the sending worker's number: the receiver's SO_REUSEPORT
//! program hands each lane to one of its workers (`lane % workers`), so
//! the traffic of one peer spreads over the receiver's cores while each
//! flow (one sending queue) keeps its order.
//!
//! The plaintext of a `Data` message is one or more records:
//! `u16 BE record_len | VXLAN header (8) | frame`, where `record_len`
//! counts the VXLAN header and the frame. Packing several frames into one
//! datagram (like Weave's sleeve) saves per-datagram cost for small frames.
//!
//! `Relay` and `Broadcast` carry the mesh's multi-hop traffic; their
//! plaintexts are laid out in [`super::relay`].

use super::{vxlan, Result, WireError};

mod field {
    use crate::wire::Field;
    pub const TYPE: usize = 0;
    pub const LANE: usize = 1;
    pub const RESERVED: Field = 2..4;
    pub const RECEIVER_INDEX: Field = 4..8;
    pub const COUNTER: Field = 8..16;
}

/// Length of the sleeve header in bytes.
pub const HEADER_LEN: usize = 16;
/// Length of the AEAD tag that follows the ciphertext.
pub const TAG_LEN: usize = 16;
/// Length of the per-record length prefix.
pub const RECORD_LEN_PREFIX: usize = 2;
/// Bytes a record adds in front of its frame: length prefix and VXLAN header.
pub const RECORD_OVERHEAD: usize = RECORD_LEN_PREFIX + vxlan::HEADER_LEN;

/// What a sealed datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Records of VXLAN-framed packets.
    Data = 1,
    /// A liveness and RTT heartbeat (request or reply).
    Heartbeat = 2,
    /// A path-MTU probe, padded to the size being tested.
    PmtuProbe = 3,
    /// A datagram for a peer that is not a neighbour: destination, hop
    /// budget and an inner datagram sealed end to end (see
    /// [`super::relay::Packet`]).
    Relay = 4,
    /// A bridge-mode broadcast passed along the source's spanning tree:
    /// source, hop budget and records (see [`super::relay::BroadcastPacket`]).
    Broadcast = 5,
}

impl MessageType {
    /// Maps the type byte; unknown values are malformed.
    pub fn from_byte(b: u8) -> Result<MessageType> {
        match b {
            1 => Ok(MessageType::Data),
            2 => Ok(MessageType::Heartbeat),
            3 => Ok(MessageType::PmtuProbe),
            4 => Ok(MessageType::Relay),
            5 => Ok(MessageType::Broadcast),
            _ => Err(WireError::Malformed),
        }
    }
}

/// A view of a sleeve datagram: header, then ciphertext and tag.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer, checking it holds a header and at least a tag, a
    /// known type and zero reserved bytes (any lane).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN + TAG_LEN {
            return Err(WireError::Truncated);
        }
        MessageType::from_byte(b[field::TYPE])?;
        if b[field::RESERVED] != [0, 0] {
            return Err(WireError::Malformed);
        }
        Ok(Packet { buffer })
    }

    /// The message type. Only meaningful on a checked packet.
    #[inline]
    pub fn message_type(&self) -> Result<MessageType> {
        MessageType::from_byte(self.buffer.as_ref()[field::TYPE])
    }

    /// The sender's lane (its worker number).
    #[inline]
    pub fn lane(&self) -> u8 {
        self.buffer.as_ref()[field::LANE]
    }

    /// The index the receiver chose for the session this was sealed with.
    #[inline]
    pub fn receiver_index(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::RECEIVER_INDEX];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The explicit 64-bit nonce counter.
    #[inline]
    pub fn counter(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.buffer.as_ref()[field::COUNTER]);
        u64::from_le_bytes(c)
    }

    /// The header bytes (the AEAD associated data).
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// Ciphertext followed by the tag.
    #[inline]
    pub fn sealed(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the header fields.
    #[inline]
    pub fn set_header(
        &mut self,
        message_type: MessageType,
        lane: u8,
        receiver_index: u32,
        counter: u64,
    ) {
        let b = self.buffer.as_mut();
        b[field::TYPE] = message_type as u8;
        b[field::LANE] = lane;
        b[field::RESERVED].fill(0);
        b[field::RECEIVER_INDEX].copy_from_slice(&receiver_index.to_le_bytes());
        b[field::COUNTER].copy_from_slice(&counter.to_le_bytes());
    }
}

/// The parsed sleeve header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// What the sealed payload is.
    pub message_type: MessageType,
    /// The sender's lane.
    pub lane: u8,
    /// The receiver's session index.
    pub receiver_index: u32,
    /// The nonce counter.
    pub counter: u64,
}

impl Repr {
    /// Parses the header of a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        if packet.buffer.as_ref().len() < HEADER_LEN + TAG_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Repr {
            message_type: packet.message_type()?,
            lane: packet.lane(),
            receiver_index: packet.receiver_index(),
            counter: packet.counter(),
        })
    }

    /// Header bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_header(
            self.message_type,
            self.lane,
            self.receiver_index,
            self.counter,
        );
    }
}

/// One frame found in a `Data` plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The VNI in the record's VXLAN header.
    pub vni: u32,
    /// The frame (an IP packet in TUN mode, an Ethernet frame in bridge mode).
    pub frame: &'a [u8],
}

/// Iterates over the records of a `Data` plaintext. Stops with one `Err`
/// at the first malformed record (and yields nothing after it).
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Records<'a> {
    /// Starts iterating over `plaintext`.
    pub fn new(plaintext: &'a [u8]) -> Self {
        Records {
            rest: plaintext,
            failed: false,
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let parsed = (|| {
            let len_bytes = self
                .rest
                .get(..RECORD_LEN_PREFIX)
                .ok_or(WireError::Truncated)?;
            let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
            if len < vxlan::HEADER_LEN {
                return Err(WireError::Malformed);
            }
            let end = RECORD_LEN_PREFIX + len;
            let body = self
                .rest
                .get(RECORD_LEN_PREFIX..end)
                .ok_or(WireError::Truncated)?;
            let header = vxlan::Packet::new_checked(body)?;
            let vni = vxlan::Repr::parse(&header)?.vni;
            self.rest = &self.rest[end..];
            Ok(Record {
                vni,
                frame: &body[vxlan::HEADER_LEN..],
            })
        })();
        if parsed.is_err() {
            self.failed = true;
        }
        Some(parsed)
    }
}

/// Writes one record (length prefix, VXLAN header, frame) at the start of
/// `out` and returns its length, or `None` if it does not fit or the frame
/// is too long for the 16-bit length.
pub fn emit_record(out: &mut [u8], vni: u32, frame: &[u8]) -> Option<usize> {
    let body_len = vxlan::HEADER_LEN + frame.len();
    let total = RECORD_LEN_PREFIX + body_len;
    if body_len > usize::from(u16::MAX) || out.len() < total {
        return None;
    }
    out[..2].copy_from_slice(&(body_len as u16).to_be_bytes());
    vxlan::Packet::new_unchecked(&mut out[2..2 + vxlan::HEADER_LEN]).set_header(vni);
    out[RECORD_OVERHEAD..total].copy_from_slice(frame);
    Some(total)
}

/// Writes a record header (length prefix and VXLAN header) in front of a
/// frame of `frame_len` bytes that is already in place at
/// `out[RECORD_OVERHEAD..]`. Used on the hot path to avoid a copy.
pub fn emit_record_header(out: &mut [u8], vni: u32, frame_len: usize) -> Option<usize> {
    let body_len = vxlan::HEADER_LEN + frame_len;
    if body_len > usize::from(u16::MAX) || out.len() < RECORD_LEN_PREFIX + body_len {
        return None;
    }
    out[..2].copy_from_slice(&(body_len as u16).to_be_bytes());
    vxlan::Packet::new_unchecked(&mut out[2..RECORD_OVERHEAD]).set_header(vni);
    Some(RECORD_LEN_PREFIX + body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    static GOLDEN_HEADER: [u8; 16] = [
        0x01, 3, 0, 0, // Data, lane 3, reserved
        0x78, 0x56, 0x34, 0x12, // receiver index 0x12345678 LE
        0x05, 0, 0, 0, 0, 0, 0, 0, // counter 5 LE
    ];

    #[test]
    fn header_round_trip() {
        let mut buf = [0u8; HEADER_LEN + TAG_LEN];
        buf[..16].copy_from_slice(&GOLDEN_HEADER);
        let p = Packet::new_checked(&buf[..]).unwrap();
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Repr {
                message_type: MessageType::Data,
                lane: 3,
                receiver_index: 0x1234_5678,
                counter: 5
            }
        );
        let mut out = [0xaau8; HEADER_LEN + TAG_LEN];
        repr.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[..16], &GOLDEN_HEADER);
    }

    #[test]
    fn rejects_short_unknown_type_and_reserved() {
        let mut buf = [0u8; HEADER_LEN + TAG_LEN];
        buf[..16].copy_from_slice(&GOLDEN_HEADER);
        for n in 0..buf.len() {
            assert_eq!(
                Packet::new_checked(&buf[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
        for (byte, ty) in [
            (1, MessageType::Data),
            (2, MessageType::Heartbeat),
            (3, MessageType::PmtuProbe),
            (4, MessageType::Relay),
            (5, MessageType::Broadcast),
        ] {
            assert_eq!(MessageType::from_byte(byte), Ok(ty));
            assert_eq!(ty as u8, byte);
            let mut t = buf;
            t[0] = byte;
            assert_eq!(Packet::new_checked(&t[..]).unwrap().message_type(), Ok(ty));
        }
        for byte in [0u8, 6, 9, 0xff] {
            let mut t = buf;
            t[0] = byte;
            assert_eq!(
                Packet::new_checked(&t[..]).unwrap_err(),
                WireError::Malformed
            );
        }
        let mut r = buf;
        r[2] = 1;
        assert_eq!(
            Packet::new_checked(&r[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn records_round_trip() {
        let mut buf = [0u8; 64];
        let a = emit_record(&mut buf, 7, b"hello").unwrap();
        let b = emit_record(&mut buf[a..], 7, b"").unwrap();
        let c = emit_record(&mut buf[a + b..], 0xffffff, b"xyz").unwrap();
        let got: Vec<_> = Records::new(&buf[..a + b + c])
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(
            got,
            vec![
                Record {
                    vni: 7,
                    frame: b"hello"
                },
                Record { vni: 7, frame: b"" },
                Record {
                    vni: 0xffffff,
                    frame: b"xyz"
                }
            ]
        );
        assert_eq!(
            &buf[..a],
            &[0, 13, 0x08, 0, 0, 0, 0, 0, 7, 0, b'h', b'e', b'l', b'l', b'o']
        );
    }

    #[test]
    fn records_truncated_and_bad() {
        let mut buf = [0u8; 32];
        let a = emit_record(&mut buf, 1, b"abcdef").unwrap();
        for n in 1..a {
            let r: Vec<_> = Records::new(&buf[..n]).collect();
            assert_eq!(r.len(), 1);
            assert!(r[0].is_err());
        }
        // A length shorter than the VXLAN header is malformed.
        let bad = [0u8, 3, 8, 0, 0];
        assert_eq!(Records::new(&bad).next(), Some(Err(WireError::Malformed)));
        // No room: emit refuses instead of panicking.
        assert_eq!(emit_record(&mut buf[..5], 1, b"abcdef"), None);
    }

    #[test]
    fn header_in_place() {
        let mut buf = [0u8; 32];
        buf[RECORD_OVERHEAD..RECORD_OVERHEAD + 3].copy_from_slice(b"abc");
        let n = emit_record_header(&mut buf, 9, 3).unwrap();
        let got: Vec<_> = Records::new(&buf[..n]).collect::<Result<_>>().unwrap();
        assert_eq!(
            got,
            vec![Record {
                vni: 9,
                frame: b"abc"
            }]
        );
    }
}
