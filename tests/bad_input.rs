//! Bad input: exit code 2, one clear line naming the value, nothing left behind.

mod common;

use common::*;
use std::process::ExitStatus;

/// Runs weft on host A with `args` and checks the rejection contract.
fn expect_rejected(
    host: &Host,
    what: &str,
    args: &[String],
    env: &[(&str, &str)],
    prefix: &[&str],
    needles: &[&str],
) {
    let (status, stderr) = host.run_weft(args, env, prefix);
    check_rejection(host, what, status, &stderr, needles);
}

fn check_rejection(host: &Host, what: &str, status: ExitStatus, stderr: &str, needles: &[&str]) {
    assert_eq!(
        status.code(),
        Some(2),
        "{what}: exit status should be 2, got {status}; stderr:\n{stderr}"
    );
    // Progress lines (INFO/WARN) may come before it; the error itself is one line.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && !l.contains(" INFO ")
                && !l.contains(" WARN ")
                && !l.contains(" DEBUG ")
        })
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: expected exactly one error line on stderr, got:\n{stderr}"
    );
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{what}: the error should name {needle:?}: {}",
            errors[0]
        );
    }
    assert!(!link_exists(&host.ns, "weft0"), "{what}: weft0 left behind");
    assert!(
        !has_route(&host.ns, "10.40."),
        "{what}: an overlay route left behind"
    );
    assert!(
        !has_route(&host.ns, "dev weft0"),
        "{what}: a route via weft0 left behind"
    );
    eprintln!("{what}: {}", errors[0].trim());
}

/// Launch arguments of `host` with flag `flag` replaced by `value` (or added).
fn with(host: &Host, flag: &str, value: &str) -> Vec<String> {
    let mut args = host.launch_args();
    if let Some(i) = args.iter().position(|a| a == flag) {
        args[i + 1] = value.to_string();
    } else {
        args.push(flag.into());
        args.push(value.into());
    }
    args
}

/// Launch arguments of `host` without the given flags (and their values).
fn without(host: &Host, flags: &[&str]) -> Vec<String> {
    let mut args = host.launch_args();
    for flag in flags {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args.drain(i..i + 2);
        }
    }
    args
}

#[test]
fn malformed_overlay_and_peer() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    for bad in [
        "10.40.0.300/16",
        "10.40.0.1",
        "10.40.0.1/33",
        "banana/16",
        "10.40.0.0/16",
    ] {
        expect_rejected(
            a,
            &format!("--overlay {bad}"),
            &with(a, "--overlay", bad),
            &[],
            &[],
            &["--overlay", bad],
        );
    }
    for bad in [
        "198.18.0.999:6783",
        // Host names are peers too (resolved when dialled); a name that
        // breaks host-name syntax is not.
        "peer_example:6783",
        "peer..example",
        "198.18.0.2:99999",
        "198.18.0.2:0",
    ] {
        expect_rejected(
            a,
            &format!("--peer {bad}"),
            &with(a, "--peer", bad),
            &[],
            &[],
            &["--peer", bad],
        );
    }
    expect_rejected(
        a,
        "--listen nonsense",
        &with(a, "--listen", "nonsense"),
        &[],
        &[],
        &["--listen", "nonsense"],
    );
}

#[test]
fn ports_in_use() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    let listen = format!("{}:{PORT}", a.underlay);

    let l = listen.clone();
    let udp = in_netns(&a.ns, move || {
        std::net::UdpSocket::bind(&l).expect("bind UDP")
    });
    expect_rejected(
        a,
        "UDP port in use",
        &a.launch_args(),
        &[],
        &[],
        &[&listen, "in use"],
    );
    drop(udp);

    let l = listen.clone();
    let tcp = in_netns(&a.ns, move || {
        std::net::TcpListener::bind(&l).expect("bind TCP")
    });
    expect_rejected(
        a,
        "TCP port in use",
        &a.launch_args(),
        &[],
        &[],
        &[&listen, "in use"],
    );
    drop(tcp);

    let status = in_netns(&a.ns, || {
        std::net::TcpListener::bind("127.0.0.1:6782").expect("bind status")
    });
    expect_rejected(
        a,
        "status port in use",
        &a.launch_args(),
        &[],
        &[],
        &["127.0.0.1:6782"],
    );
    drop(status);

    // Another weft already running on the same port.
    let mut net = net;
    net.a.start(&[]);
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        status_json(&net.a.ns).is_some()
    }));
    // (Another overlay and device name, or the route or device check would fire first.)
    let mut args = with(&net.a, "--iface-name", "weft1");
    let i = args
        .iter()
        .position(|a| a == "--overlay")
        .expect("--overlay");
    args[i + 1] = "10.41.0.1/16".into();
    let (status, stderr) = net.a.run_weft(&args, &[], &[]);
    assert_eq!(
        status.code(),
        Some(2),
        "second weft on the same port: {stderr}"
    );
    assert!(stderr.contains(&listen), "{stderr}");
    assert!(
        !link_exists(&net.a.ns, "weft1"),
        "the second weft left weft1 behind"
    );
    assert!(
        link_exists(&net.a.ns, "weft0"),
        "the second weft must not disturb the first one's device"
    );
}

