//! The `KILN_DATA` object store: files stored for jobs to name as `{"object": NAME}`, and the
//! outputs jobs stored, fetched into files.

use std::path::{Path, PathBuf};

use async_nats::jetstream::{self, object_store::ObjectStore};
use kiln_proto::{ObjectDescriptor, ObjectRef, OutputMode};

use crate::error::{Error, Result, io};

/// The `KILN_DATA` bucket.
pub async fn bucket(js: &jetstream::Context) -> Result<ObjectStore> {
    kiln_data::store::open(js)
        .await
        .map_err(|e| Error::Data(e.to_string()))
}

/// Store the file at `path` as object `name`.
pub async fn put_file(bucket: &ObjectStore, name: &str, path: &Path) -> Result<ObjectDescriptor> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(io(|| format!("opening {}", path.display())))?;
    kiln_data::store::put_reader(bucket, name, &mut file)
        .await
        .map_err(|e| Error::Data(format!("storing {} as {name:?}: {e}", path.display())))
}

/// Write object `name` to `writer`; returns its size. With `expected`, the object's bytes
/// must have that SHA-256 (the digest a result event recorded when the job stored it): an
/// object replaced since is refused before a byte is written.
pub async fn get_to_writer(
    bucket: &ObjectStore,
    name: &str,
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    expected: Option<&str>,
) -> Result<u64> {
    if let Some(want) = expected {
        let info = bucket
            .info(name)
            .await
            .map_err(|e| Error::Data(format!("fetching {name:?}: {e}")))?;
        let got = info
            .digest
            .as_deref()
            .and_then(kiln_data::store::sha256_hex)
            .unwrap_or_default();
        if got != want {
            return Err(replaced(name, &got, want));
        }
    }
    let got = kiln_data::store::get_to_writer(bucket, name, writer)
        .await
        .map_err(|e| Error::Data(format!("fetching {name:?}: {e}")))?;
    Ok(got.size)
}

/// Write object `name` to the file at `path`; returns its size. With `expected`, as
/// [`get_to_writer`]: an object whose bytes do not have that SHA-256 is not written. The
/// bytes go to a file beside `path`, renamed when complete: an interrupted fetch leaves no
/// half file under the name asked for.
pub async fn get_file(
    bucket: &ObjectStore,
    name: &str,
    path: &Path,
    expected: Option<&str>,
) -> Result<u64> {
    let partial = path.with_extension("part");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(|| format!("creating {}", partial.display())))?;
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
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(io(|| format!("writing {}", partial.display())))?;
    drop(file);
    if let Some(want) = expected
        && got.sha256 != want
    {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(replaced(name, &got.sha256, want));
    }
    tokio::fs::rename(&partial, path)
        .await
        .map_err(io(|| format!("writing {}", path.display())))?;
    Ok(got.size)
}

/// An object that is not the one a result named.
fn replaced(name: &str, got: &str, want: &str) -> Error {
    Error::Data(format!(
        "object {name:?} is not the one the job stored: its SHA-256 is {got}, the result \
         names {want} (it was replaced since; run the job again)"
    ))
}

/// A tensor parameter taken from a file or a stored object: `KEY=@FILE[#ENTRY]` or
/// `KEY=NAME` (as `kiln submit --input` spells it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The parameter it sets.
    pub key: String,
    /// A file to store first, or the name of an object already stored.
    pub source: Source,
    /// The entry of a safetensors file.
    pub entry: Option<String>,
}

/// Where an [`Input`]'s tensor comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, stored in `KILN_DATA` before the job is sent.
    File(PathBuf),
    /// An object already in `KILN_DATA`.
    Object(String),
}

impl Input {
    /// Parse `KEY=@FILE[#ENTRY]` or `KEY=NAME`.
    pub fn parse(arg: &str) -> Result<Self> {
        let invalid = |message: String| Err(Error::Invalid(message));
        let Some((key, value)) = arg.split_once('=') else {
            return invalid(format!(
                "--input {arg:?}: write KEY=@FILE or KEY=OBJECT-NAME"
            ));
        };
        let key = key.trim();
        if key.is_empty() {
            return invalid(format!("--input {arg:?}: the parameter name is missing"));
        }
        let (value, entry) = match value.rsplit_once('#') {
            Some((value, entry)) if !entry.is_empty() => (value, Some(entry.to_owned())),
            _ => (value, None),
        };
        let source = match value.strip_prefix('@') {
            Some("") => return invalid(format!("--input {key}=@: name a file after @")),
            Some(path) => Source::File(PathBuf::from(path)),
            None if value.is_empty() => {
                return invalid(format!("--input {key}=: name a file or object"));
            }
            None => Source::Object(value.to_owned()),
        };
        Ok(Self {
            key: key.to_owned(),
            source,
            entry,
        })
    }
}

