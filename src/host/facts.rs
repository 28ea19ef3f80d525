//! Facts about the host that decide which datapath weft may use.
//!
//! `Facts::gather` reads them with harmless, local probes only: `uname`,
//! read-only rtnetlink queries (links, routes, addresses, through
//! [`crate::sys`]), ethtool ioctls, one generic-netlink family lookup, opening (and closing)
//! an AF_XDP socket, and creating a non-persistent TUN device that vanishes
//! when its file descriptor is closed. No packet is sent. Every `--assume-*`
//! flag replaces one gathered fact through [`Assumptions`], so the decision
//! can be explored for hosts other than this one.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// A three-valued finding: a probe can fail to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    /// The capability is there.
    Yes,
    /// The capability is missing.
    No,
    /// The probe could not tell (the detail says why).
    Unknown,
}

/// State of one offload feature on the underlay interface, as ethtool reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// Offered by the driver and active.
    On,
    /// Offered by the driver but inactive.
    Off,
    /// Not in this kernel's or driver's feature list at all (UFO was removed
    /// from Linux in 4.14, for example), which is as safe as off.
    NotOffered,
    /// The ethtool ioctl failed; the detail says why.
    Unknown,
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Offload::On => "on",
            Offload::Off => "off",
            Offload::NotOffered => "not offered",
            Offload::Unknown => "unknown",
        })
    }
}

/// A probed state plus the human-readable evidence for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding<S> {
    /// What the probe concluded.
    pub state: S,
    /// Why: the evidence or the error, phrased for the operator.
    pub detail: String,
}

impl<S> Finding<S> {
    /// A finding with its evidence.
    pub fn new(state: S, detail: impl Into<String>) -> Self {
        Finding {
            state,
            detail: detail.into(),
        }
    }
}

/// How to find the underlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnderlaySelector {
    /// The operator named it (`--underlay-iface`).
    Iface(String),
    /// The interface that owns the local address of the route to this peer
    /// (`--peer`). Found with an unsent UDP `connect`.
    Peer(IpAddr),
    /// The interface of the lowest-metric IPv4 default route.
    DefaultRoute,
}

/// Everything preflight knows about the host. Plain data: `plan::decide`
/// is a pure function of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `uname -r`, or the `--assume-kernel` value.
    pub kernel_release: String,
    /// Where `kernel_release` came from ("uname" or "--assume-kernel").
    pub kernel_source: String,
    /// The kernel's build string: Ubuntu's `/proc/version_signature` where
    /// present, else `uname -v`, or the `--assume-kernel-build` value. Debian
    /// and Ubuntu name the stable patch level only here.
    pub kernel_build: String,
    /// The underlay interface name, or why it could not be found.
    pub underlay_iface: Result<String, String>,
    /// How the underlay interface was chosen (for the check line).
    pub underlay_source: String,
    /// Whether the underlay is IPv6 (only known when a peer address is given).
    pub underlay_ipv6: bool,
    /// The underlay interface MTU, or why it could not be read.
    pub underlay_mtu: Result<u32, String>,
    /// UDP fragmentation offload (`tx-udp-fragmentation`).
    pub ufo: Finding<Offload>,
    /// UDP segmentation offload (`tx-udp-segmentation`).
    pub uso: Finding<Offload>,
    /// Generic segmentation offload (`tx-generic-segmentation`).
    pub gso: Finding<Offload>,
    /// Whether the `ovs_datapath` generic-netlink family resolves.
    pub ovs_datapath: Finding<Tri>,
    /// Whether an AF_XDP socket can be opened.
    pub af_xdp: Finding<Tri>,
    /// The underlay interface's driver (ethtool GDRVINFO), e.g. `veth`.
    pub underlay_driver: Option<String>,
    /// Whether /dev/net/tun creates a TUN device with IFF_VNET_HDR.
    pub tun: Finding<Tri>,
    /// Whether that TUN device accepts CSUM|TSO4|TSO6 offloads.
    pub tun_offloads: Finding<Tri>,
    /// Whether it additionally accepts USO4|USO6 (UDP segmentation).
    pub tun_uso: Finding<Tri>,
}

