//! Next hops of the AF_XDP send path, resolved off that path.
//!
//! Sending through AF_XDP needs the next hop's MAC, which only the kernel's
//! route and neighbour tables know. Asking netlink on the send path could
//! block the worker (up to the socket's timeout), so the driver keeps a
//! [`NextHops`] cache (sans-IO: time in, decisions and lookup requests out)
//! and a [`Resolver`] thread that owns its own netlink socket, answers
//! lookups over a crossbeam channel and never touches a packet. Until an
//! answer arrives a destination goes through the kernel UDP socket, which
//! also makes the kernel resolve ARP/ND for it; the resolver then keeps
//! looking ([`Watch`]) and sends the MAC as soon as the kernel has it, so
//! the next datagram already takes the AF_XDP path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::sys::Netlink;
use crate::wire::ethernet::MacAddr;

/// How long a known next-hop MAC is used before it is looked up again (it
/// stays in use while the new lookup runs).
pub const NEIGHBOUR_RECHECK: Duration = Duration::from_secs(2);
/// How soon an unknown next hop is looked up again.
pub const NEIGHBOUR_RETRY: Duration = Duration::from_millis(20);
/// How often one datagram per peer goes through the kernel to keep its
/// neighbour entry confirmed (AF_XDP traffic is invisible to the kernel's
/// neighbour state machine).
pub const KERNEL_REFRESH: Duration = Duration::from_secs(10);
/// A lookup not answered in this time is asked again (its answer was lost,
/// or the request never made it into the channel).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Destinations kept; beyond this, those idle longest are forgotten.
const MAX_ENTRIES: usize = 4096;
/// A destination unused for this long may be forgotten when the cache is full.
const IDLE_FORGET: Duration = Duration::from_secs(60);
/// Lookups that may wait for the resolver.
const REQUEST_QUEUE: usize = 1024;
/// How long the resolver keeps looking for the MAC of a next hop the
/// kernel is resolving (ARP gives up after about 3 s).
pub const WATCH_FOR: Duration = Duration::from_secs(3);

/// What the resolver found out about one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The destination asked about.
    pub dst: IpAddr,
    /// Whether the kernel's route to it leaves through the XDP interface.
    pub on_interface: bool,
    /// The next hop's MAC (the gateway's, or the destination's own when
    /// on-link), when the kernel has a usable neighbour entry.
    pub mac: Option<MacAddr>,
    /// The route's preferred source address.
    pub src: Option<IpAddr>,
}

/// Where one datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through AF_XDP, framed with these addresses.
    Xdp {
        /// Next hop's MAC.
        mac: MacAddr,
        /// Source address.
        src: IpAddr,
    },
    /// Through the kernel UDP socket.
    Kernel,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The latest answer and when it came; None before the first.
    answer: Option<(Answer, Instant)>,
    /// When the lookup in flight was asked; None when none is.
    asked: Option<Instant>,
    /// When the next datagram goes through the kernel anyway.
    kernel_due: Instant,
    last_used: Instant,
}

/// The next-hop cache: decides per datagram, asks for lookups, takes
/// answers. No I/O.
#[derive(Debug)]
pub struct NextHops {
    /// A fixed source address (`--listen`), else the route's.
    source: Option<IpAddr>,
    entries: HashMap<IpAddr, Entry>,
    in_flight: usize,
}

impl NextHops {
    /// An empty cache; `source` overrides the routes' preferred sources.
    pub fn new(source: Option<IpAddr>) -> NextHops {
        NextHops {
            source,
            entries: HashMap::new(),
            in_flight: 0,
        }
    }

