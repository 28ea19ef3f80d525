//! End to end: two real weft hosts in bridge mode with `--ipalloc-range`
//! (network namespaces on one underlay switch), the CNI plugin run on each
//! exactly as a runtime runs it (`CNI_*` variables, the minimal
//! configuration on stdin, in the host's namespace), one pod namespace per
//! host: the pods get distinct addresses from the range and reach each
//! other across the encrypted overlay; CHECK; DEL twice releases the
//! address; STATUS while weft runs and after it stopped. Needs root.

mod common;

use common::cni::*;
use common::switched::*;
use common::*;
use serde_json::Value;
use std::time::Duration;

const RANGE: &str = "10.32.0.0/16";
const ROUTED_RANGE: &str = "10.40.128.0/17";
const V11: &str = r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft"}"#;
/// The IPv6 pod range of the dual-stack case (a ULA).
const RANGE6: &str = "fd32:6e:f7::/64";
/// The IPv6 pod range of routed (TUN mode) pods, inside the overlay
/// prefix fd40::/48.
const ROUTED_RANGE6: &str = "fd40:0:0:1::/64";

#[test]
fn pods_on_two_weft_hosts_reach_each_other() {
    require_root!();
    let mut net = Switched::ipam_pair(RANGE, &["--iface", "bridge", "--bridge", "weft"]);
    let hosts = [net.hosts[0].ns.clone(), net.hosts[1].ns.clone()];
    let (pods, paths) = pod_namespaces(&hosts);
    let logs = || net.hosts.iter().map(|h| h.logs()).collect::<String>();

    // STATUS with weft running.
    for h in &hosts {
        let out = plugin(h, "STATUS", "", "", V11);
        assert!(
            out.status.success(),
            "{h}: STATUS {}\n{}",
            show(&out),
            logs()
        );
    }

    // One pod per host, addresses from the range.
    let results: Vec<Value> = (0..2)
        .map(|i| add(&hosts[i], &format!("pod{i}"), &paths[i]))
        .collect();
    let addrs: Vec<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_string())
        .collect();
    for a in &addrs {
        assert!(a.starts_with("10.32.") && a.ends_with("/16"), "{a}");
    }
    assert_ne!(addrs[0], addrs[1]);
    let ips: Vec<&str> = addrs.iter().map(|a| a.split('/').next().unwrap()).collect();

    // Pod to pod, across the overlay.
    let reached = wait_until(Duration::from_secs(15), || ping(&pods[0].name, ips[1]));
    assert!(
        reached,
        "pod0 {} cannot reach pod1 {}\n{}",
        ips[0],
        ips[1],
        logs()
    );
    assert!(ping(&pods[1].name, ips[0]), "pod1 cannot reach pod0");

    // CHECK against weft and the ADD result.
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "weft", "prevResult": results[0],
    })
    .to_string();
    let out = plugin(&hosts[0], "CHECK", "pod0", &paths[0], &conf);
    assert!(out.status.success(), "CHECK {}", show(&out));

    // DEL twice: the pod's interface goes, weft no longer holds the address.
    for _ in 0..2 {
        let out = plugin(&hosts[0], "DEL", "pod0", &paths[0], MINIMAL);
        assert!(out.status.success(), "DEL {}", show(&out));
    }
    assert!(!link_exists(&pods[0].name, "eth0"));
    let out = plugin(&hosts[0], "CHECK", "pod0", &paths[0], &conf);
    assert_eq!(out.status.code(), Some(1), "CHECK after DEL {}", show(&out));
    // A new pod on host 0 gets an address again and reaches pod1.
    let again = add(&hosts[0], "pod2", &paths[0]);
    let ip2 = again["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        wait_until(Duration::from_secs(15), || ping(&pods[0].name, ips[1])),
        "pod2 {ip2} cannot reach pod1\n{}",
        logs()
    );

    // STATUS after weft stopped: 50. DEL still cleans up.
    net.hosts[0].terminate();
    let out = plugin(&hosts[0], "STATUS", "", "", V11);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 50, "{v}");
    let out = plugin(&hosts[0], "DEL", "pod2", &paths[0], MINIMAL);
    assert!(out.status.success(), "DEL without weft {}", show(&out));
    assert!(!link_exists(&pods[0].name, "eth0"));
}