/// Values that replace gathered facts (`--assume-*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assumptions {
    /// `--assume-kernel RELEASE`.
    pub kernel: Option<String>,
    /// `--assume-kernel-build BUILD` (what `uname -v` would say).
    pub kernel_build: Option<String>,
    /// `--assume-mtu N`.
    pub mtu: Option<u32>,
    /// `--assume-ufo on|off` (true = on).
    pub ufo: Option<bool>,
    /// `--assume-ovs yes|no`.
    pub ovs: Option<bool>,
    /// `--assume-xdp yes|no`.
    pub xdp: Option<bool>,
}

impl Facts {
    /// Reads every fact from the running host. Never fails: a probe that
    /// cannot tell records why in its finding.
    pub fn gather(underlay: UnderlaySelector) -> Facts {
        let (underlay_iface, underlay_source, underlay_ipv6) = match &underlay {
            UnderlaySelector::Iface(name) => {
                let found = if interface_exists(name) {
                    Ok(name.clone())
                } else {
                    Err(format!(
                        "interface {name} does not exist in this network namespace"
                    ))
                };
                (found, "from --underlay-iface".to_string(), false)
            }
            UnderlaySelector::Peer(peer) => {
                let found = iface_for_peer(*peer);
                let source = match &found {
                    Ok((_, Some(local))) => {
                        format!("route to peer {peer} via local address {local}")
                    }
                    _ => format!("route to peer {peer}"),
                };
                (found.map(|(name, _)| name), source, peer.is_ipv6())
            }
            UnderlaySelector::DefaultRoute => (
                default_route_iface(),
                "IPv4 default route".to_string(),
                false,
            ),
        };
        let unknown_offload =
            |why: &str| Finding::new(Offload::Unknown, format!("not probed: {why}"));
        let (underlay_mtu, ufo, uso, gso) = match &underlay_iface {
            Ok(name) => {
                let mtu = interface_mtu(name);
                let (ufo, uso, gso) = offload_features(name);
                (mtu, ufo, uso, gso)
            }
            Err(why) => (
                Err(format!("no underlay interface: {why}")),
                unknown_offload(why),
                unknown_offload(why),
                unknown_offload(why),
            ),
        };
        let (tun, tun_offloads, tun_uso) = probe_tun();
        let underlay_driver = underlay_iface
            .as_ref()
            .ok()
            .and_then(|name| driver_name(name));
        Facts {
            kernel_release: kernel_release(),
            kernel_source: "uname".to_string(),
            kernel_build: kernel_build(),
            underlay_iface,
            underlay_source,
            underlay_ipv6,
            underlay_mtu,
            ufo,
            uso,
            gso,
            ovs_datapath: probe_ovs_datapath(),
            af_xdp: probe_af_xdp(),
            underlay_driver,
            tun,
            tun_offloads,
            tun_uso,
        }
    }

    /// Replaces gathered facts with the operator's assumptions.
    pub fn apply(&mut self, assume: &Assumptions) {
        if let Some(kernel) = &assume.kernel {
            self.kernel_release = kernel.clone();
            self.kernel_source = "--assume-kernel".to_string();
            // The host's build string describes the host's kernel, not the
            // assumed one.
            self.kernel_build = String::new();
        }
        if let Some(build) = &assume.kernel_build {
            self.kernel_build = build.clone();
        }
        if let Some(mtu) = assume.mtu {
            self.underlay_mtu = Ok(mtu);
        }
        if let Some(ufo) = assume.ufo {
            let state = if ufo { Offload::On } else { Offload::Off };
            self.ufo = Finding::new(state, format!("{state} (--assume-ufo)"));
        }
        if let Some(ovs) = assume.ovs {
            let state = if ovs { Tri::Yes } else { Tri::No };
            let what = if ovs { "present" } else { "absent" };
            self.ovs_datapath = Finding::new(state, format!("{what} (--assume-ovs)"));
        }
        if let Some(xdp) = assume.xdp {
            let state = if xdp { Tri::Yes } else { Tri::No };
            let what = if xdp { "openable" } else { "not openable" };
            self.af_xdp = Finding::new(state, format!("{what} (--assume-xdp)"));
        }
    }
}

