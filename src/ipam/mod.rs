//! IP address management for pods: the `--ipalloc-range` is split among
//! hosts in chunks, each host hands out addresses from its own chunks.
//!
//! # Chunk ownership
//!
//! The range is cut into equal chunks ([`chunk_len`]: a /26 for ranges of
//! /22 and wider, smaller chunks for smaller ranges). A host owns a chunk by
//! announcing it as an ordinary IP prefix claim in its gossiped record, so
//! the mesh's claim resolution ([`crate::mesh::claims::resolve`]: Lamport
//! order, first live claim wins, the same answer on every host) settles
//! every race, conflicts are refused and shown by `weft status peers`, and
//! each peer's forwarding table routes a chunk to its owner.
//!
//! A host claims a chunk when it has none with a free address. It picks a
//! free one starting from an offset derived from its identity (two hosts
//! claiming at once rarely pick the same chunk) and allocates from it only
//! once the claim has stood for [`CLAIM_SETTLE`] (long enough for a
//! simultaneous claim of another host to arrive and win). A claim that is
//! refused is dropped unless pods already hold addresses in it (then the
//! conflict stays visible), and another chunk is picked.
//!
//! # Departed peers: reservations and reclaim
//!
//! Pods of a host that stopped may still run and hold their addresses, so
//! its chunks must not be reused at once. Each host that sees a peer leave
//! (its record no longer live) while it owned chunks keeps those chunks in
//! its *reservations*, with the peer's name and when it left, persisted
//! with the allocations. A reserved chunk is never picked. A reservation
//! ends when
//!
//! - the chunk has a live owner again (the peer came back and re-announced
//!   it, or another host took it over);
//! - `--ipalloc-reclaim-after` has passed since the peer left (the chunk is
//!   free for anyone);
//! - `weft rmpeer NAME` runs on this host: as in Weave Net, this host takes
//!   the departed peer's chunks over as its own claims (and allocates from
//!   them), which every other host then sees as live-owned and stops
//!   reserving.
//!
//! Each host gossips the chunks it keeps reserved in its record (claim
//! kinds 4 and 5 of [`crate::wire::gossip`]: reserved, never owned), and
//! never picks a chunk any live host reserves, so a host that joins after
//! the departure avoids those chunks too. A reservation is only dropped by
//! the hosts that hold it (by the rules above); if every host that saw the
//! departure leaves as well, the reservation goes with them.
//!
//! # The bridge's gateway
//!
//! In bridge mode pods route through their host's address on the bridge.
//! A host whose `--overlay` lies inside the range has one; any other host
//! (the usual case under Kubernetes: one DaemonSet cannot give every node
//! its own `--overlay`) takes one from IPAM, as `weave expose` did: the
//! first free address of its first usable chunk, or of its pod range
//! ([`Ipam::ensure_gateway`]). It is held like a pod's address (in use, so
//! never handed out and its chunk stays claimed; persisted, so a restart
//! puts the same address back on the bridge for the pods that route
//! through it), but no DEL or GC releases it.
//!
//! The core here is sans-IO: the driver feeds it the mesh's view and the
//! clock, writes [`Ipam::state`] to disk ([`store`]) after every change and
//! pushes [`Ipam::claims`] into the mesh node.

pub mod store;

use crate::cni::api::AttachmentKey;
use crate::mesh::claims::IpPrefix;
use crate::mesh::peer::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How long a new chunk claim must stand unrefused before addresses are
/// handed out from it.
pub const CLAIM_SETTLE: Duration = Duration::from_secs(2);

/// An address family IPAM allocates from: IPv4 (the default everywhere)
/// or IPv6. Inside the allocator an address is a number (`u128`, the
/// IPv4 value for IPv4), so one set of chunk arithmetic serves both.
pub trait Family:
    Copy
    + Ord
    + Hash
    + fmt::Display
    + fmt::Debug
    + FromStr
    + Into<IpAddr>
    + Serialize
    + for<'de> Deserialize<'de>
    + Send
    + Sync
    + 'static
{
    /// Bits in an address.
    const BITS: u8;
    /// `IPv4` or `IPv6`, for messages.
    const NAME: &'static str;
    /// A range to show in messages.
    const EXAMPLE: &'static str;
    /// Longest range prefix accepted: room for 16 chunks of 16 addresses
    /// in IPv6 (/120), room for one pod besides the range's ends in IPv4.
    const LONGEST_RANGE: u8;
    /// The state file in `--ipalloc-dir` ([`store`]): IPv6 has its own, so
    /// an IPv4 state of an earlier weft loads unchanged.
    const STORE_FILE: &'static str;
    /// The address as a number.
    fn to_num(self) -> u128;
    /// The address of a number (the low [`BITS`](Self::BITS) bits).
    fn from_num(n: u128) -> Self;
    /// `ip` if it is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
}

