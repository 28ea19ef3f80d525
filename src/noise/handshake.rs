//! The control-connection handshake and the rekey handshake, over `snow`.
//!
//! Control: `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s`.
//! - `psk0` mixes the network secret in before the first message, so the
//!   very first message is authenticated with it: a responder with another
//!   secret fails on message 1, an initiator with another secret fails on
//!   message 2. Nothing else is ever sent to a host without the secret.
//! - `XX` transmits both static keys encrypted and authenticates them with
//!   DH, so each side learns and proves the other's identity.
//! - The `ee` DH of fresh ephemeral keys gives forward secrecy.
//!
//! Rekey: `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` carried inside the already
//! authenticated control channel, with the control handshake's hash as PSK
//! (binding it to that channel). Fresh ephemerals each time give every data
//! epoch its own forward-secret keys.
//!
//! End to end: `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s` ([`E2eHandshake`])
//! between two peers that are not neighbours, its two messages relayed by
//! other peers. The initiator already knows the responder's identity (its
//! static key), so `IK` needs one round trip; `psk2` mixes the network
//! secret in at the end of message 2, as WireGuard does. Message 1 is
//! authenticated by the two static keys (`es`, `ss`), so a responder learns
//! who initiates before it answers; an initiator with another secret fails
//! on message 2.

use super::keys::{NetworkSecret, StaticKey};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Noise protocol name of the control handshake.
pub const CONTROL_PATTERN: &str = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s";
/// Noise protocol name of the rekey handshake.
pub const REKEY_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Prologue bound into every control handshake (protocol and version).
const PROLOGUE: &[u8] = b"weft control v1";
const REKEY_PROLOGUE: &[u8] = b"weft rekey v1";
/// Noise protocol name of the end-to-end handshake.
pub const E2E_PATTERN: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Prologue bound into every end-to-end handshake.
const E2E_PROLOGUE: &[u8] = b"weft e2e v1";
/// HKDF salt of the data keys of link sessions (control and rekey).
const LINK_KEYS_SALT: &[u8] = b"weft data keys v1";
/// HKDF salt of the data keys of end-to-end sessions: a different salt, so
/// end-to-end keys never equal link keys.
const E2E_KEYS_SALT: &[u8] = b"weft e2e data keys v1";
/// Largest Noise message.
pub const MAX_MESSAGE: usize = 65535;

/// A handshake step failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Decryption of a handshake message failed: the peer does not have
    /// this network's secret (or the message was tampered with).
    #[error("handshake message did not authenticate: the peer uses a different network secret, or the connection was tampered with")]
    Authentication,
    /// Any other protocol error (out-of-turn message, bad length, ...).
    #[error("handshake protocol error: {0}")]
    Protocol(String),
}

fn map_err(e: snow::Error) -> HandshakeError {
    match e {
        snow::Error::Decrypt => HandshakeError::Authentication,
        other => HandshakeError::Protocol(other.to_string()),
    }
}

/// Keys for one data epoch, from this side's point of view. Wiped from
/// memory on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKeys {
    /// Key for packets this side sends.
    pub send: [u8; 32],
    /// Key for packets this side receives.
    pub recv: [u8; 32],
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys(..)")
    }
}

/// Derives the data keys from a Noise split. Separate keys from the ones
/// snow uses for the control transport, so nonces never collide; `salt`
/// separates the kinds of session (link or end to end).
fn derive_data_keys(salt: &[u8], initiator: bool, k_i2r: &[u8; 32], k_r2i: &[u8; 32]) -> DataKeys {
    let expand = |ikm: &[u8; 32], info: &[u8]| -> Zeroizing<[u8; 32]> {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt);
        let prk = salt.extract(ikm);
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out[..]))
            .expect("32 bytes is a valid HKDF-SHA256 length");
        out
    };
    let i2r = expand(k_i2r, b"initiator to responder");
    let r2i = expand(k_r2i, b"responder to initiator");
    if initiator {
        DataKeys {
            send: *i2r,
            recv: *r2i,
        }
    } else {
        DataKeys {
            send: *r2i,
            recv: *i2r,
        }
    }
}

/// snow's raw split, wiped when it goes out of scope.
fn raw_split(state: &mut snow::HandshakeState) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let (k1, k2) = state.dangerously_get_raw_split();
    (Zeroizing::new(k1), Zeroizing::new(k2))
}

/// The result of a finished control handshake.
pub struct Established {
    /// Encrypts the rest of the control connection.
    pub transport: snow::TransportState,
    /// The peer's static public key, authenticated by the handshake.
    pub remote_static: [u8; 32],
    /// The first data epoch's keys.
    pub data_keys: DataKeys,
    /// The handshake hash: binds later rekeys to this connection (it is
    /// their PSK, so it is wiped on drop).
    pub handshake_hash: Zeroizing<[u8; 32]>,
}