/// TUN (L3) mode, the range inside the overlay prefix. Ignored until
/// weft's side turns on IPv4 forwarding on its TUN device when it serves
/// pods in TUN mode (pods' packets arrive from the overlay on weft0 and are
/// forwarded to their veth; `net.ipv4.conf.weft0.forwarding` is 0 now).
/// With that one setting made by hand this test passes: the plugin's half
/// (veth, /32, next hop, host route, proxy ARP, forwarding on the host
/// end) and weft's routing of pod addresses through the mesh both work.
#[test]
fn routed_pods_on_two_weft_hosts_reach_each_other() {
    require_root!();
    // TUN mode: the range lies inside the hosts' overlay prefix
    // (10.40.0.0/16), whose route to weft0 carries the pods' traffic.
    // Dual stack: the IPv6 range inside the IPv6 overlay prefix fd40::/48;
    // the hosts forward IPv6 (as Kubernetes nodes with IPv6 pods must).
    let mut net = Switched::new(2);
    net.hosts[1].peers = vec![net.addr(0)];
    for (i, host) in net.hosts.iter_mut().enumerate() {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &host.ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        let overlay6 = format!("fd40::{}/48", i + 1);
        let args = ipam_launch_args(
            host,
            ROUTED_RANGE,
            &["--overlay", &overlay6, "--ipalloc-range", ROUTED_RANGE6],
        );
        host.start_with(&args, &[]);
    }
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let hosts = [net.hosts[0].ns.clone(), net.hosts[1].ns.clone()];
    let (pods, paths) = pod_namespaces(&hosts);
    let logs = || net.hosts.iter().map(|h| h.logs()).collect::<String>();
    let mut ips = Vec::new();
    let mut ips6 = Vec::new();
    for i in 0..2 {
        let r = add(&hosts[i], &format!("pod{i}"), &paths[i]);
        let a = r["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(a.starts_with("10.40.") && a.ends_with("/32"), "{a}");
        assert_eq!(r["routes"][0]["gw"], "169.254.1.1");
        ips.push(a.trim_end_matches("/32").to_string());
        // The IPv6 address is a /128 from the IPv6 range, routed via the
        // link-local next hop.
        let six = r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .find(|ip| ip["address"].as_str().unwrap().contains(':'))
            .unwrap_or_else(|| panic!("no IPv6 address in {r}"));
        let a6 = six["address"].as_str().unwrap();
        let in_range = a6
            .strip_suffix("/128")
            .and_then(|a| a.parse::<std::net::Ipv6Addr>().ok())
            .is_some_and(|a| a.segments()[..4] == [0xfd40, 0, 0, 1]);
        assert!(in_range, "{a6} is not a /128 in {ROUTED_RANGE6}: {r}");
        assert_eq!(six["gateway"], "fe80::1", "{r}");
        assert!(
            r["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["dst"] == "::/0" && x["gw"] == "fe80::1"),
            "{r}"
        );
        ips6.push(a6.trim_end_matches("/128").to_string());
    }
    assert_ne!(ips6[0], ips6[1]);
    // The host reaches its own pod over the veth, and pods each other
    // through the hosts' TUN devices and the overlay.
    assert!(
        ping(&hosts[0], &ips[0]),
        "host0 cannot reach its pod {}",
        ips[0]
    );
    let reached = wait_until(Duration::from_secs(15), || ping(&pods[0].name, &ips[1]));
    let diag = || {
        let mut d = String::new();
        for h in &hosts {
            for args in [
                vec!["ip", "route"],
                vec![
                    "sysctl",
                    "net.ipv4.ip_forward",
                    "net.ipv4.conf.weft0.forwarding",
                    "net.ipv4.conf.weft0.rp_filter",
                    "net.ipv4.conf.all.rp_filter",
                ],
            ] {
                let out = ns_exec(h, &args);
                d += &format!(
                    "{h}: {}\n{}{}\n",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        d
    };
    assert!(
        reached,
        "pod0 {} cannot reach pod1 {}\n{}\n{}",
        ips[0],
        ips[1],
        diag(),
        logs()
    );
    // IPv6: the host reaches its pod, pods each other, and a checksummed
    // TCP transfer crosses the overlay.
    assert!(
        wait_until(Duration::from_secs(10), || ping(&hosts[0], &ips6[0])),
        "host0 cannot reach its pod {} over IPv6\n{}",
        ips6[0],
        diag()
    );
    for (from, to) in [(0, 1), (1, 0)] {
        assert!(
            wait_until(Duration::from_secs(15), || ping(
                &pods[from].name,
                &ips6[to]
            )),
            "pod{from} cannot reach pod{to} at {}\n{}\n{}",
            ips6[to],
            diag(),
            logs()
        );
    }
    let total = 4 << 20;
    let (sent, got, n) = tcp_transfer(&pods[0].name, &pods[1].name, &ips6[1], 7062, total, 62);
    assert_eq!(n, total, "TCP over IPv6 between routed pods: bytes");
    assert_eq!(sent, got, "TCP over IPv6 between routed pods: checksum");
    // DEL removes the pod's veth, and with it the host's /128 route.
    let out = plugin(&hosts[0], "DEL", "pod0", &paths[0], MINIMAL);
    assert!(out.status.success(), "DEL {}", show(&out));
    let routes6 =
        String::from_utf8_lossy(&ns_exec(&hosts[0], &["ip", "-6", "route"]).stdout).to_string();
    assert!(!routes6.contains(&ips6[0]), "{routes6}");
}

/// One pod namespace per host (`HOST-pod`), and their paths as a runtime
/// passes them in `CNI_NETNS`.
fn pod_namespaces(hosts: &[String]) -> (Vec<Netns>, Vec<String>) {
    let pods: Vec<Netns> = hosts
        .iter()
        .map(|h| Netns::new(format!("{h}-pod")))
        .collect();
    let paths = pods
        .iter()
        .map(|p| format!("/var/run/netns/{}", p.name))
        .collect();
    (pods, paths)
}

/// Starts host `i` of `net` in bridge mode (bridge `weft`) with IPAM over
/// [`RANGE`] and without `--overlay`, plus `extra`: the bridge gets its
/// address from IPAM.
fn start_without_overlay(net: &mut Switched, i: usize, extra: &[&str]) {
    let host = &mut net.hosts[i];
    let mut args = ipam_launch_args(host, RANGE, &["--iface", "bridge", "--bridge", "weft"]);
    let at = args.iter().position(|a| a == "--overlay").unwrap();
    args.drain(at..at + 2);
    args.extend(extra.iter().map(|a| a.to_string()));
    host.start_with(&args, &[]);
}

/// `weft status ipam --json` in `ns`.
fn ipam_status(ns: &str) -> Option<Value> {
    let out = ns_exec(ns, &[WEFT, "status", "ipam", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())?
}

/// The bridge's gateway `weft status ipam` names, once it has one.
fn wait_gateway(ns: &str) -> Option<String> {
    let mut found = None;
    wait_until(Duration::from_secs(15), || {
        found = ipam_status(ns).and_then(|s| s["gateway"].as_str().map(str::to_string));
        found.is_some()
    });
    found
}

/// `ip -4 -o addr show dev DEV` in `ns`.
fn addresses(ns: &str, dev: &str) -> String {
    String::from_utf8_lossy(&ns_exec(ns, &["ip", "-4", "-o", "addr", "show", "dev", dev]).stdout)
        .to_string()
}

/// The pod's address (without prefix) in an ADD result.
fn pod_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

/// One request to the CNI socket of `ns`, as the plugin sends it.
fn cni(ns: &str, request: weft::cni::api::CniRequest) -> weft::cni::api::CniReply {
    let ns_name = ns.to_string();
    in_netns(ns, move || {
        weft::cni::api::request(weft::cni::api::DEFAULT_SOCKET, &request)
            .unwrap_or_else(|e| panic!("{ns_name}: CNI socket: {e}"))
    })
}

/// Bridge mode without `--overlay` (how deploy/weft.yaml runs weft): the
/// bridge takes an address of its own from this host's IPAM space (the
/// first of its pod range on host 0, of its first chunk on host 1), pods
/// route through it by default, the host reaches its pods and theirs
/// through the bridge, pods reach their host; the address is never handed
/// to a pod, and a restart of weft puts the same address back.
#[test]
fn bridge_pods_without_overlay_route_through_the_bridges_ipam_address() {
    require_root!();
    let mut net = Switched::new(2);
    net.hosts[1].peers = vec![net.addr(0)];
    // Host 0: a small pod range of its own (14 addresses, .1 to .14), as a
    // Kubernetes node's podCIDR; host 1: chunks of the range.
    let pod_cidr = ["--ipalloc-pod-cidr", "10.32.1.0/28"];
    start_without_overlay(&mut net, 0, &pod_cidr);
    start_without_overlay(&mut net, 1, &[]);
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let hosts = [net.hosts[0].ns.clone(), net.hosts[1].ns.clone()];
    let underlay = [
        net.hosts[0].underlay.to_string(),
        net.hosts[1].underlay.to_string(),
    ];
    let logs = |net: &Switched| net.hosts.iter().map(|h| h.logs()).collect::<String>();

    // The bridges take their gateways before any pod asks.
    let gw0 = wait_gateway(&hosts[0]).unwrap_or_else(|| panic!("no gateway\n{}", logs(&net)));
    assert_eq!(gw0, "10.32.1.1", "the pod range's first address");
    let gw1 = wait_gateway(&hosts[1]).unwrap_or_else(|| panic!("no gateway\n{}", logs(&net)));
    assert!(gw1.starts_with("10.32.") && gw1 != gw0, "{gw1}");
    for (h, gw) in [(&hosts[0], &gw0), (&hosts[1], &gw1)] {
        let on = addresses(h, "weft");
        assert!(on.contains(&format!("inet {gw}/16 ")), "{h}: {on}");
        // The prefix route: the host reaches the pod network via the bridge.
        assert!(has_route(h, "10.32.0.0/16 dev weft"), "{h}");
    }

    // One pod per host: its default route goes via its host's gateway.
    let (pods, paths) = pod_namespaces(&hosts);
    let mut ips = Vec::new();
    for (i, gw) in [&gw0, &gw1].into_iter().enumerate() {
        let r = add(&hosts[i], &format!("pod{i}"), &paths[i]);
        assert_eq!(r["ips"][0]["gateway"], gw.as_str(), "{r}");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0", "{r}");
        assert_eq!(r["routes"][0]["gw"], gw.as_str(), "{r}");
        let ip = pod_ip(&r);
        assert_ne!(&ip, gw);
        let route = ns_exec(&pods[i].name, &["ip", "route", "show", "default"]);
        let route = String::from_utf8_lossy(&route.stdout);
        assert!(route.contains(&format!("via {gw} dev eth0")), "{route}");
        ips.push(ip);
    }
    assert_eq!(ips[0], "10.32.1.2");

    // Node and pod reach each other (what the kubelet's probes need), the
    // pods each other across the overlay, and a node the other's pod.
    let reached = |from: &str, to: &str| wait_until(Duration::from_secs(10), || ping(from, to));
    for i in 0..2 {
        assert!(
            reached(&hosts[i], &ips[i]),
            "{}: node cannot reach its pod {}\n{}",
            hosts[i],
            ips[i],
            logs(&net)
        );
        assert!(
            reached(&pods[i].name, &underlay[i]),
            "pod {} cannot reach its node's underlay address {}",
            ips[i],
            underlay[i]
        );
    }
    assert!(reached(&pods[0].name, &ips[1]), "pod0 cannot reach pod1");
    assert!(
        reached(&hosts[0], &ips[1]),
        "node 0 cannot reach pod1 {} across the overlay",
        ips[1]
    );

    // The gateway is never handed out: fill host 0's pod range. 14
    // addresses, less the gateway and pod0: 12 more, then it is full.
    use weft::cni::api::{code, AttachmentKey, CniRequest, CniSuccess};
    let mut given = std::collections::BTreeSet::from([ips[0].clone()]);
    for n in 0..12 {
        let reply = cni(
            &hosts[0],
            CniRequest::Add {
                container_id: format!("fill{n}"),
                ifname: "eth0".into(),
                netns: "/proc/1/ns/net".into(),
            },
        );
        let Ok(CniSuccess::Attachment(a)) = reply.0 else {
            panic!("fill{n}: {reply:?}");
        };
        let a = a.address.addr.to_string();
        assert_ne!(a, gw0, "the gateway was handed to a pod");
        assert!(given.insert(a.clone()), "{a} handed out twice");
    }
    let full = cni(
        &hosts[0],
        CniRequest::Add {
            container_id: "one-too-many".into(),
            ifname: "eth0".into(),
            netns: "/proc/1/ns/net".into(),
        },
    );
    assert_eq!(
        full.0.as_ref().map_err(|e| e.code),
        Err(code::RANGE_EXHAUSTED),
        "{full:?}"
    );
    let expected: std::collections::BTreeSet<String> =
        (2..=14).map(|h| format!("10.32.1.{h}")).collect();
    assert_eq!(given, expected);
    let gc = cni(
        &hosts[0],
        CniRequest::Gc {
            valid: vec![AttachmentKey {
                container_id: "pod0".into(),
                ifname: "eth0".into(),
            }],
        },
    );
    assert_eq!(gc.0, Ok(CniSuccess::Released { released: 12 }));
    assert_eq!(wait_gateway(&hosts[0]).as_deref(), Some(gw0.as_str()));

    // Restart weft on host 0: its bridge goes and comes back with the same
    // gateway; pod0 is re-attached and reaches its node again.
    net.hosts[0].terminate();
    assert!(!link_exists(&hosts[0], "weft"), "the bridge went with weft");
    start_without_overlay(&mut net, 0, &pod_cidr);
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    assert_eq!(wait_gateway(&hosts[0]).as_deref(), Some(gw0.as_str()));
    let back = wait_until(Duration::from_secs(10), || {
        addresses(&hosts[0], "weft").contains(&format!("inet {gw0}/16 "))
    });
    assert!(back, "{}\n{}", addresses(&hosts[0], "weft"), logs(&net));
    assert!(
        reached(&hosts[0], &ips[0]),
        "after the restart: node cannot reach pod0\n{}",
        logs(&net)
    );
    assert!(reached(&pods[0].name, &underlay[0]));
    assert!(reached(&pods[0].name, &ips[1]));
    // And still never hands it out.
    let after = cni(
        &hosts[0],
        CniRequest::Add {
            container_id: "after-restart".into(),
            ifname: "eth0".into(),
            netns: "/proc/1/ns/net".into(),
        },
    );
    let Ok(CniSuccess::Attachment(a)) = after.0 else {
        panic!("after the restart: {after:?}");
    };
    assert_eq!(
        a.gateway.map(|g| g.to_string()).as_deref(),
        Some(gw0.as_str())
    );
    assert_eq!(a.address.addr.to_string(), "10.32.1.3");
}

/// `nft list table ip weft` in `ns`: the table's text, or None.
fn weft_table(ns: &str) -> Option<String> {
    weft_table_of(ns, "ip")
}

/// `nft list table FAMILY weft` in `ns` (None: no such table).
fn weft_table_of(ns: &str, family: &str) -> Option<String> {
    let out = ns_exec(ns, &["nft", "list", "table", family, "weft"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// The source address a datagram from namespace `from` to `to:port`
/// arrives with in namespace `at` (None: nothing arrived in 5 s).
fn source_seen(
    from: &str,
    at: &str,
    to: impl Into<std::net::IpAddr>,
    port: u16,
) -> Option<std::net::IpAddr> {
    use std::net::UdpSocket;
    let to: std::net::IpAddr = to.into();
    let any = if to.is_ipv4() { "0.0.0.0" } else { "::" };
    // A socket keeps the namespace it was made in.
    let rx = in_netns(at, move || UdpSocket::bind((any, port)).expect("bind"));
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let tx = in_netns(from, move || UdpSocket::bind((any, 0)).expect("bind"));
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        let _ = tx.send_to(b"weft masquerade test", (to, port));
        if let Ok((_, src)) = rx.recv_from(&mut buf) {
            return Some(src.ip());
        }
    }
    None
}

/// `--masquerade` (as deploy/weft.yaml runs weft): a pod reaches an
/// address outside the cluster behind its host's underlay, leaving with its
/// host's address; pod-to-pod traffic keeps the pods' addresses; without
/// it (the other host) the outside cannot answer. The nftables table lives
/// in weft's namespace only and goes when weft stops, even when killed.
/// Dual stack: the same for IPv6, through a table `ip6 weft`.
#[test]
fn masquerade_takes_pods_beyond_the_pod_network() {
    require_root!();
    let mut net = Switched::new(2);
    net.hosts[1].peers = vec![net.addr(0)];
    let hosts = [net.hosts[0].ns.clone(), net.hosts[1].ns.clone()];
    // Both hosts forward (as Kubernetes nodes must), so only NAT differs.
    for h in &hosts {
        run(
            "ip",
            &[
                "netns",
                "exec",
                h,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
    }
    // The outside: on the underlay switch, with no route to the pod range.
    let o = net.hosts[0].underlay.octets();
    let outside_ip = std::net::Ipv4Addr::new(o[0], o[1], o[2], 200);
    let outside = Netns::new(format!("{}-out", hosts[0]));
    plug_into_switch(&outside.name, &net.switch, "sout");
    run(
        "ip",
        &[
            "-n",
            &outside.name,
            "addr",
            "add",
            &format!("{outside_ip}/24"),
            "dev",
            "u0",
        ],
    );
    // IPv6 on the same switch: host 0 and the outside.
    let host6: std::net::Ipv6Addr = "2001:2:0:7::10".parse().unwrap();
    let outside6: std::net::Ipv6Addr = "2001:2:0:7::200".parse().unwrap();
    for (ns, a) in [(&hosts[0], host6), (&outside.name, outside6)] {
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "u0",
                "nodad",
            ],
        );
    }
    let masq = ["--masquerade", "--ipalloc-range", RANGE6];
    start_without_overlay(&mut net, 0, &masq);
    start_without_overlay(&mut net, 1, &["--ipalloc-range", RANGE6]);
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let logs = |net: &Switched| net.hosts.iter().map(|h| h.logs()).collect::<String>();

    // The rule, in host 0's namespace only.
    let table = weft_table(&hosts[0]).unwrap_or_else(|| panic!("no table\n{}", logs(&net)));
    assert!(
        table.contains("type nat hook postrouting priority srcnat; policy accept;")
            && table
                .contains("ip saddr 10.32.0.0/16 ip daddr != 10.32.0.0/16 masquerade fully-random"),
        "{table}"
    );
    assert_eq!(weft_table(&hosts[1]), None, "host 1 has no --masquerade");
    assert_eq!(weft_table(&outside.name), None);
    let table6 =
        weft_table_of(&hosts[0], "ip6").unwrap_or_else(|| panic!("no ip6 table\n{}", logs(&net)));
    assert!(
        table6.contains("type nat hook postrouting priority srcnat; policy accept;")
            && table6.contains(&format!(
                "ip6 saddr {RANGE6} ip6 daddr != {RANGE6} masquerade fully-random"
            )),
        "{table6}"
    );
    assert_eq!(weft_table_of(&hosts[1], "ip6"), None);

    let (pods, paths) = pod_namespaces(&hosts);
    let mut ips = Vec::new();
    let mut ips6 = Vec::new();
    for i in 0..2 {
        let r = add(&hosts[i], &format!("pod{i}"), &paths[i]);
        ips.push(pod_ip_of(&r, false).0);
        ips6.push(pod_ip_of(&r, true).0);
    }

    // Pod on host 0 to the outside, and back.
    let out = outside_ip.to_string();
    assert!(
        wait_until(Duration::from_secs(10), || ping(&pods[0].name, &out)),
        "pod0 {} cannot reach the outside {out}\n{}",
        ips[0],
        logs(&net)
    );
    assert_eq!(
        source_seen(&pods[0].name, &outside.name, outside_ip, 47001),
        Some(std::net::IpAddr::V4(net.hosts[0].underlay)),
        "the outside sees host 0's address"
    );
    // Host 0 reaches its pod.
    assert!(ping(&hosts[0], &ips[0]), "host 0 cannot reach pod0");
    // Pod to pod across the overlay is not masqueraded.
    let pod1: std::net::Ipv4Addr = ips[1].parse().unwrap();
    assert_eq!(
        source_seen(&pods[0].name, &pods[1].name, pod1, 47002),
        Some(ips[0].parse().unwrap()),
        "pod1 sees pod0's own address"
    );
    // Without --masquerade the outside has no way back to a pod.
    let node1 = net.hosts[1].underlay.to_string();
    assert!(ping(&pods[1].name, &node1), "pod1 reaches its node");
    assert!(
        !ping(&pods[1].name, &out),
        "pod1 on host 1 (no --masquerade) reached the outside"
    );

    // IPv6: the pod reaches the outside with host 0's IPv6 address, and
    // pod to pod keeps the pod's own.
    let out6 = outside6.to_string();
    assert!(
        wait_until(Duration::from_secs(10), || ping(&pods[0].name, &out6)),
        "pod0 {} cannot reach the outside {out6}\n{}",
        ips6[0],
        logs(&net)
    );
    assert_eq!(
        source_seen(&pods[0].name, &outside.name, outside6, 47003),
        Some(std::net::IpAddr::V6(host6)),
        "the outside sees host 0's IPv6 address"
    );
    let pod1_6: std::net::Ipv6Addr = ips6[1].parse().unwrap();
    assert_eq!(
        source_seen(&pods[0].name, &pods[1].name, pod1_6, 47004),
        Some(ips6[0].parse().unwrap()),
        "pod1 sees pod0's own IPv6 address"
    );

    // weft stops: the tables go with it.
    net.hosts[0].terminate();
    assert_eq!(weft_table(&hosts[0]), None, "table left after SIGTERM");
    assert_eq!(
        weft_table_of(&hosts[0], "ip6"),
        None,
        "ip6 table left after SIGTERM"
    );
    // Killed: the kernel removes the tables it tied to weft's socket.
    start_without_overlay(&mut net, 0, &masq);
    assert!(
        wait_until(Duration::from_secs(10), || weft_table(&hosts[0]).is_some()),
        "{}",
        logs(&net)
    );
    if net.hosts[0].logs().contains("owned by weft") {
        net.hosts[0].kill9();
        assert!(
            wait_until(Duration::from_secs(5), || weft_table(&hosts[0]).is_none()
                && weft_table_of(&hosts[0], "ip6").is_none()),
            "table left after SIGKILL"
        );
    } else {
        eprintln!("kernel without nftables owner tables: a killed weft's table stays until the next launch");
    }
}

/// The address (without prefix) of family `v6` in an ADD result, and its
/// gateway.
fn pod_ip_of(result: &Value, v6: bool) -> (String, Option<String>) {
    let ip = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ip| ip["address"].as_str().unwrap().contains(':') == v6)
        .unwrap_or_else(|| {
            panic!(
                "no {} address in {result}",
                if v6 { "IPv6" } else { "IPv4" }
            )
        });
    (
        ip["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string(),
        ip["gateway"].as_str().map(str::to_string),
    )
}

/// Dual stack (issue 16): two hosts with an IPv4 and an IPv6
/// `--ipalloc-range`, bridge mode without `--overlay` (each bridge takes
/// its gateways from IPAM): ADD gives each pod one address of each family
/// and both default routes, the pods reach each other over IPv4 and IPv6
/// (ping, and a checksummed TCP transfer over IPv6), `weft status ipam`
/// shows the IPv6 range, CHECK and DEL (twice) handle both, and after a
/// restart of weft no address of either family is handed out twice.
#[test]
fn dual_stack_pods_get_both_families_and_reach_each_other() {
    require_root!();
    let mut net = Switched::new(2);
    net.hosts[1].peers = vec![net.addr(0)];
    let extra = ["--ipalloc-range", RANGE6];
    start_without_overlay(&mut net, 0, &extra);
    start_without_overlay(&mut net, 1, &extra);
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let hosts = [net.hosts[0].ns.clone(), net.hosts[1].ns.clone()];
    let (pods, paths) = pod_namespaces(&hosts);
    let logs = |net: &Switched| net.hosts.iter().map(|h| h.logs()).collect::<String>();

    let results: Vec<Value> = (0..2)
        .map(|i| add_at(WEFT, &hosts[i], &format!("pod{i}"), &paths[i], V11))
        .collect();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for r in &results {
        assert_eq!(r["ips"].as_array().map(Vec::len), Some(2), "{r}");
        let (a4, gw4) = pod_ip_of(r, false);
        let (a6, gw6) = pod_ip_of(r, true);
        assert!(a4.starts_with("10.32."), "{r}");
        assert!(a6.starts_with("fd32:6e:f7:"), "{r}");
        let gw6 = gw6.unwrap_or_else(|| panic!("no IPv6 gateway in {r}"));
        assert!(gw4.is_some(), "{r}");
        // Both default routes, the IPv6 one via the IPv6 gateway.
        let routes = r["routes"].as_array().unwrap();
        assert!(
            routes
                .iter()
                .any(|x| x["dst"] == "::/0" && x["gw"] == gw6.as_str()),
            "{r}"
        );
        assert!(routes.iter().any(|x| x["dst"] == "0.0.0.0/0"), "{r}");
        v4.push(a4);
        v6.push(a6);
    }
    assert_ne!(v4[0], v4[1]);
    assert_ne!(v6[0], v6[1]);
    // The pod's interface has both, the IPv6 one usable at once (no DAD).
    let shown = String::from_utf8_lossy(
        &ns_exec(
            &pods[0].name,
            &["ip", "-6", "-o", "addr", "show", "dev", "eth0"],
        )
        .stdout,
    )
    .to_string();
    // (The link-local address may still be tentative: only the pod's
    // address from IPAM skips DAD.)
    let line = shown
        .lines()
        .find(|l| l.contains(&format!(" {}/", v6[0])))
        .unwrap_or_else(|| panic!("no {} on eth0: {shown}", v6[0]));
    assert!(
        line.contains("nodad") && !line.contains("tentative"),
        "{line}"
    );

    for (from, to) in [(0, 1), (1, 0)] {
        for ip in [&v4[to], &v6[to]] {
            assert!(
                wait_until(Duration::from_secs(15), || ping(&pods[from].name, ip)),
                "pod{from} cannot reach pod{to} at {ip}\n{}",
                logs(&net)
            );
        }
    }
    let total = 4 << 20;
    let (sent, got, n) = tcp_transfer(&pods[0].name, &pods[1].name, &v6[1], 7061, total, 61);
    assert_eq!(n, total, "TCP over IPv6: bytes");
    assert_eq!(sent, got, "TCP over IPv6: checksum");

    // `weft status ipam` shows the IPv6 range and its chunk.
    let status = ipam_status(&hosts[0]).expect("status ipam");
    assert_eq!(status["ipv6"]["range"], RANGE6, "{status}");
    assert_eq!(status["ipv6"]["chunk_len"], 122, "{status}");
    assert_eq!(status["ipv6"]["in_use"], 1, "{status}");
    assert!(status["ipv6"]["gateway"].is_string(), "{status}");
    let text =
        String::from_utf8_lossy(&ns_exec(&hosts[0], &[WEFT, "status", "ipam"]).stdout).to_string();
    assert!(
        text.contains(&format!("IPAM range {RANGE6} in /122 chunks")),
        "{text}"
    );

    // CHECK finds both addresses.
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "weft", "prevResult": results[0],
    })
    .to_string();
    let out = plugin(&hosts[0], "CHECK", "pod0", &paths[0], &conf);
    assert!(out.status.success(), "CHECK {}", show(&out));

    // A restart of weft on host 0: pod0 keeps both addresses, a new pod
    // gets others (nothing handed out twice), and still reaches pod1.
    net.hosts[0].terminate();
    start_without_overlay(&mut net, 0, &extra);
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let extra_pod = Netns::new(format!("{}-pod2", hosts[0]));
    let extra_path = format!("/var/run/netns/{}", extra_pod.name);
    let again = add_at(WEFT, &hosts[0], "pod2", &extra_path, V11);
    let (a4, _) = pod_ip_of(&again, false);
    let (a6, _) = pod_ip_of(&again, true);
    assert!(!v4.contains(&a4), "{a4} handed out twice: {v4:?}");
    assert!(!v6.contains(&a6), "{a6} handed out twice: {v6:?}");
    assert!(
        wait_until(Duration::from_secs(15), || ping(&extra_pod.name, &v6[1])),
        "pod2 {a6} cannot reach pod1 {} over IPv6 after the restart\n{}",
        v6[1],
        logs(&net)
    );
    assert!(
        ping(&pods[0].name, &v6[1]),
        "pod0 lost IPv6 after the restart"
    );

    // DEL twice releases both families.
    for _ in 0..2 {
        let out = plugin(&hosts[0], "DEL", "pod0", &paths[0], MINIMAL);
        assert!(out.status.success(), "DEL {}", show(&out));
    }
    assert!(!link_exists(&pods[0].name, "eth0"));
    // The status snapshot follows within a moment.
    let mut status = None;
    let released = wait_until(Duration::from_secs(10), || {
        status = ipam_status(&hosts[0]);
        status
            .as_ref()
            .is_some_and(|s| s["in_use"] == 1 && s["ipv6"]["in_use"] == 1)
    });
    assert!(released, "DEL did not release both addresses: {status:?}");
    let out = plugin(&hosts[0], "DEL", "pod2", &extra_path, MINIMAL);
    assert!(out.status.success(), "DEL {}", show(&out));
}
