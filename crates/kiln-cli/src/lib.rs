//! The `kiln` command's code, as a library for its binary (`src/main.rs`) and for `kiln-bench`,
//! which runs kiln's roles in process and submits jobs the way `kiln submit` does.

pub mod cli;
pub mod cmd;
mod local_nats;
pub mod log;
pub mod screen;
mod signal;
mod table;