    /// Lookups asked and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Where a datagram to `dst` goes now. When the answer is missing or
    /// old, calls `ask(dst)` to request a lookup (at most one in flight per
    /// destination); `ask` says whether the request was taken.
    pub fn via(&mut self, dst: IpAddr, now: Instant, ask: impl FnOnce(IpAddr) -> bool) -> Via {
        if !self.entries.contains_key(&dst) && self.entries.len() >= MAX_ENTRIES {
            self.forget_idle(now);
        }
        let entry = self.entries.entry(dst).or_insert(Entry {
            answer: None,
            asked: None,
            kernel_due: now + KERNEL_REFRESH,
            last_used: now,
        });
        entry.last_used = now;
        let due = match entry.answer {
            None => true,
            Some((answer, at)) => {
                let age = now.saturating_duration_since(at);
                age >= if answer.mac.is_some() {
                    NEIGHBOUR_RECHECK
                } else {
                    NEIGHBOUR_RETRY
                }
            }
        };
        let waiting = entry
            .asked
            .is_some_and(|at| now.saturating_duration_since(at) < ASK_TIMEOUT);
        if due && !waiting {
            if entry.asked.is_none() {
                self.in_flight += 1;
            }
            entry.asked = Some(now);
            if !ask(dst) {
                entry.asked = None;
                self.in_flight -= 1;
            }
        }
        let Some((answer, _)) = entry.answer else {
            return Via::Kernel;
        };
        if !answer.on_interface {
            return Via::Kernel;
        }
        if now >= entry.kernel_due {
            entry.kernel_due = now + KERNEL_REFRESH;
            return Via::Kernel;
        }
        match (answer.mac, self.source.or(answer.src)) {
            (Some(mac), Some(src)) => Via::Xdp { mac, src },
            _ => Via::Kernel,
        }
    }

    /// Takes the resolver's answer for one destination (asked for, or
    /// sent by the resolver when a watched next hop resolved).
    pub fn answer(&mut self, answer: Answer, now: Instant) {
        let Some(entry) = self.entries.get_mut(&answer.dst) else {
            return; // forgotten meanwhile
        };
        if entry.asked.take().is_some() {
            self.in_flight -= 1;
        }
        entry.answer = Some((answer, now));
    }

    /// Forgets destinations idle for [`IDLE_FORGET`] (or, if none are, the
    /// longest idle one) to make room.
    fn forget_idle(&mut self, now: Instant) {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_used) < IDLE_FORGET);
        if self.entries.len() == before {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(ip, _)| *ip)
            {
                self.entries.remove(&oldest);
            }
        }
        self.in_flight = self.entries.values().filter(|e| e.asked.is_some()).count();
    }
}

/// The destinations whose next hop the kernel is still resolving, which
/// the resolver looks up again every [`NEIGHBOUR_RETRY`] for up to
/// [`WATCH_FOR`] until the MAC is there. No I/O.
#[derive(Debug, Default)]
pub struct Watch {
    /// Destination -> until when it is watched.
    until: HashMap<IpAddr, Instant>,
    next_sweep: Option<Instant>,
}

impl Watch {
    /// Takes a fresh answer: an unresolved next hop on the interface is
    /// watched (from `now`, if it was not already); anything else is not.
    /// Returns whether the answer should go to the driver: always for a
    /// requested lookup; for a watched one only once it resolved (or the
    /// route moved away).
    pub fn answered(&mut self, answer: &Answer, requested: bool, now: Instant) -> bool {
        let unresolved = answer.on_interface && answer.mac.is_none();
        if unresolved {
            self.until.entry(answer.dst).or_insert(now + WATCH_FOR);
            self.next_sweep.get_or_insert(now + NEIGHBOUR_RETRY);
        } else {
            self.until.remove(&answer.dst);
        }
        requested || !unresolved
    }

    /// How long the resolver may wait for a request before it must look
    /// again; None: as long as it likes.
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.next_sweep.map(|at| at.saturating_duration_since(now))
    }

    /// The destinations to look up again now (those whose time is up are
    /// dropped).
    pub fn due(&mut self, now: Instant) -> Vec<IpAddr> {
        match self.next_sweep {
            Some(at) if now >= at => {}
            _ => return Vec::new(),
        }
        self.until.retain(|_, until| now < *until);
        self.next_sweep = (!self.until.is_empty()).then_some(now + NEIGHBOUR_RETRY);
        self.until.keys().copied().collect()
    }
}

