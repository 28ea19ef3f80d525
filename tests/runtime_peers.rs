//! Changing the peer set of a running weft: `weft connect ADDR` and
//! `weft forget ADDR` through the local control endpoint (an abstract unix
//! socket scoped to the weft's network namespace), in two namespace hosts.

mod common;

use common::*;
use std::time::Duration;

/// `weft ARGS` in `ns`: exit code, stdout, stderr.
fn weft_in(ns: &str, args: &[&str]) -> (i32, String, String) {
    let mut full = vec![WEFT];
    full.extend_from_slice(args);
    let out = ns_exec(ns, &full);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn connected(ns: &str) -> bool {
    status_json(ns)
        .and_then(|s| first_connection(&s).map(|c| c["state"] == "established"))
        .unwrap_or(false)
}

#[test]
fn connect_and_forget_change_the_peers_of_a_running_weft() {
    require_root!();
    let mut net = Net::pair(1500);
    let b_addr = net.a.peers[0].clone();
    // Neither host knows the other: only `weft connect` joins them.
    net.a.peers.clear();
    net.b.peers.clear();
    net.start_both(&[]);
    assert!(wait_until(Duration::from_secs(5), || status_json(
        &net.a.ns
    )
    .is_some()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!connected(&net.a.ns), "connected before weft connect");

    let (code, out, err) = weft_in(&net.a.ns, &["connect", &b_addr]);
    assert_eq!(code, 0, "weft connect: {out}{err}");
    assert!(out.contains(&format!("added peer {b_addr}")), "{out}");
    net.wait_established(Duration::from_secs(20));
    assert!(
        ping(&net.a.ns, &net.b.overlay_ip()),
        "no ping after weft connect"
    );
    assert!(net
        .a
        .logs()
        .contains(&format!("weft connect: added peer {b_addr}")));

    let (code, out, _) = weft_in(&net.a.ns, &["connect", &b_addr]);
    assert_eq!(code, 0);
    assert!(out.contains("is already a peer"), "{out}");

    let (code, out, err) = weft_in(&net.a.ns, &["forget", &b_addr]);
    assert_eq!(code, 0, "weft forget: {out}{err}");
    assert!(out.contains(&format!("forgot peer {b_addr}")), "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || !connected(&net.a.ns)),
        "the connection stayed after weft forget: {:?}",
        status_json(&net.a.ns)
    );
    // Not redialled (B does not dial A: it has no peers).
    std::thread::sleep(Duration::from_secs(3));
    assert!(!connected(&net.a.ns), "A redialled a forgotten peer");

    // Errors name the value and say what to do.
    let (code, _, err) = weft_in(&net.a.ns, &["forget", "198.18.250.9"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("198.18.250.9:6783 is not a peer of this weft (peers: none)"),
        "{err}"
    );
    let (code, _, err) = weft_in(&net.a.ns, &["connect", "not-an-address"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("\"not-an-address\" is not an address"),
        "{err}"
    );
    assert!(net.a.weft_running() && net.b.weft_running());
}

#[test]
fn connect_without_a_running_weft_says_so() {
    require_root!();
    let ns = Netns::new(format!("wt-{}-{}-r", std::process::id(), next_id()));
    let (code, _, err) = weft_in(&ns.name, &["connect", "198.18.0.2"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no weft answers on @weft-control@127.0.0.1:"),
        "{err}"
    );
    assert!(
        err.contains("is `weft launch` running in this network namespace"),
        "{err}"
    );
}
