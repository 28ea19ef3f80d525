//! One data epoch with a peer: sealing and opening sleeve datagrams with an
//! explicit counter and a replay window. Shared between worker threads
//! (`&self` methods): the send counter is atomic and the replay window is
//! behind a short lock taken only after a packet authenticated.

use super::cipher::{CipherKind, DataCipher, TAG_LEN};
use super::handshake::DataKeys;
use super::replay::ReplayWindow;
use crate::wire::sleeve::{self, MessageType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Start a rekey after this many messages (the 2^60).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Never seal with a counter at or above this: the nonce space must not wrap.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// A session's keys are neither used to seal nor accepted this long after
/// its handshake, whether or not a rekey succeeded (WireGuard's
/// REJECT_AFTER_TIME). Rekeys start at 120 s, so a working peer never
/// gets here.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// Why a datagram could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The counter is exhausted; the session must be replaced.
    #[error("session counter exhausted")]
    CounterExhausted,
    /// The buffer has no room for header, plaintext and tag.
    #[error("buffer too small")]
    BufferTooSmall,
}

/// Why a datagram was dropped on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Counter already seen or too old.
    #[error("replayed or too old counter")]
    Replay,
    /// The AEAD rejected it: forged, corrupted, or another key.
    #[error("authentication failed")]
    Authentication,
    /// Too short to hold a header and a tag.
    #[error("truncated")]
    Truncated,
}

/// One data epoch.
#[derive(Debug)]
pub struct Session {
    /// The index the peer puts in datagrams it sends us (we chose it).
    pub local_index: u32,
    /// The index we put in datagrams we send (the peer chose it).
    pub remote_index: u32,
    /// When the keys were agreed (for time-based rekey).
    pub established_at: Instant,
    send: DataCipher,
    recv: DataCipher,
    send_counter: AtomicU64,
    replay: Mutex<ReplayWindow>,
}

