//! Synchronous rtnetlink requests the AF_XDP driver needs: attach, detach
//! and query the XDP program of an interface (RTM_SETLINK/GETLINK with
//! IFLA_XDP), the route to a peer (RTM_GETROUTE) and the neighbour table
//! (RTM_GETNEIGH dump). Messages are built by hand: each is a header, one
//! fixed struct and a few attributes, and parsing is bounds-checked.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::wire::ethernet::MacAddr;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP: u16 = 0x300;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_GETROUTE: u16 = 26;
const RTM_GETNEIGH: u16 = 30;
const NLA_F_NESTED: u16 = 0x8000;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;

const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

/// XDP attach flags (linux/if_link.h).
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
/// Generic (SKB) mode: works on every interface, after the kernel built an skb.
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
/// Native (driver) mode: before any skb exists.
pub const XDP_FLAGS_DRV_MODE: u32 = 4;

/// Neighbour states that mean "this MAC can be used" (linux/neighbour.h):
/// REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80 | 0x40;

/// How an XDP program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver.
    Native,
    /// Generic / SKB.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// Several at once.
    Multi,
}

impl AttachMode {
    /// The attach flag that selects this mode (for detach).
    pub fn flag(self) -> u32 {
        match self {
            AttachMode::Native => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
            AttachMode::Offload => 8,
            AttachMode::Multi => 0,
        }
    }
}

/// What the driver needs to know about the underlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Hardware address (None if not Ethernet-like).
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Number of RX queues.
    pub rx_queues: u32,
}

/// The route the kernel would use towards a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Outgoing interface index.
    pub oif: u32,
    /// Gateway, when the peer is not on-link.
    pub gateway: Option<IpAddr>,
    /// Preferred source address.
    pub prefsrc: Option<IpAddr>,
}

/// A route netlink socket.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Walks netlink attributes: (type without flag bits, payload).
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let payload = &bytes[4..len];
        bytes = bytes.get(align4(len)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn u32_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

fn ip_of(payload: &[u8]) -> Option<IpAddr> {
    match payload.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(payload).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(payload).ok()?)),
        _ => None,
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

