//! The contract between the CNI plugin (`weft` run with `CNI_COMMAND` set)
//! and the running weft that owns IP address management on this host.
//!
//! Transport: a Unix stream socket in the **abstract** namespace, so it is
//! scoped to the network namespace weft runs in and vanishes with the
//! process. Its default name is [`DEFAULT_SOCKET`] (`@weft-cni`);
//! `weft launch --cni-socket NAME` (config key `cni-socket`) changes it.
//! weft serves a connection only if the caller's SO_PEERCRED uid is 0; any
//! other caller gets an error reply ([`code::NOT_ROOT`]) and the connection
//! is closed.
//!
//! Exchange: the client writes one [`CniRequest`] as one JSON line; weft
//! answers with one [`CniReply`] as one JSON line and closes. Every reply is
//! either `{"ok":true, ...}` or
//! `{"ok":false,"code":N,"msg":"...","details":"..."}` where `code` is a CNI
//! error code ([`code`]) the plugin can pass on unchanged.
//!
//! | request | success reply |
//! |---|---|
//! | `{"op":"add","container_id":S,"ifname":S,"netns":S}` | [`PodAttachment`] fields |
//! | `{"op":"del","container_id":S,"ifname":S}` | `{"ok":true}` (also when nothing was held) |
//! | `{"op":"check","container_id":S,"ifname":S}` | [`PodAttachment`] fields, or error [`code::CONTAINER_UNKNOWN`] |
//! | `{"op":"status"}` | `{"ok":true}`, or error [`code::PLUGIN_NOT_AVAILABLE`] |
//! | `{"op":"gc","valid":[{"container_id":S,"ifname":S}]}` | `{"ok":true,"released":N}` |
//! | `{"op":"version"}` | `{"ok":true,"weft":"0.1.0"}` |
//!
//! `add` is idempotent for one (container_id, ifname): asked again it
//! returns the address it gave the first time.
//!
//! With an IPv6 `--ipalloc-range` next to the IPv4 one (dual stack), the
//! [`PodAttachment`] of `add` and `check` also carries `address6`
//! (`fd32::5/64`) and `gateway6`; without one both fields are absent, so
//! the reply is what it always was and an older plugin reads it unchanged.

use crate::ipam::Family;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::str::FromStr;
use std::time::Duration;

/// The abstract socket name weft listens on unless `--cni-socket` says
/// otherwise (without the leading `@`).
pub const DEFAULT_SOCKET: &str = "weft-cni";

/// Longest request or reply line either side accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// How long either side waits for the other's line.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// CNI error codes used in [`CniError::code`]. 1-99 are the CNI spec's own
/// well-known codes; 100 and up are weft's.
pub mod code {
    /// Spec: container unknown or does not exist. `check` for a
    /// (container_id, ifname) weft holds no address for.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// Spec: invalid necessary environment variables. A request whose
    /// container_id or ifname (from `CNI_CONTAINERID`, `CNI_IFNAME`) is
    /// empty or too long.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Spec: I/O failure. weft could not write its allocation record to
    /// disk (the address was not handed out).
    pub const IO_FAILURE: u32 = 5;
    /// Spec: failed to decode content. The request line is not valid JSON
    /// or not a known `op`.
    pub const DECODE: u32 = 6;
    /// Spec: try again later. IPAM is waiting for the mesh to settle a
    /// claim on a new chunk of the range, or the router did not answer in
    /// time.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Spec: plugin not available. weft runs without `--ipalloc-range`, or
    /// has no chunk it can allocate from and cannot claim one.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// weft: every address of every chunk this host could claim is in use.
    pub const RANGE_EXHAUSTED: u32 = 100;
    /// weft: the caller is not root (SO_PEERCRED uid is not 0).
    pub const NOT_ROOT: u32 = 101;
}

/// Identifies one pod interface: what the runtime passes as
/// `CNI_CONTAINERID` and `CNI_IFNAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// The runtime's container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The interface name inside the container (`CNI_IFNAME`).
    pub ifname: String,
}

/// One request from the plugin, `{"op": ...}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum CniRequest {
    /// Allocate (or return the already allocated) address for a pod
    /// interface.
    Add {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// `CNI_NETNS`, recorded with the allocation for diagnosis.
        netns: String,
    },
    /// Release the address of a pod interface; succeeds when nothing was
    /// held.
    Del {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// Report the address held for a pod interface; error
    /// [`code::CONTAINER_UNKNOWN`] when none is.
    Check {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// Whether weft runs and IPAM has a range to allocate from.
    Status,
    /// Release every allocation not listed in `valid`.
    Gc {
        /// The attachments the runtime still knows
        /// (`cni.dev/valid-attachments`).
        valid: Vec<AttachmentKey>,
    },
    /// weft's version.
    Version,
}

/// How the pod is connected to the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// weft runs in L2 mode: the pod's veth joins the host's weft bridge;
    /// all pods share one L2 segment (the whole range).
    Bridge,
    /// weft runs in L3 mode: the pod gets a /32 and is routed through the
    /// host end of its veth; weft's TUN device carries it to the overlay.
    Tun,
}