/// Looks up the route and neighbour for `dst` the way the kernel would
/// send to it from `ifindex`.
fn resolve(netlink: &mut Netlink, ifindex: u32, dst: IpAddr) -> Answer {
    let route = match netlink.route_to(dst) {
        Ok(route) => Some(route),
        Err(e) => {
            tracing::debug!(%dst, "AF_XDP next hop: {e}");
            None
        }
    };
    let on_interface = route.is_some_and(|r| r.oif == ifindex);
    let gateway = route.and_then(|r| r.gateway).unwrap_or(dst);
    let mac = if on_interface {
        netlink.neighbour(ifindex, gateway).unwrap_or_else(|e| {
            tracing::debug!(%dst, "AF_XDP next hop: {e}");
            None
        })
    } else {
        None
    };
    Answer {
        dst,
        on_interface,
        mac,
        src: route.and_then(|r| r.prefsrc),
    }
}

/// The thread that answers next-hop lookups with its own netlink socket.
/// Dropping it ends the thread (after the lookup it is doing, bounded by
/// the socket's timeout).
pub struct Resolver {
    requests: Option<Sender<IpAddr>>,
    answers: Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts the thread for the interface `ifindex` with `netlink`, a
    /// socket opened in the driver's network namespace.
    pub fn spawn(mut netlink: Netlink, ifindex: u32, interface: &str) -> std::io::Result<Resolver> {
        let (requests, asked) = crossbeam_channel::bounded::<IpAddr>(REQUEST_QUEUE);
        // One answer per request taken, and one request per destination in
        // flight: bounded by the cache, so unbounded here.
        let (answered, answers) = crossbeam_channel::unbounded();
        // A lookup stuck on a lost reply holds up the next ones no longer
        // than this.
        let _ = netlink.set_timeout(Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name(format!("weft-nexthop-{interface}"))
            .spawn(move || {
                let mut watch = Watch::default();
                loop {
                    let request = match watch.wait(Instant::now()) {
                        None => asked.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(wait) => asked.recv_timeout(wait),
                    };
                    let requested = match request {
                        Ok(dst) => vec![dst],
                        Err(RecvTimeoutError::Timeout) => Vec::new(),
                        Err(RecvTimeoutError::Disconnected) => break,
                    };
                    let now = Instant::now();
                    let watched = watch.due(now);
                    let lookups = requested
                        .iter()
                        .map(|dst| (*dst, true))
                        .chain(watched.into_iter().map(|dst| (dst, false)));
                    for (dst, requested) in lookups {
                        let answer = resolve(&mut netlink, ifindex, dst);
                        if watch.answered(&answer, requested, Instant::now())
                            && answered.send(answer).is_err()
                        {
                            return;
                        }
                    }
                }
            })?;
        Ok(Resolver {
            requests: Some(requests),
            answers,
            thread: Some(thread),
        })
    }

    /// Asks for a lookup of `dst`; false when the queue is full.
    pub fn ask(&self, dst: IpAddr) -> bool {
        match self.requests.as_ref().map(|r| r.try_send(dst)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// Answers that arrived, without waiting.
    pub fn answers(&self) -> crossbeam_channel::TryIter<'_, Answer> {
        self.answers.try_iter()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn answer(dst: &str, on_interface: bool, mac: Option<MacAddr>) -> Answer {
        Answer {
            dst: ip(dst),
            on_interface,
            mac,
            src: Some(ip("198.18.0.1")),
        }
    }

    /// Runs `via` and records what it asked.
    fn via(cache: &mut NextHops, dst: &str, now: Instant, asked: &mut Vec<IpAddr>) -> Via {
        cache.via(ip(dst), now, |d| {
            asked.push(d);
            true
        })
    }

    #[test]
    fn unknown_destinations_go_through_the_kernel_and_are_asked_once() {
        let t0 = Instant::now();
        let mut cache = NextHops::new(None);
        let mut asked = Vec::new();
        assert_eq!(via(&mut cache, "198.18.0.2", t0, &mut asked), Via::Kernel);
        assert_eq!(
            via(
                &mut cache,
                "198.18.0.2",
                t0 + Duration::from_millis(50),
                &mut asked
            ),
            Via::Kernel
        );
        assert_eq!(asked, [ip("198.18.0.2")]);
        assert_eq!(cache.in_flight(), 1);

        let t1 = t0 + Duration::from_millis(60);
        cache.answer(answer("198.18.0.2", true, Some(MAC)), t1);
        assert_eq!(cache.in_flight(), 0);
        let xdp = Via::Xdp {
            mac: MAC,
            src: ip("198.18.0.1"),
        };
        assert_eq!(via(&mut cache, "198.18.0.2", t1, &mut asked), xdp);
        assert_eq!(asked.len(), 1);
    }

    #[test]
    fn a_known_mac_is_used_while_it_is_checked_again() {
        let t0 = Instant::now();
        let mut cache = NextHops::new(None);
        let mut asked = Vec::new();
        via(&mut cache, "198.18.0.2", t0, &mut asked);
        cache.answer(answer("198.18.0.2", true, Some(MAC)), t0);
        let later = t0 + NEIGHBOUR_RECHECK;
        assert!(matches!(
            via(&mut cache, "198.18.0.2", later, &mut asked),
            Via::Xdp { .. }
        ));
        assert_eq!(asked.len(), 2, "asked again after {NEIGHBOUR_RECHECK:?}");
        // The neighbour went away: the next answer sends to the kernel.
        cache.answer(answer("198.18.0.2", true, None), later);
        assert_eq!(
            via(&mut cache, "198.18.0.2", later, &mut asked),
            Via::Kernel
        );
        // ... and an unresolved next hop is asked again soon.
        assert_eq!(asked.len(), 2);
        via(
            &mut cache,
            "198.18.0.2",
            later + NEIGHBOUR_RETRY,
            &mut asked,
        );
        assert_eq!(asked.len(), 3);
    }

    #[test]
    fn routes_through_another_interface_stay_with_the_kernel() {
        let t0 = Instant::now();
        let mut cache = NextHops::new(None);
        let mut asked = Vec::new();
        via(&mut cache, "203.0.113.5", t0, &mut asked);
        cache.answer(answer("203.0.113.5", false, Some(MAC)), t0);
        assert_eq!(via(&mut cache, "203.0.113.5", t0, &mut asked), Via::Kernel);
    }

    #[test]
    fn one_datagram_per_refresh_period_goes_through_the_kernel() {
        let t0 = Instant::now();
        let mut cache = NextHops::new(Some(ip("198.18.0.7")));
        let mut asked = Vec::new();
        via(&mut cache, "198.18.0.2", t0, &mut asked);
        cache.answer(answer("198.18.0.2", true, Some(MAC)), t0);
        // --listen's address wins over the route's preferred source.
        assert_eq!(
            via(&mut cache, "198.18.0.2", t0, &mut asked),
            Via::Xdp {
                mac: MAC,
                src: ip("198.18.0.7")
            }
        );
        let due = t0 + KERNEL_REFRESH;
        cache.answer(answer("198.18.0.2", true, Some(MAC)), due);
        assert_eq!(via(&mut cache, "198.18.0.2", due, &mut asked), Via::Kernel);
        assert!(matches!(
            via(&mut cache, "198.18.0.2", due, &mut asked),
            Via::Xdp { .. }
        ));
    }

    #[test]
    fn refused_and_lost_lookups_are_asked_again() {
        let t0 = Instant::now();
        let mut cache = NextHops::new(None);
        let mut tries = 0;
        cache.via(ip("198.18.0.2"), t0, |_| {
            tries += 1;
            false // queue full
        });
        assert_eq!(cache.in_flight(), 0);
        cache.via(ip("198.18.0.2"), t0, |_| {
            tries += 1;
            true
        });
        assert_eq!((tries, cache.in_flight()), (2, 1));
        // No answer: asked again after the timeout, still one in flight.
        cache.via(ip("198.18.0.2"), t0 + ASK_TIMEOUT, |_| {
            tries += 1;
            true
        });
        assert_eq!((tries, cache.in_flight()), (3, 1));
        // An answer for a destination never asked about is ignored.
        cache.answer(answer("198.18.0.99", true, Some(MAC)), t0);
        assert_eq!(cache.in_flight(), 1);
    }

    #[test]
    fn a_full_cache_forgets_idle_destinations() {
        let t0 = Instant::now();
        let mut cache = NextHops::new(None);
        for i in 0..MAX_ENTRIES as u32 {
            cache.via(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0, |_| true);
        }
        assert_eq!(cache.in_flight(), MAX_ENTRIES);
        let later = t0 + IDLE_FORGET;
        cache.via(ip("198.18.0.2"), later, |_| true);
        assert_eq!(cache.entries.len(), 1);
        assert_eq!(cache.in_flight(), 1);
        // Nothing idle: the longest unused one makes room.
        for i in 1..MAX_ENTRIES as u32 {
            cache.via(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), later, |_| {
                true
            });
        }
        cache.via(ip("198.18.0.3"), later, |_| true);
        assert_eq!(cache.entries.len(), MAX_ENTRIES);
    }

    #[test]
    fn unresolved_next_hops_are_watched_until_they_resolve_or_time_out() {
        let t0 = Instant::now();
        let mut watch = Watch::default();
        assert_eq!(watch.wait(t0), None);
        // Asked, not resolved yet: the driver hears it, and it is watched.
        assert!(watch.answered(&answer("198.18.0.2", true, None), true, t0));
        assert_eq!(watch.wait(t0), Some(NEIGHBOUR_RETRY));
        assert!(watch.due(t0).is_empty());
        let t1 = t0 + NEIGHBOUR_RETRY;
        assert_eq!(watch.due(t1), [ip("198.18.0.2")]);
        // Still unresolved: nothing to tell the driver.
        assert!(!watch.answered(&answer("198.18.0.2", true, None), false, t1));
        // Resolved: told, and no longer watched.
        assert!(watch.answered(&answer("198.18.0.2", true, Some(MAC)), false, t1));
        assert!(watch.due(t1 + NEIGHBOUR_RETRY).is_empty());
        assert_eq!(watch.wait(t1 + NEIGHBOUR_RETRY), None);
        // Another interface's route is never watched.
        assert!(watch.answered(&answer("203.0.113.5", false, None), true, t1));
        assert_eq!(watch.wait(t1), None);
        // A next hop that never resolves is given up after WATCH_FOR.
        watch.answered(&answer("198.18.0.3", true, None), true, t1);
        let mut t = t1;
        while !watch.due(t + NEIGHBOUR_RETRY).is_empty() {
            t += NEIGHBOUR_RETRY;
            assert!(t <= t1 + WATCH_FOR, "watched past {WATCH_FOR:?}");
        }
        assert_eq!(watch.wait(t), None);
    }

    #[test]
    fn the_resolver_answers_for_loopback() {
        let netlink = Netlink::open().unwrap();
        let resolver = Resolver::spawn(netlink, 1, "lo").unwrap();
        assert!(resolver.ask(ip("127.0.0.1")));
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            if let Some(a) = resolver.answers().next() {
                break a;
            }
            assert!(Instant::now() < deadline, "no answer");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(got.dst, ip("127.0.0.1"));
        assert!(got.on_interface, "{got:?}");
        // lo keeps no neighbour entries.
        assert_eq!(got.mac, None);
        drop(resolver);
    }
}
