//! Reading the host: kernel release, MTU, offloads, OVS and AF_XDP
//! availability, and the datapath decision made from them.
//!
//! `facts` gathers (the only part doing I/O), `kernel` and `known_issues`
//! interpret, `plan` decides (pure), `preflight` is the CLI surface.

pub mod facts;
pub mod instance;
pub mod kernel;
pub mod known_issues;
pub mod plan;
pub mod preflight;
