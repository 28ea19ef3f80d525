//! The data-plane AEAD: Noise's cipher functions (ChaChaPoly or AESGCM)
//! with an explicit 64-bit counter as the nonce, sealed in place with `ring`.
//!
//! The nonce layout is exactly Noise's (section 12): 32 zero bits then the
//! counter, little-endian for ChaChaPoly and big-endian for AESGCM, so a
//! sealed payload is a standard Noise transport message. Unlike `snow`, this
//! works in place, saving a copy per packet.

use ring::aead::{self, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use serde::{Deserialize, Serialize};

/// Which AEAD seals data packets. Both ends must use the same one: it is
/// agreed in the control Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum CipherKind {
    /// ChaCha20-Poly1305: constant-time everywhere, the safe default.
    ChaChaPoly,
    /// AES-256-GCM: about 3x faster on CPUs with AES-NI and CLMUL.
    AesGcm,
}

impl CipherKind {
    /// The Noise name of this cipher.
    pub const fn noise_name(self) -> &'static str {
        match self {
            CipherKind::ChaChaPoly => "ChaChaPoly",
            CipherKind::AesGcm => "AESGCM",
        }
    }

    /// Short name used in status and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            CipherKind::ChaChaPoly => "chacha20poly1305",
            CipherKind::AesGcm => "aes256gcm",
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            CipherKind::ChaChaPoly => &aead::CHACHA20_POLY1305,
            CipherKind::AesGcm => &aead::AES_256_GCM,
        }
    }
}

/// True when this CPU has the instructions that make AES-GCM fast and
/// constant-time (AES-NI and carry-less multiply).
pub fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Length of the authentication tag.
pub const TAG_LEN: usize = 16;

/// One direction's key.
///
/// ring's `LessSafeKey` keeps its expanded key schedule private and offers
/// no way to wipe it, so it cannot be zeroized here; the raw key bytes it was
/// made from live in [`super::handshake::DataKeys`], which wipes them on
/// drop, and nothing else keeps a copy.
pub struct DataCipher {
    kind: CipherKind,
    key: LessSafeKey,
}

impl std::fmt::Debug for DataCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataCipher")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The AEAD refused: wrong key, corrupted or forged data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

impl DataCipher {
    /// Builds a cipher from a 32-byte key.
    pub fn new(kind: CipherKind, key: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(kind.algorithm(), key).expect("32-byte keys fit both AEADs");
        DataCipher {
            kind,
            key: LessSafeKey::new(unbound),
        }
    }

    /// Which AEAD this is.
    pub fn kind(&self) -> CipherKind {
        self.kind
    }

    fn nonce(&self, counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        match self.kind {
            CipherKind::ChaChaPoly => n[4..].copy_from_slice(&counter.to_le_bytes()),
            CipherKind::AesGcm => n[4..].copy_from_slice(&counter.to_be_bytes()),
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub fn seal(&self, counter: u64, ad: &[u8], in_out: &mut [u8]) -> Tag {
        self.key
            .seal_in_place_separate_tag(self.nonce(counter), Aad::from(ad), in_out)
            .expect("ring only fails sealing for inputs over 2^32 blocks")
    }

    /// Decrypts `in_out` (ciphertext then tag) in place; returns the length
    /// of the plaintext at its start.
    pub fn open(&self, counter: u64, ad: &[u8], in_out: &mut [u8]) -> Result<usize, AeadError> {
        self.key
            .open_in_place(self.nonce(counter), Aad::from(ad), in_out)
            .map(|p| p.len())
            .map_err(|_| AeadError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our in-place sealing must produce byte-identical Noise transport
    /// messages to `snow` for the same key and nonce.
    #[test]
    fn matches_snow_transport_messages() {
        for kind in [CipherKind::ChaChaPoly, CipherKind::AesGcm] {
            let name = format!("Noise_NN_25519_{}_BLAKE2s", kind.noise_name());
            let mut i = snow::Builder::new(name.parse().unwrap())
                .build_initiator()
                .unwrap();
            let mut r = snow::Builder::new(name.parse().unwrap())
                .build_responder()
                .unwrap();
            let mut m = [0u8; 256];
            let mut p = [0u8; 256];
            let n = i.write_message(&[], &mut m).unwrap();
            r.read_message(&m[..n], &mut p).unwrap();
            let n = r.write_message(&[], &mut m).unwrap();
            i.read_message(&m[..n], &mut p).unwrap();
            let (k_i2r, _) = i.dangerously_get_raw_split();
            let snow_i = i.into_stateless_transport_mode().unwrap();

            let ours = DataCipher::new(kind, &k_i2r);
            for counter in [0u64, 1, 7, 1 << 40] {
                let payload = b"a frame that crosses the overlay";
                let mut snow_msg = [0u8; 128];
                let len = snow_i
                    .write_message(counter, payload, &mut snow_msg)
                    .unwrap();
                let mut buf = payload.to_vec();
                let tag = ours.seal(counter, &[], &mut buf);
                buf.extend_from_slice(tag.as_ref());
                assert_eq!(&buf[..], &snow_msg[..len], "{kind:?} counter {counter}");
                let plain = ours.open(counter, &[], &mut buf).unwrap();
                assert_eq!(&buf[..plain], payload);
            }
        }
    }

    #[test]
    fn rejects_wrong_counter_ad_and_bitflips() {
        let c = DataCipher::new(CipherKind::AesGcm, &[7u8; 32]);
        let mut buf = b"hello world".to_vec();
        let tag = c.seal(3, b"hdr", &mut buf);
        buf.extend_from_slice(tag.as_ref());
        assert!(c.open(4, b"hdr", &mut buf.clone()).is_err());
        assert!(c.open(3, b"hdX", &mut buf.clone()).is_err());
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 1;
            assert!(c.open(3, b"hdr", &mut b).is_err(), "flip at {i} accepted");
        }
        assert_eq!(c.open(3, b"hdr", &mut buf), Ok(11));
    }
}
