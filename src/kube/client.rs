//! The Kubernetes API client: one HTTPS GET of the node list, with
//! `Authorization: Bearer <token>` and a root store holding only the
//! cluster CA.
//!
//! In-cluster defaults, as every Kubernetes client has them: the API at
//! `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, the service
//! account token and CA under [`SERVICE_ACCOUNT_DIR`]. The token is re-read
//! for every request (projected tokens rotate), the CA too (cheap, and a
//! rotated CA is picked up).

use super::{parse_node_list, KubeNode, MAX_BODY};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a pod finds its service account's token and the cluster CA.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Connect, read and write timeout of one request.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest token file read.
const MAX_TOKEN: u64 = 64 << 10;

/// Where the API is and how to authenticate to it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// The API's base URL, without a trailing `/`.
    pub url: String,
    /// The bearer token's file (`None`: plain HTTP to `kubectl proxy`
    /// without one).
    pub token_file: Option<PathBuf>,
    /// The cluster CA (https only).
    pub ca_file: Option<PathBuf>,
}

impl ApiConfig {
    /// Resolves `--kube-api`, `--kube-token-file` and `--kube-ca-file`
    /// against the in-cluster defaults; `env` reads the environment.
    pub fn resolve(
        api: Option<&str>,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ApiConfig, String> {
        let url = match api {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let host = env("KUBERNETES_SERVICE_HOST").filter(|h| !h.is_empty()).ok_or(
                    "--kube: KUBERNETES_SERVICE_HOST is not set, so weft is not running in a pod; give the API server with --kube-api URL (e.g. https://10.0.0.1:6443, or http://127.0.0.1:8001 for `kubectl proxy`)",
                )?;
                let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
                let host = match host.parse::<IpAddr>() {
                    Ok(IpAddr::V6(a)) => format!("[{a}]"),
                    _ => host,
                };
                format!("https://{host}:{port}")
            }
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("--kube-api {url:?} is not a URL; write it like https://10.0.0.1:6443")
        })?;
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("--kube-api {url:?} names no host"));
        }
        let sa = Path::new(SERVICE_ACCOUNT_DIR);
        match scheme {
            "https" => Ok(ApiConfig {
                url,
                token_file: Some(token_file.unwrap_or_else(|| sa.join("token"))),
                ca_file: Some(ca_file.unwrap_or_else(|| sa.join("ca.crt"))),
            }),
            "http" if is_loopback(host) => {
                if let Some(ca) = ca_file {
                    return Err(format!(
                        "--kube-ca-file {} is for https, but --kube-api {url} is plain http; drop one of them",
                        ca.display()
                    ));
                }
                Ok(ApiConfig {
                    url,
                    token_file,
                    ca_file: None,
                })
            }
            "http" => Err(format!(
                "--kube-api {url}: plain http is only for `kubectl proxy` on loopback (http://127.0.0.1:8001); use the API server's https URL with --kube-ca-file"
            )),
            other => Err(format!(
                "--kube-api {url}: scheme {other:?} is neither https nor http"
            )),
        }
    }

    /// The node list's URL.
    pub fn nodes_url(&self) -> String {
        format!("{}/api/v1/nodes", self.url)
    }

    /// Reads the token and CA once, so that launch refuses a missing or
    /// malformed file rather than retry it forever.
    pub fn check_files(&self) -> Result<(), String> {
        if let Some(t) = &self.token_file {
            read_token(t)?;
        }
        if let Some(c) = &self.ca_file {
            tls_config(c)?;
        }
        Ok(())
    }
}

