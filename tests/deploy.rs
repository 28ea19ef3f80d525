//! deploy/weft.yaml and the image scripts/build-image makes, without a
//! Kubernetes control plane (none is packaged for this machine):
//!
//! - every object validates against the Kubernetes schemas of two releases
//!   with `kubernetes-validate --strict`, offline (in a network namespace
//!   with nothing but loopback), and a broken copy is rejected;
//! - the DaemonSet asks for what weft needs and no more (host network,
//!   capabilities, priority, tolerations, the node name, the files weft is
//!   told to use are the ones mounted), and the plugin accepts the
//!   ConfigMap's conflist;
//! - the image is built from scratch with buildah, loaded into podman and
//!   the DaemonSet's own containers run there the way a kubelet would run
//!   them (command, environment from the downward API, capabilities,
//!   read-only root, hostPath, ConfigMap, Secret and service-account
//!   mounts), with two network namespaces as the nodes and a fake API
//!   server as the cluster: the init container installs the plugin, the
//!   conflist and a key that survives a second run; weft finds its peer in
//!   the node list, answers the readiness probe, and pods added through the
//!   installed plugin with the installed conflist reach each other across
//!   the overlay; SIGTERM stops it cleanly; without CAP_NET_ADMIN the same
//!   container refuses to start.
//!
//! Needs python3 with kubernetes-validate (and its PyYAML); the last test
//! also root, podman, runc and buildah (scripts/install-deps installs them;
//! outside CI a missing tool skips the test).

mod common;

use common::cni::*;
use common::containers::*;
use common::kube_api::*;
use common::switched::*;
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/weft.yaml");
const BUILD_IMAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image");
/// The Kubernetes releases the manifests are validated against: an older
/// one still in wide use and the newest kubernetes-validate 1.37 bundles.
const KUBE_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Where the kubelet mounts a pod's service-account token and CA.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The objects of a manifest file, as JSON (PyYAML, which
/// kubernetes-validate depends on, reads the YAML).
fn objects(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\njson.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}: {}", path.display(), show(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("the YAML as JSON")
}

/// The one object of `kind`.
fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected in {MANIFEST}");
    found[0]
}

/// A string field, or a panic naming it.
fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// `kubernetes-validate --strict` against Kubernetes `version`, inside
/// network namespace `ns` when given.
fn validate(path: &Path, version: &str, ns: Option<&str>) -> Output {
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    command
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .arg(path)
        .output()
        .expect("run python3 -m kubernetes_validate")
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    require_tools!("python3", "python3:kubernetes_validate");
    let manifest = Path::new(MANIFEST);
    let kinds: Vec<String> = objects(manifest)
        .iter()
        .map(|o| text(&o["kind"], "kind").to_lowercase())
        .collect();
    assert!(kinds.len() >= 5, "{kinds:?}");
    // Offline: a namespace with nothing but loopback (as root).
    let offline = is_root().then(|| Netns::new(format!("wd-{}-{}", std::process::id(), next_id())));
    let ns = offline.as_ref().map(|n| n.name.as_str());
    for version in KUBE_VERSIONS {
        let out = validate(manifest, version, ns);
        let report = show(&out);
        assert!(out.status.success(), "Kubernetes {version}: {report}");
        let minor = version.trim_end_matches(".0");
        for kind in &kinds {
            assert!(
                report.contains(&format!("passed for resource {kind}/"))
                    && report.contains(&format!("against version {minor}")),
                "Kubernetes {version}: {kind} not validated: {report}"
            );
        }
    }

    // The validator does reject: a misspelled field (strict) and a wrong
    // type, each named.
    let scratch = Scratch::new("deploy-validate");
    let original = fs::read_to_string(manifest).unwrap();
    for (from, to, complaint) in [
        (
            "      hostNetwork: true",
            "      hostNetwrk: true",
            "'hostNetwrk' was unexpected",
        ),
        (
            "              port: 6782",
            "              port: [6782]",
            "readinessProbe.httpGet.port",
        ),
    ] {
        assert!(original.contains(from), "{MANIFEST} lacks {from:?}");
        let broken = scratch.0.join("broken.yaml");
        fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let out = validate(&broken, KUBE_VERSIONS[1], ns);
        assert!(!out.status.success(), "{to:?} accepted: {}", show(&out));
        assert!(show(&out).contains(complaint), "{to:?}: {}", show(&out));
    }
}

