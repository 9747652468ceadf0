//! What the benchmark binaries share.

pub mod mesh_traffic;
