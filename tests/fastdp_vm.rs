//! Fast-datapath tests against a real Linux openvswitch module, in a VM.
//!
//! The host kernel has no openvswitch module, so these tests boot Debian's
//! 6.1 kernel in qemu (TCG) with `tests/vm/run.sh` and run a guest script
//! there. The VM sees the host root read-only over 9p, so the weft binary
//! cargo built for this test runs inside it unchanged. The guest script's
//! verdict comes back over the serial console as a `WEFT-VM-RESULT:` line.
//!
//! The VM runs whatever kernel `tests/vm/install.sh` picks (the build
//! `linux-image-amd64` names in the package lists, or `WEFT_VM_KERNEL`) and
//! prints it. On a kernel weft's known-issues table rules fastdp out for,
//! the guest scripts check what weft must do there (refuse, fall back to
//! the sleeve, never hang on exit); elsewhere they check fastdp itself.
//! Each test checks that the guest took the branch the table asks for.
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

/// Outcome of one VM run: the verdict lines and the whole console log.
struct VmRun {
    passed: bool,
    marker: String,
    checks: String,
    teardown: String,
    console: String,
    /// The kernel the VM ran, as `vm-run` printed it: ABI name and Debian
    /// package version (`6.1.0-48-amd64`, `6.1.172-1`).
    kernel: (String, String),
}

impl VmRun {
    /// The failure message: which verdict failed, checks first.
    fn why(&self) -> String {
        format!(
            "kernel {} (Debian {}): checks {:?}, teardown {:?}, result {:?}",
            self.kernel.0, self.kernel.1, self.checks, self.teardown, self.marker
        )
    }

    /// Whether weft's known-issues table rules fastdp out on this VM's
    /// kernel: what the guest script's branch must agree with.
    fn kernel_known_bad(&self) -> bool {
        let build = format!(
            "#1 SMP PREEMPT_DYNAMIC Debian {} (from vm-run)",
            self.kernel.1
        );
        let release = weft::host::kernel::KernelRelease::parse_with_build(&self.kernel.0, &build)
            .unwrap_or_else(|e| panic!("VM kernel {:?}: {e}", self.kernel));
        !weft::host::known_issues::kernel_blockers(&release, weft::host::plan::Datapath::Fastdp)
            .is_empty()
    }
}

/// The last line of `text` that starts with `prefix`, or "".
fn last_line(text: &str, prefix: &str) -> String {
    text.lines()
        .rfind(|l| l.starts_with(prefix))
        .unwrap_or("")
        .to_string()
}

