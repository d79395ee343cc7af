//! The job kinds, one module each: parameters, cost and computation of every kind the
//! registry ([`crate::KINDS`]) lists.

pub mod conv2d;
pub mod matmul;
pub mod mlp;
pub mod mlp_predict;
mod shells;
pub mod train_mlp;
pub mod vector_add;
