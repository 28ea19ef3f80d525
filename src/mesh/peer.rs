//! Who a peer is: its identity (the static public key) and its name.
//!
//! A peer is keyed by its identity everywhere in the mesh, never by a
//! socket or an address: addresses change across reconnects, the key does
//! not.

use crate::noise::keys::short_key;
use std::fmt;

/// Length of a peer identity on the wire.
pub const PEER_ID_LEN: usize = 32;

/// A peer's identity: its 32-byte static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub [u8; PEER_ID_LEN]);

impl PeerId {
    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for PeerId {
    /// The first characters of the base64 key, as `weft status` shows keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&short_key(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// Longest peer name kept, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A peer's name as it announced it, made safe to print: names come from
/// the network, so anything outside a host-name alphabet becomes `_` (no
/// control characters, escapes or bidi overrides reach a terminal or a
/// log line), and it is at most [`MAX_NAME_LEN`] bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct PeerName(String);

impl PeerName {
    /// Sanitises untrusted name bytes from a peer.
    pub fn from_untrusted(bytes: &[u8]) -> PeerName {
        let name = bytes
            .iter()
            .take(MAX_NAME_LEN)
            .map(|&b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'@') {
                    char::from(b)
                } else {
                    '_'
                }
            })
            .collect();
        PeerName(name)
    }

    /// The sanitised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Longest peer-sent text (a reason, an address) kept, in bytes.
pub const MAX_TEXT_LEN: usize = 256;

/// Peer-sent free text (a goodbye reason, an overlay address string) made
/// safe to print: printable ASCII and spaces stay, anything else (control
/// characters, escapes, bidi overrides) becomes `_`; at most
/// [`MAX_TEXT_LEN`] bytes.
pub fn untrusted_text(text: &str) -> String {
    text.bytes()
        .take(MAX_TEXT_LEN)
        .map(|b| {
            if b == b' ' || b.is_ascii_graphic() {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect()
}

/// A peer named for a person: name and identity, as events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerRef {
    /// The peer's identity.
    pub id: PeerId,
    /// Its (sanitised) name.
    pub name: PeerName,
}

impl fmt::Display for PeerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.id)
    }
}

/// The driver's handle of one control connection (its socket token, or
/// an index into its sessions): the mesh never looks inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// One connection in a peer's record: to whom, and whether data
/// (UDP heartbeats) flows over it or only the control connection is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    /// The peer at the other end.
    pub peer: PeerId,
    /// Whether the data path works: only such edges carry routes.
    pub data_path: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_sanitised_and_bounded() {
        assert_eq!(
            untrusted_text("closing: bye (see 10.40.0.1/16)"),
            "closing: bye (see 10.40.0.1/16)"
        );
        assert_eq!(untrusted_text("a\x1b[2Jb\nc\u{202e}d"), "a_[2Jb_c___d");
        assert_eq!(untrusted_text(&"x".repeat(1000)).len(), MAX_TEXT_LEN);
    }

    #[test]
    fn names_are_sanitised_and_bounded() {
        assert_eq!(
            PeerName::from_untrusted(b"host-1.example").as_str(),
            "host-1.example"
        );
        assert_eq!(
            PeerName::from_untrusted(b"a\x1b[31mb\n\xe2\x80\xaec").as_str(),
            "a__31mb____c"
        );
        assert_eq!(
            PeerName::from_untrusted(&[b'x'; 500]).as_str().len(),
            MAX_NAME_LEN
        );
    }
}
