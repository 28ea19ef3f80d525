//! Admission of inbound control connections: who may make this host do
//! handshake work, and how much, as a sans-IO core.
//!
//! The expensive step of the control handshake (`Noise_XXpsk0`) on the
//! responder is writing message 2 (`e, ee, s, es`: a key generation and two
//! Diffie-Hellman operations). Message 1 (`psk, e` plus an encrypted
//! payload) costs the responder only hashing and one AEAD open, so every
//! check here runs between reading message 1 and writing message 2:
//!
//! 1. **Freshness.** The initiator puts a [`Timestamp`] (TAI64N, 12 bytes, as
//!    WireGuard does) in message 1's payload; `psk0` encrypts and
//!    authenticates it under the network secret, so only a holder of the
//!    secret can make one. A responder refuses a timestamp more than
//!    [`FRESHNESS_WINDOW`] away from its own clock (either way).
//! 2. **Replay.** A captured message 1 replayed within the window carries a
//!    timestamp that is still fresh; the responder remembers every
//!    ephemeral key it admitted until that ephemeral's timestamp leaves the
//!    window, and refuses it the second time. Together: a replayed message
//!    1 gets no byte back, ever (the connection is closed without an
//!    answer).
//!
//!    WireGuard also keeps the newest timestamp per initiator static key and
//!    requires it to grow. That check cannot run here before the DH work:
//!    in `XX` the initiator's static key travels encrypted in message 3,
//!    after message 2. After message 3 it would add nothing: a replayed
//!    message 1 can never produce a valid message 3 (that needs the
//!    ephemeral private key). The window plus the ephemeral memory is what
//!    refuses replays before any work, and it needs no per-peer state;
//!    the price is that hosts' clocks must agree within the window (NTP).
//! 3. **Rate.** A token bucket per source address ([`HANDSHAKES_PER_SECOND`]
//!    with a burst of [`HANDSHAKE_BURST`], WireGuard's kernel numbers) is
//!    charged only by a message 1 that passed the checks above, i.e. by
//!    every message 2 this host is about to compute. While a source's
//!    bucket is empty its new connections are refused at accept, before
//!    a handshake state is built or a byte read: under a flood that is
//!    where the work goes (see perf/handshake-flood). IPv6 sources are
//!    bucketed by /64, as WireGuard does, since one host owns a whole /64.
//! 4. **Totals.** Connections still in their handshake are bounded per
//!    source ([`MAX_PENDING_PER_SOURCE`]) and in total
//!    ([`MAX_PENDING_TOTAL`]); authenticated connections are bounded by
//!    [`max_authenticated`].
//!
//! # Why no cookie
//!
//! WireGuard runs over UDP, whose source address anyone can forge, so
//! under load its responder answers with a cookie and does DH work only for
//! an initiator that echoes it: proof that the initiator receives packets
//! at its claimed address. weft's control connection is TCP, and TCP's
//! three-way handshake *is* that stateless retry: the kernel hands the
//! connection to weft only after the initiator echoed the responder's
//! initial sequence number, i.e. proved it receives at its address, and
//! with SYN cookies (`net.ipv4.tcp_syncookies`, on by default, used once
//! the SYN queue overflows) the kernel keeps no state for unproven SYNs.
//! An application-level cookie would add a round trip and prove nothing
//! new; what TCP does not give — bounding how often a proven address may
//! make us work — is the token bucket and the totals above.
//!
//! Nothing here reads a clock: `now` (monotonic, for buckets) and `wall`
//! (time since the Unix epoch, for timestamps) are arguments.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How far a message-1 timestamp may be from the responder's clock, either
/// way. Short, because the replay memory must hold every ephemeral admitted
/// within twice this span; long enough for hosts whose clocks NTP keeps
/// within seconds of each other, with margin for a host that just booted.
pub const FRESHNESS_WINDOW: Duration = Duration::from_secs(30);

/// Message-2 computations one source address may cause per second, on
/// average (WireGuard's kernel ratelimiter: 20 initiations per second).
/// A legitimate host opens a control connection a few times per minute at
/// most (reconnect backoff starts at seconds), so even a NAT with dozens of
/// hosts behind it stays below this.
pub const HANDSHAKES_PER_SECOND: u32 = 20;

/// Message-2 computations one source may cause back to back before the
/// rate applies (WireGuard's kernel: a burst of 5).
pub const HANDSHAKE_BURST: u32 = 5;

