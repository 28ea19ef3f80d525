//! weft: a pure-userspace overlay router.
//!
//! The crate is split the way the design brief describes: sans-IO protocol
//! cores (`wire`, `noise`, `mesh`, `host` decisions) and thin I/O drivers
//! (`datapath`, `router`, `api`) around them.

pub mod api;
pub mod bench;
pub mod cli;
pub mod datapath;
pub mod host;
pub mod launch;
pub mod logging;
pub mod mesh;
pub mod noise;
pub mod router;
pub mod wire;
