//! Segmentation offloads for bridge mode's TAP device (L2 frames).
//!
//! Without offloads a TAP hands weft one Ethernet frame per read(2) and
//! takes one per write(2): at 1500 bytes a frame, the syscalls and the
//! kernel's per-frame stack traversal cap bridge mode far below kernel
//! VXLAN. With IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6[|USO4|USO6])
//! the kernel instead reads out TCP/UDP "super-frames" of up to 64 KiB
//! (a 10-byte virtio_net header in front, the checksum left partial) and
//! accepts them back the same way, as TUN mode does (see `offload`).
//!
//! tun-rs's `gso_split` and GRO table cannot be used for this as they are:
//! they expect an IP packet at the offset, while here every frame starts
//! with an Ethernet header (14 bytes, 18 with an 802.1Q tag) that each
//! segment needs its own copy of, `csum_start` counts from the start of
//! the Ethernet frame, and two frames only belong to one flow if their
//! Ethernet headers are equal too. So this module does both directions
//! itself, sans-IO and without allocating per frame:
//!
//! - reads: [`classify_read`] checks one TAP read and completes a partial
//!   checksum in place; [`split_super_frame`] cuts a super-frame into
//!   ordinary Ethernet frames straight into the caller's slots, at the
//!   offset they will be framed and sealed in ([`split_read`] does both).
//! - writes: [`L2Coalescer`] merges consecutive TCP segments of one flow,
//!   under the rules of the kernel's GRO and wireguard-go's `tcpGRO`, into
//!   super-frames behind a virtio header (`F_NEEDS_CSUM`, the
//!   pseudo-header sum in the TCP checksum field), so the kernel sees few,
//!   large frames; the rest gets an all-zero header. Each output is one
//!   contiguous byte range: one write(2).
//!
//! What a driver does:
//!
//! - Open the TAP with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6, and
//!   USO4|USO6 where the kernel takes them): tun-rs's
//!   `DeviceBuilder::new().layer(Layer::L2).offload(true)` does both.
//! - Read into a buffer of at least `VNET_HDR_LEN + 65535 + 18` bytes (a
//!   smaller one truncates super-frames, which are then rejected as
//!   [`L2OffloadError::IpLengthMismatch`]). Per read, one [`split_read`]
//!   into free slots at the offset the sleeve/VXLAN headers need; a
//!   super-frame needs [`SuperFrame::count`] slots of `offset +`
//!   [`SuperFrame::segment_len`] bytes (ask [`classify_read`] first when
//!   slots run short). On an error, drop the read.
//! - Per batch of received frames, each at `headroom >= VNET_HDR_LEN` in
//!   its buffer (buffers of `headroom + 65535 + 18` bytes coalesce fully),
//!   one [`L2Coalescer::coalesce`], then one write(2) per [`FrameWrite`].
//!
//! Every function is total: any bytes give a value or an
//! [`L2OffloadError`], never a panic.

use crate::wire::checksum;
use core::net::{Ipv4Addr, Ipv6Addr};

/// Length of the virtio_net header in front of every TAP read and write
/// (the same header TUN mode uses).
pub use super::offload::VNET_HDR_LEN;

