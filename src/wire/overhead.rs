//! The exact per-datagram overhead of each weft framing, and the overlay
//! MTU that follows from an underlay MTU. One place for this math.

use super::{sleeve, vxlan};

/// IPv4 header without options.
pub const IPV4_HEADER: u16 = 20;
/// IPv6 fixed header.
pub const IPV6_HEADER: u16 = 40;
/// UDP header.
pub const UDP_HEADER: u16 = 8;
/// Ethernet header without VLAN tag (the inner frame in L2 modes).
pub const ETHERNET_HEADER: u16 = 14;

/// Which framing a datagram uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Encrypted sleeve: weft header, one record, AEAD tag.
    Sleeve,
    /// Standard VXLAN (RFC 7348) in plaintext.
    PlainVxlan,
}

/// Bytes added around an inner frame, counting the outer IP and UDP headers.
pub const fn datagram_overhead(framing: Framing, ipv6_underlay: bool) -> u16 {
    let ip = if ipv6_underlay {
        IPV6_HEADER
    } else {
        IPV4_HEADER
    };
    let inner = match framing {
        Framing::Sleeve => (sleeve::HEADER_LEN + sleeve::RECORD_OVERHEAD + sleeve::TAG_LEN) as u16,
        Framing::PlainVxlan => vxlan::HEADER_LEN as u16,
    };
    ip + UDP_HEADER + inner
}

/// The MTU the local device gets for a given underlay (path) MTU. `l2`
/// means the inner frame carries an Ethernet header (bridge mode), which
/// the device MTU does not count. `None` when the underlay is too small to
/// carry anything.
pub fn overlay_mtu(
    underlay_mtu: u16,
    framing: Framing,
    ipv6_underlay: bool,
    l2: bool,
) -> Option<u16> {
    let mut overhead = datagram_overhead(framing, ipv6_underlay);
    if l2 {
        overhead += ETHERNET_HEADER;
    }
    underlay_mtu.checked_sub(overhead).filter(|m| *m > 0)
}

/// Smallest overlay MTU weft will run with: IPv4 requires every link to
/// carry 576-byte datagrams (RFC 791); an IPv6 overlay needs 1280 (RFC 8200).
pub const MIN_OVERLAY_MTU_IPV4: u16 = 576;
/// See [`MIN_OVERLAY_MTU_IPV4`].
pub const MIN_OVERLAY_MTU_IPV6: u16 = 1280;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_numbers() {
        assert_eq!(datagram_overhead(Framing::Sleeve, false), 70);
        assert_eq!(datagram_overhead(Framing::Sleeve, true), 90);
        assert_eq!(overlay_mtu(1500, Framing::Sleeve, false, false), Some(1430));
        assert_eq!(overlay_mtu(9000, Framing::Sleeve, false, false), Some(8930));
        assert_eq!(overlay_mtu(1500, Framing::Sleeve, false, true), Some(1416));
        // Same as a Linux vxlan device on a 1500-byte underlay.
        assert_eq!(
            overlay_mtu(1500, Framing::PlainVxlan, false, true),
            Some(1450)
        );
        assert_eq!(overlay_mtu(60, Framing::Sleeve, false, false), None);
    }
}
