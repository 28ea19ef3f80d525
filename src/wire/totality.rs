//! One place that runs every wire parser, accessor and builder on
//! arbitrary bytes and checks their invariants. The proptest in
//! `fuzz_tests` and the `fuzz/` crate both drive it, so a new parser is
//! added to both by adding it here.
//!
//! Every check panics on a broken invariant (that is how a fuzzer sees a
//! bug); on well-behaved code it never panics for any input.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::{
    arp, checksum, ethernet, gossip, heartbeat, icmpv4, icmpv6, ipv4, ipv6, overhead, relay,
    sleeve, udp, vxlan,
};

/// Runs every parser on `bytes` directly and as the payload of the
/// protocols that can carry it.
pub fn exercise_all(bytes: &[u8]) {
    check_checksum(bytes);
    exercise_ethernet(bytes);
    exercise_ipv4(bytes);
    exercise_ipv6(bytes);
    exercise_udp(bytes, None);
    exercise_icmpv4(bytes);
    exercise_icmpv6(bytes, &Ipv6Addr::LOCALHOST, &Ipv6Addr::UNSPECIFIED);
    exercise_arp(bytes);
    exercise_ipv6_extension_walk(bytes);
    exercise_error_builders(bytes);
    exercise_vxlan(bytes);
    exercise_sleeve(bytes);
    exercise_records(bytes);
    exercise_heartbeat(bytes);
    exercise_gossip(bytes);
    exercise_relay(bytes);
    exercise_overhead(bytes);
    exercise_cert(bytes);
}

/// The fast checksum must equal the plain RFC 1071 loop.
fn check_checksum(bytes: &[u8]) {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let high = u32::from(pair[0]) << 8;
        let low = pair.get(1).map_or(0, |&b| u32::from(b));
        sum += high | low;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(
        checksum::data(bytes),
        sum as u16,
        "fast checksum differs from RFC 1071 reference"
    );
}

/// Ethernet frame, then its payload by EtherType.
pub fn exercise_ethernet(bytes: &[u8]) {
    let Ok(frame) = ethernet::Frame::new_checked(bytes) else {
        return;
    };
    let dst = frame.dst_addr();
    let src = frame.src_addr();
    let _ = (
        dst.is_broadcast(),
        dst.is_multicast(),
        src.is_unicast(),
        src.is_local(),
    );
    let repr = ethernet::Repr::parse(&frame).expect("checked frame must parse");
    let mut header = [0u8; ethernet::HEADER_LEN];
    repr.emit(&mut ethernet::Frame::new_unchecked(&mut header[..]));
    assert_eq!(
        &header[..],
        &bytes[..ethernet::HEADER_LEN],
        "ethernet emit differs from input"
    );
    match frame.ethertype() {
        ethernet::EtherType::Ipv4 => exercise_ipv4(frame.payload()),
        ethernet::EtherType::Ipv6 => exercise_ipv6(frame.payload()),
        ethernet::EtherType::Arp => exercise_arp(frame.payload()),
        ethernet::EtherType::Unknown(_) => {}
    }
}

/// IPv4 packet, then UDP or ICMP inside.
pub fn exercise_ipv4(bytes: &[u8]) {
    let Ok(packet) = ipv4::Packet::new_checked(bytes) else {
        return;
    };
    let _ = (
        packet.version(),
        packet.dscp_ecn(),
        packet.ident(),
        packet.dont_frag(),
        packet.more_frags(),
        packet.frag_offset(),
        packet.ttl(),
        packet.checksum(),
        packet.options(),
    );
    assert!(packet.header_len() >= ipv4::HEADER_LEN);
    assert_eq!(
        packet.payload().len(),
        usize::from(packet.total_len()) - packet.header_len()
    );
    if let Ok(repr) = ipv4::Repr::parse(&packet) {
        let mut buffer = [0u8; ipv4::HEADER_LEN];
        let emitted = repr.emit(&mut ipv4::Packet::new_unchecked(&mut buffer[..]));
        if repr.payload_len + ipv4::HEADER_LEN <= usize::from(u16::MAX) {
            emitted.expect("emit of a parsed header must succeed");
            // The emitted header alone claims a payload it does not hold,
            // so re-read it unchecked: the fields must survive the trip.
            let again = ipv4::Packet::new_unchecked(&buffer[..]);
            assert!(again.verify_checksum(), "ipv4 emit wrote a bad checksum");
            assert_eq!(again.src_addr(), repr.src_addr);
            assert_eq!(again.dst_addr(), repr.dst_addr);
            assert_eq!(again.protocol(), repr.protocol);
            assert_eq!(
                usize::from(again.total_len()),
                ipv4::HEADER_LEN + repr.payload_len
            );
            assert_eq!(again.frag_offset(), repr.frag_offset);
        }
    }
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    match packet.protocol() {
        ipv4::IpProtocol::Udp => exercise_udp(packet.payload(), Some((src, dst))),
        ipv4::IpProtocol::Icmp => exercise_icmpv4(packet.payload()),
        _ => {}
    }
}