/// `virtio_net_hdr.gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: TCP over IPv4 (TSO4).
pub const GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type`: TCP over IPv6 (TSO6).
pub const GSO_TCPV6: u8 = 4;
/// `virtio_net_hdr.gso_type`: UDP segmentation (USO4/USO6).
pub const GSO_UDP_L4: u8 = 5;
/// `virtio_net_hdr.gso_type` modifier: TCP with ECN (CWR on the first segment only).
pub const GSO_ECN: u8 = 0x80;
/// `virtio_net_hdr.flags`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;

const ETH_HEADER_LEN: usize = crate::wire::ethernet::HEADER_LEN;
const VLAN_TAG_LEN: usize = 4;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV4_HEADER_LEN: usize = crate::wire::ipv4::HEADER_LEN;
const IPV6_HEADER_LEN: usize = crate::wire::ipv6::HEADER_LEN;
const TCP_HEADER_LEN: usize = 20;
const TCP_MAX_HEADER_LEN: usize = 60;
const UDP_HEADER_LEN: usize = crate::wire::udp::HEADER_LEN;
const TCP_CSUM_OFFSET: u16 = 16;
const UDP_CSUM_OFFSET: u16 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Largest IPv4 total length / IPv6 payload length one frame may declare.
const MAX_IP_LEN: usize = u16::MAX as usize;

/// Byte offsets inside the IPv4, IPv6 and TCP/UDP headers.
mod field {
    use core::ops::Range;
    pub const V4_TOS: usize = 1;
    pub const V4_LENGTH: Range<usize> = 2..4;
    pub const V4_IDENT: Range<usize> = 4..6;
    pub const V4_FLAGS: usize = 6;
    pub const V4_FRAG: Range<usize> = 6..8;
    pub const V4_TTL: usize = 8;
    pub const V4_PROTOCOL: usize = 9;
    pub const V4_CHECKSUM: Range<usize> = 10..12;
    pub const V4_ADDRS: Range<usize> = 12..20;
    pub const V6_VER_TC_FLOW: Range<usize> = 0..4;
    pub const V6_LENGTH: Range<usize> = 4..6;
    pub const V6_NEXT_HEADER: usize = 6;
    pub const V6_HOP_LIMIT: usize = 7;
    pub const V6_ADDRS: Range<usize> = 8..40;
    pub const PORTS: Range<usize> = 0..4;
    pub const TCP_SEQ: Range<usize> = 4..8;
    pub const TCP_ACK: Range<usize> = 8..12;
    pub const TCP_DATA_OFFSET: usize = 12;
    pub const TCP_FLAGS: usize = 13;
    pub const TCP_WINDOW: Range<usize> = 14..16;
    pub const UDP_LENGTH: Range<usize> = 4..6;
}

/// Why a TAP read could not be split or a batch could not be coalesced.
/// Read errors mean the frame is dropped; batch errors are caller bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum L2OffloadError {
    /// The read holds less than a virtio header and an Ethernet header.
    #[error("TAP read of {len} bytes is shorter than the virtio header and an Ethernet header")]
    ShortRead {
        /// Bytes read.
        len: usize,
    },
    /// A GSO type weft does not split (legacy UFO, SCTP, unknown).
    #[error("TAP super-frame has GSO type {gso_type}; weft splits only TCPv4, TCPv6 and UDP L4")]
    UnsupportedGsoType {
        /// The `gso_type` byte.
        gso_type: u8,
    },
    /// The GSO type does not fit what the frame carries (TSO4 on IPv6,
    /// ECN on UDP, not IP at all, wrong IP protocol).
    #[error("TAP super-frame (EtherType 0x{ethertype:04x}) does not carry what its GSO type {gso_type} says")]
    GsoTypeMismatch {
        /// The `gso_type` byte.
        gso_type: u8,
        /// The EtherType after an optional 802.1Q tag.
        ethertype: u16,
    },
    /// A GSO frame with `gso_size` 0.
    #[error("TAP super-frame with gso_size 0")]
    ZeroGsoSize,
    /// `csum_start`/`csum_offset` outside the frame or not at the
    /// TCP/UDP checksum.
    #[error("TAP frame's checksum start {csum_start} and offset {csum_offset} are outside the frame or not at its TCP/UDP checksum")]
    BadChecksumPlace {
        /// `csum_start`, from the start of the Ethernet frame.
        csum_start: u16,
        /// `csum_offset`, from `csum_start`.
        csum_offset: u16,
    },
    /// The IP header is too short, of another version, or its header
    /// length does not end where the checksum starts.
    #[error("TAP frame has a malformed IP header")]
    BadIpHeader,
    /// The IP length field disagrees with the bytes read: a truncated read
    /// (the read buffer was too small) or a corrupt frame.
    #[error("TAP frame's IP header declares {declared} bytes but the frame holds {actual}: was the read buffer smaller than 64 KiB plus headers?")]
    IpLengthMismatch {
        /// Bytes the IP header declares (IPv4 total length, IPv6 header + payload length).
        declared: usize,
        /// Bytes after the Ethernet header.
        actual: usize,
    },
    /// The TCP header is too short or runs past the frame.
    #[error("TAP super-frame has a malformed TCP or UDP header")]
    BadTransportHeader,
    /// More segments than output slots (or sizes).
    #[error("TAP super-frame makes {needed} segments but only {slots} output slots were given")]
    TooManySegments {
        /// Segments the super-frame makes.
        needed: usize,
        /// Slots (and sizes) available.
        slots: usize,
    },
    /// An output slot cannot hold offset + segment.
    #[error("output slot of {available} bytes cannot hold a {needed}-byte segment at its offset")]
    SlotTooSmall {
        /// Bytes the slot needs.
        needed: usize,
        /// Bytes the slot has.
        available: usize,
    },
    /// `split_super_frame` was given a frame other than the one classified.
    #[error("frame of {actual} bytes given to split a {expected}-byte super-frame")]
    FrameMismatch {
        /// Length of the classified super-frame.
        expected: usize,
        /// Length of the frame given.
        actual: usize,
    },
    /// Less headroom than the virtio header in front of the frames.
    #[error("{headroom} bytes of headroom in front of each frame, the virtio header needs {VNET_HDR_LEN}")]
    HeadroomTooSmall {
        /// Headroom given.
        headroom: usize,
    },
    /// A frame length runs past its buffer, or there are fewer buffers
    /// than lengths.
    #[error("frame {index} ({len} bytes after {headroom} of headroom) does not fit its buffer")]
    FrameOutsideBuffer {
        /// Index of the frame in the batch.
        index: usize,
        /// Its length.
        len: usize,
        /// Headroom in front of it.
        headroom: usize,
    },
}

/// The 10-byte `virtio_net_hdr` (legacy layout, native byte order, as
/// TUN/TAP use it unless told otherwise with TUNSETVNETLE/BE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` and others.
    pub flags: u8,
    /// `GSO_*`, maybe with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of all headers (reads: not trusted, recomputed).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the Ethernet frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes, or `None`
    /// if there are fewer.
    pub fn parse(bytes: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = bytes.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let word = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: word(2),
            gso_size: word(4),
            csum_start: word(6),
            csum_offset: word(8),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Length of the Ethernet header (with at most one 802.1Q tag) and the
/// EtherType after it.
fn l2_header(frame: &[u8]) -> Option<(usize, u16)> {
    let ethertype = be16(frame, 12)?;
    if ethertype != ETHERTYPE_VLAN {
        return (frame.len() >= ETH_HEADER_LEN).then_some((ETH_HEADER_LEN, ethertype));
    }
    let inner = be16(frame, ETH_HEADER_LEN + 2)?;
    Some((ETH_HEADER_LEN + VLAN_TAG_LEN, inner))
}

/// Partial sum of the TCP/UDP pseudo-header of the IP header `ip`
/// (IPv4 or IPv6, at least its fixed part), for `length` transport bytes.
fn pseudo_header(ip: &[u8], ipv6: bool, protocol: u8, length: usize) -> u16 {
    if ipv6 {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        dst.copy_from_slice(&ip[24..40]);
        checksum::pseudo_header_v6(
            &Ipv6Addr::from(src),
            &Ipv6Addr::from(dst),
            protocol,
            length as u32,
        )
    } else {
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        checksum::pseudo_header_v4(&src, &dst, protocol, length as u16)
    }
}

/// Writes the IPv4 header checksum of `header` (its whole length).
fn fill_ipv4_checksum(header: &mut [u8]) {
    header[field::V4_CHECKSUM].fill(0);
    let sum = checksum::finish(checksum::data(header));
    header[field::V4_CHECKSUM].copy_from_slice(&sum.to_be_bytes());
}

/// The IP packet after `l2_len`: where it ends according to its own
/// length field, checked against the bytes there.
fn ip_end(frame: &[u8], l2_len: usize, ethertype: u16) -> Result<usize, L2OffloadError> {
    let ip = frame.get(l2_len..).ok_or(L2OffloadError::BadIpHeader)?;
    let declared = match ethertype {
        ETHERTYPE_IPV4 if ip.len() >= IPV4_HEADER_LEN && ip[0] >> 4 == 4 => {
            usize::from(be16(ip, 2).unwrap_or(0))
        }
        ETHERTYPE_IPV6 if ip.len() >= IPV6_HEADER_LEN && ip[0] >> 4 == 6 => {
            IPV6_HEADER_LEN + usize::from(be16(ip, 4).unwrap_or(0))
        }
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => return Err(L2OffloadError::BadIpHeader),
        _ => return Ok(frame.len()),
    };
    if declared > ip.len() {
        return Err(L2OffloadError::IpLengthMismatch {
            declared,
            actual: ip.len(),
        });
    }
    Ok(l2_len + declared)
}

/// TCP or UDP: what a super-frame segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TSO: TCP segments (sequence numbers advance, FIN/PSH on the last).
    Tcp,
    /// USO: UDP datagrams of `gso_size` bytes each.
    Udp,
}

