//! The `KILN_DATA` object store: files stored for jobs to name as `{"object": NAME}`, and the
//! outputs jobs stored, fetched into files.

use std::path::{Path, PathBuf};

use async_nats::jetstream;
use kiln_data::store::Bucket;
use kiln_proto::{ObjectDescriptor, ObjectRef, OutputMode};

use crate::error::{Error, Result, io};

mod files;
mod local;
mod transfer;

use files::WHOLE_FILE_PARAMS;
pub use files::{Reads, file_problem};
use local::write_bytes;
pub use local::{get_file, partial_of, partial_path};
use transfer::Counting;
pub use transfer::{OnBytes, Stop};

/// The `KILN_DATA` bucket.
pub async fn bucket(js: &jetstream::Context) -> Result<Bucket> {
    kiln_data::store::open(js)
        .await
        .map_err(|e| Error::Data(e.to_string()))
}

/// Store the file at `path` as object `name`, telling `on_bytes` as it goes; once `stop` is
/// set, the put fails and removes what it stored. Its description records the file's name,
/// which a worker's messages about the object then give.
pub async fn put_file(
    bucket: &Bucket,
    name: &str,
    path: &Path,
    on_bytes: OnBytes<'_>,
    stop: Stop<'_>,
) -> Result<ObjectDescriptor> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io(|| format!("opening {}", path.display())))?;
    let mut file = Counting::new(file, on_bytes).stopping(stop);
    let file_name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    kiln_data::store::put_file_reader(bucket, name, &mut file, &file_name)
        .await
        .map_err(|e| {
            // A name of a thousand characters is not echoed whole (the error names its size).
            let name = kiln_proto::cut(name, 80);
            Error::Data(format!("storing {} as {name:?}: {e}", path.display()))
        })
}

/// Write object `name` to `writer`, telling `on_bytes` as it goes; returns its size. With
/// `expected`, the object's bytes must have that SHA-256 (the digest a result event recorded
/// when the job stored it): an object replaced since is refused before a byte is written.
pub async fn get_to_writer(
    bucket: &Bucket,
    name: &str,
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    expected: Option<&str>,
    on_bytes: OnBytes<'_>,
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
    let got = kiln_data::store::get_to_writer(bucket, name, &mut Counting::new(writer, on_bytes))
        .await
        .map_err(|e| Error::Data(format!("fetching {name:?}: {e}")))?;
    Ok(got.size)
}

