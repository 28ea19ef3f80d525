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

/// Two weft hosts and the API's, which lists them as node0 and node1 with
/// the pod CIDRs given (see [`node`]).
fn two_nodes(pod_cidrs: [Option<&str>; 2]) -> (Switched, FakeApi) {
    let (net, api) = setup(2);
    let nodes = (0..2)
        .map(|i| {
            let ip = net.hosts[i].underlay.to_string();
            node(&format!("node{i}"), &ip, pod_cidrs[i])
        })
        .collect();
    api.set_nodes(nodes);
    (net, api)
}

/// Starts host `i` as node `node_name` in bridge mode with IPAM over
/// 10.32.0.0/16, plus `extra`.
fn start_ipam(net: &mut Switched, i: usize, api: &FakeApi, node_name: &str, extra: &[&str]) {
    let dir = net.hosts[i].path("ipam").display().to_string();
    let mut args = vec![
        "--iface",
        "bridge",
        "--ipalloc-range",
        "10.32.0.0/16",
        "--ipalloc-dir",
        &dir,
    ];
    args.extend(extra);
    start(net, i, api, node_name, &args);
}

#[test]
fn pods_get_addresses_from_their_nodes_pod_cidr() {
    require_root!();
    // node0's range comes from the API, node1's from --ipalloc-pod-cidr.
    let (mut net, api) = two_nodes([Some("10.32.7.0/24"), None]);
    start_ipam(&mut net, 0, &api, "node0", &[]);
    start_ipam(
        &mut net,
        1,
        &api,
        "node1",
        &["--ipalloc-pod-cidr", "10.32.9.0/24"],
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

/// The address of family `v6` (without its prefix length) in an ADD
/// result.
fn address_of(result: &serde_json::Value, v6: bool) -> String {
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    let addr = ips
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next())
        .find(|a| a.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6() == v6));
    addr.unwrap_or_else(|| panic!("no address of that family in {result}"))
        .to_string()
}

/// Dual stack (issue 16): nodes list an IPv4 and an IPv6 podCIDR, weft
/// has an IPv6 `--ipalloc-range` next to the IPv4 one (bridge mode): each
/// pod gets its IPv6 address from its node's IPv6 podCIDR (host 1's from
/// `--ipalloc-pod-cidr`, which wins over the API's), the pods reach each
/// other over IPv6, and `weft status ipam` shows the IPv6 pod range.
#[test]
fn dual_stack_pods_get_ipv6_addresses_from_their_nodes_pod_cidrs() {
    require_root!();
    let (mut net, api) = two_nodes([
        Some("10.32.7.0/24,fd32:0:0:7::/64"),
        Some("10.32.9.0/24,fd32:0:0:99::/64"),
    ]);
    let range6 = ["--ipalloc-range", "fd32::/48"];
    start_ipam(&mut net, 0, &api, "node0", &range6);
    let pod_cidr6 = ["--ipalloc-pod-cidr", "fd32:0:0:9::/64"];
    start_ipam(
        &mut net,
        1,
        &api,
        "node1",
        &[&range6[..], &pod_cidr6[..]].concat(),
    );
    net.wait_converged(&[0, 1], Duration::from_secs(20));

    let pods: Vec<Netns> = (0..2)
        .map(|i| Netns::new(format!("{}-pod", net.hosts[i].ns)))
        .collect();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (i, want4, want6) in [
        (0, "10.32.7.", "fd32:0:0:7::"),
        (1, "10.32.9.", "fd32:0:0:9::"),
    ] {
        let path = format!("/var/run/netns/{}", pods[i].name);
        let r = add(&net.hosts[i].ns, &format!("pod{i}"), &path);
        let (a4, a6) = (address_of(&r, false), address_of(&r, true));
        assert!(a4.starts_with(want4), "host {i}: {r}");
        assert!(a6.starts_with(want6), "host {i}: {r}");
        // The IPv6 gateway is the pod range's first address but one (the
        // subnet-router anycast address is never handed out).
        let gw6 = format!("{want6}1");
        assert!(
            r["routes"].as_array().is_some_and(|rs| rs
                .iter()
                .any(|x| x["dst"] == "::/0" && x["gw"] == gw6.as_str())),
            "host {i}: {r}"
        );
        v4.push(a4);
        v6.push(a6);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        for target in [&v6[to], &v4[to]] {
            assert!(
                wait_until(Duration::from_secs(15), || ping(&pods[from].name, target)),
                "pod{from} cannot reach pod{to} at {target}\n{}",
                all_logs(&net)
            );
        }
    }

    // `weft status ipam` shows the IPv6 pod range, owned, with the
    // address in use, beside the IPv4 one.
    let status_json = |i: usize| {
        let out = ns_exec(&net.hosts[i].ns, &[WEFT, "status", "ipam", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let owned6 = |s: &serde_json::Value, chunk: &str| {
        s["ipv6"]["chunks"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["chunk"] == chunk && c["state"] == "owned")
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            let s = status_json(0);
            owned6(&s, "fd32:0:0:7::/64") && owned6(&s, "fd32:0:0:9::/64")
        }),
        "{}",
        status_json(0)
    );
    for (i, pod_cidr) in [(0, "10.32.7.0/24"), (1, "10.32.9.0/24")] {
        let s = status_json(i);
        assert_eq!(s["pod_cidr"], pod_cidr, "host {i}: {s}");
    }
    let s = status_json(0);
    assert_eq!(s["ipv6"]["pod_cidr"], "fd32:0:0:7::/64", "{s}");
    assert_eq!(s["ipv6"]["in_use"], 1, "{s}");
    assert_eq!(s["ipv6"]["gateway"], "fd32:0:0:7::1", "{s}");
    assert_eq!(status_json(1)["ipv6"]["pod_cidr"], "fd32:0:0:9::/64");
    let out = ns_exec(&net.hosts[0].ns, &[WEFT, "status", "ipam"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(
            "IPAM range fd32::/48 this host hands out its pod range fd32:0:0:7::/64 only"
        ) && text.contains("the bridge's address fd32:0:0:7::1 is the pods' gateway"),
        "{text}"
    );
    let own = text
        .lines()
        .find(|l| l.trim_start().starts_with("fd32:0:0:7::/64"))
        .unwrap_or_default();
    assert!(
        own.contains("owned") && own.contains("1/~2^64 in use"),
        "{text}"
    );

    // Host 0's IPv6 pod range came from the API, after the startup log
    // said it waits for it.
    let log0 = net.hosts[0].logs();
    assert!(
        log0.contains("IPAM: IPv6 range fd32::/48, this host's pod range is node node0's IPv6 spec.podCIDRs entry from the Kubernetes API")
            && log0.contains("Kubernetes: IPAM hands out addresses from this host's pod range fd32:0:0:7::/64 only"),
        "{log0}"
    );
    let log1 = net.hosts[1].logs();
    assert!(
        log1.contains("IPAM: IPv6 range fd32::/48, IPAM hands out addresses from this host's pod range fd32:0:0:9::/64 only"),
        "{log1}"
    );
    // The API's IPv6 podCIDR of node1 never reached its IPAM.
    assert!(!log1.contains("fd32:0:0:99::/64 only"), "{log1}");
}
