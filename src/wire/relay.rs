//! The plaintexts of the mesh's multi-hop sleeve messages: `Relay` and
//! `Broadcast`. Both travel sealed hop by hop with the link session of two
//! neighbours; this module is what a hop reads after opening that layer.
//!
//! Relay (`MessageType::Relay`):
//!
//! ```text
//! 0..31              32            33..
//! destination (32)   hops_left u8  inner datagram
//! ```
//!
//! The inner datagram is a complete sleeve datagram (16-byte header,
//! ciphertext, 16-byte tag) sealed end to end with the destination's
//! end-to-end session: a relay cannot read it. A relay reads the
//! destination and either sends the inner datagram as it is to the
//! destination (last hop), or writes it again into a `Relay` for the next
//! hop with `hops_left - 1` ([`Repr::forwarded`]); one that arrives with
//! `hops_left` 0 is not wrapped again (dropped unless this is the last hop).
//!
//! Broadcast (`MessageType::Broadcast`, bridge mode, one spanning tree per
//! source):
//!
//! ```text
//! 0..31              32            33..
//! source (32)        hops_left u8  records (as in `Data`: see sleeve::Records)
//! ```
//!
//! Parsing is total: the checked constructors verify every length (and, for
//! a relay, that the inner datagram has a valid sleeve header) before a view
//! is returned, so the accessors cannot fail.

use super::{sleeve, Result, WireError};
use crate::mesh::peer::{PeerId, PEER_ID_LEN};

mod field {
    use crate::wire::Field;
    /// Destination (relay) or source (broadcast) identity.
    pub const PEER: Field = 0..32;
    pub const HOPS_LEFT: usize = 32;
    pub const PAYLOAD: usize = 33;
}

/// Bytes in front of the inner datagram of a relay, and in front of the
/// records of a broadcast: a peer identity and the hop budget.
pub const HEADER_LEN: usize = PEER_ID_LEN + 1;
/// The shortest inner datagram a relay carries: a sleeve header and a tag.
pub const MIN_INNER_LEN: usize = sleeve::HEADER_LEN + sleeve::TAG_LEN;
/// The hop budget a source puts on a new relay or broadcast: more than any
/// sane mesh diameter, small enough that a routing loop dies quickly.
pub const DEFAULT_HOPS: u8 = 16;

fn peer_at(b: &[u8]) -> PeerId {
    let mut id = [0u8; PEER_ID_LEN];
    id.copy_from_slice(&b[field::PEER]);
    PeerId(id)
}

/// A view of a relay plaintext.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer, checking that it holds the header and an inner
    /// datagram with a valid sleeve header and room for a tag.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN + MIN_INNER_LEN {
            return Err(WireError::Truncated);
        }
        sleeve::Packet::new_checked(&b[field::PAYLOAD..])?;
        Ok(Packet { buffer })
    }

    /// The peer the inner datagram is for.
    #[inline]
    pub fn destination(&self) -> PeerId {
        peer_at(self.buffer.as_ref())
    }

    /// How many more times the datagram may be wrapped for a next hop.
    #[inline]
    pub fn hops_left(&self) -> u8 {
        self.buffer.as_ref()[field::HOPS_LEFT]
    }

    /// The inner, end-to-end sealed sleeve datagram.
    #[inline]
    pub fn inner(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// Consumes the view, giving the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the destination.
    #[inline]
    pub fn set_destination(&mut self, destination: &PeerId) {
        self.buffer.as_mut()[field::PEER].copy_from_slice(destination.as_bytes());
    }

    /// Writes the hop budget (a relay decrements it in place before
    /// sealing the plaintext again for the next hop).
    #[inline]
    pub fn set_hops_left(&mut self, hops_left: u8) {
        self.buffer.as_mut()[field::HOPS_LEFT] = hops_left;
    }

    /// The inner datagram's bytes, to write it in place.
    #[inline]
    pub fn inner_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A parsed relay header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The peer the inner datagram is for.
    pub destination: PeerId,
    /// How many more times the datagram may be wrapped for a next hop.
    pub hops_left: u8,
    /// Length of the inner datagram.
    pub inner_len: usize,
}