/// Boots the VM and runs `guest_script` (relative to the repository) with
/// `args`. The kernel is whatever tests/vm/install.sh picks (the one
/// `linux-image-amd64` names in this machine's package lists, or
/// `WEFT_VM_KERNEL`); it is printed and returned.
fn run_in_vm(guest_script: &str, args: &[&str]) -> VmRun {
    let root = repo_root();
    let script: PathBuf = root.join(guest_script);
    let started = Instant::now();
    let out = Command::new(root.join("tests/vm/run.sh"))
        .arg(&script)
        .args(args)
        // The launch test's VM ran 448 s alone on a quiet 2-core machine
        // (TCG, the host's binaries over 9p); four VMs share two cores, and
        // a loaded CI machine is slower still.
        .env(
            "WEFT_VM_TIMEOUT",
            std::env::var("WEFT_VM_TIMEOUT").unwrap_or_else(|_| "900".into()),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run tests/vm/run.sh: {e}"));
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let marker = last_line(&console, "WEFT-VM-RESULT:");
    let checks = last_line(&console, "WEFT-VM-CHECKS:");
    let teardown = last_line(&console, "WEFT-VM-TEARDOWN:");
    // "vm-run: kernel 6.1.0-48-amd64 (Debian 6.1.172-1), 29 modules, ..."
    let kernel_line = last_line(&stderr, "vm-run: kernel ");
    let kernel = kernel_line
        .strip_prefix("vm-run: kernel ")
        .and_then(|rest| {
            let (abi, rest) = rest.split_once(" (Debian ")?;
            let (version, _) = rest.split_once(')')?;
            Some((abi.to_string(), version.to_string()))
        })
        .unwrap_or_default();
    eprintln!(
        "--- VM console ({guest_script}, kernel {} Debian {}, {:.1} s) ---\n{console}\n--- run.sh stderr ---\n{stderr}",
        kernel.0,
        kernel.1,
        started.elapsed().as_secs_f64()
    );
    VmRun {
        passed: marker == "WEFT-VM-RESULT: PASS" && out.status.success(),
        marker,
        checks,
        teardown,
        console,
        kernel,
    }
}

/// The guest script took the branch the known-issues table asks for on
/// this kernel, and said so.
fn assert_branch(run: &VmRun, name: &str) -> bool {
    let bad = run.kernel_known_bad();
    let expected = if bad {
        format!("{name}: branch: known-bad kernel (ovs-tunnel-vport-release-hang)")
    } else {
        format!("{name}: branch: fastdp")
    };
    assert!(
        run.console.contains(&expected),
        "{}: expected the guest to print {expected:?}",
        run.why()
    );
    bad
}

/// Deleting an OVS datapath with a VXLAN vport: weft exits within its
/// deadline whatever the kernel does, and what the kernel did (hang or
/// not) agrees with weft's known-issues table for that kernel.
#[test]
fn vm_vport_teardown_agrees_with_the_known_issues_table() {
    if let Some(reason) = cannot_run_qemu() {
        eprintln!("skipped: {reason}");
        return;
    }
    assert!(Path::new(WEFT).is_file(), "weft binary {WEFT} missing");
    let run = run_in_vm("tests/vm/vport_teardown.sh", &[WEFT]);
    assert!(run.passed, "vport teardown VM test failed: {}", run.why());
    let observed = last_line(&run.console, "WEFT-VM-OBSERVED:");
    let expected = if run.kernel_known_bad() {
        "table=bad deletion=hung"
    } else {
        "table=good deletion=completed"
    };
    assert!(observed.ends_with(expected), "{}: {observed}", run.why());
}

/// The VM boots, openvswitch loads, and namespaces + veth work inside it.
#[test]
fn vm_boots_with_openvswitch_and_netns() {
    if let Some(reason) = cannot_run_qemu() {
        eprintln!("skipped: {reason}");
        return;
    }
    let run = run_in_vm("tests/vm/smoke.sh", &[]);
    assert!(run.passed, "VM smoke test failed: {}", run.why());
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
    assert!(run.passed, "fastdp VM test failed: {}", run.why());
    assert!(run.console.contains("fastdp: PASS"));
    if assert_branch(&run, "fastdp") {
        // Known-bad kernel: refused, and the forced run's exit did not hang.
        assert!(run.console.contains(
            "fastdp: weft said: weft fastdp: deleting OVS datapath weft did not complete within"
        ));
        return;
    }
    let bytes = last_number(&run.console, "fastdp: bytes switched by weft's flows")
        .expect("flow byte count line");
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
/// fastdp back; the datapath and bridge are gone after SIGTERM. Then, in
/// the same VM, the same over an IPv6-only underlay (2001:2::/48): fastdp
/// proven, ping and 8 MiB through kernel flows whose tunnel keys are IPv6,
/// nothing left after SIGTERM.
#[test]
fn vm_weft_launch_fastdp_proves_falls_back_and_retries() {
    if let Some(reason) = cannot_run_qemu() {
        eprintln!("skipped: {reason}");
        return;
    }
    assert!(Path::new(WEFT).is_file(), "weft binary {WEFT} missing");
    let run = run_in_vm("tests/vm/fastdp_launch.sh", &[WEFT]);
    assert!(run.passed, "fastdp launch VM test failed: {}", run.why());
    assert!(run.console.contains("fastdp-launch: PASS"));
    if assert_branch(&run, "fastdp-launch") {
        // Known-bad kernel: refused before touching the kernel; the sleeve
        // carried the transfer (the guest checked its checksum and count).
        assert!(run
            .console
            .contains("fastdp-launch: sleeve TCP: sent 8388608"));
        return;
    }
    let bytes = last_number(
        &run.console,
        "fastdp-launch: bytes switched by weft's flows",
    )
    .expect("flow byte count line");
    assert!(bytes >= 8 << 20, "kernel flows carried only {bytes} bytes");
    assert!(
        run.console
            .contains("(sleeve: fastdp failed: heartbeat of 1500 bytes"),
        "no fallback reason in the status output"
    );
    let bytes6 = last_number(
        &run.console,
        "fastdp-launch: IPv6 underlay: bytes switched by weft's flows",
    )
    .expect("IPv6 flow byte count line");
    assert!(
        bytes6 >= 8 << 20,
        "kernel flows with IPv6 tunnel keys carried only {bytes6} bytes"
    );
    assert!(
        run.console
            .contains("actions:set(tunnel(vni=1,dst=2001:2::2,ttl=64,csum)),output:"),
        "no flow with an IPv6 tunnel key in the console"
    );
}

/// The number at the end of the first console line starting with
/// `prefix` (None: no such line, or it ends in no number).
fn last_number(console: &str, prefix: &str) -> Option<u64> {
    console
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.trim().parse().ok())
}
