//! Writing a fetched object, or bytes made of one, to a local path: through a file beside
//! it, renamed over it when complete, or in place for a device or a pipe.

use std::path::{Path, PathBuf};

use kiln_data::store::Bucket;

use super::replaced;
use super::transfer::{Counting, OnBytes};
use crate::error::{Error, Result, io};

/// Write object `name` to the file at `path`, telling `on_bytes` as it goes; returns its
/// size. With `expected`, as [`get_to_writer`]: an object whose bytes do not have that
/// SHA-256 is not written. The bytes go to a file beside `path`, renamed when complete: an
/// interrupted fetch leaves no half file under the name asked for.
pub async fn get_file(
    bucket: &Bucket,
    name: &str,
    path: &Path,
    expected: Option<&str>,
    on_bytes: OnBytes<'_>,
) -> Result<u64> {
    let path = &match destination(path) {
        Destination::Replace(path) => path,
        Destination::InPlace => return get_in_place(bucket, name, path, expected, on_bytes).await,
    };
    let partial = partial_path(path);
    let file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(|| format!("writing {}", path.display())))?;
    let mut file = Counting::new(file, on_bytes);
    let got = kiln_data::store::get_to_writer(bucket, name, &mut file)
        .await
        .map_err(|e| Error::Data(format!("fetching {name:?}: {e}")));
    let got = match got {
        Ok(got) => got,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    if let Err(e) = tokio::io::AsyncWriteExt::flush(&mut file).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(io(|| format!("writing {}", partial.display()))(e));
    }
    drop(file);
    if let Some(want) = expected
        && got.sha256 != want
    {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(replaced(name, &got.sha256, want));
    }
    if let Err(e) = tokio::fs::rename(&partial, path).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(io(|| format!("writing {}", path.display()))(e));
    }
    Ok(got.size)
}

/// How a fetch writes its file.
enum Destination {
    /// Into a file beside this regular file (or this new one), renamed over it when complete:
    /// no half-written file is ever left under the name.
    Replace(PathBuf),
    /// Straight into it: a device, a pipe or a socket (`/dev/null`, `>(…)`), which a rename
    /// would have replaced with a regular file (`-o /dev/null`, run as root, made the
    /// machine's /dev/null a file, and every later redirection to it wrote there), or a link.
    InPlace,
}

/// How to write `path`. A link is written through as a shell's `>` writes it: opened by
/// the kernel (which, in a shared sticky folder, refuses to follow another user's link:
/// `fs.protected_symlinks`), never resolved here and renamed over, which would replace
/// whatever file another user's link in `/tmp` named.
fn destination(path: &Path) -> Destination {
    if path.is_symlink() {
        return Destination::InPlace;
    }
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.is_dir() => Destination::InPlace,
        _ => Destination::Replace(path.to_owned()),
    }
}

/// [`get_file`] into a device, a pipe or through a link, written as it comes: an object
/// replaced since `expected` was recorded is refused before a byte is written.
async fn get_in_place(
    bucket: &Bucket,
    name: &str,
    path: &Path,
    expected: Option<&str>,
    on_bytes: OnBytes<'_>,
) -> Result<u64> {
    let mut file = open_in_place(path).await?;
    let size = super::get_to_writer(bucket, name, &mut file, expected, on_bytes).await?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(io(|| format!("writing {}", path.display())))?;
    Ok(size)
}

/// `path` opened for writing where it is (made if a link points to nothing yet, emptied if
/// it is a file a link names).
async fn open_in_place(path: &Path) -> Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .await
        .map_err(io(|| format!("writing {}", path.display())))
}

/// Write `bytes` to `path` (`-`: standard output) through a file beside it, renamed when
/// complete, as [`get_file`] does.
pub(super) async fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    if path == Path::new("-") {
        let mut out = tokio::io::stdout();
        out.write_all(bytes)
            .await
            .map_err(io(|| "writing to standard output".to_owned()))?;
        return out
            .flush()
            .await
            .map_err(io(|| "writing to standard output".to_owned()));
    }
    let path = &match destination(path) {
        Destination::Replace(path) => path,
        Destination::InPlace => {
            use tokio::io::AsyncWriteExt as _;
            let mut file = open_in_place(path).await?;
            file.write_all(bytes)
                .await
                .map_err(io(|| format!("writing {}", path.display())))?;
            return file
                .flush()
                .await
                .map_err(io(|| format!("writing {}", path.display())));
        }
    };
    let partial = partial_path(path);
    let written = match tokio::fs::write(&partial, bytes).await {
        Ok(()) => tokio::fs::rename(&partial, path)
            .await
            .map_err(io(|| format!("writing {}", path.display()))),
        Err(e) => Err(io(|| format!("writing {}", partial.display()))(e)),
    };
    if written.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    written
}

/// The file a fetch of `path` writes before it is complete, if any ([`partial_path`] of the
/// file a link names; none for a device or a pipe, written in place).
pub fn partial_of(path: &Path) -> Option<PathBuf> {
    match destination(path) {
        Destination::Replace(path) => Some(partial_path(&path)),
        Destination::InPlace => None,
    }
}

/// The file a fetch writes before it is complete: `path` with `.part` added (`out.npy.part`),
/// so that two outputs of one stem never share it.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}
