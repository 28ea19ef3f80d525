//! Kubernetes CNI support: the contract between the `weft` CNI plugin and
//! the running weft ([`api`]).

pub mod api;
