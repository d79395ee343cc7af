//! `kiln put`, `kiln get`, and what `kiln submit --output` and `kiln result --output` say
//! when they write a job's stored output.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use kiln_client::data::{bucket, get_file, get_to_writer, put_file};

use super::submit::BytesBar;
use crate::cli::{GetArgs, NatsArgs, PutArgs};

/// `kiln put FILE [--name NAME]`: store the file, print the reference a job names it by.
pub async fn put(nats: &NatsArgs, args: PutArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => file_name(&args.file)?,
    };
    // Stored all the same (an object may be for something else than a job), with a note.
    let problem = kiln_client::data::file_problem(&args.file, None, kiln_client::data::Reads::Any)?;
    let js = connect(nats).await?;
    let bucket = bucket(&js).await?;
    let metadata = std::fs::metadata(&args.file).ok();
    let bar = BytesBar::new(metadata.as_ref().map_or(0, |m| m.len()), "storing");
    let stop = AtomicBool::new(false);
    let putting = put_file(&bucket, &name, &args.file, bar.on_bytes(), Some(&stop));
    let descriptor = match upload_or_interrupted(&stop, putting).await {
        Ok(put) => put?,
        Err(put) => {
            drop(bar);
            let file = args.file.display();
            // A pipe's writer (`<(…)`) dies of the same Ctrl-C: what it read before may be
            // cut short, and is not kept as if it were whole.
            let regular = metadata.is_some_and(|m| m.is_file());
            match put {
                Some(Ok(d)) if regular => eprintln!(
                    "kiln: interrupted, but {file} was stored all the same, as object {:?} \
                     (`kiln rm` removes it)",
                    d.name
                ),
                Some(Ok(d)) => {
                    let _ = kiln_data::store::remove(&bucket, &d.name).await;
                    eprintln!(
                        "kiln: interrupted; {file} was not stored (what was read of it may \
                         have been cut short)"
                    );
                }
                Some(Err(_)) => eprintln!("kiln: interrupted; {file} was not stored"),
                None => eprintln!("kiln: interrupted; {}", not_removed(&file.to_string())),
            }
            std::process::exit(130);
        }
    };
    drop(bar);
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
    if let Some(problem) = problem {
        eprintln!("note: no job can read it as it is: {problem}");
    }
    if let Some((object, entry)) = descriptor.name.rsplit_once('#')
        && !entry.is_empty()
    {
        eprintln!(
            "note: `--input KEY={}` reads as entry {entry:?} of object {object:?}; name this \
             object with -p 'KEY={reference}'",
            descriptor.name
        );
    }
    println!("{reference}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln get NAME [-o FILE]`.
pub async fn get(nats: &NatsArgs, args: GetArgs) -> anyhow::Result<ExitCode> {
    let js = connect(nats).await?;
    let bucket = bucket(&js).await?;
    // A removed object keeps an info, marked deleted. One that does not parse (another
    // client's) is said to be so: it was reported as no object.
    let Some(size) = kiln_data::store::stored_size(&bucket, &args.name).await? else {
        eprintln!(
            "kiln: no object {:?} in {}: `kiln result <id>` names a job's output in \
             output.object.name",
            args.name,
            kiln_proto::BUCKET_DATA
        );
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    };
    // Into a folder (`-o out/`, `-o .`, or by default the current one) as `cp` writes: under
    // the object's last name there.
    let path = match &args.output {
        Some(path) if !is_folder(path) => path.clone(),
        folder => match args.name.rsplit('/').next() {
            Some(base) if !matches!(base, "" | "." | "..") => {
                folder.clone().unwrap_or_default().join(base)
            }
            // `dir/`, `.`, `..`: no file of that name can be written.
            _ => {
                eprintln!(
                    "kiln: object {:?} ends in no file name to write it to: give one with -o \
                     FILE (or -o - for standard output)",
                    args.name
                );
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let bar = BytesBar::new(size, "fetching");
    if path == Path::new("-") {
        let stdout = &mut tokio::io::stdout();
        get_to_writer(&bucket, &args.name, stdout, None, bar.on_bytes()).await?;
    } else {
        let fetch = get_file(&bucket, &args.name, &path, None, bar.on_bytes());
        let size = or_interrupted(&path, "", fetch).await?;
        drop(bar);
        eprintln!("wrote {} ({size} bytes)", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `kiln get -o PATH` names a folder to write into: one that is there, or a path
/// ending in `/` (`-` is standard output, whatever is there).
fn is_folder(path: &Path) -> bool {
    path != Path::new("-") && (path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/'))
}

/// How long an interrupted upload may take to remove what it stored before the process ends
/// all the same (a read from a pipe may never return).
pub(crate) const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Run `upload`, a transfer into `KILN_DATA` that watches `stop`. A SIGINT or SIGTERM on the
/// way sets `stop`, so that the upload fails at its next read and removes what it stored:
/// then `Err` with what the upload came to, or `None` when it did not end within
/// [`STOP_WITHIN`]. The caller says so and ends the process with status 130; a second signal
/// meanwhile ends it at once.
pub(crate) async fn upload_or_interrupted<T>(
    stop: &AtomicBool,
    upload: impl Future<Output = T>,
) -> Result<T, Option<T>> {
    let mut upload = std::pin::pin!(upload);
    tokio::select! {
        done = &mut upload => Ok(done),
        () = crate::signal::wait_for_signal() => {
            stop.store(true, Ordering::Relaxed);
            eprintln!("kiln: interrupted; removing what was stored of the upload (again to exit now)");
            let again = crate::signal::wait_for_signal();
            tokio::select! {
                ended = tokio::time::timeout(STOP_WITHIN, upload) => Err(ended.ok()),
                () = again => {
                    eprintln!(
                        "kiln: second signal, exiting now; what was sent ages out of {} with \
                         --data-max-age",
                        kiln_proto::BUCKET_DATA
                    );
                    std::process::exit(130);
                }
            }
        }
    }
}

/// What an interrupted upload of `file` whose put did not end left.
pub(crate) fn not_removed(file: &str) -> String {
    format!(
        "{file} was not stored, and what was sent of it could not be removed within \
         {STOP_WITHIN:?}: it ages out of {} with --data-max-age",
        kiln_proto::BUCKET_DATA
    )
}

/// Run `fetch`, which writes `path` by way of its `.part` file; a SIGINT or SIGTERM on the
/// way removes the partial file and ends the process with status 130, as an interrupted Unix
/// tool does, saying `later` (how to write it another time) after that it was not written.
async fn or_interrupted<T>(path: &Path, later: &str, fetch: impl Future<Output = T>) -> T {
    tokio::select! {
        done = fetch => done,
        () = crate::signal::wait_for_signal() => {
            let partial = (path != Path::new("-")).then(|| kiln_client::data::partial_of(path));
            match partial {
                Some(Some(partial)) => {
                    let _ = std::fs::remove_file(partial);
                    eprintln!("kiln: interrupted; {} was not written{later}", path.display());
                }
                // Written in place (a device, a pipe, through a link; or standard output).
                _ => eprintln!(
                    "kiln: interrupted; {} got only part of it{later}",
                    path.display()
                ),
            }
            std::process::exit(130);
        }
    }
}

pub(super) async fn connect(nats: &NatsArgs) -> anyhow::Result<jetstream::Context> {
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    let js = jetstream::new(client);
    kiln_proto::streams::ensure_all(&js, &super::topology(nats)).await?;
    Ok(js)
}

/// Write the object a result's `output.object` names to `path` (converted to the format its
/// extension names), and say so on stderr. `retry` adds that `kiln result` can write it later
/// (for `kiln submit --output`, not for `kiln result` itself).
pub async fn save_output(
    js: &jetstream::Context,
    event: &kiln_proto::ResultEvent,
    path: &Path,
    retry: bool,
) -> anyhow::Result<()> {
    let size = kiln_client::data::stored_output(event).map_or(0, |d| d.size);
    let bar = BytesBar::new(size, "fetching");
    let saving = kiln_client::data::save_output(js, event, path, bar.on_bytes());
    let later = match retry {
        true => format!("; `kiln result {} --output FILE` writes it", event.id),
        false => String::new(),
    };
    let saved = or_interrupted(path, &later, saving)
        .await
        .with_context(|| {
            format!(
                "job {} has its result, but its output was not written to {}{later}",
                event.id,
                path.display(),
            )
        })?;
    drop(bar);
    let d = &saved.descriptor;
    let format = match saved.converted_to {
        Some(to) => format!("{to}, converted from the stored {}", d.format),
        None => d.format.clone(),
    };
    // A model's descriptor has no shape (it is several tensors).
    let what = match d.shape.is_empty() {
        true => "model".to_owned(),
        false => format!("{:?}", d.shape),
    };
    eprintln!(
        "wrote {} ({} bytes, {format} {what})",
        path.display(),
        saved.size,
    );
    Ok(())
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    // A pipe's or a device's name (`63` for `<(…)`, `stdin`) is no name for what it holds:
    // two such puts replaced each other's object without a word.
    // (A folder is said to be one by the file checks that follow.)
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        anyhow::bail!(
            "{} is not a regular file, and its name is not one for an object: give one with \
             --name NAME",
            path.display()
        );
    }
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: give --name for this file", path.display()))
}
