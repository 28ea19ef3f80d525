//! Bridge mode over a partial mesh: three hosts on one underlay switch,
//! two of them firewalled from each other, a "container" on each host's
//! bridge. A broadcast follows the sender's spanning tree and reaches
//! every other container exactly once; unicast between the firewalled
//! pair goes through the third host, sealed end to end.

mod l2_common;

use l2_common::*;
use std::time::Duration;

const MTU: u16 = 1380;

struct Mesh {
    // Dropped in order: weft processes, containers, hosts, switch.
    wefts: Vec<Weft>,
    containers: Vec<Container>,
    hosts: Vec<Netns>,
    _switch: Netns,
}

fn three_hosts_firewalled_pair(tag: &str) -> Mesh {
    let p = unique(tag);
    let switch = Netns::new(&format!("{p}sw"));
    switch.run("ip link add br0 type bridge");
    switch.run("ip link set br0 up");
    let secret = write_file(
        &format!("{p}-secret"),
        "bridge-mesh-test-secret-0123456789abcdef\n",
    );
    let config = write_file(
        &format!("{p}-config.toml"),
        "[timers]\nheartbeat_connecting_ms = 100\nheartbeat_established_ms = 300\nmissed_limit = 4\ngossip_interval_ms = 200\n",
    );
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let h = Netns::new(&format!("{p}h{i}"));
        must(&format!(
            "ip link add {p}u{i} netns {} type veth peer name s{i} netns {}",
            h.name, switch.name
        ));
        h.run(&format!("ip link set {p}u{i} name ul"));
        h.run(&format!("ip addr add 198.18.0.{i}/24 dev ul"));
        h.run("ip link set ul up");
        switch.run(&format!("ip link set s{i} master br0"));
        switch.run(&format!("ip link set s{i} up"));
        hosts.push(h);
    }
    // h1 and h3 cannot talk to each other at all.
    for (a, b) in [(0, 3), (2, 1)] {
        hosts[a].run(&format!(
            "nft 'add table inet weft_test; add chain inet weft_test in {{ type filter hook input priority 0; }}; add chain inet weft_test out {{ type filter hook output priority 0; }}; add rule inet weft_test in ip saddr 198.18.0.{b} drop; add rule inet weft_test out ip daddr 198.18.0.{b} drop'"
        ));
    }
    let mut wefts = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        // Every host is told only about h2, the one in the middle.
        let peer = if n == 2 {
            String::new()
        } else {
            "--peer 198.18.0.2:6783".to_string()
        };
        wefts.push(Weft::start(
            h,
            &format!(
                "--iface bridge --bridge wbr --overlay 10.50.0.{n}/16 --listen 198.18.0.{n}:6783 {peer} --name {p}h{n} --secret-file {} --config {}",
                secret.display(),
                config.display()
            ),
        ));
    }
    for (i, h) in hosts.iter().enumerate() {
        assert!(
            wait_for(Duration::from_secs(10), || link_exists(h, "wbr")
                .then_some(()))
            .is_some(),
            "no bridge on h{}: {}",
            i + 1,
            wefts[i].log_text()
        );
    }
    let containers = (0..3)
        .map(|i| {
            Container::new(
                &format!("{p}c{}", i + 1),
                &format!("02:00:00:00:03:0{}", i + 1),
                &format!("10.50.3.{}", i + 1),
                MTU,
                &hosts[i],
                "wbr",
            )
        })
        .collect();
    Mesh {
        wefts,
        containers,
        hosts,
        _switch: switch,
    }
}

#[test]
fn broadcast_follows_the_tree_exactly_once_over_a_partial_mesh() {
    let m = three_hosts_firewalled_pair("l2m");
    // Everyone reaches everyone: h1 and h3 through h2.
    let via_h2 = |from: usize| {
        let (ok, out) = m.hosts[from].try_run(&format!("{} status peers --json", weft_bin()));
        ok && serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|v| {
                v["peers"].as_array().map(|p| {
                    p.iter().filter(|x| x["route"]["kind"] == "via").count() == 1
                        && p.iter().filter(|x| x["route"]["kind"] == "direct").count() == 1
                })
            })
            .unwrap_or(false)
    };
    assert!(
        wait_for(Duration::from_secs(20), || (via_h2(0) && via_h2(2))
            .then_some(()))
        .is_some(),
        "h1/h3 never routed through h2: {}\n{}",
        m.wefts[0].log_text(),
        m.wefts[2].log_text()
    );
    let [c1, c2, c3] = [&m.containers[0], &m.containers[1], &m.containers[2]];
    let ping = |from: &Container, to: &str| from.ns.try_run(&format!("ping -c 1 -W 1 {to}")).0;
    assert!(
        wait_for(Duration::from_secs(10), || ping(c1, &c3.ip).then_some(())).is_some(),
        "c1 cannot reach c3 through h2: {}",
        m.wefts[0].log_text()
    );
    assert!(ping(c3, &c1.ip) && ping(c2, &c1.ip) && ping(c3, &c2.ip));

    // A broadcast from each container reaches each other container once.
    for (s, sender) in m.containers.iter().enumerate() {
        let others: Vec<&Container> = m
            .containers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != s)
            .map(|(_, c)| c)
            .collect();
        let port = 9990 + s as u16;
        let counters: Vec<_> = others
            .iter()
            .map(|c| count_udp(&c.ns, port, Duration::from_millis(1500)))
            .collect();
        let own = count_udp(&sender.ns, port, Duration::from_millis(1500));
        let ip = sender.ip.clone();
        sender.ns.enter(move || {
            let sock = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
            sock.set_broadcast(true).unwrap();
            sock.send_to(b"hello everyone", format!("10.50.255.255:{port}"))
                .unwrap();
        });
        let got: Vec<usize> = counters.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            got,
            vec![1, 1],
            "copies of c{}'s broadcast at the others",
            s + 1
        );
        assert_eq!(
            own.join().unwrap(),
            1,
            "c{}'s broadcast came back to it",
            s + 1
        );
    }
    // h2 carried h1's and h3's traffic without reading it.
    assert!(wait_for(Duration::from_secs(3), || (stat(
        &m.hosts[1],
        "/relayed/datagrams"
    ) > 0)
        .then_some(()))
    .is_some());
}
