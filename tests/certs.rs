//! Network certificates, in network namespaces: hosts with certificates
//! from the network CA talk; a host with the secret but no certificate,
//! or with a certificate for other addresses, cannot take an address
//! over and the owner's traffic is unaffected; a revoked certificate
//! disconnects its host; `weft cert sign` and `weft launch` refuse bad
//! certificates with exit code 2.

mod common;

use common::switched::*;
use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `weft ARGS` on the host (no namespace needed: no network).
fn weft(args: &[&str]) -> Output {
    Command::new(WEFT)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run weft")
}

/// Makes a CA in `dir` (ca.key, ca.crt).
fn make_ca(dir: &Path) {
    let out = weft(&[
        "ca",
        "new",
        "--name",
        "test-net",
        "--key",
        &dir.join("ca.key").display().to_string(),
        "--cert",
        &dir.join("ca.crt").display().to_string(),
    ]);
    assert!(out.status.success(), "weft ca new: {out:?}");
}

/// Signs a certificate for host `h`'s key with the CA in `ca_dir`,
/// covering `overlay`, written to the host's `host.crt`; returns its
/// fingerprint.
fn sign(ca_dir: &Path, h: &Host, overlay: &str) -> String {
    sign_with_options(ca_dir, h, overlay, &[])
}

/// [`sign`] with more `weft cert sign` options.
fn sign_with_options(ca_dir: &Path, h: &Host, overlay: &str, extra: &[&str]) -> String {
    let path = |p: std::path::PathBuf| p.display().to_string();
    let (ca_key, ca_crt) = (path(ca_dir.join("ca.key")), path(ca_dir.join("ca.crt")));
    let (key, out) = (path(h.path("key")), path(h.path("host.crt")));
    let mut args = vec![
        "cert",
        "sign",
        "--ca-key",
        &ca_key,
        "--ca-cert",
        &ca_crt,
        "--name",
        &h.ns,
        "--key-file",
        &key,
        "--overlay",
        overlay,
        "--out",
        &out,
        "--force",
    ];
    args.extend_from_slice(extra);
    let out = weft(&args);
    assert!(out.status.success(), "weft cert sign: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("fingerprint ")
        .expect("sign prints the fingerprint")
        .to_string()
}

/// `--ca-cert` and `--cert` flags for host `i`.
fn cert_flags(net: &Switched, i: usize, ca_dir: &Path) -> Vec<String> {
    vec![
        "--ca-cert".into(),
        ca_dir.join("ca.crt").display().to_string(),
        "--cert".into(),
        net.hosts[i].path("host.crt").display().to_string(),
    ]
}

fn start_certified(net: &mut Switched, i: usize, ca_dir: &Path, extra: &[&str]) {
    let mut args = cert_flags(net, i, ca_dir);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.start_extra(i, &args);
}

/// Three hosts on a switch; the CA lives in host 0's scratch directory;
/// hosts 0 and 1 have certificates for their own addresses and know each
/// other.
fn certified_pair() -> (Switched, std::path::PathBuf) {
    let mut net = Switched::new(3);
    let ca_dir = net.hosts[0].path("ca");
    std::fs::create_dir_all(&ca_dir).expect("mkdir ca");
    make_ca(&ca_dir);
    for i in 0..2 {
        let overlay = net.hosts[i].overlay.clone();
        sign(&ca_dir, &net.hosts[i], &overlay);
    }
    net.hosts[1].peers = vec![net.addr(0)];
    (net, ca_dir)
}

/// Whether `ns`'s peer list shows only `owner` claiming `claim`.
fn only_owner_claims(ns: &str, owner: &str, claim: &str) -> bool {
    peers(ns).is_some_and(|p| {
        p.iter()
            .filter(|x| {
                x["claims"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c == claim))
            })
            .all(|x| x["name"] == owner)
    })
}