/// Source addresses whose buckets are remembered. A full bucket is the
/// same as no bucket, so full ones are forgotten first; past this, the
/// least recently used one goes (that source gets a fresh burst: at most
/// [`HANDSHAKE_BURST`] extra handshakes). 4096 buckets are about 200 KiB.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// Ephemeral keys remembered against replay. Each stays for at most twice
/// [`FRESHNESS_WINDOW`]; 8192 covers over 130 admitted handshakes per
/// second sustained, far above what a mesh needs (a 1000-host mesh with
/// every link reconnecting once a minute makes about 17 per second per
/// host at worst). When full of unexpired keys, new handshakes are refused
/// ([`Refusal::Busy`]) rather than a key forgotten: forgetting one would
/// let its message be replayed.
pub const MAX_REMEMBERED_EPHEMERALS: usize = 8192;

/// Inbound connections from one source (IPv4 address, IPv6 /64) that may
/// be in their handshake at once. Two hosts open at most a couple of
/// connections to each other (one per direction, plus a retry after a
/// failure); 8 leaves room for a NAT with a few weft hosts behind it,
/// while 200 idle connections from one address take 8 slots, not all.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// Inbound connections in their handshake at once, from all sources. When
/// full, the oldest one that has not yet sent message 1 makes room (it is
/// doing nothing useful); if every one has, the new connection is refused.
pub const MAX_PENDING_TOTAL: usize = 64;

/// How long an inbound connection may take to deliver message 1 after the
/// TCP handshake. A weft initiator writes it at once (it usually arrives
/// with the final ACK), so this only has to absorb a retransmission or two
/// (Linux retransmits data after 200 ms to 1 s on a fresh connection).
/// The whole handshake still has `Timers::handshake_timeout` (10 s).
pub const FIRST_MESSAGE_DEADLINE: Duration = Duration::from_secs(2);

/// Bytes waiting to be written on one control connection. Before
/// authentication weft writes one handshake message (~100 bytes); after
/// it, the largest burst is a gossip push of every record a peer lacks,
/// in messages of at most 60 KB (`wire::gossip::MAX_MESSAGE_LEN`), one
/// record per peer: about 3 KB per peer with 64 neighbours, base64 in
/// JSON, i.e. ~3.5 MiB for 1000 peers. 8 MiB is twice that; a peer that
/// lets more pile up is not reading, and its connection is closed.
pub const MAX_CONTROL_BACKLOG: usize = 8 << 20;

/// Extra authenticated connections allowed above the mesh's own cap
/// (`2 * connection_limit`, where the node sheds connections): room for a
/// reconnecting peer whose old connection is not yet known to be dead and
/// for simultaneous connections in both directions before one is closed
/// as a duplicate.
pub const AUTHENTICATED_SLACK: usize = 8;

/// The most authenticated control connections this host keeps, for a mesh
/// `connection_limit`: the node sheds connections above twice the limit, so
/// a handshake beyond that plus [`AUTHENTICATED_SLACK`] would only be shed
/// again; it is refused before the DH work instead.
pub fn max_authenticated(connection_limit: usize) -> usize {
    connection_limit
        .saturating_mul(2)
        .saturating_add(AUTHENTICATED_SLACK)
}

/// A TAI64N timestamp (12 bytes: seconds since 1970 plus 2^62, big-endian,
/// then nanoseconds, big-endian), as WireGuard puts in its initiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp([u8; 12]);

/// Length of an encoded [`Timestamp`].
pub const TIMESTAMP_LEN: usize = 12;

const TAI64_EPOCH: u64 = 1 << 62;

impl Timestamp {
    /// The timestamp of `wall`, a time since the Unix epoch.
    pub fn from_wall(wall: Duration) -> Timestamp {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&(TAI64_EPOCH + wall.as_secs()).to_be_bytes());
        b[8..].copy_from_slice(&wall.subsec_nanos().to_be_bytes());
        Timestamp(b)
    }

    /// Parses a message-1 payload: exactly [`TIMESTAMP_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Option<Timestamp> {
        let b: [u8; 12] = bytes.try_into().ok()?;
        Some(Timestamp(b))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }

    /// The time since the Unix epoch this stands for, if it is a valid
    /// TAI64N label at or after 1970 with nanoseconds below 10^9.
    pub fn to_wall(&self) -> Option<Duration> {
        let secs = u64::from_be_bytes(self.0[..8].try_into().ok()?).checked_sub(TAI64_EPOCH)?;
        let nanos = u32::from_be_bytes(self.0[8..].try_into().ok()?);
        if secs >= TAI64_EPOCH || nanos >= 1_000_000_000 {
            return None;
        }
        Some(Duration::new(secs, nanos))
    }
}