/// A checked super-frame: how [`split_super_frame`] lays out its segments.
/// Only [`classify_read`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperFrame {
    frame_len: usize,
    l2_len: usize,
    transport_start: usize,
    headers_len: usize,
    gso_size: usize,
    ipv6: bool,
    transport: Transport,
    count: usize,
}

impl SuperFrame {
    /// How many segments it makes: the slots [`split_super_frame`] needs.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes of the largest segment (Ethernet frame, headers included):
    /// each slot needs this much after the offset.
    pub fn segment_len(&self) -> usize {
        self.headers_len + self.gso_size.min(self.frame_len - self.headers_len)
    }

    /// TCP or UDP.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether the IP packets are IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.ipv6
    }

    /// Length of the Ethernet header (14, or 18 with an 802.1Q tag).
    pub fn l2_len(&self) -> usize {
        self.l2_len
    }
}

/// What one TAP read held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Read {
    /// One ordinary Ethernet frame of this length at `VNET_HDR_LEN`, its
    /// checksum complete.
    Single(usize),
    /// A super-frame for [`split_super_frame`].
    Segmented(SuperFrame),
}

/// Looks at one TAP read (`read` = virtio header, then the Ethernet frame,
/// exactly the bytes read) and says what it is. A partial checksum of a
/// single frame is completed in place and its `F_NEEDS_CSUM` flag cleared,
/// so calling this twice on one read is harmless.
pub fn classify_read(read: &mut [u8]) -> Result<L2Read, L2OffloadError> {
    let short = L2OffloadError::ShortRead { len: read.len() };
    let hdr = VnetHdr::parse(read).ok_or(short)?;
    let (head, frame) = read.split_at_mut(VNET_HDR_LEN);
    let (l2_len, ethertype) = l2_header(frame).ok_or(short)?;
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(frame, l2_len, ethertype, hdr)?;
            head[0] &= !F_NEEDS_CSUM;
        }
        return Ok(L2Read::Single(frame.len()));
    }
    check_super_frame(frame, l2_len, ethertype, hdr).map(L2Read::Segmented)
}

