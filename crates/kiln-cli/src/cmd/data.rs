//! `kiln put`, `kiln get`, and the files `kiln submit --input/--output` and `kiln result
//! --output` move through the `KILN_DATA` object store.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream::{self, object_store::ObjectStore};
use kiln_proto::{ObjectDescriptor, ObjectRef, OutputMode};

use crate::cli::{GetArgs, NatsArgs, PutArgs};

/// `kiln put FILE [--name NAME]`: store the file, print the reference a job names it by.
pub async fn put(nats: &NatsArgs, args: PutArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => file_name(&args.file)?,
    };
    let js = connect(nats).await?;
    let bucket = bucket(&js).await?;
    let descriptor = put_file(&bucket, &name, &args.file).await?;
    let reference = serde_json::json!({
        "object": descriptor.name,
        "sha256": descriptor.sha256,
    });
    eprintln!(
        "stored {} ({} bytes{}) as object {:?} in {}",
        args.file.display(),
        descriptor.size,
        match descriptor.format.as_str() {
            "" => String::new(),
            format => format!(", {format}"),
        },
        descriptor.name,
        kiln_proto::BUCKET_DATA
    );
    println!("{reference}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln get NAME [-o FILE]`.
pub async fn get(nats: &NatsArgs, args: GetArgs) -> anyhow::Result<ExitCode> {
    let js = connect(nats).await?;
    let bucket = bucket(&js).await?;
    let path = match &args.output {
        Some(path) => path.clone(),
        None => PathBuf::from(args.name.rsplit('/').next().unwrap_or(&args.name)),
    };
    if bucket.info(&args.name).await.is_err() {
        eprintln!(
            "kiln: no object {:?} in {}: `kiln result <id>` names a job's output in \
             output.object.name",
            args.name,
            kiln_proto::BUCKET_DATA
        );
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    }
    let size = get_file(&bucket, &args.name, &path, None).await?;
    if path != Path::new("-") {
        eprintln!("wrote {} ({size} bytes)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(nats: &NatsArgs) -> anyhow::Result<jetstream::Context> {
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client);
    kiln_proto::streams::ensure_all(&js, &super::topology(nats)).await?;
    Ok(js)
}

/// The `KILN_DATA` bucket.
pub async fn bucket(js: &jetstream::Context) -> anyhow::Result<ObjectStore> {
    kiln_data::store::open(js)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Store the file at `path` as object `name`.
pub async fn put_file(
    bucket: &ObjectStore,
    name: &str,
    path: &Path,
) -> anyhow::Result<ObjectDescriptor> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    kiln_data::store::put_reader(bucket, name, &mut file)
        .await
        .map_err(|e| anyhow::anyhow!("storing {} as {name:?}: {e}", path.display()))
}

/// Write object `name` to `path` (`-`: standard output); returns its size. With `expected`,
/// the object's bytes must have that SHA-256 (the digest a result event recorded when the job
/// stored it): an object replaced since is refused, not written.
pub async fn get_file(
    bucket: &ObjectStore,
    name: &str,
    path: &Path,
    expected: Option<&str>,
) -> anyhow::Result<u64> {
    let replaced = |got: &str, want: &str| {
        anyhow::anyhow!(
            "object {name:?} is not the one the job stored: its SHA-256 is {got}, the result \
             names {want} (it was replaced since; run the job again)"
        )
    };
    if path == Path::new("-") {
        // Checked before a byte is written: the object's own digest is read first.
        if let Some(want) = expected {
            let info = bucket
                .info(name)
                .await
                .map_err(|e| anyhow::anyhow!("fetching {name:?}: {e}"))?;
            let got = info
                .digest
                .as_deref()
                .and_then(kiln_data::store::sha256_hex)
                .unwrap_or_default();
            anyhow::ensure!(got == want, replaced(&got, want));
        }
        let mut out = tokio::io::stdout();
        let got = kiln_data::store::get_to_writer(bucket, name, &mut out)
            .await
            .map_err(|e| anyhow::anyhow!("fetching {name:?}: {e}"))?;
        return Ok(got.size);
    }
    // Into a file beside the target, renamed when complete: an interrupted fetch leaves no
    // half file under the name asked for.
    let partial = path.with_extension("part");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let got = kiln_data::store::get_to_writer(bucket, name, &mut file)
        .await
        .map_err(|e| anyhow::anyhow!("fetching {name:?}: {e}"));
    let got = match got {
        Ok(got) => got,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    drop(file);
    if let Some(want) = expected
        && got.sha256 != want
    {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(replaced(&got.sha256, want));
    }
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(got.size)
}

/// One `--input KEY=@FILE[#ENTRY]` or `--input KEY=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputArg {
    pub key: String,
    /// A file to store first, or the name of an object already stored.
    pub source: Source,
    /// The entry of a safetensors file.
    pub entry: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Object(String),
}

impl InputArg {
    pub fn parse(arg: &str) -> anyhow::Result<Self> {
        let (key, value) = arg
            .split_once('=')
            .with_context(|| format!("--input {arg:?}: write KEY=@FILE or KEY=OBJECT-NAME"))?;
        let key = key.trim();
        anyhow::ensure!(
            !key.is_empty(),
            "--input {arg:?}: the parameter name is missing"
        );
        let (value, entry) = match value.rsplit_once('#') {
            Some((value, entry)) if !entry.is_empty() => (value, Some(entry.to_owned())),
            _ => (value, None),
        };
        let source = match value.strip_prefix('@') {
            Some("") => anyhow::bail!("--input {key}=@: name a file after @"),
            Some(path) => Source::File(PathBuf::from(path)),
            None if value.is_empty() => anyhow::bail!("--input {key}=: name a file or object"),
            None => Source::Object(value.to_owned()),
        };
        Ok(Self {
            key: key.to_owned(),
            source,
            entry,
        })
    }
}

/// Store the files `--input` names (as `inputs/<job id>/<key>`) and set each parameter to its
/// object reference, with the digest the worker checks.
pub async fn attach_inputs(
    bucket: &ObjectStore,
    job_id: &str,
    inputs: &[InputArg],
    params: &mut serde_json::Value,
) -> anyhow::Result<()> {
    for input in inputs {
        let mut reference = match &input.source {
            Source::File(path) => {
                let name = format!("inputs/{job_id}/{}", input.key);
                let descriptor = put_file(bucket, &name, path).await?;
                let mut reference = ObjectRef::new(descriptor.name);
                reference.sha256 = Some(descriptor.sha256);
                reference
            }
            Source::Object(name) => ObjectRef::new(name.clone()),
        };
        reference.tensor = input.entry.clone();
        params[&input.key] = serde_json::to_value(&reference)?;
    }
    Ok(())
}

/// The output format a file name asks for, by its extension.
pub fn output_mode_for(path: &Path) -> anyhow::Result<OutputMode> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("npy") => Ok(OutputMode::Npy),
        Some("safetensors") => Ok(OutputMode::Safetensors),
        Some("png") => Ok(OutputMode::Png),
        _ => anyhow::bail!(
            "--output {}: name a .npy, .safetensors or .png file (the format follows the \
             extension)",
            path.display()
        ),
    }
}

