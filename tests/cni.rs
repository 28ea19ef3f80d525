//! The CNI plugin driven exactly as a container runtime drives it: the
//! `weft` binary run with `CNI_*` environment variables and the network
//! configuration on stdin, inside a "host" network namespace, setting up a
//! "pod" namespace. Needs root.
//!
//! weft's side is played by [`FakeWeft`], a FAKE of weft's documented CNI
//! API (`weft::cni::api`: abstract socket `@weft-cni`, one JSON line each
//! way) that hands out 10.32.0.2, .3, ... from 10.32.0.0/12. It tests the
//! plugin's behaviour (veth, address, MTU, routes, DEL twice, CHECK, GC,
//! STATUS, bad input), not weft's IPAM; the end-to-end test with two real
//! weft hosts lives with the merged IPAM.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft::cni::api::{
    AttachMode, AttachmentKey, CniError, CniReply, CniRequest, CniSuccess, PodAddress,
    PodAttachment,
};

const MINIMAL: &str = r#"{"cniVersion":"1.0.0","name":"weftnet","type":"weft"}"#;
const MTU: u32 = 1376;

/// What the fake hands out and remembers.
#[derive(Default)]
struct FakeState {
    held: BTreeMap<(String, String), PodAttachment>,
    next: u8,
    requests: Vec<CniRequest>,
}

