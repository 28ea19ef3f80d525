//! A real container runtime on weft: podman (Debian's 4.3, CNI network
//! backend) with the weft plugin as its network `weftnet`, on two weft
//! hosts in bridge mode with `--ipalloc-range` (network namespaces on one
//! underlay switch). Each host has its own podman world in a scratch
//! directory (storage, run state, locks, configuration, the plugin
//! directory) and podman runs in the host's network namespace, so the
//! plugin it starts finds that host's weft at `@weft-cni`. The image is a
//! busybox-static root made here and `podman import`ed; nothing is pulled.
//!
//! Checked: containers get distinct addresses from the range (what podman
//! reports is what the container has), reach each other across the
//! encrypted overlay, a second container on a host gets another address,
//! `podman rm` (CNI DEL) removes the host-side veth and releases the
//! address, and after a restart of weft the containers still reach each
//! other and a new container gets an address no live container holds.
//! Everything the test made is gone afterwards: containers, mounts, podman's
//! network namespaces, cgroups, storage. Needs root, podman and runc.

mod common;

use common::containers::*;
use common::switched::*;
use common::*;
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const RANGE: &str = "10.32.0.0/16";
const BRIDGE: [&str; 4] = ["--iface", "bridge", "--bridge", "weft"];
const IMAGE: &str = "localhost/weft-busybox:test";
const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"weftnet","plugins":[{"type":"weft"}]}"#;
/// busybox applets the containers use.
const APPLETS: [&str; 5] = ["sh", "sleep", "ping", "ip", "cat"];

/// One host's podman: a world of its own (storage, run state, locks,
/// configuration) plus the CNI directories, run in the host's network
/// namespace.
struct Podman {
    world: PodmanWorld,
}

impl Podman {
    /// A podman world for host namespace `ns`, with the image imported.
    fn new(ns: &str) -> Podman {
        let tag = format!("weft-podman-{ns}");
        let dir = std::env::temp_dir().join(&tag);
        let d = |name: &str| dir.join(name).display().to_string();
        // The CNI backend; the plugin directory holds weft (as plugin
        // type "weft") and Debian's plugins, the network directory only
        // weftnet.
        let network = format!(
            "network_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\ndefault_network = \"weftnet\"",
            d("cni-bin"),
            d("cni-conf")
        );
        let p = Podman {
            world: PodmanWorld::new(&tag, &network, Some(ns)),
        };
        for d in ["cni-bin", "cni-conf", "rootfs/bin"] {
            fs::create_dir_all(p.path(d)).expect("create the podman directories");
        }
        std::os::unix::fs::symlink(WEFT, p.path("cni-bin/weft")).expect("link the plugin");
        fs::write(p.path("cni-conf/weftnet.conflist"), CONFLIST).expect("write the conflist");

        // The image: busybox-static and its applets, imported from a tar.
        fs::copy("/bin/busybox", p.path("rootfs/bin/busybox")).expect("copy /bin/busybox");
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", p.path(&format!("rootfs/bin/{a}")))
                .expect("link an applet");
        }
        run("tar", &["-C", &d("rootfs"), "-cf", &d("image.tar"), "."]);
        p.ok(&["import", &d("image.tar"), IMAGE]);
        p
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.world.path(name)
    }

    /// `podman ARGS` in the host's network namespace.
    fn cmd(&self, args: &[&str]) -> Output {
        self.world.cmd(args)
    }

    /// `podman ARGS`, which must succeed; its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        self.world.ok(args)
    }

    /// Starts container `name` on weftnet (`sleep 600`); its id.
    fn start(&self, name: &str) -> String {
        let parent = self.world.cgroup_parent();
        let id = self.ok(&[
            "run",
            "-d",
            "--pull=never",
            "--network",
            "weftnet",
            "--cgroup-parent",
            &parent,
            "--name",
            name,
            IMAGE,
            "sleep",
            "600",
        ]);
        let sandbox = self.ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.SandboxKey}}",
            name,
        ]);
        assert!(sandbox.starts_with("/run/netns/"), "{name}: {sandbox}");
        self.world.sandboxes.borrow_mut().push(sandbox);
        id
    }

    /// Container `name`'s weftnet address as podman reports it, checked
    /// against what the container's eth0 holds.
    fn addr(&self, name: &str) -> String {
        let reported = self.ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.Networks.weftnet.IPAddress}}/{{.NetworkSettings.Networks.weftnet.IPPrefixLen}}",
            name,
        ]);
        let inside = self.ok(&[
            "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ]);
        let held = inside
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or_default();
        assert_eq!(held, reported, "{name}: eth0 has {inside}");
        assert!(
            reported.starts_with("10.32.") && reported.ends_with("/16"),
            "{name}: {reported} is not from {RANGE}"
        );
        reported.split('/').next().unwrap().to_string()
    }

    /// One ping (1 s timeout) from container `name` to `target`.
    fn ping(&self, name: &str, target: &str) -> bool {
        self.cmd(&["exec", name, "ping", "-c", "1", "-W", "1", target])
            .status
            .success()
    }

    /// Removes every container (`rm -f`, no grace: `sleep` as PID 1
    /// ignores SIGTERM).
    fn rm_all(&self) -> Output {
        self.world.rm_all()
    }
}

