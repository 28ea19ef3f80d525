//! Tests of the L2 offloads: golden bytes from an independent generator,
//! tun-rs's `gso_split` as an oracle for the IP part, split/coalesce round
//! trips, one test per GRO rule, truncations and random bytes.

use super::*;
use proptest::prelude::*;

/// Plain RFC 1071 sum (not complemented), independent of `wire::checksum`.
fn reference_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend_from_slice(part);
    }
    for pair in bytes.chunks(2) {
        let high = u64::from(pair[0]) << 8;
        let low = pair.get(1).map_or(0, |&b| u64::from(b));
        sum += high | low;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [10, 0, 0, 2];
const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const HEADROOM: usize = VNET_HDR_LEN;
const BIG: usize = HEADROOM + 70_000;

/// One flow's header fields, to build frames and super-frames from.
#[derive(Debug, Clone)]
struct Flow {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlan: Option<u16>,
    ipv6: bool,
    udp: bool,
    options: Vec<u8>,
    tos: u8,
    ttl: u8,
    dont_frag: bool,
    ack: u32,
    window: u16,
    ports: (u16, u16),
}

impl Flow {
    fn tcp4() -> Flow {
        Flow {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            vlan: None,
            ipv6: false,
            udp: false,
            options: vec![],
            tos: 0,
            ttl: 64,
            dont_frag: true,
            ack: 0x0102_0304,
            window: 512,
            ports: (40000, 5201),
        }
    }

    fn tcp6() -> Flow {
        Flow {
            ipv6: true,
            ..Flow::tcp4()
        }
    }

    fn l2_len(&self) -> usize {
        if self.vlan.is_some() {
            18
        } else {
            14
        }
    }

    fn ip_header_len(&self) -> usize {
        if self.ipv6 {
            40
        } else {
            20
        }
    }

    fn transport_header_len(&self) -> usize {
        if self.udp {
            8
        } else {
            20 + self.options.len()
        }
    }

    fn headers_len(&self) -> usize {
        self.l2_len() + self.ip_header_len() + self.transport_header_len()
    }

    fn protocol(&self) -> u8 {
        if self.udp {
            17
        } else {
            6
        }
    }

    fn pseudo(&self, transport_len: usize) -> Vec<u8> {
        let mut p = Vec::new();
        if self.ipv6 {
            p.extend_from_slice(&SRC6);
            p.extend_from_slice(&DST6);
            p.extend_from_slice(&(transport_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, self.protocol()]);
        } else {
            p.extend_from_slice(&SRC4);
            p.extend_from_slice(&DST4);
            p.extend_from_slice(&[0, self.protocol()]);
            p.extend_from_slice(&(transport_len as u16).to_be_bytes());
        }
        p
    }

    /// The frame with IP length for `payload`, IPv4 header checksum done,
    /// transport checksum field zero.
    fn raw(&self, seq: u32, ident: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(tci) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let transport_len = self.transport_header_len() + payload.len();
        if self.ipv6 {
            f.extend_from_slice(&[0x86, 0xdd]);
            let word = 0x6000_0000u32 | u32::from(self.tos) << 20 | 0x12345;
            f.extend_from_slice(&word.to_be_bytes());
            f.extend_from_slice(&(transport_len as u16).to_be_bytes());
            f.extend_from_slice(&[self.protocol(), self.ttl]);
            f.extend_from_slice(&SRC6);
            f.extend_from_slice(&DST6);
        } else {
            f.extend_from_slice(&[0x08, 0x00]);
            let ip_start = f.len();
            f.extend_from_slice(&[0x45, self.tos]);
            f.extend_from_slice(&((20 + transport_len) as u16).to_be_bytes());
            f.extend_from_slice(&ident.to_be_bytes());
            f.extend_from_slice(&[if self.dont_frag { 0x40 } else { 0 }, 0]);
            f.extend_from_slice(&[self.ttl, self.protocol(), 0, 0]);
            f.extend_from_slice(&SRC4);
            f.extend_from_slice(&DST4);
            let c = !reference_sum(&[&f[ip_start..]]);
            f[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
        }
        f.extend_from_slice(&self.ports.0.to_be_bytes());
        f.extend_from_slice(&self.ports.1.to_be_bytes());
        if self.udp {
            f.extend_from_slice(&(transport_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        } else {
            f.extend_from_slice(&seq.to_be_bytes());
            f.extend_from_slice(&self.ack.to_be_bytes());
            f.push(((20 + self.options.len()) / 4 * 16) as u8);
            f.push(flags);
            f.extend_from_slice(&self.window.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]);
            f.extend_from_slice(&self.options);
        }
        f.extend_from_slice(payload);
        f
    }

    fn csum_at(&self) -> usize {
        self.l2_len() + self.ip_header_len() + if self.udp { 6 } else { 16 }
    }

    /// An ordinary frame, checksums complete.
    fn frame(&self, seq: u32, ident: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = self.raw(seq, ident, flags, payload);
        let ts = self.l2_len() + self.ip_header_len();
        let c = !reference_sum(&[&self.pseudo(f.len() - ts), &f[ts..]]);
        let c = if c == 0 && self.udp { 0xffff } else { c };
        let at = self.csum_at();
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// A TAP read of a super-frame as the kernel gives it: virtio header
    /// (with a `hdr_len` not to be trusted), the pseudo-header sum in the
    /// checksum field.
    fn super_read(&self, seq: u32, ident: u16, flags: u8, payload: &[u8], gso: u16) -> Vec<u8> {
        let mut f = self.raw(seq, ident, flags, payload);
        let ts = self.l2_len() + self.ip_header_len();
        let partial = reference_sum(&[&self.pseudo(f.len() - ts)]);
        let at = self.csum_at();
        f[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: match (self.udp, self.ipv6) {
                (true, _) => GSO_UDP_L4,
                (false, false) => GSO_TCPV4,
                (false, true) => GSO_TCPV6,
            },
            hdr_len: 1234,
            gso_size: gso,
            csum_start: ts as u16,
            csum_offset: if self.udp { 6 } else { 16 },
        };
        let mut read = hdr.to_bytes().to_vec();
        read.extend_from_slice(&f);
        read
    }
}

/// Whether the IPv4 header checksum (if any) and the TCP/UDP checksum of
/// an Ethernet frame built like [`Flow`]'s verify.
fn frame_checksums_ok(flow: &Flow, frame: &[u8]) -> bool {
    let ip = flow.l2_len();
    let ts = ip + flow.ip_header_len();
    if !flow.ipv6 && reference_sum(&[&frame[ip..ts]]) != 0xffff {
        return false;
    }
    reference_sum(&[&flow.pseudo(frame.len() - ts), &frame[ts..]]) == 0xffff
}

fn slots(n: usize, len: usize) -> Vec<Vec<u8>> {
    vec![vec![0u8; len]; n]
}

/// Splits `read` with a fresh set of big slots; the segments as vectors.
fn split_all(read: &[u8], offset: usize) -> Result<Vec<Vec<u8>>, L2OffloadError> {
    let mut read = read.to_vec();
    // Exactly the slots it needs: classify_read says how many (and a
    // second classify inside split_read is harmless).
    let (count, len) = match classify_read(&mut read)? {
        L2Read::Single(len) => (1, len),
        L2Read::Segmented(sf) => (sf.count(), sf.segment_len()),
    };
    let mut out = slots(count, offset + len);
    let mut sizes = vec![0usize; count];
    let n = split_read(&mut read, &mut out, &mut sizes, offset)?;
    Ok((0..n)
        .map(|i| out[i][offset..offset + sizes[i]].to_vec())
        .collect())
}

/// Places frames in big buffers at HEADROOM, as a driver would.
fn batch(frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<usize>) {
    let mut bufs = Vec::new();
    let mut lens = Vec::new();
    for f in frames {
        let mut b = vec![0xeeu8; BIG];
        b[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
        bufs.push(b);
        lens.push(f.len());
    }
    (bufs, lens)
}

/// Coalesces `frames`; each write's bytes (virtio header first) and its
/// segment count.
fn coalesce_all(frames: &[Vec<u8>]) -> (Vec<(Vec<u8>, usize)>, GroStats) {
    let (mut bufs, lens) = batch(frames);
    let mut gro = L2Coalescer::new(8);
    let writes: Vec<FrameWrite> = gro.coalesce(&mut bufs, &lens, HEADROOM).unwrap().to_vec();
    let out = writes
        .iter()
        .map(|w| (bufs[w.buf][w.start..w.start + w.len].to_vec(), w.segments))
        .collect();
    (out, gro.stats())
}

/// `count` consecutive full-size segments of `flow`, `size` bytes each.
fn segments(flow: &Flow, count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let payload: Vec<u8> = (0..size).map(|b| (b + i * 7) as u8).collect();
            flow.frame(1000 + (i * size) as u32, 100 + i as u16, TCP_ACK, &payload)
        })
        .collect()
}

mod golden {
    //! From an independent Python generator (struct packing, RFC 1071 by
    //! hand); the virtio header is little-endian, as on the hosts weft runs on.
    pub const TCP4_READ: &[u8] = &[
        0x01, 0x01, 0x40, 0x00, 0x04, 0x00, 0x22, 0x00, 0x10, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45, 0x00, 0x00, 0x32, 0x12, 0x34,
        0x40, 0x00, 0x40, 0x06, 0x14, 0x90, 0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, 0x9c,
        0x40, 0x14, 0x51, 0x00, 0x00, 0x03, 0xe8, 0x01, 0x02, 0x03, 0x04, 0x50, 0x19, 0x02, 0x00,
        0x14, 0x27, 0x00, 0x00, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    ];
    pub const TCP4_SEG0: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x2c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x14, 0x96, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x03, 0xe8, 0x01, 0x02, 0x03,
        0x04, 0x50, 0x10, 0x02, 0x00, 0x1c, 0x88, 0x00, 0x00, 0x61, 0x62, 0x63, 0x64,
    ];
    pub const TCP4_SEG1: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x2c, 0x12, 0x35, 0x40, 0x00, 0x40, 0x06, 0x14, 0x95, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x03, 0xec, 0x01, 0x02, 0x03,
        0x04, 0x50, 0x10, 0x02, 0x00, 0x14, 0x7c, 0x00, 0x00, 0x65, 0x66, 0x67, 0x68,
    ];
    pub const TCP4_SEG2: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x2a, 0x12, 0x36, 0x40, 0x00, 0x40, 0x06, 0x14, 0x96, 0x0a, 0x00, 0x00, 0x01,
        0x0a, 0x00, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x03, 0xf0, 0x01, 0x02, 0x03,
        0x04, 0x50, 0x19, 0x02, 0x00, 0x77, 0xd5, 0x00, 0x00, 0x69, 0x6a,
    ];
    pub const UDP6_VLAN_READ: &[u8] = &[
        0x01, 0x05, 0x00, 0x00, 0x03, 0x00, 0x3a, 0x00, 0x06, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0x00, 0x05, 0x86, 0xdd, 0x60, 0x01,
        0x23, 0x45, 0x00, 0x0f, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x0f, 0xfa,
        0x24, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36,
    ];
    pub const UDP6_VLAN_SEG0: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0x00,
        0x05, 0x86, 0xdd, 0x60, 0x01, 0x23, 0x45, 0x00, 0x0b, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9c, 0x40,
        0x14, 0x51, 0x00, 0x0b, 0xf3, 0x10, 0x30, 0x31, 0x32,
    ];
    pub const UDP6_VLAN_SEG1: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0x00,
        0x05, 0x86, 0xdd, 0x60, 0x01, 0x23, 0x45, 0x00, 0x0b, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9c, 0x40,
        0x14, 0x51, 0x00, 0x0b, 0xed, 0x0d, 0x33, 0x34, 0x35,
    ];
    pub const UDP6_VLAN_SEG2: &[u8] = &[
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x81, 0x00, 0x00,
        0x05, 0x86, 0xdd, 0x60, 0x01, 0x23, 0x45, 0x00, 0x09, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9c, 0x40,
        0x14, 0x51, 0x00, 0x09, 0x1f, 0x46, 0x36,
    ];
}