impl Repr {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        let inner = packet
            .buffer
            .as_ref()
            .get(field::PAYLOAD..)
            .ok_or(WireError::Truncated)?;
        if inner.len() < MIN_INNER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Repr {
            destination: packet.destination(),
            hops_left: packet.hops_left(),
            inner_len: inner.len(),
        })
    }

    /// The header for the next hop, or `None` when the hop budget is spent
    /// (drop the datagram unless the destination is the next hop itself).
    pub fn forwarded(&self) -> Option<Repr> {
        Some(Repr {
            hops_left: self.hops_left.checked_sub(1)?,
            ..*self
        })
    }

    /// Header and inner datagram.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.inner_len
    }

    /// Writes the header; the caller writes the inner datagram into
    /// [`Packet::inner_mut`]. Fails if `packet` is shorter than
    /// [`Repr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        packet.set_destination(&self.destination);
        packet.set_hops_left(self.hops_left);
        Ok(())
    }
}

/// A view of a broadcast plaintext.
#[derive(Debug, Clone)]
pub struct BroadcastPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> BroadcastPacket<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        BroadcastPacket { buffer }
    }

    /// Wraps a buffer, checking that it holds the header. The records are
    /// checked one by one as [`BroadcastPacket::records`] walks them.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(BroadcastPacket { buffer })
    }

    /// The peer that sent the broadcast first (the root of its tree).
    #[inline]
    pub fn source(&self) -> PeerId {
        peer_at(self.buffer.as_ref())
    }

    /// How many more times the broadcast may be passed on.
    #[inline]
    pub fn hops_left(&self) -> u8 {
        self.buffer.as_ref()[field::HOPS_LEFT]
    }

    /// The record bytes.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// The records, framed as in a `Data` plaintext.
    pub fn records(&self) -> sleeve::Records<'_> {
        sleeve::Records::new(self.payload())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> BroadcastPacket<T> {
    /// Writes the source.
    #[inline]
    pub fn set_source(&mut self, source: &PeerId) {
        self.buffer.as_mut()[field::PEER].copy_from_slice(source.as_bytes());
    }

    /// Writes the hop budget.
    #[inline]
    pub fn set_hops_left(&mut self, hops_left: u8) {
        self.buffer.as_mut()[field::HOPS_LEFT] = hops_left;
    }

    /// The record bytes, to write records in place.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A parsed broadcast header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastRepr {
    /// The peer that sent the broadcast first.
    pub source: PeerId,
    /// How many more times the broadcast may be passed on.
    pub hops_left: u8,
    /// Length of the records.
    pub records_len: usize,
}

