//! Identity bound to what a host may claim: a network certificate
//! authority in the spirit of Nebula's, all in the one binary.
//!
//! - `weft ca new` makes an Ed25519 CA key (kept offline) and its
//!   self-signed CA certificate;
//! - `weft cert sign` makes a host certificate binding the host's X25519
//!   static key to its name, overlay addresses, container subnets and MACs,
//!   for a limited time;
//! - hosts launched with `--ca-cert` require every peer to present a
//!   certificate in its hello (after the Noise handshake revealed and
//!   authenticated the static keys) for the key it authenticated with, and
//!   accept a peer's gossiped claims only where its certificate covers them
//!   (see [`Certificate::covers`]);
//! - a revocation list of fingerprints, re-read while running, closes the
//!   connections of revoked hosts and drops their claims.
//!
//! [`cert`] is the format (sans-IO, total parser); [`trust`] the decisions,
//! with the time always an input; [`commands`] the command line.

pub mod cert;
pub mod commands;
pub mod trust;

pub use cert::{Certificate, Fingerprint, InterfaceAddr, MacPolicy, MAX_CERT_LEN};
pub use trust::{parse_revocation_list, CertRefusal, Trust};

#[cfg(test)]
mod tests {
    use super::cert::{CertBody, ARMOR_CERT};
    use super::*;
    use crate::mesh::claims::{Claim, IpPrefix};
    use crate::wire::ethernet::MacAddr;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    use std::collections::HashSet;
    use std::sync::Arc;

    const NOW: u64 = 1_800_000_000;