#[cfg(target_endian = "little")]
#[test]
fn golden_tcp4_super_frame_splits_into_three_ethernet_frames() {
    // 10 payload bytes, gso_size 4, ACK|PSH|FIN: segments of 4, 4, 2
    // bytes, IDs 0x1234.., seq 1000, 1004, 1008, PSH|FIN only on the last.
    let segs = split_all(golden::TCP4_READ, 0).unwrap();
    assert_eq!(
        segs,
        [golden::TCP4_SEG0, golden::TCP4_SEG1, golden::TCP4_SEG2]
    );
}

#[cfg(target_endian = "little")]
#[test]
fn golden_udp6_vlan_super_frame_splits_into_three_tagged_frames() {
    // 7 payload bytes, gso_size 3, one 802.1Q tag (csum_start counts it).
    let segs = split_all(golden::UDP6_VLAN_READ, 0).unwrap();
    assert_eq!(
        segs,
        [
            golden::UDP6_VLAN_SEG0,
            golden::UDP6_VLAN_SEG1,
            golden::UDP6_VLAN_SEG2
        ]
    );
}

/// The kinds of super-frames the kernel hands out, with and without a tag
/// and TCP options.
fn sample_flows() -> Vec<Flow> {
    let mut flows = vec![];
    for ipv6 in [false, true] {
        for udp in [false, true] {
            for vlan in [None, Some(0x0123)] {
                flows.push(Flow {
                    ipv6,
                    udp,
                    vlan,
                    options: if udp {
                        vec![]
                    } else {
                        vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]
                    },
                    ..Flow::tcp4()
                });
            }
        }
    }
    flows
}

fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i * 31 + seed * 7 + i / 251) as u8)
        .collect()
}

#[test]
fn split_segments_are_complete_ethernet_frames() {
    for flow in sample_flows() {
        let data = payload(5000, 1);
        let read = flow.super_read(7_000_000, 0xfffe, TCP_ACK | TCP_PSH, &data, 1448);
        let segs = split_all(&read, 3).unwrap();
        assert_eq!(segs.len(), 4, "{flow:?}");
        let mut joined = vec![];
        for (i, seg) in segs.iter().enumerate() {
            let chunk = &data[i * 1448..data.len().min((i + 1) * 1448)];
            let seq = 7_000_000 + (i * 1448) as u32;
            let flags = if i == 3 { TCP_ACK | TCP_PSH } else { TCP_ACK };
            let ident = 0xfffeu16.wrapping_add(i as u16);
            assert_eq!(
                seg,
                &flow.frame(seq, ident, flags, chunk),
                "{flow:?} segment {i}"
            );
            assert!(frame_checksums_ok(&flow, seg));
            joined.extend_from_slice(&seg[flow.headers_len()..]);
        }
        assert_eq!(joined, data);
    }
}

#[test]
fn split_clears_fin_and_psh_before_the_last_and_cwr_after_the_first() {
    let flow = Flow::tcp4();
    let mut read = flow.super_read(
        1,
        1,
        TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR,
        &payload(300, 2),
        100,
    );
    read[1] |= GSO_ECN;
    let segs = split_all(&read, 0).unwrap();
    let flags: Vec<u8> = segs.iter().map(|s| s[14 + 20 + 13]).collect();
    assert_eq!(
        flags,
        [TCP_ACK | TCP_CWR, TCP_ACK, TCP_ACK | TCP_PSH | TCP_FIN]
    );
}

#[test]
fn split_matches_tun_rs_gso_split_on_the_ip_part() {
    for flow in sample_flows() {
        for (len, gso) in [
            (1, 1448),
            (1448, 1448),
            (1449, 1448),
            (65000, 1448),
            (777, 100),
        ] {
            let read = flow.super_read(42, 7, TCP_ACK, &payload(len, len), gso);
            let mine = split_all(&read, 0).unwrap();
            let l2 = flow.l2_len();
            let mut ip_part = read[VNET_HDR_LEN + l2..].to_vec();
            let hdr = tun_rs::VirtioNetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: read[1],
                hdr_len: (flow.headers_len() - l2) as u16,
                gso_size: gso,
                csum_start: flow.ip_header_len() as u16,
                csum_offset: if flow.udp { 6 } else { 16 },
            };
            let mut theirs = slots(200, 70_000);
            let mut sizes = vec![0; 200];
            let n = tun_rs::gso_split(&mut ip_part, hdr, &mut theirs, &mut sizes, 0, flow.ipv6)
                .unwrap();
            assert_eq!(n, mine.len(), "{flow:?} {len}/{gso}");
            for i in 0..n {
                assert_eq!(&mine[i][..l2], &read[VNET_HDR_LEN..VNET_HDR_LEN + l2]);
                assert_eq!(
                    &mine[i][l2..],
                    &theirs[i][..sizes[i]],
                    "{flow:?} {len}/{gso} #{i}"
                );
            }
        }
    }
}

