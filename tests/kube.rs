//! `weft launch --kube`: peers and pod ranges from a Kubernetes API.
//!
//! A fake API server (HTTPS with a certificate from a CA made here,
//! `GET /api/v1/nodes` with a bearer token, 401 otherwise) runs on a thread
//! inside its own namespace on the test switch; weft hosts in namespaces
//! get no `--peer`: they find each other in its node list, connect to a
//! node added later, forget one removed, shrug off a wrong token, and hand
//! pods addresses from their node's podCIDR. Needs root.

mod common;

use common::cni::*;
use common::kube_api::*;
use common::switched::*;
use common::*;
use std::net::IpAddr;
use std::time::Duration;

/// Switched hosts 0..n-1 run weft; host n is the API's.
fn setup(n: usize) -> (Switched, FakeApi) {
    let net = Switched::new(n + 1);
    let api_host = &net.hosts[n];
    let api = FakeApi::start(&api_host.ns, IpAddr::V4(api_host.underlay), &api_host.dir);
    (net, api)
}

fn start(net: &mut Switched, i: usize, api: &FakeApi, node_name: &str, extra: &[&str]) {
    let host = &mut net.hosts[i];
    let mut args = host.launch_args();
    args.extend([
        "--config".into(),
        host.path("weft.toml").display().to_string(),
    ]);
    args.extend(api.flags(node_name));
    args.extend(extra.iter().map(|s| s.to_string()));
    host.start_with(&args, &[]);
}

fn all_logs(net: &Switched) -> String {
    net.hosts.iter().map(|h| h.logs()).collect()
}

#[test]
fn peers_come_from_the_node_list() {
    require_root!();
    let (mut net, api) = setup(3);
    let ips: Vec<String> = net.hosts.iter().map(|h| h.underlay.to_string()).collect();
    let ip = |i: usize| ips[i].clone();
    api.set_nodes(vec![
        node("node0", &ip(0), None),
        node("node1", &ip(1), None),
    ]);
    start(&mut net, 0, &api, "node0", &[]);
    start(&mut net, 1, &api, "node1", &[]);
    net.wait_converged(&[0, 1], Duration::from_secs(20));
    let log0 = net.hosts[0].logs();
    assert!(log0.contains("this host is node node0"), "{log0}");
    assert!(
        log0.contains(&format!(
            "node node1 at {}:6783 is a peer (from the API)",
            ip(1)
        )),
        "{log0}"
    );

    // A node added to the list is connected.
    api.set_nodes(vec![
        node("node0", &ip(0), None),
        node("node1", &ip(1), None),
        node("node2", &ip(2), None),
    ]);
    start(&mut net, 2, &api, "node2", &[]);
    net.wait_converged(&[0, 1, 2], Duration::from_secs(20));
    let added = format!(
        "node node2 at {}:6783 is a peer (from the API): connecting",
        ip(2)
    );
    // Both hosts must have read the longer list before it shrinks again:
    // node2 may reach host 1 first by dialling it, and a host that never
    // saw node2 in the list has nothing to forget.
    for i in [0, 1] {
        assert!(
            wait_until(Duration::from_secs(10), || net.hosts[i]
                .logs()
                .contains(&added)),
            "host {i}: {}",
            all_logs(&net)
        );
    }

    // A removed node is forgotten (its weft still runs: the others no
    // longer dial it).
    api.set_nodes(vec![
        node("node0", &ip(0), None),
        node("node1", &ip(1), None),
    ]);
    let forgot = format!(
        "node node2 at {}:6783 left the API's node list: forgetting it",
        ip(2)
    );
    for i in [0, 1] {
        assert!(
            // The refresh runs every second, but on a busy machine a
            // request can wait up to 5 s for the router: room for both.
            wait_until(Duration::from_secs(15), || net.hosts[i]
                .logs()
                .contains(&forgot)),
            "host {i}: {}",
            all_logs(&net)
        );
        assert!(net.hosts[i]
            .logs()
            .contains(&format!("weft forget: removed peer {}:6783", ip(2))));
    }

    // A wrong token: logged once, the peers stay, the overlay works.
    api.set_token("another-token");
    let refused = "HTTP 401: the API answered with an error: Unauthorized";
    assert!(
        wait_until(Duration::from_secs(5), || net.hosts[0]
            .logs()
            .contains(refused)),
        "{}",
        all_logs(&net)
    );
    std::thread::sleep(Duration::from_millis(2500));
    let log0 = net.hosts[0].logs();
    assert_eq!(log0.matches(refused).count(), 1, "{log0}");
    assert!(log0.contains("check --kube-token-file"), "{log0}");
    assert!(net.hosts[0].weft_running() && net.hosts[1].weft_running());
    assert!(
        net.ping_within(0, 1, Duration::from_secs(5)),
        "{}",
        all_logs(&net)
    );
    api.set_token(TOKEN);
    let url = format!("{}/api/v1/nodes answers", api.url);
    assert!(
        wait_until(Duration::from_secs(5), || net.hosts[0]
            .logs()
            .matches(&url)
            .count()
            == 2),
        "{}",
        net.hosts[0].logs()
    );
}