/// Addresses in use on host namespace `ns` (`weft status ipam --json`).
fn in_use(ns: &str) -> Option<u64> {
    let out = ns_exec(ns, &[WEFT, "status", "ipam", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["in_use"].as_u64()
}

/// Whether the addresses in use on `ns` come to `n` within 5 s (podman
/// may finish a container's network teardown just after `rm` returns).
fn in_use_settles(ns: &str, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || in_use(ns) == Some(n))
}

/// Whether a host-side veth of container `id` exists in `ns` (the plugin
/// gives it the alias `weft-cni NETWORK CONTAINER IFNAME`).
fn host_veth(ns: &str, id: &str) -> bool {
    let out = run("ip", &["-n", ns, "-o", "link", "show", "type", "veth"]);
    String::from_utf8_lossy(&out.stdout).contains(id)
}

#[test]
fn podman_containers_on_two_weft_hosts() {
    require_root!();
    require_tools!("podman", "runc", "nsenter", "busybox-static");
    // Dropped in reverse: containers go first (weft still running), then
    // the hosts, then the caches podman left on the host.
    let caches = HostCaches::record();
    let mut net = Switched::ipam_pair(RANGE, &BRIDGE);
    let hosts = [net.hosts[0].ns.clone(), net.hosts[1].ns.clone()];
    let pods = [Podman::new(&hosts[0]), Podman::new(&hosts[1])];
    let logs = |net: &Switched| net.hosts.iter().map(|h| h.logs()).collect::<String>();

    // One container per host: distinct addresses from the range.
    let ids: Vec<String> = pods.iter().map(|p| p.start("c1")).collect();
    let a1 = pods[0].addr("c1");
    let b1 = pods[1].addr("c1");
    assert_ne!(a1, b1);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(in_use(h), Some(1), "{h}");
        assert!(host_veth(h, &ids[i]), "{h}: no veth for {}", ids[i]);
    }

    // They reach each other across the overlay.
    let reached = wait_until(Duration::from_secs(15), || pods[0].ping("c1", &b1));
    assert!(reached, "A/c1 {a1} cannot reach B/c1 {b1}\n{}", logs(&net));
    assert!(pods[1].ping("c1", &a1), "B/c1 {b1} cannot reach A/c1 {a1}");

    // A second container on A: another address, reaches B's container.
    let id2 = pods[0].start("c2");
    let a2 = pods[0].addr("c2");
    assert!(a2 != a1 && a2 != b1, "c2 got {a2} (c1s: {a1}, {b1})");
    assert_eq!(in_use(&hosts[0]), Some(2));
    assert!(pods[0].ping("c2", &b1), "A/c2 {a2} cannot reach B/c1 {b1}");

    // rm (CNI DEL): the host-side veth goes, the address is released,
    // podman's namespace for it is gone.
    pods[0].ok(&["rm", "-f", "-t", "0", "c2"]);
    assert!(
        in_use_settles(&hosts[0], 1),
        "c2's address not released: {:?} in use",
        in_use(&hosts[0])
    );
    assert!(!host_veth(&hosts[0], &id2), "veth of c2 left behind");
    let c2_netns = pods[0].world.sandboxes.borrow()[1].clone();
    assert!(!Path::new(&c2_netns).exists(), "{c2_netns} left behind");

    // Restart weft on A with the same --ipalloc-dir: it still knows c1's
    // address, the containers reach each other again.
    net.hosts[0].terminate();
    let args = ipam_launch_args(&net.hosts[0], RANGE, &BRIDGE);
    net.hosts[0].start_with(&args, &[]);
    let back = wait_until(Duration::from_secs(10), || in_use(&hosts[0]).is_some());
    assert!(back, "weft on A did not come back\n{}", logs(&net));
    assert_eq!(in_use(&hosts[0]), Some(1), "c1's address forgotten");
    let reached = wait_until(Duration::from_secs(20), || pods[0].ping("c1", &b1));
    assert!(
        reached,
        "A/c1 {a1} cannot reach B/c1 {b1} after the restart\n{}",
        logs(&net)
    );
    assert!(
        pods[1].ping("c1", &a1),
        "B/c1 cannot reach A/c1 after the restart"
    );

    // A new container after the restart: an address no live one holds.
    pods[0].start("c3");
    let a3 = pods[0].addr("c3");
    assert!(
        a3 != a1 && a3 != b1,
        "c3 got {a3}, held by a live container"
    );
    assert_eq!(in_use(&hosts[0]), Some(2));
    assert!(pods[0].ping("c3", &b1), "A/c3 {a3} cannot reach B/c1 {b1}");

    // Teardown by podman itself: DEL for each container, nothing mounted
    // or namespaced left; then the scratch state, and nothing at all left.
    for (p, h) in pods.iter().zip(&hosts) {
        let out = p.rm_all();
        assert!(out.status.success(), "{h}: rm -a {}", show(&out));
        assert!(
            in_use_settles(h, 0),
            "{h}: addresses not released: {:?} in use",
            in_use(h)
        );
        // What podman itself must undo (the cgroups and the directory are
        // the test's): mounts and network namespaces.
        let podmans_own = || -> Vec<String> {
            p.world
                .leftovers()
                .into_iter()
                .filter(|l| !l.starts_with("/sys/") && *l != p.world.dir.display().to_string())
                .collect()
        };
        wait_until(Duration::from_secs(5), || podmans_own().is_empty());
        let left = podmans_own();
        assert!(left.is_empty(), "{h}: podman rm left {left:?}");
        let veths = run("ip", &["-n", h, "-o", "link", "show", "type", "veth"]);
        assert!(
            !String::from_utf8_lossy(&veths.stdout).contains("weft-cni"),
            "{h}: plugin veths left"
        );
        p.world.clean();
        assert_eq!(p.world.leftovers(), Vec::<String>::new(), "{h}");
    }
    drop(pods);
    drop(net);
    caches.clean();
    for c in &caches.created_by_us {
        assert!(!c.exists(), "{} left behind", c.display());
    }
}