/// An in-progress control handshake.
pub struct Handshake {
    state: snow::HandshakeState,
}

impl Handshake {
    fn build(
        key: &StaticKey,
        secret: &NetworkSecret,
        initiator: bool,
    ) -> Result<Self, HandshakeError> {
        let builder = snow::Builder::new(CONTROL_PATTERN.parse().expect("valid pattern"))
            .local_private_key(key.private_bytes())
            .map_err(map_err)?
            .psk(0, secret.psk())
            .map_err(map_err)?
            .prologue(PROLOGUE)
            .map_err(map_err)?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(map_err)?;
        Ok(Handshake { state })
    }

    /// Starts the side that opened the TCP connection.
    pub fn initiator(key: &StaticKey, secret: &NetworkSecret) -> Result<Self, HandshakeError> {
        Self::build(key, secret, true)
    }

    /// Starts the side that accepted the TCP connection.
    pub fn responder(key: &StaticKey, secret: &NetworkSecret) -> Result<Self, HandshakeError> {
        Self::build(key, secret, false)
    }

    /// Whether this side writes next.
    pub fn is_my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    /// Whether all messages have been exchanged.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// Writes the next handshake message carrying `payload`.
    pub fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut out = vec![0u8; MAX_MESSAGE];
        let n = self
            .state
            .write_message(payload, &mut out)
            .map_err(map_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads the peer's next handshake message and returns its payload.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut out = vec![0u8; MAX_MESSAGE];
        let n = self
            .state
            .read_message(message, &mut out)
            .map_err(map_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Finishes a completed handshake.
    pub fn finish(mut self) -> Result<Established, HandshakeError> {
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::Protocol("handshake not finished".into()));
        }
        let remote_static: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| HandshakeError::Protocol("no remote static key".into()))?;
        let mut handshake_hash = Zeroizing::new([0u8; 32]);
        handshake_hash.copy_from_slice(&self.state.get_handshake_hash()[..32]);
        let initiator = self.state.is_initiator();
        let (k1, k2) = raw_split(&mut self.state);
        let data_keys = derive_data_keys(LINK_KEYS_SALT, initiator, &k1, &k2);
        let transport = self.state.into_transport_mode().map_err(map_err)?;
        Ok(Established {
            transport,
            remote_static,
            data_keys,
            handshake_hash,
        })
    }
}

/// An in-progress rekey handshake (two messages).
pub struct Rekey {
    state: snow::HandshakeState,
}

impl Rekey {
    fn build(binding: &[u8; 32], initiator: bool) -> Result<Self, HandshakeError> {
        let builder = snow::Builder::new(REKEY_PATTERN.parse().expect("valid pattern"))
            .psk(0, binding)
            .map_err(map_err)?
            .prologue(REKEY_PROLOGUE)
            .map_err(map_err)?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(map_err)?;
        Ok(Rekey { state })
    }

    /// Starts a rekey as the side that opened the control connection.
    pub fn initiator(binding: &[u8; 32]) -> Result<Self, HandshakeError> {
        Self::build(binding, true)
    }

    /// Answers a rekey.
    pub fn responder(binding: &[u8; 32]) -> Result<Self, HandshakeError> {
        Self::build(binding, false)
    }

    /// Writes the next message.
    pub fn write(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let mut out = vec![0u8; 256];
        let n = self.state.write_message(&[], &mut out).map_err(map_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads the peer's message.
    pub fn read(&mut self, message: &[u8]) -> Result<(), HandshakeError> {
        let mut out = vec![0u8; 256];
        self.state
            .read_message(message, &mut out)
            .map_err(map_err)?;
        Ok(())
    }

    /// The new epoch's data keys, once both messages are exchanged.
    pub fn finish(mut self) -> Result<DataKeys, HandshakeError> {
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::Protocol("rekey not finished".into()));
        }
        let initiator = self.state.is_initiator();
        let (k1, k2) = raw_split(&mut self.state);
        Ok(derive_data_keys(LINK_KEYS_SALT, initiator, &k1, &k2))
    }
}

/// The result of a finished end-to-end handshake.
pub struct E2eEstablished {
    /// The peer's static public key (its identity), authenticated by the
    /// handshake.
    pub remote_static: [u8; 32],
    /// The data keys of the session, from this side's point of view.
    pub data_keys: DataKeys,
}

/// An in-progress end-to-end handshake (two messages: the initiator
/// writes, the responder reads and writes, the initiator reads).
pub struct E2eHandshake {
    state: snow::HandshakeState,
}

