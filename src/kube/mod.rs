//! Peers and the pod range from the Kubernetes API (`weft launch --kube`).
//!
//! Every refresh reads the node list (`GET /api/v1/nodes`). The peers are
//! the nodes' InternalIP addresses, every node but this one (named by
//! `--kube-node-name`, or `NODE_NAME` that the DaemonSet sets from the
//! downward API), each with this host's own listen port. This node's
//! `spec.podCIDR` (or the first IPv4 of `spec.podCIDRs`), when set, is the
//! range IPAM hands pod addresses out of; the first IPv6 entry is the
//! IPv6 one (dual stack).
//!
//! The core here is sans-IO and total: [`parse_node_list`] takes any bytes
//! (bounded: [`MAX_BODY`], [`MAX_NODES`]) and [`PeerSync`] turns successive
//! node lists into connects and forgets. [`client`] does the HTTPS GET and
//! [`refresh`] runs the loop on its own thread.

pub mod client;
pub mod refresh;

use crate::mesh::claims::IpPrefix;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// Largest node list body read (a 5000-node cluster's list is a few MiB).
pub const MAX_BODY: usize = 16 << 20;
/// Most nodes taken from one list (Kubernetes supports 5000).
pub const MAX_NODES: usize = 10_000;
/// Most addresses and pod CIDRs kept per node.
const MAX_PER_NODE: usize = 16;
/// Longest node name (a Kubernetes name is at most 253 bytes).
const MAX_NAME: usize = 253;

/// One node of the list, as weft uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeNode {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses` of type InternalIP that parse, in order.
    pub internal_ips: Vec<IpAddr>,
    /// `spec.podCIDR`, as written (may be empty or malformed).
    pub pod_cidr: Option<String>,
    /// `spec.podCIDRs`, as written.
    pub pod_cidrs: Vec<String>,
}

