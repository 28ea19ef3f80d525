//! The mesh as `weft status peers` shows it: every peer this host knows,
//! by name and identity, its overlay addresses, its connections, and how
//! this host reaches it (direct, or via which peer and why). Typed states
//! from `mesh::Node` become text only here.

use crate::mesh::node::{Event, RouteReason};
use crate::mesh::PeerId;
use serde::{Deserialize, Serialize};

/// How this host reaches a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RouteStatus {
    /// This host itself.
    ThisHost,
    /// Over the direct connection.
    Direct,
    /// Through another peer.
    Via {
        /// The neighbour traffic is handed to (name and identity).
        via: String,
        /// Connections on the path.
        hops: u32,
        /// Why not direct.
        reason: String,
    },
    /// Known, but no working path reaches it now.
    Unreachable,
}

impl RouteStatus {
    /// Short text for a status line.
    pub fn text(&self) -> String {
        match self {
            RouteStatus::ThisHost => "this host".into(),
            RouteStatus::Direct => "direct".into(),
            RouteStatus::Via { via, hops, reason } => {
                format!("via {via}, {hops} hops ({reason})")
            }
            RouteStatus::Unreachable => "unreachable (no working path)".into(),
        }
    }
}

/// One connection of a peer, as its record lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeighbourStatus {
    /// The peer at the other end (name and identity).
    pub peer: String,
    /// Whether data (UDP heartbeats) flows over it.
    pub data_path: bool,
}

/// One peer of the mesh.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Its identity: the static public key, base64.
    pub id: String,
    /// The identity's short form, as log lines show it.
    pub short_id: String,
    /// The overlay addresses and MACs it claims (accepted or not).
    pub claims: Vec<String>,
    /// Control addresses it can be dialled on.
    pub endpoints: Vec<String>,
    /// Its connections.
    pub connections: Vec<NeighbourStatus>,
    /// How this host reaches it.
    pub route: RouteStatus,
    /// End-to-end session state, for peers reached through others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to_end: Option<String>,
}

/// A refused address claim, in words.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictStatus {
    /// Who owns the address space.
    pub owner: String,
    /// Its claim.
    pub owned_claim: String,
    /// Whose claim was refused.
    pub refused: String,
    /// The refused claim.
    pub refused_claim: String,
}

/// A claim refused because the claimant's certificate does not allow it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefusedClaimStatus {
    /// Who claimed it.
    pub peer: String,
    /// The claim.
    pub claim: String,
    /// Why it is refused, e.g. "not covered by its certificate".
    pub reason: String,
}

/// The mesh part of the status snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshStatus {
    /// Every peer this host knows, this host first.
    pub peers: Vec<PeerStatus>,
    /// Refused claims.
    pub conflicts: Vec<ConflictStatus>,
    /// Claims refused by certificate checks (networks with a CA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_claims: Vec<RefusedClaimStatus>,
    /// Gossip messages this host sent.
    pub gossip_messages: u64,
    /// Gossip bytes this host sent.
    pub gossip_bytes: u64,
}

impl MeshStatus {
    /// The text `weft status peers` prints.
    pub fn render_text(&self) -> String {
        let direct = self
            .peers
            .iter()
            .filter(|p| p.route == RouteStatus::Direct)
            .count();
        let via = self
            .peers
            .iter()
            .filter(|p| matches!(p.route, RouteStatus::Via { .. }))
            .count();
        let unreachable = self
            .peers
            .iter()
            .filter(|p| p.route == RouteStatus::Unreachable)
            .count();
        let mut out = format!(
            "Peers: {} ({direct} direct, {via} via other peers, {unreachable} unreachable)\n",
            self.peers.len()
        );
        for p in &self.peers {
            out.push_str(&format!(
                "{} ({})  {}  {}\n",
                p.name,
                p.short_id,
                if p.claims.is_empty() {
                    "-".to_string()
                } else {
                    p.claims.join(",")
                },
                p.route.text()
            ));
            if let Some(e) = &p.end_to_end {
                out.push_str(&format!("    end-to-end: {e}\n"));
            }
            for c in &p.connections {
                out.push_str(&format!(
                    "    <-> {}{}\n",
                    c.peer,
                    if c.data_path {
                        ""
                    } else {
                        "  (control only: no data path)"
                    }
                ));
            }
        }
        for c in &self.conflicts {
            out.push_str(&format!(
                "Refused claim: {} of {} (owned by {} as {})\n",
                c.refused_claim, c.refused, c.owner, c.owned_claim
            ));
        }
        for r in &self.refused_claims {
            out.push_str(&format!(
                "Refused claim: {} of {}: {}\n",
                r.claim, r.peer, r.reason
            ));
        }
        out
    }
}

