//! The event loop that wires the sans-IO cores to the I/O drivers: one mio
//! loop owning the TUN device, the UDP data socket, the control listener
//! and the control streams.

mod event_loop;
pub mod fastdp;
pub mod l2;
pub mod plain;
pub mod sleeve_batch;

pub use event_loop::{Router, RouterConfig};
pub use l2::L2Config;
