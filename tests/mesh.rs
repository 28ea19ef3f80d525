//! weft as a mesh, in network namespaces: hosts on one underlay switch (a
//! bridge in its own namespace) that learn each other by gossip, route
//! through each other when a direct path is firewalled, route around a
//! host killed with SIGKILL, and refuse a duplicate address claim on both
//! sides.

mod common;

use common::switched::*;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn five_hosts_each_told_only_the_next_reach_every_other() {
    require_root!();
    let mut net = Switched::new(5);
    for i in 0..4 {
        net.hosts[i].peers = vec![net.addr(i + 1)];
    }
    for i in 0..5 {
        net.start(i);
    }
    let all: Vec<usize> = (0..5).collect();
    net.wait_converged(&all, Duration::from_secs(30));
    for i in 0..5 {
        for j in 0..5 {
            if i != j {
                assert!(
                    net.ping_within(i, j, Duration::from_secs(10)),
                    "{} cannot reach {}: {}",
                    net.hosts[i].ns,
                    net.hosts[j].ns,
                    peers_text(&net.hosts[i].ns)
                );
            }
        }
    }
    // With nothing in the way every host connects to every other directly.
    assert!(
        wait_until(Duration::from_secs(15), || peers_text(&net.hosts[0].ns)
            .contains("Peers: 5 (4 direct, 0 via other peers, 0 unreachable)")),
        "{}",
        peers_text(&net.hosts[0].ns)
    );
    let text = peers_text(&net.hosts[0].ns);
    for h in &net.hosts {
        assert!(text.contains(&h.ns), "{} missing from\n{text}", h.ns);
    }
    // Every line of the JSON names the peer's identity and its claim.
    let p = peers(&net.hosts[0].ns).unwrap();
    for (i, h) in net.hosts.iter().enumerate() {
        let x = p.iter().find(|x| x["name"] == h.ns.as_str()).unwrap();
        assert_eq!(x["id"].as_str().unwrap().len(), 44, "{x}");
        assert_eq!(
            x["claims"][0].as_str().unwrap(),
            format!("10.40.0.{}/32", i + 1)
        );
    }
}

/// Two hosts that cannot talk directly reach each other through a third,
/// end to end sealed, and go direct again when the firewall goes.
fn firewalled_pair_goes_through_another_host(udp_only: bool) {
    let mut net = Switched::new(3);
    net.hosts[0].peers = vec![net.addr(1), net.addr(2)];
    net.hosts[1].peers = vec![net.addr(2)];
    for i in 0..3 {
        net.start(i);
    }
    net.wait_converged(&[0, 1, 2], Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(10), || net.route(0, 2)
            == Some(("direct".into(), None))),
        "{}",
        peers_text(&net.hosts[0].ns)
    );
    net.firewall(0, 2, udp_only);
    net.wait_relayed(0, 2, 1);
    // The relay forwards what it cannot read: it holds no session with
    // which h0's datagrams for h2 open (they are sealed for h2), and it
    // says so in its status as relayed traffic.
    // Without UDP the control connection stays and says why; with all
    // traffic dropped it is closed once it stops answering too.
    let why = if udp_only {
        "direct data path down"
    } else {
        "no direct connection"
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            let text = peers_text(&net.hosts[0].ns);
            text.contains(why) && text.contains("end-to-end: established")
        }),
        "{}",
        peers_text(&net.hosts[0].ns)
    );
    // (The status snapshot is refreshed every 100 ms.)
    assert!(
        wait_until(Duration::from_secs(3), || status_json(&net.hosts[1].ns)
            .is_some_and(
                |s| s["relayed"]["datagrams"].as_u64().unwrap_or(0) > 0
            )),
        "h1 relayed nothing: {:?}",
        status_json(&net.hosts[1].ns)
    );

    net.unfirewall(0);
    assert!(
        wait_until(Duration::from_secs(45), || net.route(0, 2)
            == Some(("direct".into(), None))),
        "not direct again after the firewall went: {}",
        peers_text(&net.hosts[0].ns)
    );
    assert!(net.ping_within(0, 2, Duration::from_secs(10)));
}

#[test]
fn all_traffic_dropped_between_two_hosts_goes_through_a_third() {
    require_root!();
    firewalled_pair_goes_through_another_host(false);
}

#[test]
fn udp_dropped_between_two_hosts_goes_through_a_third() {
    require_root!();
    firewalled_pair_goes_through_another_host(true);
}

