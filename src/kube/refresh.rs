//! The refresh loop of `--kube`, on its own thread (never the datapath's):
//! every `--kube-refresh` it reads the node list and hands the changes to
//! the router through the same requests `weft connect` and `weft forget`
//! send, and this node's pod range to IPAM.
//!
//! Every decision is logged once: which node this is, which peers came
//! from the API, the pod range; an unreachable API once per change of
//! error (and once when it answers again). Peers stay as they are while
//! the API cannot be read.

use super::client::{fetch_nodes, ApiConfig};
use super::{view, PeerChange, PeerSync};
use crate::api::control::{ControlReply, ControlRequest, PendingRequest};
use crate::mesh::claims::IpPrefix;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the refresh loop needs.
#[derive(Debug, Clone)]
pub struct RefreshSetup {
    /// The API and its credentials.
    pub api: ApiConfig,
    /// This node's name.
    pub node: String,
    /// The port peers are dialled on (this host's listen port).
    pub port: u16,
    /// Prefer nodes' IPv6 InternalIP (this host listens on IPv6).
    pub v6: bool,
    /// `--kube-refresh`.
    pub every: Duration,
    /// The `--peer` addresses: never connected or forgotten from here.
    pub fixed: Vec<SocketAddr>,
    /// Whether IPAM wants this node's IPv4 pod range (`--ipalloc-range`
    /// without an IPv4 `--ipalloc-pod-cidr`).
    pub pod_cidr: bool,
    /// Whether IPAM wants this node's IPv6 pod range (an IPv6
    /// `--ipalloc-range` without an IPv6 `--ipalloc-pod-cidr`).
    pub pod_cidr6: bool,
    /// IPAM runs without an IPv6 range: the node's IPv6 podCIDR is not
    /// used, and the log says so once.
    pub ipv4_only_ipam: bool,
}

/// How long to wait for the router to take a request.
const ANSWER: Duration = Duration::from_secs(5);

/// Starts the loop; it ends when the router is gone.
pub fn spawn(
    setup: RefreshSetup,
    requests: crossbeam_channel::Sender<PendingRequest>,
    waker: Arc<mio::Waker>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("weft-kube".into())
        .spawn(move || {
            let mut state = Refresh::new(&setup);
            let ask = |request: ControlRequest| -> Option<ControlReply> {
                let (tx, rx) = crossbeam_channel::bounded(1);
                requests.send(PendingRequest { request, reply: tx }).ok()?;
                let _ = waker.wake();
                Some(rx.recv_timeout(ANSWER).unwrap_or_else(|_| {
                    ControlReply::refused("the router did not answer within 5 s")
                }))
            };
            loop {
                let result = fetch_nodes(&setup.api);
                if !state.take(&setup, result, &ask) {
                    return;
                }
                std::thread::sleep(setup.every);
            }
        })?;
    Ok(())
}

/// What the loop remembers between refreshes, to log changes only.
struct Refresh {
    sync: PeerSync,
    error: Option<String>,
    reached: bool,
    found_self: Option<bool>,
    without_address: Vec<String>,
    pod_cidr: Option<Result<Option<IpPrefix>, String>>,
    pod_cidr6: Option<Result<Option<IpPrefix>, String>>,
    /// The IPv6 podCIDR last logged as not used (IPAM without IPv6).
    unused6: Option<IpPrefix>,
}

impl Refresh {
    fn new(setup: &RefreshSetup) -> Refresh {
        Refresh {
            sync: PeerSync::new(setup.fixed.iter().copied()),
            error: None,
            reached: false,
            found_self: None,
            without_address: Vec::new(),
            pod_cidr: None,
            pod_cidr6: None,
            unused6: None,
        }
    }

