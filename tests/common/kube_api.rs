//! A fake Kubernetes API server for `weft launch --kube`: HTTPS with a
//! certificate from a CA made here, `GET /api/v1/nodes` with a bearer
//! token (401 otherwise), on a thread inside a test network namespace.
//! Used by tests/kube.rs and tests/deploy.rs.

use super::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const API_PORT: u16 = 6443;
pub const TOKEN: &str = "weft-test-token";

/// What the fake API serves.
struct ApiState {
    token: String,
    nodes: Vec<String>,
}

/// The fake API server: stops (and its thread ends) on drop.
pub struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `https://IP:PORT` of the API.
    pub url: String,
    /// The bearer token, in a file.
    pub token_file: PathBuf,
    /// The CA that signed the API's certificate (PEM).
    pub ca_file: PathBuf,
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
    pub fn start(ns: &str, ip: IpAddr, dir: &std::path::Path) -> FakeApi {
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

    /// Replaces the node list.
    pub fn set_nodes(&self, nodes: Vec<String>) {
        self.state.lock().unwrap().nodes = nodes;
    }

    /// Replaces the token the API accepts.
    pub fn set_token(&self, token: &str) {
        self.state.lock().unwrap().token = token.into();
    }

    /// The `--kube` flags for the host of node `name`.
    pub fn flags(&self, name: &str) -> Vec<String> {
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

/// A node object as the API writes it. `pod_cidr` may list a dual-stack
/// node's two ranges, comma-separated (`10.32.7.0/24,fd32:0:0:7::/64`):
/// `spec.podCIDR` is the first, `spec.podCIDRs` all, as
/// kube-controller-manager writes them.
pub fn node(name: &str, ip: &str, pod_cidr: Option<&str>) -> String {
    let spec = match pod_cidr {
        Some(c) => {
            let first = c.split(',').next().unwrap_or_default();
            let all = c.replace(',', r#"",""#);
            format!(r#"{{"podCIDR":"{first}","podCIDRs":["{all}"]}}"#)
        }
        None => "{}".into(),
    };
    format!(
        r#"{{"metadata":{{"name":"{name}"}},"spec":{spec},"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
    )
}