#[test]
fn no_permission_for_tun() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    // As user nobody: the secret comes from the environment (the root-owned
    // 0600 files are unreadable), a fresh key is made for the run.
    let args = without(a, &["--secret-file", "--key-file"]);
    expect_rejected(
        a,
        "TUN as nobody",
        &args,
        &[("WEFT_SECRET", SECRET)],
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &["/dev/net/tun"],
    );
}

#[test]
fn overlay_colliding_with_a_route() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    run(
        "ip",
        &["-n", &a.ns, "route", "add", "10.77.0.0/16", "dev", "lo"],
    );
    expect_rejected(
        a,
        "route collision",
        &with(a, "--overlay", "10.77.0.1/16"),
        &[],
        &[],
        &["10.77.0.1/16", "10.77.0.0/16"],
    );
    // A narrower existing route inside the overlay collides too.
    run(
        "ip",
        &["-n", &a.ns, "route", "add", "10.88.3.0/24", "dev", "lo"],
    );
    expect_rejected(
        a,
        "route inside the overlay",
        &with(a, "--overlay", "10.88.0.1/16"),
        &[],
        &[],
        &["10.88.0.1/16", "10.88.3.0/24"],
    );
    // The underlay's own subnet.
    let underlay_overlay = format!("{}/16", std::net::Ipv4Addr::new(198, 18, 200, 1));
    expect_rejected(
        a,
        "overlay over the underlay",
        &with(a, "--overlay", &underlay_overlay),
        &[],
        &[],
        &[&underlay_overlay],
    );
}

#[test]
fn missing_or_empty_secret_and_key() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    let missing = a.path("no-such-secret").display().to_string();
    expect_rejected(
        a,
        "missing secret file",
        &with(a, "--secret-file", &missing),
        &[],
        &[],
        &[&missing],
    );

    // Empty, too short (seven characters: guessable offline from one
    // captured handshake) and whitespace-only secret files.
    for (file, text, what, rule) in [
        ("empty-secret", "", "empty secret file", None),
        (
            "short-secret",
            "hunter2\n",
            "short secret file",
            Some(["holds 7 bytes", "at least 16", "weft secret new"]),
        ),
        (
            "blank-secret",
            "\n  \n",
            "whitespace-only secret file",
            None,
        ),
    ] {
        let path = a.path(file);
        std::fs::write(&path, text).expect("write");
        let path = path.display().to_string();
        let mut needles = vec![path.as_str()];
        needles.extend(rule.iter().flatten());
        expect_rejected(
            a,
            what,
            &with(a, "--secret-file", &path),
            &[],
            &[],
            &needles,
        );
    }

    let no_secret = without(a, &["--secret-file"]);
    expect_rejected(
        a,
        "no secret at all",
        &no_secret,
        &[],
        &[],
        &["--secret-file", "WEFT_SECRET"],
    );
    expect_rejected(
        a,
        "empty WEFT_SECRET",
        &no_secret,
        &[("WEFT_SECRET", "")],
        &[],
        &["WEFT_SECRET"],
    );

    let missing_key = a.path("no-such-key").display().to_string();
    expect_rejected(
        a,
        "missing key file",
        &with(a, "--key-file", &missing_key),
        &[],
        &[],
        &[&missing_key],
    );
    let bad_key = a.path("bad-key");
    std::fs::write(&bad_key, "not a key\n").expect("write");
    let bad_key = bad_key.display().to_string();
    expect_rejected(
        a,
        "malformed key file",
        &with(a, "--key-file", &bad_key),
        &[],
        &[],
        &[&bad_key],
    );

    let bad_config = a.path("bad.toml");
    std::fs::write(&bad_config, "[timers]\nrekey_after_minutes = 3\n").expect("write");
    let bad_config = bad_config.display().to_string();
    // toml's message spans several lines (it quotes the offending line), so
    // only the exit code, the file name and the cleanup are checked here.
    let (status, stderr) = a.run_weft(&with(a, "--config", &bad_config), &[], &[]);
    assert_eq!(status.code(), Some(2), "unknown config key: {stderr}");
    assert!(
        stderr.contains(&bad_config) && stderr.contains("rekey_after_minutes"),
        "unknown config key: {stderr}"
    );
    assert!(
        !link_exists(&a.ns, "weft0"),
        "unknown config key: weft0 left behind"
    );
}

