//! Network certificates: their binary encoding (a total parser), signing
//! with an Ed25519 CA key, fingerprints, the armored text form, and what a
//! certificate lets its holder claim.
//!
//! ```text
//! cert     := version:u8(1) flags:u8 name_len:u8 name public_key:32
//!             not_before:u64 not_after:u64 issuer:32
//!             n:u8 n*overlay  n:u8 n*subnet  n:u8 n*mac:6
//!             signature:64
//! flags    := bit 0: is a CA certificate; bit 1: any MAC (then no MAC list)
//! overlay  := family:u8(4|6) len:u8 addr:16   an interface address, 10.40.0.1/16
//! subnet   := family:u8(4|6) len:u8 addr:16   a prefix, host bits zero
//! ```
//!
//! Integers are big-endian; IPv4 addresses fill the first 4 of 16 bytes and
//! the other 12 must be zero. `issuer` is the CA certificate's fingerprint
//! (all zero in a self-signed CA certificate). The signature is Ed25519 over
//! every byte before it. The encoding is canonical (one encoding per value:
//! unknown flags, non-zero padding, host bits in subnets and trailing bytes
//! are refused), so the fingerprint, SHA-256 of the whole encoding,
//! identifies the certificate. `public_key` is the host's X25519 static key
//! in a host certificate and the CA's Ed25519 key in a CA certificate.

use crate::mesh::claims::{Claim, IpPrefix};
use crate::mesh::peer::MAX_NAME_LEN;
use crate::wire::ethernet::MacAddr;
use crate::wire::WireError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The encoding version this build writes and reads.
pub const CERT_VERSION: u8 = 1;
/// Largest encoded certificate accepted anywhere (gossip bounds records by it).
pub const MAX_CERT_LEN: usize = 4096;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
const ENTRY_LEN: usize = 18;
const MAC_LEN: usize = 6;
const FLAG_CA: u8 = 1;
const FLAG_ANY_MAC: u8 = 2;

/// SHA-256 of an encoded certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of encoded certificate bytes.
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Fingerprint> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in text.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Fingerprint(out))
    }

    /// The first 16 hex digits, for log lines.
    pub fn short(&self) -> String {
        self.to_string()[..16].to_string()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// An interface address with its prefix length, as `--overlay` takes it
/// (`10.40.0.1/16`): the host bits are the point, so they are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddr {
    /// The host's address.
    pub addr: IpAddr,
    /// The overlay subnet's prefix length.
    pub len: u8,
}

impl fmt::Display for InterfaceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Which MAC addresses a certificate lets its host claim (bridge mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MacPolicy {
    /// Exactly these (possibly none).
    List(Vec<MacAddr>),
    /// Any MAC address: a host bridging containers or VMs it does not know in advance.
    Any,
}

/// Everything a certificate states; the signature covers all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBody {
    /// A CA certificate (signs host certificates) rather than a host's.
    pub is_ca: bool,
    /// The host's (or CA's) name: 1 to 64 printable bytes.
    pub name: String,
    /// The host's X25519 static public key, or the CA's Ed25519 key.
    pub public_key: [u8; 32],
    /// Valid from (Unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (Unix seconds, exclusive).
    pub not_after: u64,
    /// The issuing CA certificate's fingerprint (zero when self-signed).
    pub issuer: Fingerprint,
    /// Interface addresses the host may use (`10.40.0.1/16`); in a CA
    /// certificate, prefixes every host address must lie in (none: any).
    pub overlay: Vec<InterfaceAddr>,
    /// Container subnets the host may claim; in a CA certificate, prefixes
    /// every host subnet must lie in (none: any).
    pub subnets: Vec<IpPrefix>,
    /// MAC addresses the host may claim.
    pub macs: MacPolicy,
}

/// A parsed certificate: what it states, its signature and its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The signed statements.
    pub body: CertBody,
    /// Ed25519 signature over the encoded body.
    pub signature: [u8; SIGNATURE_LEN],
    encoded: Vec<u8>,
    /// SHA-256 of `encoded`, computed once (revocation checks use it often).
    fingerprint: Fingerprint,
}

