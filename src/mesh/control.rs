//! Messages on the control connection and their framing.
//!
//! Framing: `u16 BE length | Noise message`. During the handshake the Noise
//! messages are handshake messages; afterwards they are transport messages
//! whose plaintext is one JSON-encoded [`ControlMessage`]. The control plane
//! is low-rate, so a self-describing encoding costs nothing and keeps the
//! protocol easy to inspect and extend; parsing is total (serde returns an
//! error for any malformed input).

use crate::noise::CipherKind;
use serde::{Deserialize, Serialize};

/// Version of the control protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body (the Noise maximum).
pub const MAX_FRAME: usize = 65535;

/// Which cipher a host asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CipherChoice {
    /// AES-256-GCM when both hosts have AES hardware, else ChaCha20-Poly1305.
    Auto,
    /// Exactly this cipher.
    Exactly(CipherKind),
}

/// How the local side of the overlay is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalDevice {
    /// L3: a TUN device; frames are IP packets.
    Tun,
    /// L2: a TAP device on a bridge; frames are Ethernet frames.
    Bridge,
}

impl std::fmt::Display for LocalDevice {
    /// In the words of `--iface`: `tun (L3)` or `bridge (L2)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LocalDevice::Tun => "tun (L3)",
            LocalDevice::Bridge => "bridge (L2)",
        })
    }
}

/// What a host tells a peer about itself once the handshake is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Control protocol version.
    pub version: u32,
    /// Host name, for status output.
    pub name: String,
    /// The host's overlay addresses with prefix length (`10.40.0.1/16`).
    pub overlay: Vec<String>,
    /// The network's VXLAN network identifier.
    pub vni: u32,
    /// The UDP port this host receives data on.
    pub udp_port: u16,
    /// Local device kind; both ends must match.
    pub device: LocalDevice,
    /// The cipher this host asks for.
    pub cipher: CipherChoice,
    /// Whether this host has AES hardware.
    pub aes_hw: bool,
    /// The receiver index the peer must put on data sent to this host.
    pub session_index: u32,
    /// This host's overlay (device) MTU.
    pub overlay_mtu: u16,
    /// The UDP port of this host's fast-datapath VXLAN vport, when it runs
    /// fastdp (absent from older hellos: no fastdp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastdp_port: Option<u16>,
    /// The host's network certificate (base64 of its encoding), in
    /// networks with a CA (absent from older hellos: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
}

/// One message on an established control connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ControlMessage {
    /// Sent once by each side right after the handshake.
    Hello(Hello),
    /// First message of a rekey (either side may send it; when both do at
    /// once, the one from the smaller static key wins).
    RekeyInit {
        /// The initiator's receiver index for the new epoch.
        index: u32,
        /// Noise rekey message 1.
        noise: Vec<u8>,
    },
    /// Answer to a rekey.
    RekeyResp {
        /// The responder's receiver index for the new epoch.
        index: u32,
        /// Noise rekey message 2.
        noise: Vec<u8>,
    },
    /// A path-MTU probe of `size` bytes (whole datagram) with id `id` arrived.
    PmtuAck {
        /// The probe's id.
        id: u32,
        /// The UDP payload size that arrived.
        size: u16,
    },
    /// A fast-datapath heartbeat with this sequence number arrived through
    /// the receiver's VXLAN vport (the proof that fastdp works towards it).
    FastdpHeartbeatAck {
        /// The heartbeat's sequence number.
        seq: u64,
    },
    /// Mesh gossip: one `wire::gossip` message for the mesh node.
    Gossip {
        /// The message (base64 in JSON).
        #[serde(with = "b64")]
        bytes: Vec<u8>,
    },
    /// A control message between two hosts that may not be neighbours,
    /// passed hop by hop over control connections.
    Relay(RelayedControl),
    /// Control-channel liveness while the UDP data path is in doubt; a
    /// request (`reply: false`) is answered at once.
    Keepalive {
        /// Whether this is the answer.
        reply: bool,
    },
    /// The sender is closing the connection on purpose.
    Goodbye {
        /// Why, for the peer's logs and status.
        reason: String,
    },
}

/// A control message travelling through the mesh from `from` to `to`
/// (identities: static public keys). Each hop checks that `from` is the
/// peer it came from or was relayed by a neighbour, and passes it towards
/// `to` while `hops_left` lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedControl {
    /// The originating host.
    #[serde(with = "b64_key")]
    pub from: [u8; 32],
    /// The destination host.
    #[serde(with = "b64_key")]
    pub to: [u8; 32],
    /// Hops it may still take.
    pub hops_left: u8,
    /// The payload (an encoded end-to-end handshake message).
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
}

/// Bytes as a base64 string in JSON.
mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// A 32-byte key as a base64 string in JSON.
mod b64_key {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        super::b64::serialize(key, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let bytes = super::b64::deserialize(d)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("a key is 32 bytes"))
    }
}

