//! `weft ca new`, `weft cert sign`, `weft cert show`.

use super::cert::{
    armor, dearmor, utc_text, CertBody, Certificate, Fingerprint, InterfaceAddr, MacPolicy,
    ARMOR_CA_KEY,
};
use super::trust::Trust;
use crate::cli::write_private_file;
use crate::mesh::claims::IpPrefix;
use crate::wire::ethernet::MacAddr;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `weft ca ...`.
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Make a network certificate authority: an Ed25519 key (keep it
    /// offline, mode 0600) and its self-signed CA certificate (copy it to
    /// every host and pass it with `weft launch --ca-cert`).
    ///
    /// Example: weft ca new --name example-net --key ca.key --cert ca.crt
    New(CaNewArgs),
}

/// Arguments of `weft ca new`.
#[derive(Args, Debug)]
pub struct CaNewArgs {
    /// The network's name, shown in `weft cert show`.
    #[arg(long)]
    pub name: String,
    /// How long the CA is valid: a number with d, h, m or s (host
    /// certificates cannot outlive it).
    #[arg(long, value_name = "DURATION", default_value = "3650d")]
    pub valid_for: String,
    /// Optional limit: host overlay addresses must lie in these prefixes (repeatable).
    #[arg(long = "overlay", value_name = "CIDR")]
    pub overlay: Vec<String>,
    /// Optional limit: host container subnets must lie in these prefixes (repeatable).
    #[arg(long = "subnet", value_name = "CIDR")]
    pub subnets: Vec<String>,
    /// Where to write the CA private key (mode 0600; keep it off the hosts).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Where to write the CA certificate.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// `weft cert ...`.
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Sign a host certificate: it binds the host's public key (from `weft
    /// keygen`) to its name, its overlay addresses, optional container
    /// subnets and MACs, for a limited time. Peers accept from the host
    /// only the addresses its certificate covers.
    ///
    /// Example: weft cert sign --ca-key ca.key --ca-cert ca.crt --name host1
    ///   --key-file host1.key --overlay 10.40.0.1/16 --out host1.crt
    Sign(SignArgs),
    /// Print a certificate: its fields, fingerprint (for revocation lists)
    /// and validity; with --ca-cert, whether it verifies against that CA.
    Show(ShowArgs),
}

/// Arguments of `weft cert sign`.
#[derive(Args, Debug)]
pub struct SignArgs {
    /// The CA private key (from `weft ca new`).
    #[arg(long, value_name = "FILE")]
    pub ca_key: PathBuf,
    /// The CA certificate (from `weft ca new`).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: PathBuf,
    /// The host's name.
    #[arg(long)]
    pub name: String,
    /// The host's public key in base64 (what `weft keygen` prints on the
    /// host; `weft pubkey < KEYFILE` prints it again).
    #[arg(
        long,
        value_name = "BASE64",
        required_unless_present = "key_file",
        conflicts_with = "key_file"
    )]
    pub public_key: Option<String>,
    /// Read the host's public key from its private key file instead.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// An overlay address the host may use, with its prefix length exactly
    /// as its `weft launch --overlay` (repeatable).
    #[arg(long = "overlay", value_name = "ADDR/PREFIX", required = true)]
    pub overlay: Vec<String>,
    /// A container subnet the host may claim (repeatable).
    #[arg(long = "subnet", value_name = "CIDR")]
    pub subnets: Vec<String>,
    /// Bridge mode: a source MAC address peers accept the host's frames
    /// from (repeatable). A bridge-mode host needs --mac or --any-mac.
    #[arg(long = "mac", value_name = "MAC", conflicts_with = "any_mac")]
    pub macs: Vec<String>,
    /// Bridge mode: peers accept the host's frames from any source MAC
    /// (a host bridging containers or VMs it cannot list in advance).
    #[arg(long)]
    pub any_mac: bool,
    /// How long the certificate is valid: a number with d, h, m or s.
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    pub valid_for: String,
    /// Where to write the certificate.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `weft cert show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The certificate file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Also check it against this CA certificate (repeatable).
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses `3650d`, `12h`, `30m`, `90s`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration: write a number with d, h, m or s, e.g. 365d");
    let t = text.trim();
    let split = t.len().checked_sub(1).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let mult = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(bad()),
        Some(s) => Ok(s),
    }
}

