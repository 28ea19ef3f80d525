//! Static X25519 keys and the network secret.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::path::Path;

/// A host's long-term X25519 private key.
#[derive(Clone)]
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
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| KeyError::BadKey { what: what.into() })?;
        let private: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadKey { what: what.into() })?;
        Ok(StaticKey { private })
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
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
/// into every handshake as the Noise PSK.
#[derive(Clone)]
pub struct NetworkSecret {
    psk: [u8; 32],
}

impl std::fmt::Debug for NetworkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkSecret(..)")
    }
}

impl NetworkSecret {
    /// Derives the PSK from secret bytes. Trailing whitespace is ignored so
    /// that `echo secret > file` and `printf secret > file` agree.
    pub fn from_bytes(secret: &[u8], what: &str) -> Result<Self, KeyError> {
        let trimmed = secret.trim_ascii_end();
        if trimmed.is_empty() {
            return Err(KeyError::EmptySecret { what: what.into() });
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"weft network secret v1\0");
        ctx.update(trimmed);
        let mut psk = [0u8; 32];
        psk.copy_from_slice(ctx.finish().as_ref());
        Ok(NetworkSecret { psk })
    }

    /// A secret the user gave (file or environment): as
    /// [`NetworkSecret::from_bytes`], and at least [`MIN_SECRET_LEN`] bytes.
    pub fn from_user(secret: &[u8], what: &str) -> Result<Self, KeyError> {
        let len = secret.trim_ascii_end().len();
        if len > 0 && len < MIN_SECRET_LEN {
            return Err(KeyError::ShortSecret {
                what: what.into(),
                len,
            });
        }
        Self::from_bytes(secret, what)
    }

    /// Reads the secret from a file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_user(&bytes, &format!("secret file {}", path.display()))
    }

    /// The 32-byte PSK.
    pub fn psk(&self) -> &[u8; 32] {
        &self.psk
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

    #[test]
    fn user_secrets_have_at_least_16_bytes() {
        let e = NetworkSecret::from_user(b"hunter2\n", "secret file s")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("secret file s holds 7 bytes"), "{e}");
        assert!(e.contains("at least 16"), "{e}");
        assert!(NetworkSecret::from_user(b"0123456789abcde\n", "t").is_err());
        let ok = NetworkSecret::from_user(b"0123456789abcdef\n", "t").unwrap();
        assert_eq!(
            ok.psk(),
            NetworkSecret::from_bytes(b"0123456789abcdef", "t")
                .unwrap()
                .psk()
        );
        assert!(matches!(
            NetworkSecret::from_user(b"\n", "t"),
            Err(KeyError::EmptySecret { .. })
        ));
    }
}
