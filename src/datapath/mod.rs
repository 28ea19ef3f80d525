//! I/O drivers behind two batch interfaces: the local device
//! ([`device::Device`]: TUN, TAP) and the underlay ([`underlay::Underlay`]:
//! UDP sockets, AF_XDP), plus the kernel OVS datapath (odp). They only move
//! bytes (offloads included); every decision is made in `router` from
//! `mesh` and `noise` state.

pub mod batch;
pub mod device;
pub mod l2_offload;
pub mod odp;
pub mod offload;
pub mod sockaddr;
pub mod tap;
pub mod tun;
pub mod udp;
pub mod underlay;
pub mod xdp;
