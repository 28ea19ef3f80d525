//! The command line: `weft keygen | pubkey | launch | status`.

use crate::launch::{self, LaunchArgs};
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

/// Default address of the local status server.
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:6782";

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version,
    about = "weft joins hosts into one private, encrypted overlay network, entirely in userspace.",
    long_about = "weft joins hosts into one private, encrypted overlay network, entirely in userspace.\n\n\
Run one `weft launch` per host. Hosts authenticate each other with a shared network secret \
(Noise XXpsk0 over TCP) and carry packets in encrypted UDP datagrams on the same port.\n\n\
Quick start on two hosts (as root):\n  \
weft keygen > /etc/weft/key\n  \
head -c 32 /dev/urandom | base64 > /etc/weft/secret   # copy the same file to every host\n  \
weft launch --overlay 10.40.0.1/16 --listen 198.18.0.1:6783 --peer 198.18.0.2:6783 \\\n      \
--secret-file /etc/weft/secret --key-file /etc/weft/key\n  \
weft status"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a new static X25519 private key (base64). Redirected to a file, the file gets mode 0600.
    Keygen,
    /// Read a private key on stdin and print its public key.
    Pubkey,
    /// Create the overlay device and join the network; runs in the foreground until SIGINT/SIGTERM.
    Launch(Box<LaunchArgs>),
    /// Check this host (kernel, MTU, offloads, OVS, AF_XDP, TUN) and print which datapath weft would use, and why.
    Preflight(crate::host::preflight::PreflightArgs),
    /// Measure the in-process pipeline (frame, seal, open, unframe) per cipher: packets/s and Gbit/s per core.
    Bench(crate::bench::BenchArgs),
    /// Kernel OVS fast datapath tools: run a standalone plaintext fastdp switch, dump its flows and counters.
    Fastdp(crate::datapath::odp::standalone::FastdpArgs),
    /// Show this host's connections (from the status server of a running `weft launch`).
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where `weft launch` serves its status.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_STATUS_ADDR)]
        status_addr: SocketAddr,
    },
}

/// Runs the command line and returns the process exit code:
/// 0 success, 1 runtime failure, 2 bad input (usage, values, environment).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    match cli.command {
        Command::Keygen => keygen(),
        Command::Pubkey => pubkey(),
        Command::Launch(args) => launch::run(*args),
        Command::Status { json, status_addr } => status(json, status_addr),
        Command::Preflight(args) => crate::host::preflight::run(&args),
        Command::Bench(args) => crate::bench::run(&args),
        Command::Fastdp(args) => crate::datapath::odp::standalone::run(&args),
    }
}

fn keygen() -> ExitCode {
    let key = crate::noise::StaticKey::generate();
    restrict_stdout_file();
    let mut out = std::io::stdout();
    if writeln!(out, "{}", key.private_base64()).is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `weft keygen > file` should leave a private file: if stdout is a regular
/// file, make it mode 0600 before the key is written into it.
fn restrict_stdout_file() {
    // SAFETY: fstat/fchmod on fd 1 with a zeroed stat buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(1, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG {
            libc::fchmod(1, 0o600);
        }
    }
}

fn pubkey() -> ExitCode {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("weft: cannot read the private key from stdin: {e}");
        return ExitCode::from(2);
    }
    match crate::noise::StaticKey::from_base64(&text, "the key on stdin") {
        Ok(k) => {
            println!("{}", k.public_base64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::from(2)
        }
    }
}

fn status(json: bool, addr: SocketAddr) -> ExitCode {
    match crate::api::http::fetch(addr) {
        Ok(s) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", s.render_text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