#[test]
fn single_frame_gets_its_partial_checksum_completed_once() {
    for flow in sample_flows() {
        let data = payload(333, 3);
        let mut read = flow.super_read(9, 9, TCP_ACK, &data, 0);
        read[1] = GSO_NONE;
        // Ethernet padding after the IP packet must not enter the sum.
        read.extend_from_slice(&[0xab; 6]);
        let want = flow.frame(9, 9, TCP_ACK, &data);
        assert_eq!(classify_read(&mut read), Ok(L2Read::Single(want.len() + 6)));
        assert_eq!(&read[VNET_HDR_LEN..VNET_HDR_LEN + want.len()], &want[..]);
        assert_eq!(read[0] & F_NEEDS_CSUM, 0, "flag cleared");
        let again = read.clone();
        classify_read(&mut read).unwrap();
        assert_eq!(read, again, "a second classify changes nothing");
    }
}

#[test]
fn single_udp_checksum_zero_is_sent_as_ffff() {
    // Find a payload whose UDP checksum comes out 0.
    let flow = Flow {
        udp: true,
        ..Flow::tcp4()
    };
    for word in 0..=u16::MAX {
        let data = word.to_be_bytes();
        let raw = flow.raw(0, 0, 0, &data);
        let ts = 14 + 20;
        if !reference_sum(&[&flow.pseudo(raw.len() - ts), &raw[ts..]]) != 0 {
            continue;
        }
        let mut read = flow.super_read(0, 0, 0, &data, 0);
        read[1] = GSO_NONE;
        classify_read(&mut read).unwrap();
        assert_eq!(
            &read[VNET_HDR_LEN + ts + 6..VNET_HDR_LEN + ts + 8],
            &[0xff, 0xff]
        );
        return;
    }
    panic!("no payload gives a zero checksum");
}

#[test]
fn plain_frames_pass_through_unchanged() {
    let mut read = vec![0u8; VNET_HDR_LEN];
    read.extend_from_slice(&[0xff; 6]);
    read.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    read.extend_from_slice(&[0x5a; 28]);
    let before = read.clone();
    let mut out = slots(1, 100);
    let mut sizes = [0usize; 1];
    assert_eq!(split_read(&mut read, &mut out, &mut sizes, 20), Ok(1));
    assert_eq!(&out[0][20..20 + sizes[0]], &before[VNET_HDR_LEN..]);
}