/// Whether a URL's `host[:port]` is a loopback host.
fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// The token in `path`, trimmed.
fn read_token(path: &Path) -> Result<String, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN).read_to_string(&mut text))
        .map_err(|e| {
            format!(
                "cannot read the Kubernetes API token {} ({e}); give the service account token with --kube-token-file",
                path.display()
            )
        })?;
    let token = text.trim();
    if token.is_empty() || token.contains(|c: char| c.is_control()) {
        return Err(format!(
            "the Kubernetes API token {} is empty or not one line; it should hold the service account token",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// A TLS client configuration trusting only the CA certificates in `ca`.
fn tls_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let named = |what: String| {
        format!(
            "the Kubernetes CA file {}: {what}; give the cluster CA (PEM) with --kube-ca-file",
            ca.display()
        )
    };
    let text = std::fs::read(ca).map_err(|e| named(format!("cannot read it ({e})")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| named(format!("not PEM ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| named(format!("a certificate is not usable ({e})")))?;
    }
    if roots.is_empty() {
        return Err(named("it holds no CERTIFICATE block".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| named(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads the node list: one GET, re-reading the token and CA.
pub fn fetch_nodes(api: &ApiConfig) -> Result<Vec<KubeNode>, String> {
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(TIMEOUT)
        .timeout_read(TIMEOUT)
        .timeout_write(TIMEOUT)
        .redirects(0)
        .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &api.ca_file {
        agent = agent.tls_config(tls_config(ca)?);
    }
    let url = api.nodes_url();
    let mut request = agent.build().get(&url).set("Accept", "application/json");
    if let Some(t) = &api.token_file {
        request = request.set("Authorization", &format!("Bearer {}", read_token(t)?));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body = read_body(r).unwrap_or_default();
            let message = parse_node_list(&body)
                .err()
                .filter(|m| m.starts_with("the API answered"))
                .unwrap_or_else(|| "no Kubernetes error message".into());
            let hint = match code {
                401 => "; the token is not accepted: check --kube-token-file",
                403 => "; weft's service account needs get/list on nodes (a ClusterRole)",
                _ => "",
            };
            return Err(format!("GET {url}: HTTP {code}: {message}{hint}"));
        }
        Err(ureq::Error::Transport(t)) => return Err(format!("GET {url}: {t}")),
    };
    let body = read_body(response).map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
    parse_node_list(&body).map_err(|e| format!("GET {url}: {e}"))
}

/// The body, at most [`MAX_BODY`] + 1 bytes (the parser refuses more).
fn read_body(response: ureq::Response) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    response
        .into_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn in_cluster_defaults_come_from_the_environment() {
        let e = env(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ]);
        let c = ApiConfig::resolve(None, None, None, &e).unwrap();
        assert_eq!(c.url, "https://10.96.0.1:443");
        assert_eq!(c.nodes_url(), "https://10.96.0.1:443/api/v1/nodes");
        assert_eq!(
            c.token_file.unwrap(),
            Path::new(SERVICE_ACCOUNT_DIR).join("token")
        );
        assert_eq!(
            c.ca_file.unwrap(),
            Path::new(SERVICE_ACCOUNT_DIR).join("ca.crt")
        );
        let e6 = env(&[("KUBERNETES_SERVICE_HOST", "fd00::1")]);
        let c = ApiConfig::resolve(None, None, None, &e6).unwrap();
        assert_eq!(c.url, "https://[fd00::1]:443");
        let err = ApiConfig::resolve(None, None, None, &env(&[])).unwrap_err();
        assert!(err.contains("--kube-api"), "{err}");
    }

    #[test]
    fn plain_http_is_only_for_a_loopback_proxy() {
        let none = env(&[]);
        let c = ApiConfig::resolve(Some("http://127.0.0.1:8001/"), None, None, &none).unwrap();
        assert_eq!(c.url, "http://127.0.0.1:8001");
        assert_eq!((c.token_file, c.ca_file), (None, None));
        assert!(ApiConfig::resolve(Some("http://[::1]:8001"), None, None, &none).is_ok());
        assert!(ApiConfig::resolve(Some("http://localhost:8001"), None, None, &none).is_ok());
        for (bad, says) in [
            ("http://198.18.0.1:8001", "loopback"),
            ("ftp://198.18.0.1", "neither"),
            ("198.18.0.1:6443", "not a URL"),
            ("https:///nodes", "no host"),
        ] {
            let e = ApiConfig::resolve(Some(bad), None, None, &none).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = ApiConfig::resolve(
            Some("http://127.0.0.1:8001"),
            None,
            Some("/ca.crt".into()),
            &none,
        )
        .unwrap_err();
        assert!(e.contains("--kube-ca-file"), "{e}");
    }

    #[test]
    fn missing_or_malformed_files_are_named() {
        let dir = std::env::temp_dir().join(format!("weft-kube-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        let ca = dir.join("ca.crt");
        std::fs::write(&token, "\n").unwrap();
        std::fs::write(&ca, "not a certificate").unwrap();
        let c = ApiConfig::resolve(
            Some("https://198.18.0.1:6443"),
            Some(token.clone()),
            Some(ca.clone()),
            &env(&[]),
        )
        .unwrap();
        let e = c.check_files().unwrap_err();
        assert!(
            e.contains(&token.display().to_string()) && e.contains("empty"),
            "{e}"
        );
        std::fs::write(&token, "abc.def\n").unwrap();
        assert_eq!(read_token(&token).unwrap(), "abc.def");
        let e = c.check_files().unwrap_err();
        assert!(
            e.contains(&ca.display().to_string()) && e.contains("no CERTIFICATE"),
            "{e}"
        );
        std::fs::remove_file(&ca).unwrap();
        let e = c.check_files().unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
