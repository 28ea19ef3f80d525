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
use common::switched::*;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const API_PORT: u16 = 6443;
const TOKEN: &str = "weft-test-token";

/// What the fake API serves.
struct ApiState {
    token: String,
    nodes: Vec<String>,
}

/// The fake API server: stops (and its thread ends) on drop.
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    url: String,
    token_file: PathBuf,
    ca_file: PathBuf,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl FakeApi {
    /// Serves on `ip:6443` inside namespace `ns`; the CA and token files
    /// go to `dir`.
    fn start(ns: &str, ip: IpAddr, dir: &std::path::Path) -> FakeApi {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "weft test cluster CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip)];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let ca_file = dir.join("kube-ca.crt");
        let token_file = dir.join("kube-token");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let config = Arc::new(config);
        let addr = SocketAddr::new(ip, API_PORT);
        let listener = in_netns(ns, move || TcpListener::bind(addr)).expect("bind the fake API");
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(ApiState {
            token: TOKEN.into(),
            nodes: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &config, &st),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakeApi {
            state,
            stop,
            thread: Some(thread),
            url: format!("https://{addr}"),
            token_file,
            ca_file,
        }
    }

    fn set_nodes(&self, nodes: Vec<String>) {
        self.state.lock().unwrap().nodes = nodes;
    }

    fn set_token(&self, token: &str) {
        self.state.lock().unwrap().token = token.into();
    }

    /// The `--kube` flags for the host of node `name`.
    fn flags(&self, name: &str) -> Vec<String> {
        [
            "--kube",
            "--kube-api",
            &self.url,
            "--kube-token-file",
            &self.token_file.display().to_string(),
            "--kube-ca-file",
            &self.ca_file.display().to_string(),
            "--kube-node-name",
            name,
            "--kube-refresh",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// Answers one connection: the node list with the right token, 401
/// without it, 404 for any other path.
fn serve(stream: std::net::TcpStream, config: &Arc<rustls::ServerConfig>, state: &Mutex<ApiState>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request).to_string();
    let path = text.split_whitespace().nth(1).unwrap_or("");
    let (token, nodes) = {
        let s = state.lock().unwrap();
        (s.token.clone(), s.nodes.clone())
    };
    let authorized = text
        .lines()
        .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {token}")));
    let (status, body) = if !authorized {
        (
            "401 Unauthorized",
            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#.to_string(),
        )
    } else if path != "/api/v1/nodes" {
        (
            "404 Not Found",
            r#"{"kind":"Status","message":"not found","code":404}"#.to_string(),
        )
    } else {
        (
            "200 OK",
            format!(
                r#"{{"kind":"NodeList","apiVersion":"v1","metadata":{{"resourceVersion":"7"}},"items":[{}]}}"#,
                nodes.join(",")
            ),
        )
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(answer.as_bytes());
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// A node object as the API writes it.
fn node(name: &str, ip: &str, pod_cidr: Option<&str>) -> String {
    let spec = match pod_cidr {
        Some(c) => format!(r#"{{"podCIDR":"{c}","podCIDRs":["{c}"]}}"#),
        None => "{}".into(),
    };
    format!(
        r#"{{"metadata":{{"name":"{name}"}},"spec":{spec},"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
    )
}

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
    assert!(
        wait_until(Duration::from_secs(5), || net.hosts[0]
            .logs()
            .contains(&added)),
        "{}",
        all_logs(&net)
    );

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
            wait_until(Duration::from_secs(5), || net.hosts[i]
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
        line(&t, "10.32.7.0/24").is_some_and(|l| l.contains("owned") && l.contains("1/254 in use"))
            && line(&t, "10.32.9.0/24").is_some_and(|l| l.contains("owned"))
    });
    let text = status_text();
    assert!(
        text.contains("hands out its pod range 10.32.7.0/24 only"),
        "{text}"
    );
    assert!(text.contains("1 address(es) in use"), "{text}");
    let own = line(&text, "10.32.7.0/24").unwrap_or_default();
    assert!(
        own.contains("owned") && own.contains("1/254 in use"),
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
