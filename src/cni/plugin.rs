//! The CNI plugin (spec 1.1), sans-IO: the runtime's environment and stdin
//! in, the result or error object, stderr notes and the exit code out. All
//! effects (the weft socket, netlink, namespaces) go through [`System`], so
//! the whole protocol is unit-tested with a fake system and the real one
//! ([`super::netdev::LinuxSystem`]) only does what it is told.
//!
//! Spec types (network configuration, results in the 1.x and 0.3/0.4
//! layouts, error objects and codes, version negotiation) come from the
//! `rscni-types` crate: it models spec 1.1 (STATUS, GC,
//! `cni.dev/valid-attachments`) and the legacy 0.4.0 result layout, and
//! depends only on serde and ipnet. Not `rscni-plugin` (its runner reads
//! the process environment and stdin and writes stdout itself, which leaves
//! nothing to test without a process), and not `cni-plugin` (last release
//! 2021, spec 1.0 without STATUS and GC).
//!
//! Plugin-specific error codes (the spec reserves 0-99):
//! [`CODE_SETUP`] (a link, address or route could not be made),
//! [`CODE_CHECK`] (CHECK found the attachment different from what weft
//! holds), [`CODE_WEFT_PROTOCOL`] (weft answered something undocumented).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rscni_types::error::Error;
use rscni_types::ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rscni_types::legacy;
use rscni_types::types::{
    CNIResult, CNIResultWithVersion, Cmd, ContainerId, ErrorResult, Interface, InterfaceName,
    IpConfig, NetConf, Route, CNI_COMMAND, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS,
};
use rscni_types::version::{PluginInfo, SpecVersion};
use serde_json::Value;

use super::api::{
    AttachMode, AttachmentKey, CniRequest, CniSuccess, PodAttachment, DEFAULT_SOCKET,
};
use super::client::WeftError;

/// The `type` of weft's network configuration.
pub const PLUGIN_TYPE: &str = "weft";

/// Error code: a link, address or route could not be set up.
pub const CODE_SETUP: u32 = 100;
/// Error code: CHECK found the attachment not as weft holds it.
pub const CODE_CHECK: u32 = 101;
/// Error code: weft's answer was not the documented reply.
pub const CODE_WEFT_PROTOCOL: u32 = 102;

/// The link-local next hop of a pod in routed (TUN) mode: the host end of
/// the veth answers ARP for it (proxy ARP), as in Calico.
pub const ROUTED_NEXT_HOP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 next hop of a routed pod (dual stack in TUN mode): a
/// link-local address the pod holds a permanent neighbour entry for (the
/// host end's MAC), so nothing on the host has to answer for it.
pub const ROUTED_NEXT_HOP6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Prefix of the host end of every pod veth; the rest is 8 hex digits of
/// a hash of the container id and interface name, so DEL finds it without
/// state.
pub const HOST_VETH_PREFIX: &str = "vweft";

/// Prefix of the alias on the host end: `weft-cni NETWORK CONTAINER IFNAME`,
/// so GC can tell which attachment a veth belongs to.
pub const ALIAS_PREFIX: &str = "weft-cni";

/// The environment variables the plugin reads.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The result, error or version object (may be empty).
    pub stdout: String,
    /// Notes for a person (what DEL could not do, what GC removed).
    pub stderr: String,
    /// 0 on success, 1 with an error object on stdout.
    pub exit: u8,
}

/// Options of weft's network configuration beyond the spec's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The abstract socket name weft listens on (`"socket"`, default `weft-cni`).
    pub socket: String,
}

/// The attachment an ADD, DEL or CHECK is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`: the interface name inside the pod.
    pub ifname: String,
    /// `CNI_NETNS`: the path of the pod's network namespace (optional for DEL).
    pub netns: Option<String>,
}

impl Attachment {
    /// The request that has weft release this attachment's address.
    pub fn del_request(&self) -> CniRequest {
        CniRequest::Del {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// The deterministic name of the host end of this attachment's veth.
    pub fn host_veth(&self) -> String {
        host_veth_name(&self.container_id, &self.ifname)
    }
}

/// `vweft` + 8 hex digits of SHA-256(container id, interface name).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut input = Vec::with_capacity(container_id.len() + ifname.len() + 1);
    input.extend_from_slice(container_id.as_bytes());
    input.push(0);
    input.extend_from_slice(ifname.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let hex: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{HOST_VETH_PREFIX}{hex}")
}

/// The alias the host end carries.
pub fn host_veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{ALIAS_PREFIX} {network} {container_id} {ifname}")
}

/// Parses an alias made by [`host_veth_alias`]: (network, container id, ifname).
pub fn parse_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let mut parts = alias.split(' ');
    if parts.next()? != ALIAS_PREFIX {
        return None;
    }
    let network = parts.next()?;
    let container = parts.next()?;
    let ifname = parts.next()?;
    if parts.next().is_some() || network.is_empty() || container.is_empty() || ifname.is_empty() {
        return None;
    }
    Some((network, container, ifname))
}

/// One parsed, validated invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The operation.
    pub command: Cmd,
    /// The negotiated spec version (the configuration's `cniVersion`).
    pub version: SpecVersion,
    /// The network configuration.
    pub conf: NetConf,
    /// weft's own options.
    pub settings: Settings,
    /// For ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
}

/// Why an invocation failed, and the version its error object is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The CNI error.
    pub error: Error,
    /// The configuration's version when it could be read, else 1.1.0.
    pub version: SpecVersion,
}

fn fail(version: SpecVersion) -> impl Fn(Error) -> Failure {
    move |error| Failure { error, version }
}

/// The configuration's `cniVersion`, read leniently for error objects.
fn declared_version(stdin: &[u8]) -> SpecVersion {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse().ok())
        .unwrap_or(SpecVersion::CURRENT)
}

