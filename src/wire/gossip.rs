//! Mesh gossip messages: the bytes `mesh::Node`s exchange over their
//! control connections to spread membership, topology and claims.
//!
//! ```text
//! message  := kind:u8 body
//! SUMMARY  := live:u32 hash:u64                       "my view, in 12 bytes"
//! DIGEST   := start:id has_end:u8 end:id count:u16 count*(id version:u64)
//!             every live record whose id is in [start, end) (end absent: to the top)
//! REQUEST  := count:u16 count*id                      "send me these records"
//! RECORDS  := count:u16 count*record
//! record   := id version:u64 name_len:u8 name
//!             n:u8 n*endpoint  n:u8 n*claim  n:u8 n*subnet  n:u16 n*neighbour
//!             cert_len:u16 cert                    (0: none; at most MAX_CERT_LEN)
//! endpoint := family:u8(4|6) addr:16 port:u16          (19 bytes)
//! claim    := kind:u8(1 ipv4|2 ipv6|3 mac|4 reserved ipv4|5 reserved ipv6)
//!             len:u8 addr:16 lamport:u64                                  (26 bytes)
//!             kinds 4 and 5: a prefix the record's owner keeps reserved for a
//!             departed peer (IPAM chunks); never owned, lamport 0
//! subnet   := kind:u8(1|2) len:u8 addr:16              (18 bytes)
//! neighbour:= id flags:u8 (bit 0: data path works)     (33 bytes)
//! ```
//!
//! All integers are big-endian; `id` is a 32-byte peer identity. Parsing is
//! total: [`Message::parse`] checks every length and tag before returning a
//! view, so the accessors cannot fail, and nothing is allocated from a
//! count in the input (the bytes must be there first).

use super::{Result, WireError};
pub use crate::identity::MAX_CERT_LEN;
use crate::mesh::claims::{AnnouncedClaim, Claim, IpPrefix};
use crate::mesh::peer::{Neighbour, PeerId, MAX_NAME_LEN, PEER_ID_LEN};
use crate::wire::ethernet::MacAddr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest message a node builds (fits one control frame with room for
/// the Noise tag); a single record larger than this is sent alone.
pub const MAX_MESSAGE_LEN: usize = 60_000;

/// Message kinds.
mod kind {
    pub const SUMMARY: u8 = 1;
    pub const DIGEST: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const RECORDS: u8 = 4;
}

const ID: usize = PEER_ID_LEN;
/// One digest entry: id and version.
pub const DIGEST_ENTRY_LEN: usize = ID + 8;
/// Bytes before the entries of a digest (kind included).
pub const DIGEST_HEADER_LEN: usize = 1 + ID + 1 + ID + 2;
const ENDPOINT_LEN: usize = 19;
const CLAIM_LEN: usize = 26;
const SUBNET_LEN: usize = 18;
const NEIGHBOUR_LEN: usize = ID + 1;

/// A parsed gossip message: a view over the input bytes.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// The sender's whole live view in one hash: equal hashes mean equal
    /// views, and nothing more needs to be said.
    Summary {
        /// How many live records the sender holds.
        live: u32,
        /// XOR of [`entry_hash`] over them.
        hash: u64,
    },
    /// The (id, version) of every live record the sender holds in a range.
    Digest(Digest<'a>),
    /// Ids whose records the sender wants.
    Request(IdList<'a>),
    /// Whole records.
    Records(Records<'a>),
}

/// A digest: a range of the id space and the sender's entries in it.
#[derive(Debug, Clone, Copy)]
pub struct Digest<'a> {
    start: &'a [u8],
    end: Option<&'a [u8]>,
    entries: &'a [u8],
}

impl<'a> Digest<'a> {
    /// First id of the range.
    pub fn start(&self) -> PeerId {
        id_at(self.start)
    }

    /// First id past the range; `None` means the range runs to the top.
    pub fn end(&self) -> Option<PeerId> {
        self.end.map(id_at)
    }

    /// Whether `id` lies in the range.
    pub fn covers(&self, id: &PeerId) -> bool {
        *id >= self.start() && self.end().map_or(true, |e| *id < e)
    }

    /// The (id, version) entries.
    pub fn entries(&self) -> impl Iterator<Item = (PeerId, u64)> + 'a {
        self.entries
            .chunks_exact(DIGEST_ENTRY_LEN)
            .map(|e| (id_at(e), be_u64(&e[ID..])))
    }
}

/// A list of peer ids.
#[derive(Debug, Clone, Copy)]
pub struct IdList<'a> {
    ids: &'a [u8],
}