/// Why certificate bytes or text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertFormatError {
    /// The bytes are not a certificate of this version.
    #[error("not a weft certificate ({0})")]
    Wire(&'static str),
    /// The text has no `-----BEGIN WEFT CERTIFICATE-----` block, or bad base64 in it.
    #[error("no {0} block in the text (a file from `weft cert sign` or `weft ca new`)")]
    Armor(&'static str),
}

impl From<WireError> for CertFormatError {
    fn from(e: WireError) -> Self {
        CertFormatError::Wire(match e {
            WireError::Truncated => "truncated",
            WireError::Malformed => "malformed",
        })
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if rest.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u8(rest: &mut &[u8]) -> Result<u8, WireError> {
    Ok(take(rest, 1)?[0])
}

fn take_u64(rest: &mut &[u8]) -> Result<u64, WireError> {
    let b = take(rest, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_be_bytes(a))
}

fn take_32(rest: &mut &[u8]) -> Result<[u8; 32], WireError> {
    let mut a = [0u8; 32];
    a.copy_from_slice(take(rest, 32)?);
    Ok(a)
}

/// Decodes one `family len addr16` entry: the address and the length.
fn decode_entry(e: &[u8]) -> Result<(IpAddr, u8), WireError> {
    let (addr, max) = match e[0] {
        4 if e[6..18].iter().all(|&b| b == 0) => {
            (IpAddr::V4(Ipv4Addr::new(e[2], e[3], e[4], e[5])), 32)
        }
        6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&e[2..18]);
            (IpAddr::V6(Ipv6Addr::from(a)), 128)
        }
        _ => return Err(WireError::Malformed),
    };
    if e[1] > max {
        return Err(WireError::Malformed);
    }
    Ok((addr, e[1]))
}

fn put_entry(out: &mut Vec<u8>, addr: IpAddr, len: u8) {
    let mut a = [0u8; 16];
    let family = match addr {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            a.copy_from_slice(&v6.octets());
            6
        }
    };
    out.push(family);
    out.push(len);
    out.extend_from_slice(&a);
}

/// Whether a name is acceptable in a certificate: 1 to 64 bytes, no
/// control characters (it reaches logs and status).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

impl CertBody {
    /// The encoded body: the bytes the signature covers. Lists longer than
    /// 255 entries are refused by [`CertBody::check`] first.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(CERT_VERSION);
        let mut flags = 0;
        if self.is_ca {
            flags |= FLAG_CA;
        }
        if self.macs == MacPolicy::Any {
            flags |= FLAG_ANY_MAC;
        }
        out.push(flags);
        let name = &self.name.as_bytes()[..self.name.len().min(MAX_NAME_LEN)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        out.extend_from_slice(&self.issuer.0);
        let overlay = &self.overlay[..self.overlay.len().min(255)];
        out.push(overlay.len() as u8);
        for o in overlay {
            put_entry(&mut out, o.addr, o.len);
        }
        let subnets = &self.subnets[..self.subnets.len().min(255)];
        out.push(subnets.len() as u8);
        for s in subnets {
            put_entry(&mut out, s.addr(), s.len());
        }
        match &self.macs {
            MacPolicy::Any => out.push(0),
            MacPolicy::List(macs) => {
                let macs = &macs[..macs.len().min(255)];
                out.push(macs.len() as u8);
                for m in macs {
                    out.extend_from_slice(&m.0);
                }
            }
        }
        out
    }

    /// What is wrong with the body's values, for a person; `None` if
    /// nothing. `weft cert sign` and `weft ca new` refuse such a body.
    pub fn check(&self) -> Option<String> {
        if !valid_name(&self.name) {
            return Some(format!(
                "--name {:?}: a name is 1 to {MAX_NAME_LEN} bytes without control characters",
                self.name
            ));
        }
        if self.not_after <= self.not_before {
            return Some("the validity period is empty (--valid-for must be positive)".into());
        }
        if self.overlay.len() > 255 || self.subnets.len() > 255 {
            return Some("at most 255 --overlay and 255 --subnet values".into());
        }
        if let MacPolicy::List(m) = &self.macs {
            if m.len() > 255 {
                return Some("at most 255 --mac values".into());
            }
            for (i, a) in m.iter().enumerate() {
                if m[..i].contains(a) {
                    return Some(format!("--mac {a} is given twice"));
                }
            }
        }
        for (i, a) in self.overlay.iter().enumerate() {
            if let Some(b) = self.overlay[..i].iter().find(|b| b.addr == a.addr) {
                return Some(format!("--overlay {a} and {b} are the same address"));
            }
        }
        for (i, a) in self.subnets.iter().enumerate() {
            if let Some(b) = self.subnets[..i].iter().find(|b| b.overlaps(a)) {
                return Some(format!("--subnet {a} overlaps --subnet {b}"));
            }
        }
        None
    }
}