/// Fills in a CHECKSUM_PARTIAL checksum of a single frame: the field
/// already holds the pseudo-header sum, so summing across it adds it in.
fn complete_checksum(
    frame: &mut [u8],
    l2_len: usize,
    ethertype: u16,
    hdr: VnetHdr,
) -> Result<(), L2OffloadError> {
    let bad = L2OffloadError::BadChecksumPlace {
        csum_start: hdr.csum_start,
        csum_offset: hdr.csum_offset,
    };
    // Sum to the end of the IP packet, not over Ethernet padding.
    let end = ip_end(frame, l2_len, ethertype)?;
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if start < l2_len || at + 2 > end {
        return Err(bad);
    }
    // As the kernel's skb_checksum_help: a computed 0 is sent as 0xffff
    // (for UDP, 0 would mean "no checksum").
    let value = match checksum::finish(checksum::data(&frame[start..end])) {
        0 => 0xffff,
        v => v,
    };
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Checks a GSO frame the way wireguard-go checks a TUN super-packet: the
/// kernel's `hdr_len` is not trusted (on TAP it is the linear length),
/// the headers are re-read from the frame.
fn check_super_frame(
    frame: &[u8],
    l2_len: usize,
    ethertype: u16,
    hdr: VnetHdr,
) -> Result<SuperFrame, L2OffloadError> {
    let gso_type = hdr.gso_type;
    let mismatch = L2OffloadError::GsoTypeMismatch {
        gso_type,
        ethertype,
    };
    let ipv6 = match ethertype {
        ETHERTYPE_IPV4 => false,
        ETHERTYPE_IPV6 => true,
        _ => return Err(mismatch),
    };
    let transport = match (gso_type & !GSO_ECN, gso_type & GSO_ECN != 0) {
        (GSO_TCPV4, _) if !ipv6 => Transport::Tcp,
        (GSO_TCPV6, _) if ipv6 => Transport::Tcp,
        (GSO_UDP_L4, false) => Transport::Udp,
        (GSO_TCPV4 | GSO_TCPV6, _) | (GSO_UDP_L4, true) => return Err(mismatch),
        _ => return Err(L2OffloadError::UnsupportedGsoType { gso_type }),
    };
    if hdr.gso_size == 0 {
        return Err(L2OffloadError::ZeroGsoSize);
    }
    let (protocol, csum_offset) = match transport {
        Transport::Tcp => (IPPROTO_TCP, TCP_CSUM_OFFSET),
        Transport::Udp => (IPPROTO_UDP, UDP_CSUM_OFFSET),
    };
    let transport_start = usize::from(hdr.csum_start);
    let min_ip = if ipv6 {
        IPV6_HEADER_LEN
    } else {
        IPV4_HEADER_LEN
    };
    if hdr.csum_offset != csum_offset || transport_start < l2_len + min_ip {
        return Err(L2OffloadError::BadChecksumPlace {
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
        });
    }
    let ip = frame.get(l2_len..).ok_or(L2OffloadError::BadIpHeader)?;
    let ip_header_len = transport_start - l2_len;
    if ip.len() < ip_header_len {
        return Err(L2OffloadError::BadIpHeader);
    }
    if ipv6 {
        // With extension headers the checksum starts after them; the next
        // header is only checked when there are none.
        if ip[0] >> 4 != 6 {
            return Err(L2OffloadError::BadIpHeader);
        }
        if ip_header_len == IPV6_HEADER_LEN && ip[field::V6_NEXT_HEADER] != protocol {
            return Err(mismatch);
        }
    } else {
        if ip[0] >> 4 != 4 || usize::from(ip[0] & 0x0f) * 4 != ip_header_len {
            return Err(L2OffloadError::BadIpHeader);
        }
        if ip[field::V4_PROTOCOL] != protocol {
            return Err(mismatch);
        }
    }
    let end = ip_end(frame, l2_len, ethertype)?;
    if end != frame.len() {
        return Err(L2OffloadError::IpLengthMismatch {
            declared: end - l2_len,
            actual: frame.len() - l2_len,
        });
    }
    let transport_len = match transport {
        Transport::Udp => UDP_HEADER_LEN,
        Transport::Tcp => {
            let offset = *frame
                .get(transport_start + field::TCP_DATA_OFFSET)
                .ok_or(L2OffloadError::BadTransportHeader)?;
            usize::from(offset >> 4) * 4
        }
    };
    let headers_len = transport_start + transport_len;
    if transport_len < UDP_HEADER_LEN
        || (transport == Transport::Tcp && transport_len < TCP_HEADER_LEN)
        || headers_len > frame.len()
    {
        return Err(L2OffloadError::BadTransportHeader);
    }
    let gso_size = usize::from(hdr.gso_size);
    let payload = frame.len() - headers_len;
    Ok(SuperFrame {
        frame_len: frame.len(),
        l2_len,
        transport_start,
        headers_len,
        gso_size,
        ipv6,
        transport,
        count: payload.div_ceil(gso_size).max(1),
    })
}

/// Splits the super-frame `frame` (the read after its virtio header, as
/// classified into `sf`) into Ethernet frames, segment `i` written at
/// `offset` in `slots[i]` with its length in `sizes[i]`. Each segment gets
/// the Ethernet header, its IP length (and for IPv4 the next ID and the
/// header checksum), its TCP sequence number (FIN and PSH only on the
/// last, CWR only on the first) or UDP length, and a complete checksum.
/// Returns the segment count.
pub fn split_super_frame<B: AsMut<[u8]>>(
    frame: &[u8],
    sf: &SuperFrame,
    slots: &mut [B],
    sizes: &mut [usize],
    offset: usize,
) -> Result<usize, L2OffloadError> {
    if frame.len() != sf.frame_len {
        return Err(L2OffloadError::FrameMismatch {
            expected: sf.frame_len,
            actual: frame.len(),
        });
    }
    let room = slots.len().min(sizes.len());
    if sf.count > room {
        return Err(L2OffloadError::TooManySegments {
            needed: sf.count,
            slots: room,
        });
    }
    let needed = offset.saturating_add(sf.segment_len());
    for slot in slots[..sf.count].iter_mut() {
        let available = slot.as_mut().len();
        if available < needed {
            return Err(L2OffloadError::SlotTooSmall { needed, available });
        }
    }
    let (l2, ts, hl) = (sf.l2_len, sf.transport_start, sf.headers_len);
    let protocol = match sf.transport {
        Transport::Tcp => IPPROTO_TCP,
        Transport::Udp => IPPROTO_UDP,
    };
    let csum_at = ts
        + usize::from(match sf.transport {
            Transport::Tcp => TCP_CSUM_OFFSET,
            Transport::Udp => UDP_CSUM_OFFSET,
        });
    let first_seq = be32(frame, ts + field::TCP_SEQ.start).unwrap_or(0);
    let first_id = be16(frame, l2 + field::V4_IDENT.start).unwrap_or(0);
    let pseudo_ip = &frame[l2..];
    let payload = &frame[hl..];
    for (i, (slot, size)) in slots.iter_mut().zip(sizes.iter_mut()).enumerate() {
        if i == sf.count {
            break;
        }
        let chunk_start = (i * sf.gso_size).min(payload.len());
        let chunk_end = (chunk_start + sf.gso_size).min(payload.len());
        let last = i + 1 == sf.count;
        let seg_len = hl + chunk_end - chunk_start;
        let out = &mut slot.as_mut()[offset..offset + seg_len];
        out[..hl].copy_from_slice(&frame[..hl]);
        out[hl..].copy_from_slice(&payload[chunk_start..chunk_end]);
        let ip_len = seg_len - l2;
        let ip = &mut out[l2..ts];
        if sf.ipv6 {
            let len = (ip_len - IPV6_HEADER_LEN) as u16;
            ip[field::V6_LENGTH].copy_from_slice(&len.to_be_bytes());
        } else {
            ip[field::V4_LENGTH].copy_from_slice(&(ip_len as u16).to_be_bytes());
            let id = first_id.wrapping_add(i as u16);
            ip[field::V4_IDENT].copy_from_slice(&id.to_be_bytes());
            fill_ipv4_checksum(ip);
        }
        let transport_len = seg_len - ts;
        let th = &mut out[ts..];
        match sf.transport {
            Transport::Tcp => {
                let seq = first_seq.wrapping_add((i * sf.gso_size) as u32);
                th[field::TCP_SEQ].copy_from_slice(&seq.to_be_bytes());
                if !last {
                    th[field::TCP_FLAGS] &= !(TCP_FIN | TCP_PSH);
                }
                if i > 0 {
                    th[field::TCP_FLAGS] &= !TCP_CWR;
                }
            }
            Transport::Udp => {
                th[field::UDP_LENGTH].copy_from_slice(&(transport_len as u16).to_be_bytes());
            }
        }
        out[csum_at..csum_at + 2].fill(0);
        let sum = checksum::combine(&[
            pseudo_header(pseudo_ip, sf.ipv6, protocol, transport_len),
            checksum::data(&out[ts..]),
        ]);
        let value = match (checksum::finish(sum), sf.transport) {
            (0, Transport::Udp) => 0xffff,
            (v, _) => v,
        };
        out[csum_at..csum_at + 2].copy_from_slice(&value.to_be_bytes());
        *size = seg_len;
    }
    Ok(sf.count)
}

/// One call per TAP read: classifies `read` (virtio header first) and
/// writes its frames at `offset` into `slots` (a single frame is copied
/// into `slots[0]`), their lengths into `sizes`. Returns the frame count.
pub fn split_read<B: AsMut<[u8]>>(
    read: &mut [u8],
    slots: &mut [B],
    sizes: &mut [usize],
    offset: usize,
) -> Result<usize, L2OffloadError> {
    match classify_read(read)? {
        L2Read::Single(len) => {
            let (Some(slot), Some(size)) = (slots.first_mut(), sizes.first_mut()) else {
                return Err(L2OffloadError::TooManySegments {
                    needed: 1,
                    slots: 0,
                });
            };
            let slot = slot.as_mut();
            let needed = offset.saturating_add(len);
            if slot.len() < needed {
                return Err(L2OffloadError::SlotTooSmall {
                    needed,
                    available: slot.len(),
                });
            }
            slot[offset..needed].copy_from_slice(&read[VNET_HDR_LEN..]);
            *size = len;
            Ok(1)
        }
        L2Read::Segmented(sf) => {
            split_super_frame(&read[VNET_HDR_LEN..], &sf, slots, sizes, offset)
        }
    }
}

/// One frame to write to the TAP: `bufs[buf][start..start + len]`, the
/// virtio header first. One write(2) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameWrite {
    /// Index of the buffer it is in.
    pub buf: usize,
    /// Where the virtio header starts (`headroom - VNET_HDR_LEN`).
    pub start: usize,
    /// Header plus frame.
    pub len: usize,
    /// How many received frames it carries (1: written as it came).
    pub segments: usize,
}

