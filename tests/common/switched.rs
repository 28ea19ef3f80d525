//! Hosts on one underlay switch: a bridge in its own namespace, each
//! host's `u0` attached to it (used by the mesh and certificate tests).

use super::*;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Timers short enough for tests: heartbeats every 200 ms while
/// connecting (and while the data path is down) and every 500 ms once
/// established, a peer down after 4 missed intervals, gossip rounds of
/// 200 ms.
pub const FAST_TIMERS: &str = "[timers]\nheartbeat_connecting_ms = 200\nheartbeat_established_ms = 500\nmissed_limit = 4\ngossip_interval_ms = 200\npeer_failure_timeout_secs = 10\n";

/// `n` hosts, each with `u0` on one bridge (`br0` in the switch
/// namespace): underlay 198.18.S.(i+1)/24, overlay 10.40.0.(i+1)/16.
pub struct Switched {
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// The namespace of the bridge.
    pub switch: Netns,
}

impl Switched {
    /// `n` hosts on a new switch (none started).
    pub fn new(n: usize) -> Switched {
        let id = next_id();
        let base = format!("wm-{}-{id}", std::process::id());
        let subnet = (id % 200) as u8 + 20;
        let switch = new_switch(format!("{base}-sw"));
        let mut hosts = Vec::new();
        for i in 0..n {
            let h = Host::new(
                format!("{base}-h{i}"),
                Ipv4Addr::new(198, 18, subnet, i as u8 + 1),
                &format!("10.40.0.{}/16", i + 1),
            );
            plug_into_switch(&h.ns, &switch, &format!("s{i}"));
            run(
                "ip",
                &[
                    "-n",
                    &h.ns,
                    "addr",
                    "add",
                    &format!("{}/24", h.underlay),
                    "dev",
                    "u0",
                ],
            );
            std::fs::write(h.path("weft.toml"), FAST_TIMERS).expect("write the config");
            hosts.push(h);
        }
        Switched { hosts, switch }
    }

    /// Two hosts with IPAM over `range` (each started with
    /// [`ipam_launch_args`]; `extra` adds e.g. bridge mode), host 1
    /// peering with host 0, converged.
    pub fn ipam_pair(range: &str, extra: &[&str]) -> Switched {
        let mut net = Switched::new(2);
        net.hosts[1].peers = vec![net.addr(0)];
        for host in net.hosts.iter_mut() {
            let args = ipam_launch_args(host, range, extra);
            host.start_with(&args, &[]);
        }
        net.wait_converged(&[0, 1], Duration::from_secs(30));
        net
    }