impl Family for Ipv4Addr {
    const BITS: u8 = 32;
    const NAME: &'static str = "IPv4";
    const EXAMPLE: &'static str = "10.32.0.0/12";
    const LONGEST_RANGE: u8 = 30;
    const STORE_FILE: &'static str = "allocations.json";
    fn to_num(self) -> u128 {
        u128::from(u32::from(self))
    }
    fn from_num(n: u128) -> Self {
        Ipv4Addr::from(n as u32)
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl Family for Ipv6Addr {
    const BITS: u8 = 128;
    const NAME: &'static str = "IPv6";
    const EXAMPLE: &'static str = "fd32::/64";
    const LONGEST_RANGE: u8 = 120;
    const STORE_FILE: &'static str = "allocations6.json";
    fn to_num(self) -> u128 {
        u128::from(self)
    }
    fn from_num(n: u128) -> Self {
        Ipv6Addr::from(n)
    }
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

/// The low `bits` bits set (`bits` up to 128).
fn low_mask(bits: u32) -> u128 {
    u128::MAX.checked_shr(128 - bits.min(128)).unwrap_or(0)
}

/// Where this host's pod addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodRange {
    /// Chunks of the range, claimed as needed (the default).
    Divided,
    /// One range of its own (`--ipalloc-pod-cidr`, or the node's
    /// `spec.podCIDR` under `--kube`), claimed as this host's one chunk.
    Fixed(IpPrefix),
    /// `--kube`: the API has not said yet whether the node has a podCIDR;
    /// nothing is handed out until it does.
    Awaiting,
}

/// An `--ipalloc-range` of one family (IPv4 unless said), checked: at
/// most /30 in IPv4 (a range needs room for its network and broadcast
/// address and at least one pod), at most /120 in IPv6 (16 chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocRange<A: Family = Ipv4Addr> {
    base: u128,
    len: u8,
    family: PhantomData<A>,
}

impl AllocRange<Ipv4Addr> {
    /// Parses `10.32.0.0/12`; errors name the value and say what is wanted.
    pub fn parse(text: &str) -> Result<AllocRange, String> {
        AllocRange::checked(text)
    }
}

impl AllocRange<Ipv6Addr> {
    /// Parses `fd32::/64`; errors name the value and say what is wanted.
    pub fn parse_v6(text: &str) -> Result<AllocRange<Ipv6Addr>, String> {
        AllocRange::checked(text)
    }
}

/// One `--ipalloc-range` of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyRange {
    /// An IPv4 range.
    V4(AllocRange<Ipv4Addr>),
    /// An IPv6 range.
    V6(AllocRange<Ipv6Addr>),
}

impl AnyRange {
    /// Whether a range as written is meant as IPv6 (its address holds a
    /// `:`), before it is parsed.
    pub fn is_ipv6_text(text: &str) -> bool {
        text.split('/').next().unwrap_or_default().contains(':')
    }

    /// Parses a range of either family (a `:` says IPv6).
    pub fn parse(text: &str) -> Result<AnyRange, String> {
        if AnyRange::is_ipv6_text(text) {
            AllocRange::parse_v6(text).map(AnyRange::V6)
        } else {
            AllocRange::parse(text).map(AnyRange::V4)
        }
    }
}

impl<A: Family> AllocRange<A> {
    /// Parses a range of family `A`; errors name the value and say what
    /// is wanted.
    pub fn checked(text: &str) -> Result<AllocRange<A>, String> {
        let (addr, len) = text.split_once('/').ok_or_else(|| {
            format!(
                "--ipalloc-range {text:?} is not a CIDR range; write it like {}",
                A::EXAMPLE
            )
        })?;
        let other = if A::BITS == 32 { "IPv6" } else { "IPv4" };
        let addr: A = addr.parse().map_err(|_| {
            format!(
                "--ipalloc-range {text:?}: {addr:?} is not an {} address (an {other} range goes in a --ipalloc-range of its own)",
                A::NAME
            )
        })?;
        let longest = A::LONGEST_RANGE;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| (1..=longest).contains(l))
            .ok_or_else(|| {
                if A::BITS == 128 {
                    format!("--ipalloc-range {text:?}: the prefix length must be 1-{longest} (an IPv6 range needs at least 256 addresses, 16 chunks; a /64 is usual)")
                } else {
                    format!("--ipalloc-range {text:?}: the prefix length must be 1-{longest}")
                }
            })?;
        let base = addr.to_num();
        let host = low_mask(u32::from(A::BITS - len));
        if base & host != 0 {
            return Err(format!(
                "--ipalloc-range {text:?} has host bits set; did you mean {}/{len}?",
                A::from_num(base & !host)
            ));
        }
        Ok(AllocRange {
            base,
            len,
            family: PhantomData,
        })
    }

    /// The range as a prefix.
    pub fn prefix(&self) -> IpPrefix {
        IpPrefix::new(A::from_num(self.base).into(), self.len).expect("length checked at parse")
    }

    /// The prefix length.
    #[allow(clippy::len_without_is_empty)] // a length in bits
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: A) -> bool {
        let (first, last) = self.ends();
        (first..=last).contains(&addr.to_num())
    }

    /// First and last address (network and broadcast, or the IPv6
    /// subnet-router anycast address and the last: never handed out).
    fn ends(&self) -> (u128, u128) {
        (
            self.base,
            self.base | low_mask(u32::from(A::BITS - self.len)),
        )
    }
}

impl<A: Family> fmt::Display for AllocRange<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", A::from_num(self.base), self.len)
    }
}

/// Parses `--ipalloc-pod-cidr`: a CIDR of `range`'s family inside
/// `range`; errors name the value (and the range) and say what is wanted.
pub fn parse_pod_cidr<A: Family>(text: &str, range: &AllocRange<A>) -> Result<IpPrefix, String> {
    let checked = AllocRange::<A>::checked(text)
        .map_err(|e| e.replace("--ipalloc-range", "--ipalloc-pod-cidr"))?;
    let prefix = checked.prefix();
    if !range.prefix().contains(&prefix) {
        return Err(format!(
            "--ipalloc-pod-cidr {text} does not lie inside --ipalloc-range {range}: this host's pod range must be part of the range every host shares"
        ));
    }
    Ok(prefix)
}

/// The chunk length for a range: chunks of 64 addresses (/26, or /122 in
/// IPv6) for ranges 16 times that size and wider, else the range cut in 16
/// (down to 4 addresses, /30 or /126), or the range itself when it is that
/// small.
///
/// IPv6 chunks hold 64 addresses like IPv4's: a host needs as many
/// addresses in either family (each pod takes one of each), the per-chunk
/// state and `weft status ipam` stay small, and a /64 range still has 2^58
/// chunks, so hosts (which start their search at an offset derived from
/// their identity) practically never race for the same one.
pub fn chunk_len<A: Family>(range: &AllocRange<A>) -> u8 {
    (range.len + 4)
        .clamp(A::BITS - 6, A::BITS - 2)
        .max(range.len)
}