impl BroadcastRepr {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &BroadcastPacket<T>) -> Result<BroadcastRepr> {
        let records = packet
            .buffer
            .as_ref()
            .get(field::PAYLOAD..)
            .ok_or(WireError::Truncated)?;
        Ok(BroadcastRepr {
            source: packet.source(),
            hops_left: packet.hops_left(),
            records_len: records.len(),
        })
    }

    /// The header to pass the broadcast on with, or `None` when the hop
    /// budget is spent (deliver locally, pass on to nobody).
    pub fn forwarded(&self) -> Option<BroadcastRepr> {
        Some(BroadcastRepr {
            hops_left: self.hops_left.checked_sub(1)?,
            ..*self
        })
    }

    /// Header and records.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.records_len
    }

    /// Writes the header; the caller writes the records into
    /// [`BroadcastPacket::payload_mut`]. Fails if `packet` is shorter than
    /// [`BroadcastRepr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut BroadcastPacket<T>,
    ) -> Result<()> {
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        packet.set_source(&self.source);
        packet.set_hops_left(self.hops_left);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sleeve::MessageType;

    const DEST: PeerId = PeerId([0xab; 32]);

    /// A relay of a 40-byte inner Data datagram (header, 8 bytes, tag).
    fn golden_relay() -> Vec<u8> {
        let mut b = vec![0xab; 32];
        b.push(3); // hops_left
        let mut inner = [0u8; 40];
        sleeve::Packet::new_unchecked(&mut inner[..]).set_header(MessageType::Data, 0, 7, 9);
        inner[16..].fill(0x5a);
        b.extend_from_slice(&inner);
        b
    }

    #[test]
    fn relay_parse_and_emit() {
        let bytes = golden_relay();
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.destination(), DEST);
        assert_eq!(p.hops_left(), 3);
        assert_eq!(p.inner(), &bytes[33..]);
        let inner = sleeve::Packet::new_checked(p.inner()).unwrap();
        assert_eq!(inner.receiver_index(), 7);
        let repr = Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Repr {
                destination: DEST,
                hops_left: 3,
                inner_len: 40
            }
        );
        assert_eq!(repr.buffer_len(), bytes.len());
        let mut out = vec![0u8; repr.buffer_len()];
        let mut q = Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut q).unwrap();
        q.inner_mut().copy_from_slice(&bytes[33..]);
        assert_eq!(out, bytes);
        // Too small a buffer is refused, not a panic.
        assert_eq!(
            repr.emit(&mut Packet::new_unchecked(&mut out[..40])),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn relay_truncated_and_bad_inner() {
        let bytes = golden_relay();
        for n in 0..HEADER_LEN + MIN_INNER_LEN {
            assert_eq!(
                Packet::new_checked(&bytes[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
        assert!(Packet::new_checked(&bytes[..HEADER_LEN + MIN_INNER_LEN]).is_ok());
        let mut bad = bytes.clone();
        bad[33] = 0xee; // unknown inner message type
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            WireError::Malformed
        );
        // An unchecked view of a short buffer still parses to an error.
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bytes[..40])),
            Err(WireError::Truncated)
        );
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&bytes[..10])),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn relay_hops_left_counts_down_to_a_drop() {
        let mut bytes = golden_relay();
        bytes[32] = 1;
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        let next = repr.forwarded().unwrap();
        assert_eq!(next.hops_left, 0);
        assert_eq!(next.destination, DEST);
        assert_eq!(next.forwarded(), None);
        // Decrement in place, as a relay does before sealing again.
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.set_hops_left(next.hops_left);
        assert_eq!(p.hops_left(), 0);
        // hops_left 0 still parses: the last hop delivers it.
        assert!(Packet::new_checked(&bytes[..]).is_ok());
    }

    #[test]
    fn broadcast_round_trip_with_records() {
        let source = PeerId([0x11; 32]);
        let mut records = [0u8; 64];
        let a = sleeve::emit_record(&mut records, 5, b"frame-one").unwrap();
        let b = sleeve::emit_record(&mut records[a..], 5, b"two").unwrap();
        let repr = BroadcastRepr {
            source,
            hops_left: DEFAULT_HOPS,
            records_len: a + b,
        };
        let mut out = vec![0u8; repr.buffer_len()];
        let mut p = BroadcastPacket::new_unchecked(&mut out[..]);
        repr.emit(&mut p).unwrap();
        p.payload_mut().copy_from_slice(&records[..a + b]);
        assert_eq!(&out[..32], &[0x11; 32]);
        assert_eq!(out[32], DEFAULT_HOPS);
        let p = BroadcastPacket::new_checked(&out[..]).unwrap();
        assert_eq!(BroadcastRepr::parse(&p), Ok(repr));
        let frames: Vec<_> = p.records().map(|r| r.unwrap().frame).collect();
        assert_eq!(frames, vec![&b"frame-one"[..], &b"two"[..]]);
        // An empty broadcast (no records) is valid.
        assert_eq!(
            BroadcastRepr::parse(&BroadcastPacket::new_checked(&out[..HEADER_LEN]).unwrap())
                .unwrap()
                .records_len,
            0
        );
    }

    #[test]
    fn broadcast_truncated_and_hops() {
        let out = [0u8; HEADER_LEN + 3];
        for n in 0..HEADER_LEN {
            assert_eq!(
                BroadcastPacket::new_checked(&out[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
        assert_eq!(
            BroadcastRepr::parse(&BroadcastPacket::new_unchecked(&out[..5])),
            Err(WireError::Truncated)
        );
        // Trailing bytes that are not a record: one error from the walk.
        let p = BroadcastPacket::new_checked(&out[..]).unwrap();
        let walked: Vec<_> = p.records().collect();
        assert_eq!(walked.len(), 1);
        assert!(walked[0].is_err());
        let repr = BroadcastRepr::parse(&p).unwrap();
        assert_eq!(repr.hops_left, 0);
        assert_eq!(repr.forwarded(), None);
        let mut small = [0u8; 10];
        assert_eq!(
            repr.emit(&mut BroadcastPacket::new_unchecked(&mut small[..])),
            Err(WireError::Truncated)
        );
    }
}
