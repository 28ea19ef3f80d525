//! The event loop that wires the sans-IO cores to the I/O drivers: one mio
//! loop owning the TUN device, the UDP data socket, the control listener
//! and the control streams.

mod event_loop;
pub mod fastdp;
pub mod ipam;
pub mod l2;
pub mod plain;
pub mod sleeve_batch;

pub use event_loop::{Router, RouterConfig, RouterIdentity};

/// SIGHUP: re-read the configured peer list.
pub struct PeerReload {
    /// Becomes readable when SIGHUP arrives.
    pub signal: std::os::unix::net::UnixStream,
    /// Reads the peer list anew (from the config file), or says why not.
    pub read: Box<dyn FnMut() -> Result<Vec<crate::mesh::target::PeerTarget>, String> + Send>,
}
pub use l2::L2Config;