/// One pod interface's address, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Allocation<A: Family = Ipv4Addr> {
    /// Which pod interface.
    #[serde(flatten)]
    pub key: AttachmentKey,
    /// The pod's network namespace as the runtime gave it.
    pub netns: String,
    /// The address.
    pub address: A,
}

/// A departed peer's chunk this host keeps reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The chunk.
    pub chunk: String,
    /// The departed owner's name.
    pub owner: String,
    /// The departed owner's identity (as `weft status` shows keys).
    pub owner_key: String,
    /// When this host saw it leave (Unix seconds).
    pub since: u64,
}

/// Everything IPAM persists (`allocations.json` in `--ipalloc-dir`, and
/// `allocations6.json` for an IPv6 range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct State<A: Family = Ipv4Addr> {
    /// The range the allocations were made from.
    pub range: String,
    /// The chunks this host claims.
    pub chunks: Vec<String>,
    /// Addresses given to pods.
    pub allocations: Vec<Allocation<A>>,
    /// Departed peers' chunks kept reserved.
    pub reservations: Vec<Reservation>,
    /// The bridge's own address, the pods' gateway (bridge mode without
    /// an `--overlay` inside the range; see [`Ipam::want_bridge_gateway`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<A>,
}

impl<A: Family> Default for State<A> {
    fn default() -> Self {
        State {
            range: String::new(),
            chunks: Vec::new(),
            allocations: Vec::new(),
            reservations: Vec::new(),
            gateway: None,
        }
    }
}

/// What the mesh says, fed to [`Ipam::update_view`].
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    /// Whether this host has announced its claims (synchronised with the
    /// mesh): before that, ownership is not known and nothing is claimed.
    pub announced: bool,
    /// Every accepted IP prefix claim of the allocator's family and its owner (this host included),
    /// from the claim resolution over live peers.
    pub owned: Vec<(IpPrefix, PeerId)>,
    /// This host's claims refused because another host owns them.
    pub refused: Vec<IpPrefix>,
    /// Peers known but not live, with their name and claims.
    pub departed: Vec<(PeerId, String, Vec<IpPrefix>)>,
    /// Names of live peers (for `rmpeer`).
    pub live_names: Vec<String>,
    /// Chunks live peers keep reserved for departed ones, and who keeps
    /// them (gossiped, so a host that joined later avoids them too).
    pub reserved_by_live: Vec<(IpPrefix, PeerId)>,
}

/// Why an address could not be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// A chunk claim is settling (or the mesh has not synchronised yet):
    /// ask again shortly.
    Pending(String),
    /// No free chunk is left anywhere in the range.
    Exhausted(String),
    /// Input refused (an empty id, say).
    Invalid(String),
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Pending(s) | AllocError::Exhausted(s) | AllocError::Invalid(s) => {
                f.write_str(s)
            }
        }
    }
}

/// A chunk this host claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnChunk {
    /// When this life of weft started claiming it (`None`: reloaded or
    /// taken over by rmpeer, usable as soon as the mesh confirms it).
    claimed_at: Option<Instant>,
    /// Whether the last view had this host as its owner.
    confirmed: bool,
}

/// How many addresses a host holds in a chunk, for `weft status ipam`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStatus {
    /// The chunk.
    pub chunk: String,
    /// Owner's name.
    pub owner: String,
    /// `owned`, `claiming` (settling), `refused` (another host owns it),
    /// or `reserved` (departed owner).
    pub state: String,
    /// Addresses in use (known for this host's chunks only).
    pub in_use: Option<u32>,
    /// Addresses the chunk can hand out (`u32::MAX`: that many or more,
    /// an IPv6 pod range).
    pub size: u32,
    /// Reserved chunks: seconds until they are reclaimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaim_in: Option<u64>,
}

/// `weft status ipam`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IpamStatus {
    /// The range.
    pub range: String,
    /// Chunk length.
    pub chunk_len: u8,
    /// This host's name.
    pub host: String,
    /// Addresses this host has given to pods.
    pub in_use: u32,
    /// Every chunk known, by owner.
    pub chunks: Vec<ChunkStatus>,
    /// This host's own pod range (`--ipalloc-pod-cidr` or the node's
    /// podCIDR), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// `--kube`: waiting for the API to give this node's podCIDR.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_pod_cidr: bool,
    /// The bridge's own address from this host's pod addresses, the pods'
    /// gateway (bridge mode without an `--overlay` inside the range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The IPv6 range's allocator, when a second `--ipalloc-range` gives
    /// one (the IPv4 range's status is the outer one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Box<IpamStatus>>,
}

impl IpamStatus {
    /// `weft status ipam` as text: one line per chunk.
    pub fn render_text(&self) -> String {
        let how = match (&self.pod_cidr, self.awaiting_pod_cidr) {
            (Some(p), _) => format!("this host hands out its pod range {p} only"),
            (None, true) => {
                "waiting for the Kubernetes API to give this node's podCIDR".to_string()
            }
            (None, false) => format!("in /{} chunks", self.chunk_len),
        };
        let gateway = self
            .gateway
            .as_ref()
            .map(|g| format!("; the bridge's address {g} is the pods' gateway"))
            .unwrap_or_default();
        let mut out = format!(
            "IPAM range {} {how}; {} address(es) in use on {}{gateway}\n",
            self.range, self.in_use, self.host
        );
        if self.chunks.is_empty() {
            out.push_str("  no chunk claimed yet (the first pod claims one)\n");
        }
        for c in &self.chunks {
            let size = size_text(c.size, &c.chunk);
            let use_text = match c.in_use {
                Some(n) => format!("{n}/{size} in use"),
                None => format!("{size} addresses"),
            };
            let reclaim = c
                .reclaim_in
                .map(|s| format!(", reclaimed in {s} s unless `weft rmpeer {}`", c.owner))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<18} {:<9} {:<20} {use_text}{reclaim}\n",
                c.chunk, c.state, c.owner
            ));
        }
        if let Some(v6) = &self.ipv6 {
            out.push_str(&v6.render_text());
        }
        out
    }
}

