//! The job kinds run end to end on the CPU backend, through the registry as a worker runs
//! them, checked against straightforward reference implementations written here.

mod batch;
mod conv2d;
mod cuda;
mod engines;
mod inline;
mod matmul;
mod mlp_predict;
mod support;
mod train_mlp;