/// An address with a prefix length: `10.32.0.5/12` (IPv4, the default)
/// or `fd32::5/64` ([`PodAddress6`]) on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAddress<A: Family = Ipv4Addr> {
    /// The pod's address.
    pub addr: A,
    /// The prefix length of the network it is on (0-32, or 0-128).
    pub prefix_len: u8,
}

/// An IPv6 address with a prefix length, `fd32::5/64` on the wire.
pub type PodAddress6 = PodAddress<Ipv6Addr>;

impl<A: Family> fmt::Display for PodAddress<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl<A: Family> FromStr for PodAddress<A> {
    type Err = String;

    fn from_str(s: &str) -> Result<PodAddress<A>, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
        let addr: A = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {s:?} is not an {} address", A::NAME))?;
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= A::BITS)
            .ok_or_else(|| format!("prefix length {len:?} in {s:?} is not 0-{}", A::BITS))?;
        Ok(PodAddress { addr, prefix_len })
    }
}

impl<A: Family> Serialize for PodAddress<A> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, A: Family> Deserialize<'de> for PodAddress<A> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PodAddress<A>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What `add` and `check` answer: everything the plugin needs to set up
/// the pod's interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAttachment {
    /// The pod's address. Bridge mode: with the prefix length of the whole
    /// `--ipalloc-range` (all pods are on one L2 segment). TUN mode: a /32.
    pub address: PodAddress,
    /// Bridge mode: the host's own address on the bridge when it lies
    /// inside the range (the pod's default gateway), else `null`. TUN mode:
    /// always `null` (the plugin routes via the host end of the veth).
    pub gateway: Option<Ipv4Addr>,
    /// The MTU to give the pod's interface (weft's overlay MTU).
    pub mtu: u32,
    /// How the pod is attached.
    pub mode: AttachMode,
    /// Bridge mode: the name of the bridge to attach the host end of the
    /// veth to. TUN mode: `null`.
    pub bridge: Option<String>,
    /// Dual stack: the pod's IPv6 address, with the prefix length of the
    /// IPv6 range (bridge mode) or as a /128 (TUN mode). Absent without an
    /// IPv6 range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<PodAddress6>,
    /// Dual stack: the pods' IPv6 gateway on the bridge (the host's IPv6
    /// address in the range, or the bridge's from IPAM). Absent otherwise
    /// (TUN mode: the plugin routes via a link-local next hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

/// The successful replies, by request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CniSuccess {
    /// `add`, `check`.
    Attachment(PodAttachment),
    /// `gc`: how many allocations were released.
    Released {
        /// Number of allocations released.
        released: u32,
    },
    /// `version`.
    Version {
        /// weft's version, e.g. `0.1.0`.
        weft: String,
    },
    /// `del`, `status`: nothing more to say.
    Done {},
}

/// A refused request, in the shape of a CNI error object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// A CNI error code ([`code`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// What went wrong in detail, naming the bad value.
    #[serde(default)]
    pub details: String,
}

impl CniError {
    /// An error with `code`, `msg` and `details`.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// One reply line: `{"ok":true, ...success fields}` or
/// `{"ok":false,"code":..,"msg":..,"details":..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniReply(pub Result<CniSuccess, CniError>);

#[derive(Serialize)]
struct Tagged<'a, T> {
    ok: bool,
    #[serde(flatten)]
    body: &'a T,
}

impl Serialize for CniReply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Ok(body) => Tagged { ok: true, body }.serialize(s),
            Err(body) => Tagged { ok: false, body }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CniReply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CniReply, D::Error> {
        use serde::de::Error;
        let mut value = serde_json::Map::deserialize(d)?;
        let ok = value
            .remove("ok")
            .and_then(|v| v.as_bool())
            .ok_or_else(|| D::Error::custom("reply has no boolean \"ok\""))?;
        let value = serde_json::Value::Object(value);
        if ok {
            CniSuccess::deserialize(value)
                .map(|s| CniReply(Ok(s)))
                .map_err(D::Error::custom)
        } else {
            CniError::deserialize(value)
                .map(|e| CniReply(Err(e)))
                .map_err(D::Error::custom)
        }
    }
}

/// The abstract address `@name`; an error names it.
pub fn socket_addr(name: &str) -> Result<UnixAddr, String> {
    UnixAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("CNI socket name @{name}: {e}"))
}

