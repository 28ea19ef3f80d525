//! RFC 1071 Internet checksum (16-bit one's-complement sum).
//!
//! [`data`] sums a byte slice of any length; the pseudo-header helpers give
//! the partial sums that UDP and ICMPv6 checksums start from. Partial sums
//! are combined with [`combine`] and the final field value is the
//! complement of the total (see [`finish`]).

use core::net::{Ipv4Addr, Ipv6Addr};

/// Folds a wide one's-complement accumulator down to 16 bits.
///
/// Valid because 2^16 is congruent to 1 modulo 0xFFFF, so adding the high
/// half to the low half keeps the one's-complement value.
#[inline]
fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// One's-complement sum (not complemented) of `bytes`, read as big-endian
/// 16-bit words; an odd trailing byte is padded with a zero byte.
///
/// Only the last slice of a sequence may have odd length when partial sums
/// are combined, exactly as RFC 1071 pads only the end of the data.
pub fn data(bytes: &[u8]) -> u16 {
    // Add 64-bit big-endian words with end-around carry: 2^64 is congruent
    // to 1 modulo 0xFFFF, so this is the same sum, four words at a time.
    let mut acc: u64 = 0;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_be_bytes(word);
        let (sum, carry) = acc.overflowing_add(word);
        acc = sum + u64::from(carry);
    }
    let mut tail_sum: u64 = 0;
    let mut pairs = chunks.remainder().chunks_exact(2);
    for pair in &mut pairs {
        tail_sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        tail_sum += u64::from(*last) << 8;
    }
    let (sum, carry) = acc.overflowing_add(tail_sum);
    acc = sum + u64::from(carry);
    fold(acc)
}

/// One's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The value to write into a checksum field for a total partial sum.
#[inline]
pub fn finish(sum: u16) -> u16 {
    !sum
}

/// Partial sum of the IPv4 pseudo-header used by UDP/TCP (RFC 768):
/// source, destination, zero, protocol, upper-layer length.
pub fn pseudo_header_v4(src: &Ipv4Addr, dst: &Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let mut header = [0u8; 12];
    header[0..4].copy_from_slice(&src.octets());
    header[4..8].copy_from_slice(&dst.octets());
    header[9] = protocol;
    header[10..12].copy_from_slice(&length.to_be_bytes());
    data(&header)
}

/// Partial sum of the IPv6 pseudo-header used by UDP and ICMPv6
/// (RFC 8200 section 8.1): source, destination, 32-bit upper-layer length,
/// three zero bytes, next header.
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, length: u32) -> u16 {
    let mut header = [0u8; 40];
    header[0..16].copy_from_slice(&src.octets());
    header[16..32].copy_from_slice(&dst.octets());
    header[32..36].copy_from_slice(&length.to_be_bytes());
    header[39] = next_header;
    data(&header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain RFC 1071 algorithm, as a reference for the fast one.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = if pair.len() == 2 {
                u16::from_be_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], 0])
            };
            sum += u32::from(word);
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let bytes = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(data(&bytes), 0xddf2);
        assert_eq!(finish(data(&bytes)), 0x220d);
    }

    #[test]
    fn matches_reference_on_all_short_lengths() {
        let bytes: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..bytes.len() {
            assert_eq!(data(&bytes[..len]), reference(&bytes[..len]), "len {len}");
        }
        let ones = [0xFFu8; 67];
        for len in 0..ones.len() {
            assert_eq!(
                data(&ones[..len]),
                reference(&ones[..len]),
                "ones len {len}"
            );
        }
    }

    #[test]
    fn combine_equals_sum_over_concatenation() {
        let a = [0x12u8, 0x34, 0xff, 0xfe];
        let b = [0xab, 0xcd, 0xef];
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        assert_eq!(combine(&[data(&a), data(&b)]), data(&all));
    }

    #[test]
    fn pseudo_headers_match_manual_layout() {
        let src = Ipv4Addr::new(192, 0, 2, 1);
        let dst = Ipv4Addr::new(198, 51, 100, 7);
        let manual = [192, 0, 2, 1, 198, 51, 100, 7, 0, 17, 0, 28];
        assert_eq!(pseudo_header_v4(&src, &dst, 17, 28), data(&manual));

        let src6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst6: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut manual6 = [0u8; 40];
        manual6[0..16].copy_from_slice(&src6.octets());
        manual6[16..32].copy_from_slice(&dst6.octets());
        manual6[32..36].copy_from_slice(&1300u32.to_be_bytes());
        manual6[39] = 58;
        assert_eq!(pseudo_header_v6(&src6, &dst6, 58, 1300), data(&manual6));
    }
}
