//! weft: a pure-userspace overlay router.
//!
//! The crate is split the way the design brief describes: sans-IO protocol
//! cores (`wire`, `noise`, `mesh`, `host` decisions) and thin I/O drivers
//! (`datapath`, `router`, `api`) around them.

pub mod api;
pub mod bench;
pub mod cli;
pub mod cni;
pub mod config;
pub mod datapath;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod identity;
pub mod ipam;
pub mod kube;
pub mod launch;
pub mod logging;
pub mod mesh;
pub mod noise;
pub mod router;
pub mod sys;
pub mod wire;

/// weft's version with the commit it was built from, e.g. `0.1.0 (c606d0b)`
/// (`unknown commit` when built outside a git checkout).
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("WEFT_COMMIT"), ")");
