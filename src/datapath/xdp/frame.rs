//! Underlay frames for AF_XDP: weft's UDP payload wrapped in Ethernet +
//! IPv4/IPv6 + UDP for transmit, and the reverse on receive. The kernel's
//! UDP stack is bypassed, so these headers are weft's job: correct IPv4
//! header checksum, DF set (weft never lets its datagrams fragment), and
//! the UDP checksum filled in (mandatory for IPv6, RFC 8200; computed for
//! IPv4 too, so a receiver that verifies it accepts the datagram).

use std::net::{IpAddr, SocketAddr};

use crate::wire::ethernet::{self, EtherType, MacAddr};
use crate::wire::ipv4::{self, IpProtocol};
use crate::wire::{ipv6, udp};

/// Link and address data for one transmit: who sends to whom, via which MACs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// Our interface's MAC.
    pub src_mac: MacAddr,
    /// The next hop's MAC (the peer, or the gateway).
    pub dst_mac: MacAddr,
    /// Our underlay address and port.
    pub src: SocketAddr,
    /// The peer's underlay address and port.
    pub dst: SocketAddr,
}

/// Length of all headers in front of the UDP payload.
pub fn header_len(ipv6: bool) -> usize {
    ethernet::HEADER_LEN
        + if ipv6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        }
        + udp::HEADER_LEN
}

/// Writes a full frame carrying `payload` into `buf` and returns its length.
/// None if the families of the two addresses differ or `buf` is too small.
pub fn build(buf: &mut [u8], ends: &Endpoints, payload: &[u8]) -> Option<usize> {
    let v6 = match (ends.src.ip(), ends.dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        _ => return None,
    };
    let total = header_len(v6) + payload.len();
    let buf = buf.get_mut(..total)?;
    let eth = ethernet::Repr {
        src_addr: ends.src_mac,
        dst_addr: ends.dst_mac,
        ethertype: if v6 { EtherType::Ipv6 } else { EtherType::Ipv4 },
    };
    eth.emit(&mut ethernet::Frame::new_unchecked(&mut buf[..]));
    let ip_at = ethernet::HEADER_LEN;
    let udp_at = header_len(v6) - udp::HEADER_LEN;
    let udp_repr = udp::Repr {
        src_port: ends.src.port(),
        dst_port: ends.dst.port(),
        payload_len: payload.len(),
    };
    {
        let mut datagram = udp::Packet::new_unchecked(&mut buf[udp_at..]);
        udp_repr.emit(&mut datagram).ok()?;
        datagram.payload_mut().copy_from_slice(payload);
        match (ends.src.ip(), ends.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => datagram.fill_checksum_v4(&s, &d),
            (IpAddr::V6(s), IpAddr::V6(d)) => datagram.fill_checksum_v6(&s, &d),
            _ => return None,
        }
    }
    match (ends.src.ip(), ends.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let repr = ipv4::Repr {
                src_addr: s,
                dst_addr: d,
                protocol: IpProtocol::Udp,
                payload_len: udp_repr.buffer_len(),
                ttl: 64,
                dscp_ecn: 0,
                ident: 0,
                dont_frag: true,
                more_frags: false,
                frag_offset: 0,
            };
            repr.emit(&mut ipv4::Packet::new_unchecked(&mut buf[ip_at..]))
                .ok()?;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let repr = ipv6::Repr {
                src_addr: s,
                dst_addr: d,
                next_header: IpProtocol::Udp,
                payload_len: udp_repr.buffer_len(),
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            };
            repr.emit(&mut ipv6::Packet::new_unchecked(&mut buf[ip_at..]))
                .ok()?;
        }
        _ => return None,
    }
    Some(total)
}

/// A received datagram: where it came from, where it went, and the byte
/// range of its UDP payload inside the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Sender's underlay address and port.
    pub src: SocketAddr,
    /// Destination address and port (ours).
    pub dst: SocketAddr,
    /// The payload's range in the frame.
    pub payload: std::ops::Range<usize>,
}