/// An object that is not the one a result named.
pub(super) fn replaced(name: &str, got: &str, want: &str) -> Error {
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
    /// Parse `KEY=@FILE[#ENTRY]` or `KEY=NAME[#ENTRY]` (a file that exists under the whole
    /// name after `@`, `#` and all, is that file).
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
        // `#` starts an entry name, except in the name of a file that exists as written.
        let whole_file = value
            .strip_prefix('@')
            .is_some_and(|path| Path::new(path).is_file());
        let (value, entry) = match value.rsplit_once('#') {
            Some((value, entry)) if !entry.is_empty() && !whole_file => {
                (value, Some(entry.to_owned()))
            }
            Some(_) if !whole_file => {
                return invalid(format!(
                    "--input {key}={value}: no entry name after #: write KEY=@FILE#ENTRY \
                     (or KEY=OBJECT#ENTRY) for one safetensors entry, or leave out the #"
                ));
            }
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

    /// Refuse a file no job could read ([`file_problem`]) before anything is stored or sent;
    /// an object already stored is the worker's to read.
    pub fn check_file(&self) -> Result<()> {
        let Source::File(path) = &self.source else {
            return Ok(());
        };
        let reads = match WHOLE_FILE_PARAMS.contains(&self.key.as_str()) {
            true => Reads::Any,
            false => Reads::Tensor,
        };
        let problem = file_problem(path, self.entry.as_deref(), reads).map_err(|e| match e {
            Error::Io { what, source } => Error::Io {
                what: format!("--input {}: {what}", self.key),
                source,
            },
            e => e,
        })?;
        match problem {
            Some(problem) => Err(Error::Invalid(format!("--input {}: {problem}", self.key))),
            None => Ok(()),
        }
    }
}

/// Store the files `--input` names (as `inputs/<job id>/<submission>/<key>`, telling
/// `on_bytes` as they go) and set each parameter to its object reference, with the digest the
/// worker checks. Each name stored goes into `stored` as soon as it is, for [`remove_inputs`]
/// when no job will read them (also when this future is dropped part-way). When one cannot
/// be stored (or `stop` is set), those stored before it are removed: no job will read them
/// either.
pub async fn attach_inputs(
    bucket: &Bucket,
    job_id: &str,
    inputs: &[Input],
    params: &mut serde_json::Value,
    on_bytes: OnBytes<'_>,
    stop: Stop<'_>,
    stored: &mut Vec<String>,
) -> Result<()> {
    // A name of this submission's own: a later submission under the same id (which the
    // server drops as a duplicate while this one waits) must not replace the files this one
    // names, which it would then fail to read by their digests.
    let submission = kiln_proto::new_job_id();
    for input in inputs {
        let mut reference = match &input.source {
            Source::File(path) => {
                let name = format!("inputs/{job_id}/{submission}/{}", input.key);
                let descriptor = match put_file(bucket, &name, path, on_bytes, stop).await {
                    Ok(descriptor) => descriptor,
                    Err(e) => {
                        remove_inputs(bucket, stored).await;
                        stored.clear();
                        return Err(e);
                    }
                };
                stored.push(name);
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

/// Remove input objects `names` that [`attach_inputs`] stored for jobs the server did not
/// take (dropped as duplicates, or refused): left, they would fill `KILN_DATA` for its
/// whole maximum age, again at every retry. Best effort: one that cannot be removed is
/// logged and left to age out.
pub async fn remove_inputs(bucket: &Bucket, names: &[String]) {
    for name in names {
        if let Err(e) = kiln_data::store::remove(bucket, name).await {
            tracing::warn!(object = %name, error = %e, "could not remove an input no job will read; it ages out of KILN_DATA");
        }
    }
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

/// Refuse an output file that is a folder, or whose folder does not exist: said before the job
/// runs, not once its output is ready to write. `-` (standard output) passes.
pub fn check_output_folder(path: &Path) -> Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let why = if path.is_dir() {
        format!("{} is a folder; name a file", path.display())
    } else if folder.is_dir() {
        return Ok(());
    } else if folder.exists() {
        format!("{} is not a folder", folder.display())
    } else {
        format!(
            "folder {} does not exist; create it, or name a file in a folder that does",
            folder.display()
        )
    };
    Err(Error::Invalid(format!(
        "--output {}: {why}",
        path.display()
    )))
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

/// Refuse, saying what happened and what to do, a job's output object that is no longer
/// stored: removed, or past the bucket's maximum age. (The fetch's own error said to put it
/// first, `kiln put FILE --name results/…`, which is no way to get a job's output back.)
async fn output_still_stored(bucket: &Bucket, id: &str, name: &str) -> Result<()> {
    use async_nats::jetstream::object_store::InfoErrorKind;
    let gone = match bucket.info(name).await {
        Ok(info) => info.deleted,
        Err(e) => e.kind() == InfoErrorKind::NotFound,
    };
    match gone {
        true => Err(Error::Data(format!(
            "job {id}'s output {name:?} is no longer in {}: removed (`kiln rm`), or older \
             than the bucket's maximum age (`kiln init --data-max-age`); submit the job again \
             to compute it",
            kiln_proto::BUCKET_DATA
        ))),
        false => Ok(()),
    }
}

/// Write the object a result's `output.object` names to the file at `path` (`-`: standard
/// output); returns its descriptor and the bytes written. A file whose extension names
/// another format than the stored one (`.npy`, `.safetensors`, `.png`) gets the output
/// converted to it; a model (several tensors) goes only to a `.safetensors` file. Refused when
/// the job has no stored output, or the object was replaced since.
pub async fn save_output(
    js: &jetstream::Context,
    event: &kiln_proto::ResultEvent,
    path: &Path,
    on_bytes: OnBytes<'_>,
) -> Result<SavedOutput> {
    let descriptor = stored_output(event)?;
    let bucket = bucket(js).await?;
    let (name, sha256) = (&descriptor.name, Some(descriptor.sha256.as_str()));
    output_still_stored(&bucket, &event.id, name).await?;
    let stdout = path == Path::new("-");
    let converted = conversion(event, &descriptor, path)?;
    let size = match converted {
        None if stdout => {
            let stdout = &mut tokio::io::stdout();
            get_to_writer(&bucket, name, stdout, sha256, on_bytes).await?
        }
        None => get_file(&bucket, name, path, sha256, on_bytes).await?,
        Some(mode) => {
            let mut stored = Vec::new();
            get_to_writer(&bucket, name, &mut stored, sha256, on_bytes).await?;
            let (what, format) = (descriptor.name.clone(), descriptor.format.clone());
            let entry = output_entry(&event.kind);
            // The values its descriptor (checked by digest with the bytes) says it holds: a
            // decoder never makes more, whatever the bytes claim.
            let elements = descriptor
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .unwrap_or(0);
            let bytes = tokio::task::spawn_blocking(move || {
                convert(&stored, &what, &format, elements, mode, entry)
            })
            .await
            .map_err(|e| Error::Data(format!("converting {name:?}: {e}")))??;
            write_bytes(path, &bytes).await?;
            bytes.len() as u64
        }
    };
    Ok(SavedOutput {
        descriptor,
        size,
        converted_to: converted.map(OutputMode::format),
    })
}

/// What [`save_output`] wrote.
#[derive(Debug, Clone)]
pub struct SavedOutput {
    /// The stored object.
    pub descriptor: ObjectDescriptor,
    /// Bytes written.
    pub size: u64,
    /// The format it was converted to (`npy`, `safetensors`, `png`), when not as stored.
    pub converted_to: Option<&'static str>,
}

/// Refuse, before anything is fetched, a file `event`'s output cannot become: a model as
/// anything but `.safetensors`, an output that is no image as `.png`. (Whether there is an
/// output to write at all is for the writing to say.)
pub fn check_writable(event: &kiln_proto::ResultEvent, path: &Path) -> Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    match event.output.get("object") {
        Some(_) => conversion(event, &stored_output(event)?, path).map(drop),
        None => refuse_png_of_no_image(event, output_mode_for(path)?),
    }
}

/// The result keys that hold an output's values inline, as a stored output would hold them
/// (one safetensors entry of the same name): vector_add's and matmul's `c`, conv2d's `image`,
/// mlp_predict's `probabilities`.
const INLINE_OUTPUTS: [&str; 3] = ["c", "image", "probabilities"];

/// The name a worker gives a `kind`'s output as a safetensors entry (`"output":
/// "safetensors"`), which a conversion gives it too.
fn output_entry(kind: &str) -> &'static str {
    match kind {
        "conv2d" => "image",
        "mlp_predict" => "probabilities",
        "vector_add" | "matmul" => "c",
        _ => "tensor",
    }
}

/// Write the output `event` holds inline (its values, not a summary) to `path` as the file's
/// extension asks (`.npy`, `.safetensors`, `.png` for conv2d's images; `-`, standard output,
/// gets `.npy`); `None` when the result holds no values to write.
pub async fn save_inline_output(
    event: &kiln_proto::ResultEvent,
    path: &Path,
) -> Result<Option<SavedInline>> {
    let Some((name, tensor)) = INLINE_OUTPUTS
        .iter()
        .find_map(|&key| Some((key, inline_tensor(event.output.get(key)?)?)))
    else {
        return Ok(None);
    };
    let mode = match path == Path::new("-") {
        true => OutputMode::Npy,
        false => output_mode_for(path)?,
    };
    refuse_png_of_no_image(event, mode)?;
    let shape = tensor.shape.clone();
    let bytes = encode(tensor, name, mode)
        .map_err(|e| Error::Data(format!("job {}'s output: {e}", event.id)))?;
    write_bytes(path, &bytes).await?;
    Ok(Some(SavedInline {
        size: bytes.len() as u64,
        format: mode.format(),
        shape,
    }))
}

/// What [`save_inline_output`] wrote.
#[derive(Debug, Clone)]
pub struct SavedInline {
    /// Bytes written.
    pub size: u64,
    /// The format written (`npy`, `safetensors`, `png`).
    pub format: &'static str,
    /// The tensor's shape.
    pub shape: Vec<usize>,
}

/// Nested JSON arrays of numbers (a `null`, which JSON writes for a value that is not finite,
/// is NaN) as a tensor; `None` when they are not a rectangular array of numbers.
fn inline_tensor(value: &serde_json::Value) -> Option<kiln_data::HostTensor> {
    let mut shape = Vec::new();
    let mut at = value;
    while let Some(items) = at.as_array() {
        shape.push(items.len());
        at = items.first()?;
    }
    if shape.is_empty() {
        return None;
    }
    let mut data = Vec::with_capacity(shape.iter().product());
    flatten(value, &shape, &mut data)?;
    Some(kiln_data::HostTensor::new(shape, data))
}

fn flatten(value: &serde_json::Value, shape: &[usize], data: &mut Vec<f32>) -> Option<()> {
    match (shape.split_first(), value) {
        (Some((&len, rest)), serde_json::Value::Array(items)) if items.len() == len => {
            items.iter().try_for_each(|item| flatten(item, rest, data))
        }
        (None, serde_json::Value::Number(n)) => {
            data.push(n.as_f64()? as f32);
            Some(())
        }
        (None, serde_json::Value::Null) => {
            data.push(f32::NAN);
            Some(())
        }
        _ => None,
    }
}

/// Refuse `mode` PNG for a job whose output is no image (a worker refuses `"output": "png"`
/// for them): a PNG would clamp the values to [0, 1] in 8 bits.
fn refuse_png_of_no_image(event: &kiln_proto::ResultEvent, mode: OutputMode) -> Result<()> {
    if mode != OutputMode::Png || event.kind == "conv2d" {
        return Ok(());
    }
    // A model is several tensors, which only safetensors holds.
    let files = match event.kind.as_str() {
        "train_mlp" => "a .safetensors file",
        _ => "a .npy or .safetensors file",
    };
    Err(Error::Invalid(format!(
        "job {} is a {} job, whose output is not an image: a PNG would clamp its values to \
         [0, 1] in 8 bits; write it to {files}",
        event.id, event.kind
    )))
}

/// `tensor` in the format `mode` names; as safetensors, one entry named `entry`.
fn encode(
    tensor: kiln_data::HostTensor,
    entry: &str,
    mode: OutputMode,
) -> std::result::Result<Vec<u8>, kiln_data::DataError> {
    match mode {
        OutputMode::Png => kiln_data::formats::encode_png(&tensor),
        OutputMode::Safetensors => kiln_data::formats::encode_safetensors(&kiln_data::Model {
            tensors: vec![(entry.to_owned(), tensor)],
            metadata: Default::default(),
        }),
        _ => Ok(kiln_data::formats::encode_npy(&tensor)),
    }
}

/// The format `path`'s extension asks for when it is not the stored one (`None`: write the
/// object as it is stored, also when the extension names no format kiln writes).
fn conversion(
    event: &kiln_proto::ResultEvent,
    descriptor: &ObjectDescriptor,
    path: &Path,
) -> Result<Option<OutputMode>> {
    let id = &event.id;
    let Ok(mode) = output_mode_for(path) else {
        return Ok(None);
    };
    let wanted = mode.format();
    if wanted == descriptor.format {
        return Ok(None);
    }
    refuse_png_of_no_image(event, mode)?;
    if descriptor.shape.is_empty() && descriptor.format == "safetensors" {
        return Err(Error::Invalid(format!(
            "job {id}'s output {:?} is a model (several tensors in one safetensors file), \
             which a .{wanted} file cannot hold; write it to a .safetensors file",
            descriptor.name
        )));
    }
    Ok(Some(mode))
}

/// A stored tensor output (`.npy`, one-tensor safetensors or PNG) re-encoded as `mode`, as
/// safetensors in one entry named `entry`. Values are decoded only up to `elements`, the
/// number its descriptor gives.
fn convert(
    stored: &[u8],
    name: &str,
    format: &str,
    elements: u64,
    mode: OutputMode,
    entry: &str,
) -> Result<Vec<u8>> {
    let what = format!("object {name:?}");
    let bad = |e: kiln_data::DataError| Error::Data(format!("converting {what}: {e}"));
    let tensor = match format {
        "png" => kiln_data::formats::decode_image(&what, stored, elements, u64::MAX),
        _ => kiln_data::formats::read_tensor(&what, &mut &stored[..], None, elements),
    }
    .map_err(bad)?;
    encode(tensor, entry, mode).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kiln` draws its progress bars from: every byte of a file stored and fetched is
    /// told, in more than one step for a file of several chunks.
    #[tokio::test]
    async fn transfers_tell_every_byte_as_they_go() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let server = kiln_testkit::NatsServer::start();
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        js.create_object_store(kiln_proto::Topology::default().data_bucket())
            .await
            .unwrap();
        let bucket = bucket(&js).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("big.bin");
        std::fs::write(&path, &bytes).unwrap();
        let (told, steps) = (AtomicU64::new(0), AtomicU64::new(0));
        let on_bytes = |n: u64| {
            told.fetch_add(n, Ordering::Relaxed);
            steps.fetch_add(1, Ordering::Relaxed);
        };
        let d = put_file(&bucket, "big", &path, Some(&on_bytes), None)
            .await
            .unwrap();
        assert_eq!(d.size, bytes.len() as u64);
        assert_eq!(told.load(Ordering::Relaxed), bytes.len() as u64);
        assert!(steps.load(Ordering::Relaxed) > 1);

        told.store(0, Ordering::Relaxed);
        let back = dir.path().join("back.bin");
        let size = get_file(&bucket, "big", &back, Some(&d.sha256), Some(&on_bytes))
            .await
            .unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(told.load(Ordering::Relaxed), bytes.len() as u64);
        assert_eq!(std::fs::read(&back).unwrap(), bytes);
    }

    #[test]
    fn inputs_name_files_objects_and_entries() {
        let file = Input::parse("a=@m.safetensors#w").unwrap();
        assert_eq!(file.key, "a");
        assert_eq!(file.source, Source::File("m.safetensors".into()));
        assert_eq!(file.entry.as_deref(), Some("w"));
        let object = Input::parse("image=photos/cat.jpg").unwrap();
        assert_eq!(object.source, Source::Object("photos/cat.jpg".into()));
        assert_eq!(object.entry, None);
        // A file whose name holds a `#` is that file, when it exists.
        let dir = tempfile::tempdir().unwrap();
        let hashed = dir.path().join("scan#2.npy");
        std::fs::write(&hashed, b"x").unwrap();
        let input = Input::parse(&format!("a=@{}", hashed.display())).unwrap();
        assert_eq!((input.source, input.entry), (Source::File(hashed), None));
        for bad in ["a", "=@x", "a=@", "a="] {
            assert!(Input::parse(bad).is_err(), "{bad}");
        }
        // A `#` with no entry after it, on a name that is not a file: said, not sent.
        for cut in ["a=@two.safetensors#", "a=two.safetensors#"] {
            let error = Input::parse(cut).unwrap_err().to_string();
            assert!(error.contains("no entry name after #"), "{cut}: {error}");
        }
        let trailing = dir.path().join("odd#");
        std::fs::write(&trailing, b"x").unwrap();
        let input = Input::parse(&format!("a=@{}", trailing.display())).unwrap();
        assert_eq!((input.source, input.entry), (Source::File(trailing), None));
        // A file that cannot be opened is said of its parameter.
        let missing = Input::parse("b=@/nowhere/x.npy").unwrap();
        let error = missing.check_file().unwrap_err().to_string();
        assert!(
            error.starts_with("--input b: opening /nowhere/x.npy"),
            "{error}"
        );
    }

    #[test]
    fn inline_outputs_are_rectangular_arrays_of_numbers() {
        let t = inline_tensor(&serde_json::json!([[1.0, 2.0, 3.0], [4.0, null, 6.0]])).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(&t.data[..2], &[1.0, 2.0]);
        assert!(t.data[4].is_nan());
        let image = inline_tensor(&serde_json::json!([[[0.5, 1.0]], [[0.0, 0.25]]])).unwrap();
        assert_eq!(
            (image.shape, image.data),
            (vec![2, 1, 2], vec![0.5, 1.0, 0.0, 0.25])
        );
        for not in [
            serde_json::json!([[1.0, 2.0], [3.0]]),
            serde_json::json!([]),
            serde_json::json!({"checksum": 1.0}),
            serde_json::json!([1.0, "x"]),
            serde_json::json!(3.0),
        ] {
            assert!(inline_tensor(&not).is_none(), "{not}");
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