/// `--output-format`'s value.
pub fn output_mode_named(name: &str) -> anyhow::Result<OutputMode> {
    match name {
        "npy" | "object" => Ok(OutputMode::Npy),
        "safetensors" => Ok(OutputMode::Safetensors),
        "png" => Ok(OutputMode::Png),
        other => anyhow::bail!("--output-format {other:?}: use npy, safetensors or png"),
    }
}

/// Write the object a result's `output.object` names to `path`.
pub async fn save_output(
    js: &jetstream::Context,
    event: &kiln_proto::ResultEvent,
    path: &Path,
) -> anyhow::Result<()> {
    let object = event.output.get("object").with_context(|| {
        format!(
            "job {} has no stored output (its result has no output.object){}",
            event.id,
            match &event.error {
                Some(e) => format!(": it failed ({}: {})", e.kind, e.message),
                None => String::new(),
            }
        )
    })?;
    let descriptor: ObjectDescriptor = serde_json::from_value(object.clone())
        .with_context(|| format!("job {}'s output.object does not parse", event.id))?;
    let bucket = bucket(js).await?;
    let size = get_file(&bucket, &descriptor.name, path, Some(&descriptor.sha256)).await?;
    eprintln!(
        "wrote {} ({size} bytes, {} {:?})",
        path.display(),
        descriptor.format,
        descriptor.shape
    );
    Ok(())
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: give --name for this file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_name_files_objects_and_entries() {
        let file = InputArg::parse("a=@m.safetensors#w").unwrap();
        assert_eq!(file.key, "a");
        assert_eq!(file.source, Source::File("m.safetensors".into()));
        assert_eq!(file.entry.as_deref(), Some("w"));
        let object = InputArg::parse("image=photos/cat.jpg").unwrap();
        assert_eq!(object.source, Source::Object("photos/cat.jpg".into()));
        assert_eq!(object.entry, None);
        for bad in ["a", "=@x", "a=@", "a="] {
            assert!(InputArg::parse(bad).is_err(), "{bad}");
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
