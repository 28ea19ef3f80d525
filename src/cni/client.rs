//! The plugin's side of the local CNI socket of `weft launch`: a Unix
//! stream socket in the abstract namespace (so it is scoped to the caller's
//! network namespace; default name `weft-cni`), one JSON request line, one
//! JSON reply line. weft accepts root callers only (SO_PEERCRED).
//!
//! Requests and replies are the documented contract of weft's CNI API
//! (`src/cni/api.rs` on the weft side):
//!
//! - `{"op":"add","container_id","ifname","netns"}` → `{"ok":true,"address":"10.32.0.5/12",
//!   "gateway":"10.32.0.1"|null,"mtu":1376,"mode":"bridge"|"tun","bridge":"weft"|null}`
//! - `{"op":"del","container_id","ifname"}`, `{"op":"check","container_id","ifname","netns"}`
//! - `{"op":"status"}`, `{"op":"gc","valid":[{"container_id","ifname"}]}` → `{"released":N}`
//! - errors: `{"ok":false,"code":N,"msg":S,"details":S}`

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

/// The abstract socket name weft listens on when the configuration names none.
pub const DEFAULT_SOCKET: &str = "weft-cni";

/// How long the plugin waits for weft's answer (an ADD may wait for the
/// mesh to hand this host a range).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One attachment, as the runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentId {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// A request to weft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Allocate (or return the existing) address of an attachment.
    Add {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// `CNI_NETNS`.
        netns: String,
    },
    /// Release the address of an attachment.
    Del {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// Whether weft still holds the attachment's address.
    Check {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
        /// `CNI_NETNS`.
        netns: String,
    },
    /// Whether weft can serve ADD now.
    Status,
    /// Release every attachment not in `valid`.
    Gc {
        /// The attachments the runtime still knows.
        valid: Vec<AttachmentId>,
    },
    /// weft's version.
    Version,
}

impl Request {
    /// The operation name, for messages.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Add { .. } => "add",
            Request::Del { .. } => "del",
            Request::Check { .. } => "check",
            Request::Status => "status",
            Request::Gc { .. } => "gc",
            Request::Version => "version",
        }
    }
}

/// What weft answered, or why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeftError {
    /// Nothing listens on the socket (weft not running in this network
    /// namespace, or its CNI socket is off), or the connection broke.
    Unreachable(String),
    /// weft answered `{"ok":false,...}`.
    Refused {
        /// Error code (CNI codes where one fits).
        code: u32,
        /// Short message.
        msg: String,
        /// Longer description.
        details: String,
    },
    /// weft answered something that is not the documented reply.
    Protocol(String),
}

impl std::fmt::Display for WeftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeftError::Unreachable(why) => write!(f, "{why}"),
            WeftError::Refused { code, msg, details } if details.is_empty() => {
                write!(f, "weft refused (code {code}): {msg}")
            }
            WeftError::Refused { code, msg, details } => {
                write!(f, "weft refused (code {code}): {msg}: {details}")
            }
            WeftError::Protocol(why) => write!(f, "unexpected answer from weft: {why}"),
        }
    }
}

/// Parses one reply line: the object itself when `"ok":true`, the error
/// when `"ok":false`.
pub fn parse_reply(line: &str) -> Result<Value, WeftError> {
    let value: Value = serde_json::from_str(line.trim())
        .map_err(|e| WeftError::Protocol(format!("not JSON ({e}): {:?}", truncate(line))))?;
    match value.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(value),
        Some(false) => Err(WeftError::Refused {
            code: value
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(999),
            msg: value
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
            details: value
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }),
        None => Err(WeftError::Protocol(format!(
            "no boolean \"ok\" in {:?}",
            truncate(line)
        ))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Sends `request` to the weft listening on abstract socket `name` in this
/// network namespace and returns its reply.
pub fn call(name: &str, request: &Request) -> Result<Value, WeftError> {
    let unreachable = |e: std::io::Error| {
        WeftError::Unreachable(format!(
            "cannot reach weft on the abstract unix socket @{name} in this network namespace ({e}); is `weft launch` running here with its CNI socket (e.g. with --ipalloc-range)?"
        ))
    };
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(unreachable)?;
    let stream = UnixStream::connect_addr(&addr).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(REPLY_TIMEOUT))
        .map_err(unreachable)?;
    let mut line = serde_json::to_string(request)
        .map_err(|e| WeftError::Protocol(format!("cannot encode the request: {e}")))?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| broken(name, request, e))?;
    let mut reply = String::new();
    // One line, bounded: a reply is a few hundred bytes.
    let mut reader = BufReader::new(std::io::Read::take(&stream, 64 * 1024));
    reader
        .read_line(&mut reply)
        .map_err(|e| broken(name, request, e))?;
    if reply.is_empty() {
        return Err(WeftError::Unreachable(format!(
            "weft on @{name} closed the connection without answering the {} request (is this plugin run as root?)",
            request.op()
        )));
    }
    parse_reply(&reply)
}

fn broken(name: &str, request: &Request, e: std::io::Error) -> WeftError {
    WeftError::Unreachable(format!(
        "the connection to weft on @{name} broke during the {} request: {e}",
        request.op()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_with_op() {
        let add = Request::Add {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/p".into(),
        };
        assert_eq!(
            serde_json::to_string(&add).unwrap(),
            r#"{"op":"add","container_id":"c1","ifname":"eth0","netns":"/run/netns/p"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        let gc = Request::Gc {
            valid: vec![AttachmentId {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }],
        };
        assert_eq!(
            serde_json::to_string(&gc).unwrap(),
            r#"{"op":"gc","valid":[{"container_id":"c1","ifname":"eth0"}]}"#
        );
    }

    #[test]
    fn replies_ok_error_and_garbage() {
        assert!(parse_reply(r#"{"ok":true,"released":2}"#).is_ok());
        assert_eq!(
            parse_reply(r#"{"ok":false,"code":50,"msg":"not ready","details":"no range yet"}"#),
            Err(WeftError::Refused {
                code: 50,
                msg: "not ready".into(),
                details: "no range yet".into()
            })
        );
        assert!(matches!(parse_reply("hello"), Err(WeftError::Protocol(_))));
        assert!(matches!(parse_reply("{}"), Err(WeftError::Protocol(_))));
    }

    #[test]
    fn nothing_listening_is_unreachable() {
        let e = call("weft-cni-test-nobody-listens-here", &Request::Status).unwrap_err();
        assert!(matches!(e, WeftError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("@weft-cni-test-nobody-listens-here"));
    }
}
