//! Static X25519 keys and the network secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::path::Path;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A host's long-term X25519 private key. Wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StaticKey {
    private: [u8; 32],
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKey(public {})", self.public_base64())
    }
}

/// Why a key or secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key text is not base64 of 32 bytes.
    #[error("{what} is not a base64-encoded 32-byte X25519 key (make one with `weft keygen`)")]
    BadKey {
        /// Where the key came from.
        what: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The secret is empty.
    #[error("{what} is empty: put the network secret in it (for example `head -c 32 /dev/urandom | base64 > secret`)")]
    EmptySecret {
        /// Where the secret came from.
        what: String,
    },
    /// The secret is too short to resist guessing.
    #[error("{what} holds {len} bytes: a network secret must have at least {MIN_SECRET_LEN} (one captured handshake lets anyone guess a short one offline); make one with `weft secret new FILE` (32 random bytes)")]
    ShortSecret {
        /// Where the secret came from.
        what: String,
        /// Its length without trailing whitespace.
        len: usize,
    },
}

/// Fewest bytes a user-given network secret may have.
pub const MIN_SECRET_LEN: usize = 16;

impl StaticKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut private = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut private)
            .expect("the OS random source works");
        StaticKey { private }
    }

    /// Parses base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str, what: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| KeyError::BadKey { what: what.into() })?,
        );
        let private: [u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| KeyError::BadKey { what: what.into() })?;
        Ok(StaticKey { private })
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        Self::from_base64(&text, &format!("key file {}", path.display()))
    }

    /// The private key bytes (for the Noise handshake).
    pub fn private_bytes(&self) -> &[u8; 32] {
        &self.private
    }

    /// The private key as base64.
    pub fn private_base64(&self) -> String {
        B64.encode(self.private)
    }

    /// The X25519 public key.
    pub fn public(&self) -> [u8; 32] {
        // x25519-dalek's StaticSecret wipes itself on drop (its `zeroize`
        // feature is on by default).
        let secret = x25519_dalek::StaticSecret::from(self.private);
        *x25519_dalek::PublicKey::from(&secret).as_bytes()
    }

    /// The public key as base64.
    pub fn public_base64(&self) -> String {
        B64.encode(self.public())
    }
}

/// Short printable form of a public key for logs and status.
pub fn short_key(public: &[u8; 32]) -> String {
    let full = B64.encode(public);
    full[..8].to_string()
}

/// The network secret: every host of one network shares it. It is mixed
/// into every handshake as the Noise PSK. Wiped from memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct NetworkSecret {
    psk: [u8; 32],
    #[zeroize(skip)]
    stretched: bool,
}

impl std::fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkSecret(..)")
    }
}

/// Fewest bytes of key material in a secret file for it to count as a key
/// (what `weft secret new` writes) rather than a passphrase.
pub const KEY_SECRET_LEN: usize = 32;

/// Argon2id memory cost in KiB (64 MiB): a guess costs this much memory.
pub const PASSPHRASE_M_COST_KIB: u32 = 64 * 1024;
/// Argon2id passes over the memory.
pub const PASSPHRASE_T_COST: u32 = 3;
/// Argon2id lanes.
pub const PASSPHRASE_P_COST: u32 = 1;
/// Argon2id salt: fixed, since every host must derive the same PSK from the
/// same passphrase; it separates weft's PSKs from any other use of the
/// passphrase (no precomputed tables shared with other software).
const PASSPHRASE_SALT: &[u8] = b"weft network passphrase v1";

/// Argon2id parameters for stretching a passphrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StretchParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl StretchParams {
    /// The parameters every weft host uses (see the README's "Security
    /// model"): m = 64 MiB, t = 3, p = 1.
    pub const NETWORK: StretchParams = StretchParams {
        m_cost_kib: PASSPHRASE_M_COST_KIB,
        t_cost: PASSPHRASE_T_COST,
        p_cost: PASSPHRASE_P_COST,
    };
}

/// Whether user-given secret text is key material made by a machine
/// (base64 of at least [`KEY_SECRET_LEN`] bytes, as `weft secret new`
/// writes) rather than a passphrase a person chose.
pub fn is_key_material(trimmed: &[u8]) -> bool {
    let text = trimmed.trim_ascii();
    B64.decode(text)
        .map(|bytes| Zeroizing::new(bytes).len() >= KEY_SECRET_LEN)
        .unwrap_or(false)
}