impl<'a> IdList<'a> {
    /// The ids.
    pub fn ids(&self) -> impl Iterator<Item = PeerId> + 'a {
        self.ids.chunks_exact(ID).map(id_at)
    }
}

/// A run of validated records.
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    body: &'a [u8],
    count: u16,
}

impl<'a> Records<'a> {
    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = RecordView<'a>> + 'a {
        let mut rest = self.body;
        (0..self.count).map_while(move |_| {
            // Validated in `parse`: this always succeeds.
            let (view, used) = RecordView::parse(rest).ok()?;
            rest = &rest[used..];
            Some(view)
        })
    }
}

/// One peer's record: who it is, how to reach it, what it claims and whom
/// it is connected to.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    id: &'a [u8],
    version: u64,
    name: &'a [u8],
    endpoints: &'a [u8],
    claims: &'a [u8],
    subnets: &'a [u8],
    neighbours: &'a [u8],
    cert: &'a [u8],
}

/// Takes `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if rest.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u8(rest: &mut &[u8]) -> Result<u8> {
    Ok(take(rest, 1)?[0])
}

fn take_u16(rest: &mut &[u8]) -> Result<u16> {
    let b = take(rest, 2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn id_at(b: &[u8]) -> PeerId {
    let mut a = [0u8; ID];
    a.copy_from_slice(&b[..ID]);
    PeerId(a)
}

fn addr16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

/// Decodes an address family tag and 16 address bytes (IPv4 in the first 4).
fn ip_at(family_v4: bool, b: &[u8]) -> IpAddr {
    if family_v4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr16(b)))
    }
}

fn decode_endpoint(e: &[u8]) -> Option<SocketAddr> {
    let v4 = match e[0] {
        4 => true,
        6 => false,
        _ => return None,
    };
    Some(SocketAddr::new(
        ip_at(v4, &e[1..17]),
        u16::from_be_bytes([e[17], e[18]]),
    ))
}

fn decode_prefix(kind: u8, len: u8, addr: &[u8]) -> Option<IpPrefix> {
    let v4 = match kind {
        1 => true,
        2 => false,
        _ => return None,
    };
    IpPrefix::new(ip_at(v4, addr), len)
}

fn decode_claim(c: &[u8]) -> Option<AnnouncedClaim> {
    let claim = match c[0] {
        3 if c[1] == 48 => Claim::Mac(MacAddr::from_bytes(&c[2..8])?),
        k => Claim::Ip(decode_prefix(k, c[1], &c[2..18])?),
    };
    Some(AnnouncedClaim {
        lamport: be_u64(&c[18..]),
        claim,
    })
}

/// A reserved prefix (claim kinds 4 and 5).
fn decode_reserved(c: &[u8]) -> Option<IpPrefix> {
    match c[0] {
        4 => decode_prefix(1, c[1], &c[2..18]),
        5 => decode_prefix(2, c[1], &c[2..18]),
        _ => None,
    }
}

