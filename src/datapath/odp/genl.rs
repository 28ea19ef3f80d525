//! Generic-netlink transport for the OVS families: the `ovs_header`
//! payload (as a netlink-packet-generic family), request/ack and dump
//! exchanges over a netlink-sys socket, and family-id resolution.

use super::attr::{split_attrs, Attr, ParseError};
use netlink_packet_core::{
    DecodeError, Emitable, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    ParseableParametrized, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use std::io;
use std::os::fd::AsRawFd;

/// One OVS generic-netlink message: command, `ovs_header.dp_ifindex` and
/// attributes. Received attributes are kept as raw bytes (parse them with
/// the typed parsers in `attr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsMessage {
    /// `OVS_*_CMD_*`.
    pub cmd: u8,
    /// Family version (`OVS_DATAPATH_VERSION` etc.).
    pub version: u8,
    /// `ovs_header.dp_ifindex`: which datapath (0 to look up by name).
    pub dp_ifindex: i32,
    /// The message's attributes.
    pub attrs: Vec<Attr>,
}

impl OvsMessage {
    /// The raw value of the first attribute of type `kind`.
    pub fn attr(&self, kind: u16) -> Option<&[u8]> {
        self.attrs.iter().find_map(|a| match a {
            Attr::Bytes { kind: k, value } if *k == kind => Some(value.as_slice()),
            _ => None,
        })
    }
}

impl GenlFamily for OvsMessage {
    fn family_name() -> &'static str {
        // The id is always resolved per family and set on the message.
        "ovs"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        self.version
    }
}

impl Emitable for OvsMessage {
    fn buffer_len(&self) -> usize {
        4 + self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        buffer[..4].copy_from_slice(&self.dp_ifindex.to_ne_bytes());
        self.attrs.as_slice().emit(&mut buffer[4..]);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for OvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let dp: [u8; 4] = buf
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| DecodeError::from("OVS message shorter than ovs_header"))?;
        let rest = buf.get(4..).unwrap_or(&[]);
        let attrs = split_attrs(rest)
            .map_err(|e| DecodeError::from(e.0))?
            .into_iter()
            .map(|(kind, value)| Attr::bytes(kind, value))
            .collect();
        Ok(OvsMessage {
            cmd: header.cmd,
            version: header.version,
            dp_ifindex: i32::from_ne_bytes(dp),
            attrs,
        })
    }
}

/// A failed exchange: the kernel's errno (with the request named) or a
/// message weft could not parse.
#[derive(Debug)]
pub enum NlError {
    /// The kernel answered with this errno.
    Kernel {
        /// What was asked.
        what: String,
        /// Positive errno.
        errno: i32,
    },
    /// Socket I/O failed.
    Io(String, io::Error),
    /// The reply did not parse.
    Parse(String),
}

impl NlError {
    /// The kernel's errno, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NlError::Kernel { what, errno } => {
                let hint = if *errno == libc::EINVAL {
                    " (the kernel log, dmesg, says which attribute)"
                } else {
                    ""
                };
                write!(f, "{what}: {}{hint}", io::Error::from_raw_os_error(*errno))
            }
            NlError::Io(what, e) => write!(f, "{what}: {e}"),
            NlError::Parse(e) => write!(f, "malformed reply from the openvswitch module: {e}"),
        }
    }
}
impl std::error::Error for NlError {}

impl From<ParseError> for NlError {
    fn from(e: ParseError) -> Self {
        NlError::Parse(e.0)
    }
}

/// A generic-netlink socket speaking to the OVS families.
pub struct GenlSocket {
    socket: Socket,
    port_id: u32,
    sequence: u32,
}

impl GenlSocket {
    /// Opens and binds a socket (the kernel assigns the port id).
    pub fn open() -> Result<GenlSocket, NlError> {
        let mut socket =
            Socket::new(NETLINK_GENERIC).map_err(|e| NlError::Io("netlink socket".into(), e))?;
        let address = socket
            .bind_auto()
            .map_err(|e| NlError::Io("netlink bind".into(), e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NlError::Io("netlink connect".into(), e))?;
        // Replies for big dumps and bursts of misses need room.
        let _ = socket.set_rx_buf_sz(1 << 20);
        Ok(GenlSocket {
            socket,
            port_id: address.port_number(),
            sequence: 1,
        })
    }

    /// This socket's netlink port id (`OVS_*_ATTR_UPCALL_PID` for misses).
    pub fn port_id(&self) -> u32 {
        self.port_id
    }

    /// The socket's file descriptor (for poll).
    pub fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// Makes `recv` return EAGAIN after `millis` without data.
    pub fn set_recv_timeout(&self, millis: u64) {
        let timeout = libc::timeval {
            tv_sec: (millis / 1000) as _,
            tv_usec: ((millis % 1000) * 1000) as _,
        };
        // SAFETY: valid fd and a timeval of the right size.
        unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
    }

    fn send(&mut self, family: u16, flags: u16, message: OvsMessage) -> Result<u32, NlError> {
        let mut genl = GenlMessage::from_payload(message);
        genl.set_resolved_family_id(family);
        let mut nl = NetlinkMessage::from(genl);
        self.sequence = self.sequence.wrapping_add(1);
        nl.header.flags = flags;
        nl.header.sequence_number = self.sequence;
        nl.finalize();
        let mut buffer = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buffer);
        self.socket
            .send(&buffer, 0)
            .map_err(|e| NlError::Io("netlink send".into(), e))?;
        Ok(self.sequence)
    }

