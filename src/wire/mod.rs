//! Zero-copy views and builders over packet bytes.
//!
//! Every parser here is total: any byte string gives `Ok` or `Err`, never a
//! panic. Header layouts are named byte ranges in a `field` module per
//! protocol, in the style of smoltcp.

/// Errors from parsing packet bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header (or the length it declares).
    #[error("packet truncated")]
    Truncated,
    /// A field holds a value this parser does not accept.
    #[error("malformed packet")]
    Malformed,
}

/// Result of a wire parse.
pub type Result<T> = core::result::Result<T, WireError>;

/// A byte range inside a header.
pub type Field = core::ops::Range<usize>;

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod gossip;
pub mod heartbeat;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod overhead;
pub mod relay;
pub mod sleeve;
pub mod totality;
pub mod udp;
pub mod vxlan;

#[cfg(test)]
mod fuzz_tests;
