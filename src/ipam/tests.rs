//! Allocator and chunk choice, driven through mesh views by hand.

use super::*;

fn id(b: u8) -> PeerId {
    PeerId([b; 32])
}

fn key(c: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

fn p(s: &str) -> IpPrefix {
    s.parse().unwrap()
}

/// A view in which `me` owns its claims and `others` own theirs.
fn view<A: Family>(ipam: &Ipam<A>, others: &[(IpPrefix, PeerId)]) -> MeshView {
    let mut owned: Vec<(IpPrefix, PeerId)> = others.to_vec();
    let mut refused = Vec::new();
    for c in ipam.claims() {
        if others.iter().any(|(o, _)| o.overlaps(&c)) {
            refused.push(c);
        } else {
            owned.push((c, ipam.me));
        }
    }
    MeshView {
        announced: true,
        owned,
        refused,
        departed: Vec::new(),
        live_names: Vec::new(),
        reserved_by_live: Vec::new(),
    }
}

/// Runs `step` until it gives an answer, settling any claim it makes
/// (view, clock) on the way.
fn settled<T, A: Family>(
    ipam: &mut Ipam<A>,
    others: &[(IpPrefix, PeerId)],
    now: &mut Instant,
    what: &str,
    mut step: impl FnMut(&mut Ipam<A>, Instant) -> Result<T, AllocError>,
) -> T {
    for _ in 0..4 {
        match step(ipam, *now) {
            Ok(v) => return v,
            Err(AllocError::Pending(_)) => {
                let v = view(ipam, others);
                ipam.update_view(v, 0);
                *now += CLAIM_SETTLE;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: no answer after four rounds")
}

/// Allocates `c`, settling any claim it makes on the way.
fn add(ipam: &mut Ipam, c: &str, others: &[(IpPrefix, PeerId)], now: &mut Instant) -> Ipv4Addr {
    settled(ipam, others, now, c, |i, t| {
        i.allocate(&key(c), "/proc/1/ns/net", t).map(|(a, _)| a)
    })
}

#[test]
fn ranges_parse_and_refuse_by_value() {
    let r = AllocRange::parse("10.32.0.0/12").unwrap();
    assert_eq!(r.to_string(), "10.32.0.0/12");
    assert_eq!(chunk_len(&r), 26);
    assert_eq!(chunk_len(&AllocRange::parse("10.0.0.0/24").unwrap()), 28);
    assert_eq!(chunk_len(&AllocRange::parse("10.0.0.0/28").unwrap()), 30);
    assert_eq!(chunk_len(&AllocRange::parse("10.0.0.0/30").unwrap()), 30);
    for (bad, says) in [
        ("10.32.0.0", "CIDR"),
        ("fd00::/64", "IPv4"),
        ("10.32.0.0/31", "1-30"),
        ("10.32.0.1/16", "10.32.0.0/16"),
    ] {
        let e = AllocRange::parse(bad).unwrap_err();
        assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
    }
}

#[test]
fn nothing_is_claimed_before_the_mesh_synchronised_then_a_claim_settles() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    let t0 = Instant::now();
    let e = ipam.allocate(&key("a"), "ns", t0).unwrap_err();
    assert!(matches!(e, AllocError::Pending(_)), "{e}");
    assert!(ipam.claims().is_empty());
    assert!(ipam.ready().is_err());
    // Synchronised: the first add claims a chunk and waits for it.
    ipam.update_view(view(&ipam, &[]), 0);
    assert!(ipam.ready().is_ok());
    assert!(matches!(
        ipam.allocate(&key("a"), "ns", t0),
        Err(AllocError::Pending(_))
    ));
    assert_eq!(ipam.claims().len(), 1);
    let chunk = ipam.claims()[0];
    assert_eq!(chunk.len(), 26);
    // Confirmed but not settled yet, then settled.
    ipam.update_view(view(&ipam, &[]), 0);
    assert!(matches!(
        ipam.allocate(&key("a"), "ns", t0),
        Err(AllocError::Pending(_))
    ));
    let (a, new) = ipam.allocate(&key("a"), "ns", t0 + CLAIM_SETTLE).unwrap();
    assert!(new);
    assert!(chunk.contains_addr(IpAddr::V4(a)));
    assert_ne!(
        a,
        Ipv4Addr::new(10, 32, 0, 0),
        "the range's network address"
    );
    // Idempotent for the same key; another key gets another address.
    assert_eq!(ipam.allocate(&key("a"), "ns", t0).unwrap(), (a, false));
    let (b, _) = ipam.allocate(&key("b"), "ns", t0 + CLAIM_SETTLE).unwrap();
    assert_ne!(a, b);
    assert_eq!(ipam.claims().len(), 1);
}

#[test]
fn a_full_chunk_makes_a_new_claim_and_the_range_runs_out() {
    // /28 in /30 chunks: 4 chunks of 4, less the range's two ends and the
    // host's own address.
    let range = AllocRange::parse("10.9.0.0/28").unwrap();
    let mut ipam = Ipam::new(
        range,
        id(1),
        Some(Ipv4Addr::new(10, 9, 0, 5)),
        Duration::ZERO,
    );
    let mut now = Instant::now();
    let mut got = BTreeSet::new();
    for i in 0..13 {
        let a = add(&mut ipam, &format!("c{i}"), &[], &mut now);
        assert!(range.contains(a));
        assert!(got.insert(a), "{a} handed out twice");
    }
    assert_eq!(ipam.claims().len(), 4);
    for bad in [[10, 9, 0, 0], [10, 9, 0, 15], [10, 9, 0, 5]] {
        assert!(!got.contains(&Ipv4Addr::from(bad)));
    }
    let e = ipam.allocate(&key("one-too-many"), "ns", now).unwrap_err();
    assert!(matches!(e, AllocError::Exhausted(_)), "{e}");
    assert!(e.to_string().contains("10.9.0.0/28"));
    assert!(ipam.ready().is_err());
    // A release makes room again, without a new claim.
    assert!(ipam.release(&key("c3")));
    assert!(!ipam.release(&key("c3")));
    assert!(ipam.allocate(&key("one-too-many"), "ns", now).is_ok());
}

#[test]
fn a_refused_claim_is_dropped_and_another_chunk_is_claimed() {
    let range = AllocRange::parse("10.32.0.0/24").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::ZERO);
    let now = Instant::now();
    ipam.update_view(view(&ipam, &[]), 0);
    let _ = ipam.allocate(&key("a"), "ns", now);
    let first = ipam.claims()[0];
    // Another host's simultaneous claim on the same chunk won.
    let others = [(first, id(0))];
    ipam.update_view(view(&ipam, &others), 0);
    assert!(ipam.claims().is_empty(), "the refused claim is dropped");
    let mut t = now;
    let a = add(&mut ipam, "a", &others, &mut t);
    let second = ipam.claims()[0];
    assert_ne!(first, second);
    assert!(second.contains_addr(IpAddr::V4(a)));
    // A refused chunk in which pods hold addresses stays claimed (the
    // conflict stays visible) and is not allocated from.
    let others = [(first, id(0)), (second, id(0))];
    ipam.update_view(view(&ipam, &others), 0);
    assert_eq!(ipam.claims(), vec![second]);
    let b = add(&mut ipam, "b", &others, &mut t);
    assert!(!second.contains_addr(IpAddr::V4(b)));
    let status = ipam.status("me", &|p| format!("{p}"), 0);
    assert!(status
        .chunks
        .iter()
        .any(|c| c.chunk == second.to_string() && c.state == "refused"));
}

#[test]
fn two_hosts_pick_different_chunks() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut a = Ipam::new(range, id(1), None, Duration::ZERO);
    let mut b = Ipam::new(range, id(2), None, Duration::ZERO);
    let now = Instant::now();
    a.update_view(view(&a, &[]), 0);
    b.update_view(view(&b, &[]), 0);
    let _ = a.allocate(&key("x"), "ns", now);
    let _ = b.allocate(&key("x"), "ns", now);
    assert_ne!(a.claims(), b.claims());
}

#[test]
fn allocations_survive_a_restart_through_the_store() {
    let dir = std::env::temp_dir().join(format!("weft-ipam-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut now = Instant::now();
    let mut ipam = Ipam::new(range, id(1), None, Duration::ZERO);
    let a = add(&mut ipam, "a", &[], &mut now);
    let b = add(&mut ipam, "b", &[], &mut now);
    assert!(ipam.release(&key("b")));
    store::save(&dir, &ipam.state()).unwrap();

    let mut again = Ipam::new(range, id(1), None, Duration::ZERO);
    again.restore(store::load(&dir).unwrap().unwrap()).unwrap();
    // The chunk is claimed again at once; nothing is handed out before the
    // mesh confirms it, then the held address comes back for its key and
    // is not handed to anyone else.
    assert_eq!(again.claims(), ipam.claims());
    assert_eq!(again.lookup(&key("a")), Some(a));
    assert_eq!(again.allocate(&key("a"), "ns", now).unwrap(), (a, false));
    assert!(matches!(
        again.allocate(&key("c"), "ns", now),
        Err(AllocError::Pending(_))
    ));
    again.update_view(view(&again, &[]), 0);
    let (c, _) = again.allocate(&key("c"), "ns", now).unwrap();
    assert_ne!(c, a);
    assert_eq!(c, b, "b's released address is free again");
    // Another range with live allocations is refused, naming both.
    let other = AllocRange::parse("10.40.0.0/16").unwrap();
    let e = Ipam::new(other, id(1), None, Duration::ZERO)
        .restore(store::load(&dir).unwrap().unwrap())
        .unwrap_err();
    assert!(
        e.contains("10.40.0.0/16") && e.contains("10.32.0.0/16"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gc_releases_what_is_not_listed() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::ZERO);
    let mut now = Instant::now();
    for c in ["a", "b", "c"] {
        add(&mut ipam, c, &[], &mut now);
    }
    assert_eq!(ipam.gc(&[key("b")]), 2);
    assert_eq!(ipam.lookup(&key("a")), None);
    assert!(ipam.lookup(&key("b")).is_some());
    assert_eq!(ipam.gc(&[key("b")]), 0);
    assert_eq!(ipam.status("me", &|p| p.to_string(), 0).in_use, 1);
}

#[test]
fn bad_keys_are_refused_by_value() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::ZERO);
    let bad = AttachmentKey {
        container_id: String::new(),
        ifname: "eth0".into(),
    };
    let e = ipam.allocate(&bad, "ns", Instant::now()).unwrap_err();
    assert!(matches!(e, AllocError::Invalid(ref s) if s.contains("container_id")));
    let bad = AttachmentKey {
        container_id: "c".into(),
        ifname: "a-very-long-interface".into(),
    };
    let e = ipam.allocate(&bad, "ns", Instant::now()).unwrap_err();
    assert!(e.to_string().contains("a-very-long-interface"));
}

#[test]
fn departed_peers_chunks_stay_reserved_until_timeout_or_rmpeer() {
    let range = AllocRange::parse("10.32.0.0/24").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(100));
    let mut now = Instant::now();
    // Peer 2 ("b") owned every chunk but one, then left.
    let theirs: Vec<IpPrefix> = ["10.32.0.0/28", "10.32.0.16/28", "10.32.0.32/28"]
        .iter()
        .map(|s| p(s))
        .collect();
    let mut gone = view(&ipam, &[]);
    gone.departed = vec![(id(2), "b".into(), theirs.clone())];
    gone.live_names = vec!["c".into()];
    assert!(ipam.update_view(gone.clone(), 1000));
    let status = ipam.status("me", &|p| p.to_string(), 1010);
    let reserved: Vec<_> = status
        .chunks
        .iter()
        .filter(|c| c.state == "reserved")
        .collect();
    assert_eq!(reserved.len(), 3);
    assert_eq!(reserved[0].owner, "b");
    assert_eq!(reserved[0].reclaim_in, Some(90));
    // Chunks picked avoid the reservations.
    for i in 0..20 {
        let _ = add(&mut ipam, &format!("c{i}"), &[], &mut now);
        let v = MeshView {
            departed: gone.departed.clone(),
            live_names: gone.live_names.clone(),
            ..view(&ipam, &[])
        };
        ipam.update_view(v, 1000);
    }
    assert!(ipam.claims().iter().all(|c| !theirs.contains(c)));
    // rmpeer refuses a live name and an unknown one.
    assert!(ipam.rmpeer("c").unwrap_err().contains("live"));
    assert!(ipam.rmpeer("zz").unwrap_err().contains("b"));
    // The reservations persist.
    let mut again = Ipam::new(range, id(1), None, Duration::from_secs(100));
    again.restore(ipam.state()).unwrap();
    // rmpeer takes them over as our own claims.
    let taken = again.rmpeer("b").unwrap();
    assert_eq!(taken, theirs);
    assert!(theirs.iter().all(|c| again.claims().contains(c)));
    // Elsewhere, without rmpeer: the timeout frees them.
    let mut v = view(&ipam, &[]);
    v.departed = Vec::new();
    ipam.update_view(v.clone(), 1099);
    assert_eq!(ipam.state().reservations.len(), 3);
    assert!(ipam.update_view(v, 1100));
    assert!(ipam.state().reservations.is_empty());
}

#[test]
fn a_reservation_ends_when_the_chunk_has_a_live_owner_again() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    let chunk = p("10.32.1.0/26");
    let mut v = view(&ipam, &[]);
    v.departed = vec![(id(2), "b".into(), vec![chunk])];
    ipam.update_view(v, 10);
    assert_eq!(ipam.state().reservations.len(), 1);
    // b came back and announced it again.
    ipam.update_view(view(&ipam, &[(chunk, id(2))]), 20);
    assert!(ipam.state().reservations.is_empty());
}

