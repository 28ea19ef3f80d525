//! The command line: `weft keygen | pubkey | secret new | ca new | cert sign | cert show | launch | connect | forget | status | preflight | bench | fastdp`.

use crate::launch::{self, LaunchArgs};
use clap::{Parser, Subcommand};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Default address of the local status server.
pub const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:6782";

#[derive(Parser, Debug)]
#[command(
    name = "weft",
    version = crate::VERSION,
    about = "weft joins hosts into one private, encrypted overlay network, entirely in userspace.",
    long_about = "weft joins hosts into one private, encrypted overlay network, entirely in userspace.\n\n\
Run one `weft launch` per host. Hosts authenticate each other with a shared network secret \
(Noise XXpsk0 over TCP) and carry packets in encrypted UDP datagrams on the same port.\n\n\
Quick start on two hosts (as root; the README has the full walk-through):\n  \
weft secret new /etc/weft/secret    # on the first host; copy the file to every host (mode 0600)\n  \
weft keygen /etc/weft/key           # on every host: its own key (mode 0600)\n  \
weft launch --overlay 10.40.0.1/16 --listen 198.18.0.1:6783 --peer 198.18.0.2:6783 \\\n      \
--secret-file /etc/weft/secret --key-file /etc/weft/key\n  \
weft status\n\n\
The second host runs the same launch with --overlay 10.40.0.2/16 --listen 198.18.0.2:6783 \
--peer 198.18.0.1:6783."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a new static X25519 private key (base64). With FILE: write it
    /// there (mode 0600, creating the directory) and print the public key;
    /// without: print it (a redirected file gets mode 0600).
    Keygen {
        /// Where to write the private key, e.g. /etc/weft/key.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// The network secret every host shares: `weft secret new FILE`.
    Secret {
        #[command(subcommand)]
        action: SecretCommand,
    },
    /// Read a private key on stdin and print its public key.
    Pubkey,
    /// The network certificate authority: `weft ca new` (a CA key to keep
    /// offline and the CA certificate every host gets with --ca-cert).
    Ca {
        #[command(subcommand)]
        action: crate::identity::commands::CaCommand,
    },
    /// Host certificates: `weft cert sign` (bind a host's key to its
    /// addresses) and `weft cert show` (fields, fingerprint, verification).
    Cert {
        #[command(subcommand)]
        action: crate::identity::commands::CertCommand,
    },
    /// Create the overlay device and join the network; runs in the foreground until SIGINT/SIGTERM.
    Launch(Box<LaunchArgs>),
    /// Check this host (kernel, MTU, offloads, OVS, AF_XDP, TUN) and print which datapath weft would use, and why.
    Preflight(crate::host::preflight::PreflightArgs),
    /// Measure the in-process pipeline (frame, seal, open, unframe) per cipher: packets/s and Gbit/s per core.
    Bench(crate::bench::BenchArgs),
    /// Kernel OVS fast datapath tools: run a standalone plaintext fastdp switch, dump its flows and counters.
    Fastdp(crate::datapath::odp::standalone::FastdpArgs),
    /// Add a peer to a running `weft launch` and connect to it now (it is redialled with backoff until `weft forget`).
    Connect {
        /// The peer: IP, IP:PORT, HOST or HOST:PORT (port defaults to 6783; a host name is resolved when dialled).
        #[arg(value_name = "ADDR")]
        peer: String,
        /// The status address of the weft to change (each weft in a network namespace has its own).
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_STATUS_ADDR)]
        status_addr: SocketAddr,
    },
    /// Remove a peer from a running `weft launch`: close its connection and never redial it.
    Forget {
        /// The peer's address, as given to --peer or `weft connect`.
        #[arg(value_name = "ADDR")]
        peer: String,
        /// The status address of the weft to change.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_STATUS_ADDR)]
        status_addr: SocketAddr,
    },
    /// A peer is gone for good: this host takes over its IPAM chunks, which
    /// the other hosts keep reserved (its pods may still run) until this or
    /// --ipalloc-reclaim-after.
    Rmpeer {
        /// The departed peer's name, as `weft status ipam` shows it.
        #[arg(value_name = "NAME")]
        name: String,
        /// The status address of the weft to change.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_STATUS_ADDR)]
        status_addr: SocketAddr,
    },
    /// Show this host's connections and mesh (from the status server of a running `weft launch`).
    ///
    /// `weft status peers` shows the mesh: every peer by name and identity,
    /// its overlay addresses, its connections, and how this host reaches
    /// it (direct, or via which peer and why).
    Status {
        /// What to show: everything (default), only `peers`, or `ipam`.
        #[arg(value_enum, value_name = "VIEW")]
        view: Option<StatusView>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Where `weft launch` serves its status.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_STATUS_ADDR)]
        status_addr: SocketAddr,
    },
}

