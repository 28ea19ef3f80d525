//! IPAM in network namespaces: two bridge-mode hosts split
//! `--ipalloc-range 10.32.0.0/16` in chunks claimed through the mesh and
//! answer the CNI socket (`@weft-cni`, scoped to each host's namespace)
//! the way the plugin asks: add, check, del, gc, status, version; a
//! restarted weft gives a container the address it held; a stopped host's
//! chunk stays reserved on the other (and on a host that joins later, by
//! gossip) until `weft rmpeer`. One host has no overlay address of its own.

mod common;

use common::switched::*;
use common::*;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::time::Duration;
use weft::cni::api::{
    self, code, AttachMode, AttachmentKey, CniReply, CniRequest, CniSuccess, PodAttachment,
};

const RANGE: &str = "10.32.0.0/16";

/// One request to the CNI socket of namespace `ns`, from a thread inside
/// it (as the plugin runs there). `Err`: no socket to connect to.
fn cni(ns: &str, request: CniRequest) -> Result<CniReply, String> {
    in_netns(ns, move || api::request(api::DEFAULT_SOCKET, &request))
}

fn add(ns: &str, container: &str) -> CniReply {
    cni(
        ns,
        CniRequest::Add {
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: format!("/var/run/netns/pod-{container}"),
        },
    )
    .unwrap_or_else(|e| panic!("{ns}: add {container}: {e}"))
}

fn attachment(ns: &str, reply: CniReply) -> PodAttachment {
    match reply.0 {
        Ok(CniSuccess::Attachment(a)) => a,
        other => panic!("{ns}: expected an address, got {other:?}"),
    }
}

