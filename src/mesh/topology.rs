//! The topology: every peer's record (who it is connected to, what it
//! claims) and the graph algorithms every node runs identically on it:
//! reachability, shortest-path routes and per-source broadcast trees.
//!
//! An edge counts only when both ends list each other, as in Weave Net:
//! a dead peer's stale record cannot keep it in the mesh, because its
//! neighbours drop it from theirs. An edge carries routes only when both
//! ends also say the data path works.

use super::claims::{AnnouncedClaim, IpPrefix};
use super::peer::{Neighbour, PeerId, PeerName};
use crate::wire::gossip::{RecordRepr, RecordView};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

/// One peer's record as gossiped, owned by the node that stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Whose record.
    pub id: PeerId,
    /// Grows on every change its owner makes.
    pub version: u64,
    /// Sanitised name.
    pub name: PeerName,
    /// Control addresses to dial it on.
    pub endpoints: Vec<SocketAddr>,
    /// Its claims.
    pub claims: Vec<AnnouncedClaim>,
    /// Prefixes it keeps reserved for departed peers (IPAM chunks).
    pub reserved: Vec<IpPrefix>,
    /// Its device's overlay subnets.
    pub subnets: Vec<IpPrefix>,
    /// Its connections, sorted by peer.
    pub neighbours: Vec<Neighbour>,
    /// Its encoded network certificate (empty: none), unverified.
    pub cert: Vec<u8>,
}

impl PeerRecord {
    /// A copy of a record received from the network. Lengths are bounded
    /// by the wire format and the bytes that arrived.
    pub fn from_view(view: &RecordView<'_>) -> PeerRecord {
        let mut neighbours: Vec<Neighbour> = view.neighbours().collect();
        neighbours.sort_unstable();
        neighbours.dedup_by_key(|n| n.peer);
        PeerRecord {
            id: view.id(),
            version: view.version(),
            name: PeerName::from_untrusted(view.name()),
            endpoints: view.endpoints().collect(),
            claims: view.claims().collect(),
            reserved: view.reserved().collect(),
            subnets: view.subnets().collect(),
            neighbours,
            cert: view.cert().to_vec(),
        }
    }

    /// The record's wire form.
    pub fn repr(&self) -> RecordRepr<'_> {
        RecordRepr {
            id: &self.id,
            version: self.version,
            name: self.name.as_str().as_bytes(),
            endpoints: &self.endpoints,
            claims: &self.claims,
            reserved: &self.reserved,
            subnets: &self.subnets,
            neighbours: &self.neighbours,
            cert: &self.cert,
        }
    }

    /// Bytes this record holds: inline and on the heap (for the memory
    /// figures in perf/RESULTS.md).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.name.as_str().len()
            + self.endpoints.capacity() * std::mem::size_of::<SocketAddr>()
            + self.claims.capacity() * std::mem::size_of::<AnnouncedClaim>()
            + (self.subnets.capacity() + self.reserved.capacity()) * std::mem::size_of::<IpPrefix>()
            + self.neighbours.capacity() * std::mem::size_of::<Neighbour>()
            + self.cert.capacity()
    }
}

/// Index of a peer in a [`Graph`].
pub type Vertex = u32;
const NONE: Vertex = Vertex::MAX;

/// The connection graph at one moment, with dense indices so the
/// algorithms run on vectors. Vertices are in identity order and
/// adjacency lists sorted, which makes every traversal (and so every
/// tie-break) the same on every node.
#[derive(Debug, Default)]
pub struct Graph {
    ids: Vec<PeerId>,
    index: HashMap<PeerId, Vertex>,
    /// Edges both ends list.
    control: Vec<Vec<Vertex>>,
    /// Edges both ends list with a working data path.
    data: Vec<Vec<Vertex>>,
}