/// What `weft status` shows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum StatusView {
    /// The mesh: peers, their connections and routes.
    Peers,
    /// IPAM: the chunks of --ipalloc-range each host owns, addresses in use.
    Ipam,
}

/// `weft secret ...`.
#[derive(Subcommand, Debug)]
enum SecretCommand {
    /// Make a new network secret: 32 random bytes, base64. With FILE: write
    /// it there (mode 0600, creating the directory); without: print it.
    /// Copy the same file to every host.
    New {
        /// Where to write the secret, e.g. /etc/weft/secret.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Replace FILE if it exists (hosts with the old secret can no longer join).
        #[arg(long)]
        force: bool,
    },
}

/// Runs the command line and returns the process exit code:
/// 0 success, 1 runtime failure, 2 bad input (usage, values, environment).
pub fn main() -> ExitCode {
    // A container runtime runs the CNI plugin with CNI_COMMAND set and the
    // network configuration on stdin: the same binary is the plugin.
    if crate::cni::invoked_as_plugin() {
        return crate::cni::plugin_main();
    }
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
        Command::Keygen { file, force } => keygen(file.as_deref(), force),
        Command::Secret {
            action: SecretCommand::New { file, force },
        } => secret_new(file.as_deref(), force),
        Command::Pubkey => pubkey(),
        Command::Ca {
            action: crate::identity::commands::CaCommand::New(args),
        } => crate::identity::commands::ca_new(&args),
        Command::Cert { action } => match action {
            crate::identity::commands::CertCommand::Sign(args) => {
                crate::identity::commands::cert_sign(&args)
            }
            crate::identity::commands::CertCommand::Show(args) => {
                crate::identity::commands::cert_show(&args)
            }
        },
        Command::Launch(args) => launch::run(*args),
        Command::Status {
            view,
            json,
            status_addr,
        } => status(view, json, status_addr),
        Command::Connect { peer, status_addr } => control(status_addr, &peer, true),
        Command::Forget { peer, status_addr } => control(status_addr, &peer, false),
        Command::Rmpeer { name, status_addr } => rmpeer(status_addr, &name),
        Command::Preflight(args) => crate::host::preflight::run(&args),
        Command::Bench(args) => crate::bench::run(&args),
        Command::Fastdp(args) => crate::datapath::odp::standalone::run(&args),
    }
}