/// Store the files `--input` names (as `inputs/<job id>/<submission>/<key>`) and set each parameter to its
/// object reference, with the digest the worker checks.
pub async fn attach_inputs(
    bucket: &ObjectStore,
    job_id: &str,
    inputs: &[Input],
    params: &mut serde_json::Value,
) -> Result<()> {
    // A name of this submission's own: a later submission under the same id (which the
    // server drops as a duplicate while this one waits) must not replace the files this one
    // names, which it would then fail to read by their digests.
    let submission = kiln_proto::new_job_id();
    for input in inputs {
        let mut reference = match &input.source {
            Source::File(path) => {
                let name = format!("inputs/{job_id}/{submission}/{}", input.key);
                let descriptor = put_file(bucket, &name, path).await?;
                let mut reference = ObjectRef::new(descriptor.name);
                reference.sha256 = Some(descriptor.sha256);
                reference
            }
            Source::Object(name) => ObjectRef::new(name.clone()),
        };
        reference.tensor = input.entry.clone();
        params[&input.key] = serde_json::to_value(&reference).unwrap_or_default();
    }
    Ok(())
}

/// The output format a file name asks for, by its extension.
pub fn output_mode_for(path: &Path) -> Result<OutputMode> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("npy") => Ok(OutputMode::Npy),
        Some("safetensors") => Ok(OutputMode::Safetensors),
        Some("png") => Ok(OutputMode::Png),
        _ => Err(Error::Invalid(format!(
            "--output {}: name a .npy, .safetensors or .png file (the format follows the \
             extension)",
            path.display()
        ))),
    }
}

/// The output format named `name` (`npy`, `safetensors`, `png`; `object` means npy).
pub fn output_mode_named(name: &str) -> Result<OutputMode> {
    match name {
        "npy" | "object" => Ok(OutputMode::Npy),
        "safetensors" => Ok(OutputMode::Safetensors),
        "png" => Ok(OutputMode::Png),
        other => Err(Error::Invalid(format!(
            "--output-format {other:?}: use npy, safetensors or png"
        ))),
    }
}

/// The object a result's `output.object` names; an error when the job has no stored output.
pub fn stored_output(event: &kiln_proto::ResultEvent) -> Result<ObjectDescriptor> {
    let Some(object) = event.output.get("object") else {
        return Err(Error::Data(format!(
            "job {} has no stored output (its result has no output.object){}",
            event.id,
            match &event.error {
                Some(e) => format!(": it failed ({}: {})", e.kind, e.message),
                None => String::new(),
            }
        )));
    };
    serde_json::from_value(object.clone()).map_err(|e| Error::Nats {
        what: format!("job {}'s output.object does not parse", event.id),
        source: Box::new(e),
    })
}

/// Write the object a result's `output.object` names to the file at `path`; returns its
/// descriptor and size. Refused when the job has no stored output, or the object was
/// replaced since.
pub async fn save_output(
    js: &jetstream::Context,
    event: &kiln_proto::ResultEvent,
    path: &Path,
) -> Result<(ObjectDescriptor, u64)> {
    let descriptor = stored_output(event)?;
    let bucket = bucket(js).await?;
    let size = get_file(&bucket, &descriptor.name, path, Some(&descriptor.sha256)).await?;
    Ok((descriptor, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_name_files_objects_and_entries() {
        let file = Input::parse("a=@m.safetensors#w").unwrap();
        assert_eq!(file.key, "a");
        assert_eq!(file.source, Source::File("m.safetensors".into()));
        assert_eq!(file.entry.as_deref(), Some("w"));
        let object = Input::parse("image=photos/cat.jpg").unwrap();
        assert_eq!(object.source, Source::Object("photos/cat.jpg".into()));
        assert_eq!(object.entry, None);
        for bad in ["a", "=@x", "a=@", "a="] {
            assert!(Input::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_files_pick_their_format() {
        assert_eq!(
            output_mode_for(Path::new("c.npy")).unwrap(),
            OutputMode::Npy
        );
        assert_eq!(
            output_mode_for(Path::new("E.PNG")).unwrap(),
            OutputMode::Png
        );
        assert!(output_mode_for(Path::new("c.txt")).is_err());
    }
}
