//! The arguments of `kiln put`, `kiln get`, `kiln ls` and `kiln rm`.

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
    /// Where to write it (default: the last part of its name, in the current folder; a
    /// folder: the last part of its name, there); `-` is standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RmArgs {
    /// The objects' names (a result's output.object.name).
    #[arg(required_unless_present_any = ["prefix", "orphans"])]
    pub names: Vec<String>,
    /// Also remove every object whose name starts with PREFIX (`results/<id>/`: a job's
    /// outputs; `inputs/<id>/`: the inputs `kiln submit` stored for it). Not empty: `kiln ls`
    /// shows what a prefix names.
    #[arg(long, value_name = "PREFIX", value_parser = non_empty)]
    pub prefix: Option<String>,
    /// Also remove the chunks no object names (an upload killed before it finished) once
    /// the newest of them is older than --older-than; `kiln ls` counts them.
    #[arg(long)]
    pub orphans: bool,
    /// With --orphans: how long an upload may store nothing before its chunks count as
    /// abandoned.
    #[arg(long, requires = "orphans", value_name = "DURATION", default_value = "1h", value_parser = super::values::duration)]
    pub older_than: std::time::Duration,
}

/// `kiln ls [PREFIX]`.
#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Only objects whose names start with this (`results/<id>/`, `inputs/<id>/`).
    #[arg(default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub format: super::FormatArgs,
}

fn non_empty(value: &str) -> Result<String, String> {
    match value.is_empty() {
        true => Err("must not be empty (it would name every object; `kiln ls` lists them)".into()),
        false => Ok(value.to_owned()),
    }
}