#[test]
fn chunks_other_live_hosts_reserve_are_never_picked() {
    // A /26 range in /30 chunks: 16 chunks, all but one reserved by a live
    // host for departed peers; this host joined after the departure.
    let range = AllocRange::parse("10.32.0.0/26").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::ZERO);
    let free = p("10.32.0.20/30");
    let reserved: Vec<(IpPrefix, PeerId)> = (0..16u32)
        .map(|i| {
            let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 32, 0, 0)) + 4 * i);
            (IpPrefix::new(IpAddr::V4(a), 30).unwrap(), id(3))
        })
        .filter(|(c, _)| *c != free)
        .collect();
    let v = MeshView {
        reserved_by_live: reserved.clone(),
        ..view(&ipam, &[])
    };
    ipam.update_view(v, 0);
    let _ = ipam.allocate(&key("a"), "ns", Instant::now());
    assert_eq!(ipam.claims(), vec![free]);
    let status = ipam.status("me", &|p| format!("peer{}", p.0[0]), 0);
    let kept = status
        .chunks
        .iter()
        .filter(|c| c.state == "reserved")
        .count();
    assert_eq!(kept, 15);
    assert!(status
        .chunks
        .iter()
        .any(|c| c.owner.contains("kept by peer3")));
}

#[test]
fn a_pod_range_of_its_own_is_claimed_as_one_chunk_and_handed_out_alone() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    assert_eq!(
        parse_pod_cidr("10.32.7.0/24", &range).unwrap(),
        p("10.32.7.0/24")
    );
    for (bad, says) in [
        (
            "10.33.0.0/24",
            "does not lie inside --ipalloc-range 10.32.0.0/16",
        ),
        ("10.32.7.1/24", "host bits"),
        ("10.32.7.0", "CIDR"),
    ] {
        let e = parse_pod_cidr(bad, &range).unwrap_err();
        assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        assert!(e.contains("--ipalloc-pod-cidr"), "{e}");
    }
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    let e = ipam.set_pod_cidr(Some(p("10.99.0.0/24"))).unwrap_err();
    assert!(
        e.contains("10.99.0.0/24") && e.contains("10.32.0.0/16"),
        "{e}"
    );
    let said = ipam.set_pod_cidr(Some(p("10.32.7.0/30"))).unwrap();
    assert!(
        said.contains("10.32.7.0/30") && said.contains("2 addresses"),
        "{said}"
    );
    assert_eq!(ipam.claims(), vec![p("10.32.7.0/30")]);
    let mut now = Instant::now();
    // Not before the mesh confirms the claim.
    assert!(matches!(
        ipam.allocate(&key("a"), "/proc/1/ns/net", now),
        Err(AllocError::Pending(_))
    ));
    let a = add(&mut ipam, "a", &[], &mut now);
    let b = add(&mut ipam, "b", &[], &mut now);
    // The range's first and last address are never handed out.
    assert_eq!(
        (a, b),
        ("10.32.7.1".parse().unwrap(), "10.32.7.2".parse().unwrap())
    );
    // Full: no other chunk is claimed.
    match ipam.allocate(&key("c"), "/proc/1/ns/net", now) {
        Err(AllocError::Exhausted(why)) => assert!(why.contains("10.32.7.0/30"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ipam.claims(), vec![p("10.32.7.0/30")]);
    assert!(ipam.ready().unwrap_err().contains("full"));
    let s = ipam.status("host-a", &|_| "other".into(), 0);
    assert_eq!(s.pod_cidr.as_deref(), Some("10.32.7.0/30"));
    assert_eq!(s.chunks.len(), 1);
    assert_eq!(s.chunks[0].state, "owned");
    assert_eq!(s.chunks[0].in_use, Some(2));
    assert!(s
        .render_text()
        .contains("hands out its pod range 10.32.7.0/30 only"));
}

#[test]
fn a_conflicting_pod_range_is_kept_and_named_not_replaced() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    ipam.set_pod_cidr(Some(p("10.32.7.0/24"))).unwrap();
    let others = [(p("10.32.7.0/24"), id(2))];
    let v = view(&ipam, &others);
    ipam.update_view(v, 0);
    assert_eq!(ipam.claims(), vec![p("10.32.7.0/24")], "the claim stays");
    match ipam.allocate(&key("a"), "/proc/1/ns/net", Instant::now()) {
        Err(AllocError::Pending(why)) => assert!(why.contains("another host claims"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn divided_hosts_avoid_other_hosts_pod_ranges_and_show_them() {
    let range = AllocRange::parse("10.32.0.0/24").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    // Another host owns three quarters of the range as its pod range.
    let others = [(p("10.32.0.0/25"), id(2)), (p("10.32.0.128/26"), id(3))];
    let mut now = Instant::now();
    let a = add(&mut ipam, "a", &others, &mut now);
    assert!(p("10.32.0.192/26").contains_addr(IpAddr::V4(a)), "{a}");
    let s = ipam.status("host-a", &|i| format!("peer{}", i.0[0]), 0);
    let owners: Vec<(String, String)> = s
        .chunks
        .iter()
        .map(|c| (c.chunk.clone(), c.owner.clone()))
        .collect();
    assert!(
        owners.contains(&("10.32.0.0/25".into(), "peer2".into())),
        "{owners:?}"
    );
}

/// `--kube`: told to wait, the allocator hands nothing out and claims
/// nothing, even with the mesh synchronised.
fn awaits_the_api<A: Family>(ipam: &mut Ipam<A>) {
    ipam.await_pod_cidr();
    let v = view(ipam, &[]);
    ipam.update_view(v, 0);
    match ipam.allocate(&key("a"), "/proc/1/ns/net", Instant::now()) {
        Err(AllocError::Pending(why)) => assert!(why.contains("Kubernetes API"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(ipam.ready().unwrap_err().contains("podCIDR"));
    assert!(ipam.claims().is_empty());
}

#[test]
fn under_kube_nothing_is_handed_out_until_the_api_said_then_chunks_or_the_pod_range() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    awaits_the_api(&mut ipam);
    assert!(ipam
        .status("h", &|_| String::new(), 0)
        .render_text()
        .contains("waiting for the Kubernetes API"));
    // No podCIDR: chunks as usual.
    let said = ipam.set_pod_cidr(None).unwrap();
    assert!(said.contains("/26 chunks"), "{said}");
    let mut now = Instant::now();
    let a = add(&mut ipam, "a", &[], &mut now);
    assert!(range.contains(a));
    // A podCIDR given later: new pods get addresses from it, the chunk
    // holding a's address stays claimed.
    let before = ipam.claims();
    ipam.set_pod_cidr(Some(p("10.32.200.0/24"))).unwrap();
    let b = add(&mut ipam, "b", &[], &mut now);
    assert!(p("10.32.200.0/24").contains_addr(IpAddr::V4(b)), "{b}");
    assert!(before.iter().all(|c| ipam.claims().contains(c)));
    assert_eq!(ipam.lookup(&key("a")), Some(a));
}

#[test]
fn a_restart_with_a_pod_range_keeps_addresses_in_it() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    ipam.set_pod_cidr(Some(p("10.32.7.0/24"))).unwrap();
    let mut now = Instant::now();
    let a = add(&mut ipam, "a", &[], &mut now);
    let state = ipam.state();
    assert_eq!(state.chunks, vec!["10.32.7.0/24".to_string()]);
    let mut again = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    again.set_pod_cidr(Some(p("10.32.7.0/24"))).unwrap();
    again.restore(state).unwrap();
    assert_eq!(again.claims(), vec![p("10.32.7.0/24")]);
    assert_eq!(again.lookup(&key("a")), Some(a));
    let b = add(&mut again, "b", &[], &mut now);
    assert_ne!(a, b);
}

/// Takes the gateway, settling any claim it makes on the way.
fn gateway(ipam: &mut Ipam, others: &[(IpPrefix, PeerId)], now: &mut Instant) -> Ipv4Addr {
    settled(ipam, others, now, "gateway", |i, t| {
        i.ensure_gateway(t)
            .map(|g| g.expect("a gateway is wanted").0)
    })
}

#[test]
fn the_bridge_gateway_is_the_pod_ranges_first_address_and_never_a_pods() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    assert_eq!(ipam.ensure_gateway(Instant::now()), Ok(None), "not wanted");
    ipam.want_bridge_gateway(true);
    ipam.set_pod_cidr(Some(p("10.32.7.0/28"))).unwrap();
    // Nothing before the mesh confirms the pod range.
    assert!(matches!(
        ipam.ensure_gateway(Instant::now()),
        Err(AllocError::Pending(_))
    ));
    assert_eq!(ipam.gateway(), None);
    let mut now = Instant::now();
    // The first pod's add takes the gateway first: .1; pods get .2 to .14.
    let mut pods = BTreeSet::new();
    for i in 0..13 {
        let a = add(&mut ipam, &format!("c{i}"), &[], &mut now);
        assert!(pods.insert(a), "{a} handed out twice");
    }
    let g: Ipv4Addr = "10.32.7.1".parse().unwrap();
    assert_eq!(ipam.gateway(), Some(g));
    assert_eq!(ipam.ensure_gateway(now), Ok(Some((g, false))));
    assert!(!pods.contains(&g), "the gateway was handed to a pod");
    let expected: BTreeSet<Ipv4Addr> = (2..=14).map(|h| Ipv4Addr::new(10, 32, 7, h)).collect();
    assert_eq!(pods, expected);
    match ipam.allocate(&key("one-too-many"), "ns", now) {
        Err(AllocError::Exhausted(why)) => assert!(why.contains("10.32.7.0/28"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Status: pods counted apart from the gateway, which is named.
    let s = ipam.status("host-a", &|_| String::new(), 0);
    assert_eq!(s.in_use, 13);
    assert_eq!(s.gateway.as_deref(), Some("10.32.7.1"));
    assert_eq!((s.chunks[0].in_use, s.chunks[0].size), (Some(13), 13));
    assert!(s.render_text().contains("10.32.7.1 is the pods' gateway"));
    // Neither GC nor DEL of every pod releases it; its chunk stays claimed.
    assert!(ipam.release(&key("c0")));
    assert_eq!(ipam.gc(&[]), 12);
    assert_eq!(ipam.gateway(), Some(g));
    assert_eq!(ipam.claims(), vec![p("10.32.7.0/28")]);
    let a = add(&mut ipam, "again", &[], &mut now);
    assert_eq!(a, "10.32.7.2".parse::<Ipv4Addr>().unwrap());
}

#[test]
fn in_chunks_the_gateway_takes_the_first_chunks_first_free_address() {
    // /24 in /28 chunks; the host's own address is no concern here.
    let range = AllocRange::parse("10.32.0.0/24").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    ipam.want_bridge_gateway(true);
    let mut now = Instant::now();
    // Taken eagerly (weft does on its tick), before any pod.
    let g = gateway(&mut ipam, &[], &mut now);
    let chunk = ipam.claims()[0];
    assert_eq!(chunk.len(), 28);
    let first = match chunk.addr() {
        IpAddr::V4(b) if b == Ipv4Addr::new(10, 32, 0, 0) => Ipv4Addr::new(10, 32, 0, 1),
        IpAddr::V4(b) => b,
        IpAddr::V6(_) => unreachable!(),
    };
    assert_eq!(g, first);
    // Many pods, over several chunks: never the gateway, never twice.
    let mut pods = BTreeSet::new();
    for i in 0..40 {
        let a = add(&mut ipam, &format!("c{i}"), &[], &mut now);
        assert_ne!(a, g);
        assert!(pods.insert(a), "{a} handed out twice");
    }
    assert!(ipam.claims().len() >= 3, "{:?}", ipam.claims());
    // Every pod gone: a refused claim holding only the gateway stays (the
    // address is in use, as a pod's would be); the empty ones go.
    assert_eq!(ipam.gc(&[]), 40);
    let others: Vec<(IpPrefix, PeerId)> = ipam.claims().iter().map(|c| (*c, id(2))).collect();
    let v = view(&ipam, &others);
    ipam.update_view(v, 0);
    assert_eq!(ipam.claims(), vec![chunk]);
    assert_eq!(ipam.gateway(), Some(g));
}

#[test]
fn the_gateway_survives_a_restart_and_goes_when_a_host_address_is_the_gateway() {
    let range = AllocRange::parse("10.32.0.0/16").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    ipam.want_bridge_gateway(true);
    let mut now = Instant::now();
    let a = add(&mut ipam, "a", &[], &mut now);
    let g = ipam.gateway().expect("taken with the first pod");
    assert_ne!(a, g);
    let state = ipam.state();
    assert_eq!(state.gateway, Some(g));
    // Through the JSON of the store: the same gateway, its chunk claimed,
    // usable at once for the bridge (before the mesh confirms anything),
    // and not handed out.
    let text = serde_json::to_string(&state).unwrap();
    let mut again = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    again.want_bridge_gateway(true);
    again.restore(serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(again.gateway(), Some(g));
    assert_eq!(again.ensure_gateway(now), Ok(Some((g, false))));
    assert_eq!(again.claims(), ipam.claims());
    let mut seen = BTreeSet::from([a]);
    for i in 0..70 {
        let b = add(&mut again, &format!("b{i}"), &[], &mut now);
        assert!(b != g && seen.insert(b), "{b}");
    }
    // A state from before gateways existed still loads.
    let old = r#"{"range":"10.32.0.0/16","chunks":[],"allocations":[],"reservations":[]}"#;
    let s: State = serde_json::from_str(old).unwrap();
    assert_eq!(s.gateway, None);
    // With a host address inside the range (the gateway now), the old one
    // is released and free for pods.
    let mut third = Ipam::new(
        range,
        id(1),
        Some("10.32.99.1".parse().unwrap()),
        Duration::from_secs(3600),
    );
    third.restore(state).unwrap();
    assert_eq!(third.want_bridge_gateway(false), Some(g));
    assert_eq!(third.gateway(), None);
    assert_eq!(third.state().gateway, None);
    let v = view(&third, &[]);
    third.update_view(v, 0);
    let c = third.allocate(&key("c"), "ns", now).unwrap().0;
    assert_eq!(c, g, "the released gateway is the first free address");
}

// ---- IPv6 ---------------------------------------------------------------

/// Allocates `c` from an IPv6 allocator, settling any claim on the way.
fn add6(
    ipam: &mut Ipam<Ipv6Addr>,
    c: &str,
    others: &[(IpPrefix, PeerId)],
    now: &mut Instant,
) -> Ipv6Addr {
    settled(ipam, others, now, c, |i, t| {
        i.allocate(&key(c), "/proc/1/ns/net", t).map(|(a, _)| a)
    })
}

#[test]
fn ipv6_ranges_parse_and_refuse_by_value() {
    let r = AllocRange::parse_v6("fd32::/64").unwrap();
    assert_eq!(r.to_string(), "fd32::/64");
    assert_eq!(chunk_len(&r), 122);
    assert_eq!(chunk_len(&AllocRange::parse_v6("fd32::/112").unwrap()), 122);
    assert_eq!(chunk_len(&AllocRange::parse_v6("fd32::/118").unwrap()), 122);
    assert_eq!(chunk_len(&AllocRange::parse_v6("fd32::/120").unwrap()), 124);
    assert_eq!(chunk_len(&AllocRange::parse_v6("::/1").unwrap()), 122);
    for (bad, says) in [
        ("fd32::", "CIDR"),
        ("10.32.0.0/16", "IPv6"),
        ("fd32::/121", "1-120"),
        ("fd32::/0", "1-120"),
        ("fd32::/129", "1-120"),
        ("fd32::1/64", "fd32::/64"),
        ("fd32::/x", "1-120"),
    ] {
        let e = AllocRange::parse_v6(bad).unwrap_err();
        assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
    }
    assert!(AllocRange::parse_v6("fd32::/121")
        .unwrap_err()
        .contains("at least 256 addresses"));
    // Either family by its text.
    assert!(matches!(
        AnyRange::parse("fd32::/64"),
        Ok(AnyRange::V6(r)) if r.to_string() == "fd32::/64"
    ));
    assert!(matches!(
        AnyRange::parse("10.32.0.0/16"),
        Ok(AnyRange::V4(r)) if r.to_string() == "10.32.0.0/16"
    ));
    assert!(AnyRange::parse("fd32::/200")
        .unwrap_err()
        .contains("fd32::/200"));
    assert!(AnyRange::parse("nonsense")
        .unwrap_err()
        .contains("nonsense"));
    // The IPv4 parser names the way to an IPv6 range.
    let e = AllocRange::parse("fd00::/64").unwrap_err();
    assert!(e.contains("IPv4") && e.contains("of its own"), "{e}");
}

#[test]
fn an_ipv6_range_is_claimed_in_122_chunks_and_hands_out_distinct_addresses() {
    let range = AllocRange::parse_v6("fd32::/64").unwrap();
    let own: Ipv6Addr = "fd32::1".parse().unwrap();
    let mut ipam = Ipam::new(range, id(1), Some(own), Duration::from_secs(3600));
    let mut now = Instant::now();
    let mut seen = BTreeSet::new();
    for i in 0..70 {
        let a = add6(&mut ipam, &format!("c{i}"), &[], &mut now);
        assert!(range.contains(a), "{a}");
        assert_ne!(a, own);
        assert_ne!(a, "fd32::".parse::<Ipv6Addr>().unwrap());
        assert!(seen.insert(a), "{a} handed out twice");
    }
    // 70 addresses need two chunks of 64, both /122, inside the range.
    let claims = ipam.claims();
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert!(claims
        .iter()
        .all(|c| c.len() == 122 && !c.is_ipv4() && range.prefix().contains(c)));
    let status = ipam.status("me", &|p| p.to_string(), 0);
    assert_eq!(status.range, "fd32::/64");
    assert_eq!(status.chunk_len, 122);
    assert_eq!(status.in_use, 70);
    assert!(status.render_text().contains("fd32::/64 in /122 chunks"));
    // Idempotent, released, and free again.
    let a = ipam.lookup(&key("c5")).unwrap();
    assert_eq!(ipam.allocate(&key("c5"), "ns", now).unwrap(), (a, false));
    assert!(ipam.release(&key("c5")));
    assert!(!ipam.release(&key("c5")));
    assert_eq!(ipam.gc(&[key("c1")]), 68);
    assert_eq!(ipam.lookup(&key("c1")).map(|_| ()), Some(()));
    // Two hosts start their search at different chunks of the /64.
    let mut other = Ipam::new(range, id(2), None, Duration::ZERO);
    let b = add6(&mut other, "x", &[], &mut now);
    let chunk_b = IpPrefix::new(IpAddr::V6(b), 122).unwrap();
    assert!(!claims.contains(&chunk_b));
    // A pod range of its own works in IPv6 too: new pods get addresses
    // from it, the chunks holding earlier ones stay claimed.
    let said = ipam.set_pod_cidr(Some(p("fd32::7:0/120"))).unwrap();
    assert!(
        said.contains("fd32::7:0/120") && said.contains("254 addresses"),
        "{said}"
    );
    let c = add6(&mut ipam, "after", &[], &mut now);
    assert!(p("fd32::7:0/120").contains_addr(IpAddr::V6(c)), "{c}");
    assert!(ipam.claims().contains(&p("fd32::7:0/120")));
    assert!(ipam.claims().iter().any(|k| k.len() == 122));
}

#[test]
fn an_ipv6_pod_cidr_is_one_chunk_never_hands_out_its_ends_and_survives_a_restart() {
    let range = AllocRange::parse_v6("fd32::/48").unwrap();
    for (bad, says) in [
        ("fd33::/64", "does not lie inside --ipalloc-range fd32::/48"),
        ("fd32::1/64", "host bits"),
        ("fd32::/121", "1-120"),
        ("10.32.7.0/24", "IPv6"),
        ("fd32::", "CIDR"),
    ] {
        let e = parse_pod_cidr(bad, &range).unwrap_err();
        assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        assert!(e.contains("--ipalloc-pod-cidr"), "{e}");
    }
    let cidr = parse_pod_cidr("fd32:0:0:7::/64", &range).unwrap();
    assert_eq!(cidr, p("fd32:0:0:7::/64"));
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    // The wrong family, or outside the range, is refused naming both.
    let e = ipam.set_pod_cidr(Some(p("10.32.7.0/24"))).unwrap_err();
    assert!(e.contains("10.32.7.0/24") && e.contains("fd32::/48"), "{e}");
    let e = ipam.set_pod_cidr(Some(p("fd32::/124"))).unwrap_err();
    assert!(e.contains("/120") && e.contains("IPv6"), "{e}");
    let said = ipam.set_pod_cidr(Some(cidr)).unwrap();
    assert!(
        said.contains("fd32:0:0:7::/64") && said.contains("2^64 - 2 addresses"),
        "{said}"
    );
    assert_eq!(ipam.claims(), vec![cidr], "claimed as one chunk");
    let mut now = Instant::now();
    assert!(matches!(
        ipam.allocate(&key("a"), "/proc/1/ns/net", now),
        Err(AllocError::Pending(_))
    ));
    let mut seen = BTreeSet::new();
    for i in 0..70 {
        let a = add6(&mut ipam, &format!("c{i}"), &[], &mut now);
        assert!(cidr.contains_addr(IpAddr::V6(a)), "{a} outside {cidr}");
        assert!(seen.insert(a), "{a} handed out twice");
    }
    // Never the subnet-router anycast address (the first) and, like a
    // chunk's range, never the last.
    let first: Ipv6Addr = "fd32:0:0:7::".parse().unwrap();
    let last: Ipv6Addr = "fd32:0:0:7:ffff:ffff:ffff:ffff".parse().unwrap();
    assert!(!seen.contains(&first) && !seen.contains(&last));
    assert_eq!(seen.first(), Some(&"fd32:0:0:7::1".parse().unwrap()));
    // 70 pods, still one claim: the pod range, not /122 chunks.
    assert_eq!(ipam.claims(), vec![cidr]);
    assert!(ipam.ready().is_ok());
    let s = ipam.status("host-a", &|_| "other".into(), 0);
    assert_eq!(s.pod_cidr.as_deref(), Some("fd32:0:0:7::/64"));
    assert_eq!(s.chunks.len(), 1);
    assert_eq!(s.chunks[0].in_use, Some(70));
    let text = s.render_text();
    assert!(
        text.contains("hands out its pod range fd32:0:0:7::/64 only")
            && text.contains("70/~2^64 in use"),
        "{text}"
    );
    // Persisted and restored: the same addresses, the same one claim.
    let state = ipam.state();
    assert_eq!(state.chunks, vec!["fd32:0:0:7::/64".to_string()]);
    let dir = std::env::temp_dir().join(format!("weft-ipam-pod6-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    store::save(&dir, &state).unwrap();
    let loaded = store::load::<Ipv6Addr>(&dir).unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded, state);
    let mut again = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    again.set_pod_cidr(Some(cidr)).unwrap();
    again.restore(loaded).unwrap();
    assert_eq!(again.claims(), vec![cidr]);
    for i in 0..70 {
        let k = key(&format!("c{i}"));
        assert_eq!(again.lookup(&k), ipam.lookup(&k));
    }
    let b = add6(&mut again, "new", &[], &mut now);
    assert!(
        cidr.contains_addr(IpAddr::V6(b)) && !seen.contains(&b),
        "{b}"
    );
    // A host dividing the range avoids another host's IPv6 pod range.
    let mut other = Ipam::new(range, id(2), None, Duration::ZERO);
    let o = add6(&mut other, "x", &[(cidr, id(1))], &mut now);
    assert!(!cidr.contains_addr(IpAddr::V6(o)), "{o}");
}

#[test]
fn under_kube_the_ipv6_allocator_waits_for_the_api_too() {
    let range = AllocRange::parse_v6("fd32::/48").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(3600));
    awaits_the_api(&mut ipam);
    ipam.set_pod_cidr(Some(p("fd32:0:0:9::/64"))).unwrap();
    let mut now = Instant::now();
    let a = add6(&mut ipam, "a", &[], &mut now);
    assert_eq!(a, "fd32:0:0:9::1".parse::<Ipv6Addr>().unwrap());
}

/// Every address of a small range at either end of the IPv6 space: the
/// chunk math neither overflows nor hands out the range's ends.
#[test]
fn ipv6_chunk_math_holds_at_both_ends_of_the_address_space() {
    for (text, first, last) in [
        (
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ),
        ("::/120", "::", "::ff"),
    ] {
        let range = AllocRange::parse_v6(text).unwrap();
        assert_eq!(chunk_len(&range), 124);
        let (first, last): (Ipv6Addr, Ipv6Addr) = (first.parse().unwrap(), last.parse().unwrap());
        let mut ipam = Ipam::new(range, id(3), None, Duration::ZERO);
        let mut now = Instant::now();
        let mut seen = BTreeSet::new();
        for i in 0..254 {
            let a = add6(&mut ipam, &format!("p{i}"), &[], &mut now);
            assert!(range.contains(a) && a != first && a != last, "{text}: {a}");
            assert!(seen.insert(a), "{text}: {a} twice");
        }
        assert_eq!(ipam.claims().len(), 16, "{text}");
        ipam.update_view(view(&ipam, &[]), 0);
        let e = ipam.allocate(&key("one-more"), "ns", now).unwrap_err();
        assert!(matches!(e, AllocError::Exhausted(_)), "{text}: {e}");
        assert!(ipam.ready().is_err());
        let status = ipam.status("me", &|p| p.to_string(), 0);
        let sizes: u32 = status.chunks.iter().map(|c| c.size).sum();
        assert_eq!(sizes, 254, "{text}");
    }
}

#[test]
fn ipv6_allocations_persist_beside_an_unchanged_ipv4_state() {
    let dir = std::env::temp_dir().join(format!("weft-ipam-dual-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // An IPv4 state as an earlier weft wrote it loads as it was.
    let old = r#"{
  "range": "10.32.0.0/16",
  "chunks": ["10.32.1.0/26"],
  "allocations": [{"container_id": "a", "ifname": "eth0", "netns": "/proc/1/ns/net", "address": "10.32.1.2"}],
  "reservations": []
}"#;
    std::fs::write(dir.join("allocations.json"), old).unwrap();
    let v4 = store::load::<Ipv4Addr>(&dir).unwrap().unwrap();
    assert_eq!(v4.allocations[0].address, Ipv4Addr::new(10, 32, 1, 2));
    assert_eq!(store::load::<Ipv6Addr>(&dir).unwrap(), None);

    let range = AllocRange::parse_v6("fd32::/64").unwrap();
    let mut now = Instant::now();
    let mut ipam = Ipam::new(range, id(1), None, Duration::ZERO);
    let a = add6(&mut ipam, "a", &[], &mut now);
    let b = add6(&mut ipam, "b", &[], &mut now);
    assert!(ipam.release(&key("b")));
    store::save(&dir, &ipam.state()).unwrap();
    assert!(dir.join("allocations6.json").exists());
    // The IPv4 file is untouched by the IPv6 one.
    assert_eq!(
        std::fs::read_to_string(dir.join("allocations.json")).unwrap(),
        old
    );

    let mut again = Ipam::new(range, id(1), None, Duration::ZERO);
    again
        .restore(store::load::<Ipv6Addr>(&dir).unwrap().unwrap())
        .unwrap();
    assert_eq!(again.claims(), ipam.claims());
    assert_eq!(again.lookup(&key("a")), Some(a));
    again.update_view(view(&again, &[]), 0);
    let (c, _) = again.allocate(&key("c"), "ns", now).unwrap();
    assert_ne!(c, a, "a held address is never handed out twice");
    assert_eq!(c, b);
    // Another IPv6 range with live allocations is refused, naming both.
    let other = AllocRange::parse_v6("fd40::/64").unwrap();
    let e = Ipam::new(other, id(1), None, Duration::ZERO)
        .restore(store::load::<Ipv6Addr>(&dir).unwrap().unwrap())
        .unwrap_err();
    assert!(e.contains("fd40::/64") && e.contains("fd32::/64"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn departed_peers_ipv6_chunks_stay_reserved_until_timeout_or_rmpeer() {
    let range = AllocRange::parse_v6("fd32::/120").unwrap();
    let mut ipam = Ipam::new(range, id(1), None, Duration::from_secs(100));
    let mut now = Instant::now();
    let theirs: Vec<IpPrefix> = ["fd32::/124", "fd32::10/124", "fd32::20/124"]
        .iter()
        .map(|s| p(s))
        .collect();
    let mut gone = view(&ipam, &[]);
    // A departed peer's IPv4 claims are not this allocator's business.
    gone.departed = vec![(id(2), "b".into(), theirs.clone())];
    gone.live_names = vec!["c".into()];
    assert!(ipam.update_view(gone.clone(), 1000));
    let status = ipam.status("me", &|p| p.to_string(), 1010);
    let reserved: Vec<_> = status
        .chunks
        .iter()
        .filter(|c| c.state == "reserved")
        .collect();
    assert_eq!(reserved.len(), 3);
    assert_eq!(reserved[0].reclaim_in, Some(90));
    assert_eq!(ipam.reserved_chunks(), theirs);
    for i in 0..40 {
        let _ = add6(&mut ipam, &format!("c{i}"), &[], &mut now);
        let v = MeshView {
            departed: gone.departed.clone(),
            live_names: gone.live_names.clone(),
            ..view(&ipam, &[])
        };
        ipam.update_view(v, 1000);
    }
    assert!(ipam.claims().iter().all(|c| !theirs.contains(c)));
    let mut again = Ipam::new(range, id(1), None, Duration::from_secs(100));
    again.restore(ipam.state()).unwrap();
    assert_eq!(again.rmpeer("b").unwrap(), theirs);
    assert!(theirs.iter().all(|c| again.claims().contains(c)));
    let mut v = view(&ipam, &[]);
    v.departed = Vec::new();
    ipam.update_view(v.clone(), 1099);
    assert_eq!(ipam.state().reservations.len(), 3);
    assert!(ipam.update_view(v, 1100));
    assert!(ipam.state().reservations.is_empty());
}