impl Session {
    /// Builds a session from agreed keys.
    pub fn new(
        cipher: CipherKind,
        keys: &DataKeys,
        local_index: u32,
        remote_index: u32,
        now: Instant,
    ) -> Self {
        Session {
            local_index,
            remote_index,
            established_at: now,
            send: DataCipher::new(cipher, &keys.send),
            recv: DataCipher::new(cipher, &keys.recv),
            send_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::new()),
        }
    }

    /// Whether the keys are past [`REJECT_AFTER_TIME`] at `now`: the
    /// session must not seal or open any more.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.established_at) >= REJECT_AFTER_TIME
    }

    /// When the keys stop being usable.
    pub fn expires_at(&self) -> Instant {
        self.established_at + REJECT_AFTER_TIME
    }

    /// The AEAD in use.
    pub fn cipher(&self) -> CipherKind {
        self.send.kind()
    }

    /// Messages sealed so far.
    pub fn sent_messages(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// Seals in place. `buf[HEADER_LEN..HEADER_LEN + plaintext_len]` holds
    /// the plaintext; the header is written in front and the tag after it.
    /// Returns the datagram length.
    pub fn seal(
        &self,
        message_type: MessageType,
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SealError> {
        self.seal_in_lane(0, message_type, buf, plaintext_len)
    }

    /// As [`Session::seal`], with the sender's lane (its worker number) in
    /// the header: the receiver keeps each lane on one of its workers.
    pub fn seal_in_lane(
        &self,
        lane: u8,
        message_type: MessageType,
        buf: &mut [u8],
        plaintext_len: usize,
    ) -> Result<usize, SealError> {
        let total = sleeve::HEADER_LEN + plaintext_len + TAG_LEN;
        if buf.len() < total {
            return Err(SealError::BufferTooSmall);
        }
        let counter = self.send_counter.fetch_add(1, Ordering::Relaxed);
        if counter >= REJECT_AFTER_MESSAGES {
            self.send_counter
                .store(REJECT_AFTER_MESSAGES, Ordering::Relaxed);
            return Err(SealError::CounterExhausted);
        }
        let (header, rest) = buf.split_at_mut(sleeve::HEADER_LEN);
        sleeve::Packet::new_unchecked(&mut *header).set_header(
            message_type,
            lane,
            self.remote_index,
            counter,
        );
        let tag = self.send.seal(counter, header, &mut rest[..plaintext_len]);
        rest[plaintext_len..plaintext_len + TAG_LEN].copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Opens a datagram in place after its header was parsed and its
    /// receiver index matched this session. Returns the plaintext length;
    /// the plaintext is at `datagram[HEADER_LEN..]`.
    pub fn open(&self, counter: u64, datagram: &mut [u8]) -> Result<usize, OpenError> {
        self.open_tracked(counter, datagram).map(|o| o.len)
    }

    /// As [`Session::open`], and also says whether `counter` is now the
    /// newest this session has accepted: only such a datagram may move the
    /// peer's endpoint (a delayed or reordered one, even authentic, must
    /// not send traffic back to an old address).
    pub fn open_tracked(&self, counter: u64, datagram: &mut [u8]) -> Result<Opened, OpenError> {
        if datagram.len() < sleeve::HEADER_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        // Cheap early drop before spending an AEAD on a replay.
        if !self
            .replay
            .lock()
            .map(|w| w.check(counter))
            .unwrap_or(false)
        {
            return Err(OpenError::Replay);
        }
        let (header, rest) = datagram.split_at_mut(sleeve::HEADER_LEN);
        let len = self
            .recv
            .open(counter, header, rest)
            .map_err(|_| OpenError::Authentication)?;
        // Update only after authentication, so forgeries cannot move the window.
        let (fresh, newest) = self
            .replay
            .lock()
            .map(|mut w| {
                let fresh = w.update(counter);
                (fresh, fresh && w.newest() == counter)
            })
            .unwrap_or((false, false));
        if !fresh {
            return Err(OpenError::Replay);
        }
        Ok(Opened { len, newest })
    }
}

/// An opened datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Plaintext length, at `datagram[HEADER_LEN..]`.
    pub len: usize,
    /// Its counter is the highest this session has accepted.
    pub newest: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::sleeve::Packet;

    fn pair(cipher: CipherKind) -> (Session, Session) {
        let a = DataKeys {
            send: [1; 32],
            recv: [2; 32],
        };
        let b = DataKeys {
            send: [2; 32],
            recv: [1; 32],
        };
        let now = Instant::now();
        (
            Session::new(cipher, &a, 10, 20, now),
            Session::new(cipher, &b, 20, 10, now),
        )
    }

    fn seal(s: &Session, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; sleeve::HEADER_LEN + payload.len() + TAG_LEN];
        buf[sleeve::HEADER_LEN..sleeve::HEADER_LEN + payload.len()].copy_from_slice(payload);
        let n = s.seal(MessageType::Data, &mut buf, payload.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn open(s: &Session, mut d: Vec<u8>) -> Result<Vec<u8>, OpenError> {
        let counter = Packet::new_checked(&d[..]).unwrap().counter();
        assert_eq!(
            Packet::new_checked(&d[..]).unwrap().receiver_index(),
            s.local_index
        );
        let n = s.open(counter, &mut d)?;
        Ok(d[sleeve::HEADER_LEN..sleeve::HEADER_LEN + n].to_vec())
    }

    #[test]
    fn seal_open_both_ciphers() {
        for c in [CipherKind::ChaChaPoly, CipherKind::AesGcm] {
            let (a, b) = pair(c);
            let d = seal(&a, b"ping");
            assert_eq!(open(&b, d.clone()).unwrap(), b"ping");
            assert_eq!(open(&b, d), Err(OpenError::Replay));
        }
    }

    #[test]
    fn out_of_order_then_replay() {
        let (a, b) = pair(CipherKind::ChaChaPoly);
        let ds: Vec<_> = (0..100).map(|i| seal(&a, &[i as u8])).collect();
        for d in ds.iter().rev() {
            open(&b, d.clone()).unwrap();
        }
        for d in &ds {
            assert_eq!(open(&b, d.clone()), Err(OpenError::Replay));
        }
    }

    #[test]
    fn forged_counter_does_not_move_window() {
        let (a, b) = pair(CipherKind::AesGcm);
        let good = seal(&a, b"x");
        let mut forged = good.clone();
        forged[8..16].copy_from_slice(&(1u64 << 50).to_le_bytes());
        assert_eq!(open(&b, forged), Err(OpenError::Authentication));
        assert_eq!(open(&b, good).unwrap(), b"x");
    }

    #[test]
    fn header_tamper_is_rejected() {
        let (a, b) = pair(CipherKind::ChaChaPoly);
        let mut d = seal(&a, b"x");
        d[0] = MessageType::Heartbeat as u8;
        assert_eq!(open(&b, d), Err(OpenError::Authentication));
    }

    #[test]
    fn only_the_newest_counter_is_reported_newest() {
        let (a, b) = pair(CipherKind::ChaChaPoly);
        let ds: Vec<_> = (0..4).map(|i| seal(&a, &[i as u8])).collect();
        let open_tracked = |d: &Vec<u8>| {
            let mut d = d.clone();
            let counter = Packet::new_checked(&d[..]).unwrap().counter();
            b.open_tracked(counter, &mut d).unwrap()
        };
        assert!(open_tracked(&ds[0]).newest);
        assert!(open_tracked(&ds[2]).newest);
        // Reordered: authentic, accepted, but older than counter 2.
        let late = open_tracked(&ds[1]);
        assert_eq!(late.len, 1);
        assert!(!late.newest);
        assert!(open_tracked(&ds[3]).newest);
    }

    #[test]
    fn keys_expire_180_s_after_the_handshake() {
        let (a, _) = pair(CipherKind::AesGcm);
        let t0 = a.established_at;
        assert!(!a.expired(t0));
        assert!(!a.expired(t0 + Duration::from_secs(179)));
        assert!(a.expired(t0 + Duration::from_secs(180)));
        assert_eq!(a.expires_at(), t0 + REJECT_AFTER_TIME);
        // A clock reading before the handshake is not "expired".
        assert!(!a.expired(t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)));
    }

    #[test]
    fn wrong_keys_rejected() {
        let (a, _) = pair(CipherKind::ChaChaPoly);
        let other = Session::new(
            CipherKind::ChaChaPoly,
            &DataKeys {
                send: [3; 32],
                recv: [4; 32],
            },
            20,
            10,
            Instant::now(),
        );
        assert_eq!(open(&other, seal(&a, b"x")), Err(OpenError::Authentication));
    }
}