#[derive(Deserialize)]
struct NodeListJson {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    items: Option<Vec<NodeJson>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeJson {
    metadata: MetaJson,
    spec: SpecJson,
    status: StatusJson,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MetaJson {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SpecJson {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StatusJson {
    addresses: Option<Vec<AddressJson>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AddressJson {
    #[serde(rename = "type")]
    kind: String,
    address: String,
}

/// Parses a `NodeList` (the body of `GET /api/v1/nodes`). Nodes without a
/// name are left out; addresses that do not parse are left out. Errors say
/// what was wrong with the body (an API `Status` object's message, say).
pub fn parse_node_list(body: &[u8]) -> Result<Vec<KubeNode>, String> {
    if body.len() > MAX_BODY {
        return Err(format!(
            "the node list is {} bytes, over the {MAX_BODY}-byte limit",
            body.len()
        ));
    }
    let list: NodeListJson = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not a Kubernetes node list ({e})"))?;
    match list.kind.as_deref() {
        Some("NodeList") | None => {}
        Some("Status") => {
            return Err(format!(
                "the API answered with an error: {}",
                list.message.as_deref().unwrap_or("(no message)")
            ))
        }
        Some(other) => {
            return Err(format!(
                "the answer is a {other:?}, not a NodeList: is the URL the API server's?"
            ))
        }
    }
    let items = list
        .items
        .ok_or("the answer has no \"items\": not a Kubernetes node list")?;
    if items.len() > MAX_NODES {
        return Err(format!(
            "the node list has {} nodes, over the {MAX_NODES} weft takes",
            items.len()
        ));
    }
    let mut nodes = Vec::with_capacity(items.len());
    for item in items {
        let Some(name) = item
            .metadata
            .name
            .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
        else {
            continue;
        };
        let internal_ips = item
            .status
            .addresses
            .unwrap_or_default()
            .iter()
            .filter(|a| a.kind == "InternalIP")
            .filter_map(|a| a.address.trim().parse().ok())
            .take(MAX_PER_NODE)
            .collect();
        let mut pod_cidrs = item.spec.pod_cidrs.unwrap_or_default();
        pod_cidrs.truncate(MAX_PER_NODE);
        nodes.push(KubeNode {
            name,
            internal_ips,
            pod_cidr: item.spec.pod_cidr.filter(|c| !c.is_empty()),
            pod_cidrs,
        });
    }
    Ok(nodes)
}

impl KubeNode {
    /// The node's IPv4 pod range: `spec.podCIDR` when it is IPv4, else the
    /// first IPv4 of `spec.podCIDRs`; `Ok(None)` when it has none. A
    /// malformed value is an error naming it.
    pub fn pod_cidr_v4(&self) -> Result<Option<IpPrefix>, String> {
        self.pod_cidr_of(true)
    }

    /// The node's IPv6 pod range: `spec.podCIDR` when it is IPv6, else the
    /// first IPv6 of `spec.podCIDRs` (a dual-stack node lists one of each
    /// family); `Ok(None)` when it has none. A malformed value is an error
    /// naming it.
    pub fn pod_cidr_v6(&self) -> Result<Option<IpPrefix>, String> {
        self.pod_cidr_of(false)
    }

    /// The first pod range of the family (`v4`), checking every value
    /// before it.
    fn pod_cidr_of(&self, v4: bool) -> Result<Option<IpPrefix>, String> {
        let candidates = self.pod_cidr.iter().chain(self.pod_cidrs.iter());
        for text in candidates {
            let parsed = parse_cidr(text).map_err(|e| {
                format!(
                    "node {}: pod CIDR {text:?} in the API is not a CIDR ({e})",
                    self.name
                )
            })?;
            if parsed.is_ipv4() == v4 {
                return Ok(Some(parsed));
            }
        }
        Ok(None)
    }

    /// The address to dial: the first InternalIP of the family wanted
    /// (`v6`), else the first of the other.
    pub fn dial_address(&self, v6: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .or_else(|| self.internal_ips.first())
            .copied()
    }
}

/// A CIDR with its host bits clear (`10.244.1.0/24`).
fn parse_cidr(text: &str) -> Result<IpPrefix, String> {
    let (addr, len) = text.split_once('/').ok_or("no /LENGTH")?;
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let len: u8 = len.parse().map_err(|_| "the length is not a number")?;
    let prefix = IpPrefix::new(addr, len).ok_or("the length is too long")?;
    if prefix.addr() != addr {
        return Err("host bits are set".into());
    }
    Ok(prefix)
}

/// What one node list means for this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Whether this node (`--kube-node-name`) is in the list.
    pub found_self: bool,
    /// This node's IPv4 pod range (`Err`: malformed in the API).
    pub pod_cidr: Result<Option<IpPrefix>, String>,
    /// This node's IPv6 pod range (`Err`: malformed in the API).
    pub pod_cidr6: Result<Option<IpPrefix>, String>,
    /// Every other node with an address to dial: name and address.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Other nodes without any InternalIP.
    pub without_address: Vec<String>,
}

/// Reads a node list for the node `me`; peers are dialled on `port`, the
/// InternalIP of family `v6` preferred.
pub fn view(nodes: &[KubeNode], me: &str, port: u16, v6: bool) -> NodeView {
    let mut peers = BTreeMap::new();
    let mut without_address = Vec::new();
    let mut found_self = false;
    let mut pod_cidr = Ok(None);
    let mut pod_cidr6 = Ok(None);
    for node in nodes {
        if node.name == me {
            found_self = true;
            pod_cidr = node.pod_cidr_v4();
            pod_cidr6 = node.pod_cidr_v6();
            continue;
        }
        match node.dial_address(v6) {
            Some(ip) => {
                peers.insert(node.name.clone(), SocketAddr::new(ip, port));
            }
            None => without_address.push(node.name.clone()),
        }
    }
    NodeView {
        found_self,
        pod_cidr,
        pod_cidr6,
        peers,
        without_address,
    }
}

/// A change to the peer set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Node `name` appeared (or moved to `addr`): connect.
    Connect(String, SocketAddr),
    /// Node `name` is gone (or moved away from `addr`): forget.
    Forget(String, SocketAddr),
}

/// The peers the API gave so far, and what a new list changes. Addresses
/// also given with `--peer` are never connected or forgotten from here
/// (they stay peers whatever the API says).
#[derive(Debug, Default)]
pub struct PeerSync {
    current: BTreeMap<String, SocketAddr>,
    fixed: BTreeSet<SocketAddr>,
}

impl PeerSync {
    /// Starts with no API peers; `fixed` are the `--peer` addresses.
    pub fn new(fixed: impl IntoIterator<Item = SocketAddr>) -> PeerSync {
        PeerSync {
            current: BTreeMap::new(),
            fixed: fixed.into_iter().collect(),
        }
    }

    /// The API's peers now, by node name.
    pub fn current(&self) -> &BTreeMap<String, SocketAddr> {
        &self.current
    }

    /// Takes the peers of a new list; returns the forgets, then the
    /// connects, to carry out.
    pub fn update(&mut self, peers: &BTreeMap<String, SocketAddr>) -> Vec<PeerChange> {
        let mut changes = Vec::new();
        let still_used: BTreeSet<SocketAddr> = peers.values().copied().collect();
        for (name, addr) in &self.current {
            if peers.get(name) != Some(addr)
                && !still_used.contains(addr)
                && !self.fixed.contains(addr)
            {
                changes.push(PeerChange::Forget(name.clone(), *addr));
            }
        }
        let had: BTreeSet<SocketAddr> = self.current.values().copied().collect();
        let mut connecting = BTreeSet::new();
        for (name, addr) in peers {
            if !had.contains(addr) && !self.fixed.contains(addr) && connecting.insert(*addr) {
                changes.push(PeerChange::Connect(name.clone(), *addr));
            }
        }
        self.current = peers.clone();
        changes
    }
}

#[cfg(test)]
mod tests;