/// With WEFT_SECRET instead of a file, weft runs (the flip side of the checks above).
#[test]
fn secret_from_environment_works() {
    require_root!();
    let mut net = Net::pair(1500);
    let args_a = without(&net.a, &["--secret-file"]);
    let args_b = without(&net.b, &["--secret-file"]);
    net.a.start_with(&args_a, &[("WEFT_SECRET", SECRET)]);
    net.b.start_with(&args_b, &[("WEFT_SECRET", SECRET)]);
    net.wait_established(std::time::Duration::from_secs(10));
    assert!(wait_until(std::time::Duration::from_secs(5), || ping(
        &net.a.ns,
        &net.b.overlay_ip()
    )));
}

/// A secret or key file others can read works but gets a warning naming it.
#[test]
fn readable_secret_file_warns() {
    require_root!();
    use std::os::unix::fs::PermissionsExt;
    let mut net = Net::pair(1500);
    let secret = net.a.path("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    net.a.start(&[]);
    assert!(
        wait_until(std::time::Duration::from_secs(5), || status_json(&net.a.ns)
            .is_some()),
        "weft did not start"
    );
    let logs = net.a.logs();
    let path = secret.display().to_string();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains(&path)),
        "no warning naming the readable secret file {path}:\n{logs}"
    );
}

#[test]
fn malformed_ipam_flags() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    let dir = a.path("ipam").display().to_string();
    let ipam = |extra: &[&str]| {
        let mut args = with(a, "--ipalloc-dir", &dir);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    for (bad, needles) in [
        ("10.32.0.0", vec!["--ipalloc-range", "10.32.0.0"]),
        ("10.32.0.1/16", vec!["--ipalloc-range", "10.32.0.0/16"]),
        ("fd00::/64", vec!["--ipalloc-range", "IPv4"]),
        ("10.32.0.0/31", vec!["--ipalloc-range", "1-30"]),
    ] {
        expect_rejected(
            a,
            &format!("--ipalloc-range {bad}"),
            &ipam(&["--ipalloc-range", bad]),
            &[],
            &[],
            &needles,
        );
    }
    // Two ranges (issue 16): one of each family, an IPv6 range wide
    // enough, and no IPv6 range where it is not implemented yet.
    for (what, extra, needles) in [
        (
            "two IPv4 ranges",
            vec![
                "--ipalloc-range",
                "10.40.0.0/16",
                "--ipalloc-range",
                "10.41.0.0/16",
            ],
            vec!["10.41.0.0/16", "second IPv4"],
        ),
        (
            "two IPv6 ranges",
            vec![
                "--ipalloc-range",
                "10.40.0.0/16",
                "--ipalloc-range",
                "fd32::/64",
                "--ipalloc-range",
                "fd33::/64",
            ],
            vec!["fd33::/64", "second IPv6"],
        ),
        (
            "a too small IPv6 range",
            vec![
                "--ipalloc-range",
                "10.40.0.0/16",
                "--ipalloc-range",
                "fd32::/124",
            ],
            vec!["fd32::/124", "1-120"],
        ),
        (
            "an IPv6 range in TUN mode",
            vec![
                "--ipalloc-range",
                "10.40.0.0/16",
                "--ipalloc-range",
                "fd32::/64",
            ],
            vec!["fd32::/64", "bridge mode only"],
        ),
        (
            "an IPv6 range outside the IPv6 overlay prefix in TUN mode",
            vec![
                "--overlay",
                "fd40::1/64",
                "--ipalloc-range",
                "10.40.0.0/16",
                "--ipalloc-range",
                "fd32::/64",
            ],
            vec!["fd32::/64", "fd40::1/64", "must lie inside"],
        ),
    ] {
        expect_rejected(a, what, &ipam(&extra), &[], &[], &needles);
    }
    expect_rejected(
        a,
        "--ipalloc-reclaim-after",
        &ipam(&[
            "--ipalloc-range",
            "10.40.0.0/16",
            "--ipalloc-reclaim-after",
            "soon",
        ]),
        &[],
        &[],
        &["--ipalloc-reclaim-after", "soon"],
    );
    expect_rejected(
        a,
        "--ipalloc-dir without --ipalloc-range",
        &ipam(&[]),
        &[],
        &[],
        &["--ipalloc-dir", "--ipalloc-range"],
    );
    // TUN mode: the range must lie in the overlay prefix, and --overlay
    // stays required.
    expect_rejected(
        a,
        "range outside the overlay in TUN mode",
        &ipam(&["--ipalloc-range", "10.32.0.0/16"]),
        &[],
        &[],
        &["10.32.0.0/16", "--overlay", "/12"],
    );
    let mut no_overlay = without(a, &["--overlay"]);
    no_overlay.extend(["--ipalloc-range".into(), "10.32.0.0/16".into()]);
    expect_rejected(
        a,
        "no overlay in TUN mode",
        &no_overlay,
        &[],
        &[],
        &["--iface bridge", "--overlay"],
    );
    assert!(
        !a.path("ipam").exists(),
        "nothing written for rejected input"
    );
}

