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

/// Resolves a host name to one address of the wanted family (blocking:
/// call it off the event loop). The error says what failed.
pub fn resolve(host: &str, port: u16, ipv4: bool) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4() == ipv4)
        .copied()
        .ok_or_else(|| {
            format!(
                "{host} resolves to no {} address (found: {})",
                if ipv4 { "IPv4" } else { "IPv6" },
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
    fn resolves_localhost() {
        let a = resolve("localhost", 6783, true).unwrap();
        assert!(a.ip().is_loopback() && a.port() == 6783);
        assert!(resolve("no-such-host.invalid", 1, true).is_err());
    }
}
