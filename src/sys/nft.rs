//! NAT for pods (`weft launch --masquerade`): one nftables table in the
//! network namespace weft runs in, made at launch and removed at exit:
//!
//! ```text
//! table ip weft {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade fully-random
//!     }
//! }
//! ```
//!
//! What pods send to an address outside `--ipalloc-range` leaves with this
//! host's address (as flannel's `--ip-masq` and weave-kube's NAT rules do);
//! traffic between pods, on any host, keeps its addresses. The table is
//! created with the kernel's owner flag (Linux 5.12 and later): it belongs
//! to weft's netlink socket, so the kernel removes it when that socket
//! closes, even if weft is killed, and no other process can change it.
//! On older kernels it is an ordinary table, replaced at the next launch.
//!
//! Spoken over nfnetlink (`NETLINK_NETFILTER`) with `netlink-sys`'s
//! socket, like [`crate::sys`]: no crate fits. `rustables` is
//! GPL-3.0 (weft is MIT); `nftnl` binds libnftnl and libmnl, C libraries
//! that neither weft's image nor every node has; `nf_tables` is a first
//! 0.1 release; and the `nft` command is not in weft's image either. The
//! messages are few and fixed: one batch (table, chain, one rule), built by
//! [`ruleset_batch`] and checked byte by byte in the tests below, and one
//! to delete the table.

use std::io;
use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// The table's name (family `ip`).
pub const TABLE: &str = "weft";
/// The chain's name.
pub const CHAIN: &str = "postrouting";
/// The rule's comment, shown by `nft list ruleset`.
pub const COMMENT: &str = "weft --masquerade: pods leaving the pod network";

// linux/netlink.h
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;
// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
// linux/netfilter.h
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NF_ACCEPT: u32 = 1;
const NF_INET_POST_ROUTING: u32 = 4;
/// `priority srcnat`.
const NF_IP_PRI_NAT_SRC: u32 = 100;
// linux/netfilter/nf_tables.h
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_TABLE_F_OWNER: u32 = 0x2;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_MASQ_FLAGS: u16 = 1;
/// `fully-random` (linux/netfilter/nf_nat.h): source ports picked at
/// random, which avoids conntrack's insertion races under many pods.
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
/// The first data register (`NFT_REG_1`).
const REG_1: u32 = 1;
/// libnftnl's rule comment in NFTA_RULE_USERDATA.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// Offsets of the IPv4 source and destination address.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

/// One batch of nfnetlink messages being built, each acknowledged.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Sequence numbers that ask for an ACK, and what each does.
    acked: Vec<(u32, String)>,
}

impl Batch {
    fn new(first_seq: u32) -> Batch {
        Batch {
            buf: Vec::new(),
            seq: first_seq,
            acked: Vec::new(),
        }
    }

    /// A message: header, `nfgenmsg`, then the attributes `body` writes.
    fn message(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        what: &str,
        body: impl FnOnce(&mut Batch),
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg: family, version 0, res_id (big-endian).
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(self);
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        if flags & NLM_F_ACK != 0 {
            self.acked.push((self.seq, what.to_string()));
        }
        self.seq = self.seq.wrapping_add(1);
    }

    /// An nf_tables message of `kind` for the `ip` family.
    fn nft(&mut self, kind: u16, flags: u16, what: &str, body: impl FnOnce(&mut Batch)) {
        self.message(
            NFNL_SUBSYS_NFTABLES << 8 | kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_IPV4,
            0,
            what,
            body,
        );
    }

