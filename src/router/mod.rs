//! The event loop that wires the sans-IO cores to the I/O drivers: one mio
//! loop owning the TUN device, the UDP data socket, the control listener
//! and the control streams.

mod event_loop;

pub use event_loop::{Router, RouterConfig};