#[test]
fn malformed_kube_flags() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    let args = |extra: &[&str]| {
        let mut args = a.launch_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let no_node = [("NODE_NAME", ""), ("KUBERNETES_SERVICE_HOST", "")];
    let dual = [
        "--ipalloc-range",
        "10.40.0.0/16",
        "--ipalloc-range",
        "fd32::/48",
    ];
    let missing = a.path("no-such-token").display().to_string();
    for (what, extra, needles) in [
        (
            "--kube without a node name",
            vec!["--kube", "--kube-api", "https://198.18.0.1:6443"],
            vec!["--kube-node-name", "NODE_NAME"],
        ),
        (
            "--kube outside a pod without --kube-api",
            vec!["--kube", "--kube-node-name", "n1"],
            vec!["KUBERNETES_SERVICE_HOST", "--kube-api"],
        ),
        (
            "plain http to another host",
            vec![
                "--kube",
                "--kube-node-name",
                "n1",
                "--kube-api",
                "http://198.18.0.1:8001",
            ],
            vec!["http://198.18.0.1:8001", "loopback"],
        ),
        (
            "a missing token file",
            vec![
                "--kube",
                "--kube-node-name",
                "n1",
                "--kube-api",
                "https://198.18.0.1:6443",
                "--kube-token-file",
                &missing,
            ],
            vec![missing.as_str(), "--kube-token-file"],
        ),
        (
            "--kube-refresh without --kube",
            vec!["--kube-refresh", "2s"],
            vec!["--kube-refresh", "need --kube"],
        ),
        (
            "a pod range outside the range",
            vec![
                "--ipalloc-range",
                "10.40.0.0/16",
                "--ipalloc-pod-cidr",
                "10.33.0.0/24",
            ],
            vec!["10.33.0.0/24", "10.40.0.0/16"],
        ),
        (
            "--ipalloc-pod-cidr without --ipalloc-range",
            vec!["--ipalloc-pod-cidr", "10.40.7.0/24"],
            vec!["--ipalloc-pod-cidr", "need --ipalloc-range"],
        ),
        (
            "an IPv6 pod range outside the IPv6 range",
            [&dual[..], &["--ipalloc-pod-cidr", "fd33:0:0:7::/64"]].concat(),
            vec!["fd33:0:0:7::/64", "fd32::/48", "does not lie inside"],
        ),
        (
            "an IPv6 pod range without an IPv6 range",
            vec![
                "--ipalloc-range",
                "10.40.0.0/16",
                "--ipalloc-pod-cidr",
                "fd32:0:0:7::/64",
            ],
            vec![
                "fd32:0:0:7::/64",
                "no IPv6 --ipalloc-range",
                "add an IPv6 --ipalloc-range",
            ],
        ),
        (
            "two IPv6 pod ranges",
            [
                &dual[..],
                &["--ipalloc-pod-cidr", "fd32:0:0:7::/64"],
                &["--ipalloc-pod-cidr", "fd32:0:0:8::/64"],
            ]
            .concat(),
            vec!["fd32:0:0:7::/64", "fd32:0:0:8::/64", "second IPv6"],
        ),
    ] {
        expect_rejected(a, what, &args(&extra), &no_node, &[], &needles);
    }
    // The config key takes a list, like ipalloc-range; its errors name
    // the file and the key.
    let config = a.path("pod-cidrs.toml");
    std::fs::write(
        &config,
        "ipalloc-range = [\"10.40.0.0/16\", \"fd32::/48\"]\nipalloc-pod-cidr = [\"10.40.7.0/24\", \"fd33:0:0:7::/64\"]\n",
    )
    .expect("write");
    let config = config.display().to_string();
    expect_rejected(
        a,
        "an IPv6 pod range outside the IPv6 range, from the config file",
        &args(&["--config", &config]),
        &no_node,
        &[],
        &[&config, "ipalloc-pod-cidr", "fd33:0:0:7::/64", "fd32::/48"],
    );
}