/// Why an inbound control connection was refused or closed before it
/// authenticated. Each has its own drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already has [`MAX_PENDING_PER_SOURCE`] connections in
    /// their handshake.
    PerSource,
    /// [`MAX_PENDING_TOTAL`] connections are in their handshake and all
    /// sent message 1, or the replay memory is full.
    Busy,
    /// Its source exceeded its handshake token bucket.
    RateLimited,
    /// Message 1 had no timestamp, or one outside [`FRESHNESS_WINDOW`].
    Stale,
    /// Message 1 carried an ephemeral key already seen: a replay.
    Replayed,
    /// This host already keeps [`max_authenticated`] connections.
    PeerLimit,
    /// No message 1 within [`FIRST_MESSAGE_DEADLINE`].
    Slow,
    /// More than [`MAX_CONTROL_BACKLOG`] bytes waited to be written.
    Backlog,
}

impl Refusal {
    /// Why, for logs.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::PerSource => "too many handshakes in progress from this address",
            Refusal::Busy => "too many handshakes in progress",
            Refusal::RateLimited => "handshake rate limit for this address exceeded",
            Refusal::Stale => "first handshake message without a fresh timestamp (replayed, or the clocks differ by more than 30 s: run NTP on both hosts)",
            Refusal::Replayed => "first handshake message replayed",
            Refusal::PeerLimit => "connection limit reached",
            Refusal::Slow => "no first handshake message in time",
            Refusal::Backlog => "the peer does not read what this host sends",
        }
    }
}

/// What to do with a newly accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionVerdict {
    /// Take it.
    Accept,
    /// Take it after closing the oldest pending connection that has not
    /// sent message 1 (counted as [`Refusal::Busy`]).
    AcceptEvictingIdle,
    /// Close it at once.
    Refuse(Refusal),
}

/// Decides on a new inbound connection from its source's and all pending
/// (not yet authenticated inbound) connections; `idle_pending`: whether one
/// of those has not sent message 1 yet (it can be evicted);
/// `source_exhausted`: [`Admission::source_exhausted`].
pub fn judge_connection(
    pending_from_source: usize,
    pending_total: usize,
    idle_pending: bool,
    source_exhausted: bool,
) -> ConnectionVerdict {
    if pending_from_source >= MAX_PENDING_PER_SOURCE {
        ConnectionVerdict::Refuse(Refusal::PerSource)
    } else if source_exhausted {
        ConnectionVerdict::Refuse(Refusal::RateLimited)
    } else if pending_total < MAX_PENDING_TOTAL {
        ConnectionVerdict::Accept
    } else if idle_pending {
        ConnectionVerdict::AcceptEvictingIdle
    } else {
        ConnectionVerdict::Refuse(Refusal::Busy)
    }
}

/// The key a source is limited by: an IPv4 address, or an IPv6 /64.
pub fn source_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in nanoseconds of refill: one token is `1 s / rate`.
    credit_nanos: u64,
    last: Instant,
}

const NANOS_PER_TOKEN: u64 = 1_000_000_000 / HANDSHAKES_PER_SECOND as u64;
const BURST_NANOS: u64 = NANOS_PER_TOKEN * HANDSHAKE_BURST as u64;

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        self.credit_nanos = self.credit_nanos.saturating_add(elapsed).min(BURST_NANOS);
        self.last = now;
    }

    fn is_full(&self, now: Instant) -> bool {
        let mut b = *self;
        b.refill(now);
        b.credit_nanos >= BURST_NANOS
    }
}

/// Per-source token buckets and the replay memory of one host.
#[derive(Debug, Default)]
pub struct Admission {
    buckets: HashMap<IpAddr, Bucket>,
    /// Ephemeral key of each admitted message 1 -> when its timestamp
    /// leaves the window (time since the Unix epoch).
    seen: HashMap<[u8; 32], Duration>,
}

impl Admission {
    /// An empty admission state.
    pub fn new() -> Admission {
        Admission::default()
    }

