//! The weft side of the CNI socket ([`super::api`]): a thread that accepts
//! the plugin's connections on `@weft-cni`, checks the caller is root,
//! reads one request and answers it.
//!
//! `version` is answered on this thread; every other request goes to the
//! router over a channel (the pattern of `weft connect`,
//! [`crate::api::control`]) and the router's event loop wakes to answer it
//! from IPAM, which it owns alone: IPAM needs the mesh node's claims and
//! view, which live on that thread, so no state is shared and nothing is
//! locked. One connection is served at a time, so the router sees the
//! plugin's requests in order; a request the router cannot answer in
//! [`TIMEOUT`] gets [`code::TRY_AGAIN_LATER`].

use super::api::{code, CniError, CniReply, CniRequest, CniSuccess, MAX_LINE, TIMEOUT};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

/// A request waiting for the router, with the channel its answer goes to.
pub struct PendingCni {
    /// What was asked (never `version`).
    pub request: CniRequest,
    /// Where the router sends the answer.
    pub reply: crossbeam_channel::Sender<CniReply>,
}

/// Binds `@name`; an error names it and says what to do.
pub fn bind(name: &str) -> Result<UnixListener, String> {
    let addr = super::api::socket_addr(name)?;
    UnixListener::bind_addr(&addr).map_err(|e| {
        format!("cannot open the CNI socket @{name}: {e}; another weft in this network namespace serves it: give this one another --cni-socket")
    })
}

/// Serves `listener` from a background thread until the process ends.
pub fn serve(
    listener: UnixListener,
    requests: crossbeam_channel::Sender<PendingCni>,
    waker: Arc<mio::Waker>,
) -> std::io::Result<()> {
    crate::api::local_socket::serve_lines(listener, "weft-cni", move |stream| {
        answer(stream, &requests, &waker)
    })
}

fn refuse(code: u32, msg: &str, details: String) -> CniReply {
    CniReply(Err(CniError::new(code, msg, details)))
}

/// Reads, checks and forwards one request; returns the answer.
fn answer(
    stream: &UnixStream,
    requests: &crossbeam_channel::Sender<PendingCni>,
    waker: &mio::Waker,
) -> CniReply {
    if let Err(why) = check_root(stream) {
        return refuse(code::NOT_ROOT, "permission denied", why);
    }
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let line = match crate::api::local_socket::read_line(stream, MAX_LINE, TIMEOUT) {
        Ok(l) => l,
        Err(e) => return refuse(code::DECODE, "cannot read the request", e.to_string()),
    };
    let request: CniRequest = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                code::DECODE,
                "malformed request",
                format!("{e} in {:?}", truncate(line.trim(), 200)),
            )
        }
    };
    if request == CniRequest::Version {
        return CniReply(Ok(CniSuccess::Version {
            weft: env!("CARGO_PKG_VERSION").to_string(),
        }));
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    if requests.send(PendingCni { request, reply: tx }).is_err() {
        return refuse(
            code::TRY_AGAIN_LATER,
            "weft is shutting down",
            String::new(),
        );
    }
    let _ = waker.wake();
    rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
        refuse(
            code::TRY_AGAIN_LATER,
            "weft did not answer in time",
            format!("no answer within {} s", TIMEOUT.as_secs()),
        )
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Only root may ask: the plugin runs as root under every runtime, and an
/// address handed out is a lease on the overlay.
fn check_root(stream: &UnixStream) -> Result<(), String> {
    let cred = crate::api::local_socket::peer_credentials(stream)?;
    if cred.uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} (pid {}) may not use the CNI socket: only root (uid 0) may",
            cred.uid, cred.pid
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::api::{request, AttachmentKey};
    use std::io::{BufRead, BufReader, Write};
    use std::time::Duration;

    #[test]
    fn requests_reach_the_router_and_version_is_answered_here() {
        let name = format!("weft-cni-test-{}", std::process::id());
        let listener = bind(&name).unwrap();
        assert!(bind(&name).unwrap_err().contains("--cni-socket"));
        let (tx, rx) = crossbeam_channel::unbounded::<PendingCni>();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(9)).unwrap());
        serve(listener, tx, waker).unwrap();
        let v = request(&name, &CniRequest::Version).unwrap();
        assert!(matches!(v.0, Ok(CniSuccess::Version { .. })));
        let router = std::thread::spawn(move || {
            let pending = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert!(matches!(pending.request, CniRequest::Gc { .. }));
            pending
                .reply
                .send(CniReply(Ok(CniSuccess::Released { released: 1 })))
                .unwrap();
        });
        let gc = CniRequest::Gc {
            valid: vec![AttachmentKey {
                container_id: "c".into(),
                ifname: "eth0".into(),
            }],
        };
        // As root (the tests run as root) the request is served; as
        // anyone else it would be refused with NOT_ROOT.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let reply = request(&name, &gc).unwrap();
            assert_eq!(reply.0, Ok(CniSuccess::Released { released: 1 }));
            router.join().unwrap();
        }
    }

    #[test]
    fn malformed_requests_get_a_decode_error() {
        let name = format!("weft-cni-bad-{}", std::process::id());
        let listener = bind(&name).unwrap();
        let (tx, _rx) = crossbeam_channel::unbounded::<PendingCni>();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(9)).unwrap());
        serve(listener, tx, waker).unwrap();
        let addr = crate::cni::api::socket_addr(&name).unwrap();
        let mut s = UnixStream::connect_addr(&addr).unwrap();
        writeln!(s, r#"{{"op":"reboot"}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let reply: CniReply = serde_json::from_str(&line).unwrap();
        let err = reply.0.unwrap_err();
        // SAFETY: geteuid has no preconditions.
        let expected = if unsafe { libc::geteuid() } == 0 {
            code::DECODE
        } else {
            code::NOT_ROOT
        };
        assert_eq!(err.code, expected, "{err}");
        if expected == code::DECODE {
            assert!(err.details.contains("reboot"), "{err}");
        }
    }
}