fn env_value(env: Env, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// Reads the command, the variables it needs and the configuration, and
/// validates all of them. Each error names the variable, key or value.
pub fn parse(env: Env, stdin: &[u8]) -> Result<Invocation, Failure> {
    let version_hint = declared_version(stdin);
    let failed = fail(version_hint);
    let raw_command = env_value(env, CNI_COMMAND).ok_or_else(|| {
        failed(Error::InvalidEnvValue(
            "CNI_COMMAND is not set (one of ADD, DEL, CHECK, STATUS, GC, VERSION)".into(),
        ))
    })?;
    let command: Cmd = raw_command.parse().map_err(|_| {
        failed(Error::InvalidEnvValue(format!(
            "CNI_COMMAND={raw_command:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
        )))
    })?;

    let attachment = match command {
        Cmd::Add | Cmd::Del | Cmd::Check => Some(parse_attachment(env, command).map_err(&failed)?),
        _ => None,
    };

    let conf = parse_conf(stdin).map_err(&failed)?;
    let version = conf.version().map_err(|_| {
        failed(Error::FailedToDecode(format!(
            "\"cniVersion\": {:?} is not a version (e.g. \"1.0.0\")",
            conf.cni_version
        )))
    })?;
    let failed = fail(if version.is_supported() {
        version
    } else {
        SpecVersion::CURRENT
    });
    version.allows(command).map_err(|_| {
        failed(Error::IncompatibleVersion(format!(
            "\"cniVersion\": \"{version}\" does not have {raw_command} (CHECK needs 0.4.0 or later, STATUS and GC 1.1.0)"
        )))
    })?;
    let info = PluginInfo::default();
    if !info.supported_versions().contains(&version) {
        let supported: Vec<String> = info
            .supported_versions()
            .iter()
            .map(ToString::to_string)
            .collect();
        return Err(failed(Error::IncompatibleVersion(format!(
            "\"cniVersion\": \"{version}\" is not supported by the weft plugin (supported: {})",
            supported.join(", ")
        ))));
    }
    let settings = validate_conf(&conf).map_err(&failed)?;
    Ok(Invocation {
        command,
        version,
        conf,
        settings,
        attachment,
    })
}

fn parse_attachment(env: Env, command: Cmd) -> Result<Attachment, Error> {
    let container_id = env_value(env, CNI_CONTAINERID);
    let ifname = env_value(env, CNI_IFNAME);
    let netns = env_value(env, CNI_NETNS);
    let mut missing = Vec::new();
    if container_id.is_none() {
        missing.push(CNI_CONTAINERID);
    }
    if netns.is_none() && command != Cmd::Del {
        missing.push(CNI_NETNS);
    }
    if ifname.is_none() {
        missing.push(CNI_IFNAME);
    }
    if !missing.is_empty() {
        return Err(Error::InvalidEnvValue(format!(
            "{} needs {} in the environment; missing: {}",
            <&str>::from(command),
            if command == Cmd::Del {
                "CNI_CONTAINERID and CNI_IFNAME"
            } else {
                "CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME"
            },
            missing.join(", ")
        )));
    }
    let container_id = container_id.unwrap_or_default();
    let ifname = ifname.unwrap_or_default();
    ContainerId::try_from(container_id.clone()).map_err(|_| {
        Error::InvalidEnvValue(format!(
            "CNI_CONTAINERID={container_id:?} is not a container id (letters, digits, '_', '.', '-', starting with a letter or digit)"
        ))
    })?;
    InterfaceName::try_from(ifname.clone()).map_err(|_| {
        Error::InvalidEnvValue(format!(
            "CNI_IFNAME={ifname:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"
        ))
    })?;
    if let Some(path) = &netns {
        if !path.starts_with('/') {
            return Err(Error::InvalidEnvValue(format!(
                "CNI_NETNS={path:?} is not an absolute path to a network namespace"
            )));
        }
    }
    Ok(Attachment {
        container_id,
        ifname,
        netns,
    })
}

fn parse_conf(stdin: &[u8]) -> Result<NetConf, Error> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::FailedToDecode(
            "stdin is empty: the network configuration (JSON) is expected there".into(),
        ));
    }
    serde_json::from_slice(stdin).map_err(|e| {
        Error::FailedToDecode(format!(
            "the network configuration on stdin is not valid: {e}"
        ))
    })
}

fn validate_conf(conf: &NetConf) -> Result<Settings, Error> {
    if conf.r#type != PLUGIN_TYPE {
        return Err(Error::InvalidNetworkConfig(format!(
            "\"type\": {:?}: this is the weft plugin (type \"{PLUGIN_TYPE}\")",
            conf.r#type
        )));
    }
    conf.validate_name().map_err(|_| {
        Error::InvalidNetworkConfig(format!(
            "\"name\": {:?} is not a network name (letters, digits, '_', '.', '-', starting with a letter or digit)",
            conf.name
        ))
    })?;
    if let Some(ipam) = &conf.ipam {
        if !ipam.r#type.is_empty() && ipam.r#type != PLUGIN_TYPE {
            return Err(Error::UnsupportedNetworkConfiguration(format!(
                "\"ipam\": {{\"type\": {:?}}}: weft assigns pod addresses itself (--ipalloc-range); remove \"ipam\"",
                ipam.r#type
            )));
        }
    }
    let socket = match conf.custom.get("socket") {
        None | Some(Value::Null) => DEFAULT_SOCKET.to_string(),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 100 && !s.contains('\0') && !s.starts_with('@') =>
        {
            s.clone()
        }
        Some(other) => {
            return Err(Error::InvalidNetworkConfig(format!(
                "\"socket\": {other} is not an abstract socket name (1-100 characters, without the leading '@'; default \"{DEFAULT_SOCKET}\")"
            )))
        }
    };
    Ok(Settings { socket })
}

/// How the pod's interface is connected on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// L2: the host end is a port of weft's bridge.
    Bridge {
        /// The bridge's name.
        bridge: String,
    },
    /// L3: the host routes the pod's /32 to the host end; the pod's default
    /// route goes to [`ROUTED_NEXT_HOP`], answered by proxy ARP.
    Routed,
}

/// A route to add: `dst` out of the interface, via `gateway` or on-link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRoute {
    /// Destination.
    pub dst: Ipv4Net,
    /// Next hop; None for an on-link route.
    pub gateway: Option<Ipv4Addr>,
}

/// An IPv6 route to add in the pod (dual stack): `dst` via `gateway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRoute6 {
    /// Destination.
    pub dst: Ipv6Net,
    /// Next hop.
    pub gateway: Ipv6Addr,
}

/// Everything ADD does to the system, derived from weft's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPlan {
    /// Path of the pod's network namespace.
    pub netns: String,
    /// The pod's interface name.
    pub ifname: String,
    /// The host end's name.
    pub host_veth: String,
    /// The host end's alias.
    pub alias: String,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod's address and prefix.
    pub address: Ipv4Net,
    /// The gateway reported in the result.
    pub gateway: Option<Ipv4Addr>,
    /// Bridge or routed.
    pub mode: Mode,
    /// Routed mode: the next hop the pod gets a permanent neighbour entry
    /// for (the host end's MAC), so it does not depend on proxy ARP alone.
    pub next_hop: Option<Ipv4Addr>,
    /// Routes inside the pod, in order.
    pub pod_routes: Vec<PlannedRoute>,
    /// Routes on the host via the host end.
    pub host_routes: Vec<PlannedRoute>,
    /// Dual stack: the pod's IPv6 address and prefix (added without
    /// duplicate address detection: usable at once).
    pub address6: Option<Ipv6Net>,
    /// Dual stack: the IPv6 gateway reported in the result.
    pub gateway6: Option<Ipv6Addr>,
    /// Dual stack: IPv6 routes inside the pod (`::/0` via the gateway).
    pub pod_routes6: Vec<PlannedRoute6>,
    /// Dual stack, routed mode: the IPv6 next hop the pod gets a permanent
    /// neighbour entry for (the host end's MAC).
    pub next_hop6: Option<Ipv6Addr>,
    /// Dual stack, routed mode: IPv6 routes on the host via the host end
    /// (the pod's /128).
    pub host_routes6: Vec<Ipv6Net>,
}

/// What ADD made: the hardware addresses for the result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attached {
    /// MAC of the host end.
    pub host_mac: String,
    /// MAC of the pod's interface.
    pub pod_mac: String,
}

/// What CHECK found on the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Addresses of the pod's interface (None: no such interface).
    pub pod_addresses: Option<Vec<(IpAddr, u8)>>,
    /// MTU of the pod's interface.
    pub pod_mtu: u32,
    /// Whether the pod's interface is up.
    pub pod_up: bool,
    /// Whether the host end exists.
    pub host_veth: bool,
}

/// A host end found on the system, with its alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLink {
    /// Interface name.
    pub name: String,
    /// Alias (`weft-cni NETWORK CONTAINER IFNAME` for ours).
    pub alias: String,
}

/// The effects the plugin needs; [`super::netdev::LinuxSystem`] is the real one.
pub trait System {
    /// One request to weft on abstract socket `socket`.
    fn weft(&mut self, socket: &str, request: &CniRequest) -> Result<CniSuccess, WeftError>;
    /// Fails (code 3, naming the path) unless `path` is a network namespace.
    fn check_netns(&mut self, path: &str) -> Result<(), Error>;
    /// Creates the veth pair and configures both ends; on failure leaves nothing behind.
    fn attach(&mut self, plan: &AttachPlan) -> Result<Attached, Error>;
    /// Deletes the host end (and with it the pod end); Ok(false) when it did not exist.
    fn detach(&mut self, host_veth: &str) -> Result<bool, Error>;
    /// Looks at the pod's interface and the host end.
    fn inspect(&mut self, netns: &str, ifname: &str, host_veth: &str) -> Result<Inspection, Error>;
    /// The host ends of pod veths on this host.
    fn host_links(&mut self) -> Result<Vec<HostLink>, Error>;
}

