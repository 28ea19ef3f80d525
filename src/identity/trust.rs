//! Which certificates a host accepts: the CA certificates it was given,
//! the revoked fingerprints, and the time (always an input, never read
//! here, so the mesh node stays sans-IO).

use super::cert::{utc_text, CertFormatError, Certificate, Fingerprint};
use crate::mesh::claims::IpPrefix;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// Why a certificate is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertRefusal {
    /// None was presented, in a network that requires one.
    Missing,
    /// The bytes are not a certificate.
    Malformed(String),
    /// A CA certificate where a host's was expected.
    IsCa,
    /// Issued by no CA this host trusts.
    UnknownIssuer(Fingerprint),
    /// The signature does not verify under its CA.
    BadSignature,
    /// Its validity starts later.
    NotYetValid(u64),
    /// Its validity ended.
    Expired(u64),
    /// Its fingerprint is on the revocation list.
    Revoked(Fingerprint),
    /// The issuing CA's certificate is expired or not yet valid.
    CaNotValid(u64),
    /// The issuing CA's fingerprint is on the revocation list.
    CaRevoked(Fingerprint),
    /// It names another host's key.
    KeyMismatch,
    /// It grants something outside what its CA may grant.
    OutsideCa(String),
}

impl fmt::Display for CertRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertRefusal::Missing => f.write_str("has no certificate (this network requires one: `weft cert sign`, then launch with --cert)"),
            CertRefusal::Malformed(e) => write!(f, "its certificate is unreadable ({e})"),
            CertRefusal::IsCa => f.write_str("presents a CA certificate instead of a host certificate"),
            CertRefusal::UnknownIssuer(i) => write!(f, "its certificate is issued by CA {} which is not among --ca-cert", i.short()),
            CertRefusal::BadSignature => f.write_str("its certificate's signature does not verify (altered or forged)"),
            CertRefusal::NotYetValid(t) => write!(f, "its certificate is not valid yet (from {})", utc_text(*t)),
            CertRefusal::Expired(t) => write!(f, "its certificate expired {}", utc_text(*t)),
            CertRefusal::Revoked(fp) => write!(f, "its certificate {} is revoked", fp.short()),
            CertRefusal::CaNotValid(t) => write!(f, "its certificate's CA is outside its validity period (until {})", utc_text(*t)),
            CertRefusal::CaRevoked(fp) => write!(f, "its certificate's CA {} is revoked", fp.short()),
            CertRefusal::KeyMismatch => f.write_str("its certificate belongs to another key (the handshake key differs)"),
            CertRefusal::OutsideCa(what) => write!(f, "its certificate grants {what}, outside what its CA may grant"),
        }
    }
}

impl From<CertFormatError> for CertRefusal {
    fn from(e: CertFormatError) -> Self {
        CertRefusal::Malformed(e.to_string())
    }
}

/// The CA certificates a host trusts and the fingerprints it refuses.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    cas: Vec<(Fingerprint, Certificate)>,
    revoked: Arc<HashSet<Fingerprint>>,
}

impl Trust {
    /// Trusts these CA certificates; each must be a self-signed CA
    /// certificate. The error names the offending one by its position.
    pub fn new(cas: Vec<Certificate>) -> Result<Trust, String> {
        let mut out = Vec::with_capacity(cas.len());
        for (i, ca) in cas.into_iter().enumerate() {
            let n = i + 1;
            if !ca.body.is_ca {
                return Err(format!("CA certificate {n} ({}) is a host certificate, not a CA certificate (make one with `weft ca new`)", ca.body.name));
            }
            if !ca.signed_by(&ca.body.public_key) {
                return Err(format!(
                    "CA certificate {n} ({}) is not validly self-signed",
                    ca.body.name
                ));
            }
            out.push((ca.fingerprint(), ca));
        }
        Ok(Trust {
            cas: out,
            revoked: Arc::new(HashSet::new()),
        })
    }

    /// Replaces the revocation list.
    pub fn set_revoked(&mut self, revoked: Arc<HashSet<Fingerprint>>) {
        self.revoked = revoked;
    }

    /// The revocation list.
    pub fn revoked(&self) -> &Arc<HashSet<Fingerprint>> {
        &self.revoked
    }

    fn ca(&self, fp: &Fingerprint) -> Option<&Certificate> {
        self.cas.iter().find(|(f, _)| f == fp).map(|(_, c)| c)
    }

    /// The checks that do not change with time or revocation: a host
    /// certificate, issued by a trusted CA, correctly signed, within the
    /// CA's constraints. Done once per certificate received.
    pub fn authenticate(&self, bytes: &[u8]) -> Result<Certificate, CertRefusal> {
        let cert = Certificate::parse(bytes)?;
        if cert.body.is_ca {
            return Err(CertRefusal::IsCa);
        }
        let ca = self
            .ca(&cert.body.issuer)
            .ok_or(CertRefusal::UnknownIssuer(cert.body.issuer))?;
        if !cert.signed_by(&ca.body.public_key) {
            return Err(CertRefusal::BadSignature);
        }
        if let Some(what) = outside_ca(ca, &cert) {
            return Err(CertRefusal::OutsideCa(what));
        }
        Ok(cert)
    }