#[test]
fn two_hosts_with_certificates_ping_each_other() {
    require_root!();
    let (mut net, ca_dir) = certified_pair();
    // Host 0's certificate ends within the week: it says so.
    let overlay = net.hosts[0].overlay.clone();
    sign_with_options(&ca_dir, &net.hosts[0], &overlay, &["--valid-for", "2d"]);
    start_certified(&mut net, 0, &ca_dir, &[]);
    start_certified(&mut net, 1, &ca_dir, &[]);
    assert!(
        net.ping_within(1, 0, Duration::from_secs(20)),
        "{}",
        net.hosts[1].logs()
    );
    assert!(net.ping_within(0, 1, Duration::from_secs(5)));
    for h in &net.hosts[..2] {
        assert!(h.logs().contains("peer certificate "), "{}", h.logs());
    }
    let expires = "this host's certificate expires";
    assert!(
        net.hosts[0].logs().contains(expires),
        "{}",
        net.hosts[0].logs()
    );
    assert!(!net.hosts[1].logs().contains(expires));
}

#[test]
fn a_host_without_a_certificate_cannot_connect_or_take_an_address() {
    require_root!();
    let (mut net, ca_dir) = certified_pair();
    start_certified(&mut net, 0, &ca_dir, &[]);
    start_certified(&mut net, 1, &ca_dir, &[]);
    assert!(net.ping_within(1, 0, Duration::from_secs(20)));
    // Host 2 knows the secret, has no certificate and claims host 0's address.
    net.hosts[2].overlay = net.hosts[0].overlay.clone();
    net.hosts[2].peers = vec![net.addr(0), net.addr(1)];
    net.start(2);
    let (a, b, c) = (
        net.hosts[0].ns.clone(),
        net.hosts[1].ns.clone(),
        net.hosts[2].ns.clone(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            net.hosts[0].logs().contains("refused: has no certificate")
                && net.hosts[1].logs().contains("refused: has no certificate")
                && net.hosts[2]
                    .logs()
                    .contains("refused this host: has no certificate")
        }),
        "{}\n{}\n{}",
        net.hosts[0].logs(),
        net.hosts[1].logs(),
        net.hosts[2].logs()
    );
    // Host 1 still reaches host 0, and only host 0 owns its address.
    for _ in 0..5 {
        assert!(net.ping(1, 0), "{}", peers_text(&b));
        std::thread::sleep(Duration::from_millis(300));
    }
    for ns in [&a, &b] {
        assert!(
            only_owner_claims(ns, &a, "10.40.0.1/32"),
            "{}",
            peers_text(ns)
        );
        assert!(
            peers(ns).is_some_and(|p| p.iter().all(|x| x["name"] != c.as_str())),
            "{ns} knows the uncertified host: {}",
            peers_text(ns)
        );
    }
}

#[test]
fn a_certificate_for_other_addresses_cannot_take_an_address() {
    require_root!();
    let (mut net, ca_dir) = certified_pair();
    start_certified(&mut net, 0, &ca_dir, &[]);
    start_certified(&mut net, 1, &ca_dir, &[]);
    assert!(net.ping_within(1, 0, Duration::from_secs(20)));
    // Host 2 has a valid certificate for 10.40.0.9 and claims host 0's address.
    sign(&ca_dir, &net.hosts[2], "10.40.0.9/16");
    net.hosts[2].overlay = net.hosts[0].overlay.clone();
    net.hosts[2].peers = vec![net.addr(0), net.addr(1)];
    start_certified(&mut net, 2, &ca_dir, &["--allow-uncovered-overlay"]);
    let c = net.hosts[2].ns.clone();
    let line = format!("address claim 10.40.0.1/32 of {c} (");
    for i in 0..2 {
        let ns = net.hosts[i].ns.clone();
        let want = format!("Refused claim: 10.40.0.1/32 of {c} (");
        assert!(
            wait_until(Duration::from_secs(20), || {
                let t = peers_text(&ns);
                t.contains(&want) && t.contains("not covered by its certificate")
            }),
            "{ns}: {}\n{}",
            peers_text(&ns),
            net.hosts[i].logs()
        );
        assert!(
            net.hosts[i].logs().lines().any(|l| l.contains(&line)
                && l.contains("refused: not covered by its certificate")),
            "{}",
            net.hosts[i].logs()
        );
    }
    // The certified intruder is connected, yet host 0 keeps its address
    // and its traffic.
    let (a, b) = (net.hosts[0].ns.clone(), net.hosts[1].ns.clone());
    assert!(
        peers(&b).is_some_and(|p| p.iter().any(|x| x["name"] == c.as_str())),
        "{}",
        peers_text(&b)
    );
    for _ in 0..5 {
        assert!(net.ping(1, 0), "{}", peers_text(&b));
        std::thread::sleep(Duration::from_millis(300));
    }
    for ns in [&a, &b] {
        let text = peers_text(ns);
        assert!(
            !text.contains(&format!("Refused claim: 10.40.0.1/32 of {a} (")),
            "{text}"
        );
    }
}