/// The allocator of one host for one family (IPv4 unless said). See the
/// module documentation.
pub struct Ipam<A: Family = Ipv4Addr> {
    range: AllocRange<A>,
    chunk_len: u8,
    me: PeerId,
    /// Addresses never handed out: the range's ends, the host's own.
    excluded: BTreeSet<u128>,
    chunks: BTreeMap<IpPrefix, OwnChunk>,
    allocations: BTreeMap<AttachmentKey, Allocation<A>>,
    used: BTreeSet<u128>,
    reservations: BTreeMap<IpPrefix, Reservation>,
    reclaim_after: Duration,
    view: MeshView,
    /// Owner names for status, from the last view.
    names: HashMap<PeerId, String>,
    /// Chunks of the range, or one range of this host's own.
    pod_range: PodRange,
    /// Whether this host's bridge takes an address of its own from IPAM
    /// as the pods' gateway ([`want_bridge_gateway`](Self::want_bridge_gateway)).
    want_gateway: bool,
    /// That address, once taken: in `used` (so its chunk stays claimed
    /// and it is never handed to a pod), not in `allocations` (no DEL or
    /// GC releases it).
    gateway: Option<A>,
}

impl<A: Family> Ipam<A> {
    /// An allocator for `range` on the host `me`; `own_address` (the
    /// host's overlay address, if any) is never handed out.
    pub fn new(
        range: AllocRange<A>,
        me: PeerId,
        own_address: Option<A>,
        reclaim_after: Duration,
    ) -> Ipam<A> {
        let (first, last) = range.ends();
        let mut excluded = BTreeSet::from([first, last]);
        if let Some(a) = own_address.filter(|a| range.contains(*a)) {
            excluded.insert(a.to_num());
        }
        Ipam {
            range,
            chunk_len: chunk_len(&range),
            me,
            excluded,
            chunks: BTreeMap::new(),
            allocations: BTreeMap::new(),
            used: BTreeSet::new(),
            reservations: BTreeMap::new(),
            reclaim_after,
            view: MeshView::default(),
            names: HashMap::new(),
            pod_range: PodRange::Divided,
            want_gateway: false,
            gateway: None,
        }
    }

    /// Bridge mode without an `--overlay` inside the range: the bridge
    /// takes the first free address of this host's first usable chunk (or
    /// pod range) as the pods' gateway, allocated like a pod's address and
    /// persisted, so it survives restarts and is never handed out twice.
    /// `want = false` (a host address in the range is the gateway now)
    /// releases one held from an earlier run and returns it.
    pub fn want_bridge_gateway(&mut self, want: bool) -> Option<A> {
        self.want_gateway = want;
        if want {
            return None;
        }
        let old = self.gateway.take()?;
        self.used.remove(&old.to_num());
        Some(old)
    }

    /// The bridge's address from IPAM, once taken.
    pub fn gateway(&self) -> Option<A> {
        self.gateway
    }

    /// Takes the bridge's gateway address if it is wanted and not held
    /// yet. `Ok(Some((address, new)))`; `Ok(None)` when none is wanted;
    /// `Err` as for [`allocate`](Self::allocate) (a chunk claim settling:
    /// ask again).
    pub fn ensure_gateway(&mut self, now: Instant) -> Result<Option<(A, bool)>, AllocError> {
        if !self.want_gateway {
            return Ok(None);
        }
        if let Some(g) = self.gateway {
            return Ok(Some((g, false)));
        }
        let a = self.take_free(now)?;
        self.gateway = Some(a);
        tracing::info!(
            "IPAM: {a} (in {}) is the bridge's own address, the pods' gateway",
            self.chunk_of(a)
        );
        Ok(Some((a, true)))
    }

    /// Where pod addresses come from now.
    pub fn pod_range(&self) -> PodRange {
        self.pod_range
    }

    /// `--kube`: hand nothing out until [`set_pod_cidr`](Self::set_pod_cidr)
    /// says whether the node has a podCIDR.
    pub fn await_pod_cidr(&mut self) {
        self.pod_range = PodRange::Awaiting;
    }

    /// Sets this host's own pod range (`None`: divide the range in chunks
    /// as usual). The range must lie inside `--ipalloc-range`; chunks
    /// claimed before that hold no address, or lie inside it, are dropped
    /// (pods keep the addresses they hold elsewhere). Returns what IPAM
    /// does now, for the log; `Err` names both ranges.
    pub fn set_pod_cidr(&mut self, cidr: Option<IpPrefix>) -> Result<String, String> {
        let Some(cidr) = cidr else {
            self.pod_range = PodRange::Divided;
            return Ok(format!(
                "no pod range of this host's own: IPAM divides --ipalloc-range {} among the hosts in /{} chunks",
                self.range, self.chunk_len
            ));
        };
        if cidr.is_ipv4() != (A::BITS == 32)
            || cidr.len() > A::LONGEST_RANGE
            || !self.range.prefix().contains(&cidr)
        {
            return Err(format!(
                "this host's pod range {cidr} does not lie inside the {} --ipalloc-range {} (or is longer than /{}): give every host the same --ipalloc-range that holds all nodes' {} pod CIDRs (the cluster's pod CIDR)",
                A::NAME,
                self.range,
                A::LONGEST_RANGE,
                A::NAME
            ));
        }
        let used = &self.used;
        self.chunks
            .retain(|c, _| !cidr.contains(c) && used.range(bounds::<A>(c)).next().is_some());
        self.chunks.entry(cidr).or_insert(OwnChunk {
            claimed_at: None,
            confirmed: false,
        });
        let r = bounds::<A>(&cidr);
        self.excluded.insert(*r.start());
        self.excluded.insert(*r.end());
        self.pod_range = PodRange::Fixed(cidr);
        Ok(format!(
            "IPAM hands out addresses from this host's pod range {cidr} only ({} addresses, inside --ipalloc-range {}); this host claims it in the mesh",
            count_text(self.capacity_wide(&cidr)),
            self.range
        ))
    }

