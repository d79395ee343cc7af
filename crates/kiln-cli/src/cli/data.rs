//! The arguments of `kiln put`, `kiln get` and `kiln rm`.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    /// The file to store.
    pub file: PathBuf,
    /// The object's name (default: the file's name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The object's name (a result's output.object.name).
    pub name: String,
    /// Where to write it (default: the last part of its name, in the current folder); `-` is
    /// standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// The objects' names (a result's output.object.name).
    #[arg(required = true)]
    pub names: Vec<String>,
}