/// Reads an armored certificate file.
pub fn read_cert(path: &Path) -> Result<Certificate, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Certificate::from_armored(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads CA certificate files into a [`Trust`].
pub fn read_trust(paths: &[PathBuf]) -> Result<Trust, String> {
    let cas = paths
        .iter()
        .map(|p| read_cert(p))
        .collect::<Result<Vec<_>, _>>()?;
    Trust::new(cas).map_err(|e| format!("--ca-cert: {e}"))
}

fn parse_prefix(flag: &str, text: &str) -> Result<IpPrefix, String> {
    let p: IpPrefix = text.parse().map_err(|e| format!("{flag} {text:?}: {e}"))?;
    if p.to_string() != text && text.contains('/') {
        return Err(format!(
            "{flag} {text:?} has host bits set: did you mean {p}?"
        ));
    }
    Ok(p)
}

fn parse_subnets(texts: &[String]) -> Result<Vec<IpPrefix>, String> {
    texts.iter().map(|t| parse_prefix("--subnet", t)).collect()
}

/// An existing file is replaced only with `--force`.
fn refuse_existing(path: &Path, force: bool) -> Result<(), String> {
    if path.exists() && !force {
        return Err(format!(
            "{} already exists; keep it, or pass --force to replace it",
            path.display()
        ));
    }
    Ok(())
}

fn parse_interface(text: &str) -> Result<InterfaceAddr, String> {
    let (addr, len) = crate::launch::parse_overlay(text)?;
    Ok(InterfaceAddr { addr, len })
}

fn parse_mac(text: &str) -> Result<MacAddr, String> {
    let bad = || format!("--mac {text:?} is not a MAC address (write it like 02:42:0a:28:00:01)");
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    let mac = MacAddr(mac);
    if mac.is_multicast() || mac == MacAddr::default() {
        return Err(format!(
            "--mac {text}: a host can only claim a unicast, non-zero MAC address"
        ));
    }
    Ok(mac)
}

fn fail(cmd: &str, e: String) -> ExitCode {
    eprintln!("weft {cmd}: {e}");
    ExitCode::from(2)
}

/// `weft ca new`.
pub fn ca_new(args: &CaNewArgs) -> ExitCode {
    match ca_new_inner(args) {
        Ok(cert) => {
            eprintln!(
                "weft: wrote the CA key to {} (mode 0600: keep it offline) and the CA certificate to {} (copy it to every host)",
                args.key.display(),
                args.cert.display()
            );
            println!("fingerprint {}", cert.fingerprint());
            ExitCode::SUCCESS
        }
        Err(e) => fail("ca new", e),
    }
}

fn ca_new_inner(args: &CaNewArgs) -> Result<Certificate, String> {
    use ring::signature::KeyPair as _;
    let valid = parse_duration(&args.valid_for).map_err(|e| format!("--valid-for {e}"))?;
    let overlay = args
        .overlay
        .iter()
        .map(|t| {
            parse_prefix("--overlay", t).map(|p| InterfaceAddr {
                addr: p.addr(),
                len: p.len(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let subnets = parse_subnets(&args.subnets)?;
    for path in [&args.key, &args.cert] {
        refuse_existing(path, args.force)?;
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| "cannot use the generated key".to_string())?;
    let mut public_key = [0u8; 32];
    public_key.copy_from_slice(key.public_key().as_ref());
    let now = unix_now();
    let body = CertBody {
        is_ca: true,
        name: args.name.clone(),
        public_key,
        not_before: now.saturating_sub(60),
        not_after: now.saturating_add(valid),
        issuer: Fingerprint::default(),
        overlay,
        subnets,
        macs: MacPolicy::List(Vec::new()),
    };
    if let Some(e) = body.check() {
        return Err(e);
    }
    let cert = Certificate::sign(body, &key);
    write_private_file(&args.key, &armor(ARMOR_CA_KEY, pkcs8.as_ref()), args.force)?;
    write_public_file(&args.cert, &cert.to_armored())?;
    Ok(cert)
}

fn write_public_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `weft cert sign`.
pub fn cert_sign(args: &SignArgs) -> ExitCode {
    match cert_sign_inner(args) {
        Ok(cert) => {
            eprintln!(
                "weft: wrote the certificate of {} to {} (valid until {})",
                cert.body.name,
                args.out.display(),
                utc_text(cert.body.not_after)
            );
            println!("fingerprint {}", cert.fingerprint());
            ExitCode::SUCCESS
        }
        Err(e) => fail("cert sign", e),
    }
}

fn cert_sign_inner(args: &SignArgs) -> Result<Certificate, String> {
    let ca_cert = read_cert(&args.ca_cert)?;
    let key_text = std::fs::read_to_string(&args.ca_key)
        .map_err(|e| format!("cannot read {}: {e}", args.ca_key.display()))?;
    let pkcs8 = dearmor(ARMOR_CA_KEY, &key_text)
        .map_err(|e| format!("--ca-key {}: {e}", args.ca_key.display()))?;
    let ca_key = ring::signature::Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| {
        format!(
            "--ca-key {}: not an Ed25519 key from `weft ca new`",
            args.ca_key.display()
        )
    })?;
    {
        use ring::signature::KeyPair as _;
        if !ca_cert.body.is_ca || ca_key.public_key().as_ref() != ca_cert.body.public_key {
            return Err(format!(
                "--ca-key {} does not belong to --ca-cert {}",
                args.ca_key.display(),
                args.ca_cert.display()
            ));
        }
    }
    let public_key: [u8; 32] = match (&args.public_key, &args.key_file) {
        (Some(text), _) => B64
            .decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!("--public-key {text:?} is not a base64 32-byte public key (what `weft keygen` prints)")
            })?,
        (None, Some(path)) => crate::noise::StaticKey::from_file(path)
            .map_err(|e| format!("--key-file: {e}"))?
            .public(),
        (None, None) => return Err("give --public-key or --key-file".into()),
    };
    let valid = parse_duration(&args.valid_for).map_err(|e| format!("--valid-for {e}"))?;
    let overlay = args
        .overlay
        .iter()
        .map(|t| parse_interface(t))
        .collect::<Result<Vec<_>, _>>()?;
    let subnets = parse_subnets(&args.subnets)?;
    let macs = if args.any_mac {
        MacPolicy::Any
    } else {
        MacPolicy::List(
            args.macs
                .iter()
                .map(|m| parse_mac(m))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    let now = unix_now();
    let not_after = now.saturating_add(valid);
    if not_after > ca_cert.body.not_after {
        return Err(format!(
            "--valid-for {} would outlive the CA (valid until {}); choose a shorter --valid-for",
            args.valid_for,
            utc_text(ca_cert.body.not_after)
        ));
    }
    if now >= ca_cert.body.not_after {
        return Err(format!(
            "the CA expired {}",
            utc_text(ca_cert.body.not_after)
        ));
    }
    let body = CertBody {
        is_ca: false,
        name: args.name.clone(),
        public_key,
        // A minute back: hosts whose clocks are a little behind accept it.
        not_before: now.saturating_sub(60),
        not_after,
        issuer: ca_cert.fingerprint(),
        overlay,
        subnets,
        macs,
    };
    if let Some(e) = body.check() {
        return Err(e);
    }
    // Overlay addresses inside a subnet of the same certificate are fine
    // (the host's own container range); the CA's limits are not.
    let cert = Certificate::sign(body, &ca_key);
    if let Some(what) = super::trust::outside_ca(&ca_cert, &cert) {
        return Err(format!(
            "{what} lies outside the prefixes CA {} may sign",
            ca_cert.body.name
        ));
    }
    refuse_existing(&args.out, args.force)?;
    write_public_file(&args.out, &cert.to_armored())?;
    Ok(cert)
}

/// `weft cert show`.
pub fn cert_show(args: &ShowArgs) -> ExitCode {
    let cert = match read_cert(&args.file) {
        Ok(c) => c,
        Err(e) => return fail("cert show", e),
    };
    let now = unix_now();
    let verdict = if args.ca_certs.is_empty() {
        None
    } else {
        match read_trust(&args.ca_certs) {
            Ok(trust) => Some(if cert.body.is_ca {
                if cert.signed_by(&cert.body.public_key) {
                    Ok(())
                } else {
                    Err("this CA certificate is not validly self-signed".to_string())
                }
            } else {
                trust
                    .authenticate(cert.encoded())
                    .and_then(|c| trust.check_current(&c, now))
                    .map_err(|e| e.to_string())
            }),
            Err(e) => return fail("cert show", e),
        }
    };
    let b = &cert.body;
    let state = if now < b.not_before {
        "not valid yet"
    } else if now >= b.not_after {
        "expired"
    } else {
        "valid"
    };
    let macs = match &b.macs {
        MacPolicy::Any => vec!["any".to_string()],
        MacPolicy::List(l) => l.iter().map(|m| m.to_string()).collect(),
    };
    let key_text = B64.encode(b.public_key);
    if args.json {
        let json = serde_json::json!({
            "kind": if b.is_ca { "ca" } else { "host" },
            "name": b.name,
            "public_key": key_text,
            "fingerprint": cert.fingerprint().to_string(),
            "issuer": (!b.is_ca).then(|| b.issuer.to_string()),
            "not_before": b.not_before,
            "not_after": b.not_after,
            "state": state,
            "overlay": b.overlay.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            "subnets": b.subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "macs": macs,
            "verified": verdict.as_ref().map(|v| v.is_ok()),
            "verify_error": verdict.as_ref().and_then(|v| v.as_ref().err().cloned()),
        });
        println!("{json:#}");
    } else {
        let list = |v: Vec<String>| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        println!(
            "{} certificate {}",
            if b.is_ca { "CA" } else { "host" },
            b.name
        );
        println!("  fingerprint  {}", cert.fingerprint());
        println!("  public key   {key_text}");
        if !b.is_ca {
            println!("  issuer       {}", b.issuer);
        }
        println!(
            "  valid        {} to {} ({state})",
            utc_text(b.not_before),
            utc_text(b.not_after)
        );
        println!(
            "  overlay      {}",
            list(b.overlay.iter().map(|o| o.to_string()).collect())
        );
        println!(
            "  subnets      {}",
            list(b.subnets.iter().map(|s| s.to_string()).collect())
        );
        println!("  macs         {}", list(macs));
        match &verdict {
            None => {}
            Some(Ok(())) => println!("  verifies     yes, against --ca-cert"),
            Some(Err(e)) => println!("  verifies     NO: {e}"),
        }
    }
    match verdict {
        Some(Err(_)) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    }
}