/// Parses a frame the filter redirected. Total: any bytes give Some or
/// None. The IPv4 header checksum is verified (it is always computed in
/// software); the UDP checksum is not, because a veth peer's kernel leaves
/// it partial (checksum offload) and weft's AEAD tag authenticates the
/// payload anyway.
pub fn parse(frame: &[u8]) -> Option<Received> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    let ip_at = ethernet::HEADER_LEN;
    let (src_ip, dst_ip, udp_at, ip_end): (IpAddr, IpAddr, usize, usize) = match eth.ethertype() {
        EtherType::Ipv4 => {
            let packet = ipv4::Packet::new_checked(&frame[ip_at..]).ok()?;
            let repr = ipv4::Repr::parse(&packet).ok()?;
            if repr.protocol != IpProtocol::Udp || repr.more_frags || repr.frag_offset != 0 {
                return None;
            }
            (
                repr.src_addr.into(),
                repr.dst_addr.into(),
                ip_at + packet.header_len(),
                ip_at + usize::from(packet.total_len()),
            )
        }
        EtherType::Ipv6 => {
            let packet = ipv6::Packet::new_checked(&frame[ip_at..]).ok()?;
            let repr = ipv6::Repr::parse(&packet).ok()?;
            if repr.next_header != IpProtocol::Udp {
                return None;
            }
            let start = ip_at + ipv6::HEADER_LEN;
            (
                repr.src_addr.into(),
                repr.dst_addr.into(),
                start,
                start + repr.payload_len,
            )
        }
        _ => return None,
    };
    let ip_payload = frame.get(udp_at..ip_end)?;
    let datagram = udp::Packet::new_checked(ip_payload).ok()?;
    let repr = udp::Repr::parse(&datagram).ok()?;
    let start = udp_at + udp::HEADER_LEN;
    Some(Received {
        src: SocketAddr::new(src_ip, repr.src_port),
        dst: SocketAddr::new(dst_ip, repr.dst_port),
        payload: start..start + repr.payload_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(src: &str, dst: &str) -> Endpoints {
        Endpoints {
            src_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([0x02, 0, 0, 0, 0, 2]),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn ipv4_frame_round_trips_with_valid_checksums() {
        let e = ends("198.18.0.1:6783", "198.18.0.2:6783");
        let mut buf = [0u8; 2048];
        let n = build(&mut buf, &e, b"weft payload").unwrap();
        assert_eq!(n, 14 + 20 + 8 + 12);
        let frame = &buf[..n];
        let ip = ipv4::Packet::new_checked(&frame[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert!(ip.dont_frag());
        let datagram = udp::Packet::new_checked(ip.payload()).unwrap();
        assert!(datagram.verify_checksum_v4(&ip.src_addr(), &ip.dst_addr()));
        assert_ne!(datagram.checksum(), 0);
        let got = parse(frame).unwrap();
        assert_eq!(got.src, e.src);
        assert_eq!(got.dst, e.dst);
        assert_eq!(&frame[got.payload], b"weft payload");
        // The filter redirects what this builds.
        assert_eq!(
            super::super::filter::classify(frame, &[6783]),
            super::super::filter::Verdict::Redirect
        );
    }

    #[test]
    fn ipv6_frame_has_mandatory_udp_checksum() {
        let e = ends("[2001:db8::1]:6783", "[2001:db8::2]:7000");
        let mut buf = [0u8; 2048];
        let n = build(&mut buf, &e, &[0u8; 100]).unwrap();
        let frame = &buf[..n];
        let ip = ipv6::Packet::new_checked(&frame[14..]).unwrap();
        let datagram = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_ne!(datagram.checksum(), 0);
        assert!(datagram.verify_checksum_v6(&ip.src_addr(), &ip.dst_addr()));
        let got = parse(frame).unwrap();
        assert_eq!(got.dst, e.dst);
        assert_eq!(got.payload.len(), 100);
    }

    #[test]
    fn mixed_families_and_small_buffers_are_refused() {
        let mut buf = [0u8; 64];
        assert!(build(&mut buf, &ends("198.18.0.1:1", "[2001:db8::2]:2"), b"x").is_none());
        assert!(build(&mut buf, &ends("198.18.0.1:1", "198.18.0.2:2"), &[0u8; 40]).is_none());
    }

    #[test]
    fn parse_is_total_and_rejects_bad_ip_checksum() {
        let e = ends("198.18.0.1:6783", "198.18.0.2:6783");
        let mut buf = [0u8; 256];
        let n = build(&mut buf, &e, &[7u8; 50]).unwrap();
        for end in 0..n {
            assert!(parse(&buf[..end]).is_none() || end >= n, "prefix {end}");
        }
        // Ethernet padding after the datagram is ignored.
        let mut padded = buf[..n].to_vec();
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(parse(&padded).unwrap().payload.len(), 50);
        buf[14 + 8] ^= 1; // TTL changed, checksum now wrong
        assert!(parse(&buf[..n]).is_none());
    }
}
