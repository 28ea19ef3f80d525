//! NAT for pods (`weft launch --masquerade`): one nftables table per pod
//! range's family in the network namespace weft runs in, made at launch
//! and removed at exit:
//!
//! ```text
//! table ip weft {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 10.32.0.0/12 ip daddr != 10.32.0.0/12 masquerade fully-random
//!     }
//! }
//! table ip6 weft {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip6 saddr fd32::/64 ip6 daddr != fd32::/64 masquerade fully-random
//!     }
//! }
//! ```
//!
//! (the `ip6` table only with an IPv6 `--ipalloc-range`). What pods send
//! to an address outside their range leaves with this host's address (as
//! flannel's `--ip-masq` and weave-kube's NAT rules do); traffic between
//! pods, on any host, keeps its addresses. Both tables are made in one
//! transaction, with the kernel's owner flag (Linux 5.12 and later): they
//! belong to weft's netlink socket, so the kernel removes them when that
//! socket closes, even if weft is killed, and no other process can change
//! them. On older kernels they are ordinary tables, replaced at the next
//! launch.
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
use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// The tables' name (in family `ip`, and `ip6` for an IPv6 range).
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
const NFPROTO_IPV6: u8 = 10;
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
/// Offsets of the IPv6 source and destination address.
const IPV6_SADDR: u32 = 8;
const IPV6_DADDR: u32 = 24;

/// A pod range to masquerade: network address and prefix length.
pub type Range = (IpAddr, u8);

/// The nftables family of a range's table: (`nfgenmsg` family, name as
/// `nft` writes it, payload offsets of source and destination address).
fn family(range: &Range) -> (u8, &'static str, u32, u32) {
    match range.0 {
        IpAddr::V4(_) => (NFPROTO_IPV4, "ip", IPV4_SADDR, IPV4_DADDR),
        IpAddr::V6(_) => (NFPROTO_IPV6, "ip6", IPV6_SADDR, IPV6_DADDR),
    }
}