impl<'a> RecordView<'a> {
    /// Parses one record at the start of `bytes`: the view and the bytes it
    /// used. Every item is checked here, so the iterators cannot fail.
    pub fn parse(bytes: &'a [u8]) -> Result<(RecordView<'a>, usize)> {
        let mut rest = bytes;
        let id = take(&mut rest, ID)?;
        let version = be_u64(take(&mut rest, 8)?);
        let name_len = usize::from(take_u8(&mut rest)?);
        if name_len > MAX_NAME_LEN {
            return Err(WireError::Malformed);
        }
        let name = take(&mut rest, name_len)?;
        let n = usize::from(take_u8(&mut rest)?);
        let endpoints = take(&mut rest, n * ENDPOINT_LEN)?;
        if endpoints
            .chunks_exact(ENDPOINT_LEN)
            .any(|e| decode_endpoint(e).is_none())
        {
            return Err(WireError::Malformed);
        }
        let n = usize::from(take_u8(&mut rest)?);
        let claims = take(&mut rest, n * CLAIM_LEN)?;
        if claims
            .chunks_exact(CLAIM_LEN)
            .any(|c| decode_claim(c).is_none() && decode_reserved(c).is_none())
        {
            return Err(WireError::Malformed);
        }
        let n = usize::from(take_u8(&mut rest)?);
        let subnets = take(&mut rest, n * SUBNET_LEN)?;
        if subnets
            .chunks_exact(SUBNET_LEN)
            .any(|s| decode_prefix(s[0], s[1], &s[2..]).is_none())
        {
            return Err(WireError::Malformed);
        }
        let n = usize::from(take_u16(&mut rest)?);
        let neighbours = take(&mut rest, n * NEIGHBOUR_LEN)?;
        let n = usize::from(take_u16(&mut rest)?);
        if n > MAX_CERT_LEN {
            return Err(WireError::Malformed);
        }
        let cert = take(&mut rest, n)?;
        let used = bytes.len() - rest.len();
        Ok((
            RecordView {
                id,
                version,
                name,
                endpoints,
                claims,
                subnets,
                neighbours,
                cert,
            },
            used,
        ))
    }

    /// Whose record this is.
    pub fn id(&self) -> PeerId {
        id_at(self.id)
    }

    /// The record's version: it only grows, set by its owner.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The name bytes as sent: untrusted, see `PeerName::from_untrusted`.
    pub fn name(&self) -> &'a [u8] {
        self.name
    }

    /// Control addresses the peer listens on.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + 'a {
        self.endpoints
            .chunks_exact(ENDPOINT_LEN)
            .filter_map(decode_endpoint)
    }

    /// The peer's claims.
    pub fn claims(&self) -> impl Iterator<Item = AnnouncedClaim> + 'a {
        self.claims.chunks_exact(CLAIM_LEN).filter_map(decode_claim)
    }

    /// Prefixes the peer keeps reserved for departed peers (IPAM).
    pub fn reserved(&self) -> impl Iterator<Item = IpPrefix> + 'a {
        self.claims
            .chunks_exact(CLAIM_LEN)
            .filter_map(decode_reserved)
    }

    /// The overlay subnets of the peer's device.
    pub fn subnets(&self) -> impl Iterator<Item = IpPrefix> + 'a {
        self.subnets
            .chunks_exact(SUBNET_LEN)
            .filter_map(|s| decode_prefix(s[0], s[1], &s[2..]))
    }

    /// The peers it holds connections to.
    pub fn neighbours(&self) -> impl Iterator<Item = Neighbour> + 'a {
        self.neighbours
            .chunks_exact(NEIGHBOUR_LEN)
            .map(|n| Neighbour {
                peer: id_at(n),
                data_path: n[ID] & 1 != 0,
            })
    }

    /// The peer's encoded network certificate (empty: none). Unverified:
    /// see `identity::Trust`.
    pub fn cert(&self) -> &'a [u8] {
        self.cert
    }
}