impl E2eHandshake {
    /// Starts the side that initiates towards the peer whose identity is
    /// `remote_static`.
    pub fn initiator(
        key: &StaticKey,
        secret: &NetworkSecret,
        remote_static: &[u8; 32],
    ) -> Result<Self, HandshakeError> {
        let state = Self::builder(key, secret)?
            .remote_public_key(remote_static)
            .map_err(map_err)?
            .build_initiator()
            .map_err(map_err)?;
        Ok(E2eHandshake { state })
    }

    /// Starts the side that answers an initiation.
    pub fn responder(key: &StaticKey, secret: &NetworkSecret) -> Result<Self, HandshakeError> {
        let state = Self::builder(key, secret)?
            .build_responder()
            .map_err(map_err)?;
        Ok(E2eHandshake { state })
    }

    fn builder<'b>(
        key: &'b StaticKey,
        secret: &'b NetworkSecret,
    ) -> Result<snow::Builder<'b>, HandshakeError> {
        snow::Builder::new(E2E_PATTERN.parse().expect("valid pattern"))
            .local_private_key(key.private_bytes())
            .map_err(map_err)?
            .psk(2, secret.psk())
            .map_err(map_err)?
            .prologue(E2E_PROLOGUE)
            .map_err(map_err)
    }

    /// Whether both messages have been exchanged.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The peer's static key: known from the start on the initiator, and
    /// on the responder once it read message 1 (so it can check who
    /// initiates before it answers).
    pub fn remote_static(&self) -> Option<[u8; 32]> {
        self.state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
    }

    /// Writes the next handshake message carrying `payload`.
    pub fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut out = vec![0u8; MAX_MESSAGE];
        let n = self
            .state
            .write_message(payload, &mut out)
            .map_err(map_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Reads the peer's next handshake message and returns its payload.
    pub fn read(&mut self, message: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut out = vec![0u8; MAX_MESSAGE];
        let n = self
            .state
            .read_message(message, &mut out)
            .map_err(map_err)?;
        out.truncate(n);
        Ok(out)
    }

    /// Finishes a completed handshake: the peer's identity and the
    /// session's data keys (salted apart from link keys).
    pub fn finish(mut self) -> Result<E2eEstablished, HandshakeError> {
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::Protocol("handshake not finished".into()));
        }
        let remote_static = self
            .remote_static()
            .ok_or_else(|| HandshakeError::Protocol("no remote static key".into()))?;
        let initiator = self.state.is_initiator();
        let (k1, k2) = raw_split(&mut self.state);
        Ok(E2eEstablished {
            remote_static,
            data_keys: derive_data_keys(E2E_KEYS_SALT, initiator, &k1, &k2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        a: &NetworkSecret,
        b: &NetworkSecret,
    ) -> Result<(Established, Established), HandshakeError> {
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        let mut i = Handshake::initiator(&ka, a)?;
        let mut r = Handshake::responder(&kb, b)?;
        let m1 = i.write(b"")?;
        r.read(&m1)?;
        let m2 = r.write(b"r")?;
        i.read(&m2)?;
        let m3 = i.write(b"i")?;
        r.read(&m3)?;
        let (ei, er) = (i.finish()?, r.finish()?);
        assert_eq!(ei.remote_static, kb.public());
        assert_eq!(er.remote_static, ka.public());
        Ok((ei, er))
    }

    #[test]
    fn handshake_agrees_on_keys() {
        let s = NetworkSecret::from_bytes(b"s3cret", "t").unwrap();
        let (i, r) = run(&s, &s).unwrap();
        assert_eq!(i.data_keys.send, r.data_keys.recv);
        assert_eq!(i.data_keys.recv, r.data_keys.send);
        assert_ne!(i.data_keys.send, i.data_keys.recv);
        assert_eq!(i.handshake_hash, r.handshake_hash);
    }

    #[test]
    fn wrong_secret_fails_at_first_message() {
        let a = NetworkSecret::from_bytes(b"one", "t").unwrap();
        let b = NetworkSecret::from_bytes(b"two", "t").unwrap();
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        let mut i = Handshake::initiator(&ka, &a).unwrap();
        let mut r = Handshake::responder(&kb, &b).unwrap();
        let m1 = i.write(b"").unwrap();
        assert!(matches!(r.read(&m1), Err(HandshakeError::Authentication)));
    }

    #[test]
    fn rekey_gives_fresh_matching_keys() {
        let s = NetworkSecret::from_bytes(b"s3cret", "t").unwrap();
        let (i, r) = run(&s, &s).unwrap();
        let mut ri = Rekey::initiator(&i.handshake_hash).unwrap();
        let mut rr = Rekey::responder(&r.handshake_hash).unwrap();
        rr.read(&ri.write().unwrap()).unwrap();
        ri.read(&rr.write().unwrap()).unwrap();
        let (ki, kr) = (ri.finish().unwrap(), rr.finish().unwrap());
        assert_eq!(ki.send, kr.recv);
        assert_eq!(ki.recv, kr.send);
        assert_ne!(ki.send, i.data_keys.send);
        // A rekey bound to another connection does not authenticate.
        let mut bad = Rekey::responder(&[9u8; 32]).unwrap();
        let mut ri2 = Rekey::initiator(&i.handshake_hash).unwrap();
        assert!(bad.read(&ri2.write().unwrap()).is_err());
    }

    /// Runs both end-to-end messages; `target` is the key the initiator
    /// believes the responder has.
    fn e2e(
        a: &NetworkSecret,
        b: &NetworkSecret,
        ka: &StaticKey,
        kb: &StaticKey,
        target: &[u8; 32],
    ) -> Result<(E2eEstablished, E2eEstablished), HandshakeError> {
        let mut i = E2eHandshake::initiator(ka, a, target)?;
        let mut r = E2eHandshake::responder(kb, b)?;
        assert_eq!(i.remote_static(), Some(*target));
        assert_eq!(r.remote_static(), None);
        let m1 = i.write(b"from initiator")?;
        assert_eq!(r.read(&m1)?, b"from initiator");
        assert_eq!(r.remote_static(), Some(ka.public()));
        let m2 = r.write(b"from responder")?;
        assert_eq!(i.read(&m2)?, b"from responder");
        assert!(i.is_finished() && r.is_finished());
        Ok((i.finish()?, r.finish()?))
    }

    #[test]
    fn e2e_round_trip_gives_matching_keys() {
        let s = NetworkSecret::from_bytes(b"s3cret", "t").unwrap();
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        let (i, r) = e2e(&s, &s, &ka, &kb, &kb.public()).unwrap();
        assert_eq!(i.remote_static, kb.public());
        assert_eq!(r.remote_static, ka.public());
        assert_eq!(i.data_keys.send, r.data_keys.recv);
        assert_eq!(i.data_keys.recv, r.data_keys.send);
        assert_ne!(i.data_keys.send, i.data_keys.recv);
        // Fresh ephemerals: a second run gives other keys.
        let (i2, _) = e2e(&s, &s, &ka, &kb, &kb.public()).unwrap();
        assert_ne!(i2.data_keys.send, i.data_keys.send);
    }

    #[test]
    fn e2e_wrong_secret_fails_authentication() {
        let a = NetworkSecret::from_bytes(b"one", "t").unwrap();
        let b = NetworkSecret::from_bytes(b"two", "t").unwrap();
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        // psk2: message 1 does not involve the secret; the initiator
        // finds out on message 2.
        let mut i = E2eHandshake::initiator(&ka, &a, &kb.public()).unwrap();
        let mut r = E2eHandshake::responder(&kb, &b).unwrap();
        r.read(&i.write(b"").unwrap()).unwrap();
        let m2 = r.write(b"").unwrap();
        assert!(matches!(i.read(&m2), Err(HandshakeError::Authentication)));
        assert!(matches!(
            e2e(&a, &b, &ka, &kb, &kb.public()),
            Err(HandshakeError::Authentication)
        ));
    }

    #[test]
    fn e2e_wrong_responder_key_fails() {
        let s = NetworkSecret::from_bytes(b"s3cret", "t").unwrap();
        let (ka, kb, kc) = (
            StaticKey::generate(),
            StaticKey::generate(),
            StaticKey::generate(),
        );
        // The initiator targets C, but B answers: B cannot read message 1.
        assert!(matches!(
            e2e(&s, &s, &ka, &kb, &kc.public()),
            Err(HandshakeError::Authentication)
        ));
        // Garbage and truncation are errors, never panics.
        let mut r = E2eHandshake::responder(&kb, &s).unwrap();
        assert!(r.read(&[0u8; 3]).is_err());
        let mut r = E2eHandshake::responder(&kb, &s).unwrap();
        assert!(r.read(&[7u8; 200]).is_err());
        // Finishing early is an error.
        let i = E2eHandshake::initiator(&ka, &s, &kb.public()).unwrap();
        assert!(i.finish().is_err());
    }

    #[test]
    fn e2e_keys_differ_from_link_keys() {
        let split = ([1u8; 32], [2u8; 32]);
        let link = derive_data_keys(LINK_KEYS_SALT, true, &split.0, &split.1);
        let e2e = derive_data_keys(E2E_KEYS_SALT, true, &split.0, &split.1);
        assert_ne!(link.send, e2e.send);
        assert_ne!(link.recv, e2e.recv);
    }
}