    /// Whether a claim looks like a chunk of the range: inside it and
    /// wider than a host address (chunks, and hosts' pod ranges).
    fn chunk_like(&self, p: &IpPrefix) -> bool {
        p.len() <= A::BITS - 2 && self.range.prefix().contains(p)
    }

    /// Takes back a persisted state: its allocations, the chunks they lie
    /// in (claimed again) and its reservations. A state of another range
    /// with live allocations is refused, naming both ranges.
    pub fn restore(&mut self, state: State<A>) -> Result<(), String> {
        if state.range != self.range.to_string() && !state.allocations.is_empty() {
            return Err(format!(
                "--ipalloc-range {} differs from the range {} of the {} addresses held in the IPAM directory; pods still use them: keep the old range, or remove the directory once no pod uses it",
                self.range,
                state.range,
                state.allocations.len()
            ));
        }
        for a in state.allocations {
            if !self.range.contains(a.address) {
                continue;
            }
            let chunk = self.chunk_of(a.address);
            self.chunks.entry(chunk).or_insert(OwnChunk {
                claimed_at: None,
                confirmed: false,
            });
            self.used.insert(a.address.to_num());
            self.allocations.insert(a.key.clone(), a);
        }
        if state.range == self.range.to_string() {
            let chunks: Vec<IpPrefix> = state
                .chunks
                .iter()
                .filter_map(|c| self.parse_chunk(c))
                .collect();
            for c in chunks {
                self.chunks.entry(c).or_insert(OwnChunk {
                    claimed_at: None,
                    confirmed: false,
                });
            }
            for r in state.reservations {
                if let Some(c) = self.parse_chunk(&r.chunk) {
                    self.reservations.insert(c, r);
                }
            }
            // Pods of the earlier run route through it: keep it.
            if let Some(g) = state.gateway.filter(|g| self.range.contains(*g)) {
                if !self.used.contains(&g.to_num()) && !self.excluded.contains(&g.to_num()) {
                    let chunk = self.chunk_of(g);
                    self.chunks.entry(chunk).or_insert(OwnChunk {
                        claimed_at: None,
                        confirmed: false,
                    });
                    self.used.insert(g.to_num());
                    self.gateway = Some(g);
                }
            }
        }
        Ok(())
    }

    fn parse_chunk(&self, text: &str) -> Option<IpPrefix> {
        let p: IpPrefix = text.parse().ok()?;
        let own = match self.pod_range {
            PodRange::Fixed(cidr) => p == cidr,
            _ => false,
        };
        (own || p.len() == self.chunk_len && self.range.prefix().contains(&p)).then_some(p)
    }

    /// What to persist.
    pub fn state(&self) -> State<A> {
        State {
            range: self.range.to_string(),
            chunks: self.chunks.keys().map(|c| c.to_string()).collect(),
            allocations: self.allocations.values().cloned().collect(),
            reservations: self.reservations.values().cloned().collect(),
            gateway: self.gateway,
        }
    }

    /// The range.
    pub fn range(&self) -> AllocRange<A> {
        self.range
    }

    /// The chunks to announce as this host's claims.
    pub fn claims(&self) -> Vec<IpPrefix> {
        self.chunks.keys().copied().collect()
    }

    fn chunk_of(&self, addr: A) -> IpPrefix {
        if let PodRange::Fixed(cidr) = self.pod_range {
            if cidr.contains_addr(addr.into()) {
                return cidr;
            }
        }
        IpPrefix::new(addr.into(), self.chunk_len).expect("chunk length fits the family")
    }

    fn chunk_bounds(&self, chunk: &IpPrefix) -> (u128, u128) {
        let r = bounds::<A>(chunk);
        (*r.start(), *r.end())
    }

    /// Addresses a chunk can hand out (its size less excluded addresses;
    /// a wider one, such as an IPv6 pod range, counts as at most
    /// `u32::MAX`).
    fn capacity(&self, chunk: &IpPrefix) -> u32 {
        u32::try_from(self.capacity_wide(chunk)).unwrap_or(u32::MAX)
    }

    /// [`capacity`](Self::capacity) in full (an IPv6 /64 pod range holds
    /// 2^64 - 2).
    fn capacity_wide(&self, chunk: &IpPrefix) -> u128 {
        let (lo, hi) = self.chunk_bounds(chunk);
        let excluded = self.excluded.range(lo..=hi).count() as u128;
        let size = (hi - lo).saturating_add(1);
        size.saturating_sub(excluded)
    }

    fn in_use(&self, chunk: &IpPrefix) -> u32 {
        let (lo, hi) = self.chunk_bounds(chunk);
        self.used.range(lo..=hi).count() as u32
    }