impl<'a> Message<'a> {
    /// Parses a whole message; trailing bytes are an error.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>> {
        let mut rest = bytes;
        let message = match take_u8(&mut rest)? {
            kind::SUMMARY => {
                let b = take(&mut rest, 12)?;
                Message::Summary {
                    live: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    hash: be_u64(&b[4..]),
                }
            }
            kind::DIGEST => {
                let start = take(&mut rest, ID)?;
                let has_end = take_u8(&mut rest)?;
                let end = take(&mut rest, ID)?;
                let end = match has_end {
                    0 => None,
                    1 => Some(end),
                    _ => return Err(WireError::Malformed),
                };
                let n = usize::from(take_u16(&mut rest)?);
                let entries = take(&mut rest, n * DIGEST_ENTRY_LEN)?;
                Message::Digest(Digest {
                    start,
                    end,
                    entries,
                })
            }
            kind::REQUEST => {
                let n = usize::from(take_u16(&mut rest)?);
                Message::Request(IdList {
                    ids: take(&mut rest, n * ID)?,
                })
            }
            kind::RECORDS => {
                let count = take_u16(&mut rest)?;
                let body = rest;
                for _ in 0..count {
                    let (_, used) = RecordView::parse(rest)?;
                    rest = &rest[used..];
                }
                let body = &body[..body.len() - rest.len()];
                Message::Records(Records { body, count })
            }
            _ => return Err(WireError::Malformed),
        };
        if !rest.is_empty() {
            return Err(WireError::Malformed);
        }
        Ok(message)
    }
}

/// The hash of one (id, version) digest entry; a view's summary hash is
/// the XOR of its entries' (SipHash-free, so identical on every build).
pub fn entry_hash(id: &PeerId, version: u64) -> u64 {
    // FNV-1a over the id, then a SplitMix64 finaliser with the version.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h ^ version.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends a SUMMARY message.
pub fn emit_summary(out: &mut Vec<u8>, live: u32, hash: u64) {
    out.push(kind::SUMMARY);
    out.extend_from_slice(&live.to_be_bytes());
    out.extend_from_slice(&hash.to_be_bytes());
}

/// Appends a DIGEST message for the range [start, end) with `entries`
/// (at most `u16::MAX`; the caller chunks).
pub fn emit_digest(
    out: &mut Vec<u8>,
    start: &PeerId,
    end: Option<&PeerId>,
    entries: &[(PeerId, u64)],
) {
    debug_assert!(entries.len() <= usize::from(u16::MAX));
    out.push(kind::DIGEST);
    out.extend_from_slice(start.as_bytes());
    out.push(u8::from(end.is_some()));
    out.extend_from_slice(end.unwrap_or(&PeerId::default()).as_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (id, version) in entries {
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&version.to_be_bytes());
    }
}

/// Appends a REQUEST message (at most `u16::MAX` ids; the caller chunks).
pub fn emit_request(out: &mut Vec<u8>, ids: &[PeerId]) {
    debug_assert!(ids.len() <= usize::from(u16::MAX));
    out.push(kind::REQUEST);
    out.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
}

/// The parts of a record to emit, borrowed from whoever holds it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRepr<'a> {
    /// Whose record.
    pub id: &'a PeerId,
    /// Its version.
    pub version: u64,
    /// Name bytes (truncated to [`MAX_NAME_LEN`]).
    pub name: &'a [u8],
    /// Control addresses (at most 255 are sent).
    pub endpoints: &'a [SocketAddr],
    /// Claims (at most 255 are sent).
    pub claims: &'a [AnnouncedClaim],
    /// Reserved prefixes, sent after the claims in the same list (as many
    /// as fit in its 255 entries).
    pub reserved: &'a [IpPrefix],
    /// Device subnets (at most 255 are sent).
    pub subnets: &'a [IpPrefix],
    /// Connections (at most 65535 are sent).
    pub neighbours: &'a [Neighbour],
    /// The encoded certificate (empty: none; one longer than
    /// [`MAX_CERT_LEN`] is not sent).
    pub cert: &'a [u8],
}

fn put_addr16(out: &mut Vec<u8>, addr: &IpAddr) {
    let mut a = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&a);
}

