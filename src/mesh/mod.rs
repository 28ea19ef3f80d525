//! Sans-IO control plane: the mesh node (peers by identity, topology,
//! gossip, claims, routes, broadcast trees, the forwarding table it
//! publishes), control messages, the per-peer link state machine
//! (handshake, hello, heartbeats, rekey), end-to-end sessions with peers
//! reached through relays ([`e2e`]), reconnect backoff, MAC learning and
//! path-MTU search. Nothing here touches a socket, the clock or the OS
//! random generator: time, randomness and events come in as arguments.
//! See [`node`] for the gossip design and why it does not use a SWIM crate.

pub mod admission;
pub mod backoff;
pub mod claims;
pub mod control;
pub mod e2e;
pub mod fdb;
pub mod forwarding;
pub mod link;
pub mod node;
pub mod peer;
pub mod pmtu;
pub mod target;
pub mod topology;

pub use claims::{Claim, IpPrefix};
pub use e2e::{E2eConfig, E2eMessage, E2eOutput, E2eState, EndToEnd};
pub use forwarding::{Destination, ForwardingReader, ForwardingTable, NextHop};
pub use node::{
    ClaimRefusal, Event, MeshTimers, Node, NodeConfig, Output, RefusedClaim, Route, RouteReason,
};
pub use peer::{ConnectionId, PeerId, PeerName, PeerRef};

#[cfg(test)]
mod node_sim_tests;
#[cfg(test)]
mod sim_tests;