impl Certificate {
    /// Parses encoded certificate bytes. Total: every length and tag is
    /// checked before it is used, nothing is allocated before its bytes
    /// are there, and trailing bytes are an error. The signature is not
    /// checked here (see [`super::Trust`]).
    pub fn parse(bytes: &[u8]) -> Result<Certificate, CertFormatError> {
        if bytes.len() > MAX_CERT_LEN {
            return Err(CertFormatError::Wire("longer than any certificate"));
        }
        let mut rest = bytes;
        if take_u8(&mut rest)? != CERT_VERSION {
            return Err(CertFormatError::Wire("unknown version"));
        }
        let flags = take_u8(&mut rest)?;
        if flags & !(FLAG_CA | FLAG_ANY_MAC) != 0 {
            return Err(WireError::Malformed.into());
        }
        let name_len = usize::from(take_u8(&mut rest)?);
        let name =
            std::str::from_utf8(take(&mut rest, name_len)?).map_err(|_| WireError::Malformed)?;
        if !valid_name(name) {
            return Err(WireError::Malformed.into());
        }
        let public_key = take_32(&mut rest)?;
        let not_before = take_u64(&mut rest)?;
        let not_after = take_u64(&mut rest)?;
        let issuer = Fingerprint(take_32(&mut rest)?);
        let n = usize::from(take_u8(&mut rest)?);
        let overlay = take(&mut rest, n * ENTRY_LEN)?
            .chunks_exact(ENTRY_LEN)
            .map(|e| decode_entry(e).map(|(addr, len)| InterfaceAddr { addr, len }))
            .collect::<Result<Vec<_>, _>>()?;
        let n = usize::from(take_u8(&mut rest)?);
        let subnets = take(&mut rest, n * ENTRY_LEN)?
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                let (addr, len) = decode_entry(e)?;
                // Canonical: host bits zero.
                IpPrefix::new(addr, len)
                    .filter(|p| p.addr() == addr)
                    .ok_or(WireError::Malformed)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n = usize::from(take_u8(&mut rest)?);
        let mac_bytes = take(&mut rest, n * MAC_LEN)?;
        let macs = if flags & FLAG_ANY_MAC != 0 {
            if n != 0 {
                return Err(WireError::Malformed.into());
            }
            MacPolicy::Any
        } else {
            MacPolicy::List(
                mac_bytes
                    .chunks_exact(MAC_LEN)
                    .filter_map(MacAddr::from_bytes)
                    .collect(),
            )
        };
        let body_len = bytes.len() - rest.len();
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(take(&mut rest, SIGNATURE_LEN)?);
        if !rest.is_empty() {
            return Err(CertFormatError::Wire("trailing bytes"));
        }
        let body = CertBody {
            is_ca: flags & FLAG_CA != 0,
            name: name.to_string(),
            public_key,
            not_before,
            not_after,
            issuer,
            overlay,
            subnets,
            macs,
        };
        debug_assert_eq!(body.encode().len(), body_len);
        Ok(Certificate {
            body,
            signature,
            encoded: bytes.to_vec(),
            fingerprint: Fingerprint::of(bytes),
        })
    }

    /// Signs `body` with an Ed25519 key.
    pub fn sign(body: CertBody, key: &ring::signature::Ed25519KeyPair) -> Certificate {
        let mut encoded = body.encode();
        let sig = key.sign(&encoded);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(sig.as_ref());
        encoded.extend_from_slice(&signature);
        Certificate {
            body,
            signature,
            fingerprint: Fingerprint::of(&encoded),
            encoded,
        }
    }

    /// The whole encoding, signature included.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.encoded[..self.encoded.len() - SIGNATURE_LEN]
    }

    /// SHA-256 of the encoding.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whether the signature verifies under the Ed25519 public key `signer`.
    pub fn signed_by(&self, signer: &[u8; 32]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, signer)
            .verify(self.signed_bytes(), &self.signature)
            .is_ok()
    }

    /// Whether the certificate lets its host claim `claim`:
    ///
    /// - an IP claim is covered when it is exactly one of the certificate's
    ///   overlay addresses (a /32 or /128: the prefix length written with
    ///   the address is the device's subnet and grants nothing more), or
    ///   lies inside one of its subnets;
    /// - a MAC claim is covered when the MAC is listed or the certificate
    ///   allows any MAC.
    pub fn covers(&self, claim: &Claim) -> bool {
        match claim {
            Claim::Ip(p) => {
                self.body
                    .overlay
                    .iter()
                    .any(|o| IpPrefix::host(o.addr) == *p)
                    || self.body.subnets.iter().any(|s| s.contains(p))
            }
            Claim::Mac(m) => match &self.body.macs {
                MacPolicy::Any => true,
                MacPolicy::List(list) => list.contains(m),
            },
        }
    }

    /// The armored text form (for files).
    pub fn to_armored(&self) -> String {
        armor(ARMOR_CERT, &self.encoded)
    }

    /// Reads the armored text form.
    pub fn from_armored(text: &str) -> Result<Certificate, CertFormatError> {
        Certificate::parse(&dearmor(ARMOR_CERT, text)?)
    }
}

/// Label of an armored certificate.
pub const ARMOR_CERT: &str = "WEFT CERTIFICATE";
/// Label of an armored CA private key (PKCS#8, Ed25519).
pub const ARMOR_CA_KEY: &str = "WEFT CA PRIVATE KEY";

/// `-----BEGIN label-----`, base64 in lines of 64, `-----END label-----`.
pub fn armor(label: &str, bytes: &[u8]) -> String {
    let b64 = B64.encode(bytes);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The bytes of the first `label` block in `text` (text around it ignored).
pub fn dearmor(label: &'static str, text: &str) -> Result<Vec<u8>, CertFormatError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or(CertFormatError::Armor(label))? + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or(CertFormatError::Armor(label))?;
    let b64: String = text[start..start + stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if b64.len() > MAX_CERT_LEN * 2 {
        return Err(CertFormatError::Armor(label));
    }
    B64.decode(b64).map_err(|_| CertFormatError::Armor(label))
}

/// Unix seconds as a UTC date and time, `2026-01-01 00:00:00 UTC`.
pub fn utc_text(secs: u64) -> String {
    // Civil-from-days (H. Hinnant), on days since 1970-01-01.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