impl ControlMessage {
    /// Encodes to JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }

    /// Decodes JSON bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// Chooses the data cipher from both hosts' hellos. Both sides compute the
/// same answer; `Err` names the conflict.
pub fn negotiate_cipher(ours: &Hello, theirs: &Hello) -> Result<CipherKind, String> {
    match (ours.cipher, theirs.cipher) {
        (CipherChoice::Exactly(a), CipherChoice::Exactly(b)) if a != b => Err(format!(
            "cipher mismatch: this host is configured for {} and the peer for {}; set the same --cipher on both",
            a.name(),
            b.name()
        )),
        (CipherChoice::Exactly(a), _) | (_, CipherChoice::Exactly(a)) => Ok(a),
        (CipherChoice::Auto, CipherChoice::Auto) => Ok(if ours.aes_hw && theirs.aes_hw {
            CipherKind::AesGcm
        } else {
            CipherKind::ChaChaPoly
        }),
    }
}

/// Appends one frame (length prefix and body) to `out`.
pub fn push_frame(out: &mut Vec<u8>, body: &[u8]) {
    debug_assert!(body.len() <= MAX_FRAME);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// Splits the first complete frame off `buf`: returns the body and the
/// bytes consumed, or `None` if more bytes are needed.
pub fn take_frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    let body = buf.get(2..2 + len)?;
    Some((body, 2 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(cipher: CipherChoice, aes_hw: bool) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            name: "h".into(),
            overlay: vec!["10.40.0.1/16".into()],
            vni: 1,
            udp_port: 6783,
            device: LocalDevice::Tun,
            cipher,
            aes_hw,
            session_index: 7,
            overlay_mtu: 1430,
            fastdp_port: None,
            cert: None,
        }
    }

    #[test]
    fn json_round_trip_and_garbage() {
        let m = ControlMessage::Hello(hello(CipherChoice::Auto, true));
        assert_eq!(ControlMessage::decode(&m.encode()).unwrap(), m);
        let r = ControlMessage::RekeyInit {
            index: 5,
            noise: vec![1, 2, 3],
        };
        assert_eq!(ControlMessage::decode(&r.encode()).unwrap(), r);
        assert!(ControlMessage::decode(b"{\"type\":\"nope\"}").is_err());
        let a = ControlMessage::FastdpHeartbeatAck { seq: 9 };
        assert_eq!(ControlMessage::decode(&a.encode()).unwrap(), a);
        // A hello without fastdp_port (an older build) still decodes.
        let mut old =
            serde_json::to_value(ControlMessage::Hello(hello(CipherChoice::Auto, true))).unwrap();
        old.as_object_mut().unwrap().remove("fastdp_port");
        let m = ControlMessage::decode(old.to_string().as_bytes()).unwrap();
        assert!(matches!(m, ControlMessage::Hello(h) if h.fastdp_port.is_none()));
        assert!(ControlMessage::decode(&[0xff, 0, 1]).is_err());
        let g = ControlMessage::Gossip {
            bytes: vec![0, 1, 255],
        };
        assert_eq!(ControlMessage::decode(&g.encode()).unwrap(), g);
        let r = ControlMessage::Relay(RelayedControl {
            from: [1; 32],
            to: [2; 32],
            hops_left: 3,
            payload: b"hi".to_vec(),
        });
        assert_eq!(ControlMessage::decode(&r.encode()).unwrap(), r);
        // A key of the wrong length is refused, not truncated.
        let bad = r.encode();
        let bad = String::from_utf8(bad).unwrap().replace(
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 32]),
            "AQID",
        );
        assert!(ControlMessage::decode(bad.as_bytes()).is_err());
    }

    #[test]
    fn cipher_negotiation() {
        use CipherChoice::*;
        use CipherKind::*;
        let n = |a, b| negotiate_cipher(&a, &b);
        assert_eq!(n(hello(Auto, true), hello(Auto, true)), Ok(AesGcm));
        assert_eq!(n(hello(Auto, true), hello(Auto, false)), Ok(ChaChaPoly));
        assert_eq!(
            n(hello(Exactly(ChaChaPoly), true), hello(Auto, true)),
            Ok(ChaChaPoly)
        );
        assert_eq!(
            n(hello(Auto, false), hello(Exactly(AesGcm), true)),
            Ok(AesGcm)
        );
        assert!(n(
            hello(Exactly(AesGcm), true),
            hello(Exactly(ChaChaPoly), true)
        )
        .is_err());
    }

    #[test]
    fn framing() {
        let mut out = vec![];
        push_frame(&mut out, b"abc");
        push_frame(&mut out, b"");
        assert_eq!(take_frame(&out), Some((&b"abc"[..], 5)));
        assert_eq!(take_frame(&out[5..]), Some((&b""[..], 2)));
        for n in 0..5 {
            assert_eq!(take_frame(&out[..n]), None);
        }
    }
}
