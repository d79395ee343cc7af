//! `matmul` (being written).