/// Argon2id(passphrase, fixed salt) with `params`: the PSK of a
/// passphrase-like secret. Memory-hard, so an offline guess from a
/// captured handshake costs `params.m_cost_kib` KiB and `t_cost` passes
/// instead of one SHA-256.
pub fn stretch_passphrase(passphrase: &[u8], params: StretchParams) -> [u8; 32] {
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .expect("weft's Argon2 parameters are within the algorithm's limits"),
    );
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase, PASSPHRASE_SALT, &mut out)
        .expect("a 26-byte salt and a 32-byte output are valid for Argon2");
    out
}

/// SHA-256("weft network secret v1\0" || secret).
fn hash_secret(secret: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"weft network secret v1\0");
    ctx.update(secret);
    let mut psk = [0u8; 32];
    psk.copy_from_slice(ctx.finish().as_ref());
    psk
}

impl NetworkSecret {
    /// Derives the PSK from secret bytes. Trailing whitespace is ignored so
    /// that `echo secret > file` and `printf secret > file` agree.
    pub fn from_bytes(secret: &[u8], what: &str) -> Result<Self, KeyError> {
        let trimmed = secret.trim_ascii_end();
        if trimmed.is_empty() {
            return Err(KeyError::EmptySecret { what: what.into() });
        }
        Ok(NetworkSecret {
            psk: hash_secret(trimmed),
            stretched: false,
        })
    }

    /// A secret the user gave (file or environment): at least
    /// [`MIN_SECRET_LEN`] bytes. Key material (see [`is_key_material`]) is
    /// used as [`NetworkSecret::from_bytes`] does; anything else is a
    /// passphrase and goes through Argon2id ([`StretchParams::NETWORK`])
    /// first, so guessing it offline is slow.
    pub fn from_user(secret: &[u8], what: &str) -> Result<Self, KeyError> {
        Self::from_user_with(secret, what, StretchParams::NETWORK)
    }

    /// [`NetworkSecret::from_user`] with other Argon2 parameters (tests).
    pub fn from_user_with(
        secret: &[u8],
        what: &str,
        params: StretchParams,
    ) -> Result<Self, KeyError> {
        let trimmed = secret.trim_ascii_end();
        let len = trimmed.len();
        if len > 0 && len < MIN_SECRET_LEN {
            return Err(KeyError::ShortSecret {
                what: what.into(),
                len,
            });
        }
        if len == 0 || is_key_material(trimmed) {
            return Self::from_bytes(secret, what);
        }
        let stretched = Zeroizing::new(stretch_passphrase(trimmed, params));
        // The stretched bytes then take the same hash as key material, so
        // the PSK is always SHA-256("weft network secret v1\0" || bytes).
        Ok(NetworkSecret {
            psk: hash_secret(&stretched[..]),
            stretched: true,
        })
    }

    /// Reads the secret from a file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?);
        Self::from_user(&bytes, &format!("secret file {}", path.display()))
    }

    /// The 32-byte PSK.
    pub fn psk(&self) -> &[u8; 32] {
        &self.psk
    }

    /// Whether the secret was a passphrase stretched with Argon2id.
    pub fn was_stretched(&self) -> bool {
        self.stretched
    }
}