impl RecordRepr<'_> {
    /// Bytes [`emit`](Self::emit) appends.
    pub fn buffer_len(&self) -> usize {
        ID + 8
            + 1
            + self.name.len().min(MAX_NAME_LEN)
            + 1
            + self.endpoints.len().min(255) * ENDPOINT_LEN
            + 1
            + (self.claims.len() + self.reserved.len()).min(255) * CLAIM_LEN
            + 1
            + self.subnets.len().min(255) * SUBNET_LEN
            + 2
            + self.neighbours.len().min(65535) * NEIGHBOUR_LEN
            + 2
            + self.sent_cert().len()
    }

    fn sent_cert(&self) -> &[u8] {
        if self.cert.len() > MAX_CERT_LEN {
            &[]
        } else {
            self.cert
        }
    }

    /// Appends the record.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        let name = &self.name[..self.name.len().min(MAX_NAME_LEN)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        let endpoints = &self.endpoints[..self.endpoints.len().min(255)];
        out.push(endpoints.len() as u8);
        for e in endpoints {
            out.push(if e.is_ipv4() { 4 } else { 6 });
            put_addr16(out, &e.ip());
            out.extend_from_slice(&e.port().to_be_bytes());
        }
        let claims = &self.claims[..self.claims.len().min(255)];
        let reserved = &self.reserved[..self.reserved.len().min(255 - claims.len())];
        out.push((claims.len() + reserved.len()) as u8);
        for c in claims {
            match c.claim {
                Claim::Ip(p) => {
                    out.push(if p.is_ipv4() { 1 } else { 2 });
                    out.push(p.len());
                    put_addr16(out, &p.addr());
                }
                Claim::Mac(m) => {
                    out.extend_from_slice(&[3, 48]);
                    out.extend_from_slice(&m.0);
                    out.extend_from_slice(&[0; 10]);
                }
            }
            out.extend_from_slice(&c.lamport.to_be_bytes());
        }
        for p in reserved {
            out.push(if p.is_ipv4() { 4 } else { 5 });
            out.push(p.len());
            put_addr16(out, &p.addr());
            out.extend_from_slice(&0u64.to_be_bytes());
        }
        let subnets = &self.subnets[..self.subnets.len().min(255)];
        out.push(subnets.len() as u8);
        for s in subnets {
            out.push(if s.is_ipv4() { 1 } else { 2 });
            out.push(s.len());
            put_addr16(out, &s.addr());
        }
        let neighbours = &self.neighbours[..self.neighbours.len().min(65535)];
        out.extend_from_slice(&(neighbours.len() as u16).to_be_bytes());
        for n in neighbours {
            out.extend_from_slice(n.peer.as_bytes());
            out.push(u8::from(n.data_path));
        }
        let cert = self.sent_cert();
        out.extend_from_slice(&(cert.len() as u16).to_be_bytes());
        out.extend_from_slice(cert);
    }
}

/// Appends the header of a RECORDS message with `count` records; the
/// caller then emits exactly that many.
pub fn emit_records_header(out: &mut Vec<u8>, count: u16) {
    out.push(kind::RECORDS);
    out.extend_from_slice(&count.to_be_bytes());
}