/// The running kernel's build string: Ubuntu's `/proc/version_signature`
/// (`Ubuntu 5.15.0-91.101-generic 5.15.131`) where it exists, else `uname -v`
/// (`#1 SMP PREEMPT_DYNAMIC Debian 6.1.172-1 (2026-05-22)`).
pub fn kernel_build() -> String {
    if let Ok(signature) = std::fs::read_to_string("/proc/version_signature") {
        return signature.trim().to_string();
    }
    // SAFETY: utsname is plain bytes; uname fills it with NUL-terminated strings.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates version within the array.
    let version = unsafe { CStr::from_ptr(uts.version.as_ptr()) };
    version.to_string_lossy().into_owned()
}

/// The running kernel's release parsed with its build string (see
/// [`KernelRelease::parse_with_build`]).
pub fn running_kernel() -> Result<super::kernel::KernelRelease, super::kernel::KernelParseError> {
    super::kernel::KernelRelease::parse_with_build(&kernel_release(), &kernel_build())
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain bytes; uname fills it with NUL-terminated strings.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates release within the array.
    let release = unsafe { CStr::from_ptr(uts.release.as_ptr()) };
    release.to_string_lossy().into_owned()
}

fn interface_exists(name: &str) -> bool {
    crate::sys::link_exists(name).unwrap_or(false)
}

/// Finds the interface the kernel's route to `peer` leaves through, and
/// the route's preferred source address (RTM_GETROUTE: nothing is sent).
pub fn iface_for_peer(peer: IpAddr) -> Result<(String, Option<IpAddr>), String> {
    let mut netlink = crate::sys::Netlink::open().map_err(|e| e.to_string())?;
    let route = netlink.route_to(peer).map_err(|e| match e {
        crate::sys::SysError::Refused { source, .. } => {
            format!("no route to peer {peer}: {source}")
        }
        e => e.to_string(),
    })?;
    let link = netlink
        .link_by_index(route.oif)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "the route to peer {peer} leaves through interface index {}, which does not exist",
                route.oif
            )
        })?;
    Ok((link.name, route.prefsrc))
}

/// The interface that holds `address`.
pub fn iface_owning_address(address: IpAddr) -> Result<Option<String>, String> {
    let mut netlink = crate::sys::Netlink::open().map_err(|e| e.to_string())?;
    Ok(netlink
        .link_holding(address)
        .map_err(|e| e.to_string())?
        .map(|link| link.name))
}

/// The interface of the lowest-metric IPv4 default route.
fn default_route_iface() -> Result<String, String> {
    crate::sys::Netlink::open()
        .and_then(|mut netlink| netlink.default_route_iface(false))
        .map_err(|e| format!("{e}; pass --underlay-iface"))?
        .ok_or_else(|| "no IPv4 default route; pass --underlay-iface IF or --peer ADDR".to_string())
}

/// A datagram socket used only as a handle for interface ioctls.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An ifreq naming `iface`, or an error if the name cannot fit.
fn ifreq_for(iface: &str) -> Result<libc::ifreq, String> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(format!("{iface:?} is not a valid interface name"));
    }
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    Ok(request)
}

/// The MTU of `iface` (rtnetlink: answers for this network namespace).
pub fn interface_mtu(iface: &str) -> Result<u32, String> {
    crate::sys::interface_mtu(iface).map_err(|e| e.to_string())
}

// ethtool ioctl commands (linux/ethtool.h).
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GUFO: u32 = 0x21;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// Sanity bound on the feature count a driver reports (Linux has ~70).
const MAX_FEATURES: u32 = 4096;

