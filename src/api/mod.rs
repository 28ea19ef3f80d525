//! Status and metrics: the snapshot the router publishes, its text and
//! JSON renderings, the HTTP server that serves them and the client behind
//! `weft status`.

pub mod control;
pub mod http;
pub mod l2_status;
pub mod local_socket;
pub mod mesh_status;
pub mod status;

pub use status::{ConnectionStatus, DropCounters, Status};