    /// The whole batch: BEGIN, `body`'s messages, END.
    fn wrapped(first_seq: u32, body: impl FnOnce(&mut Batch)) -> Batch {
        let mut b = Batch::new(first_seq);
        b.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            "begin",
            |_| {},
        );
        body(&mut b);
        b.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            "end",
            |_| {},
        );
        b
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// A NUL-terminated string attribute.
    fn string(&mut self, kind: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v);
    }

    /// A big-endian u32 attribute (nf_tables' numbers are).
    fn be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, body: impl FnOnce(&mut Batch)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        body(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    /// `NFTA_DATA_VALUE` inside a nested attribute.
    fn data(&mut self, kind: u16, value: &[u8]) {
        self.nested(kind, |b| b.attr(NFTA_DATA_VALUE, value));
    }

    /// One expression of a rule.
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Batch)) {
        self.nested(NFTA_LIST_ELEM, |b| {
            b.string(NFTA_EXPR_NAME, name);
            b.nested(NFTA_EXPR_DATA, body);
        });
    }

    /// `ip saddr|daddr (!=|==) prefix`: load the address, mask it, compare.
    fn match_prefix(&mut self, offset: u32, prefix: (Ipv4Addr, u8), equal: bool) {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix.1)).unwrap_or(0);
        let net = u32::from(prefix.0) & mask;
        self.expr("payload", |b| {
            b.be32(NFTA_PAYLOAD_DREG, REG_1);
            b.be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
            b.be32(NFTA_PAYLOAD_OFFSET, offset);
            b.be32(NFTA_PAYLOAD_LEN, 4);
        });
        self.expr("bitwise", |b| {
            b.be32(NFTA_BITWISE_SREG, REG_1);
            b.be32(NFTA_BITWISE_DREG, REG_1);
            b.be32(NFTA_BITWISE_LEN, 4);
            b.data(NFTA_BITWISE_MASK, &mask.to_be_bytes());
            b.data(NFTA_BITWISE_XOR, &[0; 4]);
        });
        self.expr("cmp", |b| {
            b.be32(NFTA_CMP_SREG, REG_1);
            b.be32(NFTA_CMP_OP, if equal { NFT_CMP_EQ } else { NFT_CMP_NEQ });
            b.data(NFTA_CMP_DATA, &net.to_be_bytes());
        });
    }
}

/// The batch that makes the table afresh: an old table of the same name
/// (left by a weft that was killed on a kernel without owner tables) is
/// replaced whole, in one transaction. `owner`: with the owner flag.
fn ruleset_batch(first_seq: u32, range: (Ipv4Addr, u8), owner: bool) -> Batch {
    Batch::wrapped(first_seq, |b| {
        // Create-if-missing then delete: no error whether it existed or not.
        b.nft(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            "make sure a table exists",
            |b| b.string(NFTA_TABLE_NAME, TABLE),
        );
        b.nft(NFT_MSG_DELTABLE, 0, "delete the old table", |b| {
            b.string(NFTA_TABLE_NAME, TABLE)
        });
        b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, "create the table", |b| {
            b.string(NFTA_TABLE_NAME, TABLE);
            b.be32(NFTA_TABLE_FLAGS, if owner { NFT_TABLE_F_OWNER } else { 0 });
        });
        b.nft(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            "create the NAT chain",
            |b| {
                b.string(NFTA_CHAIN_TABLE, TABLE);
                b.string(NFTA_CHAIN_NAME, CHAIN);
                b.nested(NFTA_CHAIN_HOOK, |b| {
                    b.be32(NFTA_HOOK_HOOKNUM, NF_INET_POST_ROUTING);
                    b.be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_SRC);
                });
                b.be32(NFTA_CHAIN_POLICY, NF_ACCEPT);
                b.string(NFTA_CHAIN_TYPE, "nat");
            },
        );
        b.nft(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            "add the masquerade rule",
            |b| {
                b.string(NFTA_RULE_TABLE, TABLE);
                b.string(NFTA_RULE_CHAIN, CHAIN);
                b.nested(NFTA_RULE_EXPRESSIONS, |b| {
                    b.match_prefix(IPV4_SADDR, range, true);
                    b.match_prefix(IPV4_DADDR, range, false);
                    b.expr("masq", |b| {
                        b.be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY)
                    });
                });
                let mut udata = vec![NFTNL_UDATA_RULE_COMMENT, (COMMENT.len() + 1) as u8];
                udata.extend_from_slice(COMMENT.as_bytes());
                udata.push(0);
                b.attr(NFTA_RULE_USERDATA, &udata);
            },
        );
    })
}

/// The batch that deletes the table.
fn delete_batch(first_seq: u32) -> Batch {
    Batch::wrapped(first_seq, |b| {
        b.nft(NFT_MSG_DELTABLE, 0, "delete the table", |b| {
            b.string(NFTA_TABLE_NAME, TABLE)
        })
    })
}

/// A failed nf_tables request: which step, and the kernel's errno.
#[derive(Debug)]
pub struct NftError {
    /// What the failed message did.
    pub what: String,
    /// The error.
    pub source: io::Error,
}

impl std::fmt::Display for NftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nftables table ip {TABLE}: {}: {}",
            self.what, self.source
        )
    }
}

fn nft_err(what: impl Into<String>, source: io::Error) -> NftError {
    NftError {
        what: what.into(),
        source,
    }
}