    /// Takes in the mesh's view: confirms or drops claims, keeps departed
    /// peers' chunks reserved, expires reservations. Returns whether the
    /// state to persist or the claims changed.
    pub fn update_view(&mut self, view: MeshView, unix_now: u64) -> bool {
        let mut changed = false;
        let range = self.range.prefix();
        let owner_of: BTreeMap<IpPrefix, PeerId> = view
            .owned
            .iter()
            .filter(|(p, _)| range.overlaps(p))
            .copied()
            .collect();
        self.names.clear();
        for (id, name, _) in &view.departed {
            self.names.insert(*id, name.clone());
        }
        // Own chunks: confirmed when owned by us; refused ones go unless
        // pods hold addresses there.
        let refused: BTreeSet<IpPrefix> = view.refused.iter().copied().collect();
        let mut drop = Vec::new();
        let me = self.me;
        for (chunk, own) in self.chunks.iter_mut() {
            own.confirmed = view.announced && owner_of.get(chunk) == Some(&me);
            let fixed = self.pod_range == PodRange::Fixed(*chunk);
            if refused.contains(chunk)
                && !fixed
                && self.used.range(bounds::<A>(chunk)).next().is_none()
            {
                drop.push(*chunk);
            }
        }
        for chunk in drop {
            tracing::warn!(%chunk, "IPAM: another host owns chunk {chunk}; claiming another");
            self.chunks.remove(&chunk);
            changed = true;
        }
        // Departed peers' chunks: reserved while nobody live owns them.
        for (id, name, claims) in &view.departed {
            let chunk_like: Vec<IpPrefix> = claims
                .iter()
                .filter(|c| self.chunk_like(c))
                .copied()
                .collect();
            for chunk in &chunk_like {
                if owner_of.contains_key(chunk)
                    || self.reservations.contains_key(chunk)
                    || self.chunks.contains_key(chunk)
                {
                    continue;
                }
                tracing::info!(%chunk, peer = %name, "IPAM: {name} left; its chunk {chunk} stays reserved");
                self.reservations.insert(
                    *chunk,
                    Reservation {
                        chunk: chunk.to_string(),
                        owner: name.clone(),
                        owner_key: id.to_string(),
                        since: unix_now,
                    },
                );
                changed = true;
            }
        }
        let reclaim = self.reclaim_after.as_secs();
        let before = self.reservations.len();
        self.reservations.retain(|chunk, r| {
            let keep = !owner_of.contains_key(chunk) && unix_now < r.since.saturating_add(reclaim);
            if !keep && !owner_of.contains_key(chunk) {
                tracing::info!(%chunk, peer = %r.owner, "IPAM: reclaim timeout passed; chunk {chunk} of departed {} is free", r.owner);
            }
            keep
        });
        changed |= self.reservations.len() != before;
        self.view = view;
        changed
    }

    /// The address held for `key`, if any.
    pub fn lookup(&self, key: &AttachmentKey) -> Option<A> {
        self.allocations.get(key).map(|a| a.address)
    }

    /// Gives `key` an address: the one it holds, else a free one from a
    /// confirmed chunk. With none free it claims a new chunk (the caller
    /// persists and announces, then asks again once it settles).
    /// `Ok((address, new))`: `new` says the state changed.
    pub fn allocate(
        &mut self,
        key: &AttachmentKey,
        netns: &str,
        now: Instant,
    ) -> Result<(A, bool), AllocError> {
        check_key(key)?;
        if let Some(a) = self.allocations.get(key) {
            return Ok((a.address, false));
        }
        // The gateway first: it takes the first address of the chunk, and
        // a pod is never answered without the gateway it routes through.
        self.ensure_gateway(now)?;
        let address = self.take_free(now)?;
        self.allocations.insert(
            key.clone(),
            Allocation {
                key: key.clone(),
                netns: netns.to_string(),
                address,
            },
        );
        Ok((address, true))
    }

    /// A free address from a confirmed chunk, marked used. With none free
    /// it claims a new chunk (the caller persists and announces, then asks
    /// again once it settles).
    fn take_free(&mut self, now: Instant) -> Result<A, AllocError> {
        if self.pod_range == PodRange::Awaiting {
            return Err(AllocError::Pending(
                "waiting for the Kubernetes API to say whether this node has a podCIDR (see weft's log)".into(),
            ));
        }
        let fixed = match self.pod_range {
            PodRange::Fixed(cidr) => Some(cidr),
            _ => None,
        };
        let usable: Vec<IpPrefix> = self
            .chunks
            .iter()
            .filter(|(p, _)| fixed.map_or(true, |f| f == **p))
            .filter(|(_, c)| c.confirmed && c.claimed_at.map_or(true, |t| now >= t + CLAIM_SETTLE))
            .map(|(p, _)| *p)
            .collect();
        for chunk in usable {
            let (lo, hi) = self.chunk_bounds(&chunk);
            // The scan stops at the first free address, past the used and
            // excluded ones only (a chunk holds 64 addresses; a pod range
            // of its own, up to 2^64 in IPv6, as many as pods were given):
            // it is short.
            let free = (lo..=hi).find(|a| !self.used.contains(a) && !self.excluded.contains(a));
            if let Some(a) = free {
                self.used.insert(a);
                return Ok(A::from_num(a));
            }
        }
        if !self.view.announced {
            return Err(AllocError::Pending(
                "weft has not synchronised with the mesh yet".into(),
            ));
        }
        if let Some(cidr) = fixed {
            return Err(if self.view.refused.contains(&cidr) {
                AllocError::Pending(format!(
                    "another host claims this host's pod range {cidr}: `weft status peers` shows the conflict; give each host its own pod range"
                ))
            } else if !self.chunks.get(&cidr).is_some_and(|c| c.confirmed) {
                AllocError::Pending(format!(
                    "waiting for the mesh to confirm this host's claim on its pod range {cidr}"
                ))
            } else {
                AllocError::Exhausted(format!(
                    "this host's pod range {cidr} is full ({} addresses in use)",
                    self.in_use(&cidr)
                ))
            });
        }
        // A claim still settling, or one reloaded and not yet confirmed,
        // with room: wait for it rather than claim more.
        let settling = |p: &IpPrefix, c: &OwnChunk| {
            let unusable = !c.confirmed || c.claimed_at.is_some_and(|t| now < t + CLAIM_SETTLE);
            unusable && !self.view.refused.contains(p) && self.in_use(p) < self.capacity(p)
        };
        if let Some((chunk, _)) = self.chunks.iter().find(|(p, c)| settling(p, c)) {
            return Err(AllocError::Pending(format!(
                "waiting for the mesh to confirm this host's claim on chunk {chunk}"
            )));
        }
        match self.pick_chunk() {
            Some(chunk) => {
                tracing::info!(%chunk, "IPAM: claiming chunk {chunk} of {}", self.range);
                self.chunks.insert(
                    chunk,
                    OwnChunk {
                        claimed_at: Some(now),
                        confirmed: false,
                    },
                );
                Err(AllocError::Pending(format!(
                    "claiming chunk {chunk}; it is usable in {} s",
                    CLAIM_SETTLE.as_secs()
                )))
            }
            None => Err(AllocError::Exhausted(format!(
                "every chunk of --ipalloc-range {} is owned by a host or reserved for a departed one, and this host's chunks are full ({} addresses in use)",
                self.range,
                self.used.len()
            ))),
        }
    }