/// The network bytes of `range` (host bits cleared) and its mask.
fn net_and_mask(range: &Range) -> (Vec<u8>, Vec<u8>) {
    let addr = match range.0 {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut left = usize::from(range.1);
    let mask: Vec<u8> = (0..addr.len())
        .map(|_| {
            let bits = left.min(8);
            left -= bits;
            (0xff00u16 >> bits) as u8
        })
        .collect();
    let net = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
    (net, mask)
}

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

    /// An nf_tables message of `kind` for nftables family `family`.
    fn nft(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        what: &str,
        body: impl FnOnce(&mut Batch),
    ) {
        self.message(
            NFNL_SUBSYS_NFTABLES << 8 | kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family,
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

    /// `ip[6] saddr|daddr (!=|==) prefix`: load the address at `offset` of
    /// the network header, mask it, compare.
    fn match_prefix(&mut self, offset: u32, prefix: &Range, equal: bool) {
        let (net, mask) = net_and_mask(prefix);
        let len = net.len() as u32;
        self.expr("payload", |b| {
            b.be32(NFTA_PAYLOAD_DREG, REG_1);
            b.be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
            b.be32(NFTA_PAYLOAD_OFFSET, offset);
            b.be32(NFTA_PAYLOAD_LEN, len);
        });
        self.expr("bitwise", |b| {
            b.be32(NFTA_BITWISE_SREG, REG_1);
            b.be32(NFTA_BITWISE_DREG, REG_1);
            b.be32(NFTA_BITWISE_LEN, len);
            b.data(NFTA_BITWISE_MASK, &mask);
            b.data(NFTA_BITWISE_XOR, &vec![0; net.len()]);
        });
        self.expr("cmp", |b| {
            b.be32(NFTA_CMP_SREG, REG_1);
            b.be32(NFTA_CMP_OP, if equal { NFT_CMP_EQ } else { NFT_CMP_NEQ });
            b.data(NFTA_CMP_DATA, &net);
        });
    }
}

/// The batch that makes the tables afresh, one per range's family: an old
/// table of the same name (left by a weft that was killed on a kernel
/// without owner tables) is replaced whole, all in one transaction.
/// `owner`: with the owner flag.
fn ruleset_batch(first_seq: u32, ranges: &[Range], owner: bool) -> Batch {
    Batch::wrapped(first_seq, |b| {
        for range in ranges {
            let (fam, name, saddr, daddr) = family(range);
            // Create-if-missing then delete: no error whether it existed or not.
            b.nft(
                NFT_MSG_NEWTABLE,
                NLM_F_CREATE,
                fam,
                &format!("make sure a table {name} {TABLE} exists"),
                |b| b.string(NFTA_TABLE_NAME, TABLE),
            );
            b.nft(
                NFT_MSG_DELTABLE,
                0,
                fam,
                &format!("delete the old table {name} {TABLE}"),
                |b| b.string(NFTA_TABLE_NAME, TABLE),
            );
            b.nft(
                NFT_MSG_NEWTABLE,
                NLM_F_CREATE,
                fam,
                &format!("create the table {name} {TABLE}"),
                |b| {
                    b.string(NFTA_TABLE_NAME, TABLE);
                    b.be32(NFTA_TABLE_FLAGS, if owner { NFT_TABLE_F_OWNER } else { 0 });
                },
            );
            b.nft(
                NFT_MSG_NEWCHAIN,
                NLM_F_CREATE,
                fam,
                &format!("create the NAT chain {CHAIN} in table {name} {TABLE}"),
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
                fam,
                &format!("add the masquerade rule to table {name} {TABLE}"),
                |b| {
                    b.string(NFTA_RULE_TABLE, TABLE);
                    b.string(NFTA_RULE_CHAIN, CHAIN);
                    b.nested(NFTA_RULE_EXPRESSIONS, |b| {
                        b.match_prefix(saddr, range, true);
                        b.match_prefix(daddr, range, false);
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
        }
    })
}

/// The batch that deletes the table of `range`'s family.
fn delete_batch(first_seq: u32, range: &Range) -> Batch {
    let (fam, name, _, _) = family(range);
    Batch::wrapped(first_seq, |b| {
        b.nft(
            NFT_MSG_DELTABLE,
            0,
            fam,
            &format!("delete the table {name} {TABLE}"),
            |b| b.string(NFTA_TABLE_NAME, TABLE),
        )
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
        write!(f, "nftables: {}: {}", self.what, self.source)
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

/// The masquerade tables while weft runs; dropping it removes them.
pub struct Masquerade {
    socket: NfSocket,
    ranges: Vec<Range>,
    owned: bool,
    removed: bool,
}

impl Masquerade {
    /// Makes `table ip weft` (and `table ip6 weft`) for the pod ranges
    /// `ranges`, at most one per family, in the calling thread's network
    /// namespace (replacing ones left behind).
    pub fn install(ranges: &[Range]) -> Result<Masquerade, NftError> {
        let mut socket = NfSocket::open()?;
        let owned = match socket.run(|seq| ruleset_batch(seq, ranges, true)) {
            Ok(()) => true,
            // Kernels before 5.12 know no owner flag.
            Err(e) if e.source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                socket.run(|seq| ruleset_batch(seq, ranges, false))?;
                false
            }
            Err(e) => return Err(e),
        };
        Ok(Masquerade {
            socket,
            ranges: ranges.to_vec(),
            owned,
            removed: false,
        })
    }

    /// Each table and its rule, as `nft list ruleset` shows them:
    /// `table ip weft: ip saddr 10.32.0.0/12 ip daddr != ...`.
    pub fn rules(&self) -> Vec<String> {
        self.ranges
            .iter()
            .map(|range| {
                let (_, name, _, _) = family(range);
                let (net, _) = net_and_mask(range);
                let net = match range.0 {
                    IpAddr::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&net[..]).unwrap_or_default()),
                    IpAddr::V6(_) => IpAddr::from(<[u8; 16]>::try_from(&net[..]).unwrap_or_default()),
                };
                let len = range.1;
                format!(
                    "table {name} {TABLE} chain {CHAIN}: {name} saddr {net}/{len} {name} daddr != {net}/{len} masquerade fully-random"
                )
            })
            .collect()
    }

    /// Whether the kernel ties the tables to weft's socket (Linux 5.12+):
    /// then they go even if weft is killed.
    pub fn owned(&self) -> bool {
        self.owned
    }

    /// Deletes the tables now.
    pub fn remove(mut self) -> Result<(), NftError> {
        self.delete()
    }

    /// Deletes each table (one transaction each: a table already gone
    /// does not keep the other).
    fn delete(&mut self) -> Result<(), NftError> {
        if std::mem::replace(&mut self.removed, true) {
            return Ok(());
        }
        let mut first_err = None;
        for range in self.ranges.clone() {
            match self.socket.run(|seq| delete_batch(seq, &range)) {
                Err(e) if e.source.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Masquerade {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            let tables: Vec<String> = self
                .ranges
                .iter()
                .map(|r| format!("`nft delete table {} {TABLE}`", family(r).1))
                .collect();
            tracing::warn!(
                "{e}; remove it with {}{}",
                tables.join(" and "),
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
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Range {
        (IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len)
    }

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
        let b = ruleset_batch(7, &[v4(10, 32, 0, 0, 12)], true);
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
        let unowned = ruleset_batch(1, &[v4(10, 32, 0, 0, 12)], false);
        let m2 = messages(&unowned.buf);
        assert_eq!(find(&attrs(&m2[3].4), NFTA_TABLE_FLAGS), 0u32.to_be_bytes());
    }

    #[test]
    fn the_chain_hooks_postrouting_at_srcnat() {
        let b = ruleset_batch(1, &[v4(10, 32, 0, 0, 12)], true);
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
        let b = ruleset_batch(1, &[v4(10, 32, 9, 9, 12)], true);
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
    fn an_ipv6_range_gets_an_ip6_table_in_the_same_transaction() {
        let v6: Range = (IpAddr::V6("fd32:6e:f7::9".parse::<Ipv6Addr>().unwrap()), 64);
        let b = ruleset_batch(1, &[v4(10, 32, 0, 0, 12), v6], true);
        let m = messages(&b.buf);
        // BEGIN, five messages per family, END.
        assert_eq!(m.len(), 12);
        assert_eq!(m[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(m[11].0, NFNL_MSG_BATCH_END);
        for msg in &m[1..6] {
            assert_eq!(msg.3, [NFPROTO_IPV4, 0, 0, 0]);
        }
        for msg in &m[6..11] {
            assert_eq!(msg.3, [NFPROTO_IPV6, 0, 0, 0]);
        }
        assert_eq!(b.acked.len(), 10);
        assert_eq!(b.acked[7].1, "create the table ip6 weft");
        assert_eq!(find(&attrs(&m[8].4), NFTA_TABLE_FLAGS), 2u32.to_be_bytes());
        let chain = attrs(&m[9].4);
        assert_eq!(find(&chain, NFTA_CHAIN_TYPE), b"nat\0");
        // The rule loads 16 bytes at offsets 8 and 24 of the IPv6 header.
        let e = expressions(&attrs(&m[10].4));
        let value = |a: &[Attr], k: u16| find(&attrs(&find(a, k)), NFTA_DATA_VALUE);
        let mut mask = vec![0xff; 8];
        mask.extend([0; 8]);
        let mut net = vec![0xfd, 0x32, 0, 0x6e, 0, 0xf7];
        net.extend([0; 10]);
        for (i, (offset, op)) in [(8u32, NFT_CMP_EQ), (24, NFT_CMP_NEQ)]
            .into_iter()
            .enumerate()
        {
            let (load, bits, cmp) = (&e[3 * i].1, &e[3 * i + 1].1, &e[3 * i + 2].1);
            assert_eq!(find(load, NFTA_PAYLOAD_OFFSET), offset.to_be_bytes());
            assert_eq!(find(load, NFTA_PAYLOAD_LEN), 16u32.to_be_bytes());
            assert_eq!(find(bits, NFTA_BITWISE_LEN), 16u32.to_be_bytes());
            assert_eq!(value(bits, NFTA_BITWISE_MASK), mask);
            assert_eq!(value(bits, NFTA_BITWISE_XOR), [0; 16]);
            assert_eq!(find(cmp, NFTA_CMP_OP), op.to_be_bytes());
            assert_eq!(value(cmp, NFTA_CMP_DATA), net);
        }
        assert_eq!(e[6].0, "masq");
        // Deleting it names the family.
        let d = delete_batch(1, &v6);
        assert_eq!(messages(&d.buf)[1].3, [NFPROTO_IPV6, 0, 0, 0]);
        assert_eq!(d.acked[0].1, "delete the table ip6 weft");
    }

    #[test]
    fn masks_cover_odd_prefix_lengths() {
        assert_eq!(
            net_and_mask(&v4(10, 47, 255, 1, 12)),
            (vec![10, 32, 0, 0], vec![255, 240, 0, 0])
        );
        assert_eq!(net_and_mask(&v4(10, 1, 2, 3, 0)).1, vec![0; 4]);
        assert_eq!(net_and_mask(&v4(10, 1, 2, 3, 32)).0, vec![10, 1, 2, 3]);
        let (net, mask) = net_and_mask(&(IpAddr::V6("fd32::ff:ffff".parse().unwrap()), 122));
        assert_eq!(mask[15], 0xc0);
        assert_eq!(mask[14], 0xff);
        assert_eq!(net[15], 0xc0);
        assert_eq!(net[14], 0xff);
    }

    #[test]
    fn golden_delete_batch() {
        // BEGIN (seq 5), DELTABLE "weft" (seq 6, ACK), END (seq 7).
        let b = delete_batch(5, &v4(10, 32, 0, 0, 12));
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
        assert_eq!(b.acked, vec![(6, "delete the table ip weft".to_string())]);
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
