//! The XDP filter: which frames arriving on the underlay interface go to
//! weft's AF_XDP sockets and which the kernel keeps.
//!
//! Rules (the program and [`classify`] implement the same ones):
//! - Ethernet II carrying IPv4 or IPv6 (no VLAN tag), else PASS.
//! - IPv4: version 4, IHL >= 5, protocol UDP, not a fragment (MF clear and
//!   offset 0; weft sends with DF so its datagrams are never fragments).
//!   IPv6: next header directly UDP (weft sends no extension headers).
//! - UDP destination port is one of weft's ports (the data port, and the
//!   VXLAN port in plaintext mode): REDIRECT to the socket of the RX queue
//!   the frame came in on. Everything else (ARP, ND, ICMP, TCP including
//!   weft's control connection, other UDP) is PASS, so the host is never
//!   cut off.
//!
//! The ports are immediates in the generated instructions: the program is
//! assembled at start for the ports weft listens on.

use super::bpf::Insn;

/// XDP_DROP: what the test build returns where the real one redirects.
pub const XDP_DROP: u32 = 1;
/// XDP_PASS: hand the frame to the kernel's stack.
pub const XDP_PASS: u32 = 2;
/// XDP_REDIRECT: what `bpf_redirect_map` returns when the queue has a socket.
pub const XDP_REDIRECT: u32 = 4;

/// Most ports one program filters (data port, VXLAN port, spare).
pub const MAX_PORTS: usize = 4;

/// What the filter does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Weft's datagram: to the AF_XDP socket.
    Redirect,
    /// Anything else: to the kernel.
    Pass,
}

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_UDP: u8 = 17;

/// The filter rules in Rust: the reference the program is tested against.
pub fn classify(frame: &[u8], ports: &[u16]) -> Verdict {
    let be16 = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
    };
    let udp_at = match be16(12) {
        Some(ETHERTYPE_IPV4) => {
            if frame.len() < ETH_HLEN + 20 {
                return Verdict::Pass;
            }
            let ver_ihl = frame[ETH_HLEN];
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            if ver_ihl >> 4 != 4 || ihl < 20 || frame[ETH_HLEN + 9] != PROTO_UDP {
                return Verdict::Pass;
            }
            // MF flag or a non-zero offset: a fragment.
            if be16(ETH_HLEN + 6).map_or(true, |f| f & 0x3fff != 0) {
                return Verdict::Pass;
            }
            ETH_HLEN + ihl
        }
        Some(ETHERTYPE_IPV6) => {
            if frame.len() < ETH_HLEN + 40
                || frame[ETH_HLEN] >> 4 != 6
                || frame[ETH_HLEN + 6] != PROTO_UDP
            {
                return Verdict::Pass;
            }
            ETH_HLEN + 40
        }
        _ => return Verdict::Pass,
    };
    if frame.len() < udp_at + 8 {
        return Verdict::Pass;
    }
    match be16(udp_at + 2) {
        Some(port) if ports.contains(&port) => Verdict::Redirect,
        _ => Verdict::Pass,
    }
}

// eBPF opcode pieces (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_B: u8 = 0x71;
const LDX_MEM_H: u8 = 0x69;
const LDX_MEM_W: u8 = 0x61;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const ALU64_ADD_K: u8 = 0x07;
const ALU64_ADD_X: u8 = 0x0f;
const ALU64_AND_K: u8 = 0x57;
const ALU64_LSH_K: u8 = 0x67;
const ALU64_RSH_K: u8 = 0x77;
const JMP_JA: u8 = 0x05;
const JMP_JEQ_K: u8 = 0x15;
const JMP_JNE_K: u8 = 0x55;
const JMP_JGT_X: u8 = 0x2d;
const JMP_JLT_K: u8 = 0xa5;
const JMP_JSET_K: u8 = 0x45;
const JMP_CALL: u8 = 0x85;
const JMP_EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;
const PSEUDO_MAP_FD: u8 = 1;
const HELPER_REDIRECT_MAP: i32 = 51;

/// Registers used: r1 ctx / helper args, r2 data, r3 data_end, r4 bound
/// check, r5 scratch, r6 saved ctx, r7 scratch.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Label {
    Pass,
    Ipv4,
    Ipv6,
    Port,
    Redirect,
}