/// Runs one invocation: parses it, does it, renders what the runtime reads.
pub fn run(env: Env, stdin: &[u8], system: &mut dyn System) -> Output {
    let mut notes = String::new();
    let outcome = match env_value(env, CNI_COMMAND).as_deref() {
        // VERSION reads no configuration beyond the version; it always answers.
        Some("VERSION") => Ok(version_json()),
        _ => parse(env, stdin).and_then(|inv| {
            execute(&inv, system, &mut notes).map_err(|error| Failure {
                error,
                version: inv.version,
            })
        }),
    };
    match outcome {
        Ok(stdout) => Output {
            stdout,
            stderr: notes,
            exit: 0,
        },
        Err(failure) => Output {
            stdout: error_json(failure.version, &failure.error),
            stderr: notes,
            exit: 1,
        },
    }
}

/// The VERSION answer.
pub fn version_json() -> String {
    serde_json::to_string(&PluginInfo::default()).unwrap_or_default()
}

/// The error object for `error`, reported under `version`.
pub fn error_json(version: SpecVersion, error: &Error) -> String {
    serde_json::to_string(&ErrorResult::new(version, error)).unwrap_or_else(|_| {
        format!(
            r#"{{"cniVersion":"{version}","code":{},"msg":"error"}}"#,
            u32::from(error)
        )
    })
}

fn execute(inv: &Invocation, system: &mut dyn System, notes: &mut String) -> Result<String, Error> {
    match inv.command {
        Cmd::Add => add(inv, system),
        Cmd::Del => del(inv, system, notes).map(|()| String::new()),
        Cmd::Check => check(inv, system).map(|()| String::new()),
        Cmd::Status => status(inv, system).map(|()| String::new()),
        Cmd::Gc => gc(inv, system, notes).map(|()| String::new()),
        Cmd::Version => Ok(version_json()),
    }
}

fn attachment(inv: &Invocation) -> Result<&Attachment, Error> {
    inv.attachment
        .as_ref()
        .ok_or_else(|| Error::InvalidEnvValue("CNI_CONTAINERID and CNI_IFNAME are needed".into()))
}

/// Turns weft's error into the CNI error: weft's own code where it used a
/// CNI one, [`CODE_WEFT_PROTOCOL`] for an undocumented answer, and
/// `unreachable` when weft is not there.
fn weft_error(e: WeftError, unreachable: fn(String) -> Error) -> Error {
    match e {
        WeftError::Unreachable(why) => unreachable(why),
        WeftError::Refused(super::api::CniError { code, msg, details }) => {
            let details = if details.is_empty() {
                format!("weft: {msg}")
            } else {
                format!("weft: {msg}: {details}")
            };
            let msg = format!("weft: {msg}");
            cni_error(code, msg, details)
        }
        WeftError::Protocol(why) => protocol(why),
    }
}

/// The CNI error for a code weft answered with (weft uses the spec's
/// codes where one fits, e.g. 11 when its range is not ready yet).
fn cni_error(code: u32, msg: String, details: String) -> Error {
    match code {
        1 => Error::IncompatibleVersion(details),
        2 => Error::UnsupportedNetworkConfiguration(details),
        3 => Error::NotExist(details),
        4 => Error::InvalidEnvValue(details),
        5 => Error::IOFailure(details),
        6 => Error::FailedToDecode(details),
        7 => Error::InvalidNetworkConfig(details),
        11 => Error::TryAgainLater(details),
        50 => Error::PluginNotAvailable(details),
        51 => Error::PluginNotAvailableLimitedConnectivity(details),
        code => Error::Custom(code, msg, details),
    }
}

fn try_again(why: String) -> Error {
    Error::TryAgainLater(why)
}

fn not_available(why: String) -> Error {
    Error::PluginNotAvailable(why)
}

fn protocol(why: String) -> Error {
    Error::Custom(
        CODE_WEFT_PROTOCOL,
        "Unexpected answer from weft".into(),
        why,
    )
}

/// weft's answer to ADD, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddReply {
    /// The pod's address and the overlay prefix.
    pub address: Ipv4Net,
    /// The gateway (bridge mode), if any.
    pub gateway: Option<Ipv4Addr>,
    /// The overlay MTU.
    pub mtu: u32,
    /// Bridge or routed.
    pub mode: Mode,
    /// Dual stack: the pod's IPv6 address and the IPv6 range's prefix.
    pub address6: Option<Ipv6Net>,
    /// Dual stack: the pods' IPv6 gateway, if any.
    pub gateway6: Option<Ipv6Addr>,
}

/// Checks weft's `add`/`check` answer beyond what its types guarantee.
pub fn validate_attachment(reply: &PodAttachment) -> Result<AddReply, Error> {
    let address = Ipv4Net::new(reply.address.addr, reply.address.prefix_len).map_err(|_| {
        protocol(format!(
            "\"address\": {} has no valid prefix length",
            reply.address
        ))
    })?;
    if !(68..=65535).contains(&reply.mtu) {
        return Err(protocol(format!(
            "\"mtu\": {} is not an MTU (68-65535)",
            reply.mtu
        )));
    }
    let mode = match reply.mode {
        AttachMode::Bridge => {
            let bridge = reply
                .bridge
                .as_deref()
                .filter(|b| InterfaceName::try_from(b.to_string()).is_ok())
                .ok_or_else(|| {
                    protocol(format!(
                        "bridge mode without a valid \"bridge\" name: {:?}",
                        reply.bridge
                    ))
                })?;
            Mode::Bridge {
                bridge: bridge.to_string(),
            }
        }
        AttachMode::Tun => Mode::Routed,
    };
    let gateway = match mode {
        Mode::Bridge { .. } => reply.gateway,
        // Routed pods always use the link-local next hop.
        Mode::Routed => None,
    };
    if let Some(gw) = gateway {
        if !address.contains(&gw) || gw == address.addr() {
            return Err(protocol(format!(
                "\"gateway\": {gw} is not another address in the pod's subnet {}",
                address.trunc()
            )));
        }
    }
    let address6 = match reply.address6 {
        None => None,
        Some(a) => Some(
            Ipv6Net::new(a.addr, a.prefix_len)
                .map_err(|_| protocol(format!("\"address6\": {a} has no valid prefix length")))?,
        ),
    };
    let gateway6 = match (address6, reply.gateway6) {
        // Routed pods always use the link-local next hop.
        (Some(_), Some(_)) if mode == Mode::Routed => None,
        (Some(net), Some(gw)) => {
            if !net.contains(&gw) || gw == net.addr() {
                return Err(protocol(format!(
                    "\"gateway6\": {gw} is not another address in the pod's subnet {}",
                    net.trunc()
                )));
            }
            Some(gw)
        }
        (None, Some(gw)) => {
            return Err(protocol(format!(
                "\"gateway6\": {gw} without an \"address6\""
            )))
        }
        (_, None) => None,
    };
    Ok(AddReply {
        address,
        gateway,
        mtu: reply.mtu,
        mode,
        address6,
        gateway6,
    })
}

fn unexpected(op: &str, reply: &CniSuccess) -> Error {
    protocol(format!("weft answered {op} with {reply:?}"))
}