impl Rtnl {
    /// Opens a NETLINK_ROUTE socket.
    pub fn open() -> io::Result<Rtnl> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Errors about a request come back in-band (NLMSG_ERROR); a read
        // timeout keeps a lost reply from hanging the router.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Rtnl { fd, seq: 1 })
    }

    /// Sends one request and collects the payloads (after the nlmsghdr) of
    /// every reply message of type `want` until the request is complete.
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        want: u16,
    ) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: send of an initialised buffer on our socket.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: recv into our buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                if len < 16 || len > rest.len() {
                    break;
                }
                let payload = &rest[16..len];
                rest = rest.get(align4(len)..).unwrap_or(&[]);
                if mseq != seq {
                    continue; // a late reply to an earlier request
                }
                match mtype {
                    NLMSG_DONE => return Ok(replies),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        if code == 0 {
                            return Ok(replies); // ACK
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    t if t == want => {
                        replies.push(payload.to_vec());
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ifinfomsg(ifindex: u32) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body[0] = libc::AF_UNSPEC as u8;
        body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        body
    }

    /// Looks up an interface by name (netlink, so it answers for the
    /// caller's network namespace even where /sys belongs to another).
    pub fn link(&mut self, name: &str) -> io::Result<Link> {
        let mut body = Self::ifinfomsg(0);
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        push_attr(&mut body, IFLA_IFNAME, &cname);
        let replies = self.request(RTM_GETLINK, 0, &body, 16)?;
        let reply = replies.first().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}"))
        })?;
        let index = reply
            .get(4..8)
            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()) as u32)
            .unwrap_or(0);
        let mut link = Link {
            index,
            mac: None,
            mtu: 1500,
            rx_queues: 1,
        };
        for (kind, payload) in attrs(reply.get(16..).unwrap_or(&[])) {
            match kind {
                IFLA_ADDRESS => link.mac = MacAddr::from_bytes(payload),
                IFLA_MTU => link.mtu = u32_of(payload).unwrap_or(1500),
                IFLA_NUM_RX_QUEUES => link.rx_queues = u32_of(payload).unwrap_or(1).max(1),
                _ => {}
            }
        }
        Ok(link)
    }

    /// The XDP program attached to `ifindex`: (kernel program id, mode), or
    /// None when there is none.
    pub fn xdp_program(&mut self, ifindex: u32) -> io::Result<Option<(u32, AttachMode)>> {
        let replies = self.request(RTM_GETLINK, 0, &Self::ifinfomsg(ifindex), 16)?;
        let Some(link) = replies.first() else {
            return Ok(None);
        };
        let mut attached = 0u8;
        let mut prog_id = 0u32;
        for (kind, payload) in attrs(link.get(16..).unwrap_or(&[])) {
            if kind == IFLA_XDP {
                for (k, p) in attrs(payload) {
                    match k {
                        IFLA_XDP_ATTACHED => attached = p.first().copied().unwrap_or(0),
                        IFLA_XDP_PROG_ID => prog_id = u32_of(p).unwrap_or(0),
                        _ => {}
                    }
                }
            }
        }
        let mode = match attached {
            0 => return Ok(None),
            1 => AttachMode::Native,
            2 => AttachMode::Generic,
            3 => AttachMode::Offload,
            _ => AttachMode::Multi,
        };
        Ok(Some((prog_id, mode)))
    }

    /// Attaches program `prog_fd` (or detaches, with -1) with `flags`.
    pub fn set_xdp(&mut self, ifindex: u32, prog_fd: i32, flags: u32) -> io::Result<()> {
        let mut body = Self::ifinfomsg(ifindex);
        let mut nested = Vec::new();
        push_attr(&mut nested, IFLA_XDP_FD, &prog_fd.to_ne_bytes());
        push_attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
        push_attr(&mut body, IFLA_XDP | NLA_F_NESTED, &nested);
        self.request(RTM_SETLINK, NLM_F_ACK, &body, 0).map(|_| ())
    }

    /// The kernel's route to `dst` (RTM_GETROUTE, like `ip route get`).
    pub fn route_to(&mut self, dst: IpAddr) -> io::Result<Route> {
        let mut body = vec![0u8; 12];
        body[0] = family(dst);
        body[1] = if dst.is_ipv4() { 32 } else { 128 };
        push_attr(&mut body, RTA_DST, &ip_bytes(dst));
        let replies = self.request(RTM_GETROUTE, 0, &body, 24)?;
        let reply = replies
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no route to {dst}")))?;
        let mut route = Route {
            oif: 0,
            gateway: None,
            prefsrc: None,
        };
        for (kind, payload) in attrs(reply.get(12..).unwrap_or(&[])) {
            match kind {
                RTA_OIF => route.oif = u32_of(payload).unwrap_or(0),
                RTA_GATEWAY => route.gateway = ip_of(payload),
                RTA_PREFSRC => route.prefsrc = ip_of(payload),
                _ => {}
            }
        }
        Ok(route)
    }

    /// The usable link-layer address of neighbour `ip` on `ifindex`, from a
    /// neighbour table dump (None: unknown, incomplete or failed).
    pub fn neighbour(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<MacAddr>> {
        let mut body = vec![0u8; 12];
        body[0] = family(ip);
        let replies = self.request(RTM_GETNEIGH, NLM_F_DUMP, &body, 28)?;
        for reply in replies {
            let Some(header) = reply.get(..12) else {
                continue;
            };
            let index = u32::from_ne_bytes(header[4..8].try_into().unwrap());
            let state = u16::from_ne_bytes([header[8], header[9]]);
            if index != ifindex || state & NUD_USABLE == 0 {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for (kind, payload) in attrs(&reply[12..]) {
                match kind {
                    NDA_DST => dst = ip_of(payload),
                    NDA_LLADDR => mac = MacAddr::from_bytes(payload),
                    _ => {}
                }
            }
            if dst == Some(ip) {
                return Ok(mac);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_walk_is_total() {
        let mut buf = Vec::new();
        push_attr(&mut buf, 4, &7u32.to_ne_bytes());
        push_attr(&mut buf, 5, &[198, 18, 0, 1]);
        let got: Vec<_> = attrs(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(u32_of(got[0].1), Some(7));
        assert_eq!(ip_of(got[1].1), Some("198.18.0.1".parse().unwrap()));
        for end in 0..buf.len() {
            let _ = attrs(&buf[..end]).count();
        }
        assert_eq!(attrs(&[0xff, 0xff, 1, 0, 0]).count(), 0);
    }

    #[test]
    fn loopback_route_and_no_xdp_on_lo() {
        let mut rtnl = Rtnl::open().unwrap();
        let route = rtnl.route_to("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(route.oif, 1, "{route:?}");
        // lo has no XDP program unless someone attached one.
        let _ = rtnl.xdp_program(1).unwrap();
        let lo = rtnl.link("lo").unwrap();
        assert_eq!(lo.index, 1);
        assert!(lo.mtu >= 1500);
        assert!(rtnl.link("no-such-if0").is_err());
    }
}