#[test]
fn pods_get_addresses_from_their_nodes_pod_cidr() {
    require_root!();
    let (mut net, api) = setup(2);
    let ips: Vec<String> = net.hosts.iter().map(|h| h.underlay.to_string()).collect();
    let ip = |i: usize| ips[i].clone();
    // node0's range comes from the API, node1's from --ipalloc-pod-cidr.
    api.set_nodes(vec![
        node("node0", &ip(0), Some("10.32.7.0/24")),
        node("node1", &ip(1), None),
    ]);
    let ipam = |net: &Switched, i: usize| {
        vec![
            "--iface".to_string(),
            "bridge".into(),
            "--ipalloc-range".into(),
            "10.32.0.0/16".into(),
            "--ipalloc-dir".into(),
            net.hosts[i].path("ipam").display().to_string(),
        ]
    };
    let a0 = ipam(&net, 0);
    let mut a1 = ipam(&net, 1);
    a1.extend(["--ipalloc-pod-cidr".into(), "10.32.9.0/24".into()]);
    start(
        &mut net,
        0,
        &api,
        "node0",
        &a0.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    start(
        &mut net,
        1,
        &api,
        "node1",
        &a1.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    net.wait_converged(&[0, 1], Duration::from_secs(20));

    let pods: Vec<Netns> = (0..2)
        .map(|i| Netns::new(format!("{}-pod", net.hosts[i].ns)))
        .collect();
    let mut pod_ips = Vec::new();
    for (i, want) in [(0, "10.32.7."), (1, "10.32.9.")] {
        let path = format!("/var/run/netns/{}", pods[i].name);
        let r = add(&net.hosts[i].ns, &format!("pod{i}"), &path);
        let a = r["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(a.starts_with(want) && a.ends_with("/16"), "host {i}: {a}");
        pod_ips.push(a.trim_end_matches("/16").to_string());
    }
    assert!(
        wait_until(Duration::from_secs(15), || ping(&pods[0].name, &pod_ips[1])),
        "pod0 {} cannot reach pod1 {}\n{}",
        pod_ips[0],
        pod_ips[1],
        all_logs(&net)
    );
    assert!(ping(&pods[1].name, &pod_ips[0]));

    // Both hosts show their pod range as owned, with the address in use.
    // The status is a snapshot published every 100 ms and the claim is
    // confirmed by the next mesh tick: wait (5 s at most) for both.
    let line = |t: &str, chunk: &str| {
        t.lines()
            .find(|l| l.trim_start().starts_with(chunk))
            .map(str::to_string)
    };
    let status_text = || {
        let status = ns_exec(&net.hosts[0].ns, &[WEFT, "status", "ipam"]);
        String::from_utf8_lossy(&status.stdout).into_owned()
    };
    wait_until(Duration::from_secs(5), || {
        let t = status_text();
        line(&t, "10.32.7.0/24").is_some_and(|l| l.contains("owned") && l.contains("1/253 in use"))
            && line(&t, "10.32.9.0/24").is_some_and(|l| l.contains("owned"))
    });
    let text = status_text();
    assert!(
        text.contains("hands out its pod range 10.32.7.0/24 only"),
        "{text}"
    );
    assert!(text.contains("1 address(es) in use"), "{text}");
    // The bridge's gateway is the podCIDR's first address (the hosts'
    // overlay addresses lie outside the range); pods get the rest.
    assert!(
        text.contains("the bridge's address 10.32.7.1 is the pods' gateway"),
        "{text}"
    );
    let own = line(&text, "10.32.7.0/24").unwrap_or_default();
    assert!(
        own.contains("owned") && own.contains("1/253 in use"),
        "{text}"
    );
    let other = line(&text, "10.32.9.0/24").unwrap_or_default();
    assert!(
        other.contains("owned") && other.contains(&net.hosts[1].ns),
        "{text}"
    );
    let log0 = net.hosts[0].logs();
    assert!(
        log0.contains("IPAM hands out addresses from this host's pod range 10.32.7.0/24 only"),
        "{log0}"
    );
}