/// What ADD will do, from the attachment and weft's answer.
pub fn plan_attachment(network: &str, att: &Attachment, reply: &AddReply) -> AttachPlan {
    let default = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or_default();
    let host = |ip: Ipv4Addr| Ipv4Net::new(ip, 32).unwrap_or_default();
    let (address, gateway, pod_routes, host_routes) = match &reply.mode {
        Mode::Bridge { .. } => {
            let routes = reply
                .gateway
                .map(|gw| {
                    vec![PlannedRoute {
                        dst: default,
                        gateway: Some(gw),
                    }]
                })
                .unwrap_or_default();
            (reply.address, reply.gateway, routes, Vec::new())
        }
        Mode::Routed => (
            host(reply.address.addr()),
            Some(ROUTED_NEXT_HOP),
            vec![
                PlannedRoute {
                    dst: host(ROUTED_NEXT_HOP),
                    gateway: None,
                },
                PlannedRoute {
                    dst: default,
                    gateway: Some(ROUTED_NEXT_HOP),
                },
            ],
            vec![PlannedRoute {
                dst: host(reply.address.addr()),
                gateway: None,
            }],
        ),
    };
    // Routed pods get their IPv6 address as a /128 and `::/0` via the
    // link-local next hop; the host routes the /128 to the veth.
    let routed6 = reply.mode == Mode::Routed && reply.address6.is_some();
    let (address6, gateway6) = if routed6 {
        (
            reply
                .address6
                .and_then(|a| Ipv6Net::new(a.addr(), 128).ok()),
            Some(ROUTED_NEXT_HOP6),
        )
    } else {
        (reply.address6, reply.gateway6)
    };
    AttachPlan {
        netns: att.netns.clone().unwrap_or_default(),
        ifname: att.ifname.clone(),
        host_veth: att.host_veth(),
        alias: host_veth_alias(network, &att.container_id, &att.ifname),
        mtu: reply.mtu,
        address,
        gateway,
        next_hop: (reply.mode == Mode::Routed).then_some(ROUTED_NEXT_HOP),
        mode: reply.mode.clone(),
        pod_routes,
        host_routes,
        address6,
        gateway6,
        pod_routes6: gateway6
            .map(|gateway| {
                vec![PlannedRoute6 {
                    dst: Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).unwrap_or_default(),
                    gateway,
                }]
            })
            .unwrap_or_default(),
        next_hop6: routed6.then_some(ROUTED_NEXT_HOP6),
        host_routes6: address6.filter(|_| routed6).into_iter().collect(),
    }
}

/// The ADD result: `prev` (from earlier plugins in a chain) with this
/// plugin's two interfaces, the pod's address and its default route added.
pub fn build_result(
    version: SpecVersion,
    prev: Option<&CNIResult>,
    plan: &AttachPlan,
    attached: &Attached,
) -> CNIResult {
    let mut result = prev.cloned().unwrap_or_default();
    let with_mtu = version >= SpecVersion::new(1, 1, 0);
    result.interfaces.push(Interface {
        name: plan.host_veth.clone(),
        mac: attached.host_mac.clone(),
        mtu: with_mtu.then_some(plan.mtu),
        sandbox: None,
        socket_path: None,
        pci_id: None,
    });
    result.interfaces.push(Interface {
        name: plan.ifname.clone(),
        mac: attached.pod_mac.clone(),
        mtu: with_mtu.then_some(plan.mtu),
        sandbox: Some(plan.netns.clone()),
        socket_path: None,
        pci_id: None,
    });
    let pod_index = u32::try_from(result.interfaces.len() - 1).unwrap_or(u32::MAX);
    result.ips.push(IpConfig {
        interface: Some(pod_index),
        address: IpNet::V4(plan.address),
        gateway: plan.gateway.map(IpAddr::V4),
    });
    if let Some(address6) = plan.address6 {
        result.ips.push(IpConfig {
            interface: Some(pod_index),
            address: IpNet::V6(address6),
            gateway: plan.gateway6.map(IpAddr::V6),
        });
    }
    for route in &plan.pod_routes {
        if route.dst.prefix_len() == 0 {
            result.routes.push(Route {
                dst: IpNet::V4(route.dst),
                gw: route.gateway.map(IpAddr::V4),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            });
        }
    }
    for route in &plan.pod_routes6 {
        result.routes.push(Route {
            dst: IpNet::V6(route.dst),
            gw: Some(IpAddr::V6(route.gateway)),
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        });
    }
    result
}

/// Renders an ADD result in the layout of `version` (0.3.x/0.4.0 or 1.x).
pub fn render_result(version: SpecVersion, result: CNIResult) -> String {
    let rendered = if version.is_legacy() {
        serde_json::to_string(&legacy::CNIResult::new(version, result))
    } else {
        serde_json::to_string(&CNIResultWithVersion::new(version, result))
    };
    rendered.unwrap_or_default()
}

/// Checks the pod's namespace, then asks weft about the attachment:
/// a namespace that is gone gets no address.
fn ask_about_pod(
    inv: &Invocation,
    system: &mut dyn System,
    request: impl FnOnce(&Attachment, String) -> CniRequest,
) -> Result<(Attachment, String, CniSuccess), Error> {
    let att = attachment(inv)?.clone();
    let netns = att.netns.clone().unwrap_or_default();
    system.check_netns(&netns)?;
    let reply = system
        .weft(&inv.settings.socket, &request(&att, netns.clone()))
        .map_err(|e| weft_error(e, try_again))?;
    Ok((att, netns, reply))
}

fn add(inv: &Invocation, system: &mut dyn System) -> Result<String, Error> {
    let (att, _, reply) = ask_about_pod(inv, system, |att, netns| CniRequest::Add {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
        netns,
    })?;
    let att = &att;
    let reply = match &reply {
        CniSuccess::Attachment(a) => validate_attachment(a)?,
        other => return Err(unexpected("add", other)),
    };
    let plan = plan_attachment(&inv.conf.name, att, &reply);
    let attached = match system.attach(&plan) {
        Ok(a) => a,
        Err(e) => {
            // Give the address back: the runtime calls DEL after a failed
            // ADD, but not always (and weft's add is idempotent anyway).
            let _ = system.weft(&inv.settings.socket, &att.del_request());
            return Err(e);
        }
    };
    let result = build_result(inv.version, inv.conf.prev_result.as_ref(), &plan, &attached);
    Ok(render_result(inv.version, result))
}

fn del(inv: &Invocation, system: &mut dyn System, notes: &mut String) -> Result<(), Error> {
    let att = attachment(inv)?;
    // The veth first: the address goes back to weft only once no pod uses it.
    let host_veth = att.host_veth();
    if !system.detach(&host_veth)? {
        notes.push_str(&format!(
            "weft: no interface {host_veth} for container {} {} (already deleted)\n",
            att.container_id, att.ifname
        ));
    }
    match system.weft(&inv.settings.socket, &att.del_request()) {
        Ok(_) => Ok(()),
        // DEL is best effort: with weft gone, the veth is removed and the
        // address stays recorded until weft runs again and the runtime's GC
        // (or the next DEL) releases it.
        Err(WeftError::Unreachable(why)) => {
            notes.push_str(&format!(
                "weft: the address of {} {} was not released now: {why}; it is released by the next GC or DEL once weft runs\n",
                att.container_id, att.ifname
            ));
            Ok(())
        }
        // Unknown to weft: already released.
        Err(WeftError::Refused(e)) if e.code == 3 => Ok(()),
        Err(e) => Err(weft_error(e, try_again)),
    }
}