/// A change to a TAP read.
type ReadChange = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn bad_super_frames_are_errors_that_say_why() {
    let flow = Flow::tcp4();
    let good = flow.super_read(1, 1, TCP_ACK, &payload(3000, 4), 1000);
    let cases: Vec<(&str, ReadChange, L2OffloadError)> = vec![
        (
            "legacy UFO",
            Box::new(|r| r[1] = 3),
            L2OffloadError::UnsupportedGsoType { gso_type: 3 },
        ),
        (
            "TSO6 on IPv4",
            Box::new(|r| r[1] = GSO_TCPV6),
            L2OffloadError::GsoTypeMismatch {
                gso_type: GSO_TCPV6,
                ethertype: 0x0800,
            },
        ),
        (
            "ECN on UDP",
            Box::new(|r| r[1] = GSO_UDP_L4 | GSO_ECN),
            L2OffloadError::GsoTypeMismatch {
                gso_type: GSO_UDP_L4 | GSO_ECN,
                ethertype: 0x0800,
            },
        ),
        (
            "USO on a TCP packet",
            Box::new(|r| {
                r[1] = GSO_UDP_L4;
                r[8..10].copy_from_slice(&6u16.to_ne_bytes());
            }),
            L2OffloadError::GsoTypeMismatch {
                gso_type: GSO_UDP_L4,
                ethertype: 0x0800,
            },
        ),
        (
            "ARP",
            Box::new(|r| r[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[8, 6])),
            L2OffloadError::GsoTypeMismatch {
                gso_type: GSO_TCPV4,
                ethertype: 0x0806,
            },
        ),
        (
            "gso_size 0",
            Box::new(|r| r[4..6].fill(0)),
            L2OffloadError::ZeroGsoSize,
        ),
        (
            "checksum offset of UDP",
            Box::new(|r| r[8..10].copy_from_slice(&6u16.to_ne_bytes())),
            L2OffloadError::BadChecksumPlace {
                csum_start: 34,
                csum_offset: 6,
            },
        ),
        (
            "checksum start inside the IP header",
            Box::new(|r| r[6..8].copy_from_slice(&30u16.to_ne_bytes())),
            L2OffloadError::BadChecksumPlace {
                csum_start: 30,
                csum_offset: 16,
            },
        ),
        (
            "IHL says options the checksum start does not",
            Box::new(|r| r[VNET_HDR_LEN + 14] = 0x46),
            L2OffloadError::BadIpHeader,
        ),
        (
            "IPv6 version in an IPv4 EtherType",
            Box::new(|r| r[VNET_HDR_LEN + 14] = 0x65),
            L2OffloadError::BadIpHeader,
        ),
        (
            "IP length one short",
            Box::new(|r| {
                let at = VNET_HDR_LEN + 16;
                let len = u16::from_be_bytes([r[at], r[at + 1]]) - 1;
                r[at..at + 2].copy_from_slice(&len.to_be_bytes());
            }),
            L2OffloadError::IpLengthMismatch {
                declared: 3039,
                actual: 3040,
            },
        ),
        (
            "TCP data offset 4",
            Box::new(|r| r[VNET_HDR_LEN + 34 + 12] = 0x40),
            L2OffloadError::BadTransportHeader,
        ),
    ];
    for (what, change, want) in cases {
        let mut read = good.clone();
        change(&mut read);
        let got = split_all(&read, 0);
        assert_eq!(got, Err(want), "{what}");
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn split_checks_its_slots() {
    let flow = Flow::tcp6();
    let mut read = flow.super_read(1, 1, TCP_ACK, &payload(4000, 5), 1000);
    let L2Read::Segmented(sf) = classify_read(&mut read).unwrap() else {
        panic!("not a super-frame");
    };
    assert_eq!((sf.count(), sf.segment_len()), (4, 74 + 1000));
    assert_eq!(sf.transport(), Transport::Tcp);
    assert!(sf.is_ipv6());
    assert_eq!(sf.l2_len(), 14);
    let frame = &read[VNET_HDR_LEN..];
    let mut sizes = [0usize; 8];
    let mut three = slots(3, 2000);
    assert_eq!(
        split_super_frame(frame, &sf, &mut three, &mut sizes, 0),
        Err(L2OffloadError::TooManySegments {
            needed: 4,
            slots: 3
        })
    );
    let mut small = slots(4, 1080);
    assert_eq!(
        split_super_frame(frame, &sf, &mut small, &mut sizes, 8),
        Err(L2OffloadError::SlotTooSmall {
            needed: 1082,
            available: 1080
        })
    );
    let mut fit = slots(4, 1082);
    assert_eq!(
        split_super_frame(frame, &sf, &mut fit, &mut sizes, 8),
        Ok(4)
    );
    assert_eq!(
        split_super_frame(&frame[1..], &sf, &mut fit, &mut sizes, 8),
        Err(L2OffloadError::FrameMismatch {
            expected: frame.len(),
            actual: frame.len() - 1
        })
    );
    assert_eq!(
        split_super_frame(frame, &sf, &mut fit, &mut sizes[..3], 8),
        Err(L2OffloadError::TooManySegments {
            needed: 4,
            slots: 3
        })
    );
}

#[test]
fn every_truncated_read_is_an_error() {
    let mut reads = vec![];
    for flow in sample_flows() {
        reads.push(flow.super_read(5, 5, TCP_ACK, &payload(2500, 6), 1000));
        let mut single = flow.super_read(5, 5, TCP_ACK, &payload(100, 6), 0);
        single[1] = GSO_NONE;
        reads.push(single);
    }
    for read in reads {
        assert!(split_all(&read, 0).is_ok());
        for cut in 0..read.len() {
            assert!(
                split_all(&read[..cut], 0).is_err(),
                "prefix of {cut} of {} bytes accepted",
                read.len()
            );
        }
    }
}

#[test]
fn segments_coalesce_back_into_the_super_frame() {
    for flow in sample_flows().into_iter().filter(|f| !f.udp) {
        for (len, gso) in [(2 * 1448, 1448), (5000, 1448), (60000, 1448), (999, 333)] {
            let data = payload(len, len);
            let read = flow.super_read(123_456, 77, TCP_ACK | TCP_PSH, &data, gso);
            let segs = split_all(&read, HEADROOM).unwrap();
            let (writes, stats) = coalesce_all(&segs);
            assert_eq!(writes.len(), 1, "{flow:?} {len}/{gso}");
            assert_eq!(writes[0].1, segs.len());
            assert_eq!(stats.super_frames, 1);
            let merged = &writes[0].0;
            let hdr = VnetHdr::parse(merged).unwrap();
            let ts = flow.l2_len() + flow.ip_header_len();
            assert_eq!(
                hdr,
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: if flow.ipv6 { GSO_TCPV6 } else { GSO_TCPV4 },
                    hdr_len: flow.headers_len() as u16,
                    gso_size: gso,
                    csum_start: ts as u16,
                    csum_offset: 16,
                }
            );
            // What the kernel does with F_NEEDS_CSUM: sum from csum_start.
            let mut frame = merged[VNET_HDR_LEN..].to_vec();
            let at = ts + 16;
            let c = !reference_sum(&[&frame[ts..]]);
            frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
            assert_eq!(frame, flow.frame(123_456, 77, TCP_ACK | TCP_PSH, &data));
            // And the merged write, read back as a super-frame, splits
            // into the same segments.
            assert_eq!(split_all(merged, HEADROOM).unwrap(), segs);
        }
    }
}

#[test]
fn coalesced_runs_stop_at_64k() {
    let flow = Flow::tcp4();
    let segs = segments(&flow, 60, 1448);
    let (writes, _) = coalesce_all(&segs);
    let counts: Vec<usize> = writes.iter().map(|w| w.1).collect();
    // (65535 - 40) / 1448 = 45 segments fit one IPv4 packet.
    assert_eq!(counts, [45, 15]);
    for (bytes, _) in &writes {
        assert!(bytes.len() - VNET_HDR_LEN - 14 <= 65535);
    }
}

#[test]
fn coalescing_stops_where_the_buffer_ends() {
    let flow = Flow::tcp4();
    let segs = segments(&flow, 4, 100);
    let (mut bufs, lens) = batch(&segs);
    // Room for the first frame and two more payloads.
    bufs[0].truncate(HEADROOM + segs[0].len() + 200);
    let mut gro = L2Coalescer::new(4);
    let writes = gro.coalesce(&mut bufs, &lens, HEADROOM).unwrap();
    let counts: Vec<(usize, usize)> = writes.iter().map(|w| (w.buf, w.segments)).collect();
    assert_eq!(counts, [(0, 3), (3, 1)]);
}

/// A change to the second of two segments: its flow, sequence number,
/// IPv4 ID, TCP flags or payload.
type Tweak = Box<dyn Fn(&mut Flow, &mut u32, &mut u16, &mut u8, &mut Vec<u8>)>;

/// Two segments of `flow`, the second changed by `change` (checksums made
/// right again afterwards): how many writes they give.
fn writes_after(
    flow: &Flow,
    change: impl Fn(&mut Flow, &mut u32, &mut u16, &mut u8, &mut Vec<u8>),
) -> usize {
    let first = flow.frame(1000, 10, TCP_ACK, &[1; 100]);
    let mut second_flow = flow.clone();
    let (mut seq, mut ident, mut flags, mut data) = (1100u32, 11u16, TCP_ACK, vec![2u8; 100]);
    change(
        &mut second_flow,
        &mut seq,
        &mut ident,
        &mut flags,
        &mut data,
    );
    let second = second_flow.frame(seq, ident, flags, &data);
    coalesce_all(&[first, second]).0.len()
}

#[test]
fn each_gro_rule_keeps_segments_apart() {
    for base in [Flow::tcp4(), Flow::tcp6()] {
        let v6 = base.ipv6;
        assert_eq!(
            writes_after(&base, |_, _, _, _, _| {}),
            1,
            "unchanged merges"
        );
        let rules: Vec<(&str, Tweak)> = vec![
            ("ACK number", Box::new(|f, _, _, _, _| f.ack += 1)),
            ("window", Box::new(|f, _, _, _, _| f.window += 1)),
            ("TTL", Box::new(|f, _, _, _, _| f.ttl -= 1)),
            ("TOS", Box::new(|f, _, _, _, _| f.tos = 0x10)),
            (
                "options",
                Box::new(|f, _, _, _, _| f.options = vec![1, 1, 1, 1]),
            ),
            (
                "destination MAC",
                Box::new(|f, _, _, _, _| f.dst_mac[5] = 9),
            ),
            ("source MAC", Box::new(|f, _, _, _, _| f.src_mac[5] = 9)),
            ("VLAN tag", Box::new(|f, _, _, _, _| f.vlan = Some(7))),
            ("source port", Box::new(|f, _, _, _, _| f.ports.0 += 1)),
            ("destination port", Box::new(|f, _, _, _, _| f.ports.1 += 1)),
            ("sequence gap", Box::new(|_, s, _, _, _| *s += 1)),
            ("sequence overlap", Box::new(|_, s, _, _, _| *s -= 1)),
            ("SYN", Box::new(|_, _, _, fl, _| *fl |= 0x02)),
            ("FIN", Box::new(|_, _, _, fl, _| *fl |= TCP_FIN)),
            ("RST", Box::new(|_, _, _, fl, _| *fl |= 0x04)),
            ("URG", Box::new(|_, _, _, fl, _| *fl |= 0x20)),
            ("ECE", Box::new(|_, _, _, fl, _| *fl |= 0x40)),
            ("CWR", Box::new(|_, _, _, fl, _| *fl |= TCP_CWR)),
            ("no ACK", Box::new(|_, _, _, fl, _| *fl = TCP_PSH)),
            ("larger than the first", Box::new(|_, _, _, _, d| d.push(3))),
            ("no payload", Box::new(|_, _, _, _, d| d.clear())),
            ("other protocol", Box::new(|f, _, _, _, _| f.udp = true)),
        ];
        for (what, change) in rules {
            assert_eq!(writes_after(&base, change), 2, "{what} (ipv6: {v6})");
        }
    }
}

#[test]
fn ipv4_ids_must_count_up_unless_dont_fragment() {
    let df = Flow::tcp4();
    let no_df = Flow {
        dont_frag: false,
        ..Flow::tcp4()
    };
    assert_eq!(writes_after(&no_df, |_, _, _, _, _| {}), 1);
    assert_eq!(writes_after(&no_df, |_, _, id, _, _| *id = 10), 2);
    assert_eq!(writes_after(&df, |_, _, id, _, _| *id = 10), 1);
    assert_eq!(writes_after(&df, |f, _, _, _, _| f.dont_frag = false), 2);
}

#[test]
fn psh_or_a_short_segment_ends_a_run() {
    let flow = Flow::tcp4();
    let mut segs = segments(&flow, 4, 100);
    // PSH on the second: merged, and PSH on the super-frame; the third
    // starts a new run.
    segs[1] = flow.frame(1100, 101, TCP_ACK | TCP_PSH, &segs[1][54..]);
    let (writes, _) = coalesce_all(&segs);
    let counts: Vec<usize> = writes.iter().map(|w| w.1).collect();
    assert_eq!(counts, [2, 2]);
    assert_eq!(writes[0].0[VNET_HDR_LEN + 14 + 20 + 13], TCP_ACK | TCP_PSH);
    assert_eq!(writes[1].0[VNET_HDR_LEN + 14 + 20 + 13], TCP_ACK);

    // A shorter second segment is merged, nothing after it.
    let mut segs = segments(&flow, 3, 100);
    segs[1] = flow.frame(1100, 101, TCP_ACK, &[7; 60]);
    segs[2] = flow.frame(1160, 102, TCP_ACK, &[8; 60]);
    let counts: Vec<usize> = coalesce_all(&segs).0.iter().map(|w| w.1).collect();
    assert_eq!(counts, [2, 1]);

    // A first segment with PSH takes nothing.
    let mut segs = segments(&flow, 2, 100);
    segs[0] = flow.frame(1000, 100, TCP_ACK | TCP_PSH, &segs[0][54..]);
    assert_eq!(coalesce_all(&segs).0.len(), 2);
}

#[test]
fn bad_checksums_are_never_merged() {
    let flow = Flow::tcp4();
    for bad in 0..3 {
        let mut segs = segments(&flow, 3, 100);
        let last = segs[bad].len() - 1;
        segs[bad][last] ^= 1;
        let (writes, stats) = coalesce_all(&segs);
        assert_eq!(stats.bad_checksums, 1, "segment {bad}");
        for (bytes, segments) in &writes {
            if *segments == 1 {
                // Written as it came, for the kernel to drop.
                assert_eq!(&bytes[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
            }
        }
        let merged: usize = writes.iter().filter(|w| w.1 > 1).map(|w| w.1).sum();
        assert!(merged <= 2, "segment {bad}: {merged} merged");
        assert!(writes.iter().any(|w| w.0[VNET_HDR_LEN..] == segs[bad][..]));
    }
    // A bad IPv4 header checksum too.
    // The second's TTL changed without fixing its header checksum (the TCP
    // checksum does not cover it); the first is built with that TTL.
    let mut segs = segments(&flow, 2, 100);
    segs[1][14 + 8] ^= 0x40;
    let other_ttl = Flow {
        ttl: flow.ttl ^ 0x40,
        ..flow.clone()
    };
    segs[0] = other_ttl.frame(1000, 100, TCP_ACK, &segs[0][54..]);
    let (writes, stats) = coalesce_all(&segs);
    assert_eq!((writes.len(), stats.bad_checksums), (2, 1));
}

#[test]
fn interleaved_flows_merge_apart_and_keep_their_order() {
    let a = Flow::tcp4();
    let b = Flow {
        ports: (40001, 5201),
        ..Flow::tcp6()
    };
    let sa = segments(&a, 3, 100);
    let sb = segments(&b, 3, 100);
    let arp = {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 8, 6]);
        f.extend_from_slice(&[0; 28]);
        f
    };
    let frames = vec![
        sa[0].clone(),
        sb[0].clone(),
        arp.clone(),
        sa[1].clone(),
        sb[1].clone(),
        sa[2].clone(),
        sb[2].clone(),
    ];
    let (mut bufs, lens) = batch(&frames);
    let mut gro = L2Coalescer::new(8);
    let writes = gro.coalesce(&mut bufs, &lens, HEADROOM).unwrap();
    let shape: Vec<(usize, usize)> = writes.iter().map(|w| (w.buf, w.segments)).collect();
    assert_eq!(shape, [(0, 3), (1, 3), (2, 1)]);
    let arp_write = &writes[2];
    assert_eq!(
        &bufs[2][arp_write.start..arp_write.start + arp_write.len],
        &[&[0u8; VNET_HDR_LEN][..], &arp[..]].concat()[..]
    );
}

#[test]
fn a_pure_ack_of_the_connection_ends_the_run_before_it() {
    let flow = Flow::tcp4();
    let segs = segments(&flow, 3, 100);
    let ack_only = flow.frame(1100, 101, TCP_ACK, &[]);
    let frames = vec![segs[0].clone(), ack_only, segs[1].clone(), segs[2].clone()];
    let (mut bufs, lens) = batch(&frames);
    let mut gro = L2Coalescer::new(4);
    let writes = gro.coalesce(&mut bufs, &lens, HEADROOM).unwrap();
    let shape: Vec<(usize, usize)> = writes.iter().map(|w| (w.buf, w.segments)).collect();
    // segs[1] must not jump over the pure ACK into the first run.
    assert_eq!(shape, [(0, 1), (1, 1), (2, 2)]);
}

#[test]
fn udp_ipv4_options_and_padded_frames_are_written_as_they_came() {
    let udp = Flow {
        udp: true,
        ..Flow::tcp4()
    };
    let frames = vec![udp.frame(0, 1, 0, &[1; 100]), udp.frame(0, 2, 0, &[1; 100])];
    assert_eq!(coalesce_all(&frames).0.len(), 2);
    // Padding after the IP packet: not a candidate.
    let flow = Flow::tcp4();
    let mut segs = segments(&flow, 2, 100);
    segs[1].extend_from_slice(&[0; 4]);
    let (writes, _) = coalesce_all(&segs);
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1].0[VNET_HDR_LEN..], segs[1][..]);
}

