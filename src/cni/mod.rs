//! Kubernetes / CNI: the `weft` binary is also the CNI plugin of type
//! `"weft"` (spec 1.1). Run with `CNI_COMMAND` in its environment, it reads
//! the network configuration on stdin, asks the local `weft launch` (over an
//! abstract unix socket in the caller's network namespace) for the pod's
//! address, sets up the pod's veth over netlink and prints the result.
//!
//! - [`plugin`]: the protocol, sans-IO (parsing, validation, version
//!   negotiation, results and errors, what ADD/DEL/CHECK/STATUS/GC do).
//! - [`api`]: the contract between the plugin and weft (requests, replies,
//!   error codes), shared with weft's socket server.
//! - [`client`]: the plugin's side of weft's CNI socket.
//! - [`netdev`]: the real effects: namespaces, veths, addresses, routes,
//!   through [`crate::sys`].
//! - [`server`]: weft's side of the socket (in `weft launch`).

pub mod api;
pub mod client;
pub mod netdev;
pub mod plugin;
pub mod server;

use std::io::{Read, Write};
use std::process::ExitCode;

/// Whether this process was started as a CNI plugin (`CNI_COMMAND` set).
pub fn invoked_as_plugin() -> bool {
    std::env::var_os("CNI_COMMAND").is_some()
}

/// Runs the plugin on the process's environment, stdin and stdout.
pub fn plugin_main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(16 << 20).read_to_end(&mut stdin);
    let env = |name: &str| std::env::var(name).ok();
    let output = match read {
        Ok(_) => plugin::run(&env, &stdin, &mut netdev::LinuxSystem),
        Err(e) => plugin::Output {
            stdout: plugin::error_json(
                rscni_types::version::SpecVersion::CURRENT,
                &rscni_types::error::Error::IOFailure(format!("cannot read stdin: {e}")),
            ),
            stderr: String::new(),
            exit: 1,
        },
    };
    if !output.stderr.is_empty() {
        let _ = std::io::stderr().write_all(output.stderr.as_bytes());
    }
    let mut stdout = std::io::stdout().lock();
    if !output.stdout.is_empty() {
        let _ = stdout.write_all(output.stdout.as_bytes());
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
    ExitCode::from(output.exit)
}
