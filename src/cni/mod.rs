//! Kubernetes CNI support: the contract between the `weft` CNI plugin and
//! the running weft ([`api`]), and weft's side of it ([`server`]).

pub mod api;
pub mod server;