#[test]
fn coalesce_checks_the_batch() {
    let flow = Flow::tcp4();
    let segs = segments(&flow, 2, 100);
    let (mut bufs, lens) = batch(&segs);
    let mut gro = L2Coalescer::new(2);
    assert_eq!(
        gro.coalesce(&mut bufs, &lens, 9).unwrap_err(),
        L2OffloadError::HeadroomTooSmall { headroom: 9 }
    );
    assert_eq!(
        gro.coalesce(&mut bufs, &[154, BIG], HEADROOM).unwrap_err(),
        L2OffloadError::FrameOutsideBuffer {
            index: 1,
            len: BIG,
            headroom: HEADROOM
        }
    );
    assert_eq!(
        gro.coalesce(&mut bufs[..1], &lens, HEADROOM).unwrap_err(),
        L2OffloadError::FrameOutsideBuffer {
            index: 1,
            len: 154,
            headroom: HEADROOM
        }
    );
    // Empty frames are skipped; a bigger headroom works the same.
    let (mut bufs, _) = batch(&segs);
    let writes = gro.coalesce(&mut bufs, &[0, 0], HEADROOM).unwrap();
    assert!(writes.is_empty());
}

/// A random super-frame read: flow shape, payload length and gso_size.
fn super_read_strategy() -> impl Strategy<Value = (Flow, Vec<u8>, u32, u16, u16, u8)> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(any::<u16>()),
        0usize..=10,
        1usize..20_000,
        200u16..3000,
        any::<u32>(),
        any::<u16>(),
        prop_oneof![
            Just(TCP_ACK),
            Just(TCP_ACK | TCP_PSH),
            Just(TCP_ACK | TCP_FIN)
        ],
    )
        .prop_map(|(ipv6, udp, vlan, options, len, gso, seq, ident, flags)| {
            let flow = Flow {
                ipv6,
                udp,
                vlan,
                options: if udp { vec![] } else { vec![1; options * 4] },
                ..Flow::tcp4()
            };
            (flow, payload(len, len % 13), seq, ident, gso, flags)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_super_frames_split_and_coalesce_back(
        (flow, data, seq, ident, gso, flags) in super_read_strategy()
    ) {
        let read = flow.super_read(seq, ident, flags, &data, gso);
        let segs = split_all(&read, HEADROOM).unwrap();
        prop_assert_eq!(segs.len(), data.len().div_ceil(usize::from(gso)));
        let mut joined = vec![];
        for (i, seg) in segs.iter().enumerate() {
            prop_assert!(frame_checksums_ok(&flow, seg));
            let chunk = &seg[flow.headers_len()..];
            prop_assert_eq!(
                seg,
                &flow.frame(
                    seq.wrapping_add((i * usize::from(gso)) as u32),
                    ident.wrapping_add(i as u16),
                    if i + 1 == segs.len() { flags } else { TCP_ACK },
                    chunk,
                )
            );
            joined.extend_from_slice(chunk);
        }
        prop_assert_eq!(&joined, &data);
        let (writes, stats) = coalesce_all(&segs);
        prop_assert_eq!(stats.bad_checksums, 0);
        // Every byte comes back out, in order.
        let mut rejoined = vec![];
        for (bytes, _) in &writes {
            let hdr = VnetHdr::parse(bytes).unwrap();
            let hl = if hdr.gso_type == GSO_NONE { flow.headers_len() } else { usize::from(hdr.hdr_len) };
            rejoined.extend_from_slice(&bytes[VNET_HDR_LEN + hl..]);
        }
        prop_assert_eq!(&rejoined, &data);
        if flow.udp {
            prop_assert_eq!(writes.len(), segs.len());
        } else {
            // TCP: one super-frame per 64 KiB, plus the FIN segment alone.
            let fin = usize::from(flags & TCP_FIN != 0 && segs.len() > 1);
            let per_write = (65535 - 60 - flow.options.len()) / usize::from(gso);
            let expected = (segs.len() - fin).div_ceil(per_write.max(1)) + fin;
            prop_assert!(writes.len() <= expected, "{} writes, expected {}", writes.len(), expected);
        }
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        gso_type in prop_oneof![Just(0u8), Just(1), Just(4), Just(5), Just(0x81), any::<u8>()],
        start in 0u16..120,
        offset in prop_oneof![Just(6u16), Just(16), any::<u16>()],
        gso in 0u16..200,
        flags in any::<u8>(),
    ) {
        let mut read = VnetHdr {
            flags,
            gso_type,
            hdr_len: 0,
            gso_size: gso,
            csum_start: start,
            csum_offset: offset,
        }
        .to_bytes()
        .to_vec();
        read.extend_from_slice(&bytes);
        let _ = split_all(&read, 4);
        let frames = vec![bytes.clone(), bytes.clone(), bytes];
        let _ = coalesce_all(&frames);
    }

    #[test]
    fn mutated_frames_never_panic_the_coalescer(
        flips in proptest::collection::vec((0usize..4, 0usize..200, any::<u8>()), 0..6),
        cut in proptest::option::of((0usize..4, 0usize..200)),
    ) {
        let mut frames = segments(&Flow::tcp4(), 2, 100);
        frames.extend(segments(&Flow::tcp6(), 2, 100));
        for (which, at, value) in flips {
            let f = &mut frames[which];
            let at = at % f.len();
            f[at] = value;
        }
        if let Some((which, at)) = cut {
            let f = &mut frames[which];
            f.truncate(at % (f.len() + 1));
        }
        let (writes, _) = coalesce_all(&frames);
        let total: usize = writes.iter().map(|w| w.1).sum();
        prop_assert_eq!(total, frames.iter().filter(|f| !f.is_empty()).count());
    }
}