/// Offset of the record count in a RECORDS message, for callers that
/// write the count after the records.
pub const RECORDS_COUNT: core::ops::Range<usize> = 1..3;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> PeerId {
        PeerId([b; 32])
    }

    #[test]
    fn golden_summary_and_request() {
        let mut out = vec![];
        emit_summary(&mut out, 3, 0x0102_0304_0506_0708);
        assert_eq!(out, [1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(matches!(
            Message::parse(&out),
            Ok(Message::Summary {
                live: 3,
                hash: 0x0102_0304_0506_0708
            })
        ));
        let mut out = vec![];
        emit_request(&mut out, &[id(7), id(9)]);
        assert_eq!(&out[..3], &[3, 0, 2]);
        let Ok(Message::Request(list)) = Message::parse(&out) else {
            panic!("request")
        };
        assert_eq!(list.ids().collect::<Vec<_>>(), vec![id(7), id(9)]);
        // Truncation anywhere, and a trailing byte, are errors.
        for n in 0..out.len() {
            assert!(Message::parse(&out[..n]).is_err());
        }
        out.push(0);
        assert_eq!(Message::parse(&out).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn digest_round_trip_and_range() {
        let mut out = vec![];
        emit_digest(&mut out, &id(2), Some(&id(5)), &[(id(2), 9), (id(3), 1)]);
        assert_eq!(out.len(), DIGEST_HEADER_LEN + 2 * DIGEST_ENTRY_LEN);
        let Ok(Message::Digest(d)) = Message::parse(&out) else {
            panic!("digest")
        };
        assert_eq!(
            d.entries().collect::<Vec<_>>(),
            vec![(id(2), 9), (id(3), 1)]
        );
        assert!(d.covers(&id(2)) && d.covers(&id(4)) && !d.covers(&id(5)) && !d.covers(&id(1)));
        let mut out = vec![];
        emit_digest(&mut out, &id(0), None, &[]);
        let Ok(Message::Digest(d)) = Message::parse(&out) else {
            panic!("digest")
        };
        assert!(d.covers(&id(255)) && d.end().is_none());
        out[1 + ID] = 2;
        assert!(Message::parse(&out).is_err());
    }

    #[test]
    fn record_round_trip() {
        let endpoints = [
            "10.0.0.1:6783".parse().unwrap(),
            "[fd00::1]:6783".parse().unwrap(),
        ];
        let claims = [
            AnnouncedClaim {
                lamport: 4,
                claim: Claim::Ip("10.40.0.1".parse().unwrap()),
            },
            AnnouncedClaim {
                lamport: 5,
                claim: Claim::Ip("fd40::/64".parse().unwrap()),
            },
            AnnouncedClaim {
                lamport: 6,
                claim: Claim::Mac(MacAddr([2, 1, 2, 3, 4, 5])),
            },
        ];
        let subnets = ["10.40.0.0/16".parse().unwrap()];
        let reserved = [
            "10.32.1.0/26".parse().unwrap(),
            "fd32::/64".parse().unwrap(),
        ];
        let neighbours = [
            Neighbour {
                peer: id(3),
                data_path: true,
            },
            Neighbour {
                peer: id(4),
                data_path: false,
            },
        ];
        let repr = RecordRepr {
            id: &id(1),
            version: 77,
            name: b"host-a",
            endpoints: &endpoints,
            claims: &claims,
            reserved: &reserved,
            subnets: &subnets,
            neighbours: &neighbours,
            cert: b"certificate bytes",
        };
        let mut out = vec![];
        emit_records_header(&mut out, 2);
        repr.emit(&mut out);
        repr.emit(&mut out);
        assert_eq!(out.len(), 3 + 2 * repr.buffer_len());
        let Ok(Message::Records(records)) = Message::parse(&out) else {
            panic!("records")
        };
        let all: Vec<_> = records.iter().collect();
        assert_eq!(all.len(), 2);
        let r = all[1];
        assert_eq!((r.id(), r.version(), r.name()), (id(1), 77, &b"host-a"[..]));
        assert_eq!(r.endpoints().collect::<Vec<_>>(), endpoints);
        assert_eq!(r.claims().collect::<Vec<_>>(), claims);
        assert_eq!(r.reserved().collect::<Vec<IpPrefix>>(), reserved);
        assert_eq!(r.subnets().collect::<Vec<_>>(), subnets);
        assert_eq!(r.neighbours().collect::<Vec<_>>(), neighbours);
        for n in 0..out.len() {
            assert!(Message::parse(&out[..n]).is_err(), "prefix {n} parsed");
        }
        // A bad endpoint family is refused up front.
        let endpoint_at = 3 + ID + 8 + 1 + 6 + 1;
        out[endpoint_at] = 5;
        assert_eq!(Message::parse(&out).unwrap_err(), WireError::Malformed);
    }

    #[test]
    fn summary_hash_depends_on_id_and_version() {
        assert_ne!(entry_hash(&id(1), 1), entry_hash(&id(1), 2));
        assert_ne!(entry_hash(&id(1), 1), entry_hash(&id(2), 1));
        assert_eq!(entry_hash(&id(1), 1), entry_hash(&id(1), 1));
    }
}