    /// Takes one fetch's result; `false` once the router is gone.
    fn take(
        &mut self,
        setup: &RefreshSetup,
        result: Result<Vec<super::KubeNode>, String>,
        ask: &dyn Fn(ControlRequest) -> Option<ControlReply>,
    ) -> bool {
        let url = setup.api.nodes_url();
        let nodes = match result {
            Ok(n) => n,
            Err(e) => {
                if self.error.as_ref() != Some(&e) {
                    tracing::warn!(
                        "Kubernetes API: {e}; retrying every {} s, the peers stay as they are",
                        setup.every.as_secs_f32()
                    );
                    self.error = Some(e);
                }
                return true;
            }
        };
        if self.error.take().is_some() || !self.reached {
            tracing::info!("Kubernetes API {url} answers: {} node(s)", nodes.len());
            self.reached = true;
        }
        let v = view(&nodes, &setup.node, setup.port, setup.v6);
        if self.found_self != Some(v.found_self) {
            if v.found_self {
                tracing::info!(
                    "Kubernetes: this host is node {}; the other nodes are its peers",
                    setup.node
                );
            } else {
                tracing::warn!(
                    "Kubernetes: node {} is not in the API's node list (is --kube-node-name / NODE_NAME this node's name?); every listed node is a peer",
                    setup.node
                );
            }
            self.found_self = Some(v.found_self);
        }
        if self.without_address != v.without_address {
            if !v.without_address.is_empty() {
                tracing::warn!(
                    "Kubernetes: node(s) {} have no InternalIP address: not peers",
                    v.without_address.join(", ")
                );
            }
            self.without_address = v.without_address.clone();
        }
        for change in self.sync.update(&v.peers) {
            let (request, what) = match &change {
                PeerChange::Connect(name, addr) => (
                    ControlRequest::Connect {
                        peer: addr.to_string(),
                    },
                    format!("node {name} at {addr} is a peer (from the API): connecting"),
                ),
                PeerChange::Forget(name, addr) => (
                    ControlRequest::Forget {
                        peer: addr.to_string(),
                    },
                    format!("node {name} at {addr} left the API's node list: forgetting it"),
                ),
            };
            match ask(request) {
                None => return false,
                Some(r) if r.ok => tracing::info!("Kubernetes: {what}"),
                Some(r) => tracing::warn!("Kubernetes: {what}: {}", r.message),
            }
        }
        if !v.found_self {
            return true;
        }
        if setup.pod_cidr && !Self::pass_pod_cidr(&mut self.pod_cidr, &v.pod_cidr, false, ask) {
            return false;
        }
        if setup.pod_cidr6 && !Self::pass_pod_cidr(&mut self.pod_cidr6, &v.pod_cidr6, true, ask) {
            return false;
        }
        let unused6 = v.pod_cidr6.clone().ok().flatten();
        if setup.ipv4_only_ipam && self.unused6 != unused6 {
            if let Some(cidr) = unused6 {
                tracing::info!(
                    "Kubernetes: node {}'s IPv6 podCIDR {cidr} is not used: IPAM has no IPv6 --ipalloc-range, so pods get IPv4 addresses only (for dual-stack pods add an IPv6 --ipalloc-range that holds every node's IPv6 podCIDR)",
                    setup.node
                );
            }
            self.unused6 = unused6;
        }
        true
    }

