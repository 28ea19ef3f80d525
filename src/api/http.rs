//! The local status server (`/status`, `/status.txt`, `/metrics`) and the
//! client `weft status` uses.

use super::status::Status;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A running status server.
pub struct StatusServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

/// Binds the status address; an error names the address and the fix.
pub fn bind(addr: SocketAddr) -> Result<tiny_http::Server, String> {
    tiny_http::Server::http(addr).map_err(|e| {
        format!("cannot serve status on {addr}: {e}; choose another address with --status-addr (each weft on one host needs its own)")
    })
}

impl StatusServer {
    /// Serves `snapshot` from a background thread.
    pub fn start(server: tiny_http::Server, snapshot: Arc<Mutex<Status>>) -> StatusServer {
        let server = Arc::new(server);
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("weft-status".into())
            .spawn(move || {
                for request in s.incoming_requests() {
                    let status = snapshot.lock().map(|g| g.clone()).unwrap_or_default();
                    let path = request.url().split('?').next().unwrap_or("").to_string();
                    let (body, ctype, code) = match path.as_str() {
                        "/status" | "/status.json" => (
                            serde_json::to_string_pretty(&status).unwrap_or_default(),
                            "application/json",
                            200,
                        ),
                        "/status.txt" | "/" => {
                            (status.render_text(), "text/plain; charset=utf-8", 200)
                        }
                        "/metrics" => (
                            status.render_metrics(),
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            200,
                        ),
                        _ => (
                            "not found: try /status, /status.txt or /metrics\n".to_string(),
                            "text/plain",
                            404,
                        ),
                    };
                    let header =
                        tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                            .expect("static header is valid");
                    let _ = request.respond(
                        tiny_http::Response::from_string(body)
                            .with_status_code(code)
                            .with_header(header),
                    );
                }
            })
            .expect("spawning a thread works");
        StatusServer {
            server,
            thread: Some(thread),
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Fetches the status from a running weft.
pub fn fetch(addr: SocketAddr) -> Result<Status, String> {
    let url = format!("http://{addr}/status");
    let body = ureq::get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .map_err(|e| format!("cannot reach weft's status server at {addr}: {e}; is `weft launch` running (with this --status-addr)?"))?
        .into_string()
        .map_err(|e| format!("reading status from {addr}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("status from {addr} is not weft's: {e}"))
}
