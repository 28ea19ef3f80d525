//! Fast-datapath tests against a real Linux openvswitch module, in a VM.
//!
//! The host kernel has no openvswitch module, so these tests boot Debian's
//! 6.1 kernel in qemu (TCG) with `tests/vm/run.sh` and run a guest script
//! there. The VM sees the host root read-only over 9p, so the weft binary
//! cargo built for this test runs inside it unchanged. The guest script's
//! verdict comes back over the serial console as a `WEFT-VM-RESULT:` line.
//!
//! Skipped (with the reason printed) only where qemu cannot run: not root
//! (the installer and the VM's 9p export of `/` need it) or not x86_64.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The weft binary cargo built for these tests (the VM runs it via 9p).
const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// Why the VM tests cannot run here, or None when they can.
fn cannot_run_qemu() -> Option<&'static str> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Some("the VM test boots an x86_64 Debian kernel; this is not x86_64 Linux");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root: installs qemu and the kernel package, exports / to the VM");
    }
    None
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Outcome of one VM run: the marker line and the whole console log.
struct VmRun {
    passed: bool,
    marker: String,
    console: String,
}

/// Boots the VM and runs `guest_script` (relative to the repository) with `args`.
fn run_in_vm(guest_script: &str, args: &[&str]) -> VmRun {
    let root = repo_root();
    let script: PathBuf = root.join(guest_script);
    let started = Instant::now();
    let out = Command::new(root.join("tests/vm/run.sh"))
        .arg(&script)
        .args(args)
        // The launch test runs ~60 s alone; three VMs share two cores.
        .env(
            "WEFT_VM_TIMEOUT",
            std::env::var("WEFT_VM_TIMEOUT").unwrap_or_else(|_| "300".into()),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run tests/vm/run.sh: {e}"));
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let marker = console
        .lines()
        .rfind(|l| l.starts_with("WEFT-VM-RESULT:"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "--- VM console ({guest_script}, {:.1} s) ---\n{console}\n--- run.sh stderr ---\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    VmRun {
        passed: marker == "WEFT-VM-RESULT: PASS" && out.status.success(),
        marker,
        console,
    }
}

/// The VM boots, openvswitch loads, and namespaces + veth work inside it.
#[test]
fn vm_boots_with_openvswitch_and_netns() {
    if let Some(reason) = cannot_run_qemu() {
        eprintln!("skipped: {reason}");
        return;
    }
    let run = run_in_vm("tests/vm/smoke.sh", &[]);
    assert!(run.passed, "VM smoke test failed: marker {:?}", run.marker);
    assert!(run
        .console
        .contains("smoke: openvswitch loaded, netns + veth ping ok"));
}

/// Two namespaces in the VM run `weft fastdp run`: ping and an 8 MiB
/// checksummed TCP transfer go through the kernel datapath; weft's flows
/// carry the bytes and only a handful of packets reach weft's userspace
/// (misses); the datapath is gone after SIGTERM.
#[test]
fn vm_fastdp_ping_and_tcp_through_the_kernel_datapath() {
    if let Some(reason) = cannot_run_qemu() {
        eprintln!("skipped: {reason}");
        return;
    }
    assert!(Path::new(WEFT).is_file(), "weft binary {WEFT} missing");
    let run = run_in_vm("tests/vm/fastdp.sh", &[WEFT]);
    assert!(run.passed, "fastdp VM test failed: marker {:?}", run.marker);
    assert!(run.console.contains("fastdp: PASS"));
    let flows_line = run
        .console
        .lines()
        .find(|l| l.starts_with("fastdp: bytes switched by weft's flows"))
        .expect("flow byte count line");
    let bytes: u64 = flows_line
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("byte count");
    assert!(bytes >= 8 << 20, "kernel flows carried only {bytes} bytes");
}

/// `weft launch --iface bridge --mode fastdp --trusted-subnet` on two
/// namespaces in the VM, each with a container on its bridge: both
/// connections prove fastdp (heartbeats through the VXLAN vport,
/// acknowledged over the control connection); ping and an 8 MiB
/// checksummed TCP transfer go through kernel flows with the sleeve
/// counters at 0; lowering the underlay MTU fails the heartbeats, the
/// connection moves to the sleeve with the reason in `weft status` and
/// traffic continues; the path MTU is verified again and the retry brings
/// fastdp back; the datapath and bridge are gone after SIGTERM.
#[test]
fn vm_weft_launch_fastdp_proves_falls_back_and_retries() {
    if let Some(reason) = cannot_run_qemu() {
        eprintln!("skipped: {reason}");
        return;
    }
    assert!(Path::new(WEFT).is_file(), "weft binary {WEFT} missing");
    let run = run_in_vm("tests/vm/fastdp_launch.sh", &[WEFT]);
    assert!(
        run.passed,
        "fastdp launch VM test failed: marker {:?}",
        run.marker
    );
    assert!(run.console.contains("fastdp-launch: PASS"));
    let bytes: u64 = run
        .console
        .lines()
        .find(|l| l.starts_with("fastdp-launch: bytes switched by weft's flows"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("flow byte count line");
    assert!(bytes >= 8 << 20, "kernel flows carried only {bytes} bytes");
    assert!(
        run.console
            .contains("(sleeve: fastdp failed: heartbeat of 1500 bytes"),
        "no fallback reason in the status output"
    );
}