/// IPv6 packet, then the upper layer behind its extension headers.
pub fn exercise_ipv6(bytes: &[u8]) {
    let Ok(packet) = ipv6::Packet::new_checked(bytes) else {
        return;
    };
    let _ = (
        packet.traffic_class(),
        packet.flow_label(),
        packet.hop_limit(),
    );
    assert_eq!(packet.payload().len(), usize::from(packet.payload_len()));
    let repr = ipv6::Repr::parse(&packet).expect("checked packet must parse");
    let mut buffer = [0u8; ipv6::HEADER_LEN];
    repr.emit(&mut ipv6::Packet::new_unchecked(&mut buffer[..]))
        .expect("emit of a parsed header");
    assert_eq!(
        &buffer[..],
        &bytes[..ipv6::HEADER_LEN],
        "ipv6 emit differs from input"
    );
    let Ok(upper) = packet.upper_layer() else {
        return;
    };
    assert!(upper.offset <= packet.payload().len());
    let Some(upper_bytes) = packet.payload().get(upper.offset..) else {
        return;
    };
    let (src, dst) = (packet.src_addr(), packet.dst_addr());
    match upper.protocol {
        ipv6::IpProtocol::Icmpv6 => exercise_icmpv6(upper_bytes, &src, &dst),
        ipv6::IpProtocol::Udp => {
            if let Ok(datagram) = udp::Packet::new_checked(upper_bytes) {
                let _ = datagram.verify_checksum_v6(&src, &dst);
            }
        }
        _ => {}
    }
}

/// UDP datagram; with addresses, also its checksum.
pub fn exercise_udp(bytes: &[u8], addrs: Option<(Ipv4Addr, Ipv4Addr)>) {
    let Ok(packet) = udp::Packet::new_checked(bytes) else {
        return;
    };
    let _ = (packet.src_port(), packet.dst_port(), packet.checksum());
    assert_eq!(
        packet.payload().len() + udp::HEADER_LEN,
        usize::from(packet.len())
    );
    let v6 = (Ipv6Addr::LOCALHOST, Ipv6Addr::UNSPECIFIED);
    let _ = packet.verify_checksum_v6(&v6.0, &v6.1);
    let repr = udp::Repr::parse(&packet).expect("checked datagram must parse");
    assert_eq!(repr.buffer_len(), usize::from(packet.len()));
    // Rebuild the datagram and check the filled checksums verify.
    let mut copy = [0u8; 65535];
    let copy = &mut copy[..repr.buffer_len()];
    let mut rebuilt = udp::Packet::new_unchecked(&mut copy[..]);
    repr.emit(&mut rebuilt).expect("emit of a parsed header");
    rebuilt.payload_mut().copy_from_slice(packet.payload());
    let (src, dst) = addrs.unwrap_or((Ipv4Addr::LOCALHOST, Ipv4Addr::BROADCAST));
    rebuilt.fill_checksum_v4(&src, &dst);
    assert!(
        rebuilt.verify_checksum_v4(&src, &dst),
        "filled UDP/IPv4 checksum does not verify"
    );
    rebuilt.fill_checksum_v6(&v6.0, &v6.1);
    assert!(
        rebuilt.verify_checksum_v6(&v6.0, &v6.1),
        "filled UDP/IPv6 checksum does not verify"
    );
    if let Some((src, dst)) = addrs {
        let _ = packet.verify_checksum_v4(&src, &dst);
    }
}

