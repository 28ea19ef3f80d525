//! Segmentation offloads between weft and the kernel.
//!
//! - TUN with IFF_VNET_HDR and TSO/USO: the kernel hands weft TCP/UDP
//!   "super-packets" of up to 64 KiB with a 10-byte virtio_net header; weft
//!   splits them into path-sized segments itself ([`split_super_packet`],
//!   writing each segment straight into the slot it will be sealed in), and
//!   writes received segments back coalesced (tun-rs's GRO table).
//! - UDP GSO (UDP_SEGMENT): a run of equal-size datagrams to one peer leaves
//!   in one sendmsg ([`send_gso_slices`]); the kernel cuts it up.
//!
//! This is how wireguard-go (with Tailscale's changes) beats the kernel:
//! the per-packet cost is the syscall and the stack traversal, not the crypto.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use tun_rs::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN,
};

/// Length of the virtio_net header in front of every TUN read and write.
pub const VNET_HDR_LEN: usize = VIRTIO_NET_HDR_LEN;
const GSO_NONE: u8 = 0;
const F_NEEDS_CSUM: u8 = 1;
/// The kernel's limit on segments in one UDP GSO send (UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload one GSO send may carry in total.
pub const MAX_GSO_BYTES: usize = 65000;

/// What one TUN read held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperPacket {
    /// One ordinary packet of this length, at the offset after the header.
    Single(usize),
    /// A GSO packet to split: each segment is `segment_len` bytes (the last
    /// may be shorter) once split.
    Segmented {
        /// Bytes of each full segment (IP and transport headers included).
        segment_len: usize,
        /// How many segments it makes.
        count: usize,
    },
}

/// The IP + transport header length the kernel's header implies, checked
/// the way wireguard-go checks it (the kernel's hdr_len is not trusted).
fn header_len(hdr: &VirtioNetHdr, packet: &[u8]) -> io::Result<usize> {
    let csum_start = usize::from(hdr.csum_start);
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad GSO packet from TUN: {what}"),
        )
    };
    match hdr.gso_type & !0x80 {
        VIRTIO_NET_HDR_GSO_UDP_L4 => Ok(csum_start + 8),
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => {
            let off = *packet
                .get(csum_start + 12)
                .ok_or_else(|| bad("short TCP header"))?;
            let tcp_len = usize::from(off >> 4) * 4;
            if !(20..=60).contains(&tcp_len) {
                return Err(bad("TCP header length"));
            }
            Ok(csum_start + tcp_len)
        }
        _ => Err(bad("unknown gso_type")),
    }
}

/// Looks at a TUN read (`buf[..len]`, header first) and says what it is.
/// Completes a partial checksum of a single packet in place.
pub fn classify(buf: &mut [u8], len: usize) -> io::Result<(VirtioNetHdr, SuperPacket)> {
    if len <= VNET_HDR_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "TUN read shorter than the virtio header",
        ));
    }
    let mut hdr = VirtioNetHdr::decode(&buf[..VNET_HDR_LEN])?;
    let packet = &mut buf[VNET_HDR_LEN..len];
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_checksum(
                packet,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )?;
        }
        return Ok((hdr, SuperPacket::Single(packet.len())));
    }
    if hdr.gso_size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "GSO packet with gso_size 0",
        ));
    }
    let hl = header_len(&hdr, packet)?;
    if hl > packet.len() || hl < usize::from(hdr.csum_start) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "GSO header longer than the packet",
        ));
    }
    hdr.hdr_len = hl as u16;
    let payload = packet.len() - hl;
    let gso = usize::from(hdr.gso_size);
    let count = payload.div_ceil(gso).max(1);
    Ok((
        hdr,
        SuperPacket::Segmented {
            segment_len: hl + gso,
            count,
        },
    ))
}