fn check(inv: &Invocation, system: &mut dyn System) -> Result<(), Error> {
    let (att, netns, reply) = ask_about_pod(inv, system, |att, _| CniRequest::Check {
        container_id: att.container_id.clone(),
        ifname: att.ifname.clone(),
    })?;
    let att = &att;
    // The address to find: weft's answer when it gives one, else what ADD
    // reported (prevResult).
    let mut expected6: Option<Ipv6Addr> = None;
    let expected: Option<(Ipv4Addr, Option<u32>)> = match &reply {
        CniSuccess::Attachment(a) => {
            let r = validate_attachment(a)?;
            expected6 = r.address6.map(|n| n.addr());
            Some((r.address.addr(), Some(r.mtu)))
        }
        _ => None,
    };
    let from_prev = inv.conf.prev_result.as_ref().and_then(|prev| {
        let index = prev
            .interfaces
            .iter()
            .position(|i| i.name == att.ifname && i.sandbox.as_deref() == Some(netns.as_str()))?;
        prev.ips.iter().find_map(|ip| match ip.address {
            IpNet::V4(net) if ip.interface == u32::try_from(index).ok() => Some(net.addr()),
            _ => None,
        })
    });
    let found = system.inspect(&netns, &att.ifname, &att.host_veth())?;
    let check_failed =
        |what: String| Error::Custom(CODE_CHECK, "Attachment check failed".into(), what);
    let Some(addresses) = found.pod_addresses else {
        return Err(check_failed(format!(
            "no interface {} in network namespace {netns}",
            att.ifname
        )));
    };
    if !found.host_veth {
        return Err(check_failed(format!(
            "the host end {} of {} {} is missing",
            att.host_veth(),
            att.container_id,
            att.ifname
        )));
    }
    if !found.pod_up {
        return Err(check_failed(format!("{} in {netns} is down", att.ifname)));
    }
    let has = |ip: Ipv4Addr| addresses.iter().any(|(a, _)| *a == IpAddr::V4(ip));
    if let Some((ip, mtu)) = expected {
        if !has(ip) {
            return Err(check_failed(format!(
                "{} in {netns} does not have the address {ip} weft holds for {} {}",
                att.ifname, att.container_id, att.ifname
            )));
        }
        if let Some(mtu) = mtu {
            if found.pod_mtu != mtu {
                return Err(check_failed(format!(
                    "{} in {netns} has MTU {}, weft's overlay MTU is {mtu}",
                    att.ifname, found.pod_mtu
                )));
            }
        }
        if let Some(ip6) = expected6 {
            if !addresses.iter().any(|(a, _)| *a == IpAddr::V6(ip6)) {
                return Err(check_failed(format!(
                    "{} in {netns} does not have the IPv6 address {ip6} weft holds for {} {}",
                    att.ifname, att.container_id, att.ifname
                )));
            }
        }
        if let Some(prev) = from_prev {
            if prev != ip {
                return Err(check_failed(format!(
                    "prevResult says {prev}, weft holds {ip} for {} {}",
                    att.container_id, att.ifname
                )));
            }
        }
    } else if let Some(prev) = from_prev {
        if !has(prev) {
            return Err(check_failed(format!(
                "{} in {netns} does not have the address {prev} from prevResult",
                att.ifname
            )));
        }
    }
    Ok(())
}

fn status(inv: &Invocation, system: &mut dyn System) -> Result<(), Error> {
    system
        .weft(&inv.settings.socket, &CniRequest::Status)
        .map(|_| ())
        .map_err(|e| weft_error(e, not_available))
}

