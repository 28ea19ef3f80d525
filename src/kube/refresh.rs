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
    /// Whether IPAM wants this node's pod range (`--ipalloc-range`).
    pub pod_cidr: bool,
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
        if setup.pod_cidr && v.found_self && self.pod_cidr.as_ref() != Some(&v.pod_cidr) {
            match &v.pod_cidr {
                Err(e) => tracing::error!("Kubernetes: {e}; IPAM keeps its range as it is"),
                Ok(cidr) => match ask(ControlRequest::KubePodCidr { cidr: *cidr }) {
                    None => return false,
                    Some(r) if r.ok => tracing::info!("Kubernetes: {}", r.message),
                    Some(r) => tracing::error!("Kubernetes: {}", r.message),
                },
            }
            self.pod_cidr = Some(v.pod_cidr);
        }
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
                ControlRequest::KubePodCidr {
                    cidr: Some("10.244.1.0/24".parse().unwrap())
                }
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
            vec![ControlRequest::KubePodCidr { cidr: None }]
        );
    }
}