    /// Checks an authenticated message 1 from `source` before this host
    /// writes message 2; `ephemeral` is the initiator's ephemeral public
    /// key (message 1's first 32 bytes), `timestamp` its payload, and
    /// `authenticated` how many authenticated connections exist. On `Ok`
    /// the handshake is admitted (its bucket charged, its ephemeral
    /// remembered); on `Err` nothing must be sent.
    pub fn check_first_message(
        &mut self,
        source: IpAddr,
        ephemeral: &[u8; 32],
        timestamp: Option<Timestamp>,
        authenticated_limit_reached: bool,
        now: Instant,
        wall: Duration,
    ) -> Result<(), Refusal> {
        let sent = timestamp.and_then(|t| t.to_wall()).ok_or(Refusal::Stale)?;
        let skew = if sent > wall {
            sent - wall
        } else {
            wall - sent
        };
        if skew > FRESHNESS_WINDOW {
            return Err(Refusal::Stale);
        }
        match self.seen.get(ephemeral) {
            Some(&expiry) if expiry >= wall => return Err(Refusal::Replayed),
            _ => {}
        }
        if authenticated_limit_reached {
            return Err(Refusal::PeerLimit);
        }
        // The memory must have room before the bucket is charged.
        if self.seen.len() >= MAX_REMEMBERED_EPHEMERALS && !self.seen.contains_key(ephemeral) {
            self.seen.retain(|_, expiry| *expiry >= wall);
            if self.seen.len() >= MAX_REMEMBERED_EPHEMERALS {
                return Err(Refusal::Busy);
            }
        }
        self.take_token(source_key(source), now)?;
        // Kept until the timestamp can no longer pass the window check.
        self.seen.insert(*ephemeral, sent + FRESHNESS_WINDOW);
        Ok(())
    }

    /// Whether `source`'s bucket has no token now: any message 1 it sends
    /// would be refused, so its connection can be refused at accept,
    /// before this host even builds a handshake state for it (which costs
    /// a scalar multiplication in `snow`) or reads a byte. Does not charge.
    pub fn source_exhausted(&self, source: IpAddr, now: Instant) -> bool {
        self.buckets.get(&source_key(source)).is_some_and(|b| {
            let mut b = *b;
            b.refill(now);
            b.credit_nanos < NANOS_PER_TOKEN
        })
    }