/// A fake of weft's CNI socket server (see the module doc), listening on
/// `@weft-cni` inside one namespace until dropped.
struct FakeWeft {
    state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeWeft {
    fn start(ns: &str, mode: AttachMode) -> FakeWeft {
        let state = Arc::new(Mutex::new(FakeState {
            next: 2,
            ..FakeState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            spawn_in_netns(ns, move || {
                let addr = SocketAddr::from_abstract_name(b"weft-cni").unwrap();
                let listener = UnixListener::bind_addr(&addr).expect("bind @weft-cni");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            let mut line = String::new();
                            if BufReader::new(&stream).read_line(&mut line).is_err() {
                                continue;
                            }
                            let reply = match serde_json::from_str::<CniRequest>(&line) {
                                Ok(request) => answer(&mut state.lock().unwrap(), request, mode),
                                Err(e) => {
                                    CniReply(Err(CniError::new(6, "bad request", e.to_string())))
                                }
                            };
                            let text = serde_json::to_string(&reply).unwrap();
                            let _ = writeln!(&stream, "{text}");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("fake weft did not start");
        FakeWeft {
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<CniRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    fn held(&self) -> usize {
        self.state.lock().unwrap().held.len()
    }
}

impl Drop for FakeWeft {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fake's answers, as weft's API documents them.
fn answer(state: &mut FakeState, request: CniRequest, mode: AttachMode) -> CniReply {
    state.requests.push(request.clone());
    match request {
        CniRequest::Add {
            container_id,
            ifname,
            ..
        } => {
            let key = (container_id, ifname);
            if let Some(held) = state.held.get(&key) {
                return CniReply(Ok(CniSuccess::Attachment(held.clone())));
            }
            let addr = std::net::Ipv4Addr::new(10, 32, 0, state.next);
            state.next += 1;
            let attachment = match mode {
                AttachMode::Bridge => PodAttachment {
                    address: PodAddress {
                        addr,
                        prefix_len: 12,
                    },
                    gateway: Some("10.32.0.1".parse().unwrap()),
                    mtu: MTU,
                    mode,
                    bridge: Some("weft".into()),
                    address6: None,
                    gateway6: None,
                },
                AttachMode::Tun => PodAttachment {
                    address: PodAddress {
                        addr,
                        prefix_len: 32,
                    },
                    gateway: None,
                    mtu: MTU,
                    mode,
                    bridge: None,
                    address6: None,
                    gateway6: None,
                },
            };
            state.held.insert(key, attachment.clone());
            CniReply(Ok(CniSuccess::Attachment(attachment)))
        }
        CniRequest::Del {
            container_id,
            ifname,
        } => {
            state.held.remove(&(container_id, ifname));
            CniReply(Ok(CniSuccess::Done {}))
        }
        CniRequest::Check {
            container_id,
            ifname,
        } => match state.held.get(&(container_id.clone(), ifname.clone())) {
            Some(a) => CniReply(Ok(CniSuccess::Attachment(a.clone()))),
            None => CniReply(Err(CniError::new(
                3,
                "unknown attachment",
                format!("no address held for {container_id} {ifname}"),
            ))),
        },
        CniRequest::Status => CniReply(Ok(CniSuccess::Done {})),
        CniRequest::Gc { valid } => {
            let before = state.held.len();
            state.held.retain(|(c, i), _| {
                valid.contains(&AttachmentKey {
                    container_id: c.clone(),
                    ifname: i.clone(),
                })
            });
            CniReply(Ok(CniSuccess::Released {
                released: (before - state.held.len()) as u32,
            }))
        }
        CniRequest::Version => CniReply(Ok(CniSuccess::Version {
            weft: "fake".into(),
        })),
    }
}

/// A host namespace (with weft's bridge in bridge mode) and pod namespaces.
struct Setup {
    host: Netns,
    pods: Vec<Netns>,
}

impl Setup {
    fn new(tag: &str, pods: usize, bridge: bool) -> Setup {
        let id = format!("wt-{}-{}-{tag}", std::process::id(), next_id());
        let host = Netns::new(format!("{id}-h"));
        let pods = (0..pods)
            .map(|i| Netns::new(format!("{id}-p{i}")))
            .collect();
        if bridge {
            // What weft does in bridge mode: a bridge with the host's
            // address in the range (the pods' gateway).
            let h = host.name.as_str();
            run("ip", &["-n", h, "link", "add", "weft", "type", "bridge"]);
            run(
                "ip",
                &["-n", h, "addr", "add", "10.32.0.1/12", "dev", "weft"],
            );
            run("ip", &["-n", h, "link", "set", "weft", "up"]);
        } else {
            // An address of the host for the pods to reach.
            run(
                "ip",
                &[
                    "-n",
                    &host.name,
                    "addr",
                    "add",
                    "198.18.0.1/32",
                    "dev",
                    "lo",
                ],
            );
        }
        Setup { host, pods }
    }

    fn netns_path(&self, pod: usize) -> String {
        format!("/var/run/netns/{}", self.pods[pod].name)
    }

    /// Runs the plugin in the host namespace as a runtime would.
    fn plugin(&self, command: &str, container: &str, pod: Option<usize>, conf: &str) -> Output {
        let mut env = vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", container.to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/opt/cni/bin".to_string()),
        ];
        if let Some(p) = pod {
            env.push(("CNI_NETNS", self.netns_path(p)));
        }
        plugin_raw(&self.host.name, &env, conf)
    }
}

/// Runs `weft` in namespace `ns` with exactly `env` (plus PATH) and `stdin`.
fn plugin_raw(ns: &str, env: &[(&str, String)], stdin: &str) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, WEFT])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run weft as a CNI plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?} (stderr: {})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "plugin failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The plugin failed with CNI error `code`; returns the error object.
fn assert_error(out: &Output, code: u64) -> Value {
    assert_eq!(out.status.code(), Some(1), "exit status");
    let v = stdout_json(out);
    assert_eq!(v["code"], code, "{v}");
    assert!(v["msg"].is_string() && v["details"].is_string(), "{v}");
    v
}

fn ip_out(args: &[&str]) -> String {
    String::from_utf8_lossy(&run("ip", args).stdout).into_owned()
}

fn host_veth(container: &str) -> String {
    weft::cni::plugin::host_veth_name(container, "eth0")
}

/// ADD's result with `cniVersion` and `prevResult` for CHECK.
fn with_prev_result(add_result: &Value) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": "weftnet", "type": "weft",
        "prevResult": add_result,
    })
    .to_string()
}

#[test]
fn bridge_mode_add_check_del_twice() {
    require_root!();
    let s = Setup::new("br", 1, true);
    let fake = FakeWeft::start(&s.host.name, AttachMode::Bridge);
    let (h, p) = (s.host.name.as_str(), s.pods[0].name.as_str());

    let out = s.plugin("ADD", "pod-a", Some(0), MINIMAL);
    assert_ok(&out);
    let result = stdout_json(&out);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"][0]["address"], "10.32.0.2/12");
    assert_eq!(result["ips"][0]["gateway"], "10.32.0.1");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], s.netns_path(0).as_str());
    assert_eq!(result["routes"][0]["gw"], "10.32.0.1");

    // The pod's interface: address, MTU, up, default route via the gateway.
    let link = ip_out(&["-n", p, "-d", "addr", "show", "eth0"]);
    assert!(link.contains("inet 10.32.0.2/12"), "{link}");
    assert!(link.contains(&format!("mtu {MTU}")), "{link}");
    assert!(link.contains("veth"), "{link}");
    assert!(link.contains("UP"), "{link}");
    let mac = result["interfaces"][1]["mac"].as_str().unwrap();
    assert!(link.contains(mac), "{mac} not in {link}");
    assert!(has_route(p, "default via 10.32.0.1 dev eth0"));
    // The host end: on the bridge, with the same MTU and the attachment alias.
    let veth = host_veth("pod-a");
    let host_link = ip_out(&["-n", h, "-d", "link", "show", &veth]);
    assert!(host_link.contains("master weft"), "{host_link}");
    assert!(host_link.contains(&format!("mtu {MTU}")), "{host_link}");
    assert!(
        host_link.contains("alias weft-cni weftnet pod-a eth0"),
        "{host_link}"
    );
    // The pod reaches the host over the bridge.
    assert!(ping(p, "10.32.0.1"), "pod cannot ping its gateway");

    // ADD again (a runtime retry): same address, still one veth.
    let again = s.plugin("ADD", "pod-a", Some(0), MINIMAL);
    assert_ok(&again);
    assert_eq!(stdout_json(&again)["ips"][0]["address"], "10.32.0.2/12");
    assert!(ping(p, "10.32.0.1"));

    // CHECK with the ADD result as prevResult.
    let check = s.plugin("CHECK", "pod-a", Some(0), &with_prev_result(&result));
    assert_ok(&check);
    assert!(check.stdout.is_empty());
    // CHECK notices a changed address.
    run("ip", &["-n", p, "addr", "flush", "dev", "eth0"]);
    let v = assert_error(
        &s.plugin("CHECK", "pod-a", Some(0), &with_prev_result(&result)),
        101,
    );
    assert!(v["details"].as_str().unwrap().contains("10.32.0.2"), "{v}");

    // DEL: both ends gone, weft told; DEL again succeeds.
    assert_ok(&s.plugin("DEL", "pod-a", Some(0), MINIMAL));
    assert!(!link_exists(h, &veth));
    assert!(!link_exists(p, "eth0"));
    assert_eq!(fake.held(), 0);
    let second = s.plugin("DEL", "pod-a", Some(0), MINIMAL);
    assert_ok(&second);
    assert!(second.stdout.is_empty());
    // DEL without CNI_NETNS (the namespace is gone) also succeeds.
    assert_ok(&s.plugin("DEL", "pod-a", None, MINIMAL));
    // CHECK after DEL fails: weft no longer holds it.
    assert_error(
        &s.plugin("CHECK", "pod-a", Some(0), &with_prev_result(&result)),
        3,
    );
    assert!(fake
        .requests()
        .iter()
        .any(|r| matches!(r, CniRequest::Del { container_id, .. } if container_id == "pod-a")));
}

