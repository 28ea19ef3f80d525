//! The node-list parser and the peer set it drives.

use super::*;

/// A node object as the API writes it (trimmed). `pod_cidr` may list a
/// dual-stack node's two ranges, comma-separated: `spec.podCIDR` is the
/// first, `spec.podCIDRs` all.
pub fn node_json(name: &str, ips: &[&str], pod_cidr: Option<&str>) -> String {
    let addrs: Vec<String> = ips
        .iter()
        .map(|ip| format!(r#"{{"type":"InternalIP","address":"{ip}"}}"#))
        .chain([format!(r#"{{"type":"Hostname","address":"{name}"}}"#)])
        .collect();
    let spec = match pod_cidr {
        Some(c) => {
            let all: Vec<String> = c.split(',').map(|c| format!("{c:?}")).collect();
            format!(
                r#"{{"podCIDR":{},"podCIDRs":[{}],"providerID":"x"}}"#,
                all[0],
                all.join(",")
            )
        }
        None => "{}".into(),
    };
    format!(
        r#"{{"metadata":{{"name":"{name}","uid":"u","labels":{{"a":"b"}}}},"spec":{spec},"status":{{"addresses":[{}],"conditions":[]}}}}"#,
        addrs.join(",")
    )
}

fn list(nodes: &[String]) -> String {
    format!(
        r#"{{"kind":"NodeList","apiVersion":"v1","metadata":{{"resourceVersion":"1"}},"items":[{}]}}"#,
        nodes.join(",")
    )
}

#[test]
fn a_node_list_gives_names_internal_ips_and_pod_cidrs() {
    let body = list(&[
        node_json("host1", &["198.18.0.1", "fd00::1"], Some("10.244.1.0/24")),
        node_json("host2", &["198.18.0.2"], None),
    ]);
    let nodes = parse_node_list(body.as_bytes()).unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0].name, "host1");
    assert_eq!(
        nodes[0].internal_ips,
        vec![
            "198.18.0.1".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(
        nodes[0].pod_cidr_v4().unwrap(),
        Some("10.244.1.0/24".parse().unwrap())
    );
    assert_eq!(nodes[1].pod_cidr_v4().unwrap(), None);
    assert_eq!(
        nodes[0].dial_address(true),
        Some("fd00::1".parse().unwrap())
    );
    assert_eq!(
        nodes[1].dial_address(true),
        Some("198.18.0.2".parse().unwrap())
    );
}

#[test]
fn the_first_ipv4_pod_cidr_is_taken_and_malformed_ones_are_named() {
    let dual = r#"{"items":[{"metadata":{"name":"a"},"spec":{"podCIDR":"fd00:1::/64","podCIDRs":["fd00:1::/64","10.244.3.0/24"]}}]}"#;
    let nodes = parse_node_list(dual.as_bytes()).unwrap();
    assert_eq!(
        nodes[0].pod_cidr_v4().unwrap(),
        Some("10.244.3.0/24".parse().unwrap())
    );
    for bad in ["10.244.3.1/24", "10.244.3.0", "banana/8", "10.0.0.0/40"] {
        let body =
            format!(r#"{{"items":[{{"metadata":{{"name":"a"}},"spec":{{"podCIDR":"{bad}"}}}}]}}"#);
        let e = parse_node_list(body.as_bytes())
            .unwrap()
            .remove(0)
            .pod_cidr_v4()
            .unwrap_err();
        assert!(e.contains(bad) && e.contains("node a"), "{bad}: {e}");
    }
}

#[test]
fn a_dual_stack_node_gives_one_pod_cidr_of_each_family() {
    // kube-controller-manager lists the IPv4 range first on an IPv4-first
    // cluster, the IPv6 one first on an IPv6-first one.
    for cidrs in [
        "10.244.3.0/24,fd00:10:244:3::/64",
        "fd00:10:244:3::/64,10.244.3.0/24",
    ] {
        let body = list(&[node_json("a", &["198.18.0.1"], Some(cidrs))]);
        let node = parse_node_list(body.as_bytes()).unwrap().remove(0);
        assert_eq!(
            node.pod_cidr_v4().unwrap(),
            Some("10.244.3.0/24".parse().unwrap()),
            "{cidrs}"
        );
        assert_eq!(
            node.pod_cidr_v6().unwrap(),
            Some("fd00:10:244:3::/64".parse().unwrap()),
            "{cidrs}"
        );
        let v = view(&[node], "a", 6783, false);
        assert_eq!(v.pod_cidr6, Ok(Some("fd00:10:244:3::/64".parse().unwrap())));
    }
    // Single stack: no IPv6 range, and no IPv4 one on an IPv6-only node.
    let body = list(&[
        node_json("v4", &[], Some("10.244.1.0/24")),
        node_json("v6", &[], Some("fd00:10:244:2::/64")),
        node_json("none", &[], None),
    ]);
    let nodes = parse_node_list(body.as_bytes()).unwrap();
    assert_eq!(nodes[0].pod_cidr_v6().unwrap(), None);
    assert_eq!(nodes[1].pod_cidr_v4().unwrap(), None);
    assert_eq!(
        nodes[1].pod_cidr_v6().unwrap(),
        Some("fd00:10:244:2::/64".parse().unwrap())
    );
    assert_eq!(nodes[2].pod_cidr_v6().unwrap(), None);
    assert_eq!(view(&nodes, "none", 6783, false).pod_cidr6, Ok(None));
    // Malformed IPv6 entries are named, with the node.
    for bad in ["fd00:1::1/64", "fd00:1::", "fd00:zz::/64", "fd00:1::/129"] {
        let body = format!(
            r#"{{"items":[{{"metadata":{{"name":"a"}},"spec":{{"podCIDR":"10.244.3.0/24","podCIDRs":["10.244.3.0/24","{bad}"]}}}}]}}"#
        );
        let node = parse_node_list(body.as_bytes()).unwrap().remove(0);
        let e = node.pod_cidr_v6().unwrap_err();
        assert!(e.contains(bad) && e.contains("node a"), "{bad}: {e}");
        let v = view(&[node], "a", 6783, false);
        assert!(v.pod_cidr6.is_err(), "{bad}");
        // The IPv4 range before it still counts.
        assert_eq!(v.pod_cidr, Ok(Some("10.244.3.0/24".parse().unwrap())));
    }
}

#[test]
fn errors_and_foreign_answers_are_refused_readably() {
    let status = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes is forbidden: User \"system:serviceaccount:kube-system:weft\" cannot list resource \"nodes\"","code":403}"#;
    let e = parse_node_list(status.as_bytes()).unwrap_err();
    assert!(e.contains("cannot list resource"), "{e}");
    let e = parse_node_list(br#"{"kind":"PodList","items":[]}"#).unwrap_err();
    assert!(e.contains("PodList"), "{e}");
    let e = parse_node_list(b"<html>hello</html>").unwrap_err();
    assert!(e.contains("not a Kubernetes node list"), "{e}");
    let e = parse_node_list(br#"{"kind":"NodeList"}"#).unwrap_err();
    assert!(e.contains("items"), "{e}");
    let e = parse_node_list(&vec![b' '; MAX_BODY + 1]).unwrap_err();
    assert!(e.contains("limit"), "{e}");
    let e = parse_node_list(br#"{"items":[{"metadata":{"name":5}}]}"#).unwrap_err();
    assert!(e.contains("not a Kubernetes node list"), "{e}");
}

#[test]
fn nameless_nodes_and_bad_addresses_are_left_out() {
    let body = r#"{"items":[{"metadata":{}},{"metadata":{"name":""}},{"metadata":{"name":"b"},"status":{"addresses":[{"type":"InternalIP","address":"nope"},{"type":"ExternalIP","address":"203.0.113.1"},{"type":"InternalIP","address":" 198.18.0.7 "}]}}]}"#;
    let nodes = parse_node_list(body.as_bytes()).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        nodes[0].internal_ips,
        vec!["198.18.0.7".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn too_many_nodes_are_refused() {
    let items = vec![r#"{"metadata":{"name":"n"}}"#; MAX_NODES + 1].join(",");
    let body = format!(r#"{{"items":[{items}]}}"#);
    let e = parse_node_list(body.as_bytes()).unwrap_err();
    assert!(e.contains(&MAX_NODES.to_string()), "{e}");
}

#[test]
fn the_view_leaves_this_node_out_and_dials_the_listen_port() {
    let body = list(&[
        node_json("host1", &["198.18.0.1"], Some("10.244.1.0/24")),
        node_json("host2", &["198.18.0.2"], Some("10.244.2.0/24")),
        node_json("host3", &[], None),
    ]);
    let nodes = parse_node_list(body.as_bytes()).unwrap();
    let v = view(&nodes, "host1", 6783, false);
    assert!(v.found_self);
    assert_eq!(v.pod_cidr, Ok(Some("10.244.1.0/24".parse().unwrap())));
    assert_eq!(
        v.peers.into_iter().collect::<Vec<_>>(),
        vec![("host2".to_string(), "198.18.0.2:6783".parse().unwrap())]
    );
    assert_eq!(v.without_address, vec!["host3".to_string()]);
    let v = view(&nodes, "elsewhere", 6783, false);
    assert!(!v.found_self);
    assert_eq!(v.pod_cidr, Ok(None));
    assert_eq!(v.peers.len(), 2);
}

fn peers(list: &[(&str, &str)]) -> BTreeMap<String, SocketAddr> {
    list.iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect()
}

#[test]
fn peer_sync_connects_new_nodes_and_forgets_vanished_ones_but_not_fixed_peers() {
    let fixed: SocketAddr = "198.18.0.9:6783".parse().unwrap();
    let mut sync = PeerSync::new([fixed]);
    let a: SocketAddr = "198.18.0.2:6783".parse().unwrap();
    let b: SocketAddr = "198.18.0.3:6783".parse().unwrap();
    let c: SocketAddr = "198.18.0.4:6783".parse().unwrap();
    assert_eq!(
        sync.update(&peers(&[
            ("a", "198.18.0.2:6783"),
            ("f", "198.18.0.9:6783")
        ])),
        vec![PeerChange::Connect("a".into(), a)]
    );
    // Unchanged: nothing to do.
    assert!(sync
        .update(&peers(&[
            ("a", "198.18.0.2:6783"),
            ("f", "198.18.0.9:6783")
        ]))
        .is_empty());
    // b joins, f (a --peer too) leaves the API: f is not forgotten.
    assert_eq!(
        sync.update(&peers(&[
            ("a", "198.18.0.2:6783"),
            ("b", "198.18.0.3:6783")
        ])),
        vec![PeerChange::Connect("b".into(), b)]
    );
    // a moves to a new address, b leaves.
    assert_eq!(
        sync.update(&peers(&[("a", "198.18.0.4:6783")])),
        vec![
            PeerChange::Forget("a".into(), a),
            PeerChange::Forget("b".into(), b),
            PeerChange::Connect("a".into(), c)
        ]
    );
    assert_eq!(sync.current().len(), 1);
}
