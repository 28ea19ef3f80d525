//! Sans-IO control plane: the mesh node (peers by identity, topology,
//! gossip, claims, routes, broadcast trees, the forwarding table it
//! publishes), control messages, the per-peer link state machine
//! (handshake, hello, heartbeats, rekey), reconnect backoff, MAC learning
//! and path-MTU search. Nothing here touches a socket, the clock or the OS
//! random generator: time, randomness and events come in as arguments.
//! See [`node`] for the gossip design and why it does not use a SWIM crate.

pub mod backoff;
pub mod claims;
pub mod control;
pub mod fdb;
pub mod forwarding;
pub mod link;
pub mod node;
pub mod peer;
pub mod pmtu;
pub mod topology;

pub use claims::{Claim, IpPrefix};
pub use forwarding::{Destination, ForwardingReader, ForwardingTable, NextHop};
pub use node::{Event, MeshTimers, Node, NodeConfig, Output, Route, RouteReason};
pub use peer::{ConnectionId, PeerId, PeerName, PeerRef};

#[cfg(test)]
mod node_sim_tests;
#[cfg(test)]
mod sim_tests;
