//! The system layer: links, addresses, routes, neighbours, MTU and XDP
//! attachment, all over rtnetlink. Messages are `netlink-packet-route`'s
//! typed rtnetlink messages (the rust-netlink project), sent over one
//! blocking `netlink-sys` socket. `rtnetlink` (the same project's
//! high-level crate) is async and would bring a tokio runtime into a
//! router whose threads are mio loops and into a CNI plugin that lives for
//! one request; [`Netlink`] is the synchronous core of what it does.
//!
//! Nothing here runs `ip` or reads `/proc` or `/sys`: netlink answers for
//! the caller's network namespace, where `/sys` belongs to whichever
//! namespace mounted it.
//!
//! A socket belongs to the network namespace of the thread that opened it,
//! so another namespace is configured through a socket opened on a thread
//! that has entered it ([`in_netns`]).
//!
//! - [`link`]: links by name or index, create (veth, bridge), delete, up,
//!   MTU, bridge ports (controller, isolation, FDB flush), alias,
//!   per-interface IPv4 settings.
//! - [`addr`]: addresses: list, add, delete, which link holds an address.
//! - [`route`]: the route to a destination (RTM_GETROUTE), default routes,
//!   the main table, adding routes.
//! - [`neigh`]: neighbour lookup and permanent entries.
//! - [`xdp`]: attach, detach and query an interface's XDP program.
//! - [`nft`]: the one nftables table of `--masquerade` (NAT for pods
//!   leaving the pod network), over nfnetlink.

pub mod addr;
pub mod link;
pub mod neigh;
pub mod nft;
pub mod route;
pub mod xdp;

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use addr::Address;
pub use link::Link;
pub use route::{Route, RouteTo};
pub use xdp::{AttachMode, XdpProgram};

/// How long a request waits for the kernel's answer before it fails: a lost
/// reply must not hang the router or the CNI plugin.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `NLM_F_ACK_TLVS` (linux/netlink.h): the error message carries extended
/// ACK attributes after the request's header.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLMSGERR_ATTR_MSG`: the kernel's text for an error.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of the request header echoed in an error (with NETLINK_CAP_ACK).
const NLMSG_HDRLEN: usize = 16;

/// Why a system request failed. Each names what was asked (the interface,
/// address or route) and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The route netlink socket itself could not be set up.
    #[error("cannot {step} a route netlink socket: {source}{}", hint(source))]
    Socket {
        /// `open`, `bind`, `connect`, `configure`.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel refused the request (or the socket failed mid-request).
    #[error("{what}: {source}{}{}", kernel_text(kernel_says), hint(source))]
    Refused {
        /// What was asked, naming the interface or value, e.g. `create
        /// bridge weft`.
        what: String,
        /// The errno the kernel answered with.
        source: io::Error,
        /// The kernel's own explanation (extended ACK), when it gave one.
        kernel_says: Option<String>,
    },
    /// An interface a request names does not exist.
    #[error(
        "no interface named {name} in this network namespace{}",
        hint_missing(name)
    )]
    NoSuchLink {
        /// The name looked up.
        name: String,
    },
    /// A reply did not parse as rtnetlink.
    #[error("{what}: the kernel's reply did not parse ({detail})")]
    Malformed {
        /// What was asked.
        what: String,
        /// The decoder's complaint.
        detail: String,
    },
}

fn kernel_text(says: &Option<String>) -> String {
    says.as_ref()
        .map(|s| format!(" (the kernel says: {s})"))
        .unwrap_or_default()
}

fn hint_missing(name: &str) -> String {
    if name.len() > 15 {
        format!(
            " (interface names are at most 15 characters; {name:?} has {})",
            name.len()
        )
    } else {
        String::new()
    }
}

/// What to do about an errno, where there is one thing to do.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => "; run weft as root or give it CAP_NET_ADMIN",
        Some(libc::EAGAIN) => "; the kernel did not answer in time: try again",
        Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) => {
            "; this kernel has no route netlink (CONFIG_NET)"
        }
        _ => "",
    }
}