    fn ca(name: &str, limits: &[&str]) -> (Ed25519KeyPair, Certificate) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(key.public_key().as_ref());
        let body = CertBody {
            is_ca: true,
            name: name.into(),
            public_key,
            not_before: NOW - 1000,
            not_after: NOW + 100_000,
            issuer: Fingerprint::default(),
            overlay: vec![],
            subnets: limits.iter().map(|l| l.parse().unwrap()).collect(),
            macs: MacPolicy::List(vec![]),
        };
        let cert = Certificate::sign(body, &key);
        (key, cert)
    }

    fn host(ca: &(Ed25519KeyPair, Certificate), key: u8, overlay: &str) -> Certificate {
        let (addr, len) = overlay.split_once('/').unwrap();
        let body = CertBody {
            is_ca: false,
            name: format!("host{key}"),
            public_key: [key; 32],
            not_before: NOW - 10,
            not_after: NOW + 1000,
            issuer: ca.1.fingerprint(),
            overlay: vec![InterfaceAddr {
                addr: addr.parse().unwrap(),
                len: len.parse().unwrap(),
            }],
            subnets: vec!["10.41.0.0/24".parse().unwrap()],
            macs: MacPolicy::List(vec![MacAddr([2, 0, 0, 0, 0, 1])]),
        };
        Certificate::sign(body, &ca.0)
    }

    fn ip(s: &str) -> Claim {
        Claim::Ip(s.parse::<IpPrefix>().unwrap())
    }

    #[test]
    fn encode_parse_round_trip_and_armor() {
        let ca = ca("net", &[]);
        let cert = host(&ca, 7, "10.40.0.1/16");
        let again = Certificate::parse(cert.encoded()).unwrap();
        assert_eq!(again, cert);
        let text = cert.to_armored();
        assert!(text.starts_with(&format!("-----BEGIN {ARMOR_CERT}-----\n")));
        assert_eq!(
            Certificate::from_armored(&format!("# comment\n{text}trailer")).unwrap(),
            cert
        );
        assert_eq!(cert.fingerprint(), Fingerprint::of(cert.encoded()));
        let hex = cert.fingerprint().to_string();
        assert_eq!(
            Fingerprint::from_hex(&hex.to_uppercase()),
            Some(cert.fingerprint())
        );
        // Every truncation is refused, never a panic.
        for n in 0..cert.encoded().len() {
            assert!(
                Certificate::parse(&cert.encoded()[..n]).is_err(),
                "prefix {n}"
            );
        }
        let mut long = cert.encoded().to_vec();
        long.push(0);
        assert!(Certificate::parse(&long).is_err());
    }

    #[test]
    fn verification_refuses_tampering_wrong_ca_time_and_revocation() {
        let net = ca("net", &[]);
        let trust = Trust::new(vec![net.1.clone()]).unwrap();
        let cert = host(&net, 7, "10.40.0.1/16");
        let ok = trust
            .verify_peer(Some(cert.encoded()), &[7; 32], NOW)
            .unwrap();
        assert_eq!(ok, cert);
        // Any flipped bit: unreadable or a bad signature, never accepted.
        for i in 0..cert.encoded().len() {
            let mut bytes = cert.encoded().to_vec();
            bytes[i] ^= 0x10;
            assert!(
                trust.verify_peer(Some(&bytes), &[7; 32], NOW).is_err(),
                "byte {i}"
            );
        }
        // Another CA with the same name.
        let other = ca("net", &[]);
        let foreign = host(&other, 7, "10.40.0.1/16");
        assert!(matches!(
            trust.verify_peer(Some(foreign.encoded()), &[7; 32], NOW),
            Err(CertRefusal::UnknownIssuer(_))
        ));
        // Signed by another key while naming our CA as issuer.
        let mut forged = host(&other, 7, "10.40.0.1/16").body;
        forged.issuer = net.1.fingerprint();
        let forged = Certificate::sign(forged, &other.0);
        assert_eq!(
            trust.verify_peer(Some(forged.encoded()), &[7; 32], NOW),
            Err(CertRefusal::BadSignature)
        );
        assert_eq!(
            trust.verify_peer(Some(cert.encoded()), &[8; 32], NOW),
            Err(CertRefusal::KeyMismatch)
        );
        assert_eq!(
            trust.verify_peer(None, &[7; 32], NOW),
            Err(CertRefusal::Missing)
        );
        assert_eq!(
            trust.verify_peer(Some(net.1.encoded()), &[7; 32], NOW),
            Err(CertRefusal::IsCa)
        );
        assert_eq!(
            trust.verify_peer(Some(cert.encoded()), &[7; 32], NOW + 1000),
            Err(CertRefusal::Expired(NOW + 1000))
        );
        assert_eq!(
            trust.verify_peer(Some(cert.encoded()), &[7; 32], NOW - 11),
            Err(CertRefusal::NotYetValid(NOW - 10))
        );
        assert_eq!(trust.next_change(&cert, NOW), Some(NOW + 1000));
        let mut revoking = trust.clone();
        revoking.set_revoked(Arc::new(HashSet::from([cert.fingerprint()])));
        assert_eq!(
            revoking.verify_peer(Some(cert.encoded()), &[7; 32], NOW),
            Err(CertRefusal::Revoked(cert.fingerprint()))
        );
        revoking.set_revoked(Arc::new(HashSet::from([net.1.fingerprint()])));
        assert!(matches!(
            revoking.verify_peer(Some(cert.encoded()), &[7; 32], NOW),
            Err(CertRefusal::CaRevoked(_))
        ));
        // A host certificate is no CA.
        assert!(Trust::new(vec![cert]).is_err());
    }

    #[test]
    fn covers_exact_addresses_subnets_and_macs() {
        let net = ca("net", &[]);
        let cert = host(&net, 7, "10.40.0.1/16");
        assert!(cert.covers(&ip("10.40.0.1/32")));
        // The /16 of the interface address grants nothing more.
        assert!(!cert.covers(&ip("10.40.0.2/32")));
        assert!(!cert.covers(&ip("10.40.0.0/16")));
        assert!(cert.covers(&ip("10.41.0.0/24")));
        assert!(cert.covers(&ip("10.41.0.9/32")));
        assert!(!cert.covers(&ip("10.41.0.0/16")));
        assert!(cert.covers(&Claim::Mac(MacAddr([2, 0, 0, 0, 0, 1]))));
        assert!(!cert.covers(&Claim::Mac(MacAddr([2, 0, 0, 0, 0, 2]))));
        let mut any = cert.body.clone();
        any.macs = MacPolicy::Any;
        let any = Certificate::sign(any, &net.0);
        assert!(any.covers(&Claim::Mac(MacAddr([2, 0, 0, 0, 0, 2]))));
        assert_eq!(
            Certificate::parse(any.encoded()).unwrap().body.macs,
            MacPolicy::Any
        );
    }

    #[test]
    fn a_limited_ca_signs_only_inside_its_prefixes() {
        let net = ca("net", &["10.40.0.0/16", "10.41.0.0/16"]);
        let trust = Trust::new(vec![net.1.clone()]).unwrap();
        let inside = host(&net, 7, "10.40.0.1/16");
        assert!(trust.authenticate(inside.encoded()).is_ok());
        let outside = host(&net, 7, "10.50.0.1/16");
        assert!(matches!(
            trust.authenticate(outside.encoded()),
            Err(CertRefusal::OutsideCa(_))
        ));
    }

    #[test]
    fn revocation_file_is_read_again_only_when_it_changes() {
        use trust::RevocationFile;
        let dir = std::env::temp_dir().join(format!("weft-revocation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revoked");
        assert!(
            RevocationFile::open(path.clone()).is_err(),
            "a missing file"
        );
        std::fs::write(&path, "# none yet\n").unwrap();
        let (mut file, list) = RevocationFile::open(path.clone()).unwrap();
        assert!(list.is_empty());
        assert!(file.reload(false).is_none(), "unchanged");
        assert_eq!(
            file.reload(true),
            Some(Ok(HashSet::new())),
            "SIGHUP reads anyway"
        );
        let fp = Fingerprint([0xab; 32]);
        std::fs::write(&path, format!("# one\n{fp}\n")).unwrap();
        assert_eq!(file.reload(false), Some(Ok(HashSet::from([fp]))));
        std::fs::write(&path, "# a broken line\nxyz\n").unwrap();
        assert!(matches!(file.reload(false), Some(Err(e)) if e.contains("line 2")));
        // A broken file is not read again until it changes.
        assert!(file.reload(false).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn body_checks_and_text_helpers() {
        let net = ca("net", &[]);
        let mut body = host(&net, 7, "10.40.0.1/16").body;
        assert_eq!(body.check(), None);
        body.subnets.push("10.41.0.128/25".parse().unwrap());
        assert!(body.check().unwrap().contains("overlaps"));
        body.subnets.pop();
        body.name = "bad\nname".into();
        assert!(body.check().is_some());
        assert_eq!(cert::utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(cert::utc_text(1_767_225_600), "2026-01-01 00:00:00 UTC");
        assert_eq!(commands::parse_duration("365d"), Ok(365 * 86_400));
        assert!(commands::parse_duration("0d").is_err());
        assert!(commands::parse_duration("12").is_err());
        assert!(commands::parse_duration("").is_err());
        let fp = net.1.fingerprint();
        let list = format!("# revoked\n\n{fp}  # host9\n");
        assert_eq!(parse_revocation_list(&list).unwrap(), HashSet::from([fp]));
        assert!(parse_revocation_list("nothex\n")
            .unwrap_err()
            .starts_with("line 1"));
    }
}