    fn take_token(&mut self, key: IpAddr, now: Instant) -> Result<(), Refusal> {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED_SOURCES {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= MAX_TRACKED_SOURCES {
                if let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, b)| b.last)
                    .map(|(k, _)| *k)
                {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            credit_nanos: BURST_NANOS,
            last: now,
        });
        bucket.refill(now);
        if bucket.credit_nanos < NANOS_PER_TOKEN {
            return Err(Refusal::RateLimited);
        }
        bucket.credit_nanos -= NANOS_PER_TOKEN;
        Ok(())
    }

    /// Forgets expired ephemerals and full buckets (call now and then).
    pub fn prune(&mut self, now: Instant, wall: Duration) {
        self.seen.retain(|_, expiry| *expiry >= wall);
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    /// Sources with a bucket, for tests and status.
    pub fn tracked_sources(&self) -> usize {
        self.buckets.len()
    }

    /// Ephemerals remembered.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const WALL: Duration = Duration::from_secs(1_790_000_000);

    fn eph(n: u32) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[..4].copy_from_slice(&n.to_be_bytes());
        e
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
    }

    fn ts(wall: Duration) -> Option<Timestamp> {
        Some(Timestamp::from_wall(wall))
    }

    #[test]
    fn timestamp_round_trips_and_rejects_garbage() {
        let w = Duration::new(1_790_000_000, 123_456_789);
        let t = Timestamp::from_wall(w);
        assert_eq!(t.to_wall(), Some(w));
        assert_eq!(Timestamp::parse(t.as_bytes()), Some(t));
        assert_eq!(Timestamp::parse(&[0u8; 11]), None);
        assert_eq!(Timestamp::parse(&[0u8; 13]), None);
        assert_eq!(Timestamp::parse(&[]), None);
        // Before the TAI64 epoch offset, nanoseconds out of range, far future.
        assert_eq!(Timestamp([0u8; 12]).to_wall(), None);
        let mut b = *t.as_bytes();
        b[8..].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert_eq!(Timestamp(b).to_wall(), None);
        assert_eq!(Timestamp([0xff; 12]).to_wall(), None);
        // Order follows time.
        assert!(Timestamp::from_wall(w + Duration::from_nanos(1)) > t);
    }

    #[test]
    fn fresh_timestamps_pass_old_and_future_ones_do_not() {
        let mut a = Admission::new();
        let now = Instant::now();
        let w = FRESHNESS_WINDOW;
        for (n, sent, ok) in [
            (1, WALL, true),
            (2, WALL - w, true),
            (3, WALL + w, true),
            (4, WALL - w - Duration::from_millis(1), false),
            (5, WALL + w + Duration::from_millis(1), false),
            (6, Duration::ZERO, false),
        ] {
            let got = a.check_first_message(ip(n as u8), &eph(n), ts(sent), false, now, WALL);
            assert_eq!(got.is_ok(), ok, "timestamp {sent:?}: {got:?}");
            if !ok {
                assert_eq!(got, Err(Refusal::Stale));
            }
        }
        assert_eq!(
            a.check_first_message(ip(9), &eph(9), None, false, now, WALL),
            Err(Refusal::Stale)
        );
    }

    #[test]
    fn a_replayed_ephemeral_is_refused_while_its_timestamp_is_fresh() {
        let mut a = Admission::new();
        let now = Instant::now();
        let sent = ts(WALL);
        assert_eq!(
            a.check_first_message(ip(1), &eph(1), sent, false, now, WALL),
            Ok(())
        );
        // From another address, a second later: still refused.
        let later = WALL + Duration::from_secs(1);
        assert_eq!(
            a.check_first_message(ip(2), &eph(1), sent, false, now, later),
            Err(Refusal::Replayed)
        );
        // A replay does not charge the bucket of the address it comes from.
        for n in 0..HANDSHAKE_BURST {
            assert_eq!(
                a.check_first_message(ip(2), &eph(100 + n), ts(later), false, now, later),
                Ok(())
            );
        }
        // Once the timestamp left the window the memory may forget it: the
        // timestamp check refuses it from then on.
        let much_later = WALL + FRESHNESS_WINDOW + Duration::from_secs(1);
        a.prune(now, much_later);
        assert_eq!(
            a.check_first_message(ip(3), &eph(1), sent, false, now, much_later),
            Err(Refusal::Stale)
        );
        assert!(a.remembered() <= HANDSHAKE_BURST as usize);
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut a = Admission::new();
        let t0 = Instant::now();
        let mut n = 0;
        let mut try_at = |a: &mut Admission, at: Instant| {
            n += 1;
            a.check_first_message(ip(1), &eph(n), ts(WALL), false, at, WALL)
        };
        for _ in 0..HANDSHAKE_BURST {
            assert_eq!(try_at(&mut a, t0), Ok(()));
        }
        assert_eq!(try_at(&mut a, t0), Err(Refusal::RateLimited));
        assert!(a.source_exhausted(ip(1), t0));
        assert!(!a.source_exhausted(ip(2), t0), "no bucket yet: a full one");
        assert!(!a.source_exhausted(ip(1), t0 + Duration::from_millis(50)));
        // One token comes back every 50 ms.
        assert_eq!(
            try_at(&mut a, t0 + Duration::from_millis(49)),
            Err(Refusal::RateLimited)
        );
        assert_eq!(try_at(&mut a, t0 + Duration::from_millis(50)), Ok(()));
        assert_eq!(
            try_at(&mut a, t0 + Duration::from_millis(60)),
            Err(Refusal::RateLimited)
        );
        // A long pause refills to the burst, not beyond.
        let t1 = t0 + Duration::from_secs(60);
        for _ in 0..HANDSHAKE_BURST {
            assert_eq!(try_at(&mut a, t1), Ok(()));
        }
        assert_eq!(try_at(&mut a, t1), Err(Refusal::RateLimited));
        // Over one second from empty: 20 admitted.
        let ok = (1..=1000)
            .filter(|i| try_at(&mut a, t1 + Duration::from_millis(*i)).is_ok())
            .count();
        assert_eq!(ok, HANDSHAKES_PER_SECOND as usize);
        // Another address has its own bucket.
        assert_eq!(
            a.check_first_message(ip(2), &eph(9999), ts(WALL), false, t1, WALL),
            Ok(())
        );
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let a1: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
        let a2: IpAddr = "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap().into();
        let b: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(source_key(a1), source_key(a2));
        assert_ne!(source_key(a1), source_key(b));
        let mapped: IpAddr = "::ffff:198.18.0.1".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(source_key(mapped), ip(1));
        let mut adm = Admission::new();
        let now = Instant::now();
        for n in 0..HANDSHAKE_BURST {
            let src = if n % 2 == 0 { a1 } else { a2 };
            assert_eq!(
                adm.check_first_message(src, &eph(n), ts(WALL), false, now, WALL),
                Ok(())
            );
        }
        assert_eq!(
            adm.check_first_message(a2, &eph(50), ts(WALL), false, now, WALL),
            Err(Refusal::RateLimited)
        );
        assert_eq!(
            adm.check_first_message(b, &eph(51), ts(WALL), false, now, WALL),
            Ok(())
        );
    }

    #[test]
    fn bucket_map_is_bounded_and_evicts_full_then_oldest() {
        let mut a = Admission::new();
        let t0 = Instant::now();
        let src = |i: usize| IpAddr::V4(Ipv4Addr::from(0xc612_0000u32 + i as u32));
        // Fill the map with sources that each emptied their bucket.
        let mut e = 0;
        for i in 0..MAX_TRACKED_SOURCES {
            for _ in 0..HANDSHAKE_BURST {
                e += 1;
                let _ = a.check_first_message(src(i), &eph(e), ts(WALL), false, t0, WALL);
            }
            a.seen.clear(); // only the buckets are under test here
        }
        assert_eq!(a.tracked_sources(), MAX_TRACKED_SOURCES);
        // A new source while none is full: the least recently used goes.
        let t1 = t0 + Duration::from_millis(1);
        e += 1;
        assert_eq!(
            a.check_first_message(src(MAX_TRACKED_SOURCES), &eph(e), ts(WALL), false, t1, WALL),
            Ok(())
        );
        assert_eq!(a.tracked_sources(), MAX_TRACKED_SOURCES);
        // Once buckets refilled, they are forgotten in bulk.
        let t2 = t0 + Duration::from_secs(1);
        e += 1;
        assert_eq!(
            a.check_first_message(
                src(MAX_TRACKED_SOURCES + 1),
                &eph(e),
                ts(WALL),
                false,
                t2,
                WALL
            ),
            Ok(())
        );
        assert!(a.tracked_sources() <= 2, "{}", a.tracked_sources());
    }

    #[test]
    fn replay_memory_is_bounded_and_refuses_rather_than_forgets() {
        let mut a = Admission::new();
        let mut now = Instant::now();
        for n in 0..MAX_REMEMBERED_EPHEMERALS as u32 {
            // A fresh source every burst, so buckets never refuse.
            let src = IpAddr::V4(Ipv4Addr::from(0xc612_0000u32 + n / HANDSHAKE_BURST));
            now += Duration::from_micros(1);
            assert_eq!(
                a.check_first_message(src, &eph(n), ts(WALL), false, now, WALL),
                Ok(())
            );
        }
        assert_eq!(a.remembered(), MAX_REMEMBERED_EPHEMERALS);
        let other = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(
            a.check_first_message(other, &eph(u32::MAX), ts(WALL), false, now, WALL),
            Err(Refusal::Busy)
        );
        // Replays of remembered keys are still recognised as replays.
        assert_eq!(
            a.check_first_message(other, &eph(7), ts(WALL), false, now, WALL),
            Err(Refusal::Replayed)
        );
        // Once they expire there is room again.
        let later = WALL + FRESHNESS_WINDOW + Duration::from_secs(1);
        assert_eq!(
            a.check_first_message(other, &eph(u32::MAX), ts(later), false, now, later),
            Ok(())
        );
        assert_eq!(a.remembered(), 1);
    }

    #[test]
    fn peer_limit_is_checked_before_the_bucket() {
        let mut a = Admission::new();
        let now = Instant::now();
        for n in 0..20 {
            assert_eq!(
                a.check_first_message(ip(1), &eph(n), ts(WALL), true, now, WALL),
                Err(Refusal::PeerLimit)
            );
        }
        assert_eq!(
            a.check_first_message(ip(1), &eph(99), ts(WALL), false, now, WALL),
            Ok(())
        );
        assert_eq!(max_authenticated(64), 136);
    }

    #[test]
    fn connection_verdicts() {
        use ConnectionVerdict::*;
        let per_source = MAX_PENDING_PER_SOURCE;
        assert_eq!(judge_connection(0, 0, false, false), Accept);
        assert_eq!(judge_connection(per_source - 1, 10, false, false), Accept);
        assert_eq!(
            judge_connection(per_source, 10, true, true),
            Refuse(Refusal::PerSource)
        );
        assert_eq!(
            judge_connection(1, 10, true, true),
            Refuse(Refusal::RateLimited)
        );
        assert_eq!(
            judge_connection(0, MAX_PENDING_TOTAL, true, false),
            AcceptEvictingIdle
        );
        assert_eq!(
            judge_connection(0, MAX_PENDING_TOTAL, false, false),
            Refuse(Refusal::Busy)
        );
    }
}
