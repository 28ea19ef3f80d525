//! The local control endpoint: `weft connect ADDR` and `weft forget ADDR`
//! change the peer set of a running weft.
//!
//! It is an abstract unix socket named after the weft's status address
//! (`weft-control@127.0.0.1:6782`): abstract sockets belong to their
//! network namespace, so each weft of a namespace-per-host test is found
//! from inside its namespace, and they vanish with the process (nothing is
//! left on disk). Only root or weft's own user may ask (SO_PEERCRED); the
//! status server on loopback stays read-only.
//!
//! One JSON object per line each way: a [`ControlRequest`] in, a
//! [`ControlReply`] out. The server thread hands each request to the router
//! over a channel and wakes its event loop; the router answers on the
//! request's own channel.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Duration;

/// Longest request line accepted (a request is a few dozen bytes).
const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request, and the router to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a local client asks of a running weft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// Add a peer address and connect to it now.
    Connect {
        /// The peer as the user wrote it: `IP[:PORT]` or `HOST[:PORT]`.
        peer: String,
    },
    /// Remove a peer address: close its connection and never redial it.
    Forget {
        /// The peer as given to `--peer` or `weft connect`.
        peer: String,
    },
    /// A peer is gone for good: this host takes over its IPAM chunks
    /// (which the other hosts keep reserved until then).
    Rmpeer {
        /// The departed peer's name.
        name: String,
    },
    /// This node's pod range of one family from the Kubernetes API
    /// (`--kube`): that family's IPAM hands addresses out of it. One
    /// request per family, so each changes alone. In-process only: never
    /// read from the socket.
    #[serde(skip)]
    KubePodCidr {
        /// `None`: the node has no podCIDR of the family (IPAM divides the
        /// range).
        cidr: Option<crate::mesh::claims::IpPrefix>,
        /// The family: IPv6 (the IPv6 `--ipalloc-range`'s allocator), or
        /// IPv4 (false, what a sender from before dual stack means).
        #[serde(default)]
        ipv6: bool,
    },
}

/// The answer to one [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What happened, for a person.
    pub message: String,
}

impl ControlReply {
    /// A request carried out.
    pub fn done(message: impl Into<String>) -> ControlReply {
        ControlReply {
            ok: true,
            message: message.into(),
        }
    }

    /// A request refused, with why.
    pub fn refused(message: impl Into<String>) -> ControlReply {
        ControlReply {
            ok: false,
            message: message.into(),
        }
    }
}

/// A request waiting for the router, with the channel its answer goes to.
pub struct PendingRequest {
    /// What was asked.
    pub request: ControlRequest,
    /// Where the router sends the answer.
    pub reply: crossbeam_channel::Sender<ControlReply>,
}

/// The abstract socket name of the weft whose status server is `status_addr`.
pub fn socket_name(status_addr: SocketAddr) -> String {
    format!("weft-control@{status_addr}")
}

/// Binds the control socket; an error names it and says what to do.
pub fn bind(status_addr: SocketAddr) -> Result<UnixListener, String> {
    let name = socket_name(status_addr);
    let addr = UnixAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("control socket @{name}: {e}"))?;
    UnixListener::bind_addr(&addr).map_err(|e| {
        format!("cannot open the control socket @{name}: {e}; another weft in this network namespace uses status address {status_addr}: give this one another --status-addr")
    })
}

/// Serves `listener` from a background thread until the process ends:
/// each request goes to `requests`, then `waker` wakes the router.
pub fn serve(
    listener: UnixListener,
    requests: crossbeam_channel::Sender<PendingRequest>,
    waker: Arc<mio::Waker>,
) -> std::io::Result<()> {
    super::local_socket::serve_lines(listener, "weft-control", move |stream| {
        answer(stream, &requests, &waker)
    })
}

/// Reads, checks and forwards one client's request; returns the answer.
fn answer(
    stream: &UnixStream,
    requests: &crossbeam_channel::Sender<PendingRequest>,
    waker: &mio::Waker,
) -> ControlReply {
    if let Err(why) = check_credentials(stream) {
        return ControlReply::refused(why);
    }
    let line = match super::local_socket::read_line(stream, MAX_REQUEST, TIMEOUT) {
        Ok(l) => l,
        Err(e) => return ControlReply::refused(format!("reading the request: {e}")),
    };
    let request: ControlRequest = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => return ControlReply::refused(format!("malformed request: {e}")),
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    if requests
        .send(PendingRequest { request, reply: tx })
        .is_err()
    {
        return ControlReply::refused("weft is shutting down");
    }
    let _ = waker.wake();
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| ControlReply::refused("weft did not answer within 5 s"))
}

/// Only root and weft's own user may change the peer set.
fn check_credentials(stream: &UnixStream) -> Result<(), String> {
    let cred = super::local_socket::peer_credentials(stream)?;
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    if cred.uid == 0 || cred.uid == own {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not change this weft's peers (only root or uid {own})",
            cred.uid
        ))
    }
}

/// The client side: sends `request` to the weft whose status server is
/// `status_addr` (in this network namespace) and returns its answer.
pub fn send(status_addr: SocketAddr, request: &ControlRequest) -> Result<ControlReply, String> {
    let name = socket_name(status_addr);
    let line = serde_json::to_string(request).map_err(|e| e.to_string())?;
    let answer = super::local_socket::exchange(
        &name,
        &line,
        MAX_REQUEST,
        TIMEOUT + Duration::from_secs(1),
        |e| {
            format!("no weft answers on @{name} ({e}): is `weft launch` running in this network namespace with --status-addr {status_addr}?")
        },
    )?;
    serde_json::from_str(answer.trim())
        .map_err(|e| format!("weft's answer on @{name} is not understood ({e}): {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_one_json_line() {
        let r = ControlRequest::Connect {
            peer: "198.18.0.2:6783".parse().unwrap(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"command":"connect","peer":"198.18.0.2:6783"}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(&text).unwrap(), r);
        assert!(serde_json::from_str::<ControlRequest>(r#"{"command":"reboot"}"#).is_err());
    }

    #[test]
    fn a_request_reaches_the_router_and_its_answer_the_client() {
        // A status address no other test uses: the socket name is unique.
        let status: SocketAddr = format!("127.0.0.1:{}", 40000 + std::process::id() % 20000)
            .parse()
            .unwrap();
        let listener = bind(status).unwrap();
        assert!(bind(status).unwrap_err().contains("--status-addr"));
        let (tx, rx) = crossbeam_channel::unbounded::<PendingRequest>();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(9)).unwrap());
        serve(listener, tx, waker).unwrap();
        let router = std::thread::spawn(move || {
            let pending = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            let ControlRequest::Forget { peer } = pending.request else {
                panic!("expected forget");
            };
            pending
                .reply
                .send(ControlReply::refused(format!("not a peer: {peer}")))
                .unwrap();
        });
        let reply = send(
            status,
            &ControlRequest::Forget {
                peer: "198.18.0.9:6783".parse().unwrap(),
            },
        )
        .unwrap();
        router.join().unwrap();
        assert_eq!(reply, ControlReply::refused("not a peer: 198.18.0.9:6783"));
    }
}
