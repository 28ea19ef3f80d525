//! Property tests: every parser, accessor and builder is total on
//! arbitrary bytes, and parse/emit round trips hold (see `totality`).

use proptest::prelude::*;

use super::totality;

/// Bytes that look like the start of real headers often enough to get
/// past the first length/version checks.
fn header_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(0x45u8),
            Just(0x46),
            Just(0x60),
            Just(0x00),
            any::<u8>()
        ],
        proptest::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(first, mut rest)| {
            rest.insert(0, first);
            // Make declared lengths often match the buffer.
            let len = rest.len();
            if first & 0xf0 == 0x40 && len >= 4 {
                rest[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            }
            if first & 0xf0 == 0x60 && len >= 40 {
                rest[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            }
            rest
        })
}

/// Bytes that start like a gossip message, with counts small enough that
/// the body is often long enough.
fn gossip_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        1u8..=4,
        0u8..4,
        proptest::collection::vec(any::<u8>(), 0..1200),
    )
        .prop_map(|(kind, count, mut rest)| {
            let mut bytes = vec![kind, 0, count];
            bytes.append(&mut rest);
            bytes
        })
}

/// A valid signed certificate, then flipped bytes, a cut or a tail:
/// random bytes almost never get past the version byte.
fn cert_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    use crate::identity::cert::{CertBody, Certificate, InterfaceAddr, MacPolicy};
    (
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        proptest::option::of(any::<usize>()),
        proptest::collection::vec(any::<u8>(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(flips, cut, tail, any_mac)| {
            let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
            let body = CertBody {
                is_ca: false,
                name: "host".into(),
                public_key: [7; 32],
                not_before: 1,
                not_after: 2,
                issuer: crate::identity::Fingerprint([1; 32]),
                overlay: vec![InterfaceAddr {
                    addr: "10.40.0.1".parse().unwrap(),
                    len: 16,
                }],
                subnets: vec!["fd00::/64".parse().unwrap()],
                macs: if any_mac {
                    MacPolicy::Any
                } else {
                    MacPolicy::List(vec![crate::wire::ethernet::MacAddr([2, 0, 0, 0, 0, 1])])
                },
            };
            let mut bytes = Certificate::sign(body, &key).encoded().to_vec();
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            if let Some(c) = cut {
                bytes.truncate(c % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&tail);
            bytes
        })
}

/// Bytes that start like a relay plaintext around a valid inner sleeve
/// header (random bytes almost never get past the inner header check),
/// sometimes with records behind the peer id as a broadcast carries them.
fn relay_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 32]>(),
        prop_oneof![Just(0u8), Just(1), any::<u8>()],
        1u8..=5,
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::option::of((
            0u32..=0x00ff_ffff,
            proptest::collection::vec(any::<u8>(), 0..64),
        )),
    )
        .prop_map(|(peer, hops, inner_type, rest, record)| {
            let mut bytes = peer.to_vec();
            bytes.push(hops);
            if let Some((vni, frame)) = record {
                let mut r = vec![0u8; frame.len() + super::sleeve::RECORD_OVERHEAD];
                let n = super::sleeve::emit_record(&mut r, vni, &frame).unwrap();
                bytes.extend_from_slice(&r[..n]);
            } else {
                bytes.extend_from_slice(&[inner_type, 0, 0, 0]);
            }
            bytes.extend_from_slice(&rest);
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn relay_parser_total_on_relay_like_bytes(bytes in relay_like_bytes()) {
        totality::exercise_relay(&bytes);
    }

    #[test]
    fn cert_parser_total_on_cert_like_bytes(bytes in cert_like_bytes()) {
        totality::exercise_cert(&bytes);
    }

    #[test]
    fn gossip_parser_total_on_gossip_like_bytes(bytes in gossip_like_bytes()) {
        totality::exercise_gossip(&bytes);
    }

    #[test]
    fn all_parsers_total_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        totality::exercise_all(&bytes);
    }

    #[test]
    fn all_parsers_total_on_header_like_bytes(bytes in header_like_bytes()) {
        totality::exercise_all(&bytes);
    }

    #[test]
    fn ethernet_wrapped_bytes_are_total(ethertype in prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806)], payload in header_like_bytes()) {
        let mut frame = vec![2u8, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&payload);
        totality::exercise_all(&frame);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Random ICMP messages with a correct checksum reach the Repr round
    /// trip, which random bytes almost never do.
    #[test]
    fn checksummed_icmp_round_trips(mut bytes in proptest::collection::vec(any::<u8>(), 8..600)) {
        super::icmpv4::Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        let packet = super::icmpv4::Packet::new_checked(&bytes[..]).unwrap();
        prop_assert!(super::icmpv4::Repr::parse(&packet).is_ok());
        totality::exercise_icmpv4(&bytes);

        let (src, dst) = (core::net::Ipv6Addr::LOCALHOST, core::net::Ipv6Addr::UNSPECIFIED);
        super::icmpv6::Packet::new_unchecked(&mut bytes[..]).fill_checksum(&src, &dst);
        let packet = super::icmpv6::Packet::new_checked(&bytes[..]).unwrap();
        prop_assert!(super::icmpv6::Repr::parse(&src, &dst, &packet).is_ok());
        totality::exercise_icmpv6(&bytes, &src, &dst);
    }

    /// Random IPv4 headers with a correct checksum reach the Repr round trip.
    #[test]
    fn checksummed_ipv4_round_trips(ihl in 5u8..=15, mut bytes in proptest::collection::vec(any::<u8>(), 60..700)) {
        bytes[0] = 0x40 | ihl;
        let len = bytes.len() as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        super::ipv4::Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        let packet = super::ipv4::Packet::new_checked(&bytes[..]).unwrap();
        prop_assert!(super::ipv4::Repr::parse(&packet).is_ok());
        totality::exercise_all(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Well-formed record chains (with arbitrary frames and a possibly
    /// chopped tail) parse back frame by frame.
    #[test]
    fn sleeve_record_chains(
        frames in proptest::collection::vec((0u32..=0x00ff_ffff, header_like_bytes()), 0..5),
        chop in 0usize..16,
    ) {
        let mut plaintext = vec![0u8; frames.iter().map(|(_, f)| f.len() + super::sleeve::RECORD_OVERHEAD).sum()];
        let mut at = 0;
        for (vni, frame) in &frames {
            at += super::sleeve::emit_record(&mut plaintext[at..], *vni, frame).unwrap();
        }
        let parsed: Vec<_> = super::sleeve::Records::new(&plaintext).collect();
        prop_assert_eq!(parsed.len(), frames.len());
        for (record, (vni, frame)) in parsed.iter().zip(&frames) {
            let record = record.unwrap();
            prop_assert_eq!(record.vni, *vni);
            prop_assert_eq!(record.frame, &frame[..]);
        }
        let chopped = &plaintext[..plaintext.len().saturating_sub(chop)];
        totality::exercise_all(chopped);
    }
}