#[test]
fn kill9_of_the_relay_is_routed_around() {
    require_root!();
    let mut net = Switched::new(4);
    for i in 0..3 {
        net.hosts[i].peers = vec![net.addr(i + 1)];
    }
    for i in 0..4 {
        net.start(i);
    }
    net.wait_converged(&[0, 1, 2, 3], Duration::from_secs(30));
    // Every host connects to every other by gossip: h0 and h2 then have
    // two disjoint paths once their direct one goes.
    for (i, j) in [(0, 1), (0, 3), (2, 1), (2, 3)] {
        assert!(
            wait_until(Duration::from_secs(20), || net.route(i, j)
                == Some(("direct".into(), None))),
            "{}",
            peers_text(&net.hosts[i].ns)
        );
    }
    // h0 and h2 cannot talk directly: one of h1 and h3 carries them.
    net.firewall(0, 2, false);
    let relay = |net: &Switched| -> Option<usize> {
        let (kind, via) = net.route(0, 2)?;
        if kind != "via" {
            return None;
        }
        let via = via?;
        [1, 3]
            .into_iter()
            .find(|&k| via.starts_with(&format!("{} ", net.hosts[k].ns)))
    };
    assert!(
        wait_until(Duration::from_secs(20), || relay(&net).is_some()),
        "{}",
        peers_text(&net.hosts[0].ns)
    );
    assert!(net.ping_within(0, 2, Duration::from_secs(10)));
    let first = relay(&net).unwrap();
    let other = 4 - first;
    let killed_at = Instant::now();
    net.hosts[first].kill9();
    assert!(
        wait_until(Duration::from_secs(20), || relay(&net) == Some(other)),
        "not routed around the killed {}: {}",
        net.hosts[first].ns,
        peers_text(&net.hosts[0].ns)
    );
    assert!(
        net.ping_within(0, 2, Duration::from_secs(10)),
        "{}",
        peers_text(&net.hosts[0].ns)
    );
    assert!(net.ping_within(2, 0, Duration::from_secs(10)));
    eprintln!(
        "routed around the killed relay in {:.1} s",
        killed_at.elapsed().as_secs_f64()
    );
    // The killed host leaves everyone's topology as unreachable.
    assert!(
        wait_until(Duration::from_secs(10), || net
            .route(other, first)
            .map_or(true, |(kind, _)| kind == "unreachable")),
        "{}",
        peers_text(&net.hosts[other].ns)
    );
}

#[test]
fn duplicate_address_claim_is_refused_on_both_sides() {
    require_root!();
    let mut net = Switched::new(2);
    net.hosts[1].overlay = net.hosts[0].overlay.clone();
    net.hosts[1].peers = vec![net.addr(0)];
    net.start(0);
    // The first host has announced its claim (alone for 5 s) before the
    // second arrives.
    assert!(wait_until(Duration::from_secs(10), || peers(
        &net.hosts[0].ns
    )
    .is_some_and(|p| p[0]["claims"]
        .as_array()
        .is_some_and(|c| !c.is_empty()))));
    net.start(1);
    let (a, b) = (net.hosts[0].ns.clone(), net.hosts[1].ns.clone());
    let wanted = |ns: &str| {
        let logs = net.hosts.iter().find(|h| h.ns == ns).unwrap().logs();
        logs.lines().any(|l| {
            l.contains("address claim 10.40.0.1/32 of ")
                && l.contains(&format!("of {b} ("))
                && l.contains(&format!("refused: {a} ("))
                && l.contains("already owns 10.40.0.1/32")
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || wanted(&a) && wanted(&b)),
        "{}\n{}",
        net.hosts[0].logs(),
        net.hosts[1].logs()
    );
    for ns in [&a, &b] {
        let want = format!("Refused claim: 10.40.0.1/32 of {b} (");
        assert!(
            wait_until(Duration::from_secs(5), || peers_text(ns).contains(&want)),
            "{ns}: {}",
            peers_text(ns)
        );
    }
    // The owner keeps its address: the newcomer's claim never took its
    // traffic (the refused host has no route to its own address's owner
    // but the owner is unaffected).
    assert!(net.hosts[0].weft_running() && net.hosts[1].weft_running());
}

#[test]
fn a_peer_given_by_host_name_is_resolved_and_resolved_again_after_a_failure() {
    require_root!();
    let mut net = Switched::new(3);
    let hosts = NetnsHosts::new(&net.hosts[0].ns);
    hosts.set(&format!(
        "127.0.0.1 localhost\n{} peer-b.weft-test\n",
        net.hosts[1].underlay
    ));
    net.hosts[0].peers = vec!["peer-b.weft-test".into()];
    for i in 0..3 {
        net.start(i);
    }
    assert!(
        net.ping_within(0, 1, Duration::from_secs(15)),
        "{}",
        net.hosts[0].logs()
    );
    assert!(net.hosts[0].logs().contains(&format!(
        "peer peer-b.weft-test:6783 resolves to {}",
        net.addr(1)
    )));
    // The name moves to h2 and h1 goes away: the failed redial looks the
    // name up again and weft follows it.
    hosts.set(&format!(
        "127.0.0.1 localhost\n{} peer-b.weft-test\n",
        net.hosts[2].underlay
    ));
    net.hosts[1].kill9();
    let moved = format!(
        "peer peer-b.weft-test:6783 now resolves to {} (was {})",
        net.addr(2),
        net.addr(1)
    );
    assert!(
        wait_until(Duration::from_secs(30), || net.hosts[0]
            .logs()
            .contains(&moved)),
        "{}",
        net.hosts[0].logs()
    );
    assert!(
        net.ping_within(0, 2, Duration::from_secs(15)),
        "{}",
        peers_text(&net.hosts[0].ns)
    );
    // `weft forget` takes the name.
    let out = ns_exec(&net.hosts[0].ns, &[WEFT, "forget", "peer-b.weft-test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("forgot peer peer-b.weft-test:6783"));
}