/// Totals since the coalescer was made, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroStats {
    /// Frames given to [`L2Coalescer::coalesce`].
    pub frames: u64,
    /// Writes it returned.
    pub writes: u64,
    /// Writes that were super-frames (two or more segments).
    pub super_frames: u64,
    /// TCP segments not merged because their checksum (or IPv4 header
    /// checksum) was wrong: a merged frame's checksum is recomputed, so a
    /// corrupt segment must not hide in one.
    pub bad_checksums: u64,
}

/// What the coalescer needs to know of one TCP frame.
#[derive(Debug, Clone, Copy)]
struct TcpFrame {
    l2_len: usize,
    ipv6: bool,
    ip_len: usize,
    tcp_len: usize,
    /// Frame length according to the IP header (without Ethernet padding).
    len: usize,
    seq: u32,
    flags: u8,
    /// IPv4 identification and don't-fragment bit.
    ident: u16,
    dont_frag: bool,
}

impl TcpFrame {
    fn parse(frame: &[u8]) -> Option<TcpFrame> {
        let (l2_len, ethertype) = l2_header(frame)?;
        let ip = frame.get(l2_len..)?;
        let (ipv6, ip_len, declared) = match ethertype {
            ETHERTYPE_IPV4 => {
                let ver_ihl = *ip.first()?;
                let ip_len = usize::from(ver_ihl & 0x0f) * 4;
                let frag = be16(ip, field::V4_FRAG.start)?;
                if ver_ihl >> 4 != 4
                    || ip_len < IPV4_HEADER_LEN
                    || *ip.get(field::V4_PROTOCOL)? != IPPROTO_TCP
                    || frag & 0x3fff != 0
                {
                    return None;
                }
                (
                    false,
                    ip_len,
                    usize::from(be16(ip, field::V4_LENGTH.start)?),
                )
            }
            ETHERTYPE_IPV6 => {
                if *ip.first()? >> 4 != 6 || *ip.get(field::V6_NEXT_HEADER)? != IPPROTO_TCP {
                    return None;
                }
                let payload = usize::from(be16(ip, field::V6_LENGTH.start)?);
                (true, IPV6_HEADER_LEN, IPV6_HEADER_LEN + payload)
            }
            _ => return None,
        };
        if declared > ip.len() {
            return None;
        }
        let tcp = ip.get(ip_len..declared)?;
        let tcp_len = usize::from(*tcp.get(field::TCP_DATA_OFFSET)? >> 4) * 4;
        if !(TCP_HEADER_LEN..=TCP_MAX_HEADER_LEN).contains(&tcp_len) || tcp_len > tcp.len() {
            return None;
        }
        Some(TcpFrame {
            l2_len,
            ipv6,
            ip_len,
            tcp_len,
            len: l2_len + declared,
            seq: be32(tcp, field::TCP_SEQ.start)?,
            flags: tcp[field::TCP_FLAGS],
            ident: if ipv6 {
                0
            } else {
                be16(ip, field::V4_IDENT.start)?
            },
            dont_frag: !ipv6 && ip[field::V4_FLAGS] & 0x40 != 0,
        })
    }