    /// Sends a request and collects replies until the ACK (or error).
    pub fn request(
        &mut self,
        family: u16,
        what: &str,
        message: OvsMessage,
    ) -> Result<Vec<OvsMessage>, NlError> {
        self.exchange(family, what, NLM_F_REQUEST | NLM_F_ACK, message)
    }

    /// Like [`request`](Self::request) with extra netlink flags (e.g. `NLM_F_CREATE`).
    pub fn request_with(
        &mut self,
        family: u16,
        what: &str,
        extra: u16,
        message: OvsMessage,
    ) -> Result<Vec<OvsMessage>, NlError> {
        self.exchange(family, what, NLM_F_REQUEST | NLM_F_ACK | extra, message)
    }

    /// Dumps all objects (`NLM_F_DUMP`) until `NLMSG_DONE`.
    pub fn dump(
        &mut self,
        family: u16,
        what: &str,
        message: OvsMessage,
    ) -> Result<Vec<OvsMessage>, NlError> {
        self.exchange(family, what, NLM_F_REQUEST | NLM_F_DUMP, message)
    }

    /// Sends without waiting for an ACK (packet execute on the hot path);
    /// errors come back later as error messages on this socket.
    pub fn send_only(&mut self, family: u16, message: OvsMessage) -> Result<(), NlError> {
        self.send(family, NLM_F_REQUEST, message).map(|_| ())
    }

    fn exchange(
        &mut self,
        family: u16,
        what: &str,
        flags: u16,
        message: OvsMessage,
    ) -> Result<Vec<OvsMessage>, NlError> {
        let sequence = self.send(family, flags, message)?;
        let mut replies = Vec::new();
        loop {
            let (buffer, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| NlError::Io(format!("{what}: netlink receive"), e))?;
            for item in split_messages(&buffer) {
                let (header, parsed) = item.map_err(NlError::Parse)?;
                if header.sequence_number != sequence {
                    continue; // a late reply to an earlier fire-and-forget send
                }
                match parsed {
                    Reply::Done => return Ok(replies),
                    Reply::Error(0) => return Ok(replies),
                    Reply::Error(errno) => {
                        return Err(NlError::Kernel {
                            what: what.to_string(),
                            errno,
                        })
                    }
                    Reply::Message(m) => {
                        replies.push(m);
                        if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                }
            }
        }
    }

    /// Receives whatever arrived (misses on an upcall socket): messages and
    /// asynchronous errors. `Ok(empty)` on timeout.
    pub fn receive(&mut self) -> Result<Vec<Result<Reply, String>>, NlError> {
        Ok(self.receive_flags(0)?.unwrap_or_default())
    }

    /// Receives one datagram without blocking: `None` when nothing is
    /// queued (an event loop drains the socket until then).
    pub fn try_receive(&mut self) -> Result<Option<Vec<Result<Reply, String>>>, NlError> {
        self.receive_flags(libc::MSG_DONTWAIT)
    }

    fn receive_flags(&mut self, flags: i32) -> Result<Option<Vec<Result<Reply, String>>>, NlError> {
        let mut buffer = vec![0u8; 1 << 17];
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                flags,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                // ENOBUFS: the kernel dropped upcalls (queue full); the
                // packets are lost, the socket stays usable.
                _ if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Some(Vec::new())),
                _ => Err(NlError::Io("upcall receive".into(), e)),
            };
        }
        buffer.truncate(n as usize);
        Ok(Some(
            split_messages(&buffer)
                .into_iter()
                .map(|r| r.map(|(_, reply)| reply))
                .collect(),
        ))
    }
}

