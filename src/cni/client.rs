//! The plugin's side of the local CNI socket of `weft launch`: a Unix
//! stream socket in the abstract namespace (so it is scoped to the caller's
//! network namespace; default name `weft-cni`), one JSON request line, one
//! JSON reply line. weft accepts root callers only (SO_PEERCRED).
//!
//! Requests and replies are the contract in [`super::api`]; this side adds
//! the distinction the plugin needs: weft absent, weft refusing, or weft
//! answering something that is not the contract.

use std::time::Duration;

use super::api::{self, CniError, CniReply, CniRequest, CniSuccess};

/// How long the plugin waits for weft's answer (weft itself answers within
/// [`api::TIMEOUT`], e.g. "try again later" while the mesh settles a claim).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(api::TIMEOUT.as_secs() + 5);

/// The operation name of a request, for messages.
pub fn op(request: &CniRequest) -> &'static str {
    match request {
        CniRequest::Add { .. } => "add",
        CniRequest::Del { .. } => "del",
        CniRequest::Check { .. } => "check",
        CniRequest::Status => "status",
        CniRequest::Gc { .. } => "gc",
        CniRequest::Version => "version",
    }
}

/// What weft answered, or why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeftError {
    /// Nothing listens on the socket (weft not running in this network
    /// namespace, or its CNI socket is off), or the connection broke.
    Unreachable(String),
    /// weft answered `{"ok":false,...}`.
    Refused(CniError),
    /// weft answered something that is not the documented reply.
    Protocol(String),
}

impl std::fmt::Display for WeftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeftError::Unreachable(why) => write!(f, "{why}"),
            WeftError::Refused(e) => write!(f, "weft refused: {e}"),
            WeftError::Protocol(why) => write!(f, "unexpected answer from weft: {why}"),
        }
    }
}

/// Parses one reply line (the documented [`CniReply`]).
pub fn parse_reply(line: &str) -> Result<CniSuccess, WeftError> {
    let reply: CniReply = serde_json::from_str(line.trim())
        .map_err(|e| WeftError::Protocol(format!("{e}: {:?}", truncate(line))))?;
    reply.0.map_err(WeftError::Refused)
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Sends `request` to the weft listening on abstract socket `name` in this
/// network namespace and returns its reply.
pub fn call(name: &str, request: &CniRequest) -> Result<CniSuccess, WeftError> {
    let line = serde_json::to_string(request)
        .map_err(|e| WeftError::Protocol(format!("cannot encode the request: {e}")))?;
    let reply = crate::api::local_socket::exchange(name, &line, api::MAX_LINE, REPLY_TIMEOUT, |e| {
        format!(
            "cannot reach weft on the abstract unix socket @{name} in this network namespace ({e}); is `weft launch --ipalloc-range CIDR` running here?"
        )
    })
    .map_err(WeftError::Unreachable)?;
    if reply.is_empty() {
        return Err(WeftError::Unreachable(format!(
            "weft on @{name} closed the connection without answering the {} request",
            op(request)
        )));
    }
    parse_reply(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_ok_error_and_garbage() {
        assert_eq!(
            parse_reply(r#"{"ok":true,"released":2}"#),
            Ok(CniSuccess::Released { released: 2 })
        );
        assert_eq!(
            parse_reply(r#"{"ok":false,"code":50,"msg":"not ready","details":"no range yet"}"#),
            Err(WeftError::Refused(CniError::new(
                50,
                "not ready",
                "no range yet"
            )))
        );
        assert!(matches!(parse_reply("hello"), Err(WeftError::Protocol(_))));
        assert!(matches!(parse_reply("{}"), Err(WeftError::Protocol(_))));
    }

    #[test]
    fn nothing_listening_is_unreachable() {
        let e = call("weft-cni-test-nobody-listens-here", &CniRequest::Status).unwrap_err();
        assert!(matches!(e, WeftError::Unreachable(_)), "{e:?}");
        assert!(e.to_string().contains("@weft-cni-test-nobody-listens-here"));
    }
}