fn key(c: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

/// `weft status ipam --json` in `ns`.
fn ipam_status(ns: &str) -> Option<Value> {
    let out = ns_exec(ns, &[common::WEFT, "status", "ipam", "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The chunk of the status holding `addr`, as (owner, state).
fn chunk_of(status: &Value, addr: Ipv4Addr) -> Option<(String, String)> {
    status["chunks"].as_array()?.iter().find_map(|c| {
        let (base, len) = c["chunk"].as_str()?.split_once('/')?;
        let base: Ipv4Addr = base.parse().ok()?;
        let len: u32 = len.parse().ok()?;
        let mask = u32::MAX << (32 - len);
        (u32::from(addr) & mask == u32::from(base)).then(|| {
            (
                c["owner"].as_str().unwrap_or_default().to_string(),
                c["state"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// Waits until `weft status ipam` of `ns` (published every status interval)
/// counts `n` addresses in use.
fn in_use_becomes(ns: &str, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || {
        ipam_status(ns).is_some_and(|s| s["in_use"] == n)
    })
}

/// Starts host `i` in bridge mode with IPAM. Host 1 runs without an
/// overlay address of its own (`--overlay` is optional with IPAM).
fn start(net: &mut Switched, i: usize) {
    let host = &mut net.hosts[i];
    let mut args = host.launch_args();
    if i == 1 {
        let at = args.iter().position(|a| a == "--overlay").unwrap();
        args.drain(at..at + 2);
    }
    let extra = [
        "--config".to_string(),
        host.path("weft.toml").display().to_string(),
        "--iface".into(),
        "bridge".into(),
        "--bridge".into(),
        "wbr".into(),
        "--ipalloc-range".into(),
        RANGE.into(),
        "--ipalloc-dir".into(),
        host.path("ipam").display().to_string(),
        "--ipalloc-reclaim-after".into(),
        "1h".into(),
    ];
    args.extend(extra);
    host.start_with(&args, &[]);
}

fn logs(net: &Switched) -> String {
    net.hosts.iter().map(|h| h.logs()).collect()
}

#[test]
fn two_hosts_split_the_range_and_answer_the_plugin() {
    require_root!();
    let mut net = Switched::new(3);
    net.hosts[1].peers = vec![net.addr(0)];
    net.hosts[2].peers = vec![net.addr(0)];
    start(&mut net, 0);
    start(&mut net, 1);
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let (h0, h1) = (net.hosts[0].ns.clone(), net.hosts[1].ns.clone());

    // Version and status answer at once.
    let v = cni(&h0, CniRequest::Version).unwrap();
    assert!(
        matches!(v.0, Ok(CniSuccess::Version { ref weft }) if weft == env!("CARGO_PKG_VERSION")),
        "{v:?}"
    );
    let s = cni(&h0, CniRequest::Status).unwrap();
    assert_eq!(s.0, Ok(CniSuccess::Done {}), "{}", logs(&net));

    // One container on each host: addresses from the range with its whole
    // prefix (bridge mode), distinct; the gateway is the bridge's own
    // address from the host's chunk (no host address lies in the range:
    // h0's overlay address is outside it, h1 has none).
    let a0 = attachment(&h0, add(&h0, "c1"));
    let a1 = attachment(&h1, add(&h1, "c1"));
    for (ns, a) in [(&h0, &a0), (&h1, &a1)] {
        assert_eq!(a.address.prefix_len, 16, "{a:?}");
        assert!(a.address.addr.octets()[..2] == [10, 32], "{a:?}");
        let gw = a.gateway.expect("a gateway from IPAM");
        assert!(
            gw.octets()[..2] == [10, 32] && gw != a.address.addr,
            "{a:?}"
        );
        // The status is a snapshot published every status interval.
        let shown = wait_until(Duration::from_secs(5), || {
            ipam_status(ns).is_some_and(|s| {
                s["gateway"] == gw.to_string()
                    && chunk_of(&s, gw).map(|c| c.0) == Some(ns.to_string())
            })
        });
        assert!(
            shown,
            "{ns}: the gateway {gw} in its own chunk: {:?}",
            ipam_status(ns)
        );
        assert_eq!(a.mode, AttachMode::Bridge);
        assert_eq!(a.bridge.as_deref(), Some("wbr"));
        assert!(a.mtu >= 1280 && a.mtu < 1500, "{a:?}");
    }
    assert_ne!(a0.address.addr, a1.address.addr);

    // The chunks belong to different hosts, seen alike from both.
    for ns in [&h0, &h1] {
        let ok = wait_until(Duration::from_secs(10), || {
            ipam_status(ns).is_some_and(|s| {
                chunk_of(&s, a0.address.addr) == Some((h0.clone(), "owned".into()))
                    && chunk_of(&s, a1.address.addr) == Some((h1.clone(), "owned".into()))
            })
        });
        assert!(ok, "{ns}: {:?}", ipam_status(ns));
    }
    assert_eq!(ipam_status(&h0).unwrap()["range"], RANGE);
    assert!(in_use_becomes(&h0, 1), "{:?}", ipam_status(&h0));

    // The addresses work across the overlay, also on the host without an
    // overlay address: each bridge stands in for a pod here (the plugin's
    // tests attach real pods by veth).
    for (ns, a) in [(&h0, &a0), (&h1, &a1)] {
        let out = ns_exec(
            ns,
            &["ip", "addr", "add", &a.address.to_string(), "dev", "wbr"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reached = wait_until(Duration::from_secs(10), || {
        ns_exec(
            &h0,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                &a0.address.addr.to_string(),
                &a1.address.addr.to_string(),
            ],
        )
        .status
        .success()
    });
    assert!(
        reached,
        "{} cannot reach {}\n{}",
        a0.address,
        a1.address,
        logs(&net)
    );

    // Idempotent add; check; check of an unknown container.
    assert_eq!(attachment(&h0, add(&h0, "c1")), a0);
    let c = cni(
        &h0,
        CniRequest::Check {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        },
    )
    .unwrap();
    assert_eq!(attachment(&h0, c), a0);
    let c = cni(
        &h0,
        CniRequest::Check {
            container_id: "nobody".into(),
            ifname: "eth0".into(),
        },
    )
    .unwrap();
    assert_eq!(c.0.unwrap_err().code, code::CONTAINER_UNKNOWN);

    // Restart h0: c1 gets its address back, a new container another.
    net.hosts[0].terminate();
    assert!(
        cni(&h0, CniRequest::Status).is_err(),
        "the socket goes with weft"
    );
    start(&mut net, 0);
    net.wait_converged(&[0, 1], Duration::from_secs(30));
    let again = attachment(&h0, add(&h0, "c1"));
    assert_eq!(again.address, a0.address, "{}", logs(&net));
    let c2 = attachment(&h0, add(&h0, "c2"));
    assert_ne!(c2.address.addr, a0.address.addr);
    assert_ne!(c2.address.addr, a1.address.addr);

    // del twice is fine; the address is free again afterwards.
    for _ in 0..2 {
        let d = cni(
            &h0,
            CniRequest::Del {
                container_id: "c2".into(),
                ifname: "eth0".into(),
            },
        )
        .unwrap();
        assert_eq!(d.0, Ok(CniSuccess::Done {}));
    }
    assert!(in_use_becomes(&h0, 1), "{:?}", ipam_status(&h0));

    // gc releases what the runtime no longer lists.
    attachment(&h1, add(&h1, "c2"));
    attachment(&h1, add(&h1, "c3"));
    let g = cni(
        &h1,
        CniRequest::Gc {
            valid: vec![key("c1")],
        },
    )
    .unwrap();
    assert_eq!(g.0, Ok(CniSuccess::Released { released: 2 }));
    assert!(in_use_becomes(&h1, 1), "{:?}", ipam_status(&h1));

    // Malformed input gets a decode error naming it.
    let bad = in_netns(&h0, || {
        use std::io::{BufRead, BufReader, Write};
        let addr = api::socket_addr(api::DEFAULT_SOCKET).unwrap();
        let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        writeln!(s, r#"{{"op":"add","container_id":7}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        serde_json::from_str::<CniReply>(&line).unwrap()
    });
    assert_eq!(bad.0.as_ref().unwrap_err().code, code::DECODE, "{bad:?}");

    // h1 stops: its socket is gone, and h0 keeps its chunk reserved.
    net.hosts[1].terminate();
    assert!(cni(&h1, CniRequest::Status).is_err());
    let reserved = wait_until(Duration::from_secs(20), || {
        ipam_status(&h0)
            .is_some_and(|s| chunk_of(&s, a1.address.addr) == Some((h1.clone(), "reserved".into())))
    });
    assert!(reserved, "{:?}\n{}", ipam_status(&h0), logs(&net));

    // A host that joins after the departure learns the reservation by
    // gossip, and its own first chunk is another.
    start(&mut net, 2);
    let h2 = net.hosts[2].ns.clone();
    net.wait_converged(&[0, 2], Duration::from_secs(30));
    let kept = format!("departed peer (kept by {h0})");
    let learned = wait_until(Duration::from_secs(10), || {
        ipam_status(&h2).is_some_and(|s| {
            chunk_of(&s, a1.address.addr) == Some((kept.clone(), "reserved".into()))
        })
    });
    assert!(learned, "{:?}", ipam_status(&h2));
    let a2 = attachment(&h2, add(&h2, "c1"));
    let s2 = ipam_status(&h2).unwrap();
    assert_eq!(
        chunk_of(&s2, a2.address.addr),
        Some((h2.clone(), "owned".into()))
    );

    // rmpeer: h0 takes the chunk over.
    let out = ns_exec(&h0, &[common::WEFT, "rmpeer", &h1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("took over"));
    let taken = wait_until(Duration::from_secs(10), || {
        ipam_status(&h0)
            .is_some_and(|s| chunk_of(&s, a1.address.addr) == Some((h0.clone(), "owned".into())))
    });
    assert!(taken, "{:?}", ipam_status(&h0));
    let seen = wait_until(Duration::from_secs(10), || {
        ipam_status(&h2)
            .is_some_and(|s| chunk_of(&s, a1.address.addr) == Some((h0.clone(), "owned".into())))
    });
    assert!(seen, "{:?}", ipam_status(&h2));
    // Asked again, nothing is left to take.
    let out = ns_exec(&h0, &[common::WEFT, "rmpeer", &h1]);
    assert!(!out.status.success());
}
