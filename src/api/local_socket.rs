//! What the local control endpoint ([`super::control`]) and the CNI socket
//! ([`crate::cni`]) share: abstract unix sockets that take one JSON line
//! and answer one, served from their own thread, with the caller's
//! credentials read by SO_PEERCRED.

use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::time::Duration;

/// The caller's credentials (pid, uid, gid) as the kernel recorded them
/// when it connected.
pub fn peer_credentials(stream: &UnixStream) -> Result<libc::ucred, String> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the kernel to write a ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot read the caller's credentials: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(cred)
}

/// Serves `listener` from a thread named `thread` until the process ends:
/// one connection at a time, `answer` computes the reply, which is written
/// as one JSON line before the connection closes.
pub fn serve_lines<R: Serialize>(
    listener: UnixListener,
    thread: &str,
    answer: impl Fn(&UnixStream) -> R + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let reply = answer(&stream);
                let mut stream = stream;
                let line = serde_json::to_string(&reply).unwrap_or_default();
                let _ = writeln!(stream, "{line}");
            }
        })?;
    Ok(())
}

/// Reads one line of at most `max` bytes, waiting at most `timeout`.
pub fn read_line(stream: &UnixStream, max: usize, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(max as u64)
        .read_line(&mut line)?;
    Ok(line)
}

/// The client side: connects to `@name`, sends `line`, returns the answer
/// line (at most `max` bytes, within `timeout`). `not_running` words the
/// error when nothing listens.
pub fn exchange(
    name: &str,
    line: &str,
    max: usize,
    timeout: Duration,
    not_running: impl FnOnce(std::io::Error) -> String,
) -> Result<String, String> {
    let addr = UnixAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("socket name @{name}: {e}"))?;
    let mut stream = UnixStream::connect_addr(&addr).map_err(not_running)?;
    writeln!(stream, "{line}").map_err(|e| format!("sending to @{name}: {e}"))?;
    read_line(&stream, max, timeout).map_err(|e| format!("reading the answer from @{name}: {e}"))
}