fn ethtool(iface: &str, socket: &OwnedFd, command: *mut u32) -> io::Result<()> {
    let mut request = ifreq_for(iface).map_err(io::Error::other)?;
    request.ifr_ifru.ifru_data = command.cast();
    // SAFETY: command points to a buffer sized for the ethtool command it holds.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The driver of `iface` (ethtool ETHTOOL_GDRVINFO), or `None`.
pub fn driver_name(iface: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32],
    // bus_info[32], erom_version[32], reserved2[12], five u32 counters.
    let mut info = [0u32; 49];
    info[0] = ETHTOOL_GDRVINFO;
    // SAFETY: plain socket() call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just opened and is owned here.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    ethtool(iface, &socket, info.as_mut_ptr()).ok()?;
    let bytes: Vec<u8> = info[1..9].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let name = String::from_utf8_lossy(&bytes[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// Reads the named feature bits of `iface`: (UFO, USO, GSO).
fn offload_features(iface: &str) -> (Finding<Offload>, Finding<Offload>, Finding<Offload>) {
    match feature_table(iface) {
        Ok(features) => {
            let lookup = |name: &str, note: &str| match features.iter().find(|(n, _)| n == name) {
                Some((_, true)) => Finding::new(Offload::On, format!("{name}: on ({iface})")),
                Some((_, false)) => Finding::new(Offload::Off, format!("{name}: off ({iface})")),
                None => Finding::new(
                    Offload::NotOffered,
                    format!("{name}: not offered by {iface}{note}"),
                ),
            };
            (
                lookup(
                    "tx-udp-fragmentation",
                    " (UFO was removed from Linux in 4.14)",
                ),
                lookup("tx-udp-segmentation", ""),
                lookup("tx-generic-segmentation", ""),
            )
        }
        Err(features_error) => {
            // Kernels before 2.6.39 lack ETHTOOL_GFEATURES; GUFO still answers there.
            let ufo = match legacy_ufo(iface) {
                Ok(true) => Finding::new(Offload::On, format!("UFO on {iface} (ETHTOOL_GUFO)")),
                Ok(false) => {
                    Finding::new(Offload::Off, format!("UFO off on {iface} (ETHTOOL_GUFO)"))
                }
                Err(e) => Finding::new(
                    Offload::Unknown,
                    format!("ethtool on {iface} failed ({features_error}; ETHTOOL_GUFO: {e})"),
                ),
            };
            let unknown = Finding::new(
                Offload::Unknown,
                format!("ethtool features of {iface}: {features_error}"),
            );
            (ufo, unknown.clone(), unknown)
        }
    }
}

/// (feature name, active) for every feature ethtool names on `iface`.
fn feature_table(iface: &str) -> Result<Vec<(String, bool)>, String> {
    let socket = ioctl_socket().map_err(|e| format!("cannot open a socket: {e}"))?;
    // ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
    let mut sset = [0u32; 5];
    sset[0] = ETHTOOL_GSSET_INFO;
    // sset_mask is a u64 in two u32 slots, in native byte order.
    let mask = 1u64 << ETH_SS_FEATURES;
    let mask_bytes = mask.to_ne_bytes();
    let (low, high) = mask_bytes.split_at(4);
    sset[2] = u32::from_ne_bytes(low.try_into().unwrap_or([0; 4]));
    sset[3] = u32::from_ne_bytes(high.try_into().unwrap_or([0; 4]));
    ethtool(iface, &socket, sset.as_mut_ptr()).map_err(|e| format!("ETHTOOL_GSSET_INFO: {e}"))?;
    let mut returned = [0u8; 8];
    returned[..4].copy_from_slice(&sset[2].to_ne_bytes());
    returned[4..].copy_from_slice(&sset[3].to_ne_bytes());
    if u64::from_ne_bytes(returned) & mask == 0 {
        return Err("driver reports no feature string set".to_string());
    }
    let count = sset[4].min(MAX_FEATURES);
    // ethtool_gstrings: cmd, string_set, len, then len * 32 bytes.
    let mut strings = vec![0u32; 3 + count as usize * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_FEATURES;
    strings[2] = count;
    ethtool(iface, &socket, strings.as_mut_ptr()).map_err(|e| format!("ETHTOOL_GSTRINGS: {e}"))?;
    let names: Vec<String> = strings
        .get(3..)
        .unwrap_or(&[])
        .iter()
        .flat_map(|word| word.to_ne_bytes())
        .collect::<Vec<u8>>()
        .chunks(ETH_GSTRING_LEN)
        .take(count as usize)
        .map(|chunk| {
            let end = chunk.iter().position(|b| *b == 0).unwrap_or(chunk.len());
            String::from_utf8_lossy(chunk.get(..end).unwrap_or(&[])).into_owned()
        })
        .collect();
    // ethtool_gfeatures: cmd, size, then size blocks of {available, requested, active, never_changed}.
    let blocks = count.div_ceil(32) as usize;
    let mut features = vec![0u32; 2 + blocks * 4];
    features[0] = ETHTOOL_GFEATURES;
    features[1] = blocks as u32;
    ethtool(iface, &socket, features.as_mut_ptr())
        .map_err(|e| format!("ETHTOOL_GFEATURES: {e}"))?;
    Ok(names
        .into_iter()
        .enumerate()
        .filter(|(_, name)| !name.is_empty())
        .map(|(bit, name)| {
            let active = features.get(2 + (bit / 32) * 4 + 2).copied().unwrap_or(0);
            (name, active & (1 << (bit % 32)) != 0)
        })
        .collect())
}

fn legacy_ufo(iface: &str) -> io::Result<bool> {
    let socket = ioctl_socket()?;
    let mut value = [ETHTOOL_GUFO, 0u32];
    ethtool(iface, &socket, value.as_mut_ptr())?;
    Ok(value[1] != 0)
}

/// Looks up the `ovs_datapath` generic-netlink family (CTRL_CMD_GETFAMILY).
fn probe_ovs_datapath() -> Finding<Tri> {
    match crate::datapath::odp::genl::resolve_family("ovs_datapath") {
        Ok(Some(id)) => Finding::new(Tri::Yes, format!("generic-netlink family ovs_datapath present (id {id})")),
        Ok(None) => Finding::new(
            Tri::No,
            "generic-netlink family ovs_datapath not found (openvswitch module not loaded or not built)",
        ),
        Err(e) => Finding::new(Tri::Unknown, format!("generic-netlink lookup of ovs_datapath failed: {e}")),
    }
}

/// Opens and closes an AF_XDP socket: proves the kernel has XDP sockets and
/// we may use them (binding to a queue is the datapath's business).
fn probe_af_xdp() -> Finding<Tri> {
    // SAFETY: plain socket call; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return Finding::new(Tri::Yes, "AF_XDP socket opened and closed");
    }
    let error = io::Error::last_os_error();
    let hint = match error.raw_os_error() {
        Some(libc::EAFNOSUPPORT) => {
            " (kernel built without CONFIG_XDP_SOCKETS, or older than 4.18)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => " (needs CAP_NET_RAW: run as root)",
        _ => "",
    };
    Finding::new(Tri::No, format!("socket(AF_XDP) failed: {error}{hint}"))
}

/// TUN offload flags (linux/if_tun.h).
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Distinguishes concurrent probes in one process (tests run in parallel).
static TUN_PROBE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The name prefix of the short-lived probe device, so tests can check none is left.
pub const TUN_PROBE_PREFIX: &str = "weftpf";

/// Creates a non-persistent TUN device with IFF_VNET_HDR, tries the
/// offloads weft wants, and closes it (the kernel deletes it on close).
fn probe_tun() -> (Finding<Tri>, Finding<Tri>, Finding<Tri>) {
    let skipped = |why: &str| Finding::new(Tri::Unknown, format!("not tried: {why}"));
    // SAFETY: open with a static NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        let tun = Finding::new(Tri::No, format!("cannot open /dev/net/tun: {error}"));
        return (tun, skipped("no TUN"), skipped("no TUN"));
    }
    let tun_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = format!(
        "{TUN_PROBE_PREFIX}{}x{}",
        std::process::id() % 1_000_000,
        TUN_PROBE_COUNTER.fetch_add(1, Ordering::Relaxed) % 100
    );
    let mut request = match ifreq_for(&name) {
        Ok(request) => request,
        Err(e) => {
            return (
                Finding::new(Tri::Unknown, e),
                skipped("no TUN"),
                skipped("no TUN"),
            )
        }
    };
    request.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: valid TUN fd and ifreq.
    if unsafe { libc::ioctl(tun_fd.as_raw_fd(), libc::TUNSETIFF, &mut request) } != 0 {
        let error = io::Error::last_os_error();
        let hint = if error.raw_os_error() == Some(libc::EPERM) {
            " (needs CAP_NET_ADMIN: run as root)"
        } else {
            ""
        };
        let tun = Finding::new(
            Tri::No,
            format!("TUNSETIFF with IFF_VNET_HDR failed: {error}{hint}"),
        );
        return (tun, skipped("no TUN"), skipped("no TUN"));
    }
    let tun = Finding::new(
        Tri::Yes,
        "/dev/net/tun creates a TUN device with IFF_VNET_HDR",
    );
    let set_offload = |flags: libc::c_uint| -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe {
            libc::ioctl(
                tun_fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    let offloads = match set_offload(base) {
        Ok(()) => Finding::new(Tri::Yes, "TUNSETOFFLOAD accepts CSUM|TSO4|TSO6"),
        Err(e) => Finding::new(
            Tri::No,
            format!(
                "TUNSETOFFLOAD CSUM|TSO4|TSO6 refused: {e} (no TCP segmentation offload: slower)"
            ),
        ),
    };
    // USO4 and USO6 must be set together (and with CSUM).
    let uso = match set_offload(base | TUN_F_USO4 | TUN_F_USO6) {
        Ok(()) => Finding::new(Tri::Yes, "TUNSETOFFLOAD accepts USO4|USO6"),
        Err(e) => Finding::new(Tri::No, format!("TUNSETOFFLOAD USO4|USO6 refused: {e} (kernel before 6.2: no UDP segmentation offload)")),
    };
    drop(tun_fd); // closing the only fd of a non-persistent device deletes it
    (tun, offloads, uso)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Serialises the tests that create probe TUN devices, so the root test's
    /// before/after view of the links is not disturbed by a sibling.
    pub(crate) static GATHER_LOCK: Mutex<()> = Mutex::new(());

    fn gather(selector: UnderlaySelector) -> Facts {
        let _guard = GATHER_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Facts::gather(selector)
    }

    #[test]
    fn assumptions_replace_facts() {
        let mut facts = gather(UnderlaySelector::Iface("lo".into()));
        facts.apply(&Assumptions {
            kernel: Some("3.10.0-123.el7.x86_64".into()),
            kernel_build: Some("#1 SMP Debian 6.1.172-1".into()),
            mtu: Some(1450),
            ufo: Some(true),
            ovs: Some(true),
            xdp: Some(false),
        });
        assert_eq!(facts.kernel_release, "3.10.0-123.el7.x86_64");
        assert_eq!(facts.kernel_source, "--assume-kernel");
        assert_eq!(facts.kernel_build, "#1 SMP Debian 6.1.172-1");
        assert_eq!(facts.underlay_mtu, Ok(1450));
        assert_eq!(facts.ufo.state, Offload::On);
        assert_eq!(facts.ovs_datapath.state, Tri::Yes);
        assert_eq!(facts.af_xdp.state, Tri::No);
    }

    #[test]
    fn unknown_interface_is_reported_not_panicked() {
        let facts = gather(UnderlaySelector::Iface("weftnosuch0".into()));
        assert!(facts
            .underlay_iface
            .as_ref()
            .unwrap_err()
            .contains("weftnosuch0"));
        assert!(facts.underlay_mtu.is_err());
        assert_eq!(facts.ufo.state, Offload::Unknown);
    }

    fn probe_devices() -> Vec<String> {
        crate::sys::Netlink::open()
            .and_then(|mut netlink| netlink.links())
            .map(|links| {
                links
                    .into_iter()
                    .map(|link| link.name)
                    .filter(|name| name.starts_with(TUN_PROBE_PREFIX))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Needs root (TUNSETIFF). Gathers on loopback and checks the TUN probe
    /// leaves no device behind.
    #[test]
    fn gather_on_loopback_leaves_nothing_behind() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root");
            return;
        }
        let _guard = GATHER_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = probe_devices();
        let facts = Facts::gather(UnderlaySelector::Iface("lo".into()));
        assert_eq!(facts.underlay_iface.as_deref(), Ok("lo"));
        let sys_mtu: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(facts.underlay_mtu, Ok(sys_mtu));
        assert!(!facts.kernel_release.is_empty());
        assert_eq!(facts.tun.state, Tri::Yes, "{}", facts.tun.detail);
        assert_ne!(facts.gso.state, Offload::Unknown, "{}", facts.gso.detail);
        assert_ne!(
            facts.ovs_datapath.state,
            Tri::Unknown,
            "{}",
            facts.ovs_datapath.detail
        );
        assert_eq!(before, Vec::<String>::new());
        assert_eq!(
            probe_devices(),
            Vec::<String>::new(),
            "TUN probe device left behind"
        );
    }

    #[test]
    fn peer_route_finds_loopback() {
        let facts = gather(UnderlaySelector::Peer("127.0.0.1".parse().unwrap()));
        assert_eq!(
            facts.underlay_iface.as_deref(),
            Ok("lo"),
            "{}",
            facts.underlay_source
        );
        assert!(facts.underlay_source.contains("127.0.0.1"));
    }
}
