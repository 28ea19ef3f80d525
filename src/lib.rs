//! weft: a pure-userspace overlay router.
//!
//! The crate is split the way the design brief describes: sans-IO protocol
//! cores (`wire`, `noise`, `mesh`, `host` decisions) and thin I/O drivers
//! (`datapath`, `router`, `api`) around them.

pub mod wire;
pub mod host;
pub mod noise;
pub mod mesh;
pub mod datapath;
pub mod api;
pub mod router;
pub mod cli;
pub mod launch;
pub mod logging;
pub mod bench;