    fn transport_start(&self) -> usize {
        self.l2_len + self.ip_len
    }

    fn headers_len(&self) -> usize {
        self.transport_start() + self.tcp_len
    }

    fn payload_len(&self) -> usize {
        self.len - self.headers_len()
    }

    /// Byte ranges that name the connection: Ethernet header, IP
    /// addresses, ports.
    fn same_connection(&self, a: &[u8], other: &TcpFrame, b: &[u8]) -> bool {
        let addrs = if self.ipv6 {
            field::V6_ADDRS
        } else {
            field::V4_ADDRS
        };
        let (ip, ts) = (self.l2_len, self.transport_start());
        let (ip_b, ts_b) = (other.l2_len, other.transport_start());
        self.l2_len == other.l2_len
            && self.ipv6 == other.ipv6
            && a[..ip] == b[..ip_b]
            && a[ip + addrs.start..ip + addrs.end] == b[ip_b + addrs.start..ip_b + addrs.end]
            && a[ts + field::PORTS.start..ts + field::PORTS.end]
                == b[ts_b + field::PORTS.start..ts_b + field::PORTS.end]
    }

    /// Whether the TCP checksum (and IPv4 header checksum) verify.
    fn checksums_ok(&self, frame: &[u8]) -> bool {
        let ip = &frame[self.l2_len..self.transport_start()];
        if !self.ipv6 && checksum::data(ip) != 0xffff {
            return false;
        }
        let tcp = &frame[self.transport_start()..self.len];
        let pseudo = pseudo_header(&frame[self.l2_len..], self.ipv6, IPPROTO_TCP, tcp.len());
        checksum::combine(&[pseudo, checksum::data(tcp)]) == 0xffff
    }
}