impl SysError {
    /// The errno behind the error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SysError::Socket { source, .. } | SysError::Refused { source, .. } => {
                source.raw_os_error()
            }
            SysError::NoSuchLink { .. } => Some(libc::ENODEV),
            SysError::Malformed { .. } => None,
        }
    }

    /// Whether the kernel answered "no such device / entry".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }

    /// Whether the kernel answered "already exists".
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// Whether the kernel answered "busy" (e.g. an XDP program is already
    /// attached and the request said not to replace it).
    pub fn is_busy(&self) -> bool {
        self.errno() == Some(libc::EBUSY)
    }
}

/// Result of a system request.
pub type Result<T> = std::result::Result<T, SysError>;

fn refused(what: impl Into<String>, source: io::Error) -> SysError {
    SysError::Refused {
        what: what.into(),
        source,
        kernel_says: None,
    }
}

fn socket_error(step: &'static str) -> impl FnOnce(io::Error) -> SysError {
    move |source| SysError::Socket { step, source }
}

/// A blocking rtnetlink socket in the namespace of the thread that opened
/// it. One request at a time; every request waits for its answer.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.socket.as_raw_fd())
            .finish()
    }
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network
    /// namespace, with [`DEFAULT_TIMEOUT`] for answers.
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(socket_error("open"))?;
        socket.bind_auto().map_err(socket_error("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(socket_error("connect"))?;
        // Errors carry only the request's header back (not the whole
        // request) and, where the kernel has one, a text saying why.
        // Kernels before 4.12 know neither option: not needed, just nicer.
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_ext_ack(true);
        let netlink = Netlink { socket, seq: 1 };
        netlink.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(netlink)
    }

    /// How long a request waits for its answer (EAGAIN after that).
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        socket2::SockRef::from(&self.socket)
            .set_read_timeout(Some(timeout))
            .map_err(socket_error("configure"))
    }

    /// Sends one request and collects every reply message until the ACK (or
    /// DONE for a dump). A kernel error becomes [`SysError::Refused`] naming
    /// `what`.
    fn request(
        &mut self,
        what: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| refused(format!("{what} (send)"), e))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| refused(format!("{what} (no answer)"), e))?;
            let mut offset = 0;
            while offset < bytes.len() {
                let rest = &bytes[offset..];
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(|e| {
                        SysError::Malformed {
                            what: what.to_string(),
                            detail: e.to_string(),
                        }
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(SysError::Malformed {
                        what: what.to_string(),
                        detail: "zero-length netlink message".into(),
                    });
                }
                // Messages are 4-byte aligned within a datagram.
                offset += (len + 3) & !3;
                if reply.header.sequence_number != self.seq {
                    continue; // a late answer to an earlier request
                }
                let ack_tlvs = reply.header.flags & NLM_F_ACK_TLVS != 0;
                match reply.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) => {
                            return Err(SysError::Refused {
                                what: what.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                                kernel_says: ack_tlvs
                                    .then(|| extended_ack_text(&e.header))
                                    .flatten(),
                            })
                        }
                        // An ACK (error 0) ends a non-dump request.
                        None => return Ok(replies),
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The kernel's error text from the extended-ACK attributes that follow
/// the echoed request header (NETLINK_CAP_ACK keeps the echo to the header).
fn extended_ack_text(after_code: &[u8]) -> Option<String> {
    let attributes = after_code.get(NLMSG_HDRLEN..)?;
    NlasIterator::new(attributes)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let text = nla.value();
            let end = text.iter().position(|b| *b == 0).unwrap_or(text.len());
            String::from_utf8_lossy(&text[..end]).trim().to_string()
        })
        .filter(|s| !s.is_empty())
}

