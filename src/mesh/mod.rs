//! Sans-IO control plane: control messages, the per-peer link state
//! machine (handshake, hello, heartbeats, rekey), reconnect backoff.

pub mod backoff;
pub mod control;
pub mod fdb;
pub mod link;
pub mod pmtu;

#[cfg(test)]
mod sim_tests;