impl Graph {
    /// Builds the graph from every known record.
    pub fn build<'a>(records: impl IntoIterator<Item = &'a PeerRecord>) -> Graph {
        let mut records: Vec<&PeerRecord> = records.into_iter().collect();
        records.sort_unstable_by_key(|r| r.id);
        let ids: Vec<PeerId> = records.iter().map(|r| r.id).collect();
        let index: HashMap<PeerId, Vertex> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as Vertex))
            .collect();
        let mut control = vec![Vec::new(); ids.len()];
        let mut data = vec![Vec::new(); ids.len()];
        for (a, record) in records.iter().enumerate() {
            for n in &record.neighbours {
                let Some(&b) = index.get(&n.peer) else {
                    continue;
                };
                // Each edge once, from its smaller end, if the other end
                // lists it back.
                if (b as usize) <= a {
                    continue;
                }
                let Ok(back) = records[b as usize]
                    .neighbours
                    .binary_search_by_key(&record.id, |m| m.peer)
                else {
                    continue;
                };
                let a = a as Vertex;
                control[a as usize].push(b);
                control[b as usize].push(a);
                if n.data_path && records[b as usize].neighbours[back].data_path {
                    data[a as usize].push(b);
                    data[b as usize].push(a);
                }
            }
        }
        for list in control.iter_mut().chain(data.iter_mut()) {
            list.sort_unstable();
        }
        Graph {
            ids,
            index,
            control,
            data,
        }
    }

    /// The vertex of a peer.
    pub fn vertex(&self, id: &PeerId) -> Option<Vertex> {
        self.index.get(id).copied()
    }

    /// The peer at a vertex.
    pub fn id(&self, v: Vertex) -> PeerId {
        self.ids[v as usize]
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the graph has no peers.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Breadth-first search from `root` over control edges (`data` false)
    /// or data edges: (hops, parent) per vertex, `u32::MAX` where not
    /// reached. The parent is the first vertex that reached it, in the
    /// deterministic visiting order: this is the shortest-path tree every
    /// node computes identically.
    pub fn bfs(&self, root: Vertex, data: bool) -> (Vec<u32>, Vec<Vertex>) {
        let adjacency = if data { &self.data } else { &self.control };
        let mut hops = vec![u32::MAX; self.ids.len()];
        let mut parent = vec![NONE; self.ids.len()];
        let mut queue = VecDeque::new();
        hops[root as usize] = 0;
        queue.push_back(root);
        while let Some(u) = queue.pop_front() {
            for &v in &adjacency[u as usize] {
                if hops[v as usize] == u32::MAX {
                    hops[v as usize] = hops[u as usize] + 1;
                    parent[v as usize] = u;
                    queue.push_back(v);
                }
            }
        }
        (hops, parent)
    }

    /// First hop from `root` towards every vertex over data edges
    /// (`None` where unreachable, and for `root` itself), with hop counts.
    pub fn first_hops(&self, root: Vertex) -> Vec<Option<(Vertex, u32)>> {
        let (hops, parent) = self.bfs(root, true);
        let mut order: Vec<Vertex> = (0..self.ids.len() as Vertex)
            .filter(|&v| hops[v as usize] != u32::MAX && v != root)
            .collect();
        order.sort_unstable_by_key(|&v| hops[v as usize]);
        let mut first = vec![None; self.ids.len()];
        for v in order {
            let p = parent[v as usize];
            let hop = if p == root {
                v
            } else {
                match first[p as usize] {
                    Some((h, _)) => h,
                    None => continue,
                }
            };
            first[v as usize] = Some((hop, hops[v as usize]));
        }
        first
    }

    /// Children of `me` in the broadcast tree rooted at `source`: where a
    /// broadcast from `source` that reached `me` goes next. Every node
    /// computes the same tree, so each reached node gets it exactly once.
    pub fn broadcast_children(&self, source: Vertex, me: Vertex) -> Vec<Vertex> {
        let (_, parent) = self.bfs(source, true);
        (0..self.ids.len() as Vertex)
            .filter(|&v| parent[v as usize] == me)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> PeerId {
        PeerId([b; 32])
    }

    fn record(me: u8, neighbours: &[(u8, bool)]) -> PeerRecord {
        let mut neighbours: Vec<Neighbour> = neighbours
            .iter()
            .map(|&(p, data_path)| Neighbour {
                peer: id(p),
                data_path,
            })
            .collect();
        neighbours.sort_unstable();
        PeerRecord {
            id: id(me),
            version: 1,
            name: PeerName::default(),
            endpoints: vec![],
            claims: vec![],
            reserved: vec![],
            subnets: vec![],
            neighbours,
            cert: vec![],
        }
    }

    #[test]
    fn edges_need_both_ends_and_routes_need_data_paths() {
        // 1-2 both ways with data; 2-3 control only; 3-4 only listed by 3.
        let records = [
            record(1, &[(2, true)]),
            record(2, &[(1, true), (3, false)]),
            record(3, &[(2, true), (4, true)]),
            record(4, &[]),
        ];
        let g = Graph::build(&records);
        let v = |b| g.vertex(&id(b)).unwrap();
        let (hops, _) = g.bfs(v(1), false);
        assert_eq!(hops[v(3) as usize], 2);
        assert_eq!(hops[v(4) as usize], u32::MAX);
        let first = g.first_hops(v(1));
        assert_eq!(first[v(2) as usize], Some((v(2), 1)));
        assert_eq!(first[v(3) as usize], None);
    }

    #[test]
    fn equal_paths_break_ties_by_identity() {
        // A square 1-2-4 and 1-3-4: 4 is reached via 2 (the smaller id).
        let records = [
            record(1, &[(2, true), (3, true)]),
            record(2, &[(1, true), (4, true)]),
            record(3, &[(1, true), (4, true)]),
            record(4, &[(2, true), (3, true)]),
        ];
        let g = Graph::build(records.iter().rev());
        let v = |b| g.vertex(&id(b)).unwrap();
        assert_eq!(g.first_hops(v(1))[v(4) as usize], Some((v(2), 2)));
        assert_eq!(g.broadcast_children(v(1), v(2)), vec![v(4)]);
        assert!(g.broadcast_children(v(1), v(3)).is_empty());
        assert_eq!(g.broadcast_children(v(1), v(1)), vec![v(2), v(3)]);
    }
}