/// A `NETLINK_NETFILTER` socket in the calling thread's namespace.
struct NfSocket {
    socket: Socket,
    seq: u32,
}

impl NfSocket {
    fn open() -> Result<NfSocket, NftError> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| nft_err("open a NETLINK_NETFILTER socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| nft_err("bind the NETLINK_NETFILTER socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| nft_err("connect the NETLINK_NETFILTER socket", e))?;
        // The kernel answers at once; never wait forever for it.
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(|e| nft_err("set a receive timeout on the NETLINK_NETFILTER socket", e))?;
        Ok(NfSocket { socket, seq: 1 })
    }

    /// Sends a batch and waits for every ACK; the first error names the
    /// step that failed (the kernel then applied none of the batch).
    fn run(&mut self, build: impl FnOnce(u32) -> Batch) -> Result<(), NftError> {
        let batch = build(self.seq);
        self.seq = batch.seq;
        self.socket
            .send(&batch.buf, 0)
            .map_err(|e| nft_err("send the batch", e))?;
        let mut waiting: Vec<(u32, String)> = batch.acked;
        let mut buf = vec![0u8; 64 * 1024];
        while !waiting.is_empty() {
            let n = self.socket.recv(&mut &mut buf[..], 0).map_err(|e| {
                let what = if e.kind() == io::ErrorKind::WouldBlock {
                    "no answer from the kernel within 5 s"
                } else {
                    "read the kernel's answer"
                };
                nft_err(what, e)
            })?;
            for (seq, errno) in acks(&buf[..n]) {
                let Some(at) = waiting.iter().position(|(s, _)| *s == seq) else {
                    continue;
                };
                let (_, what) = waiting.remove(at);
                if errno != 0 {
                    return Err(nft_err(what, io::Error::from_raw_os_error(errno)));
                }
            }
        }
        Ok(())
    }
}

/// The acknowledgements in a datagram of netlink messages: (sequence
/// number, errno; 0 for success).
fn acks(mut bytes: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while bytes.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            break;
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let code = i32::from_ne_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
            out.push((seq, -code));
        }
        let aligned = (len + 3) & !3;
        bytes = &bytes[aligned.min(bytes.len())..];
    }
    out
}

/// The masquerade table while weft runs; dropping it removes the table.
pub struct Masquerade {
    socket: NfSocket,
    range: (Ipv4Addr, u8),
    owned: bool,
    removed: bool,
}