/// The DaemonSet's main container (`weft`) and its init container.
fn containers(pod: &Value) -> (&Value, &Value) {
    let main = &pod["containers"];
    let init = &pod["initContainers"];
    assert_eq!(main.as_array().map(Vec::len), Some(1), "{main}");
    assert_eq!(init.as_array().map(Vec::len), Some(1), "{init}");
    (&main[0], &init[0])
}

/// The value of `--flag=VALUE` in a command.
fn flag<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
    command
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| text(s, "list item").to_string())
        .collect()
}

/// Where `container` mounts volume `name`, and whether read-only.
fn mount_of<'a>(container: &'a Value, name: &str) -> Option<(&'a str, bool)> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| (text(&m["mountPath"], "mountPath"), m["readOnly"] == true))
}

/// The volume whose mount in `container` holds `path`.
fn volume_holding<'a>(pod: &'a Value, container: &Value, path: &str) -> &'a Value {
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    let m = mounts
        .iter()
        .filter(|m| {
            let at = text(&m["mountPath"], "mountPath");
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| text(&m["mountPath"], "mountPath").len())
        .unwrap_or_else(|| panic!("nothing is mounted where {path} is"));
    let name = &m["name"];
    pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == *name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The plugin configuration a runtime (libcni) hands the first plugin of
/// a conflist: the plugin's entry with the list's name and cniVersion.
fn plugin_config(conflist: &Value) -> String {
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf.to_string()
}

#[test]
fn the_daemonset_asks_for_what_weft_needs_and_no_more() {
    require_tools!("python3", "python3:yaml");
    let objs = objects(Path::new(MANIFEST));
    let account = one(&objs, "ServiceAccount");
    let role = one(&objs, "ClusterRole");
    let binding = one(&objs, "ClusterRoleBinding");
    let config = one(&objs, "ConfigMap");
    let ds = one(&objs, "DaemonSet");
    let namespace = text(&ds["metadata"]["namespace"], "namespace");
    for o in [account, config] {
        assert_eq!(o["metadata"]["namespace"], namespace, "{o}");
    }

    // RBAC: list nodes (GET /api/v1/nodes, weft's only request), bound
    // to the DaemonSet's service account.
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}])
    );
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}])
    );

    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    // Every node: one toleration matching every taint.
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));

    let (main, init) = containers(pod);
    // The image scripts/build-image tags by default.
    let image = format!("localhost/weft:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(main["image"], image.as_str());
    assert_eq!(init["image"], image.as_str());
    assert!(pod
        .get("securityContext")
        .map_or(true, |s| s["privileged"] != true));
    for (c, add) in [(main, json!(["NET_ADMIN"])), (init, Value::Null)] {
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false, "{}", c["name"]);
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{}", c["name"]);
        assert_eq!(sc["capabilities"]["add"], add, "{}", c["name"]);
    }

    // From the downward API: the node's name (weft launch --kube reads
    // NODE_NAME) and IP (weft listens there, and so knows its underlay
    // interface without a --peer).
    let env = main["env"].as_array().expect("env");
    for (name, field) in [("NODE_NAME", "spec.nodeName"), ("HOST_IP", "status.hostIP")] {
        let var = env
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} in env"));
        assert_eq!(
            var["valueFrom"],
            json!({"fieldRef": {"fieldPath": field}}),
            "{name}"
        );
    }
    let command = strings(&main["command"]);
    assert_eq!(command[..3], ["weft", "launch", "--kube"], "{command:?}");
    assert_eq!(flag(&command, "--iface"), Some("bridge"));
    assert!(flag(&command, "--ipalloc-range").is_some(), "{command:?}");
    assert_eq!(flag(&command, "--name"), Some("$(NODE_NAME)"));
    assert_eq!(flag(&command, "--listen"), Some("$(HOST_IP):6783"));
    assert!(
        !command.iter().any(|a| a.starts_with("--status-addr")),
        "the probes expect the default status address"
    );
    // No per-node address in one DaemonSet: the bridge takes the pods'
    // gateway from IPAM; pods leave the pod network through NAT.
    assert!(
        !command.iter().any(|a| a.starts_with("--overlay")),
        "{command:?}"
    );
    assert!(command.iter().any(|a| a == "--masquerade"), "{command:?}");

    // The files weft is told to use are where volumes are mounted: the
    // secret from the Secret (read-only), the key and the IPAM records on
    // the node, the TUN device from the node.
    let secret_file = flag(&command, "--secret-file").expect("--secret-file");
    let secret = volume_holding(pod, main, secret_file);
    assert_eq!(secret["secret"]["secretName"], "weft-secret");
    assert_eq!(secret["secret"]["defaultMode"], 0o400);
    assert_eq!(
        mount_of(main, text(&secret["name"], "name")).map(|m| m.1),
        Some(true)
    );
    assert_eq!(
        Path::new(secret_file).file_name().and_then(|f| f.to_str()),
        Some("secret"),
        "the file `kubectl create secret generic weft-secret --from-file=secret=...` makes"
    );
    for f in ["--key-file", "--ipalloc-dir"] {
        let path = flag(&command, f).unwrap_or_else(|| panic!("{f}"));
        let v = volume_holding(pod, main, path);
        assert_eq!(v["hostPath"]["path"], "/var/lib/weft", "{f}");
    }
    let tun = volume_holding(pod, main, "/dev/net/tun");
    assert_eq!(
        tun["hostPath"],
        json!({"path": "/dev/net/tun", "type": "CharDevice"})
    );
    assert_eq!(
        volume_holding(pod, main, "/run/weft")["hostPath"]["path"],
        "/run/weft"
    );
    // The init container writes the key where weft reads it.
    let key_file = flag(&command, "--key-file").unwrap();
    let script = text(&init["command"][2], "the install script");
    assert!(script.contains(key_file), "{script}");
    assert_eq!(
        volume_holding(pod, init, key_file)["hostPath"]["path"],
        "/var/lib/weft"
    );

    // Probes: the status server's default address (loopback of the node,
    // where the kubelet is).
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            main[probe]["httpGet"],
            json!({"host": "127.0.0.1", "port": 6782, "path": "/status"}),
            "{probe}"
        );
    }
    assert!(main["resources"]["limits"]["memory"].is_string());

    // The conflist: what the init container installs, and the plugin
    // accepts its version.
    let conflist_text = text(&config["data"]["10-weft.conflist"], "the conflist");
    let conflist: Value = serde_json::from_str(conflist_text).expect("the conflist is JSON");
    assert_eq!(conflist["plugins"][0]["type"], "weft");
    assert!(
        script.contains("/etc/cni/net.d/10-weft.conflist"),
        "{script}"
    );
    let mut child = Command::new(WEFT)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(plugin_config(&conflist).as_bytes());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "VERSION: {}", show(&out));
    let versions: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        versions["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&conflist["cniVersion"]),
        "{versions}"
    );
}

