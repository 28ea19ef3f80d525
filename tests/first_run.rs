//! First run and daily operation (issue 15): the README quick start as
//! written, secret and key files, one-line usage errors, config keys,
//! leftovers of a killed weft, SIGHUP, ICMP unreachable, the service unit.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `weft ARGS` outside any namespace and returns (status, stdout, stderr).
fn weft(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(WEFT)
        .args(args)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .output()
        .expect("run weft");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn secret_new_and_keygen_make_private_files_in_new_directories() {
    let scratch = Scratch::new("first-run-files");
    let secret = scratch.0.join("etc/weft/secret");
    let (st, _, err) = weft(&["secret", "new", secret.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert_eq!(file_mode(&secret), 0o600);
    use base64::Engine;
    let text = fs::read_to_string(&secret).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .expect("base64");
    assert_eq!(bytes.len(), 32);
    // Never overwritten by accident.
    let (st, _, err) = weft(&["secret", "new", secret.to_str().unwrap()]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--force") && err.lines().count() == 1, "{err}");
    assert_eq!(fs::read_to_string(&secret).unwrap(), text);

    let key = scratch.0.join("other/dir/key");
    let (st, out, err) = weft(&["keygen", key.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert_eq!(file_mode(&key), 0o600);
    // It printed the public key, the same `weft pubkey` derives.
    let pubkey = pubkey_of(&key);
    assert_eq!(String::from_utf8_lossy(&pubkey.stdout).trim(), out.trim());

    // `--help`'s quick start names these commands.
    let (_, help, _) = weft(&["--help"]);
    assert!(help.contains("weft secret new /etc/weft/secret"), "{help}");
    assert!(help.contains("weft keygen /etc/weft/key"), "{help}");
    let (_, version, _) = weft(&["--version"]);
    assert!(version.contains("commit"), "{version}");
}

/// Extracts the fenced block between `<!-- quickstart:NAME -->` markers.
fn readme_block(readme: &str, name: &str) -> String {
    let start = format!("<!-- quickstart:{name} -->");
    let end = format!("<!-- /quickstart:{name} -->");
    let a = readme
        .find(&start)
        .unwrap_or_else(|| panic!("README lacks {start}"))
        + start.len();
    let b = readme[a..].find(&end).expect("end marker") + a;
    let block = &readme[a..b];
    let body = block
        .split_once("```sh\n")
        .expect("```sh fence")
        .1
        .rsplit_once("```")
        .expect("closing fence")
        .0;
    body.to_string()
}

/// The README quick start, as written, on two namespace hosts: only
/// /etc/weft becomes a scratch directory (the test must not write the
/// machine's /etc), `weft` is this build, and launch is exec'd so its pid
/// is weft's.
#[test]
fn readme_quick_start_runs_as_written() {
    require_root!();
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut net = Net::pair(1500);
    // The README's addresses are the hosts' underlay addresses.
    let readme_a = "198.18.0.1";
    let readme_b = "198.18.0.2";
    let bin_dir = Path::new(WEFT).parent().unwrap().display().to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let script = |host: &Host, name: &str| {
        let etc = host.path("etc-weft");
        readme_block(&readme, name)
            .replace("/etc/weft", &etc.display().to_string())
            .replace(readme_a, &net.a.underlay.to_string())
            .replace(readme_b, &net.b.underlay.to_string())
            .replace("\nweft launch ", "\nexec weft launch ")
    };
    let sa = script(&net.a, "host-a");
    let sb = script(&net.b, "host-b");
    assert!(sa.contains("exec weft launch") && sb.contains("exec weft launch"));
    // Host A: secret, key, config, launch (stays running).
    net.a
        .start_program("bash", &["-c".into(), sa], &[("PATH", &path)]);
    let secret_a = net.a.path("etc-weft/secret");
    assert!(
        wait_until(Duration::from_secs(10), || secret_a.exists()),
        "host A made no secret: {}",
        net.a.logs()
    );
    // "Copy /etc/weft/secret to host B ... chmod 600".
    let etc_b = net.b.path("etc-weft");
    fs::create_dir_all(&etc_b).unwrap();
    fs::copy(&secret_a, etc_b.join("secret")).unwrap();
    fs::set_permissions(etc_b.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    net.b
        .start_program("bash", &["-c".into(), sb], &[("PATH", &path)]);
    net.wait_established(Duration::from_secs(20));
    // Step 3 on host A.
    let check = readme_block(&readme, "check").replace(readme_b, &net.b.underlay.to_string());
    let out = Command::new("ip")
        .args(["netns", "exec", &net.a.ns, "bash", "-ec", &check])
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quick start check failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("established"), "{stdout}");
    assert!(stdout.contains("3 received"), "{stdout}");
    for h in [&net.a, &net.b] {
        let logs = h.logs();
        assert!(!logs.contains("readable by other users"), "{logs}");
        assert!(!logs.contains("deprecated"), "{logs}");
    }
}

/// Lines on stderr that are not empty.
fn lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn a_usage_error_is_the_only_line() {
    require_root!();
    let net = Net::pair(1500);
    let a = &net.a;
    let listen = format!("{}:{PORT}", a.underlay);
    let l = listen.clone();
    let udp = in_netns(&a.ns, move || std::net::UdpSocket::bind(&l).expect("bind"));
    let (status, stderr) = a.run_weft(&a.launch_args(), &[], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let got = lines(&stderr);
    assert_eq!(got.len(), 1, "expected one line:\n{stderr}");
    assert!(
        got[0].contains(&listen) && got[0].contains("in use"),
        "{stderr}"
    );
    drop(udp);
    // As nobody: one short line about /dev/net/tun, not every datapath's story.
    let mut args = a.launch_args();
    for flag in ["--secret-file", "--key-file"] {
        let i = args.iter().position(|x| x == flag).unwrap();
        args.drain(i..i + 2);
    }
    let (status, stderr) = a.run_weft(
        &args,
        &[("WEFT_SECRET", SECRET)],
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    let got = lines(&stderr);
    assert_eq!(got.len(), 1, "expected one line:\n{stderr}");
    assert!(got[0].contains("/dev/net/tun"), "{stderr}");
    assert!(!got[0].contains("OVS"), "{stderr}");
    assert!(got[0].len() < 300, "{} characters: {stderr}", got[0].len());
}

#[test]
fn no_rust_debug_formatting_in_logs() {
    require_root!();
    let mut net = Net::pair(1500);
    net.a.start(&[]);
    net.b.start(&["--iface", "bridge"]);
    assert!(
        wait_until(Duration::from_secs(15), || net
            .a
            .logs()
            .contains("device mismatch")),
        "no device mismatch reported: {}",
        net.a.logs()
    );
    net.b.terminate();
    net.b.start(&[]);
    net.wait_established(Duration::from_secs(20));
    let logs = format!("{}{}", net.a.logs(), net.b.logs());
    assert!(
        logs.contains("tun (L3) mode and the peer bridge (L2) mode"),
        "{logs}"
    );
    for debug in ["Some(", "None)", "Tun mode", "peer Bridge"] {
        assert!(!logs.contains(debug), "{debug:?} in logs:\n{logs}");
    }
}

#[test]
fn listen_on_6784_in_tun_mode_works() {
    require_root!();
    let mut net = Net::pair(1500);
    let mut args = net.a.launch_args();
    let i = args.iter().position(|x| x == "--listen").unwrap();
    args[i + 1] = format!("{}:6784", net.a.underlay);
    net.a.start_with(&args, &[]);
    net.b.peers = vec![format!("{}:6784", net.a.underlay)];
    net.b.start(&[]);
    net.wait_established(Duration::from_secs(20));
}

#[test]
fn config_keys_are_flag_names_with_file_relative_paths() {
    require_root!();
    let mut net = Net::pair(1500);
    let a_peer = net.a.peers[0].clone();
    // Relative paths: secret and key sit next to the config file; launch
    // runs from / so the working directory cannot be what resolves them.
    let config = net.a.path("weft.toml");
    fs::write(
        &config,
        format!(
            "# host A\noverlay = \"{}\"\nlisten = \"{}:{PORT}\"\npeer = [\"{a_peer}\"]\nsecret-file = \"secret\"\nkey-file = \"key\"\nname = \"{}\"\n",
            net.a.overlay, net.a.underlay, net.a.ns
        ),
    )
    .unwrap();
    net.a.start_with(
        &[
            "launch".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &[],
    );
    // Old keys still work, with a warning naming the new key.
    let config_b = net.b.path("weft.toml");
    fs::write(
        &config_b,
        format!(
            "overlay = \"{}\"\nlisten = \"{}:{PORT}\"\npeers = [\"{}\"]\nsecret_file = \"secret\"\nkey-file = \"key\"\n",
            net.b.overlay, net.b.underlay, net.b.peers[0]
        ),
    )
    .unwrap();
    net.b.start_with(
        &[
            "launch".into(),
            "--config".into(),
            config_b.display().to_string(),
        ],
        &[],
    );
    net.wait_established(Duration::from_secs(20));
    let logs_b = net.b.logs();
    assert!(
        logs_b.contains("key peers is deprecated; write peer") && logs_b.contains("line 3"),
        "{logs_b}"
    );
    // Errors name the file, the line and the key: one line, exit 2.
    let bad = net.a.path("bad.toml");
    for (text, needles) in [
        (
            "overlay = \"10.41.0.1/16\"\n\nsecret-file = \"missing-secret\"\n",
            vec!["line 3", "key secret-file", "missing-secret"],
        ),
        (
            "overlay = \"10.41.0.1/16\"\nvni = 99999999\nsecret-file = \"secret\"\n",
            vec!["line 2", "key vni"],
        ),
        ("\noverlay = 10.41.0.1/16\n", vec!["line 2"]),
        (
            "overlay = \"10.41.0.1/16\"\ntrusted_subnet = []\n",
            vec!["line 2", "unknown key trusted_subnet"],
        ),
    ] {
        fs::write(&bad, text).unwrap();
        let (status, stderr) = net.a.run_weft(
            &[
                "launch".into(),
                "--config".into(),
                bad.display().to_string(),
                "--status-addr".into(),
                "127.0.0.1:6799".into(),
            ],
            &[],
            &[],
        );
        assert_eq!(status.code(), Some(2), "{text}: {stderr}");
        let got = lines(&stderr);
        assert_eq!(got.len(), 1, "{text}: {stderr}");
        assert!(got[0].contains(&bad.display().to_string()), "{stderr}");
        for n in needles {
            assert!(got[0].contains(n), "{text}: {n:?} missing in {stderr}");
        }
    }
}

#[test]
fn sighup_rereads_the_peer_list() {
    require_root!();
    let mut net = Net::pair(1500);
    let b_addr = net.a.peers[0].clone();
    let config = net.a.path("weft.toml");
    let (overlay, underlay) = (net.a.overlay.clone(), net.a.underlay);
    let config_path = config.clone();
    let write = move |peers: &str| {
        fs::write(
            &config_path,
            format!(
                "overlay = \"{overlay}\"\nlisten = \"{underlay}:{PORT}\"\npeer = [{peers}]\nsecret-file = \"secret\"\nkey-file = \"key\"\n"
            ),
        )
        .unwrap()
    };
    write("");
    net.a.start_with(
        &[
            "launch".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &[],
    );
    // B only accepts: the connection exists only if A dials it.
    net.b.peers.clear();
    net.b.start(&[]);
    assert!(wait_until(Duration::from_secs(5), || status_json(
        &net.a.ns
    )
    .is_some()));
    std::thread::sleep(Duration::from_millis(500));
    assert!(first_connection(&status_json(&net.a.ns).unwrap()).is_none());
    write(&format!("\"{b_addr}\""));
    // SAFETY: kill on the pid of the weft this test started.
    unsafe { libc::kill(net.a.pid().unwrap() as libc::pid_t, libc::SIGHUP) };
    net.wait_established(Duration::from_secs(20));
    assert!(
        net.a
            .logs()
            .contains(&format!("SIGHUP: peer list re-read: added {b_addr}")),
        "{}",
        net.a.logs()
    );
    write("");
    // SAFETY: as above.
    unsafe { libc::kill(net.a.pid().unwrap() as libc::pid_t, libc::SIGHUP) };
    assert!(
        wait_until(Duration::from_secs(5), || net
            .a
            .logs()
            .contains(&format!("removed {b_addr}"))),
        "{}",
        net.a.logs()
    );
    assert!(net.a.weft_running(), "SIGHUP must not stop weft");
}

#[test]
fn unclaimed_overlay_address_gets_icmp_unreachable() {
    require_root!();
    let mut net = Net::pair(1500);
    net.start_both(&[]);
    net.wait_established(Duration::from_secs(20));
    // Nobody owns 10.40.0.99: the sender hears so at once.
    let out = ns_exec(
        &net.a.ns,
        &["ping", "-n", "-c", "1", "-W", "3", "10.40.0.99"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("Destination Host Unreachable"), "{text}");
    // Rate-limited: a burst of 50 pings gets at most burst + refill replies.
    let out = ns_exec(
        &net.a.ns,
        &[
            "ping",
            "-n",
            "-c",
            "50",
            "-i",
            "0.002",
            "-W",
            "1",
            "10.40.0.98",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let replies = text.matches("Unreachable").count();
    assert!((1..=20).contains(&replies), "{replies} replies:\n{text}");
    let s = status_json(&net.a.ns).unwrap();
    assert!(dropped(&s, "no_route") >= 51, "{s}");
}

#[test]
fn leftovers_of_a_killed_weft_are_cleared_and_a_running_one_is_named() {
    require_root!();
    let mut net = Net::pair(1500);
    net.a.start(&["--iface", "bridge"]);
    assert!(wait_until(Duration::from_secs(10), || status_json(
        &net.a.ns
    )
    .is_some()));
    let pid = net.a.pid().unwrap();
    // A second weft with the same interface (other ports): told which pid
    // runs it, never to delete its interface.
    let mut args = net.a.launch_args();
    let i = args.iter().position(|x| x == "--listen").unwrap();
    args[i + 1] = format!("{}:7783", net.a.underlay);
    args.extend(
        ["--iface", "bridge", "--status-addr", "127.0.0.1:7782"]
            .iter()
            .map(|s| s.to_string()),
    );
    let (status, stderr) = net.a.run_weft(&args, &[], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let got = lines(&stderr);
    assert_eq!(got.len(), 1, "{stderr}");
    assert!(got[0].contains(&format!("pid {pid}")), "{stderr}");
    assert!(!got[0].contains("ip link del"), "{stderr}");
    assert!(
        link_exists(&net.a.ns, "weft-tap"),
        "the running weft lost its TAP"
    );

    // kill -9: the bridge with the overlay address stays behind.
    net.a.kill9();
    assert!(
        link_exists(&net.a.ns, "weft"),
        "expected the bridge to be left"
    );
    net.a.start(&["--iface", "bridge"]);
    assert!(
        wait_until(Duration::from_secs(10), || status_json(&net.a.ns).is_some()),
        "restart after kill -9 failed: {}",
        net.a.logs()
    );
    let logs = net.a.logs();
    let cleared: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("cleared what an earlier weft"))
        .collect();
    assert_eq!(cleared.len(), 1, "{logs}");
    assert!(
        cleared[0].contains(&format!("pid {pid}")) && cleared[0].contains("bridge weft"),
        "{}",
        cleared[0]
    );
    assert!(!logs.contains("collides with the existing route"), "{logs}");
    net.a.terminate();
    assert!(
        !link_exists(&net.a.ns, "weft"),
        "bridge left after a clean exit"
    );
}

#[test]
fn service_unit_passes_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if analyze.is_err() {
        eprintln!("skipped: systemd-analyze not found (scripts/install-deps installs systemd)");
        return;
    }
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/weft@.service"
    ))
    .unwrap();
    for needed in [
        "ExecStart=/usr/local/bin/weft launch --config /etc/weft/%i.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RuntimeDirectory=weft",
    ] {
        assert!(unit.contains(needed), "weft@.service lacks {needed}");
    }
    // verify wants ExecStart to exist: point it at this build.
    let scratch = Scratch::new("first-run-unit");
    let text = unit.replace("/usr/local/bin/weft", WEFT);
    fs::write(scratch.0.join("weft@.service"), &text).unwrap();
    let instance = scratch.0.join("weft@main.service");
    fs::write(&instance, &text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Failed to initialize") || stderr.contains("System has not been booted") {
        eprintln!("skipped: systemd-analyze cannot run here: {stderr}");
        return;
    }
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("weft@")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
