//! The threads that wire the sans-IO cores to the I/O drivers: the control
//! thread (control listener and streams, the mesh node, relays, the local
//! API) and N datapath workers (each with its own device queue and
//! underlay socket), joined by the published forwarding table and data
//! plane and by hand-offs.

pub mod dataplane;
mod event_loop;
pub mod fastdp;
pub mod ipam;
pub mod l2;
pub mod plain;
pub mod sleeve_batch;
pub mod vxlan_batch;
pub mod worker;

pub use event_loop::{Router, RouterConfig, RouterIdentity};
pub use worker::WorkerParts;

/// SIGHUP: re-read the configured peer list.
pub struct PeerReload {
    /// Becomes readable when SIGHUP arrives.
    pub signal: std::os::unix::net::UnixStream,
    /// Reads the peer list anew (from the config file), or says why not.
    pub read: Box<dyn FnMut() -> Result<Vec<crate::mesh::target::PeerTarget>, String> + Send>,
}
pub use l2::L2Config;