/// Why a route is not direct, in words.
pub fn route_reason(reason: RouteReason) -> &'static str {
    match reason {
        RouteReason::Direct => "direct connection",
        RouteReason::NoDirectConnection => "no direct connection",
        RouteReason::DirectDataPathDown => "direct data path down",
    }
}

/// A mesh event in words; `label` names a peer (`name (identity)`).
pub fn describe_event(event: &Event, label: impl Fn(&PeerId) -> String) -> String {
    match event {
        Event::RouteChanged {
            peer,
            route: Some(r),
        } if r.reason == RouteReason::Direct => format!("route to {}: direct", label(peer)),
        Event::RouteChanged {
            peer,
            route: Some(r),
        } => format!(
            "route to {}: via {}, {} hops ({})",
            label(peer),
            label(&r.next_hop),
            r.hops,
            route_reason(r.reason)
        ),
        Event::RouteChanged { peer, route: None } => {
            format!("route to {}: unreachable (no working path)", label(peer))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::node::Route;

    #[test]
    fn text_names_routes_and_conflicts() {
        let s = MeshStatus {
            peers: vec![
                PeerStatus {
                    name: "h1".into(),
                    id: "AAAA".into(),
                    short_id: "AAAA".into(),
                    claims: vec!["10.40.0.1/32".into()],
                    endpoints: vec![],
                    connections: vec![NeighbourStatus {
                        peer: "h2 (BBBB)".into(),
                        data_path: false,
                    }],
                    route: RouteStatus::ThisHost,
                    end_to_end: None,
                },
                PeerStatus {
                    name: "h3".into(),
                    id: "CCCC".into(),
                    short_id: "CCCC".into(),
                    claims: vec![],
                    endpoints: vec![],
                    connections: vec![],
                    route: RouteStatus::Via {
                        via: "h2 (BBBB)".into(),
                        hops: 2,
                        reason: "no direct connection".into(),
                    },
                    end_to_end: Some("established".into()),
                },
            ],
            conflicts: vec![ConflictStatus {
                owner: "h1 (AAAA)".into(),
                owned_claim: "10.40.0.1/32".into(),
                refused: "h9 (ZZZZ)".into(),
                refused_claim: "10.40.0.1/32".into(),
            }],
            ..Default::default()
        };
        let t = s.render_text();
        for want in [
            "Peers: 2 (0 direct, 1 via other peers, 0 unreachable)",
            "h1 (AAAA)  10.40.0.1/32  this host",
            "<-> h2 (BBBB)  (control only: no data path)",
            "h3 (CCCC)  -  via h2 (BBBB), 2 hops (no direct connection)",
            "end-to-end: established",
            "Refused claim: 10.40.0.1/32 of h9 (ZZZZ) (owned by h1 (AAAA) as 10.40.0.1/32)",
        ] {
            assert!(t.contains(want), "{want:?} missing from\n{t}");
        }
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"kind\":\"via\""), "{j}");
        assert_eq!(serde_json::from_str::<MeshStatus>(&j).unwrap(), s);
    }

    #[test]
    fn events_name_peers() {
        let a = PeerId([1; 32]);
        let b = PeerId([2; 32]);
        let e = Event::RouteChanged {
            peer: a,
            route: Some(Route {
                next_hop: b,
                hops: 2,
                reason: RouteReason::DirectDataPathDown,
            }),
        };
        let label = |p: &PeerId| {
            if *p == a {
                "h1".to_string()
            } else {
                "h2".into()
            }
        };
        assert_eq!(
            describe_event(&e, label),
            "route to h1: via h2, 2 hops (direct data path down)"
        );
    }
}
