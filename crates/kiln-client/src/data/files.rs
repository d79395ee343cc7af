//! Files checked before they are sent: what their first bytes already say no job can read.

use std::path::Path;

use crate::error::{Error, Result, io};

/// How many first bytes of a file [`file_problem`] reads.
const CHECKED: u64 = 1 << 20;

/// Why no job could read the file at `path`, as far as its first bytes tell (an element type
/// kiln does not read, a header cut short, text in UTF-16, no format at all: see
/// [`kiln_data::formats::check_start`]); `entry` is the safetensors entry a job would pick,
/// and `reads` whether one tensor is read from it.
/// `None` when they tell nothing against it, and for what is not a regular file (a pipe's
/// bytes are read once); an error for a folder, which cannot be stored at all.
pub fn file_problem(path: &Path, entry: Option<&str>, reads: Reads) -> Result<Option<String>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(io(|| format!("opening {}", path.display())))?;
    let metadata = file
        .metadata()
        .map_err(io(|| format!("reading {}", path.display())))?;
    if metadata.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a folder: name a file",
            path.display()
        )));
    }
    if !metadata.is_file() {
        return Ok(None);
    }
    let mut prefix = Vec::new();
    file.take(CHECKED)
        .read_to_end(&mut prefix)
        .map_err(io(|| format!("reading {}", path.display())))?;
    let what = format!("file {}", path.display());
    let check = match reads {
        Reads::Tensor => kiln_data::formats::check_tensor_start,
        Reads::Any => kiln_data::formats::check_start,
    };
    Ok(check(&what, &prefix, metadata.len(), entry)
        .err()
        .map(|e| e.to_string()))
}

/// What a file is read as, for [`file_problem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// One tensor (`a`, `b`, `image`, `x`): a safetensors file of several needs one picked.
    Tensor,
    /// Anything a job reads (a dataset, a model, or an object stored for later).
    Any,
}

/// The parameters that read a whole file: a dataset (`x` and `y`), a model (every layer).
pub(super) const WHOLE_FILE_PARAMS: [&str; 2] = ["dataset", "model"];