/// ICMPv4 message: accessors, and parse/emit round trip.
pub fn exercise_icmpv4(bytes: &[u8]) {
    let Ok(packet) = icmpv4::Packet::new_checked(bytes) else {
        return;
    };
    let _ = (
        packet.msg_type().is_error(),
        packet.msg_code(),
        packet.checksum(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.next_hop_mtu(),
        packet.rest_of_header(),
        packet.data(),
    );
    let Ok(repr) = icmpv4::Repr::parse(&packet) else {
        return;
    };
    assert_eq!(repr.buffer_len(), bytes.len());
    let mut copy = [0u8; 65535];
    let copy = &mut copy[..bytes.len()];
    repr.emit(&mut icmpv4::Packet::new_unchecked(&mut copy[..]))
        .expect("emit into exact-size buffer");
    let again = icmpv4::Packet::new_checked(&copy[..]).expect("emitted message is checked");
    assert_eq!(
        icmpv4::Repr::parse(&again),
        Ok(repr),
        "icmpv4 round trip changed the message"
    );
}

/// ICMPv6 message for a given address pair.
pub fn exercise_icmpv6(bytes: &[u8], src: &Ipv6Addr, dst: &Ipv6Addr) {
    let Ok(packet) = icmpv6::Packet::new_checked(bytes) else {
        return;
    };
    let _ = (
        packet.msg_type().is_error(),
        packet.msg_code(),
        packet.checksum(),
        packet.echo_ident(),
        packet.echo_seq_no(),
        packet.mtu(),
        packet.rest_of_header(),
        packet.data(),
    );
    let Ok(repr) = icmpv6::Repr::parse(src, dst, &packet) else {
        return;
    };
    assert_eq!(repr.buffer_len(), bytes.len());
    let mut copy = [0u8; 65535];
    let copy = &mut copy[..bytes.len()];
    repr.emit(src, dst, &mut icmpv6::Packet::new_unchecked(&mut copy[..]))
        .expect("emit into exact-size buffer");
    let again = icmpv6::Packet::new_checked(&copy[..]).expect("emitted message is checked");
    assert_eq!(
        icmpv6::Repr::parse(src, dst, &again),
        Ok(repr),
        "icmpv6 round trip changed the message"
    );
}

/// ARP packet: parse/emit round trip and the reply builder.
pub fn exercise_arp(bytes: &[u8]) {
    let Ok(packet) = arp::Packet::new_checked(bytes) else {
        return;
    };
    let repr = arp::Repr::parse(&packet).expect("checked packet must parse");
    let mut copy = [0u8; arp::PACKET_LEN];
    repr.emit(&mut arp::Packet::new_unchecked(&mut copy[..]))
        .expect("emit into exact-size buffer");
    assert_eq!(
        &copy[..],
        &bytes[..arp::PACKET_LEN],
        "arp emit differs from input"
    );
    if let Some(reply) = repr.reply(ethernet::MacAddr([2, 0, 0, 0, 0, 1])) {
        assert_eq!(reply.target_protocol_addr, repr.source_protocol_addr);
    }
    let _ = repr.is_gratuitous();
}

/// The extension-header walk from every possible first header.
pub fn exercise_ipv6_extension_walk(bytes: &[u8]) {
    let Some((&first, rest)) = bytes.split_first() else {
        return;
    };
    if let Ok(upper) = ipv6::skip_extension_headers(ipv6::IpProtocol::from(first), rest) {
        assert!(
            upper.offset <= rest.len(),
            "extension walk went past the payload"
        );
    }
}

/// The ICMP error builders on `bytes` as the offending packet: any reply
/// they produce must parse back, verify, and quote a prefix of the input.
pub fn exercise_error_builders(bytes: &[u8]) {
    let mtu = bytes
        .get(2..4)
        .map_or(1400, |b| u16::from_be_bytes([b[0], b[1]]));
    let mut out = [0u8; 1500];
    if let Ok(Some(len)) = icmpv4::build_frag_needed(bytes, mtu, &mut out) {
        assert!(len <= 576, "frag-needed reply longer than 576 bytes");
        let ip = ipv4::Packet::new_checked(&out[..len]).expect("reply is valid IPv4");
        assert!(
            ipv4::Repr::parse(&ip).is_ok(),
            "reply IPv4 header checksum is bad"
        );
        let icmp = icmpv4::Packet::new_checked(ip.payload()).expect("reply holds ICMP");
        match icmpv4::Repr::parse(&icmp) {
            Ok(icmpv4::Repr::DstUnreachable {
                code: icmpv4::CODE_FRAG_NEEDED,
                next_hop_mtu,
                data,
            }) => {
                assert_eq!(next_hop_mtu, mtu);
                assert!(
                    bytes.starts_with(data),
                    "quote is not a prefix of the offending packet"
                );
            }
            other => panic!("frag-needed reply parsed as {other:?}"),
        }
    }
    // Small output buffers must give errors, never panics.
    for out_len in [0usize, 27, 28, 47, 48, 55, 56] {
        let _ = icmpv4::build_frag_needed(bytes, mtu, &mut out[..out_len]);
        let _ = icmpv6::build_packet_too_big(bytes, u32::from(mtu), &mut out[..out_len]);
    }
    if let Ok(Some(len)) = icmpv6::build_packet_too_big(bytes, u32::from(mtu), &mut out) {
        assert!(
            len <= ipv6::MIN_MTU,
            "packet-too-big reply longer than 1280 bytes"
        );
        let ip = ipv6::Packet::new_checked(&out[..len]).expect("reply is valid IPv6");
        let icmp = icmpv6::Packet::new_checked(ip.payload()).expect("reply holds ICMPv6");
        match icmpv6::Repr::parse(&ip.src_addr(), &ip.dst_addr(), &icmp) {
            Ok(icmpv6::Repr::PacketTooBig {
                mtu: reported,
                data,
            }) => {
                assert_eq!(reported, u32::from(mtu));
                assert!(
                    bytes.starts_with(data),
                    "quote is not a prefix of the offending packet"
                );
            }
            other => panic!("packet-too-big reply parsed as {other:?}"),
        }
    }
}

/// VXLAN header: parse/emit round trip, then the inner Ethernet frame.
pub fn exercise_vxlan(bytes: &[u8]) {
    let Ok(packet) = vxlan::Packet::new_checked(bytes) else {
        return;
    };
    let _ = (packet.flags(), packet.vni());
    let Ok(repr) = vxlan::Repr::parse(&packet) else {
        return;
    };
    assert!(repr.vni <= vxlan::MAX_VNI);
    let mut header = [0u8; vxlan::HEADER_LEN];
    repr.emit(&mut vxlan::Packet::new_unchecked(&mut header[..]));
    let again = vxlan::Packet::new_checked(&header[..]).expect("emitted header is checked");
    assert_eq!(
        vxlan::Repr::parse(&again),
        Ok(repr),
        "vxlan round trip changed the VNI"
    );
    exercise_ethernet(packet.payload());
}

/// Sleeve datagram header: parse/emit round trip.
pub fn exercise_sleeve(bytes: &[u8]) {
    let Ok(packet) = sleeve::Packet::new_checked(bytes) else {
        return;
    };
    let _ = (
        packet.receiver_index(),
        packet.counter(),
        packet.header(),
        packet.sealed(),
    );
    let repr = sleeve::Repr::parse(&packet).expect("checked sleeve packet must parse");
    let mut buffer = [0u8; sleeve::HEADER_LEN + sleeve::TAG_LEN];
    repr.emit(&mut sleeve::Packet::new_unchecked(&mut buffer[..]));
    assert_eq!(
        &buffer[..sleeve::HEADER_LEN],
        &bytes[..sleeve::HEADER_LEN],
        "sleeve emit differs from input"
    );
}

/// Sleeve DATA plaintext: every record, and every frame in it as IP and
/// as Ethernet; records re-emitted must give the same bytes.
pub fn exercise_records(bytes: &[u8]) {
    let mut consumed = 0usize;
    let mut rebuilt = [0u8; 2048];
    for (count, record) in sleeve::Records::new(bytes).enumerate() {
        assert!(
            count <= bytes.len() / sleeve::RECORD_OVERHEAD,
            "more records than bytes allow"
        );
        let Ok(record) = record else { break };
        exercise_ipv4(record.frame);
        exercise_ipv6(record.frame);
        exercise_ethernet(record.frame);
        let len = sleeve::RECORD_OVERHEAD + record.frame.len();
        if len <= rebuilt.len() {
            let written =
                sleeve::emit_record(&mut rebuilt, record.vni, record.frame).expect("record fits");
            assert_eq!(written, len);
            let again = sleeve::Records::new(&rebuilt[..written]).next();
            assert_eq!(again, Some(Ok(record)), "record round trip changed it");
        }
        consumed += len;
    }
    assert!(consumed <= bytes.len());
}

/// Heartbeat plaintext: parse/emit round trip.
pub fn exercise_heartbeat(bytes: &[u8]) {
    let Ok(repr) = heartbeat::Repr::parse(bytes) else {
        return;
    };
    let mut buffer = [0u8; heartbeat::LEN];
    assert_eq!(repr.emit(&mut buffer), Ok(heartbeat::LEN));
    assert_eq!(
        &buffer[..],
        &bytes[..heartbeat::LEN],
        "heartbeat emit differs from input"
    );
}

/// Overhead math on an arbitrary underlay MTU never panics and never
/// yields more than the underlay carries.
pub fn exercise_overhead(bytes: &[u8]) {
    let Some(b) = bytes.get(..2) else { return };
    let underlay_mtu = u16::from_be_bytes([b[0], b[1]]);
    for framing in [overhead::Framing::Sleeve, overhead::Framing::PlainVxlan] {
        for ipv6_underlay in [false, true] {
            for l2 in [false, true] {
                if let Some(mtu) = overhead::overlay_mtu(underlay_mtu, framing, ipv6_underlay, l2) {
                    let used = u32::from(mtu)
                        + u32::from(overhead::datagram_overhead(framing, ipv6_underlay));
                    assert!(
                        used <= u32::from(underlay_mtu),
                        "overlay MTU {mtu} overflows underlay {underlay_mtu}"
                    );
                }
            }
        }
    }
}

/// Mesh gossip messages: parse, walk every accessor, and for records check
/// that what a node would re-emit parses back to the same values.
pub fn exercise_gossip(bytes: &[u8]) {
    let Ok(message) = gossip::Message::parse(bytes) else {
        return;
    };
    match message {
        gossip::Message::Summary { live, hash } => {
            let mut out = Vec::new();
            gossip::emit_summary(&mut out, live, hash);
            assert_eq!(out, bytes, "summary emit differs from input");
        }
        gossip::Message::Digest(d) => {
            let entries: Vec<_> = d.entries().collect();
            let mut out = Vec::new();
            gossip::emit_digest(&mut out, &d.start(), d.end().as_ref(), &entries);
            let again = gossip::Message::parse(&out).expect("emitted digest parses");
            let gossip::Message::Digest(again) = again else {
                panic!("digest became another kind")
            };
            assert_eq!(again.entries().collect::<Vec<_>>(), entries);
            let _ = entries.iter().all(|(id, _)| d.covers(id));
        }
        gossip::Message::Request(list) => {
            let ids: Vec<_> = list.ids().collect();
            let mut out = Vec::new();
            gossip::emit_request(&mut out, &ids);
            assert_eq!(out, bytes, "request emit differs from input");
        }
        gossip::Message::Records(records) => {
            for view in records.iter() {
                let record = crate::mesh::topology::PeerRecord::from_view(&view);
                let mut out = Vec::new();
                gossip::emit_records_header(&mut out, 1);
                record.repr().emit(&mut out);
                let Ok(gossip::Message::Records(again)) = gossip::Message::parse(&out) else {
                    panic!("re-emitted record does not parse")
                };
                let again: Vec<_> = again.iter().collect();
                assert_eq!(again.len(), 1);
                assert_eq!(
                    crate::mesh::topology::PeerRecord::from_view(&again[0]),
                    record,
                    "record changed through emit and parse"
                );
            }
        }
    }
}

/// Relay and broadcast plaintexts: parse, walk every accessor, emit the
/// parsed header back (it must give the input bytes), follow the hop
/// budget down, and run the inner datagram and the records through their
/// own parsers.
pub fn exercise_relay(bytes: &[u8]) {
    if let Ok(packet) = relay::Packet::new_checked(bytes) {
        let repr = relay::Repr::parse(&packet).expect("checked relay must parse");
        assert_eq!(repr.destination, packet.destination());
        assert_eq!(repr.hops_left, packet.hops_left());
        assert_eq!(repr.buffer_len(), bytes.len());
        assert_eq!(packet.inner().len(), repr.inner_len);
        exercise_sleeve(packet.inner());
        assert!(
            sleeve::Packet::new_checked(packet.inner()).is_ok(),
            "checked relay holds an invalid inner datagram"
        );
        let mut out = bytes.to_vec();
        out[..relay::HEADER_LEN].fill(0);
        let mut view = relay::Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut view).expect("buffer_len bytes suffice");
        assert_eq!(out, bytes, "relay emit differs from input");
        match repr.forwarded() {
            Some(next) => {
                assert_eq!(next.hops_left + 1, repr.hops_left);
                assert_eq!(next.destination, repr.destination);
            }
            None => assert_eq!(repr.hops_left, 0),
        }
    } else {
        // An unchecked view over the same bytes must fail to parse or
        // agree on the lengths: never panic.
        if let Ok(repr) = relay::Repr::parse(&relay::Packet::new_unchecked(bytes)) {
            assert_eq!(repr.buffer_len(), bytes.len());
        }
    }
    if let Ok(packet) = relay::BroadcastPacket::new_checked(bytes) {
        let repr = relay::BroadcastRepr::parse(&packet).expect("checked broadcast must parse");
        assert_eq!(repr.source, packet.source());
        assert_eq!(repr.buffer_len(), bytes.len());
        let mut out = bytes.to_vec();
        out[..relay::HEADER_LEN].fill(0);
        repr.emit(&mut relay::BroadcastPacket::new_unchecked(&mut out[..]))
            .expect("buffer_len bytes suffice");
        assert_eq!(out, bytes, "broadcast emit differs from input");
        assert_eq!(repr.forwarded().is_none(), repr.hops_left == 0);
        exercise_records(packet.payload());
        let _ = packet.records().count();
    }
}