/// Writes `contents` to a new file only its owner can read (0600),
/// creating the parent directory (0700) if needed. An existing file is
/// replaced only with `force`.
pub fn write_private_file(path: &Path, contents: &str, force: bool) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
        }
    }
    if path.exists() && !force {
        return Err(format!(
            "{} already exists; keep it, or pass --force to replace it",
            path.display()
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // An existing file keeps its mode on open: make it private too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod 600 {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn secret_new(file: Option<&Path>, force: bool) -> ExitCode {
    use base64::Engine;
    use rand_core::RngCore;
    let mut bytes = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut bytes);
    let text = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    match file {
        Some(path) => match write_private_file(path, &text, force) {
            Ok(()) => {
                eprintln!(
                    "weft: wrote a new network secret to {} (mode 0600); copy this file to every host",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft secret new: {e}");
                ExitCode::from(2)
            }
        },
        None => {
            restrict_stdout_file();
            if std::io::stdout().write_all(text.as_bytes()).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
    }
}

fn keygen(file: Option<&Path>, force: bool) -> ExitCode {
    let key = crate::noise::StaticKey::generate();
    if let Some(path) = file {
        return match write_private_file(path, &format!("{}\n", key.private_base64()), force) {
            Ok(()) => {
                eprintln!(
                    "weft: wrote a new private key to {} (mode 0600); its public key:",
                    path.display()
                );
                println!("{}", key.public_base64());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("weft keygen: {e}");
                ExitCode::from(2)
            }
        };
    }
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

/// `weft connect` (`connect` true) and `weft forget`: exit 0 when done, 1
/// when weft refused or is not running, 2 for a malformed address.
fn control(status_addr: SocketAddr, peer: &str, connect: bool) -> ExitCode {
    use crate::api::control::ControlRequest;
    use crate::mesh::target::PeerTarget;
    let target = match PeerTarget::parse(peer) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft: {e}");
            return ExitCode::from(2);
        }
    };
    if let (true, PeerTarget::Name { host, port }) = (connect, &target) {
        // A name that does not resolve now is most likely a typo: say so
        // here rather than have weft retry it forever.
        if let Err(e) =
            crate::mesh::target::resolve(host, *port, crate::mesh::target::Family::Either)
        {
            eprintln!("weft: {peer:?} is not an address, and as a host name it does not resolve ({e}); check the spelling or /etc/hosts");
            return ExitCode::from(2);
        }
    }
    let peer = target.to_string();
    let request = if connect {
        ControlRequest::Connect { peer }
    } else {
        ControlRequest::Forget { peer }
    };
    ask(status_addr, &request)
}

/// `weft rmpeer NAME`: exit 0 when done, 1 when refused or not running.
fn rmpeer(status_addr: SocketAddr, name: &str) -> ExitCode {
    let request = crate::api::control::ControlRequest::Rmpeer {
        name: name.to_string(),
    };
    ask(status_addr, &request)
}

/// Sends one control request and prints the answer: exit 0 when done, 1
/// when refused or weft is not running.
fn ask(status_addr: SocketAddr, request: &crate::api::control::ControlRequest) -> ExitCode {
    match crate::api::control::send(status_addr, request) {
        Ok(reply) if reply.ok => {
            println!("{}", reply.message);
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            eprintln!("weft: {}", reply.message);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("weft: {e}");
            ExitCode::from(1)
        }
    }
}

fn status(view: Option<StatusView>, json: bool, addr: SocketAddr) -> ExitCode {
    match crate::api::http::fetch(addr) {
        Ok(s) => {
            match (view, json) {
                (None, true) => {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default())
                }
                (None, false) => print!("{}", s.render_text()),
                (Some(StatusView::Ipam), json) => {
                    let Some(ipam) = s.ipam else {
                        eprintln!("weft: this weft runs without IPAM (start it with --ipalloc-range CIDR)");
                        return ExitCode::from(1);
                    };
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&ipam).unwrap_or_default()
                        );
                    } else {
                        print!("{}", ipam.render_text());
                    }
                }
                (Some(StatusView::Peers), json) => {
                    let Some(mesh) = s.mesh else {
                        eprintln!("weft: this weft runs no mesh (plaintext mode has static VTEPs, not peers); `weft status` shows them");
                        return ExitCode::from(1);
                    };
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&mesh).unwrap_or_default()
                        );
                    } else {
                        print!("{}", mesh.render_text());
                    }
                }
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

    #[test]
    fn version_names_the_commit() {
        let v = Cli::command().render_version();
        assert!(v.contains(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains("commit"), "{v}");
    }

    #[test]
    fn private_files_are_0600_in_a_new_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-cli-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("etc/weft/secret");
        write_private_file(&path, "x\n", false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = write_private_file(&path, "y\n", false).unwrap_err();
        assert!(e.contains("--force"), "{e}");
        write_private_file(&path, "y\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
