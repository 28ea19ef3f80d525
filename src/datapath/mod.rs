//! I/O drivers: the local device (TUN) and the underlay socket (UDP). They
//! only move bytes; every decision is made in `router` from `mesh` and
//! `noise` state.

pub mod batch;
pub mod l2_offload;
pub mod odp;
pub mod offload;
pub mod sockaddr;
pub mod tap;
pub mod tun;
pub mod udp;
pub mod underlay;
pub mod xdp;
