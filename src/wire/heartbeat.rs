//! The plaintext of a sealed `Heartbeat` (and `PmtuProbe`) message.
//!
//! ```text
//! 0          1..4          5..12            13..
//! kind u8    seq u32 BE    echo u64 BE      padding (probes only, zeros)
//! ```
//! `echo` is the sender's clock in microseconds; a reply copies it back so
//! the sender computes the round-trip time without keeping state.

use super::{Result, WireError};

/// Bytes of a heartbeat plaintext without padding.
pub const LEN: usize = 13;

/// Request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Asks the peer to answer.
    Request = 0,
    /// Answers a request, echoing its `seq` and `echo`.
    Reply = 1,
}

/// A parsed heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Request or reply.
    pub kind: Kind,
    /// Sequence number chosen by the requester.
    pub seq: u32,
    /// The requester's clock, microseconds.
    pub echo_micros: u64,
}

impl Repr {
    /// Parses a heartbeat plaintext; trailing padding is ignored.
    pub fn parse(bytes: &[u8]) -> Result<Repr> {
        let b = bytes.get(..LEN).ok_or(WireError::Truncated)?;
        let kind = match b[0] {
            0 => Kind::Request,
            1 => Kind::Reply,
            _ => return Err(WireError::Malformed),
        };
        let seq = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
        let mut e = [0u8; 8];
        e.copy_from_slice(&b[5..13]);
        Ok(Repr {
            kind,
            seq,
            echo_micros: u64::from_be_bytes(e),
        })
    }

    /// Writes the heartbeat into `out` (which must hold `LEN` bytes).
    pub fn emit(&self, out: &mut [u8]) -> Result<usize> {
        let b = out.get_mut(..LEN).ok_or(WireError::Truncated)?;
        b[0] = self.kind as u8;
        b[1..5].copy_from_slice(&self.seq.to_be_bytes());
        b[5..13].copy_from_slice(&self.echo_micros.to_be_bytes());
        Ok(LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let r = Repr {
            kind: Kind::Reply,
            seq: 0x01020304,
            echo_micros: 99,
        };
        let mut buf = [0u8; 20];
        assert_eq!(r.emit(&mut buf), Ok(LEN));
        assert_eq!(&buf[..5], &[1, 1, 2, 3, 4]);
        assert_eq!(Repr::parse(&buf), Ok(r));
        for n in 0..LEN {
            assert_eq!(Repr::parse(&buf[..n]), Err(WireError::Truncated));
        }
        buf[0] = 7;
        assert_eq!(Repr::parse(&buf), Err(WireError::Malformed));
        assert!(r.emit(&mut [0u8; 3]).is_err());
    }
}