    /// Host `i`'s control address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{PORT}", self.hosts[i].underlay)
    }

    /// Starts host `i` with the test timers.
    pub fn start(&mut self, i: usize) {
        self.start_extra(i, &[]);
    }

    /// Starts host `i` with the test timers and `extra` arguments.
    pub fn start_extra(&mut self, i: usize, extra: &[&str]) {
        let config = self.hosts[i].path("weft.toml").display().to_string();
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra);
        self.hosts[i].start(&args);
    }

    /// Waits until every running host knows `n` peers (itself included)
    /// and reaches each of them (direct or via another).
    pub fn wait_converged(&self, running: &[usize], timeout: Duration) {
        for &i in running {
            let ok = wait_until(timeout, || {
                peers(&self.hosts[i].ns).is_some_and(|p| {
                    running.iter().all(|&j| {
                        let name = &self.hosts[j].ns;
                        p.iter().any(|x| {
                            x["name"] == name.as_str() && x["route"]["kind"] != "unreachable"
                        })
                    })
                })
            });
            assert!(
                ok,
                "{}: did not learn and reach every host within {timeout:?}: {}",
                self.hosts[i].ns,
                peers_text(&self.hosts[i].ns)
            );
        }
    }

    /// The route from host `i` to host `j`: (kind, via name).
    pub fn route(&self, i: usize, j: usize) -> Option<(String, Option<String>)> {
        let p = peers(&self.hosts[i].ns)?;
        let peer = p.iter().find(|x| x["name"] == self.hosts[j].ns.as_str())?;
        let route = &peer["route"];
        Some((
            route["kind"].as_str()?.to_string(),
            route["via"].as_str().map(|v| v.to_string()),
        ))
    }

    /// Waits until hosts `i` and `j` route to each other through host
    /// `relay` (both directions), then pings both ways; panics with the
    /// peer lists if not.
    pub fn wait_relayed(&self, i: usize, j: usize, relay: usize) {
        let through = |r: Option<(String, Option<String>)>| {
            r.is_some_and(|(kind, via)| {
                kind == "via" && via.is_some_and(|v| v.starts_with(&self.hosts[relay].ns))
            })
        };
        assert!(
            wait_until(Duration::from_secs(20), || through(self.route(i, j))
                && through(self.route(j, i))),
            "no route through host {relay}: {}\n{}",
            peers_text(&self.hosts[i].ns),
            peers_text(&self.hosts[j].ns)
        );
        assert!(
            self.ping_within(i, j, Duration::from_secs(10)),
            "no ping from host {i} to host {j} through host {relay}: {}",
            peers_text(&self.hosts[i].ns)
        );
        assert!(self.ping_within(j, i, Duration::from_secs(10)));
    }

    /// Drops traffic between hosts `i` and `j` in `i`'s namespace: all of
    /// it, or only UDP.
    pub fn firewall(&self, i: usize, j: usize, udp_only: bool) {
        let ns = &self.hosts[i].ns;
        let other = self.hosts[j].underlay.to_string();
        let proto = if udp_only { "meta l4proto udp " } else { "" };
        let rules = format!(
            "table inet weft_test {{\n chain input {{ type filter hook input priority 0; ip saddr {other} {proto}drop; }}\n chain output {{ type filter hook output priority 0; ip daddr {other} {proto}drop; }}\n}}\n"
        );
        let path = self.hosts[i].path("fw.nft");
        std::fs::write(&path, rules).expect("write the rules");
        let out = ns_exec(ns, &["nft", "-f", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Removes the firewall of host `i`.
    pub fn unfirewall(&self, i: usize) {
        let out = ns_exec(
            &self.hosts[i].ns,
            &["nft", "delete", "table", "inet", "weft_test"],
        );
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One ping from host `i` to host `j`'s overlay address.
    pub fn ping(&self, i: usize, j: usize) -> bool {
        ping(&self.hosts[i].ns, &self.hosts[j].overlay_ip())
    }

    /// Pings from `i` to `j` until one answers (bounded by `timeout`).
    pub fn ping_within(&self, i: usize, j: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.ping(i, j))
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        // Hosts go first (their weft stops, namespaces go), then the switch.
        self.hosts.clear();
        let _ = &self.switch;
    }
}

/// `weft launch` arguments for `host` with the test timers and IPAM over
/// `range`, addresses kept in the host's `ipam/` (so a restart with the
/// same arguments finds them), plus `extra`.
pub fn ipam_launch_args(host: &Host, range: &str, extra: &[&str]) -> Vec<String> {
    let mut args = host.launch_args();
    args.extend([
        "--config".to_string(),
        host.path("weft.toml").display().to_string(),
        "--ipalloc-range".into(),
        range.into(),
        "--ipalloc-dir".into(),
        host.path("ipam").display().to_string(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// `weft status peers --json` in a namespace: the peer list.
pub fn peers(ns: &str) -> Option<Vec<Value>> {
    let out = ns_exec(ns, &[WEFT, "status", "peers", "--json"]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["peers"].as_array().cloned()
}

/// `weft status peers` as text (for failure messages).
pub fn peers_text(ns: &str) -> String {
    let out = ns_exec(ns, &[WEFT, "status", "peers"]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