/// The client side: sends `request` to the weft listening on `@name` in
/// this network namespace and returns its reply.
///
/// `Err` (a transport failure, e.g. no weft listens) is for the plugin to
/// map to [`code::PLUGIN_NOT_AVAILABLE`] (for STATUS) or
/// [`code::TRY_AGAIN_LATER`].
pub fn request(name: &str, request: &CniRequest) -> Result<CniReply, String> {
    let line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    let answer = crate::api::local_socket::exchange(
        name,
        &line,
        MAX_LINE,
        TIMEOUT + Duration::from_secs(1),
        |e| {
            format!("no weft answers on @{name} ({e}): is `weft launch --ipalloc-range CIDR` running in this network namespace?")
        },
    )?;
    serde_json::from_str(answer.trim())
        .map_err(|e| format!("weft's reply on @{name} is not understood ({e}): {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_tagged_by_op() {
        let add = CniRequest::Add {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
        };
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"op":"add","container_id":"c1","ifname":"eth0","netns":"/var/run/netns/x"}"#
        );
        assert_eq!(serde_json::from_str::<CniRequest>(&text).unwrap(), add);
        assert_eq!(
            serde_json::from_str::<CniRequest>(r#"{"op":"status"}"#).unwrap(),
            CniRequest::Status
        );
        let gc: CniRequest =
            serde_json::from_str(r#"{"op":"gc","valid":[{"container_id":"a","ifname":"eth0"}]}"#)
                .unwrap();
        assert_eq!(
            gc,
            CniRequest::Gc {
                valid: vec![AttachmentKey {
                    container_id: "a".into(),
                    ifname: "eth0".into()
                }]
            }
        );
        assert!(serde_json::from_str::<CniRequest>(r#"{"op":"reboot"}"#).is_err());
    }

    #[test]
    fn replies_carry_ok_and_their_fields_flat() {
        let add = CniReply(Ok(CniSuccess::Attachment(PodAttachment {
            address: "10.32.0.5/12".parse().unwrap(),
            gateway: None,
            mtu: 1376,
            mode: AttachMode::Bridge,
            bridge: Some("weft".into()),
            address6: None,
            gateway6: None,
        })));
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"ok":true,"address":"10.32.0.5/12","gateway":null,"mtu":1376,"mode":"bridge","bridge":"weft"}"#
        );
        assert_eq!(serde_json::from_str::<CniReply>(&text).unwrap(), add);

        // Dual stack: the IPv6 fields come after the old ones.
        let dual = CniReply(Ok(CniSuccess::Attachment(PodAttachment {
            address: "10.32.0.5/12".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 32, 0, 1)),
            mtu: 1376,
            mode: AttachMode::Bridge,
            bridge: Some("weft".into()),
            address6: Some("fd32::5/64".parse().unwrap()),
            gateway6: Some("fd32::1".parse().unwrap()),
        })));
        let text = serde_json::to_string(&dual).unwrap();
        assert_eq!(
            text,
            r#"{"ok":true,"address":"10.32.0.5/12","gateway":"10.32.0.1","mtu":1376,"mode":"bridge","bridge":"weft","address6":"fd32::5/64","gateway6":"fd32::1"}"#
        );
        assert_eq!(serde_json::from_str::<CniReply>(&text).unwrap(), dual);
        assert!("fd32::5/129"
            .parse::<PodAddress6>()
            .unwrap_err()
            .contains("129"));
        assert!("10.0.0.1/8".parse::<PodAddress6>().is_err());

        let cases = [
            (CniReply(Ok(CniSuccess::Done {})), r#"{"ok":true}"#),
            (
                CniReply(Ok(CniSuccess::Released { released: 2 })),
                r#"{"ok":true,"released":2}"#,
            ),
            (
                CniReply(Ok(CniSuccess::Version {
                    weft: "0.1.0".into(),
                })),
                r#"{"ok":true,"weft":"0.1.0"}"#,
            ),
            (
                CniReply(Err(CniError::new(50, "not available", "no range"))),
                r#"{"ok":false,"code":50,"msg":"not available","details":"no range"}"#,
            ),
        ];
        for (reply, wire) in cases {
            assert_eq!(serde_json::to_string(&reply).unwrap(), wire);
            assert_eq!(serde_json::from_str::<CniReply>(wire).unwrap(), reply);
        }
        assert!(serde_json::from_str::<CniReply>(r#"{"code":1}"#).is_err());
    }

    #[test]
    fn pod_addresses_parse_and_refuse_by_name() {
        let a: PodAddress = "10.32.0.5/32".parse().unwrap();
        assert_eq!(a.addr, Ipv4Addr::new(10, 32, 0, 5));
        assert_eq!(a.prefix_len, 32);
        assert!("10.32.0.5/33"
            .parse::<PodAddress>()
            .unwrap_err()
            .contains("33"));
        assert!("10.32.0.5".parse::<PodAddress>().is_err());
        assert!("x/4".parse::<PodAddress>().unwrap_err().contains("\"x\""));
    }
}
