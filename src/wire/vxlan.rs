//! VXLAN header (RFC 7348, section 5).
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! weft uses this exact header both on the plaintext wire (to interoperate
//! with Linux vxlan devices and switches) and inside the encrypted sleeve.

use super::{Result, WireError};

mod field {
    use crate::wire::Field;
    pub const FLAGS: usize = 0;
    pub const VNI: Field = 4..7;
}

/// Length of the VXLAN header in bytes.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI field is valid. RFC 7348 requires it to be set.
pub const FLAG_I: u8 = 0x08;
/// The IANA-assigned VXLAN UDP destination port.
pub const DEFAULT_PORT: u16 = 4789;
/// Largest VNI that fits the 24-bit field.
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// A read/write view of a VXLAN header at the start of a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer, checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VXLAN network identifier.
    #[inline]
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
    }

    /// The inner frame after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the whole 8-byte header: I flag, VNI, reserved bytes zeroed.
    #[inline]
    pub fn set_header(&mut self, vni: u32) {
        let b = &mut self.buffer.as_mut()[..HEADER_LEN];
        b[0] = FLAG_I;
        b[1] = 0;
        b[2] = 0;
        b[3] = 0;
        b[4] = (vni >> 16) as u8;
        b[5] = (vni >> 8) as u8;
        b[6] = vni as u8;
        b[7] = 0;
    }
}

/// The parsed form of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The 24-bit network identifier.
    pub vni: u32,
}

impl Repr {
    /// Parses a header. A header without the I flag is malformed (RFC 7348:
    /// "The I flag MUST be set to 1 for a valid VXLAN Network ID"); the
    /// reserved bits are ignored on receive, as the RFC asks.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        if packet.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if packet.flags() & FLAG_I == 0 {
            return Err(WireError::Malformed);
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// Bytes needed to emit this header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes this header into `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_header(self.vni & MAX_VNI);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // VNI 42 (0x00002a), I flag, as captured from a Linux vxlan device.
    static GOLDEN: [u8; 8] = [0x08, 0, 0, 0, 0x00, 0x00, 0x2a, 0];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&GOLDEN[..]).unwrap();
        assert_eq!(p.flags(), FLAG_I);
        assert_eq!(p.vni(), 42);
        assert_eq!(Repr::parse(&p).unwrap(), Repr { vni: 42 });
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 8];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        Repr { vni: 42 }.emit(&mut p);
        assert_eq!(buf, GOLDEN);
    }

    #[test]
    fn large_vni_round_trip() {
        let mut buf = [0u8; 8];
        Repr { vni: MAX_VNI }.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(
            Repr::parse(&Packet::new_checked(&buf[..]).unwrap())
                .unwrap()
                .vni,
            MAX_VNI
        );
    }

    #[test]
    fn truncated_and_missing_flag() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&GOLDEN[..n]).unwrap_err(),
                WireError::Truncated
            );
        }
        let mut bad = GOLDEN;
        bad[0] = 0;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bad[..]).unwrap()).unwrap_err(),
            WireError::Malformed
        );
    }
}