/// A tiny assembler: instructions plus forward jumps fixed up by label.
struct Asm {
    insns: Vec<Insn>,
    fixups: Vec<(usize, Label)>,
    labels: Vec<(Label, usize)>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        });
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.op(code, dst, src, 0, imm);
    }
    fn label(&mut self, label: Label) {
        self.labels.push((label, self.insns.len()));
    }
    /// A bounds check: `if data + len > data_end goto pass` on `base`.
    fn need(&mut self, base: u8, len: i32) {
        self.op(ALU64_MOV_X, R4, base, 0, 0);
        self.op(ALU64_ADD_K, R4, 0, 0, len);
        self.jump(JMP_JGT_X, R4, R3, 0, Label::Pass);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in &self.fixups {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| l == to)
                .map(|(_, i)| *i)
                .expect("label defined");
            self.insns[*at].off = (target as i64 - *at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// A 16-bit network-order field as the program sees it after a 2-byte load
/// (loads are in host byte order).
fn wire16(value: u16) -> i32 {
    i32::from(u16::from_ne_bytes(value.to_be_bytes()))
}

/// Assembles the filter for `ports`. `xsk_map_fd` is the XSKMAP; `miss`
/// is what a redirect returns when the queue has no socket in the map:
/// XDP_PASS in service (the kernel keeps traffic weft cannot take), and
/// XDP_DROP in tests, so a redirect verdict is visible in a test run.
pub fn program(ports: &[u16], xsk_map_fd: i32, miss: u32) -> Vec<Insn> {
    assert!(
        !ports.is_empty() && ports.len() <= MAX_PORTS,
        "1..={MAX_PORTS} ports"
    );
    let mut a = Asm {
        insns: Vec::with_capacity(64),
        fixups: Vec::new(),
        labels: Vec::new(),
    };
    a.op(ALU64_MOV_X, R6, R1, 0, 0);
    a.op(LDX_MEM_W, R2, R6, 0, 0); // xdp_md.data
    a.op(LDX_MEM_W, R3, R6, 4, 0); // xdp_md.data_end
    a.need(R2, ETH_HLEN as i32);
    a.op(LDX_MEM_H, R5, R2, 12, 0);
    a.jump(JMP_JEQ_K, R5, 0, wire16(ETHERTYPE_IPV4), Label::Ipv4);
    a.jump(JMP_JEQ_K, R5, 0, wire16(ETHERTYPE_IPV6), Label::Ipv6);
    a.jump(JMP_JA, 0, 0, 0, Label::Pass);

    a.label(Label::Ipv4);
    a.need(R2, (ETH_HLEN + 20) as i32);
    a.op(LDX_MEM_B, R5, R2, ETH_HLEN as i16, 0);
    a.op(ALU64_MOV_X, R7, R5, 0, 0);
    a.op(ALU64_RSH_K, R7, 0, 0, 4);
    a.jump(JMP_JNE_K, R7, 0, 4, Label::Pass);
    a.op(ALU64_AND_K, R5, 0, 0, 0x0f);
    a.jump(JMP_JLT_K, R5, 0, 5, Label::Pass);
    a.op(ALU64_LSH_K, R5, 0, 0, 2); // header length in bytes, 20..=60
    a.op(LDX_MEM_B, R7, R2, (ETH_HLEN + 9) as i16, 0);
    a.jump(JMP_JNE_K, R7, 0, i32::from(PROTO_UDP), Label::Pass);
    a.op(LDX_MEM_H, R7, R2, (ETH_HLEN + 6) as i16, 0);
    a.jump(JMP_JSET_K, R7, 0, wire16(0x3fff), Label::Pass);
    a.op(ALU64_ADD_X, R2, R5, 0, 0);
    a.op(ALU64_ADD_K, R2, 0, 0, ETH_HLEN as i32); // r2 = UDP header
    a.need(R2, 8);
    a.op(LDX_MEM_H, R7, R2, 2, 0);
    a.jump(JMP_JA, 0, 0, 0, Label::Port);

    a.label(Label::Ipv6);
    a.need(R2, (ETH_HLEN + 40 + 8) as i32);
    a.op(LDX_MEM_B, R5, R2, ETH_HLEN as i16, 0);
    a.op(ALU64_RSH_K, R5, 0, 0, 4);
    a.jump(JMP_JNE_K, R5, 0, 6, Label::Pass);
    a.op(LDX_MEM_B, R7, R2, (ETH_HLEN + 6) as i16, 0);
    a.jump(JMP_JNE_K, R7, 0, i32::from(PROTO_UDP), Label::Pass);
    a.op(LDX_MEM_H, R7, R2, (ETH_HLEN + 40 + 2) as i16, 0);

    a.label(Label::Port);
    for &port in ports {
        a.jump(JMP_JEQ_K, R7, 0, wire16(port), Label::Redirect);
    }
    a.jump(JMP_JA, 0, 0, 0, Label::Pass);

    a.label(Label::Redirect);
    a.op(LDX_MEM_W, R2, R6, 16, 0); // xdp_md.rx_queue_index
    a.op(LD_IMM64, R1, PSEUDO_MAP_FD, 0, xsk_map_fd);
    a.op(0, 0, 0, 0, 0);
    a.op(ALU64_MOV_K, R3, 0, 0, miss as i32);
    a.op(JMP_CALL, 0, 0, 0, HELPER_REDIRECT_MAP);
    a.op(JMP_EXIT, 0, 0, 0, 0);

    a.label(Label::Pass);
    a.op(ALU64_MOV_K, R0, 0, 0, XDP_PASS as i32);
    a.op(JMP_EXIT, 0, 0, 0, 0);
    a.finish()
}

#[cfg(test)]
pub(crate) mod golden {
    //! Frames the filter must redirect or pass, shared by the Rust-mirror
    //! test and the in-kernel BPF_PROG_TEST_RUN test.

    use super::Verdict::{self, Pass, Redirect};

    pub const DATA_PORT: u16 = 6783;
    pub const VXLAN_PORT: u16 = 4789;
    pub const PORTS: [u16; 2] = [DATA_PORT, VXLAN_PORT];

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(protocol: u8, frag: u16, options: usize, payload: &[u8]) -> Vec<u8> {
        let mut f = eth(0x0800);
        let ihl = 5 + options / 4;
        let total = (ihl * 4 + payload.len()) as u16;
        f.push(0x40 | ihl as u8);
        f.push(0);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, protocol, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend(std::iter::repeat(1u8).take(options));
        f.extend_from_slice(payload);
        f
    }

    fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = eth(0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[next_header, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(payload);
        f
    }

    fn udp(dst_port: u16, payload_len: usize) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&40000u16.to_be_bytes());
        u.extend_from_slice(&dst_port.to_be_bytes());
        u.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend(std::iter::repeat(0xab).take(payload_len));
        u
    }

    fn tcp(dst_port: u16) -> Vec<u8> {
        let mut t = vec![0x9c, 0x40];
        t.extend_from_slice(&dst_port.to_be_bytes());
        t.extend_from_slice(&[0; 16]);
        t
    }

    /// (name, frame, verdict for PORTS).
    pub fn frames() -> Vec<(&'static str, Vec<u8>, Verdict)> {
        let mut arp = eth(0x0806);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0; 20]);
        let mut vlan = eth(0x8100);
        vlan.extend_from_slice(&[0, 5, 0x08, 0x00]);
        vlan.extend_from_slice(&ipv4(17, 0x4000, 0, &udp(DATA_PORT, 16))[14..]);
        let mut bad_version = ipv4(17, 0x4000, 0, &udp(DATA_PORT, 16));
        bad_version[14] = 0x65;
        let mut short_ihl = ipv4(17, 0x4000, 0, &udp(DATA_PORT, 16));
        short_ihl[14] = 0x44;
        let mut v6_as_v4 = ipv6(17, &udp(DATA_PORT, 16));
        v6_as_v4[14] = 0x40;
        let mut udp_header_cut = ipv4(17, 0x4000, 0, &udp(DATA_PORT, 0));
        udp_header_cut.truncate(14 + 20 + 6);
        vec![
            (
                "ipv4 udp to data port",
                ipv4(17, 0x4000, 0, &udp(DATA_PORT, 64)),
                Redirect,
            ),
            (
                "ipv4 udp to vxlan port",
                ipv4(17, 0, 0, &udp(VXLAN_PORT, 64)),
                Redirect,
            ),
            (
                "ipv4 udp with options",
                ipv4(17, 0x4000, 8, &udp(DATA_PORT, 64)),
                Redirect,
            ),
            (
                "ipv4 udp empty payload",
                ipv4(17, 0x4000, 0, &udp(DATA_PORT, 0)),
                Redirect,
            ),
            (
                "ipv6 udp to data port",
                ipv6(17, &udp(DATA_PORT, 64)),
                Redirect,
            ),
            (
                "ipv6 udp to vxlan port",
                ipv6(17, &udp(VXLAN_PORT, 1400)),
                Redirect,
            ),
            ("arp request", arp, Pass),
            ("icmp echo", ipv4(1, 0, 0, &[8, 0, 0, 0, 0, 1, 0, 1]), Pass),
            (
                "tcp to data port (control)",
                ipv4(6, 0x4000, 0, &tcp(DATA_PORT)),
                Pass,
            ),
            ("tcp ssh", ipv4(6, 0x4000, 0, &tcp(22)), Pass),
            ("ipv6 tcp to data port", ipv6(6, &tcp(DATA_PORT)), Pass),
            ("ipv4 udp dns", ipv4(17, 0, 0, &udp(53, 32)), Pass),
            (
                "ipv4 udp to data port + 1",
                ipv4(17, 0, 0, &udp(DATA_PORT + 1, 32)),
                Pass,
            ),
            ("ipv6 udp other port", ipv6(17, &udp(443, 32)), Pass),
            (
                "ipv6 icmpv6 (nd)",
                ipv6(58, &[135, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                Pass,
            ),
            (
                "ipv6 hop-by-hop then udp",
                ipv6(
                    0,
                    &[17, 0, 1, 4, 0, 0, 0, 0, 0x9c, 0x40, 0x1a, 0x7f, 0, 8, 0, 0],
                ),
                Pass,
            ),
            (
                "ipv4 later fragment",
                ipv4(17, 0x0010, 0, &udp(DATA_PORT, 32)),
                Pass,
            ),
            (
                "ipv4 first fragment (MF)",
                ipv4(17, 0x2000, 0, &udp(DATA_PORT, 32)),
                Pass,
            ),
            ("vlan tagged", vlan, Pass),
            ("ipv4 header says version 6", bad_version, Pass),
            ("ipv4 ihl 4", short_ihl, Pass),
            ("ipv6 header says version 4", v6_as_v4, Pass),
            ("udp header cut short", udp_header_cut, Pass),
            (
                "ipv4 header cut short",
                ipv4(17, 0, 0, &[])[..30].to_vec(),
                Pass,
            ),
            ("ethernet header only", eth(0x0800), Pass),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::golden::*;
    use super::*;

    #[test]
    fn rust_rules_on_golden_frames() {
        for (name, frame, want) in frames() {
            assert_eq!(classify(&frame, &PORTS), want, "{name}");
        }
        // The same data-port frame with only the VXLAN port configured passes.
        let frames = frames();
        assert_eq!(classify(&frames[0].1, &[VXLAN_PORT]), Verdict::Pass);
        assert_eq!(classify(&[], &PORTS), Verdict::Pass);
        assert_eq!(classify(&[0x08], &PORTS), Verdict::Pass);
    }

    #[test]
    fn classify_is_total_on_every_prefix() {
        for (_, frame, _) in frames() {
            for end in 0..=frame.len() {
                let _ = classify(&frame[..end], &PORTS);
            }
        }
    }

    #[test]
    fn jumps_land_inside_the_program() {
        let insns = program(&PORTS, 3, XDP_PASS);
        for (i, insn) in insns.iter().enumerate() {
            if insn.code & 0x07 == 0x05 && insn.code != JMP_CALL && insn.code != JMP_EXIT {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!(
                    target > i as i64 && (target as usize) < insns.len(),
                    "insn {i} jumps to {target}"
                );
            }
        }
        assert_eq!(insns.last().unwrap().code, JMP_EXIT);
    }

    /// Loads the real program into the kernel and runs every golden frame
    /// through it with BPF_PROG_TEST_RUN (needs root / CAP_BPF; no network).
    #[test]
    fn kernel_runs_the_program_on_golden_frames() {
        let map = super::super::bpf::create_xsk_map(1).expect("create XSKMAP (root needed)");
        use std::os::fd::AsRawFd;
        // In a test run no socket is in the map, so a redirect returns
        // the miss action: DROP here marks "would redirect".
        let test_build =
            super::super::bpf::load_xdp_program(&program(&PORTS, map.as_raw_fd(), XDP_DROP))
                .expect("verifier accepts the filter");
        let service_build =
            super::super::bpf::load_xdp_program(&program(&PORTS, map.as_raw_fd(), XDP_PASS))
                .expect("verifier accepts the service build");
        for (name, frame, want) in frames() {
            if frame.len() < ETH_HLEN {
                continue; // the kernel refuses test frames shorter than Ethernet
            }
            let got = super::super::bpf::test_run(&test_build, &frame)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let expect = if want == Verdict::Redirect {
                XDP_DROP
            } else {
                XDP_PASS
            };
            assert_eq!(got, expect, "{name}: kernel verdict {got}");
            // The service build never drops: an empty queue slot passes.
            assert_eq!(
                super::super::bpf::test_run(&service_build, &frame).unwrap(),
                XDP_PASS,
                "{name}"
            );
        }
        // Port list baked in at load: a program for the VXLAN port alone
        // passes the data-port frame.
        let vxlan_only =
            super::super::bpf::load_xdp_program(&program(&[VXLAN_PORT], map.as_raw_fd(), XDP_DROP))
                .unwrap();
        let frames = frames();
        assert_eq!(
            super::super::bpf::test_run(&vxlan_only, &frames[0].1).unwrap(),
            XDP_PASS
        );
        assert_eq!(
            super::super::bpf::test_run(&vxlan_only, &frames[1].1).unwrap(),
            XDP_DROP
        );
    }
}
