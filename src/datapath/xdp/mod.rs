//! AF_XDP underlay (placeholder while building).
pub mod bpf;
pub mod filter;