/// A run of segments being merged into the buffer of its first frame.
#[derive(Debug, Clone, Copy)]
struct Item {
    write: usize,
    head: TcpFrame,
    /// Merged frame length so far.
    len: usize,
    gso_size: usize,
    next_seq: u32,
    next_ident: u16,
    segments: usize,
    /// Whether a later segment of its connection may still be appended.
    open: bool,
    checksums_checked: bool,
}

/// TCP GRO for writes to a TAP with IFF_VNET_HDR. Keep one per worker:
/// its lists are allocated once (for `batch` frames) and reused.
#[derive(Debug)]
pub struct L2Coalescer {
    items: Vec<Item>,
    writes: Vec<FrameWrite>,
    stats: GroStats,
}

impl L2Coalescer {
    /// A coalescer for batches of up to `batch` frames (larger batches
    /// work too, at the cost of growing its lists once).
    pub fn new(batch: usize) -> L2Coalescer {
        L2Coalescer {
            items: Vec::with_capacity(batch),
            writes: Vec::with_capacity(batch),
            stats: GroStats::default(),
        }
    }

    /// Totals since this coalescer was made.
    pub fn stats(&self) -> GroStats {
        self.stats
    }

    /// Coalesces a batch of received Ethernet frames for writing to the
    /// TAP. Frame `i` is `bufs[i][headroom..headroom + lens[i]]`; the
    /// [`VNET_HDR_LEN`] bytes in front of it are free for the virtio
    /// header, and the rest of `bufs[i]` after the frame is room for the
    /// segments merged into it (give 64 KiB plus headers for full
    /// coalescing; smaller buffers just merge less). Empty frames are
    /// skipped.
    ///
    /// Merged are consecutive TCP segments of one connection (same
    /// Ethernet header, addresses and ports) with the same ACK number,
    /// window, TCP options, TTL/hop limit and TOS/traffic class and flow
    /// label, flags ACK or ACK|PSH only, IPv4 IDs counting up (or DF set),
    /// contiguous sequence numbers, each as long as the first but the last
    /// (PSH or a shorter segment ends a run), valid checksums, 64 KiB at
    /// most. Returns the writes in batch order: each connection's frames
    /// keep their order.
    pub fn coalesce<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        lens: &[usize],
        headroom: usize,
    ) -> Result<&[FrameWrite], L2OffloadError> {
        self.items.clear();
        self.writes.clear();
        if headroom < VNET_HDR_LEN {
            return Err(L2OffloadError::HeadroomTooSmall { headroom });
        }
        for (index, &len) in lens.iter().enumerate() {
            let fits = bufs
                .get(index)
                .is_some_and(|b| headroom.saturating_add(len) <= b.as_ref().len());
            if !fits {
                return Err(L2OffloadError::FrameOutsideBuffer {
                    index,
                    len,
                    headroom,
                });
            }
        }
        for (index, &len) in lens.iter().enumerate() {
            if len == 0 {
                continue;
            }
            self.stats.frames += 1;
            if !self.try_merge(bufs, index, len, headroom) {
                self.writes.push(FrameWrite {
                    buf: index,
                    start: headroom - VNET_HDR_LEN,
                    len: VNET_HDR_LEN + len,
                    segments: 1,
                });
                bufs[index].as_mut()[headroom - VNET_HDR_LEN..headroom].fill(0);
            }
        }
        for item in &self.items {
            if item.segments > 1 {
                let write = &mut self.writes[item.write];
                write.len = VNET_HDR_LEN + item.len;
                write.segments = item.segments;
                finish_super_frame(bufs[write.buf].as_mut(), headroom, item);
                self.stats.super_frames += 1;
            }
        }
        self.stats.writes += self.writes.len() as u64;
        Ok(&self.writes)
    }

    /// Merges frame `index` into an earlier run of its connection, or
    /// starts a run with it; false if it is to be written on its own
    /// (which it also is when it starts a run).
    fn try_merge<B: AsRef<[u8]> + AsMut<[u8]>>(
        &mut self,
        bufs: &mut [B],
        index: usize,
        len: usize,
        headroom: usize,
    ) -> bool {
        let (before, rest) = bufs.split_at_mut(index);
        let frame = &rest[0].as_ref()[headroom..headroom + len];
        let Some(tcp) = TcpFrame::parse(frame) else {
            return false;
        };
        // As in the kernel, no IPv4 options and no padding.
        let candidate = tcp.len == len
            && (tcp.ipv6 || tcp.ip_len == IPV4_HEADER_LEN)
            && tcp.payload_len() > 0
            && (tcp.flags == TCP_ACK || tcp.flags == TCP_ACK | TCP_PSH);
        // The open run of this connection, if any: at most one, the latest.
        let open = self.items.iter().rposition(|item| {
            item.open && {
                let head = &before[self.writes[item.write].buf].as_ref()[headroom..];
                item.head.same_connection(head, &tcp, frame)
            }
        });
        if let Some(at) = open {
            let item = &mut self.items[at];
            let buf = self.writes[item.write].buf;
            let head = &mut before[buf].as_mut()[headroom..];
            if candidate && can_append(head, item, frame, &tcp) {
                if !item.checksums_checked {
                    item.checksums_checked = true;
                    if !item.head.checksums_ok(head) {
                        self.stats.bad_checksums += 1;
                        item.open = false;
                    }
                }
                if !tcp.checksums_ok(frame) {
                    self.stats.bad_checksums += 1;
                    item.open = false;
                    return false;
                }
                if item.open {
                    let payload = &frame[tcp.headers_len()..len];
                    let end = item.len + payload.len();
                    if end <= head.len() {
                        head[item.len..end].copy_from_slice(payload);
                        item.len = end;
                        item.next_seq = item.next_seq.wrapping_add(payload.len() as u32);
                        item.next_ident = item.next_ident.wrapping_add(1);
                        item.segments += 1;
                        if tcp.flags & TCP_PSH != 0 {
                            head[item.head.transport_start() + field::TCP_FLAGS] |= TCP_PSH;
                        }
                        item.open = payload.len() == item.gso_size && tcp.flags & TCP_PSH == 0;
                        return true;
                    }
                }
            }
            // Anything else of the connection ends its run, so nothing
            // after this frame is merged in front of it.
            self.items[at].open = false;
        }
        if candidate {
            self.items.push(Item {
                write: self.writes.len(),
                head: tcp,
                len,
                gso_size: tcp.payload_len(),
                next_seq: tcp.seq.wrapping_add(tcp.payload_len() as u32),
                next_ident: tcp.ident.wrapping_add(1),
                segments: 1,
                open: tcp.flags & TCP_PSH == 0,
                checksums_checked: false,
            });
        }
        false
    }
}