#[test]
fn tun_mode_routes_the_pod_through_the_host() {
    require_root!();
    let s = Setup::new("tun", 1, false);
    let _fake = FakeWeft::start(&s.host.name, AttachMode::Tun);
    let (h, p) = (s.host.name.as_str(), s.pods[0].name.as_str());

    let conf = r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft"}"#;
    let out = s.plugin("ADD", "pod-t", Some(0), conf);
    assert_ok(&out);
    let result = stdout_json(&out);
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["ips"][0]["address"], "10.32.0.2/32");
    assert_eq!(result["interfaces"][1]["mtu"], MTU);
    assert_eq!(result["routes"][0]["gw"], "169.254.1.1");

    let addr = ip_out(&["-n", p, "addr", "show", "eth0"]);
    assert!(addr.contains("inet 10.32.0.2/32"), "{addr}");
    assert!(has_route(p, "169.254.1.1 dev eth0 scope link"));
    assert!(has_route(p, "default via 169.254.1.1 dev eth0"));
    let veth = host_veth("pod-t");
    assert!(has_route(h, &format!("10.32.0.2 dev {veth}")));
    let conf_path = format!("/proc/sys/net/ipv4/conf/{veth}/proxy_arp");
    let proxy_arp = ns_exec(h, &["cat", &conf_path]);
    assert_eq!(String::from_utf8_lossy(&proxy_arp.stdout).trim(), "1");
    // Host to pod and back: the /32 route one way, the next hop the other.
    assert!(ping(h, "10.32.0.2"), "host cannot ping the pod");
    assert!(ping(p, "198.18.0.1"), "pod cannot ping the host");

    assert_ok(&s.plugin("DEL", "pod-t", Some(0), conf));
    assert!(!link_exists(h, &veth));
    assert!(!has_route(h, "10.32.0.2"));
    assert_ok(&s.plugin("DEL", "pod-t", Some(0), conf));
}