/// Fills in a CHECKSUM_PARTIAL checksum: the field at `start + offset`
/// already holds the pseudo-header sum; add everything from `start` on.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> io::Result<()> {
    let at = start + offset;
    if at + 2 > packet.len() || start > packet.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checksum offset outside the packet",
        ));
    }
    // The field holds the pseudo-header sum, so summing across it adds it in.
    let value = crate::wire::checksum::finish(crate::wire::checksum::data(&packet[start..]));
    packet[at..at + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Splits the GSO packet at `input` (without its virtio header) into
/// `slots`, each segment written at `offset` inside its slot. Returns the
/// segment lengths in `sizes`; the count is returned.
pub fn split_super_packet<B: AsRef<[u8]> + AsMut<[u8]>>(
    input: &mut [u8],
    hdr: VirtioNetHdr,
    slots: &mut [B],
    sizes: &mut [usize],
    offset: usize,
) -> io::Result<usize> {
    let is_v6 = input.first().map(|b| b >> 4) == Some(6);
    tun_rs::gso_split(input, hdr, slots, sizes, offset, is_v6)
}

/// Sends the concatenation of `parts` as UDP datagrams of `segment` bytes
/// (the last may be shorter) with one sendmsg and UDP_SEGMENT. The parts
/// need not be contiguous: each sealed datagram can stay in its own buffer,
/// as long as every part but the last is exactly `segment` bytes.
pub fn send_gso_slices(
    fd: RawFd,
    parts: &[&[u8]],
    segment: u16,
    to: SocketAddr,
) -> io::Result<usize> {
    let (storage, namelen) = crate::datapath::sockaddr::to_storage(to);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_GSO_SEGMENTS];
    if parts.is_empty() || parts.len() > MAX_GSO_SEGMENTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "1 to 64 parts per GSO send",
        ));
    }
    for (slot, part) in iov.iter_mut().zip(parts) {
        *slot = libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        };
    }
    // Room for one cmsg carrying a u16.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain old data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &storage as *const _ as *mut libc::c_void;
    msg.msg_namelen = namelen;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = parts.len();
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    // SAFETY: the control buffer is large enough for one u16 cmsg (checked by CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
    }
    loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether an error from a GSO send means "this socket or device cannot do
/// UDP GSO" (fall back to sendmmsg for good) rather than a per-send failure.
pub fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn gso_send_arrives_as_separate_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = vec![0u8; 250];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i / 100) as u8;
        }
        match send_gso_slices(tx.as_raw_fd(), &[&buf], 100, rx.local_addr().unwrap()) {
            Ok(n) => assert_eq!(n, 250),
            // Kernels without UDP GSO: the caller falls back; nothing to test.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::ENOPROTOOPT) | Some(libc::EIO)
                ) =>
            {
                return
            }
            Err(e) => panic!("{e}"),
        }
        let mut got = vec![];
        let mut r = [0u8; 300];
        for _ in 0..3 {
            let n = rx.recv(&mut r).unwrap();
            got.push((n, r[0]));
        }
        assert_eq!(got, vec![(100, 0), (100, 1), (50, 2)]);
    }

    #[test]
    fn gso_from_separate_buffers() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b, c) = ([1u8; 80], [2u8; 80], [3u8; 30]);
        match send_gso_slices(tx.as_raw_fd(), &[&a, &b, &c], 80, rx.local_addr().unwrap()) {
            Ok(n) => assert_eq!(n, 190),
            Err(e) if gso_unsupported(&e) => return,
            Err(e) => panic!("{e}"),
        }
        let mut r = [0u8; 300];
        let got: Vec<_> = (0..3)
            .map(|_| {
                let n = rx.recv(&mut r).unwrap();
                (n, r[0])
            })
            .collect();
        assert_eq!(got, vec![(80, 1), (80, 2), (30, 3)]);
    }

    #[test]
    fn classify_rejects_short_and_accepts_plain() {
        let mut buf = [0u8; 64];
        assert!(classify(&mut buf, 5).is_err());
        buf[VNET_HDR_LEN] = 0x45;
        let (_, kind) = classify(&mut buf, 40).unwrap();
        assert_eq!(kind, SuperPacket::Single(30));
    }
}