/// One parsed netlink message of an OVS exchange.
#[derive(Debug)]
pub enum Reply {
    /// An OVS family message.
    Message(OvsMessage),
    /// `NLMSG_ERROR`: 0 is an ACK, otherwise a positive errno.
    Error(i32),
    /// `NLMSG_DONE`.
    Done,
}

/// Splits a receive buffer into netlink messages and parses each. Total.
pub fn split_messages(buffer: &[u8]) -> Vec<Result<(NetlinkHeader, Reply), String>> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    while offset < buffer.len() {
        let rest = &buffer[offset..];
        let length = match NetlinkBuffer::new_checked(rest) {
            Ok(nl) => nl.length() as usize,
            Err(e) => {
                out.push(Err(format!("truncated netlink message: {e}")));
                break;
            }
        };
        let Some(one) = rest.get(..length) else {
            out.push(Err("netlink message longer than the buffer".into()));
            break;
        };
        out.push(
            match NetlinkMessage::<GenlMessage<OvsMessage>>::deserialize(one) {
                Ok(message) => {
                    let header = message.header;
                    match message.payload {
                        NetlinkPayload::InnerMessage(genl) => {
                            Ok((header, Reply::Message(genl.payload)))
                        }
                        NetlinkPayload::Error(e) => {
                            Ok((header, Reply::Error(e.code.map(|c| -c.get()).unwrap_or(0))))
                        }
                        NetlinkPayload::Done(_) => Ok((header, Reply::Done)),
                        other => Err(format!("unexpected netlink message {other:?}")),
                    }
                }
                Err(e) => Err(format!("undecodable netlink message: {e}")),
            },
        );
        // Messages are 4-byte aligned; a zero length would loop forever.
        offset += length.max(16).div_ceil(4) * 4;
    }
    out
}

/// Resolves a generic-netlink family name to its id (`None`: not present,
/// i.e. the openvswitch module is not loaded).
pub fn resolve_family(name: &str) -> Result<Option<u16>, NlError> {
    let mut socket =
        Socket::new(NETLINK_GENERIC).map_err(|e| NlError::Io("netlink socket".into(), e))?;
    socket
        .bind_auto()
        .map_err(|e| NlError::Io("netlink bind".into(), e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| NlError::Io("netlink connect".into(), e))?;
    // The kernel answers synchronously; the timeout only guards against surprises.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: valid fd and a timeval of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let mut request = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
    });
    request.finalize();
    let mut message = NetlinkMessage::from(request);
    message.header.flags = NLM_F_REQUEST;
    message.header.sequence_number = 1;
    message.finalize();
    let mut buffer = vec![0u8; message.buffer_len()];
    message.serialize(&mut buffer);
    socket
        .send(&buffer, 0)
        .map_err(|e| NlError::Io("netlink send".into(), e))?;
    let (reply, _) = socket
        .recv_from_full()
        .map_err(|e| NlError::Io("netlink receive".into(), e))?;
    let reply = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&reply)
        .map_err(|e| NlError::Parse(format!("family lookup of {name}: {e}")))?;
    match reply.payload {
        NetlinkPayload::InnerMessage(genl) => {
            Ok(genl.payload.nlas.iter().find_map(|nla| match nla {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            }))
        }
        NetlinkPayload::Error(e) => match e.code {
            Some(code) if code.get() == -libc::ENOENT => Ok(None),
            Some(code) => Err(NlError::Kernel {
                what: format!("family lookup of {name}"),
                errno: -code.get(),
            }),
            None => Err(NlError::Parse(format!(
                "family lookup of {name}: ACK without a family"
            ))),
        },
        other => Err(NlError::Parse(format!(
            "family lookup of {name}: unexpected {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_through_the_genl_plumbing() {
        let message = OvsMessage {
            cmd: 1,
            version: 2,
            dp_ifindex: 7,
            attrs: vec![Attr::string(1, "weft0"), Attr::u32(2, 1234)],
        };
        let mut genl = GenlMessage::from_payload(message.clone());
        genl.set_resolved_family_id(33);
        let mut nl = NetlinkMessage::from(genl);
        nl.header.sequence_number = 9;
        nl.finalize();
        let mut buffer = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buffer);
        let parsed = split_messages(&buffer);
        assert_eq!(parsed.len(), 1);
        match &parsed[0] {
            Ok((header, Reply::Message(m))) => {
                assert_eq!(header.message_type, 33);
                assert_eq!(m, &message);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn split_messages_is_total() {
        for len in 0..80usize {
            let buf: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(3))
                .collect();
            let _ = split_messages(&buf);
        }
        // A header claiming length 0 must not loop forever.
        let _ = split_messages(&[0u8; 32]);
    }
}
