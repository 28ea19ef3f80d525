//! Plaintext mode: standard RFC 7348 VXLAN on the wire, checked byte for
//! byte on captured datagrams, interoperating with a Linux vxlan device as
//! a static VTEP; wrong VNIs and bad headers dropped and counted; the flag
//! that makes plaintext explicit. Needs root (except the flag check).

mod l2_common;

use l2_common::*;
use std::time::Duration;

#[test]
fn plain_mode_needs_the_insecure_plaintext_flag() {
    let out = std::process::Command::new(weft_bin())
        .args([
            "launch",
            "--mode",
            "plain",
            "--vni",
            "42",
            "--overlay",
            "10.50.0.1/16",
            "--vtep",
            "198.18.0.2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--insecure-plaintext") && text.contains("unencrypted"),
        "{text}"
    );
    // --vtep without plaintext mode is refused too, with the reason.
    let out = std::process::Command::new(weft_bin())
        .args([
            "launch",
            "--overlay",
            "10.50.0.1/16",
            "--vtep",
            "198.18.0.2",
        ])
        .env("WEFT_SECRET", "s3cret-s3cret-s3cret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--mode plain"), "{text}");
}

#[test]
fn plain_vxlan_interoperates_with_a_linux_vxlan_device() {
    let net = Underlay::new("pv");
    // Host 2: a standard Linux VXLAN endpoint, VNI 42, port 4789, pointing at host 1.
    net.h2.run(
        "ip link add vx0 type vxlan id 42 dstport 4789 remote 198.18.0.1 local 198.18.0.2 dev ul",
    );
    net.h2.run("ip addr add 10.50.0.2/16 dev vx0");
    net.h2.run("ip link set vx0 up");
    // Host 1: weft in plaintext mode with host 2 as a static VTEP.
    let mut w1 = Weft::start(
        &net.h1,
        "--mode plain --insecure-plaintext --vni 42 --vtep 198.18.0.2 --listen 198.18.0.1:6783 --bridge pbr --overlay 10.50.0.1/16",
    );
    assert!(
        wait_for(Duration::from_secs(10), || link_exists(&net.h1, "pbr-tap")
            .then_some(()))
        .is_some(),
        "weft did not come up:\n{}",
        w1.log_text()
    );
    assert!(
        net.h1.run("ip link show pbr").contains("mtu 1450"),
        "plaintext overlay MTU is 1500 - 50"
    );
    let c11 = Container::new(
        &format!("{}c11", net.h1.name),
        "02:00:00:00:01:11",
        "10.50.1.11",
        1450,
        &net.h1,
        "pbr",
    );

    let capture = capture_ipv4(&net.h2, Duration::from_millis(3000));
    assert!(
        wait_for(Duration::from_secs(3), || c11
            .ns
            .try_run("ping -c 1 -W 1 10.50.0.2")
            .0
            .then_some(()))
        .is_some(),
        "container behind weft cannot reach the Linux vxlan endpoint:\n{}",
        w1.log_text()
    );
    assert!(
        net.h2.try_run("ping -c 1 -W 1 10.50.1.11").0,
        "Linux vxlan endpoint cannot reach the container"
    );
    let packets = capture.join().unwrap();

    // Datagrams weft sent: UDP from 198.18.0.1 to port 4789.
    let from_weft: Vec<&[u8]> = packets
        .iter()
        .filter(|p| p.len() >= 20 && p[12..16] == [198, 18, 0, 1])
        .filter_map(|p| udp_payload_to(p, 4789))
        .collect();
    assert!(
        !from_weft.is_empty(),
        "no VXLAN datagram from weft captured"
    );
    let mut saw_container_frame = false;
    for vx in &from_weft {
        // RFC 7348: flags 0x08 (I), 24 reserved bits, VNI 42, 8 reserved bits.
        assert_eq!(
            &vx[..8],
            &[0x08, 0, 0, 0, 0x00, 0x00, 0x2a, 0x00],
            "VXLAN header"
        );
        assert!(vx.len() >= 8 + 14, "inner Ethernet frame missing");
        if vx[8 + 6..8 + 12] == [0x02, 0, 0, 0, 0x01, 0x11] {
            saw_container_frame = true;
        }
    }
    assert!(
        saw_container_frame,
        "no frame with the container's source MAC"
    );
    // And the Linux side's datagrams carry the same header (sanity for the comparison).
    let from_linux = packets
        .iter()
        .filter(|p| p.len() >= 20 && p[12..16] == [198, 18, 0, 2])
        .filter_map(|p| udp_payload_to(p, 4789));
    assert!(from_linux
        .into_iter()
        .all(|vx| vx.get(..8) == Some(&[0x08, 0, 0, 0, 0, 0, 0x2a, 0][..])));

    // Wrong VNI and a header without the I flag: dropped and counted.
    net.h2.enter(|| {
        let s = std::net::UdpSocket::bind("198.18.0.2:0").unwrap();
        let mut wrong = vec![0x08, 0, 0, 0, 0, 0, 43, 0];
        wrong.extend_from_slice(&[0xff; 6]);
        wrong.extend_from_slice(&[0x02, 0, 0, 0, 0x09, 0x09, 0x08, 0x06]);
        wrong.extend_from_slice(&[0u8; 46]);
        s.send_to(&wrong, "198.18.0.1:4789").unwrap();
        let mut no_i_flag = wrong.clone();
        no_i_flag[0] = 0;
        no_i_flag[6] = 42;
        s.send_to(&no_i_flag, "198.18.0.1:4789").unwrap();
        s.send_to(&[0x08, 0, 0], "198.18.0.1:4789").unwrap();
    });
    let counted = wait_for(Duration::from_secs(2), || {
        let s = status(&net.h1)?;
        let d = s.pointer("/l2/vxlan_drops")?;
        (d["wrong_vni"].as_u64()? >= 1 && d["bad_header"].as_u64()? >= 2).then_some(())
    });
    assert!(
        counted.is_some(),
        "drops not counted: {:?}",
        status(&net.h1).and_then(|s| s.get("l2").cloned())
    );

    // `weft status` lists the static VTEP with packet counts.
    let s = status(&net.h1).unwrap();
    let vtep = &s["l2"]["vteps"][0];
    assert_eq!(vtep["address"], "198.18.0.2:4789");
    assert!(
        vtep["tx_packets"].as_u64().unwrap() >= 1 && vtep["rx_packets"].as_u64().unwrap() >= 1,
        "{vtep}"
    );
    let text = net.h1.run(&format!("{} status", weft_bin()));
    assert!(
        text.contains("Static VTEPs: 1") && text.contains("198.18.0.2:4789"),
        "{text}"
    );

    assert_eq!(w1.stop(), Some(0), "{}", w1.log_text());
    assert!(!link_exists(&net.h1, "pbr"), "weft left its bridge behind");
    drop(c11);
}