/// If `path` is readable by group or others, a warning saying how to fix it.
pub fn permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_public() {
        let k = StaticKey::generate();
        let again = StaticKey::from_base64(&format!("{}\n", k.private_base64()), "test").unwrap();
        assert_eq!(k.public(), again.public());
        assert_ne!(k.public(), [0u8; 32]);
        assert!(StaticKey::from_base64("AAAA", "test").is_err());
        assert!(StaticKey::from_base64("not base64!", "test").is_err());
    }

    #[test]
    fn secret_trims_and_rejects_empty() {
        let a = NetworkSecret::from_bytes(b"hunter2\n", "t").unwrap();
        let b = NetworkSecret::from_bytes(b"hunter2", "t").unwrap();
        let c = NetworkSecret::from_bytes(b"hunter3", "t").unwrap();
        assert_eq!(a.psk(), b.psk());
        assert_ne!(a.psk(), c.psk());
        assert!(NetworkSecret::from_bytes(b" \n", "t").is_err());
    }

    /// Small Argon2 parameters so most tests stay fast.
    const FAST: StretchParams = StretchParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };

    #[test]
    fn generated_secrets_are_key_material_and_not_stretched() {
        // What `weft secret new` writes: base64 of 32 random bytes.
        let text = format!("{}\n", B64.encode([0xa5u8; 32]));
        assert!(is_key_material(text.trim_end().as_bytes()));
        let s = NetworkSecret::from_user(text.as_bytes(), "t").unwrap();
        assert!(!s.was_stretched());
        // Same PSK as before Argon2 existed: existing networks keep working.
        assert_eq!(
            s.psk(),
            NetworkSecret::from_bytes(text.as_bytes(), "t")
                .unwrap()
                .psk()
        );
        // Longer key material (base64 of 48 bytes) is also a key.
        assert!(is_key_material(B64.encode([7u8; 48]).as_bytes()));
    }

    #[test]
    fn passphrases_are_stretched() {
        for pass in [
            &b"correct horse battery staple\n"[..],
            // base64, but of fewer than 32 bytes: a person could have chosen it.
            B64.encode([1u8; 16]).as_bytes(),
            // 44 characters that are not base64.
            &b"this is a long passphrase, not base64 at all"[..],
        ] {
            let trimmed = pass.trim_ascii_end();
            assert!(!is_key_material(trimmed), "{pass:?}");
            let s = NetworkSecret::from_user_with(pass, "t", FAST).unwrap();
            assert!(s.was_stretched());
            assert_ne!(s.psk(), NetworkSecret::from_bytes(pass, "t").unwrap().psk());
            // Deterministic (every host must agree) and trailing whitespace
            // does not matter.
            let again = NetworkSecret::from_user_with(trimmed, "t", FAST).unwrap();
            assert_eq!(s.psk(), again.psk());
        }
        let a = NetworkSecret::from_user_with(b"correct horse battery staple", "t", FAST).unwrap();
        let b = NetworkSecret::from_user_with(b"correct horse battery stapler", "t", FAST).unwrap();
        assert_ne!(a.psk(), b.psk());
        // The parameters are part of the result.
        let c = NetworkSecret::from_user_with(
            b"correct horse battery staple",
            "t",
            StretchParams { t_cost: 2, ..FAST },
        )
        .unwrap();
        assert_ne!(a.psk(), c.psk());
    }

    #[test]
    fn network_parameters_are_pinned() {
        // A known answer for the real parameters: changing them (or the
        // salt) silently splits networks of mixed versions, so it must be
        // a deliberate, visible change.
        assert_eq!(
            StretchParams::NETWORK,
            StretchParams {
                m_cost_kib: 65536,
                t_cost: 3,
                p_cost: 1
            }
        );
        let s = NetworkSecret::from_user(b"integration-test-network-secret\n", "t").unwrap();
        assert!(s.was_stretched());
        assert_eq!(B64.encode(s.psk()), PINNED_PSK);
    }

    /// The PSK of "integration-test-network-secret" under
    /// [`StretchParams::NETWORK`], cross-checked with the reference C
    /// implementation (libargon2 through Python's argon2-cffi):
    /// base64(SHA-256(b"weft network secret v1\0" + hash_secret_raw(pass,
    /// b"weft network passphrase v1", t=3, m=65536, p=1, 32, Type.ID))).
    const PINNED_PSK: &str = "qdL3NX6LxL8bUd+u8pRYK7UKMhqqkBiAeZeOBDu+FT8=";

    #[test]
    fn user_secrets_have_at_least_16_bytes() {
        let e = NetworkSecret::from_user(b"hunter2\n", "secret file s")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("secret file s holds 7 bytes"), "{e}");
        assert!(e.contains("at least 16"), "{e}");
        assert!(NetworkSecret::from_user_with(b"0123456789abcde\n", "t", FAST).is_err());
        let ok = NetworkSecret::from_user_with(b"0123456789abcdef\n", "t", FAST).unwrap();
        assert!(ok.was_stretched());
        assert!(matches!(
            NetworkSecret::from_user(b"\n", "t"),
            Err(KeyError::EmptySecret { .. })
        ));
    }
}