/// Network certificates: parse; a parsed certificate re-encodes to the
/// input bytes (the encoding is canonical), and verifying, covering and
/// showing it never panic.
pub fn exercise_cert(bytes: &[u8]) {
    use crate::identity::{Certificate, Trust};
    let Ok(cert) = Certificate::parse(bytes) else {
        return;
    };
    let mut again = cert.body.encode();
    again.extend_from_slice(&cert.signature);
    assert_eq!(again, bytes, "certificate re-encodes differently");
    assert_eq!(cert.signed_bytes().len() + 64, bytes.len());
    let _ = cert.fingerprint().to_string();
    let _ = crate::identity::cert::utc_text(cert.body.not_before);
    let _ = crate::identity::cert::utc_text(cert.body.not_after);
    let _ = cert.signed_by(&cert.body.public_key);
    for o in &cert.body.overlay {
        let _ = cert.covers(&crate::mesh::claims::Claim::Ip(
            crate::mesh::claims::IpPrefix::host(o.addr),
        ));
    }
    if let Ok(trust) = Trust::new(vec![cert.clone()]) {
        let _ = trust.authenticate(bytes);
        let _ = trust.check_current(&cert, cert.body.not_before);
    }
    let _ = Certificate::from_armored(&cert.to_armored()).expect("armor round trip");
}