    /// A free chunk: inside the range, overlapping no owned claim, no
    /// reservation and no chunk of ours, scanned from an offset derived
    /// from this host's identity.
    fn pick_chunk(&self) -> Option<IpPrefix> {
        if self.pod_range != PodRange::Divided {
            return None;
        }
        let count: u128 = 1 << (self.chunk_len - self.range.len);
        let seed = self
            .me
            .0
            .iter()
            .take(8)
            .fold(0u128, |h, b| h << 8 | u128::from(*b));
        let start = seed % count;
        let step = 1u128 << (A::BITS - self.chunk_len);
        // An IPv6 range has up to 2^120 chunks: look at the next 2^20 from
        // the start (more than hosts could ever own), not all of them.
        let probes = if A::BITS == 32 {
            count
        } else {
            count.min(1 << 20)
        };
        (0..probes)
            .map(|i| (start + i) % count)
            .map(|i| {
                let a = self.range.base + i * step;
                self.chunk_of(A::from_num(a))
            })
            .find(|c| {
                self.capacity(c) > 0
                    && !self.chunks.contains_key(c)
                    && !self.reservations.contains_key(c)
                    && !self.view.owned.iter().any(|(p, _)| p.overlaps(c))
                    && !self.view.refused.contains(c)
                    && !self
                        .view
                        .reserved_by_live
                        .iter()
                        .any(|(p, _)| p.overlaps(c))
            })
    }

    /// The departed peers' chunks this host keeps reserved, to gossip.
    pub fn reserved_chunks(&self) -> Vec<IpPrefix> {
        self.reservations.keys().copied().collect()
    }

    /// Releases `key`'s address; whether anything was held.
    pub fn release(&mut self, key: &AttachmentKey) -> bool {
        match self.allocations.remove(key) {
            Some(a) => {
                self.used.remove(&a.address.to_num());
                true
            }
            None => false,
        }
    }

    /// Releases every allocation not in `valid`; how many were released.
    pub fn gc(&mut self, valid: &[AttachmentKey]) -> u32 {
        let valid: BTreeSet<&AttachmentKey> = valid.iter().collect();
        let gone: Vec<AttachmentKey> = self
            .allocations
            .keys()
            .filter(|k| !valid.contains(k))
            .cloned()
            .collect();
        for k in &gone {
            self.release(k);
        }
        gone.len() as u32
    }

    /// Whether IPAM can serve `add` (CNI STATUS): the mesh has synchronised
    /// and a chunk has room or one can be claimed.
    pub fn ready(&self) -> Result<(), String> {
        if !self.view.announced {
            return Err("weft has not synchronised with the mesh yet".into());
        }
        match self.pod_range {
            PodRange::Awaiting => {
                return Err(
                    "waiting for the Kubernetes API to say whether this node has a podCIDR".into(),
                )
            }
            PodRange::Fixed(cidr)
                if u128::from(self.in_use(&cidr)) >= self.capacity_wide(&cidr) =>
            {
                return Err(format!("this host's pod range {cidr} is full"))
            }
            PodRange::Fixed(_) => return Ok(()),
            PodRange::Divided => {}
        }
        let room = self
            .chunks
            .keys()
            .any(|c| self.in_use(c) < self.capacity(c));
        if room || self.pick_chunk().is_some() {
            Ok(())
        } else {
            Err(format!(
                "--ipalloc-range {} is exhausted: no free address in this host's chunks and no free chunk",
                self.range
            ))
        }
    }