/// The rtnetlink address family of `ip`.
fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Runs `f` on a new thread that has entered the network namespace `netns`
/// (an open nsfs file); sockets `f` opens belong to that namespace. The
/// calling thread never changes namespace.
pub fn in_netns<T: Send>(
    netns: &File,
    f: impl FnOnce() -> T + Send,
) -> std::result::Result<T, io::Error> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on an fd we hold open; it changes only this
            // thread, which ends when `f` returns.
            let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Whether interface `name` exists in this network namespace (one request
/// on a socket of its own; for a single check at start or exit).
pub fn link_exists(name: &str) -> Result<bool> {
    Netlink::open()?.link_exists(name)
}

/// The MTU of interface `name` (one request on a socket of its own).
pub fn interface_mtu(name: &str) -> Result<u32> {
    Ok(Netlink::open()?.require_link(name)?.mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_request_and_say_what_to_do() {
        let e = refused(
            "create bridge weft",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        let text = e.to_string();
        assert!(text.starts_with("create bridge weft: "), "{text}");
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
        let e = SysError::Refused {
            what: "attach XDP program to eth0".into(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
            kernel_says: Some("XDP program already attached".into()),
        };
        assert!(e.is_busy());
        assert!(e
            .to_string()
            .contains("the kernel says: XDP program already attached"));
        let e = SysError::NoSuchLink {
            name: "much-too-long-name".into(),
        };
        assert!(e.is_not_found());
        assert!(e.to_string().contains("at most 15"), "{e}");
    }

    #[test]
    fn extended_ack_text_is_total() {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        let text = b"Unknown device type\0";
        let len = 4 + text.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        buf.extend_from_slice(text);
        buf.resize((buf.len() + 3) & !3, 0);
        assert_eq!(
            extended_ack_text(&buf).as_deref(),
            Some("Unknown device type")
        );
        for end in 0..buf.len() {
            let _ = extended_ack_text(&buf[..end]);
        }
        assert_eq!(extended_ack_text(&[]), None);
    }

    /// Runs `f` on a thread in a new, empty network namespace (needs
    /// root); the namespace and everything in it go when the thread ends.
    fn in_private_netns(f: impl FnOnce() + Send) {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare changes only this thread's namespace.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// `tool args` run in the calling thread's namespace: an independent
    /// view of what the kernel did.
    fn shown(tool: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(tool)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn every_write_reaches_the_kernel_in_a_private_namespace() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root");
            return;
        }
        in_private_netns(|| {
            let mut n = Netlink::open().unwrap();
            let bridge = n.create_bridge("wtest-br").unwrap();
            assert!(bridge.is_bridge());
            assert!(n.create_bridge("wtest-br").unwrap_err().is_exists());
            n.set_mtu(bridge.index, "wtest-br", 1400).unwrap();
            let here = File::open("/proc/thread-self/ns/net").unwrap();
            n.create_veth("wtest-a", "wtest-b", here.as_raw_fd(), 1400)
                .unwrap();
            let a = n.require_link("wtest-a").unwrap();
            let b = n.require_link("wtest-b").unwrap();
            assert_eq!((a.kind.as_str(), a.mtu), ("veth", 1400));
            n.set_alias(a.index, "wtest-a", "weft-test").unwrap();
            n.set_controller(a.index, "wtest-a", bridge.index, "wtest-br")
                .unwrap();
            n.set_up(a.index, "wtest-a").unwrap();
            n.set_up(b.index, "wtest-b").unwrap();
            n.set_up(bridge.index, "wtest-br").unwrap();
            let a = n.require_link("wtest-a").unwrap();
            assert_eq!(a.controller, Some(bridge.index));
            assert_eq!(a.alias, "weft-test");
            assert!(a.up);

            n.set_bridge_port_isolated(a.index, "wtest-a").unwrap();
            assert!(shown("ip", &["-d", "link", "show", "dev", "wtest-a"]).contains("isolated on"));
            // A learned (non-static) entry goes with a port flush.
            let fdb = [
                "fdb",
                "add",
                "02:00:00:00:00:42",
                "dev",
                "wtest-a",
                "master",
                "dynamic",
            ];
            assert!(std::process::Command::new("bridge")
                .args(fdb)
                .status()
                .unwrap()
                .success());
            let show = ["fdb", "show", "dev", "wtest-a"];
            assert!(shown("bridge", &show).contains("02:00:00:00:00:42"));
            n.flush_bridge_port(a.index, "wtest-a").unwrap();
            assert!(!shown("bridge", &show).contains("02:00:00:00:00:42"));

            let ip: IpAddr = "10.213.0.1".parse().unwrap();
            assert_eq!(
                n.add_address(bridge.index, "wtest-br", ip, 24).unwrap(),
                addr::Added::Added
            );
            assert_eq!(
                n.add_address(bridge.index, "wtest-br", ip, 24).unwrap(),
                addr::Added::AlreadyThere
            );
            // (and the IPv6 link-local address the kernel gave it)
            let v4 = |n: &mut Netlink| {
                let all = n.addresses(bridge.index).unwrap();
                all.into_iter()
                    .filter(|(a, _)| a.is_ipv4())
                    .collect::<Vec<_>>()
            };
            assert_eq!(v4(&mut n), [(ip, 24)]);
            assert_eq!(n.link_holding(ip).unwrap().unwrap().name, "wtest-br");
            let to = n.route_to("10.213.0.9".parse().unwrap()).unwrap();
            assert_eq!(
                (to.oif, to.gateway, to.prefsrc),
                (bridge.index, None, Some(ip))
            );

            n.add_route(
                "10.214.0.0".parse().unwrap(),
                16,
                Some("10.213.0.2".parse().unwrap()),
                bridge.index,
                "wtest-br",
            )
            .unwrap();
            n.add_route("0.0.0.0".parse().unwrap(), 0, None, b.index, "wtest-b")
                .unwrap();
            let routes = n.main_routes(false).unwrap();
            assert!(routes
                .iter()
                .any(|r| r.prefix_len == 16 && r.gateway == Some("10.213.0.2".parse().unwrap())));
            assert_eq!(
                n.default_route_iface(false).unwrap().as_deref(),
                Some("wtest-b")
            );
            assert_eq!(n.default_route_iface(true).unwrap(), None);
            let to = n.route_to("10.214.1.1".parse().unwrap()).unwrap();
            assert_eq!(to.gateway, Some("10.213.0.2".parse().unwrap()));

            let mac = [2, 0, 0, 0, 0, 7];
            let neighbour: IpAddr = "10.213.0.2".parse().unwrap();
            assert_eq!(n.neighbour(bridge.index, neighbour).unwrap(), None);
            n.set_neighbour(bridge.index, "wtest-br", neighbour, &mac)
                .unwrap();
            assert_eq!(
                n.neighbour(bridge.index, neighbour).unwrap(),
                Some(crate::wire::ethernet::MacAddr(mac))
            );

            n.set_proxy_arp_and_forwarding(b.index, "wtest-b").unwrap();
            assert_eq!(
                std::fs::read_to_string("/proc/sys/net/ipv4/conf/wtest-b/proxy_arp")
                    .unwrap()
                    .trim(),
                "1"
            );
            assert_eq!(n.xdp_program(b.index).unwrap(), None);

            n.delete_address(bridge.index, "wtest-br", ip, 24).unwrap();
            assert_eq!(v4(&mut n), []);
            n.delete_link(a.index, "wtest-a").unwrap();
            assert!(!n.link_exists("wtest-b").unwrap());
            n.delete_link(bridge.index, "wtest-br").unwrap();
            assert!(!n.link_exists("wtest-br").unwrap());
            let gone = n.delete_link(bridge.index, "wtest-br").unwrap_err();
            assert!(gone.is_not_found(), "{gone}");
            assert!(
                gone.to_string().starts_with("delete interface wtest-br: "),
                "{gone}"
            );
        });
    }

    #[test]
    fn loopback_route_and_no_xdp_on_lo() {
        let mut netlink = Netlink::open().unwrap();
        let route = netlink.route_to("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(route.oif, 1, "{route:?}");
        // lo has no XDP program unless someone attached one.
        let _ = netlink.xdp_program(1).unwrap();
        let lo = netlink.require_link("lo").unwrap();
        assert_eq!(lo.index, 1);
        assert!(lo.mtu >= 1500);
        assert!(lo.up);
        assert_eq!(netlink.link_by_index(1).unwrap().unwrap().name, "lo");
        assert!(netlink.require_link("no-such-if0").is_err());
        assert!(!netlink.link_exists("no-such-if0").unwrap());
        assert!(link_exists("lo").unwrap());
        assert_eq!(interface_mtu("lo").unwrap(), lo.mtu);
        let held = netlink
            .link_holding("127.0.0.1".parse().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(held.name, "lo");
        assert!(netlink
            .addresses(1)
            .unwrap()
            .contains(&("127.0.0.1".parse().unwrap(), 8)));
    }
}