#[test]
fn version_status_and_gc() {
    require_root!();
    let s = Setup::new("gc", 2, true);
    let h = s.host.name.as_str();
    let v11 = r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft"}"#;

    let out = plugin_raw(
        h,
        &[("CNI_COMMAND", "VERSION".into())],
        r#"{"cniVersion":"1.1.0"}"#,
    );
    assert_ok(&out);
    let v = stdout_json(&out);
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == want),
            "{v}"
        );
    }

    // STATUS: 50 without weft, success with it.
    let status = || plugin_raw(h, &[("CNI_COMMAND", "STATUS".into())], v11);
    let v = assert_error(&status(), 50);
    assert!(v["details"].as_str().unwrap().contains("@weft-cni"), "{v}");
    // ADD without weft: try again later, nothing left behind.
    assert_error(&s.plugin("ADD", "pod-0", Some(0), v11), 11);
    assert!(!link_exists(h, &host_veth("pod-0")));

    let fake = FakeWeft::start(h, AttachMode::Bridge);
    let out = status();
    assert_ok(&out);
    assert!(out.stdout.is_empty());

    // Two pods; the runtime still knows only pod-0.
    assert_ok(&s.plugin("ADD", "pod-0", Some(0), v11));
    assert_ok(&s.plugin("ADD", "pod-1", Some(1), v11));
    assert!(ping(&s.pods[0].name, "10.32.0.3"), "pods on one bridge");
    let gc = r#"{"cniVersion":"1.1.0","name":"weftnet","type":"weft",
        "cni.dev/valid-attachments":[{"containerID":"pod-0","ifname":"eth0"}]}"#;
    let out = plugin_raw(h, &[("CNI_COMMAND", "GC".into())], gc);
    assert_ok(&out);
    assert!(link_exists(h, &host_veth("pod-0")));
    assert!(!link_exists(h, &host_veth("pod-1")));
    assert!(!link_exists(&s.pods[1].name, "eth0"));
    assert_eq!(fake.held(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("released 1"));

    // weft stops: DEL still removes the veth and succeeds.
    drop(fake);
    let out = s.plugin("DEL", "pod-0", Some(0), v11);
    assert_ok(&out);
    assert!(!link_exists(h, &host_veth("pod-0")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not released"));
    assert_error(&status(), 50);
}

#[test]
fn bad_input_gets_spec_errors_naming_the_value() {
    require_root!();
    let s = Setup::new("bad", 1, true);
    let _fake = FakeWeft::start(&s.host.name, AttachMode::Bridge);
    let h = s.host.name.as_str();

    // Missing CNI_NETNS on ADD.
    let v = assert_error(&s.plugin("ADD", "pod-x", None, MINIMAL), 4);
    assert!(v["details"].as_str().unwrap().contains("CNI_NETNS"), "{v}");
    // Malformed configuration.
    let v = assert_error(
        &s.plugin("ADD", "pod-x", Some(0), r#"{"cniVersion":"1.0.0","#),
        6,
    );
    assert!(v["details"].as_str().unwrap().contains("line 1"), "{v}");
    // A namespace that does not exist.
    let env = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "pod-x".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        (
            "CNI_NETNS",
            "/var/run/netns/wt-no-such-namespace".to_string(),
        ),
    ];
    let v = assert_error(&plugin_raw(h, &env, MINIMAL), 3);
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("wt-no-such-namespace"),
        "{v}"
    );
    // A file that is not a namespace.
    let env = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "pod-x".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_NETNS", "/etc/hostname".to_string()),
    ];
    let v = assert_error(&plugin_raw(h, &env, MINIMAL), 3);
    assert!(
        v["details"].as_str().unwrap().contains("/etc/hostname"),
        "{v}"
    );
    // An unsupported version.
    let v = assert_error(
        &s.plugin(
            "ADD",
            "pod-x",
            Some(0),
            r#"{"cniVersion":"9.9.9","name":"weftnet","type":"weft"}"#,
        ),
        1,
    );
    assert!(v["details"].as_str().unwrap().contains("9.9.9"), "{v}");
    // An interface name the kernel would refuse.
    let env = [
        ("CNI_COMMAND", "ADD".to_string()),
        ("CNI_CONTAINERID", "pod-x".to_string()),
        ("CNI_IFNAME", "much-too-long-ifname".to_string()),
        ("CNI_NETNS", s.netns_path(0)),
    ];
    let v = assert_error(&plugin_raw(h, &env, MINIMAL), 4);
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("much-too-long-ifname"),
        "{v}"
    );
    // Nothing was made by any of it.
    assert!(!link_exists(h, &host_veth("pod-x")));
    assert!(!link_exists(&s.pods[0].name, "eth0"));
}