/// Whether `frame` (a candidate segment of `item`'s connection) continues
/// `item`'s run: the header rules of the kernel's GRO (tcp_gro_receive,
/// inet_gro_receive, ipv6_gro_receive) and wireguard-go's tcpGRO.
fn can_append(head: &[u8], item: &Item, frame: &[u8], tcp: &TcpFrame) -> bool {
    let h = &item.head;
    let ip = h.l2_len;
    let ts = h.transport_start();
    let payload = tcp.payload_len();
    let ip_equal = if h.ipv6 {
        head[ip + field::V6_VER_TC_FLOW.start..ip + field::V6_VER_TC_FLOW.end]
            == frame[ip + field::V6_VER_TC_FLOW.start..ip + field::V6_VER_TC_FLOW.end]
            && head[ip + field::V6_HOP_LIMIT] == frame[ip + field::V6_HOP_LIMIT]
    } else {
        head[ip + field::V4_TOS] == frame[ip + field::V4_TOS]
            && head[ip + field::V4_FLAGS] == frame[ip + field::V4_FLAGS]
            && head[ip + field::V4_TTL] == frame[ip + field::V4_TTL]
            && (tcp.dont_frag || tcp.ident == item.next_ident)
    };
    // Merged lengths must fit the IP length fields.
    let ip_len_after = item.len + payload - ip - if h.ipv6 { IPV6_HEADER_LEN } else { 0 };
    ip_equal
        && h.tcp_len == tcp.tcp_len
        && head[ts + field::TCP_ACK.start..ts + field::TCP_ACK.end]
            == frame[ts + field::TCP_ACK.start..ts + field::TCP_ACK.end]
        && head[ts + field::TCP_WINDOW.start..ts + field::TCP_WINDOW.end]
            == frame[ts + field::TCP_WINDOW.start..ts + field::TCP_WINDOW.end]
        && head[ts + TCP_HEADER_LEN..ts + h.tcp_len] == frame[ts + TCP_HEADER_LEN..ts + tcp.tcp_len]
        && tcp.seq == item.next_seq
        && payload <= item.gso_size
        && ip_len_after <= MAX_IP_LEN
}

/// Turns the run in `buf` into a super-frame: IP length (and IPv4 header
/// checksum), the pseudo-header sum in the TCP checksum field, and the
/// virtio header in front.
fn finish_super_frame(buf: &mut [u8], headroom: usize, item: &Item) {
    let h = &item.head;
    let frame = &mut buf[headroom..headroom + item.len];
    let ip_packet_len = item.len - h.l2_len;
    let ts = h.transport_start();
    let ip = &mut frame[h.l2_len..ts];
    let gso_type = if h.ipv6 {
        let len = (ip_packet_len - IPV6_HEADER_LEN) as u16;
        ip[field::V6_LENGTH].copy_from_slice(&len.to_be_bytes());
        GSO_TCPV6
    } else {
        ip[field::V4_LENGTH].copy_from_slice(&(ip_packet_len as u16).to_be_bytes());
        fill_ipv4_checksum(ip);
        GSO_TCPV4
    };
    let pseudo = pseudo_header(&frame[h.l2_len..], h.ipv6, IPPROTO_TCP, item.len - ts);
    let csum_at = ts + usize::from(TCP_CSUM_OFFSET);
    frame[csum_at..csum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type,
        hdr_len: h.headers_len() as u16,
        gso_size: item.gso_size as u16,
        csum_start: ts as u16,
        csum_offset: TCP_CSUM_OFFSET,
    };
    buf[headroom - VNET_HDR_LEN..headroom].copy_from_slice(&hdr.to_bytes());
}

#[cfg(test)]
mod tests;