    /// `weft rmpeer NAME`: takes over the reserved chunks of the departed
    /// peer `name` as this host's own. Returns the chunks taken.
    pub fn rmpeer(&mut self, name: &str) -> Result<Vec<IpPrefix>, String> {
        if self.view.live_names.iter().any(|n| n == name) {
            return Err(format!(
                "peer {name} is live: stop weft there first (rmpeer is for hosts that are gone)"
            ));
        }
        let taken: Vec<IpPrefix> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.owner == name)
            .map(|(c, _)| *c)
            .collect();
        if taken.is_empty() {
            let known: BTreeSet<&str> = self
                .reservations
                .values()
                .map(|r| r.owner.as_str())
                .collect();
            return Err(format!(
                "no departed peer named {name} holds reserved chunks here (departed peers with chunks: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.into_iter().collect::<Vec<_>>().join(", ")
                }
            ));
        }
        for c in &taken {
            self.reservations.remove(c);
            self.chunks.insert(
                *c,
                OwnChunk {
                    claimed_at: None,
                    confirmed: false,
                },
            );
        }
        Ok(taken)
    }

    /// `weft status ipam`.
    pub fn status(
        &self,
        host: &str,
        names: &dyn Fn(&PeerId) -> String,
        unix_now: u64,
    ) -> IpamStatus {
        let range = self.range.prefix();
        let gateway_in = |chunk: &IpPrefix| -> u32 {
            self.gateway
                .is_some_and(|g| chunk.contains_addr(g.into()))
                .into()
        };
        let mut chunks = Vec::new();
        for (chunk, own) in &self.chunks {
            let refused = self.view.refused.contains(chunk);
            chunks.push(ChunkStatus {
                chunk: chunk.to_string(),
                owner: host.to_string(),
                state: if refused {
                    "refused"
                } else if own.confirmed {
                    "owned"
                } else {
                    "claiming"
                }
                .into(),
                // The gateway is the bridge's, not a pod's: shown apart.
                in_use: Some(self.in_use(chunk) - gateway_in(chunk)),
                size: u32::try_from(self.capacity_wide(chunk) - u128::from(gateway_in(chunk)))
                    .unwrap_or(u32::MAX),
                reclaim_in: None,
            });
        }
        for (prefix, owner) in &self.view.owned {
            if *owner == self.me || !self.chunk_like(prefix) {
                continue;
            }
            chunks.push(ChunkStatus {
                chunk: prefix.to_string(),
                owner: names(owner),
                state: "owned".into(),
                in_use: None,
                size: self.capacity(prefix),
                reclaim_in: None,
            });
        }
        for (chunk, r) in &self.reservations {
            chunks.push(ChunkStatus {
                chunk: chunk.to_string(),
                owner: r.owner.clone(),
                state: "reserved".into(),
                in_use: None,
                size: self.capacity(chunk),
                reclaim_in: Some(
                    r.since
                        .saturating_add(self.reclaim_after.as_secs())
                        .saturating_sub(unix_now),
                ),
            });
        }
        for (chunk, keeper) in &self.view.reserved_by_live {
            if self.reservations.contains_key(chunk)
                || !range.contains(chunk)
                || chunks.iter().any(|c| c.chunk == chunk.to_string())
            {
                continue;
            }
            chunks.push(ChunkStatus {
                chunk: chunk.to_string(),
                owner: format!("departed peer (kept by {})", names(keeper)),
                state: "reserved".into(),
                in_use: None,
                size: self.capacity(chunk),
                reclaim_in: None,
            });
        }
        chunks.sort_by(|a, b| {
            let ka: Option<IpPrefix> = a.chunk.parse().ok();
            let kb: Option<IpPrefix> = b.chunk.parse().ok();
            ka.cmp(&kb)
        });
        IpamStatus {
            range: self.range.to_string(),
            chunk_len: self.chunk_len,
            host: host.to_string(),
            in_use: self.allocations.len() as u32,
            chunks,
            pod_cidr: match self.pod_range {
                PodRange::Fixed(cidr) => Some(cidr.to_string()),
                _ => None,
            },
            awaiting_pod_cidr: self.pod_range == PodRange::Awaiting,
            gateway: self.gateway.map(|g| g.to_string()),
            ipv6: None,
        }
    }
}

/// A number of addresses for people: exact below 2^32, else as the power
/// of two above it less the rest (`2^64 - 2` for an IPv6 /64 pod range).
fn count_text(n: u128) -> String {
    if n < 1 << 32 {
        return n.to_string();
    }
    match n.checked_next_power_of_two() {
        Some(p) if p == n => format!("2^{}", p.trailing_zeros()),
        Some(p) => format!("2^{} - {}", p.trailing_zeros(), p - n),
        None => format!("2^128 - {}", u128::MAX - n + 1),
    }
}

/// The size of a chunk in `weft status ipam`: its count, or for a range of
/// 2^32 addresses and more (IPv6 pod ranges, whose [`ChunkStatus::size`]
/// stops at `u32::MAX`) the power of two of its prefix.
fn size_text(size: u32, chunk: &str) -> String {
    match chunk.parse::<IpPrefix>() {
        Ok(p) if size == u32::MAX => {
            let bits = if p.is_ipv4() { 32 } else { 128 };
            format!("~2^{}", bits - p.len())
        }
        _ => size.to_string(),
    }
}

/// The first and last address of a chunk of family `A`, as numbers (the
/// driver passes each allocator prefixes of its own family only; one of
/// the other family or longer than an address gives its network address
/// alone).
fn bounds<A: Family>(chunk: &IpPrefix) -> std::ops::RangeInclusive<u128> {
    let first = match A::from_ip(chunk.addr()) {
        Some(a) => a.to_num(),
        None => return 0..=0,
    };
    let host_bits = u32::from(A::BITS.saturating_sub(chunk.len()));
    first..=(first | low_mask(host_bits))
}

/// Longest container id or interface name accepted.
const MAX_ID_LEN: usize = 1024;

fn check_key(key: &AttachmentKey) -> Result<(), AllocError> {
    if key.container_id.is_empty() || key.container_id.len() > MAX_ID_LEN {
        return Err(AllocError::Invalid(format!(
            "container_id {:?} must be 1-{MAX_ID_LEN} bytes",
            key.container_id
        )));
    }
    if key.ifname.is_empty() || key.ifname.len() > 15 {
        return Err(AllocError::Invalid(format!(
            "ifname {:?} must be 1-15 bytes (a Linux interface name)",
            key.ifname
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
