//! The kernel fast datapath ("fastdp"): weft programs the Linux Open
//! vSwitch datapath over generic netlink so that frames between the local
//! device and peers are switched and VXLAN-encapsulated in the kernel.
//!
//! - `attr`: OVS message layouts (attributes, flow keys, actions) and their
//!   total parsers;
//! - `genl`: the generic-netlink transport (netlink-sys socket,
//!   netlink-packet-generic framing, family resolution);
//! - `datapath`: one weft-owned datapath with its VXLAN vport and local
//!   port; flows, packet execution, misses, stats;
//! - `switch`: sans-IO MAC learning and flow decisions;
//! - `proof`: sans-IO per-connection heartbeat proof (fastdp or userspace, and why);
//! - `standalone`: the `weft fastdp` debug command.
//!
//! Fastdp carries no encryption: it is only for plaintext networks.

pub mod attr;
pub mod datapath;
pub mod genl;
pub mod proof;
pub mod standalone;
pub mod switch;
