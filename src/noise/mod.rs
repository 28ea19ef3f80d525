//! Sans-IO Noise sessions: the control handshake, data-plane keys, the
//! explicit-counter AEAD and the replay window. Nothing here touches a
//! socket or the clock; callers pass `Instant`s in.

pub mod cipher;
pub mod handshake;
pub mod index;
pub mod keys;
pub mod replay;
pub mod session;

pub use cipher::CipherKind;
pub use handshake::{E2eHandshake, Handshake, HandshakeError, Rekey};
pub use index::IndexRegistry;
pub use keys::{NetworkSecret, StaticKey};
pub use replay::ReplayWindow;
pub use session::{OpenError, Opened, SealError, Session};