impl Masquerade {
    /// Makes `table ip weft` for the pod range `range` in the calling
    /// thread's network namespace (replacing one left behind).
    pub fn install(range: (Ipv4Addr, u8)) -> Result<Masquerade, NftError> {
        let mut socket = NfSocket::open()?;
        let owned = match socket.run(|seq| ruleset_batch(seq, range, true)) {
            Ok(()) => true,
            // Kernels before 5.12 know no owner flag.
            Err(e) if e.source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                socket.run(|seq| ruleset_batch(seq, range, false))?;
                false
            }
            Err(e) => return Err(e),
        };
        Ok(Masquerade {
            socket,
            range,
            owned,
            removed: false,
        })
    }

    /// The rule, as `nft list ruleset` shows it.
    pub fn rule(&self) -> String {
        let (net, len) = self.range;
        format!("ip saddr {net}/{len} ip daddr != {net}/{len} masquerade fully-random")
    }

    /// Whether the kernel ties the table to weft's socket (Linux 5.12+):
    /// then it goes even if weft is killed.
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Deletes the table now.
    pub fn remove(mut self) -> Result<(), NftError> {
        self.delete()
    }

    fn delete(&mut self) -> Result<(), NftError> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        match self.socket.run(delete_batch) {
            Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            tracing::warn!(
                "{e}; remove it with `nft delete table ip {TABLE}`{}",
                if self.owned {
                    " (the kernel removes it anyway as weft's socket closes)"
                } else {
                    ""
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One attribute: (type without flags, nested, payload).
    type Attr = (u16, bool, Vec<u8>);
    /// One message: (type, flags, seq, nfgenmsg, attributes).
    type Message = (u16, u16, u32, [u8; 4], Vec<u8>);

    fn attrs(mut b: &[u8]) -> Vec<Attr> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            let kind = u16::from_ne_bytes([b[2], b[3]]);
            assert!(len >= 4 && len <= b.len(), "attribute length {len}");
            out.push((kind & 0x3fff, kind & NLA_F_NESTED != 0, b[4..len].to_vec()));
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    /// The messages of a batch.
    fn messages(mut b: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            assert_eq!(len % 4, 0, "messages stay aligned");
            let kind = u16::from_ne_bytes([b[4], b[5]]);
            let flags = u16::from_ne_bytes([b[6], b[7]]);
            let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            let nfgen = [b[16], b[17], b[18], b[19]];
            out.push((kind, flags, seq, nfgen, b[20..len].to_vec()));
            b = &b[len..];
        }
        out
    }

    fn find(a: &[Attr], kind: u16) -> Vec<u8> {
        a.iter()
            .find(|(k, _, _)| *k == kind)
            .unwrap_or_else(|| panic!("attribute {kind} missing"))
            .2
            .clone()
    }

    #[test]
    fn the_batch_is_begin_five_acked_messages_end() {
        let b = ruleset_batch(7, (Ipv4Addr::new(10, 32, 0, 0), 12), true);
        let m = messages(&b.buf);
        let kinds: Vec<u16> = m.iter().map(|x| x.0).collect();
        let t = |k: u16| NFNL_SUBSYS_NFTABLES << 8 | k;
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_DELTABLE),
                t(NFT_MSG_NEWTABLE),
                t(NFT_MSG_NEWCHAIN),
                t(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END
            ]
        );
        // Sequence numbers count up from 7; BEGIN and END carry the
        // subsystem in res_id (big-endian) and ask for no ACK.
        assert_eq!(
            m.iter().map(|x| x.2).collect::<Vec<_>>(),
            (7..14).collect::<Vec<_>>()
        );
        assert_eq!(m[0].3, [0, 0, 0, 10]);
        assert_eq!(m[6].3, [0, 0, 0, 10]);
        assert_eq!(m[0].1, NLM_F_REQUEST);
        for msg in &m[1..6] {
            assert_eq!(msg.3, [NFPROTO_IPV4, 0, 0, 0]);
            assert_eq!(
                msg.1 & (NLM_F_REQUEST | NLM_F_ACK),
                NLM_F_REQUEST | NLM_F_ACK
            );
        }
        assert_eq!(
            b.acked.iter().map(|a| a.0).collect::<Vec<_>>(),
            [8, 9, 10, 11, 12]
        );
        assert_eq!(b.seq, 14);
        // The new table carries the owner flag; the first one none.
        let first = attrs(&m[1].4);
        assert_eq!(find(&first, NFTA_TABLE_NAME), b"weft\0");
        assert!(first.iter().all(|a| a.0 != NFTA_TABLE_FLAGS));
        assert_eq!(find(&attrs(&m[3].4), NFTA_TABLE_FLAGS), 2u32.to_be_bytes());
        let unowned = ruleset_batch(1, (Ipv4Addr::new(10, 32, 0, 0), 12), false);
        let m2 = messages(&unowned.buf);
        assert_eq!(find(&attrs(&m2[3].4), NFTA_TABLE_FLAGS), 0u32.to_be_bytes());
    }

    #[test]
    fn the_chain_hooks_postrouting_at_srcnat() {
        let b = ruleset_batch(1, (Ipv4Addr::new(10, 32, 0, 0), 12), true);
        let chain = attrs(&messages(&b.buf)[4].4);
        assert_eq!(find(&chain, NFTA_CHAIN_TABLE), b"weft\0");
        assert_eq!(find(&chain, NFTA_CHAIN_NAME), b"postrouting\0");
        assert_eq!(find(&chain, NFTA_CHAIN_TYPE), b"nat\0");
        assert_eq!(find(&chain, NFTA_CHAIN_POLICY), 1u32.to_be_bytes());
        let hook = attrs(&find(&chain, NFTA_CHAIN_HOOK));
        assert_eq!(find(&hook, NFTA_HOOK_HOOKNUM), 4u32.to_be_bytes());
        assert_eq!(find(&hook, NFTA_HOOK_PRIORITY), 100u32.to_be_bytes());
        assert!(chain
            .iter()
            .any(|(k, nested, _)| *k == NFTA_CHAIN_HOOK && *nested));
    }

    /// (name, attributes of its data) for each expression of the rule.
    fn expressions(rule: &[Attr]) -> Vec<(String, Vec<Attr>)> {
        attrs(&find(rule, NFTA_RULE_EXPRESSIONS))
            .into_iter()
            .map(|(k, nested, elem)| {
                assert!(k == NFTA_LIST_ELEM && nested);
                let e = attrs(&elem);
                let name = String::from_utf8(find(&e, NFTA_EXPR_NAME)).unwrap();
                (
                    name.trim_end_matches('\0').to_string(),
                    attrs(&find(&e, NFTA_EXPR_DATA)),
                )
            })
            .collect()
    }

    #[test]
    fn the_rule_matches_the_range_out_of_the_range_and_masquerades() {
        // Host bits in the given address are masked off.
        let b = ruleset_batch(1, (Ipv4Addr::new(10, 32, 9, 9), 12), true);
        let rule = attrs(&messages(&b.buf)[5].4);
        assert_eq!(find(&rule, NFTA_RULE_TABLE), b"weft\0");
        assert_eq!(find(&rule, NFTA_RULE_CHAIN), b"postrouting\0");
        let e = expressions(&rule);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            ["payload", "bitwise", "cmp", "payload", "bitwise", "cmp", "masq"]
        );
        let value = |a: &[Attr], k: u16| find(&attrs(&find(a, k)), NFTA_DATA_VALUE);
        for (i, (offset, op)) in [(12u32, NFT_CMP_EQ), (16, NFT_CMP_NEQ)]
            .into_iter()
            .enumerate()
        {
            let (load, mask, cmp) = (&e[3 * i].1, &e[3 * i + 1].1, &e[3 * i + 2].1);
            assert_eq!(find(load, NFTA_PAYLOAD_BASE), 1u32.to_be_bytes());
            assert_eq!(find(load, NFTA_PAYLOAD_OFFSET), offset.to_be_bytes());
            assert_eq!(find(load, NFTA_PAYLOAD_LEN), 4u32.to_be_bytes());
            assert_eq!(find(load, NFTA_PAYLOAD_DREG), 1u32.to_be_bytes());
            assert_eq!(value(mask, NFTA_BITWISE_MASK), [255, 240, 0, 0]);
            assert_eq!(value(mask, NFTA_BITWISE_XOR), [0, 0, 0, 0]);
            assert_eq!(find(mask, NFTA_BITWISE_LEN), 4u32.to_be_bytes());
            assert_eq!(find(cmp, NFTA_CMP_OP), op.to_be_bytes());
            assert_eq!(value(cmp, NFTA_CMP_DATA), [10, 32, 0, 0]);
        }
        assert_eq!(find(&e[6].1, NFTA_MASQ_FLAGS), 0x10u32.to_be_bytes());
        let udata = find(&rule, NFTA_RULE_USERDATA);
        assert_eq!(udata[0], 0);
        assert_eq!(usize::from(udata[1]), COMMENT.len() + 1);
        assert_eq!(&udata[2..udata.len() - 1], COMMENT.as_bytes());
    }

    #[test]
    fn golden_delete_batch() {
        // BEGIN (seq 5), DELTABLE "weft" (seq 6, ACK), END (seq 7).
        let b = delete_batch(5);
        let mut want = Vec::new();
        let mut msg = |kind: u16, flags: u16, seq: u32, nfgen: [u8; 4], attrs: &[u8]| {
            want.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
            want.extend_from_slice(&kind.to_ne_bytes());
            want.extend_from_slice(&flags.to_ne_bytes());
            want.extend_from_slice(&seq.to_ne_bytes());
            want.extend_from_slice(&0u32.to_ne_bytes());
            want.extend_from_slice(&nfgen);
            want.extend_from_slice(attrs);
        };
        msg(0x10, 1, 5, [0, 0, 0, 10], &[]);
        let mut name = Vec::new();
        name.extend_from_slice(&9u16.to_ne_bytes());
        name.extend_from_slice(&1u16.to_ne_bytes());
        name.extend_from_slice(b"weft\0\0\0\0");
        msg(0x0a02, 5, 6, [2, 0, 0, 0], &name);
        msg(0x11, 1, 7, [0, 0, 0, 10], &[]);
        assert_eq!(b.buf, want);
        assert_eq!(b.acked, vec![(6, "delete the table".to_string())]);
    }

    #[test]
    fn acks_are_read_from_a_datagram_of_error_messages() {
        let mut d = Vec::new();
        for (seq, code) in [(3u32, 0i32), (4, -95)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&code.to_ne_bytes());
            d.extend_from_slice(&[0; 16]);
        }
        assert_eq!(acks(&d), [(3, 0), (4, 95)]);
        // A truncated message ends the walk instead of panicking.
        assert_eq!(acks(&d[..40]), [(3, 0)]);
        assert_eq!(acks(&[1, 2, 3]), []);
    }
}