/// A node: its name, its network namespace and IP, its files (the
/// hostPath directories under `dir/root`, the ConfigMap, Secret and
/// service-account volumes beside them).
struct NodeFiles {
    name: String,
    ns: String,
    ip: String,
    dir: PathBuf,
}

impl NodeFiles {
    fn new(dir: PathBuf, host: &Host) -> NodeFiles {
        fs::create_dir_all(dir.join("root")).unwrap();
        NodeFiles {
            name: host.ns.clone(),
            ns: host.ns.clone(),
            ip: host.underlay.to_string(),
            dir,
        }
    }

    /// Where the node's `path` is.
    fn host(&self, path: &str) -> PathBuf {
        self.dir.join("root").join(path.trim_start_matches('/'))
    }
}

/// Expands `$(VAR)` as the kubelet does in a container's command.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    env.iter().fold(arg.to_string(), |a, (k, v)| {
        a.replace(&format!("$({k})"), v)
    })
}

/// A Kubernetes quantity such as `512Mi`, in bytes.
fn quantity(q: &str) -> u64 {
    let (number, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = number.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        u => panic!("unit {u} of {q}"),
    }
}

/// What the kubelet would run for `container` of the DaemonSet's `pod` on
/// `node`, as `podman run` arguments (after `run`): the host network (the
/// node's namespace), the security context, the memory limit, the
/// environment (downward API, the in-cluster API address), the volumes
/// (hostPath under the node's directory, except the TUN device, which is
/// the machine's; ConfigMap and Secret as files), the service-account
/// mount, the command with `$(VAR)` expanded.
fn podman_args(
    world: &PodmanWorld,
    pod: &Value,
    container: &Value,
    node: &NodeFiles,
    objs: &[Value],
    api_env: &[(String, String)],
) -> Vec<String> {
    assert_eq!(pod["hostNetwork"], true);
    let mut args: Vec<String> = [
        "--pull=never",
        "--network",
        &format!("ns:/run/netns/{}", node.ns),
        "--cgroup-parent",
        &world.cgroup_parent(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sc = &container["securityContext"];
    assert_ne!(sc["privileged"], true);
    if strings(&sc["capabilities"]["drop"]) == ["ALL"] {
        args.push("--cap-drop=all".into());
    }
    if let Some(add) = sc["capabilities"]["add"].as_array() {
        for cap in add {
            args.push(format!("--cap-add={}", text(cap, "capability")));
        }
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".into());
    }
    if sc["readOnlyRootFilesystem"] == true {
        // Kubernetes mounts no tmpfs of its own on a read-only root.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if let Some(limit) = container["resources"]["limits"]["memory"].as_str() {
        args.push(format!("--memory={}", quantity(limit)));
    }

    let mut env: Vec<(String, String)> = api_env.to_vec();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = text(&e["name"], "env name").to_string();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(f)) if f == "spec.nodeName" => node.name.clone(),
            (_, Value::String(f)) if f == "status.hostIP" => node.ip.clone(),
            other => panic!("env {name}: {other:?} is not something this test provides"),
        };
        env.push((name, value));
    }
    for (k, v) in &env {
        args.push(format!("--env={k}={v}"));
    }

    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = &m["name"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == *name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let source = if let Some(path) = volume["hostPath"]["path"].as_str() {
            match volume["hostPath"]["type"].as_str() {
                Some("CharDevice") => {
                    let t = fs::metadata(path).map(|m| m.file_type());
                    assert!(t.is_ok_and(|t| t.is_char_device()), "{path}");
                    PathBuf::from(path)
                }
                Some("DirectoryOrCreate") => {
                    let dir = node.host(path);
                    fs::create_dir_all(&dir).unwrap();
                    dir
                }
                t => panic!("hostPath type {t:?} of {path}"),
            }
        } else if let Some(map) = volume["configMap"]["name"].as_str() {
            let dir = node.dir.join(format!("configmap-{map}"));
            fs::create_dir_all(&dir).unwrap();
            let cm = objs
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == map)
                .unwrap_or_else(|| panic!("no ConfigMap {map}"));
            for (file, data) in cm["data"].as_object().unwrap() {
                fs::write(dir.join(file), text(data, "data")).unwrap();
            }
            dir
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            // What `kubectl create secret generic weft-secret
            // --from-file=secret=FILE` holds.
            assert_eq!(secret, "weft-secret");
            let dir = node.dir.join("secret");
            fs::create_dir_all(&dir).unwrap();
            let file = dir.join("secret");
            fs::write(&file, SECRET).unwrap();
            let mode = volume["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            dir
        } else {
            panic!("volume {volume} is of a kind this test does not provide");
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        args.push(format!(
            "--volume={}:{}{ro}",
            source.display(),
            text(&m["mountPath"], "mountPath")
        ));
    }
    args.push(format!(
        "--volume={}:{SERVICE_ACCOUNT_DIR}:ro",
        node.dir.join("serviceaccount").display()
    ));

    let command: Vec<String> = strings(&container["command"])
        .iter()
        .map(|a| expand(a, &env))
        .collect();
    args.push(format!(
        "--entrypoint={}",
        serde_json::to_string(&command).unwrap()
    ));
    args.push(text(&container["image"], "image").to_string());
    args
}

