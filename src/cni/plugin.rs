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
use std::net::{IpAddr, Ipv4Addr};

use rscni_types::error::Error;
use rscni_types::ipnet::{IpNet, Ipv4Net};
use rscni_types::legacy;
use rscni_types::types::{
    CNIResult, CNIResultWithVersion, Cmd, ContainerId, ErrorResult, Interface, InterfaceName,
    IpConfig, NetConf, Route, CNI_COMMAND, CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS,
};
use rscni_types::version::{PluginInfo, SpecVersion};
use serde_json::Value;

use super::api::{AttachMode, AttachmentKey, CniRequest, CniSuccess, PodAttachment, DEFAULT_SOCKET};
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
    /// Routes inside the pod, in order.
    pub pod_routes: Vec<PlannedRoute>,
    /// Routes on the host via the host end.
    pub host_routes: Vec<PlannedRoute>,
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
    fn inspect(&mut self, netns: &str, ifname: &str, host_veth: &str)
        -> Result<Inspection, Error>;
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
        WeftError::Protocol(why) => Error::Custom(
            CODE_WEFT_PROTOCOL,
            "Unexpected answer from weft".into(),
            why,
        ),
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
    Error::Custom(CODE_WEFT_PROTOCOL, "Unexpected answer from weft".into(), why)
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
    Ok(AddReply {
        address,
        gateway,
        mtu: reply.mtu,
        mode,
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
    AttachPlan {
        netns: att.netns.clone().unwrap_or_default(),
        ifname: att.ifname.clone(),
        host_veth: att.host_veth(),
        alias: host_veth_alias(network, &att.container_id, &att.ifname),
        mtu: reply.mtu,
        address,
        gateway,
        mode: reply.mode.clone(),
        pod_routes,
        host_routes,
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

fn add(inv: &Invocation, system: &mut dyn System) -> Result<String, Error> {
    let att = attachment(inv)?;
    let netns = att.netns.clone().unwrap_or_default();
    // Before weft allocates anything: a namespace that is gone gets no address.
    system.check_netns(&netns)?;
    let reply = system
        .weft(
            &inv.settings.socket,
            &CniRequest::Add {
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
                netns: netns.clone(),
            },
        )
        .map_err(|e| weft_error(e, try_again))?;
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
            let _ = system.weft(
                &inv.settings.socket,
                &CniRequest::Del {
                    container_id: att.container_id.clone(),
                    ifname: att.ifname.clone(),
                },
            );
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
    match system.weft(
        &inv.settings.socket,
        &CniRequest::Del {
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
        },
    ) {
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
    let att = attachment(inv)?;
    let netns = att.netns.clone().unwrap_or_default();
    system.check_netns(&netns)?;
    let reply = system
        .weft(
            &inv.settings.socket,
            &CniRequest::Check {
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            },
        )
        .map_err(|e| weft_error(e, try_again))?;
    // The address to find: weft's answer when it gives one, else what ADD
    // reported (prevResult).
    let expected: Option<(Ipv4Addr, Option<u32>)> = match &reply {
        CniSuccess::Attachment(a) => {
            let r = validate_attachment(a)?;
            Some((r.address.addr(), Some(r.mtu)))
        }
        _ => None,
    };
    let from_prev = inv.conf.prev_result.as_ref().and_then(|prev| {
        let index = prev.interfaces.iter().position(|i| {
            i.name == att.ifname && i.sandbox.as_deref() == Some(netns.as_str())
        })?;
        prev.ips.iter().find_map(|ip| match ip.address {
            IpNet::V4(net) if ip.interface == u32::try_from(index).ok() => Some(net.addr()),
            _ => None,
        })
    });
    let found = system.inspect(&netns, &att.ifname, &att.host_veth())?;
    let check_failed = |what: String| Error::Custom(CODE_CHECK, "Attachment check failed".into(), what);
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
            "GC needs \"cni.dev/valid-attachments\" (the attachments to keep) in the configuration".into(),
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