    /// Hands this node's pod range of one family (`ipv6`) to IPAM when it
    /// changed since `last`; `false` once the router is gone.
    fn pass_pod_cidr(
        last: &mut Option<Result<Option<IpPrefix>, String>>,
        cidr: &Result<Option<IpPrefix>, String>,
        ipv6: bool,
        ask: &dyn Fn(ControlRequest) -> Option<ControlReply>,
    ) -> bool {
        if last.as_ref() == Some(cidr) {
            return true;
        }
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        match cidr {
            Err(e) => tracing::error!("Kubernetes: {e}; IPAM keeps its {family} range as it is"),
            Ok(cidr) => match ask(ControlRequest::KubePodCidr { cidr: *cidr, ipv6 }) {
                None => return false,
                Some(r) if r.ok => tracing::info!("Kubernetes: {}", r.message),
                Some(r) => tracing::error!("Kubernetes: {}", r.message),
            },
        }
        *last = Some(cidr.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::node_json;
    use super::*;
    use std::cell::RefCell;

    fn setup() -> RefreshSetup {
        RefreshSetup {
            api: ApiConfig {
                url: "https://198.18.0.1:6443".into(),
                token_file: None,
                ca_file: None,
            },
            node: "host1".into(),
            port: 6783,
            v6: false,
            every: Duration::from_secs(1),
            fixed: vec![],
            pod_cidr: true,
            pod_cidr6: false,
            ipv4_only_ipam: true,
        }
    }

    /// The request handing `cidr` to the allocator of its family.
    fn pod_cidr(cidr: &str, ipv6: bool) -> ControlRequest {
        ControlRequest::KubePodCidr {
            cidr: Some(cidr.parse().unwrap()),
            ipv6,
        }
    }

    fn nodes(list: &[String]) -> Result<Vec<super::super::KubeNode>, String> {
        super::super::parse_node_list(format!(r#"{{"items":[{}]}}"#, list.join(",")).as_bytes())
    }

    #[test]
    fn changes_reach_the_router_once_and_errors_change_nothing() {
        let s = setup();
        let asked = RefCell::new(Vec::new());
        let ask = |r: ControlRequest| {
            asked.borrow_mut().push(r);
            Some(ControlReply::done("ok"))
        };
        let mut state = Refresh::new(&s);
        let two = nodes(&[
            node_json("host1", &["198.18.0.1"], Some("10.244.1.0/24")),
            node_json("host2", &["198.18.0.2"], None),
        ]);
        assert!(state.take(&s, two.clone(), &ask));
        assert_eq!(
            asked.take(),
            vec![
                ControlRequest::Connect {
                    peer: "198.18.0.2:6783".into()
                },
                pod_cidr("10.244.1.0/24", false)
            ]
        );
        assert!(state.take(&s, Err("down".into()), &ask));
        assert!(state.take(&s, two, &ask));
        assert!(asked.take().is_empty());
        let one = nodes(&[node_json("host1", &["198.18.0.1"], Some("10.244.1.0/24"))]);
        assert!(state.take(&s, one, &ask));
        assert_eq!(
            asked.take(),
            vec![ControlRequest::Forget {
                peer: "198.18.0.2:6783".into()
            }]
        );
        // The router gone: the loop ends.
        let gone = |_: ControlRequest| None;
        let three = nodes(&[node_json("host3", &["198.18.0.3"], None)]);
        assert!(!state.take(&s, three, &gone));
    }

    #[test]
    fn the_pod_range_waits_for_this_node_to_be_listed() {
        let s = setup();
        let asked = RefCell::new(Vec::new());
        let ask = |r: ControlRequest| {
            asked.borrow_mut().push(r);
            Some(ControlReply::done("ok"))
        };
        let mut state = Refresh::new(&s);
        assert!(state.take(&s, nodes(&[]), &ask));
        assert!(asked.take().is_empty());
        assert!(state.take(&s, nodes(&[node_json("host1", &[], None)]), &ask));
        assert_eq!(
            asked.take(),
            vec![ControlRequest::KubePodCidr {
                cidr: None,
                ipv6: false
            }]
        );
    }

    #[test]
    fn each_family_of_a_dual_stack_node_reaches_its_allocator_alone() {
        let mut s = setup();
        s.pod_cidr6 = true;
        s.ipv4_only_ipam = false;
        let asked = RefCell::new(Vec::new());
        let ask = |r: ControlRequest| {
            asked.borrow_mut().push(r);
            Some(ControlReply::done("ok"))
        };
        let mut state = Refresh::new(&s);
        let dual = |v6: &str| {
            nodes(&[node_json(
                "host1",
                &["198.18.0.1"],
                Some(&format!("10.244.1.0/24,{v6}")),
            )])
        };
        assert!(state.take(&s, dual("fd00:10:244:1::/64"), &ask));
        assert_eq!(
            asked.take(),
            vec![
                pod_cidr("10.244.1.0/24", false),
                pod_cidr("fd00:10:244:1::/64", true)
            ]
        );
        // Only the IPv6 range changes: only it is sent.
        assert!(state.take(&s, dual("fd00:10:244:9::/64"), &ask));
        assert_eq!(asked.take(), vec![pod_cidr("fd00:10:244:9::/64", true)]);
        // A malformed IPv6 range is logged, not sent; IPv4 stays.
        assert!(state.take(&s, dual("fd00:10:244:9::1/64"), &ask));
        assert!(asked.take().is_empty());
        // --ipalloc-pod-cidr gave the IPv4 range: only IPv6 from the API.
        s.pod_cidr = false;
        let mut state = Refresh::new(&s);
        assert!(state.take(&s, dual("fd00:10:244:1::/64"), &ask));
        assert_eq!(asked.take(), vec![pod_cidr("fd00:10:244:1::/64", true)]);
        // IPAM without an IPv6 range: the IPv6 podCIDR is never sent.
        let s = setup();
        let mut state = Refresh::new(&s);
        assert!(state.take(&s, dual("fd00:10:244:1::/64"), &ask));
        assert_eq!(asked.take(), vec![pod_cidr("10.244.1.0/24", false)]);
        assert_eq!(state.unused6, Some("fd00:10:244:1::/64".parse().unwrap()));
    }
}