#[test]
fn a_revoked_certificate_disconnects_its_host() {
    require_root!();
    let (mut net, ca_dir) = certified_pair();
    let revoked = net.hosts[0].path("revoked");
    std::fs::write(&revoked, "# revoked certificates\n").expect("write the list");
    let revoked_text = revoked.display().to_string();
    start_certified(&mut net, 0, &ca_dir, &["--revoked", &revoked_text]);
    start_certified(&mut net, 1, &ca_dir, &[]);
    assert!(net.ping_within(1, 0, Duration::from_secs(20)));
    let out = weft(&[
        "cert",
        "show",
        "--json",
        &net.hosts[1].path("host.crt").display().to_string(),
    ]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let fingerprint = shown["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    std::fs::write(
        &revoked,
        format!("# revoked certificates\n{fingerprint}  # host 1\n"),
    )
    .expect("write the list");
    assert!(
        wait_until(Duration::from_secs(10), || {
            net.hosts[0].logs().contains("is revoked")
                && net.hosts[1]
                    .logs()
                    .contains("refused this host: its certificate")
        }),
        "{}\n{}",
        net.hosts[0].logs(),
        net.hosts[1].logs()
    );
    // Disconnected and kept out: no ping gets through any more.
    assert!(
        wait_until(Duration::from_secs(10), || !net.ping(1, 0)),
        "{}",
        peers_text(&net.hosts[0].ns)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!net.ping(1, 0), "{}", peers_text(&net.hosts[0].ns));
}

#[test]
fn cert_sign_refuses_bad_input() {
    let dir = std::env::temp_dir().join(format!("weft-certs-sign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    make_ca(&dir);
    let key = dir.join("host.key");
    assert!(weft(&["keygen", &key.display().to_string()])
        .status
        .success());
    let (ca_key, ca_crt, key, out) = (
        dir.join("ca.key").display().to_string(),
        dir.join("ca.crt").display().to_string(),
        key.display().to_string(),
        dir.join("host.crt").display().to_string(),
    );
    // `weft cert sign` with this CA key, this key option, and `extra`.
    let sign_with = |ca_key: &str, key_option: [&str; 2], extra: &[&str]| {
        let mut args = vec![
            "cert",
            "sign",
            "--ca-key",
            ca_key,
            "--ca-cert",
            &ca_crt,
            "--name",
            "h",
            "--out",
            &out,
        ];
        args.extend_from_slice(&key_option);
        args.extend_from_slice(extra);
        weft(&args)
    };
    let key_file = ["--key-file", key.as_str()];
    let cases: &[(&[&str], &str)] = &[
        (&["--overlay", "10.40.0.0/16"], "10.40.0.0"),
        (&["--overlay", "10.40.0.1"], "10.40.0.1"),
        (
            &["--overlay", "10.40.0.1/16", "--subnet", "10.41.0.1/24"],
            "10.41.0.1/24",
        ),
        (
            &[
                "--overlay",
                "10.40.0.1/16",
                "--subnet",
                "10.41.0.0/16",
                "--subnet",
                "10.41.3.0/24",
            ],
            "overlaps",
        ),
        (
            &["--overlay", "10.40.0.1/16", "--mac", "01:00:5e:00:00:01"],
            "unicast",
        ),
        (&["--overlay", "10.40.0.1/16", "--mac", "zz"], "zz"),
        (
            &["--overlay", "10.40.0.1/16", "--valid-for", "100000d"],
            "outlive the CA",
        ),
        (
            &["--overlay", "10.40.0.1/16", "--valid-for", "12"],
            "duration",
        ),
    ];
    let overlay = ["--overlay", "10.40.0.1/16"];
    let refused = |o: Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "wanted {needle:?}: {err}");
    };
    for (extra, needle) in cases {
        refused(sign_with(&ca_key, key_file, extra), needle);
    }
    // A wrong public key and a CA key that does not match the CA certificate.
    refused(
        sign_with(&ca_key, ["--public-key", "short"], &overlay),
        "--public-key",
    );
    let other = dir.join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    make_ca(&other);
    let other_key = other.join("ca.key").display().to_string();
    refused(sign_with(&other_key, key_file, &overlay), "does not belong");
    assert!(
        !Path::new(&out).exists(),
        "a refused certificate was written"
    );
    // And a good one verifies.
    let o = sign_with(&ca_key, key_file, &overlay);
    assert!(o.status.success(), "{o:?}");
    let o = weft(&["cert", "show", &out, "--ca-cert", &ca_crt]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("verifies     yes"),
        "{o:?}"
    );
    let other_crt = other.join("ca.crt").display().to_string();
    let o = weft(&["cert", "show", &out, "--ca-cert", &other_crt]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("verifies     NO"),
        "{o:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn launch_refuses_a_certificate_that_does_not_fit() {
    require_root!();
    let net = Switched::new(2);
    let ca_dir = net.hosts[0].path("ca");
    std::fs::create_dir_all(&ca_dir).expect("mkdir ca");
    make_ca(&ca_dir);
    let other_ca = net.hosts[0].path("other-ca");
    std::fs::create_dir_all(&other_ca).expect("mkdir");
    make_ca(&other_ca);
    let h = &net.hosts[0];
    let launch = |extra: &[String]| {
        let mut args = h.launch_args();
        args.extend(extra.iter().cloned());
        h.run_weft(&args, &[], &[])
    };
    let ca = ca_dir.join("ca.crt").display().to_string();
    let crt = h.path("host.crt").display().to_string();
    let flags = |ca: &str| -> Vec<String> {
        vec!["--ca-cert".into(), ca.into(), "--cert".into(), crt.clone()]
    };
    // For another host's key.
    sign(&ca_dir, &net.hosts[1], "10.40.0.1/16");
    std::fs::copy(net.hosts[1].path("host.crt"), &crt).expect("copy");
    let (st, err) = launch(&flags(&ca));
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("is for the key"), "{err}");
    // For other addresses.
    sign(&ca_dir, h, "10.40.0.9/16");
    let (st, err) = launch(&flags(&ca));
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains("does not cover --overlay 10.40.0.1/16"),
        "{err}"
    );
    // From a CA this host does not trust.
    sign(&ca_dir, h, "10.40.0.1/16");
    let (st, err) = launch(&flags(&other_ca.join("ca.crt").display().to_string()));
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("not among --ca-cert"), "{err}");
    // A CA without a certificate, and a certificate without a CA.
    let (st, err) = launch(&["--ca-cert".into(), ca.clone()]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--ca-cert needs --cert"), "{err}");
    let (st, err) = launch(&["--cert".into(), crt.clone()]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("need --ca-cert"), "{err}");
    // Revoked.
    let fp = sign(&ca_dir, h, "10.40.0.1/16");
    let revoked = h.path("revoked");
    std::fs::write(&revoked, format!("{fp}\n")).expect("write");
    let mut args = flags(&ca);
    args.extend(["--revoked".into(), revoked.display().to_string()]);
    let (st, err) = launch(&args);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("is revoked"), "{err}");
}