fn gc(inv: &Invocation, system: &mut dyn System, notes: &mut String) -> Result<(), Error> {
    let Some(valid) = inv.conf.valid_attachments.as_ref() else {
        return Err(Error::InvalidNetworkConfig(
            "GC needs \"cni.dev/valid-attachments\" (the attachments to keep) in the configuration"
                .into(),
        ));
    };
    let keep: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    // Stale veths of this network first, then weft releases their addresses.
    for link in system.host_links()? {
        let Some((network, container, ifname)) = parse_alias(&link.alias) else {
            continue;
        };
        if network != inv.conf.name || keep.contains(&(container, ifname)) {
            continue;
        }
        if system.detach(&link.name)? {
            notes.push_str(&format!(
                "weft: removed {} of {container} {ifname} (not in cni.dev/valid-attachments)\n",
                link.name
            ));
        }
    }
    let reply = system
        .weft(
            &inv.settings.socket,
            &CniRequest::Gc {
                valid: valid
                    .iter()
                    .map(|a| AttachmentKey {
                        container_id: a.container_id.clone(),
                        ifname: a.ifname.clone(),
                    })
                    .collect(),
            },
        )
        .map_err(|e| weft_error(e, try_again))?;
    if let CniSuccess::Released { released } = reply {
        if released > 0 {
            notes.push_str(&format!("weft: released {released} addresses\n"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::api::{CniError, PodAddress};
    use std::collections::HashMap;

    const MINIMAL: &str = r#"{"cniVersion":"1.0.0","name":"weftnet","type":"weft"}"#;

    fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn add_env(command: &str) -> HashMap<String, String> {
        env_of(&[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/pod1"),
            ("CNI_PATH", "/opt/cni/bin"),
        ])
    }

    fn parse_with(env: &HashMap<String, String>, stdin: &str) -> Result<Invocation, Failure> {
        let lookup = |k: &str| env.get(k).cloned();
        parse(&lookup, stdin.as_bytes())
    }

    fn code(f: &Failure) -> u32 {
        u32::from(&f.error)
    }

    /// A fake of the system: weft answers from a script, links in a map.
    #[derive(Default)]
    struct Fake {
        reply: Option<Result<CniSuccess, WeftError>>,
        requests: Vec<CniRequest>,
        attached: Vec<AttachPlan>,
        attach_fails: bool,
        host_veths: HashMap<String, String>,
        missing_netns: bool,
        inspection: Option<Inspection>,
    }

    impl System for Fake {
        fn weft(&mut self, _socket: &str, request: &CniRequest) -> Result<CniSuccess, WeftError> {
            self.requests.push(request.clone());
            match request {
                CniRequest::Del { .. } | CniRequest::Status => match &self.reply {
                    Some(Err(e)) => Err(e.clone()),
                    _ => Ok(CniSuccess::Done {}),
                },
                _ => self
                    .reply
                    .clone()
                    .unwrap_or(Err(WeftError::Unreachable("no weft".into()))),
            }
        }
        fn check_netns(&mut self, path: &str) -> Result<(), Error> {
            if self.missing_netns {
                Err(Error::NotExist(format!(
                    "CNI_NETNS={path:?} does not exist"
                )))
            } else {
                Ok(())
            }
        }
        fn attach(&mut self, plan: &AttachPlan) -> Result<Attached, Error> {
            if self.attach_fails {
                return Err(Error::Custom(
                    CODE_SETUP,
                    "Network setup failed".into(),
                    "boom".into(),
                ));
            }
            self.attached.push(plan.clone());
            self.host_veths
                .insert(plan.host_veth.clone(), plan.alias.clone());
            Ok(Attached {
                host_mac: "02:00:00:00:00:01".into(),
                pod_mac: "02:00:00:00:00:02".into(),
            })
        }
        fn detach(&mut self, host_veth: &str) -> Result<bool, Error> {
            Ok(self.host_veths.remove(host_veth).is_some())
        }
        fn inspect(&mut self, _: &str, _: &str, _: &str) -> Result<Inspection, Error> {
            Ok(self.inspection.clone().unwrap_or(Inspection {
                pod_addresses: None,
                pod_mtu: 0,
                pod_up: false,
                host_veth: false,
            }))
        }
        fn host_links(&mut self) -> Result<Vec<HostLink>, Error> {
            let mut v: Vec<HostLink> = self
                .host_veths
                .iter()
                .map(|(name, alias)| HostLink {
                    name: name.clone(),
                    alias: alias.clone(),
                })
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(v)
        }
    }

    fn bridge_reply() -> Result<CniSuccess, WeftError> {
        Ok(CniSuccess::Attachment(PodAttachment {
            address: PodAddress {
                addr: Ipv4Addr::new(10, 32, 0, 5),
                prefix_len: 12,
            },
            gateway: Some(Ipv4Addr::new(10, 32, 0, 1)),
            mtu: 1376,
            mode: AttachMode::Bridge,
            bridge: Some("weft".into()),
            address6: None,
            gateway6: None,
        }))
    }

    fn tun_reply() -> Result<CniSuccess, WeftError> {
        Ok(CniSuccess::Attachment(PodAttachment {
            address: PodAddress {
                addr: Ipv4Addr::new(10, 32, 0, 7),
                prefix_len: 32,
            },
            gateway: None,
            mtu: 1410,
            mode: AttachMode::Tun,
            bridge: None,
            address6: None,
            gateway6: None,
        }))
    }

    fn run_with(env: &HashMap<String, String>, stdin: &str, fake: &mut Fake) -> Output {
        let lookup = |k: &str| env.get(k).cloned();
        run(&lookup, stdin.as_bytes(), fake)
    }

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    }

    #[test]
    fn minimal_config_has_defaults() {
        let inv = parse_with(&add_env("ADD"), MINIMAL).unwrap();
        assert_eq!(inv.command, Cmd::Add);
        assert_eq!(inv.version, SpecVersion::new(1, 0, 0));
        assert_eq!(inv.settings.socket, "weft-cni");
        let att = inv.attachment.unwrap();
        assert_eq!(att.container_id, "c0ffee");
        assert_eq!(att.netns.as_deref(), Some("/run/netns/pod1"));
    }

    #[test]
    fn socket_can_be_overridden_and_is_checked() {
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"weft","socket":"weft-cni-b"}"#;
        assert_eq!(
            parse_with(&add_env("ADD"), conf).unwrap().settings.socket,
            "weft-cni-b"
        );
        for bad in [r#"42"#, r#""""#, r#""@x""#] {
            let conf =
                format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"weft","socket":{bad}}}"#);
            let f = parse_with(&add_env("ADD"), &conf).unwrap_err();
            assert_eq!(code(&f), 7, "{bad}");
            assert!(f.error.details().contains("\"socket\""), "{:?}", f.error);
        }
    }

    #[test]
    fn malformed_configs_are_named() {
        let f = parse_with(&add_env("ADD"), r#"{"cniVersion":"1.0.0","name":"#).unwrap_err();
        assert_eq!(code(&f), 6);
        assert!(f.error.details().contains("line 1"), "{:?}", f.error);
        let f = parse_with(&add_env("ADD"), "  ").unwrap_err();
        assert_eq!(code(&f), 6);
        assert!(f.error.details().contains("stdin is empty"));
        let f = parse_with(
            &add_env("ADD"),
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
        )
        .unwrap_err();
        assert_eq!(code(&f), 7);
        assert!(f.error.details().contains("\"bridge\""));
        let f = parse_with(
            &add_env("ADD"),
            r#"{"cniVersion":"1.0.0","name":"no spaces","type":"weft"}"#,
        )
        .unwrap_err();
        assert_eq!(code(&f), 7);
        assert!(f.error.details().contains("no spaces"));
        let f = parse_with(
            &add_env("ADD"),
            r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"host-local"}}"#,
        )
        .unwrap_err();
        assert_eq!(code(&f), 2);
        assert!(f.error.details().contains("host-local"));
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let f = parse_with(&env_of(&[]), MINIMAL).unwrap_err();
        assert_eq!(code(&f), 4);
        assert!(f.error.details().contains("CNI_COMMAND"));
        let f = parse_with(&env_of(&[("CNI_COMMAND", "FROB")]), MINIMAL).unwrap_err();
        assert_eq!(code(&f), 4);
        assert!(f.error.details().contains("FROB"));

        let mut env = add_env("ADD");
        env.remove("CNI_NETNS");
        let f = parse_with(&env, MINIMAL).unwrap_err();
        assert_eq!(code(&f), 4);
        assert!(
            f.error.details().ends_with("missing: CNI_NETNS"),
            "{:?}",
            f.error
        );
        // DEL does not need the namespace.
        env.insert("CNI_COMMAND".into(), "DEL".into());
        assert!(parse_with(&env, MINIMAL).is_ok());

        for (var, bad) in [
            ("CNI_IFNAME", "eth0/x"),
            ("CNI_CONTAINERID", "-bad id"),
            ("CNI_NETNS", "pod1"),
        ] {
            let mut env = add_env("ADD");
            env.insert(var.into(), bad.into());
            let f = parse_with(&env, MINIMAL).unwrap_err();
            assert_eq!(code(&f), 4, "{var}");
            assert!(
                f.error.details().contains(&format!("{var}={bad:?}")),
                "{:?}",
                f.error
            );
        }
    }

    #[test]
    fn versions_are_negotiated() {
        for ok in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let conf = format!(r#"{{"cniVersion":"{ok}","name":"n","type":"weft"}}"#);
            assert!(parse_with(&add_env("ADD"), &conf).is_ok(), "{ok}");
        }
        for (bad, expect) in [("0.2.0", 1), ("2.0.0", 1), ("1.x", 6)] {
            let conf = format!(r#"{{"cniVersion":"{bad}","name":"n","type":"weft"}}"#);
            let f = parse_with(&add_env("ADD"), &conf).unwrap_err();
            assert_eq!(code(&f), expect, "{bad}");
            assert!(f.error.details().contains(bad), "{:?}", f.error);
        }
        let f = parse_with(
            &add_env("CHECK"),
            r#"{"cniVersion":"0.3.1","name":"n","type":"weft"}"#,
        )
        .unwrap_err();
        assert_eq!(code(&f), 1);
        let f = parse_with(&env_of(&[("CNI_COMMAND", "STATUS")]), MINIMAL).unwrap_err();
        assert_eq!(code(&f), 1);
        assert!(f.error.details().contains("STATUS"));
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let out = run_with(
            &env_of(&[("CNI_COMMAND", "VERSION")]),
            "",
            &mut Fake::default(),
        );
        assert_eq!(out.exit, 0);
        let v = json(&out.stdout);
        assert_eq!(v["cniVersion"], "1.1.0");
        let list: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for want in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(list.contains(&want), "{list:?}");
        }
    }

    #[test]
    fn error_objects_carry_the_config_version() {
        let out = run_with(
            &env_of(&[("CNI_COMMAND", "ADD")]),
            r#"{"cniVersion":"0.4.0","name":"n","type":"weft"}"#,
            &mut Fake::default(),
        );
        assert_eq!(out.exit, 1);
        let v = json(&out.stdout);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "Invalid necessary environment variables");
        assert!(v["details"].as_str().unwrap().contains("CNI_CONTAINERID"));
    }

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("c0ffee", "eth0");
        assert_eq!(a, host_veth_name("c0ffee", "eth0"));
        assert_ne!(a, host_veth_name("c0ffee", "eth1"));
        assert_ne!(a, host_veth_name("c0ffef", "eth0"));
        assert!(a.starts_with("vweft") && a.len() == 13, "{a}");
        let alias = host_veth_alias("weftnet", "c0ffee", "eth0");
        assert_eq!(parse_alias(&alias), Some(("weftnet", "c0ffee", "eth0")));
        assert_eq!(parse_alias("something else"), None);
        assert_eq!(parse_alias("weft-cni a b c d"), None);
    }

    #[test]
    fn add_in_bridge_mode_attaches_to_the_bridge_with_the_gateway_route() {
        let mut fake = Fake {
            reply: Some(bridge_reply()),
            ..Fake::default()
        };
        let conf = r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft"}"#;
        let out = run_with(&add_env("ADD"), conf, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        let plan = &fake.attached[0];
        assert_eq!(
            plan.mode,
            Mode::Bridge {
                bridge: "weft".into()
            }
        );
        assert_eq!(plan.address.to_string(), "10.32.0.5/12");
        assert_eq!(plan.mtu, 1376);
        assert_eq!(plan.host_veth, host_veth_name("c0ffee", "eth0"));
        assert_eq!(plan.alias, "weft-cni weftnet c0ffee eth0");
        assert_eq!(plan.pod_routes.len(), 1);
        assert_eq!(plan.pod_routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(
            plan.pod_routes[0].gateway,
            Some(Ipv4Addr::new(10, 32, 0, 1))
        );
        assert!(plan.host_routes.is_empty());
        assert_eq!(plan.next_hop, None);

        let v = json(&out.stdout);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["name"], plan.host_veth.as_str());
        assert_eq!(v["interfaces"][1]["name"], "eth0");
        assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/pod1");
        assert_eq!(v["interfaces"][1]["mac"], "02:00:00:00:00:02");
        assert_eq!(v["interfaces"][1]["mtu"], 1376);
        assert_eq!(v["ips"][0]["address"], "10.32.0.5/12");
        assert_eq!(v["ips"][0]["gateway"], "10.32.0.1");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v["routes"][0]["gw"], "10.32.0.1");
    }

    #[test]
    fn add_in_bridge_mode_without_gateway_has_no_default_route() {
        let mut reply = bridge_reply();
        if let Ok(CniSuccess::Attachment(a)) = &mut reply {
            a.gateway = None;
        }
        let mut fake = Fake {
            reply: Some(reply),
            ..Fake::default()
        };
        let out = run_with(&add_env("ADD"), MINIMAL, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        assert!(fake.attached[0].pod_routes.is_empty());
        let v = json(&out.stdout);
        assert!(v.get("routes").is_none());
        assert!(v["ips"][0].get("gateway").is_none());
    }

    #[test]
    fn add_in_tun_mode_routes_via_the_link_local_next_hop() {
        let mut fake = Fake {
            reply: Some(tun_reply()),
            ..Fake::default()
        };
        let out = run_with(&add_env("ADD"), MINIMAL, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        let plan = &fake.attached[0];
        assert_eq!(plan.mode, Mode::Routed);
        assert_eq!(plan.address.to_string(), "10.32.0.7/32");
        let routes: Vec<String> = plan
            .pod_routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gateway))
            .collect();
        assert_eq!(
            routes,
            ["169.254.1.1/32 None", "0.0.0.0/0 Some(169.254.1.1)"]
        );
        assert_eq!(plan.host_routes[0].dst.to_string(), "10.32.0.7/32");
        assert_eq!(plan.next_hop, Some(ROUTED_NEXT_HOP));
        let v = json(&out.stdout);
        assert_eq!(v["cniVersion"], "1.0.0");
        // 1.0.0 has no interface MTU.
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert_eq!(v["ips"][0]["address"], "10.32.0.7/32");
        assert_eq!(v["routes"][0]["gw"], "169.254.1.1");
    }

    #[test]
    fn add_in_tun_mode_dual_stack_routes_ipv6_via_the_link_local_next_hop() {
        let mut reply = tun_reply();
        if let Ok(CniSuccess::Attachment(a)) = &mut reply {
            a.address6 = Some("fd40:0:0:1::9/128".parse().unwrap());
            // A gateway from weft is not used in routed mode.
            a.gateway6 = Some("fd40:0:0:1::1".parse().unwrap());
        }
        let mut fake = Fake {
            reply: Some(reply),
            ..Fake::default()
        };
        let out = run_with(&add_env("ADD"), MINIMAL, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        let plan = &fake.attached[0];
        assert_eq!(plan.address6.unwrap().to_string(), "fd40:0:0:1::9/128");
        assert_eq!(plan.next_hop6, Some(ROUTED_NEXT_HOP6));
        assert_eq!(plan.gateway6, Some(ROUTED_NEXT_HOP6));
        assert_eq!(
            plan.pod_routes6,
            [PlannedRoute6 {
                dst: "::/0".parse().unwrap(),
                gateway: ROUTED_NEXT_HOP6
            }]
        );
        assert_eq!(
            plan.host_routes6,
            ["fd40:0:0:1::9/128".parse::<Ipv6Net>().unwrap()]
        );
        let v = json(&out.stdout);
        assert_eq!(v["ips"][1]["address"], "fd40:0:0:1::9/128");
        assert_eq!(v["ips"][1]["gateway"], "fe80::1");
        assert!(v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "::/0" && r["gw"] == "fe80::1"));
        // Bridge mode keeps the range's prefix and plans no host route.
        let mut bridge = bridge_reply();
        if let Ok(CniSuccess::Attachment(a)) = &mut bridge {
            a.address6 = Some("fd32::5/64".parse().unwrap());
            a.gateway6 = Some("fd32::1".parse().unwrap());
        }
        let mut fake = Fake {
            reply: Some(bridge),
            ..Fake::default()
        };
        let out = run_with(&add_env("ADD"), MINIMAL, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        let plan = &fake.attached[0];
        assert_eq!(plan.address6.unwrap().to_string(), "fd32::5/64");
        assert_eq!(plan.next_hop6, None);
        assert!(plan.host_routes6.is_empty());
    }

    #[test]
    fn add_result_in_0_4_0_layout_and_chained_after_prev_result() {
        let mut fake = Fake {
            reply: Some(bridge_reply()),
            ..Fake::default()
        };
        let conf = r#"{"cniVersion":"0.4.0","name":"weftnet","type":"weft",
            "prevResult":{"cniVersion":"0.4.0",
              "interfaces":[{"name":"other0","sandbox":"/run/netns/pod1"}],
              "ips":[{"version":"4","interface":0,"address":"192.168.9.2/24"}],
              "dns":{"nameservers":["10.96.0.10"]}}}"#;
        let out = run_with(&add_env("ADD"), conf, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        let v = json(&out.stdout);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(v["interfaces"][0]["name"], "other0");
        assert_eq!(v["interfaces"][2]["name"], "eth0");
        assert!(v["interfaces"][2].get("mtu").is_none());
        assert_eq!(v["ips"][0]["address"], "192.168.9.2/24");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["address"], "10.32.0.5/12");
        assert_eq!(v["ips"][1]["version"], "4");
        assert_eq!(v["ips"][1]["interface"], 2);
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn add_failures() {
        // weft not running: try again later, naming the socket.
        let mut fake = Fake::default();
        let out = run_with(&add_env("ADD"), MINIMAL, &mut fake);
        assert_eq!(out.exit, 1);
        assert_eq!(json(&out.stdout)["code"], 11);
        // weft refuses: its code and words pass through.
        let mut fake = Fake {
            reply: Some(Err(WeftError::Refused(CniError::new(
                100,
                "range exhausted",
                "10.32.0.0/12 is full",
            )))),
            ..Fake::default()
        };
        let v = json(&run_with(&add_env("ADD"), MINIMAL, &mut fake).stdout);
        assert_eq!(v["code"], 100);
        assert!(v["details"]
            .as_str()
            .unwrap()
            .contains("10.32.0.0/12 is full"));
        // A namespace that does not exist: code 3, nothing asked of weft.
        let mut fake = Fake {
            reply: Some(bridge_reply()),
            missing_netns: true,
            ..Fake::default()
        };
        let v = json(&run_with(&add_env("ADD"), MINIMAL, &mut fake).stdout);
        assert_eq!(v["code"], 3);
        assert!(v["details"].as_str().unwrap().contains("/run/netns/pod1"));
        assert!(fake.requests.is_empty());
        // Setup fails: the address goes back to weft.
        let mut fake = Fake {
            reply: Some(bridge_reply()),
            attach_fails: true,
            ..Fake::default()
        };
        let v = json(&run_with(&add_env("ADD"), MINIMAL, &mut fake).stdout);
        assert_eq!(v["code"], CODE_SETUP);
        assert!(matches!(fake.requests.last(), Some(CniRequest::Del { .. })));
        // An undocumented answer: bridge mode without a bridge.
        let mut reply = bridge_reply();
        if let Ok(CniSuccess::Attachment(a)) = &mut reply {
            a.bridge = None;
        }
        let mut fake = Fake {
            reply: Some(reply),
            ..Fake::default()
        };
        let v = json(&run_with(&add_env("ADD"), MINIMAL, &mut fake).stdout);
        assert_eq!(v["code"], CODE_WEFT_PROTOCOL);
    }

    #[test]
    fn del_is_idempotent_and_best_effort() {
        let mut fake = Fake {
            reply: Some(bridge_reply()),
            ..Fake::default()
        };
        assert_eq!(run_with(&add_env("ADD"), MINIMAL, &mut fake).exit, 0);
        let first = run_with(&add_env("DEL"), MINIMAL, &mut fake);
        assert_eq!((first.exit, first.stdout.as_str()), (0, ""));
        assert!(fake.host_veths.is_empty());
        let again = run_with(&add_env("DEL"), MINIMAL, &mut fake);
        assert_eq!((again.exit, again.stdout.as_str()), (0, ""));
        assert!(again.stderr.contains("already deleted"));
        // weft gone: the veth is still removed and DEL succeeds, saying so.
        let mut fake = Fake {
            reply: Some(Err(WeftError::Unreachable("no weft on @weft-cni".into()))),
            ..Fake::default()
        };
        fake.host_veths
            .insert(host_veth_name("c0ffee", "eth0"), "x".into());
        let mut env = add_env("DEL");
        env.remove("CNI_NETNS");
        let out = run_with(&env, MINIMAL, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        assert!(fake.host_veths.is_empty());
        assert!(out.stderr.contains("not released"), "{}", out.stderr);
    }

    #[test]
    fn status_is_50_without_weft() {
        let conf = r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft"}"#;
        let env = env_of(&[("CNI_COMMAND", "STATUS")]);
        let mut fake = Fake {
            reply: Some(Err(WeftError::Unreachable("no weft on @weft-cni".into()))),
            ..Fake::default()
        };
        let out = run_with(&env, conf, &mut fake);
        assert_eq!(out.exit, 1);
        let v = json(&out.stdout);
        assert_eq!(v["code"], 50);
        assert!(v["details"].as_str().unwrap().contains("@weft-cni"));
        let mut fake = Fake {
            reply: Some(bridge_reply()),
            ..Fake::default()
        };
        let out = run_with(&env, conf, &mut fake);
        assert_eq!((out.exit, out.stdout.as_str()), (0, ""));
    }

    #[test]
    fn gc_removes_stale_veths_of_this_network_and_tells_weft() {
        let mut fake = Fake {
            reply: Some(Ok(CniSuccess::Released { released: 1 })),
            ..Fake::default()
        };
        for (c, net) in [
            ("keep", "weftnet"),
            ("stale", "weftnet"),
            ("other", "othernet"),
        ] {
            fake.host_veths
                .insert(host_veth_name(c, "eth0"), host_veth_alias(net, c, "eth0"));
        }
        fake.host_veths.insert("eth9".into(), String::new());
        let conf = r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft",
            "cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}"#;
        let out = run_with(&env_of(&[("CNI_COMMAND", "GC")]), conf, &mut fake);
        assert_eq!(out.exit, 0, "{}", out.stdout);
        assert!(fake
            .host_veths
            .contains_key(&host_veth_name("keep", "eth0")));
        assert!(fake
            .host_veths
            .contains_key(&host_veth_name("other", "eth0")));
        assert!(fake.host_veths.contains_key("eth9"));
        assert!(!fake
            .host_veths
            .contains_key(&host_veth_name("stale", "eth0")));
        assert_eq!(
            fake.requests,
            [CniRequest::Gc {
                valid: vec![AttachmentKey {
                    container_id: "keep".into(),
                    ifname: "eth0".into()
                }]
            }]
        );
        assert!(out.stderr.contains("released 1"));
        // Without the list, nothing is released.
        let out = run_with(
            &env_of(&[("CNI_COMMAND", "GC")]),
            r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft"}"#,
            &mut fake,
        );
        assert_eq!(json(&out.stdout)["code"], 7);
    }

    #[test]
    fn check_compares_the_pod_with_what_weft_holds() {
        let inspection = |addr: [u8; 4], mtu: u32| Inspection {
            pod_addresses: Some(vec![(IpAddr::V4(Ipv4Addr::from(addr)), 12)]),
            pod_mtu: mtu,
            pod_up: true,
            host_veth: true,
        };
        let mut fake = Fake {
            reply: Some(bridge_reply()),
            inspection: Some(inspection([10, 32, 0, 5], 1376)),
            ..Fake::default()
        };
        let out = run_with(&add_env("CHECK"), MINIMAL, &mut fake);
        assert_eq!((out.exit, out.stdout.as_str()), (0, ""));

        fake.inspection = Some(inspection([10, 32, 0, 9], 1376));
        let v = json(&run_with(&add_env("CHECK"), MINIMAL, &mut fake).stdout);
        assert_eq!(v["code"], CODE_CHECK);
        assert!(v["details"].as_str().unwrap().contains("10.32.0.5"));

        fake.inspection = Some(inspection([10, 32, 0, 5], 1500));
        let v = json(&run_with(&add_env("CHECK"), MINIMAL, &mut fake).stdout);
        assert!(v["details"].as_str().unwrap().contains("MTU 1500"));

        fake.inspection = None;
        let v = json(&run_with(&add_env("CHECK"), MINIMAL, &mut fake).stdout);
        assert!(v["details"].as_str().unwrap().contains("no interface eth0"));

        // weft no longer holds it.
        fake.reply = Some(Err(WeftError::Refused(CniError::new(
            3,
            "unknown",
            "no address for c0ffee eth0",
        ))));
        let v = json(&run_with(&add_env("CHECK"), MINIMAL, &mut fake).stdout);
        assert_eq!(v["code"], 3);

        // prevResult disagreeing with weft.
        fake.reply = Some(bridge_reply());
        fake.inspection = Some(inspection([10, 32, 0, 5], 1376));
        let conf = r#"{"cniVersion":"1.0.0","name":"weftnet","type":"weft",
            "prevResult":{"cniVersion":"1.0.0",
              "interfaces":[{"name":"vweftx"},{"name":"eth0","sandbox":"/run/netns/pod1"}],
              "ips":[{"interface":1,"address":"10.32.0.6/12"}]}}"#;
        let v = json(&run_with(&add_env("CHECK"), conf, &mut fake).stdout);
        assert!(
            v["details"]
                .as_str()
                .unwrap()
                .contains("prevResult says 10.32.0.6"),
            "{v}"
        );
    }
}
