//! A user-given peer: an address, or a host name resolved when weft
//! dials it (and again when a dial fails, so a peer that moves to another
//! address is found again).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The default control/data port.
pub const DEFAULT_PORT: u16 = 6783;

/// A peer as the user wrote it (`--peer`, the config file, `weft connect`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerTarget {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A host name and port, resolved at dial time.
    Name {
        /// The host name (RFC 1123 syntax).
        host: String,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for PeerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerTarget::Addr(a) => write!(f, "{a}"),
            PeerTarget::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Why a peer text is refused.
pub fn not_an_address(text: &str) -> String {
    format!(
        "{text:?} is not an address; write it as IP, IP:PORT, HOST or HOST:PORT, e.g. 198.18.0.2:6783 or node-2.example:6783"
    )
}

impl PeerTarget {
    /// Parses `IP`, `IP:PORT`, `[IPv6]:PORT`, `HOST` or `HOST:PORT`; the
    /// port defaults to [`DEFAULT_PORT`]. The error names the text and
    /// says how to write it.
    pub fn parse(text: &str) -> Result<PeerTarget, String> {
        if let Ok(sa) = text.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(format!("{text:?}: port 0 is not a valid peer port"));
            }
            return Ok(PeerTarget::Addr(sa));
        }
        if let Ok(ip) = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(PeerTarget::Addr(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(0) => return Err(format!("{text:?}: port 0 is not a valid peer port")),
                Ok(p) => (h, p),
                Err(_) => return Err(not_an_address(text)),
            },
            None => (text, DEFAULT_PORT),
        };
        if !is_host_name(host) {
            return Err(not_an_address(text));
        }
        Ok(PeerTarget::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The address, when it is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            PeerTarget::Addr(a) => Some(*a),
            PeerTarget::Name { .. } => None,
        }
    }
}

/// RFC 1123 host name syntax: dot-separated labels of letters, digits and
/// hyphens (not at a label's ends), 1-63 bytes each, 253 in all, and not
/// all digits (that would be a malformed IPv4 address).
fn is_host_name(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && !text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The address families a peer's host name may resolve to: those the
/// listening socket can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// An IPv4 listener: IPv4 addresses only.
    V4,
    /// An IPv6 listener on a given address: IPv6 addresses only.
    V6,
    /// A dual-stack listener (`[::]`): either, in the resolver's order
    /// (getaddrinfo sorts by RFC 6724).
    Either,
}

impl Family {
    /// The families a socket listening on `listen` reaches: `[::]` is
    /// dual-stack, any other IPv6 address IPv6 only.
    pub fn of_listener(listen: SocketAddr) -> Family {
        match listen {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(a) if a.ip().is_unspecified() => Family::Either,
            SocketAddr::V6(_) => Family::V6,
        }
    }

    fn admits(self, addr: &SocketAddr) -> bool {
        match self {
            Family::V4 => addr.is_ipv4(),
            Family::V6 => addr.is_ipv6(),
            Family::Either => true,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
            Family::Either => "IPv4 or IPv6",
        })
    }
}

/// Resolves a host name to one address of the wanted family (blocking:
/// call it off the event loop). The error says what failed.
pub fn resolve(host: &str, port: u16, family: Family) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| family.admits(a))
        .copied()
        .ok_or_else(|| {
            format!(
                "{host} resolves to no {family} address (found: {})",
                if found.is_empty() {
                    "none".to_string()
                } else {
                    found
                        .iter()
                        .map(|a| a.ip().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_names() {
        let p = |t: &str| PeerTarget::parse(t);
        assert_eq!(
            p("198.18.0.2:7000").unwrap(),
            PeerTarget::Addr("198.18.0.2:7000".parse().unwrap())
        );
        assert_eq!(p("198.18.0.2").unwrap().addr().unwrap().port(), 6783);
        assert_eq!(p("[2001:2::2]:6783").unwrap().addr().unwrap().port(), 6783);
        assert_eq!(
            p("Node-2.Example:7000").unwrap(),
            PeerTarget::Name {
                host: "node-2.example".into(),
                port: 7000
            }
        );
        assert_eq!(p("node2").unwrap().to_string(), "node2:6783");
        for bad in [
            "",
            "a b",
            "-x",
            "x-.example",
            "host:port",
            "198.18.0.2:0",
            "node:0",
            "1.2.3",
            "a..b",
            "x:y:z",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
        assert!(p("a b").unwrap_err().contains("\"a b\" is not an address"));
    }

    #[test]
    fn the_listener_decides_the_families() {
        let f = |t: &str| Family::of_listener(t.parse().unwrap());
        assert_eq!(f("0.0.0.0:6783"), Family::V4);
        assert_eq!(f("198.18.0.1:6783"), Family::V4);
        assert_eq!(f("[::]:6783"), Family::Either);
        assert_eq!(f("[2001:2::1]:6783"), Family::V6);
    }

    #[test]
    fn resolves_localhost() {
        let a = resolve("localhost", 6783, Family::V4).unwrap();
        assert!(a.ip().is_loopback() && a.port() == 6783 && a.is_ipv4());
        assert!(resolve("no-such-host.invalid", 1, Family::V4).is_err());
        assert!(resolve("127.0.0.1", 1, Family::Either).unwrap().is_ipv4());
        let e = resolve("127.0.0.1", 1, Family::V6).unwrap_err();
        assert!(e.contains("no IPv6 address (found: 127.0.0.1)"), "{e}");
    }
}
