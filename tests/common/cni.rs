//! Running weft as a CNI plugin exactly as a container runtime does:
//! `CNI_*` variables, the configuration on stdin, in the host's namespace.

use super::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The minimal network configuration.
pub const MINIMAL: &str = r#"{"cniVersion":"1.0.0","name":"weftnet","type":"weft"}"#;

/// The plugin in namespace `ns` with `command`, for container `id` in `netns`.
pub fn plugin(ns: &str, command: &str, id: &str, netns: &str, conf: &str) -> Output {
    plugin_at(WEFT, ns, command, id, netns, conf)
}

/// Like [`plugin`], with the plugin binary at `program` (e.g. where an
/// installer put it).
pub fn plugin_at(
    program: &str,
    ns: &str,
    command: &str,
    id: &str,
    netns: &str,
    conf: &str,
) -> Output {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weft as a CNI plugin");
    let _ = child.stdin.take().unwrap().write_all(conf.as_bytes());
    child.wait_with_output().unwrap()
}

/// ADD, retried while weft says "try again later" (11: IPAM waiting for
/// the mesh to settle a claim), as runtimes retry.
pub fn add(ns: &str, id: &str, netns: &str) -> Value {
    add_at(WEFT, ns, id, netns, MINIMAL)
}

/// Like [`add`], with the plugin at `program` and configuration `conf`.
pub fn add_at(program: &str, ns: &str, id: &str, netns: &str, conf: &str) -> Value {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(20), || {
        let out = plugin_at(program, ns, "ADD", id, netns, conf);
        let done = out.status.success();
        last = Some(out);
        done
    });
    let out = last.unwrap();
    assert!(ok, "{ns}: ADD {id}: {}", show(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}
