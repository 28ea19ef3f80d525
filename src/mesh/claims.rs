//! Address claims: which peer owns an overlay IP prefix or a MAC address.
//!
//! Every host announces its claims in its gossip record, each stamped with
//! a Lamport time (one more than the largest claim time the host had seen
//! when it first announced the claim; see [`crate::mesh::node`]). Every
//! node resolves ownership the same way from the same records: claims are
//! taken in order of (Lamport time, claimant identity) and a claim that
//! overlaps one already taken is refused. So the first claim wins, a claim
//! made after its announcer had seen the owner's always loses, and
//! simultaneous claims are broken by identity, identically everywhere.

use super::peer::PeerId;
use crate::wire::ethernet::MacAddr;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// The prefix `addr/len` with host bits cleared; `None` if `len` is
    /// longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Option<IpPrefix> {
        let max = max_len(&addr);
        if len > max {
            return None;
        }
        let bits = left_aligned(&addr) & mask(len);
        Some(IpPrefix {
            addr: from_left_aligned(bits, addr.is_ipv4()),
            len,
        })
    }

    /// The prefix holding exactly `addr` (a /32 or a /128).
    pub fn host(addr: IpAddr) -> IpPrefix {
        IpPrefix {
            addr,
            len: max_len(&addr),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    #[allow(clippy::len_without_is_empty)] // a length in bits, not a count
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `other` lies inside this prefix (a prefix contains itself).
    pub fn contains(&self, other: &IpPrefix) -> bool {
        self.is_ipv4() == other.is_ipv4()
            && other.len >= self.len
            && left_aligned(&other.addr) & mask(self.len) == left_aligned(&self.addr)
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.contains(&IpPrefix::host(addr))
    }

    /// Whether the two prefixes share any address. CIDR prefixes either
    /// nest or are disjoint, so this is containment either way.
    pub fn overlaps(&self, other: &IpPrefix) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The address bits left-aligned in 128 bits (IPv4 in the top 32), so
    /// one mask function serves both families.
    pub(crate) fn bits(&self) -> u128 {
        left_aligned(&self.addr)
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

pub(crate) fn left_aligned(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)) << 96,
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_left_aligned(bits: u128, ipv4: bool) -> IpAddr {
    if ipv4 {
        IpAddr::V4(Ipv4Addr::from((bits >> 96) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

/// The top `len` bits set.
pub(crate) fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The part before `/` is not an IP address.
    #[error("not an IP address (expected e.g. 10.40.0.1/16)")]
    Address,
    /// The length is missing, not a number, or too long for the family.
    #[error("bad prefix length (0-32 for IPv4, 0-128 for IPv6)")]
    Length,
}

impl FromStr for IpPrefix {
    type Err = PrefixError;

    /// Parses `10.40.0.0/16`; a bare address is a host prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| PrefixError::Address)?;
        match len {
            None => Ok(IpPrefix::host(addr)),
            Some(l) => {
                let len: u8 = l.parse().map_err(|_| PrefixError::Length)?;
                IpPrefix::new(addr, len).ok_or(PrefixError::Length)
            }
        }
    }
}

/// Something a host says belongs to it: traffic for it goes to that host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Claim {
    /// An overlay prefix (a host's own address is a /32 or /128).
    Ip(IpPrefix),
    /// A MAC address behind the host (bridge mode).
    Mac(MacAddr),
}

impl Claim {
    /// Whether the two claims cannot both be owned by different hosts.
    pub fn overlaps(&self, other: &Claim) -> bool {
        match (self, other) {
            (Claim::Ip(a), Claim::Ip(b)) => a.overlaps(b),
            (Claim::Mac(a), Claim::Mac(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Ip(p) => p.fmt(f),
            Claim::Mac(m) => m.fmt(f),
        }
    }
}

/// A claim as announced: with the Lamport time that orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnnouncedClaim {
    /// When the claim was first announced, in the mesh's Lamport time.
    pub lamport: u64,
    /// What is claimed.
    pub claim: Claim,
}

/// What a host's interface address (`10.40.0.1/16`) announces: the host
/// prefix as a claim and the subnet, for the subnet-mismatch warning.
pub fn interface_address(address: &str) -> Result<(Claim, IpPrefix), PrefixError> {
    let (addr, len) = address.split_once('/').ok_or(PrefixError::Length)?;
    let addr: IpAddr = addr.parse().map_err(|_| PrefixError::Address)?;
    let len: u8 = len.parse().map_err(|_| PrefixError::Length)?;
    let subnet = IpPrefix::new(addr, len).ok_or(PrefixError::Length)?;
    Ok((Claim::Ip(IpPrefix::host(addr)), subnet))
}

/// A claim refused because another peer owns an overlapping one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conflict {
    /// The refused claim.
    pub refused_claim: Claim,
    /// Who made it.
    pub refused: PeerId,
    /// The claim that owns the space.
    pub owned_claim: Claim,
    /// Who owns it.
    pub owner: PeerId,
}

/// The outcome of resolving every live peer's claims.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Accepted claims and their owners.
    pub owned: Vec<(Claim, PeerId)>,
    /// Refused claims, each with the claim that beat it.
    pub conflicts: Vec<Conflict>,
}

/// Resolves ownership; the same input gives the same answer on every node
/// whatever its order. Cost O(C log C) for C claims.
pub fn resolve(claims: impl IntoIterator<Item = (PeerId, AnnouncedClaim)>) -> Resolution {
    let mut all: Vec<(u64, PeerId, Claim)> = claims
        .into_iter()
        .map(|(p, c)| (c.lamport, p, c.claim))
        .collect();
    all.sort_unstable();
    all.dedup();
    // Accepted IP prefixes keyed by (family, left-aligned bits, length):
    // point look-ups find an accepted prefix containing a new one, a range
    // scan finds accepted prefixes inside it.
    let mut prefixes: BTreeMap<(bool, u128, u8), usize> = BTreeMap::new();
    let mut lens: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut macs: HashMap<MacAddr, usize> = HashMap::new();
    let mut out = Resolution::default();
    for (_, peer, claim) in all {
        let clash = match claim {
            Claim::Mac(m) => macs.get(&m).copied(),
            Claim::Ip(p) => {
                let v4 = p.is_ipv4();
                let bits = p.bits();
                let containing = lens[usize::from(v4)]
                    .iter()
                    .filter(|&&l| l <= p.len())
                    .find_map(|&l| prefixes.get(&(v4, bits & mask(l), l)).copied());
                containing.or_else(|| {
                    prefixes
                        .range((v4, bits, 0)..=(v4, bits | !mask(p.len()), u8::MAX))
                        .next()
                        .map(|(_, &i)| i)
                })
            }
        };
        match clash {
            Some(i) => {
                let (owned_claim, owner) = out.owned[i];
                // A host's own overlapping claims are its own business.
                if owner != peer {
                    out.conflicts.push(Conflict {
                        refused_claim: claim,
                        refused: peer,
                        owned_claim,
                        owner,
                    });
                }
            }
            None => {
                let i = out.owned.len();
                out.owned.push((claim, peer));
                match claim {
                    Claim::Mac(m) => {
                        macs.insert(m, i);
                    }
                    Claim::Ip(p) => {
                        let v4 = p.is_ipv4();
                        prefixes.insert((v4, p.bits(), p.len()), i);
                        let l = &mut lens[usize::from(v4)];
                        if !l.contains(&p.len()) {
                            l.push(p.len());
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn id(b: u8) -> PeerId {
        PeerId([b; 32])
    }

    fn ip(s: &str, lamport: u64) -> AnnouncedClaim {
        AnnouncedClaim {
            lamport,
            claim: Claim::Ip(p(s)),
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(p("10.40.3.7/16").to_string(), "10.40.0.0/16");
        assert_eq!(p("10.40.3.7").len(), 32);
        assert!(p("10.40.0.0/16").contains(&p("10.40.3.7")));
        assert!(!p("10.40.3.7").contains(&p("10.40.0.0/16")));
        assert!(!p("10.41.0.0/16").overlaps(&p("10.40.0.0/16")));
        assert!(!p("::/0").contains(&p("10.0.0.1")));
        assert!(p("fd00::/8").contains_addr("fd12::1".parse().unwrap()));
        assert!(p("0.0.0.0/0").contains(&p("1.2.3.4")));
        assert_eq!("10.0.0.1/33".parse::<IpPrefix>(), Err(PrefixError::Length));
        assert_eq!("x/3".parse::<IpPrefix>(), Err(PrefixError::Address));
        let (claim, subnet) = interface_address("10.40.0.1/16").unwrap();
        assert_eq!(claim, Claim::Ip(p("10.40.0.1/32")));
        assert_eq!(subnet, p("10.40.0.0/16"));
    }

    #[test]
    fn first_claim_wins_and_ties_break_by_identity() {
        // The later claim loses whoever makes it.
        let r = resolve([(id(1), ip("10.0.0.1", 5)), (id(2), ip("10.0.0.1", 3))]);
        assert_eq!(r.owned, vec![(Claim::Ip(p("10.0.0.1")), id(2))]);
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.conflicts[0].refused, id(1));
        assert_eq!(r.conflicts[0].owner, id(2));
        // Simultaneous: the smaller identity wins, in any input order.
        let a = resolve([(id(9), ip("10.0.0.0/24", 4)), (id(7), ip("10.0.0.9", 4))]);
        let b = resolve([(id(7), ip("10.0.0.9", 4)), (id(9), ip("10.0.0.0/24", 4))]);
        assert_eq!(a.owned, b.owned);
        assert_eq!(a.owned[0].1, id(7));
        assert_eq!(a.conflicts[0].refused, id(9));
        // A prefix inside an owned one, and one containing it, both clash.
        let r = resolve([
            (id(1), ip("10.0.0.0/16", 1)),
            (id(2), ip("10.0.5.0/24", 2)),
            (id(3), ip("10.0.0.0/8", 3)),
            (id(4), ip("10.1.0.0/16", 4)),
        ]);
        let refused: Vec<_> = r.conflicts.iter().map(|c| c.refused).collect();
        assert_eq!(refused, vec![id(2), id(3)]);
        assert_eq!(r.owned.len(), 2);
        // MACs clash only when equal; a host's own overlaps are no conflict.
        let mac = |m: u8, l| AnnouncedClaim {
            lamport: l,
            claim: Claim::Mac(MacAddr([2, 0, 0, 0, 0, m])),
        };
        let r = resolve([
            (id(1), mac(1, 1)),
            (id(2), mac(1, 2)),
            (id(2), mac(2, 2)),
            (id(3), ip("fd00::/64", 1)),
            (id(3), ip("fd00::1", 1)),
        ]);
        assert_eq!(r.conflicts.len(), 1);
        assert_eq!(r.owned.len(), 3);
    }
}