/// The HTTP status of a GET the kubelet's probe would send, sent from
/// inside namespace `ns`.
fn probe(ns: &str, get: &Value) -> Option<u16> {
    let host = text(&get["host"], "host").to_string();
    let port = get["port"].as_u64().expect("port") as u16;
    let path = text(&get["path"], "path").to_string();
    in_netns(ns, move || {
        let mut s = TcpStream::connect((host.as_str(), port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        let code = answer.split_whitespace().nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n")?.1;
        serde_json::from_str::<Value>(body).ok()?;
        Some(code)
    })
}

/// The file names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_daemonset_runs_on_two_nodes_in_podman() {
    require_root!();
    require_tools!(
        "python3",
        "python3:yaml",
        "podman",
        "runc",
        "nsenter",
        "buildah",
        "strip",
        "ip",
        "busybox-static"
    );
    let started = Instant::now();
    // Dropped in reverse: the containers go first, then the API, the
    // namespaces, the scratch files, the caches podman and buildah left.
    let caches = HostCaches::record();
    let scratch = Scratch::new("deploy-podman");
    let objs = objects(Path::new(MANIFEST));
    let ds = one(&objs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let (main, init) = containers(pod);
    let image = text(&main["image"], "image");

    // The image, as README says to build it for containerd: an archive.
    let archive = scratch.0.join("weft-image.tar");
    let out = Command::new(BUILD_IMAGE)
        .args(["--binary", WEFT, "--output"])
        .arg(&archive)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/build-image");
    assert!(out.status.success(), "build-image: {}", show(&out));
    assert!(
        show(&out).contains(&format!("image {image}:")),
        "build-image did not tag {image}: {}",
        show(&out)
    );
    let built = started.elapsed();

    let net = Switched::new(3);
    let api_host = &net.hosts[2];
    let api = FakeApi::start(&api_host.ns, IpAddr::V4(api_host.underlay), &api_host.dir);
    let api_env = vec![
        (
            "KUBERNETES_SERVICE_HOST".to_string(),
            api_host.underlay.to_string(),
        ),
        ("KUBERNETES_SERVICE_PORT".to_string(), API_PORT.to_string()),
    ];
    let world = PodmanWorld::new(
        &format!("weft-deploy-{}-{}", std::process::id(), next_id()),
        "network_backend = \"cni\"",
        None,
    );
    world.ok(&["load", "--quiet", "--input", &archive.display().to_string()]);
    let version = run(WEFT, &["--version"]);
    let inside = world.ok(&[
        "run",
        "--rm",
        "--pull=never",
        "--network=none",
        "--cgroup-parent",
        &world.cgroup_parent(),
        image,
        "weft",
        "--version",
    ]);
    assert_eq!(inside, String::from_utf8_lossy(&version.stdout).trim());

    // Two nodes: node0 has a podCIDR from the API, node1 none (its pods
    // get addresses from a chunk of --ipalloc-range).
    let command = strings(&main["command"]);
    let range = flag(&command, "--ipalloc-range").unwrap().to_string();
    let pod_cidr = "10.33.7.0/24";
    let nodes: Vec<NodeFiles> = (0..2)
        .map(|i| {
            let n = NodeFiles::new(scratch.0.join(format!("node{i}")), &net.hosts[i]);
            let sa = n.dir.join("serviceaccount");
            fs::create_dir_all(&sa).unwrap();
            fs::copy(&api.token_file, sa.join("token")).unwrap();
            fs::copy(&api.ca_file, sa.join("ca.crt")).unwrap();
            n
        })
        .collect();
    api.set_nodes(vec![
        node(&nodes[0].name, &nodes[0].ip, Some(pod_cidr)),
        node(&nodes[1].name, &nodes[1].ip, None),
    ]);
    let run_args = |c: &Value, n: &NodeFiles, head: &[&str]| {
        let mut args: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        args.extend(podman_args(&world, pod, c, n, &objs, &api_env));
        args
    };
    let podman = |args: &[String]| world.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // The init container: plugin, conflist and key on the node, nothing
    // else; a second run keeps the key.
    let conflist = text(
        &one(&objs, "ConfigMap")["data"]["10-weft.conflist"],
        "conflist",
    );
    for n in &nodes {
        let out = podman(&run_args(init, n, &["run", "--rm"]));
        assert!(out.status.success(), "{}: install: {}", n.name, show(&out));
        let plugin = n.host("/opt/cni/bin/weft");
        assert_eq!(listing(&n.host("/opt/cni/bin")), ["weft"], "{}", n.name);
        assert_eq!(file_mode(&plugin), 0o755);
        let v = run(&plugin.display().to_string(), &["--version"]);
        assert_eq!(v.stdout, version.stdout, "the installed plugin");
        assert_eq!(
            listing(&n.host("/etc/cni/net.d")),
            ["10-weft.conflist"],
            "{}",
            n.name
        );
        assert_eq!(
            fs::read_to_string(n.host("/etc/cni/net.d/10-weft.conflist")).unwrap(),
            conflist
        );
        let key = n.host("/var/lib/weft/key");
        assert_eq!(listing(&n.host("/var/lib/weft")), ["key"], "{}", n.name);
        assert_eq!(file_mode(&key), 0o600);
        let pubkey = pubkey_of(&key);
        assert!(pubkey.status.success(), "the key: {}", show(&pubkey));
    }
    let key0 = fs::read(nodes[0].host("/var/lib/weft/key")).unwrap();
    let out = podman(&run_args(init, &nodes[0], &["run", "--rm"]));
    assert!(out.status.success(), "install again: {}", show(&out));
    assert_eq!(
        fs::read(nodes[0].host("/var/lib/weft/key")).unwrap(),
        key0,
        "a second install replaced the node's key"
    );
    assert_eq!(listing(&nodes[0].host("/opt/cni/bin")), ["weft"]);

    // weft, as the DaemonSet runs it.
    let name = |n: &NodeFiles| format!("weft-{}", n.name);
    for n in &nodes {
        let out = podman(&run_args(main, n, &["run", "-d", "--name", &name(n)]));
        assert!(out.status.success(), "{}: weft: {}", n.name, show(&out));
    }
    let logs = |n: &NodeFiles| show(&world.cmd(&["logs", &name(n)]));
    let all_logs = || nodes.iter().map(logs).collect::<String>();
    for n in &nodes {
        let ready = wait_until(Duration::from_secs(20), || {
            probe(&n.ns, &main["readinessProbe"]["httpGet"]) == Some(200)
        });
        assert!(ready, "{}: readiness probe failed\n{}", n.name, logs(n));
        assert_eq!(probe(&n.ns, &main["livenessProbe"]["httpGet"]), Some(200));
    }
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let log0 = logs(&nodes[0]);
    assert!(
        log0.contains(&format!("this host is node {}", nodes[0].name)),
        "{log0}"
    );
    assert!(
        log0.contains(&format!(
            "node {} at {}:6783 is a peer (from the API)",
            nodes[1].name, nodes[1].ip
        )),
        "{log0}"
    );

    // Pods through the installed plugin and conflist, as the runtime
    // would run them.
    let conf = plugin_config(&serde_json::from_str(conflist).unwrap());
    let pod_ns: Vec<Netns> = nodes
        .iter()
        .map(|n| Netns::new(format!("{}-pod", n.ns)))
        .collect();
    let mut pod_ips = Vec::new();
    let range_len = range.split('/').nth(1).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let plugin = n.host("/opt/cni/bin/weft").display().to_string();
        let path = format!("/var/run/netns/{}", pod_ns[i].name);
        let r = add_at(&plugin, &n.ns, &format!("pod{i}"), &path, &conf);
        let a = text(&r["ips"][0]["address"], "address").to_string();
        let (ip, len) = a.split_once('/').unwrap();
        assert_eq!(len, range_len, "{}: {a} (range {range})", n.name);
        let in_pod_cidr = ip.starts_with("10.33.7.");
        assert_eq!(in_pod_cidr, i == 0, "{}: {a}, podCIDR {pod_cidr}", n.name);
        // The default route goes via the node's bridge, whose address is
        // the first of the node's pod range (or chunk).
        let gw = text(&r["routes"][0]["gw"], "the default route's gateway").to_string();
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0", "{r}");
        if i == 0 {
            assert_eq!(gw, "10.33.7.1", "{r}");
        }
        let on_bridge = ns_exec(&n.ns, &["ip", "-4", "-o", "addr", "show", "dev", "weft"]);
        assert!(
            String::from_utf8_lossy(&on_bridge.stdout).contains(&format!("inet {gw}/{range_len} ")),
            "{}: {}",
            n.name,
            show(&on_bridge)
        );
        pod_ips.push(ip.to_string());
    }
    // Node and pod reach each other (the kubelet's probes); the NAT rule
    // is in the node's namespace.
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(10), || ping(&n.ns, &pod_ips[i])),
            "{}: node cannot reach its pod {}\n{}",
            n.name,
            pod_ips[i],
            logs(n)
        );
        assert!(
            ping(&pod_ns[i].name, &n.ip),
            "{}: pod cannot reach its node",
            n.name
        );
        let nat = ns_exec(&n.ns, &["nft", "list", "table", "ip", "weft"]);
        assert!(
            String::from_utf8_lossy(&nat.stdout)
                .contains(&format!("ip saddr {range} ip daddr != {range} masquerade")),
            "{}: {}",
            n.name,
            show(&nat)
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), || ping(
            &pod_ns[0].name,
            &pod_ips[1]
        )),
        "pod0 {} cannot reach pod1 {}\n{}",
        pod_ips[0],
        pod_ips[1],
        all_logs()
    );
    assert!(ping(&pod_ns[1].name, &pod_ips[0]));

    // Memory: weft's RSS stays well inside the limit the manifest sets.
    let limit = quantity(text(&main["resources"]["limits"]["memory"], "limit"));
    for n in &nodes {
        let pid = world.ok(&["inspect", "--format", "{{.State.Pid}}", &name(n)]);
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        eprintln!(
            "{}: weft RSS {} MiB (limit {} MiB)",
            n.name,
            rss_kib / 1024,
            limit >> 20
        );
        assert!(rss_kib * 1024 < limit / 2, "{}: RSS {rss_kib} KiB", n.name);
    }

    for (i, n) in nodes.iter().enumerate() {
        let plugin = n.host("/opt/cni/bin/weft").display().to_string();
        let path = format!("/var/run/netns/{}", pod_ns[i].name);
        let out = plugin_at(&plugin, &n.ns, "DEL", &format!("pod{i}"), &path, &conf);
        assert!(out.status.success(), "{}: DEL: {}", n.name, show(&out));
    }

    // SIGTERM (what the kubelet sends first): weft exits cleanly and takes
    // its bridge with it.
    let n0 = &nodes[0];
    world.ok(&["stop", "--time", "20", &name(n0)]);
    let code = world.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name(n0)]);
    assert_eq!(code, "0", "{}", logs(n0));
    let bridge = flag(&command, "--bridge").unwrap_or("weft");
    assert!(!link_exists(&n0.ns, bridge), "{}: bridge left", n0.ns);
    let nat = ns_exec(&n0.ns, &["nft", "list", "table", "ip", "weft"]);
    assert!(
        !nat.status.success(),
        "{}: NAT table left: {}",
        n0.ns,
        show(&nat)
    );

    // CAP_NET_ADMIN is needed: without it the same container refuses to
    // start (a usage error, exit 2) and says what it lacks.
    let mut without = main.clone();
    without["securityContext"]["capabilities"]["add"] = json!([]);
    let out = podman(&run_args(&without, n0, &["run", "--rm"]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("CAP_NET_ADMIN"), "{}", show(&out));

    drop(pod_ns);
    world.clean();
    assert_eq!(world.leftovers(), Vec::<String>::new());
    drop(world);
    drop(api);
    drop(net);
    drop(scratch);
    caches.clean();
    for c in &caches.created_by_us {
        assert!(!c.exists(), "{} left behind", c.display());
    }
    eprintln!(
        "image built in {:.1} s; whole test {:.1} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