    /// The checks that change with time and the revocation list, for a
    /// certificate [`authenticate`](Self::authenticate) accepted.
    pub fn check_current(&self, cert: &Certificate, unix_now: u64) -> Result<(), CertRefusal> {
        let fp = cert.fingerprint();
        if self.revoked.contains(&fp) {
            return Err(CertRefusal::Revoked(fp));
        }
        if self.revoked.contains(&cert.body.issuer) {
            return Err(CertRefusal::CaRevoked(cert.body.issuer));
        }
        if let Some(ca) = self.ca(&cert.body.issuer) {
            if unix_now < ca.body.not_before || unix_now >= ca.body.not_after {
                return Err(CertRefusal::CaNotValid(ca.body.not_after));
            }
        }
        if unix_now < cert.body.not_before {
            return Err(CertRefusal::NotYetValid(cert.body.not_before));
        }
        if unix_now >= cert.body.not_after {
            return Err(CertRefusal::Expired(cert.body.not_after));
        }
        Ok(())
    }

    /// Everything a peer's certificate must pass: authentic, current, and
    /// for `key` (the static key the handshake authenticated).
    pub fn verify_peer(
        &self,
        bytes: Option<&[u8]>,
        key: &[u8; 32],
        unix_now: u64,
    ) -> Result<Certificate, CertRefusal> {
        let cert = self.authenticate(bytes.ok_or(CertRefusal::Missing)?)?;
        if cert.body.public_key != *key {
            return Err(CertRefusal::KeyMismatch);
        }
        self.check_current(&cert, unix_now)?;
        Ok(cert)
    }

    /// The earliest moment after `unix_now` at which `cert`'s standing can
    /// change with time alone (its or its CA's start or end).
    pub fn next_change(&self, cert: &Certificate, unix_now: u64) -> Option<u64> {
        let ca = self.ca(&cert.body.issuer);
        [
            Some(cert.body.not_before),
            Some(cert.body.not_after),
            ca.map(|c| c.body.not_before),
            ca.map(|c| c.body.not_after),
        ]
        .into_iter()
        .flatten()
        .filter(|&t| t > unix_now)
        .min()
    }
}

/// What a host certificate grants beyond its CA's constraints (a CA
/// certificate with overlay or subnet prefixes limits every address and
/// subnet it signs to them; without any, it may sign any; MACs are not
/// constrained).
pub fn outside_ca(ca: &Certificate, cert: &Certificate) -> Option<String> {
    let limits: Vec<IpPrefix> = ca
        .body
        .overlay
        .iter()
        .filter_map(|o| IpPrefix::new(o.addr, o.len))
        .chain(ca.body.subnets.iter().copied())
        .collect();
    if limits.is_empty() {
        return None;
    }
    let inside = |p: &IpPrefix| limits.iter().any(|l| l.contains(p));
    for o in &cert.body.overlay {
        if !inside(&IpPrefix::host(o.addr)) {
            return Some(format!("overlay address {o}"));
        }
    }
    for s in &cert.body.subnets {
        if !inside(s) {
            return Some(format!("subnet {s}"));
        }
    }
    None
}

/// Parses a revocation list: one hex fingerprint per line; `#` starts a
/// comment; blank lines are skipped. The error names the line.
pub fn parse_revocation_list(text: &str) -> Result<HashSet<Fingerprint>, String> {
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fp = Fingerprint::from_hex(line).ok_or_else(|| {
            format!(
                "line {}: {:?} is not a certificate fingerprint (64 hex digits, as `weft cert show` prints)",
                i + 1,
                crate::mesh::peer::untrusted_text(line)
            )
        })?;
        out.insert(fp);
    }
    Ok(out)
}

/// The revocation list file of a running host: re-read when its
/// modification time or size changes (checked on a timer) or on SIGHUP.
#[derive(Debug)]
pub struct RevocationFile {
    path: std::path::PathBuf,
    stamp: Option<(std::time::SystemTime, u64)>,
}

impl RevocationFile {
    /// Reads the file once; an unreadable or malformed file is an error
    /// naming it.
    pub fn open(
        path: std::path::PathBuf,
    ) -> Result<(RevocationFile, HashSet<Fingerprint>), String> {
        let mut file = RevocationFile { path, stamp: None };
        let list = file.read()?;
        Ok((file, list))
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn read(&mut self) -> Result<HashSet<Fingerprint>, String> {
        let what = |e: String| format!("revocation list {}: {e}", self.path.display());
        let meta = std::fs::metadata(&self.path).map_err(|e| what(e.to_string()))?;
        let text = std::fs::read_to_string(&self.path).map_err(|e| what(e.to_string()))?;
        let list = parse_revocation_list(&text).map_err(what)?;
        self.stamp = Some((
            meta.modified().map_err(|e| what(e.to_string()))?,
            meta.len(),
        ));
        Ok(list)
    }

    /// The list anew if the file changed since it was last read (or
    /// `force`); `None` if unchanged. On an error the old list stays in
    /// force and the file is tried again when it changes.
    pub fn reload(&mut self, force: bool) -> Option<Result<HashSet<Fingerprint>, String>> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if !force && stamp.is_some() && stamp == self.stamp {
            return None;
        }
        if !force && stamp.is_none() && self.stamp.is_none() {
            return None;
        }
        let result = self.read();
        if result.is_err() {
            self.stamp = stamp;
        }
        Some(result)
    }
}
