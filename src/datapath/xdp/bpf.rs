//! The few bpf(2) commands weft needs, issued directly: create the XSKMAP,
//! load the filter program, put sockets into the map, run the program on a
//! test frame (BPF_PROG_TEST_RUN) and read an attached program's name.
//! No libbpf: the program is assembled in Rust (see `filter`), so there is
//! no object file to parse.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// The name weft gives its program; a program with this name found on an
/// interface at start is weft's own, left behind by a killed process.
pub const PROGRAM_NAME: &str = "weft_xdp";

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    pub regs: u8,
    /// Signed offset (jumps, memory).
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable buffer of the length passed; the
    // kernel reads (and for some commands writes) at most that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put_u32(attr: &mut [u8], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, value: u64) {
    attr[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn get_u32(attr: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([attr[at], attr[at + 1], attr[at + 2], attr[at + 3]])
}

fn fd_from(rc: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new file descriptor we now own.
    unsafe { OwnedFd::from_raw_fd(rc as RawFd) }
}

/// Creates an XSKMAP with `entries` slots (one per RX queue).
pub fn create_xsk_map(entries: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 72];
    put_u32(&mut attr, 0, BPF_MAP_TYPE_XSKMAP);
    put_u32(&mut attr, 4, 4); // key: queue index
    put_u32(&mut attr, 8, 4); // value: socket fd
    put_u32(&mut attr, 12, entries.max(1));
    attr[28..28 + 8].copy_from_slice(b"weft_xsk");
    sys_bpf(BPF_MAP_CREATE, &mut attr).map(fd_from)
}

/// Puts the AF_XDP socket `socket` into slot `queue` of an XSKMAP.
pub fn xsk_map_insert(map: &OwnedFd, queue: u32, socket: RawFd) -> io::Result<()> {
    let key = queue;
    let value = socket as u32;
    let mut attr = [0u8; 32];
    put_u32(&mut attr, 0, map.as_raw_fd() as u32);
    put_u64(&mut attr, 8, &key as *const u32 as u64);
    put_u64(&mut attr, 16, &value as *const u32 as u64);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Loads an XDP program. On a verifier rejection the error carries the
/// verifier's log, which names the offending instruction.
pub fn load_xdp_program(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 72];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    // Log only on failure (level 0 first): a verbose log costs load time.
    match sys_bpf(BPF_PROG_LOAD, &mut { name_prog(attr) }) {
        Ok(rc) => Ok(fd_from(rc)),
        Err(first) => {
            put_u32(&mut attr, 24, 1);
            put_u32(&mut attr, 28, log.len() as u32);
            put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
            let _ = sys_bpf(BPF_PROG_LOAD, &mut { name_prog(attr) });
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(io::Error::new(
                first.kind(),
                format!("{first}; verifier: {}", tail.join(" | ")),
            ))
        }
    }
}

fn name_prog(mut attr: [u8; 72]) -> [u8; 72] {
    // prog_name sits at offset 48 in the BPF_PROG_LOAD attr.
    let name = PROGRAM_NAME.as_bytes();
    attr[48..48 + name.len()].copy_from_slice(name);
    attr
}

/// Runs `program` once on `frame` with BPF_PROG_TEST_RUN and gives back the
/// XDP action it returned. No packet leaves the host.
pub fn test_run(program: &OwnedFd, frame: &[u8]) -> io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut attr = [0u8; 80];
    put_u32(&mut attr, 0, program.as_raw_fd() as u32);
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u32(&mut attr, 12, out.len() as u32);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u64(&mut attr, 24, out.as_mut_ptr() as u64);
    put_u32(&mut attr, 32, 1); // repeat
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(get_u32(&attr, 4))
}

/// The name of the loaded program with kernel id `id` (e.g. the one
/// attached to an interface), so weft only ever removes its own.
pub fn program_name(id: u32) -> io::Result<String> {
    let mut attr = [0u8; 12];
    put_u32(&mut attr, 0, id);
    let fd = fd_from(sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?);
    let mut info = [0u8; 96];
    let mut attr = [0u8; 16];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // bpf_prog_info.name: 16 bytes at offset 64.
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}
