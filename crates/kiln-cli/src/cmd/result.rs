//! `kiln result <id>`: find a job's result event in KILN_RESULTS.

use std::path::Path;
use std::process::ExitCode;

use async_nats::jetstream;
use kiln_client::jobs::{check_job_id, find_result as find};

use super::{EXIT_NOT_FOUND, NotFound};
use crate::cli::{Format, NatsArgs, ResultArgs, ResultOutput};

pub async fn run(nats: &NatsArgs, args: ResultArgs) -> anyhow::Result<ExitCode> {
    let json = matches!(args.output, Some(ResultOutput::Format(Format::Json)));
    // Not found: said on stderr, and with -o json as a JSON object too.
    let not_found = |state: &'static str, message: String| -> anyhow::Result<ExitCode> {
        eprintln!("{message}");
        if json {
            let message = message.trim_start_matches("kiln: ").to_owned();
            super::print_json(&NotFound {
                id: &args.id,
                state,
                message,
            })?;
        }
        Ok(ExitCode::from(EXIT_NOT_FOUND))
    };
    if let Err(message) = check_job_id(&args.id) {
        return not_found("invalid", format!("kiln: {message}"));
    }
    let kind = match args.kind.as_deref() {
        Some(name) => match kiln_kernels::find(name) {
            Some(entry) => Some(entry.name),
            // Where workers answer jobs of a kind they do not run (`results.unknown.<id>`).
            None if name == "unknown" => Some("unknown"),
            None => {
                let message = format!(
                    "kiln: unknown job kind {name:?} for --kind; known kinds: {}, and unknown \
                     (jobs of a kind no worker ran)",
                    kiln_kernels::kind_names().join(", ")
                );
                return not_found("unknown_kind", message);
            }
        },
        None => None,
    };
    // The formats `kiln submit --output` writes, refused as it refuses them: before looking
    // for the job, not after writing bytes that a .jpg or .txt name would misdescribe.
    if let Some(ResultOutput::File(path)) = &args.output
        && path != Path::new("-")
    {
        kiln_client::data::output_mode_for(path)?;
    }
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    let js = jetstream::new(client);
    if let Some(event) = find(&js, &args.id, kind).await? {
        // A file the output cannot become (a model as .npy, a matrix as .png) is refused
        // before the event is printed: it says what to write instead, and nothing else.
        if let Some(ResultOutput::File(path)) = &args.output {
            kiln_client::data::check_writable(&event, path)?;
        }
        // The text form is the event's JSON as well; on stderr when the output goes to stdout.
        let event_json = serde_json::to_string_pretty(&event)?;
        match &args.output {
            Some(ResultOutput::File(path)) if path.as_os_str() == "-" => eprintln!("{event_json}"),
            _ => println!("{event_json}"),
        }
        if let Some(ResultOutput::File(path)) = &args.output {
            write_output(&js, &event, path).await?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // --kind only narrows the search: say so when the job's result is of another kind.
    let other = match kind {
        Some(_) => find(&js, &args.id, None).await?,
        None => None,
    };
    let message = match (kind, other) {
        (Some(kind), Some(other)) => format!(
            "no {kind} result for job {:?}: its result is {} {} result (`kiln result {}` \
             prints it)",
            args.id,
            article(&other.kind),
            other.kind,
            args.id
        ),
        _ => no_result(&js, &args.id).await,
    };
    not_found("no_result", message)
}

/// "an" before a vowel (`unknown`, the answer to a kind no worker knew), else "a".
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Why job `id` has no result, from where `kiln status` finds it.
async fn no_result(js: &jetstream::Context, id: &str) -> String {
    use kiln_client::jobs::Place;
    let why = match kiln_client::jobs::locate(js, id).await {
        Ok(Place::Running { kind, worker, .. }) => {
            format!("it is running ({kind}) on worker {worker}")
        }
        Ok(Place::Queued { .. }) => "it is queued".to_owned(),
        Ok(Place::CancelRequested { .. }) => {
            "it is marked cancelled and not answered yet".to_owned()
        }
        Ok(Place::Gone { reason, .. }) => reason,
        // Answered since the first look: `kiln result` again prints it.
        Ok(Place::Finished { .. }) => "its result was stored a moment ago: ask again".to_owned(),
        Ok(Place::Unknown) => "kiln has no record of it (a job published without `kiln \
                               submit` has none: it may still be queued), and no live worker \
                               holds it"
            .to_owned(),
        Err(_) => "it is queued, running, or older than the results stream keeps".to_owned(),
    };
    format!("no result for job {id:?}: {why}")
}

/// Write `event`'s output to `path`: the object its result names, or the values it holds
/// inline; an error saying why and what to do when it has neither.
async fn write_output(
    js: &jetstream::Context,
    event: &kiln_proto::ResultEvent,
    path: &Path,
) -> anyhow::Result<()> {
    if event.output.get("object").is_some() {
        return super::data::save_output(js, event, path, false).await;
    }
    if let Some(saved) = kiln_client::data::save_inline_output(event, path).await? {
        let to = match path == Path::new("-") {
            true => "standard output".to_owned(),
            false => path.display().to_string(),
        };
        eprintln!(
            "wrote {to} ({} bytes, {} {:?}, from the values inline in the result)",
            saved.size, saved.format, saved.shape
        );
        return Ok(());
    }
    let (id, path) = (&event.id, path.display());
    anyhow::bail!(match &event.error {
        Some(e) => format!(
            "job {id} failed ({}: {}), so it has no output to write to {path}: submit it again \
             once the cause is fixed",
            e.kind, e.message
        ),
        // A train_mlp job's object is its model, which only a .safetensors file holds.
        None => format!(
            "job {id} has no output object to write to {path}: its output is inline in its \
             result (the values, or a summary for generated inputs), which `kiln result {id}` \
             prints; for a file, submit the job again with --output-format {} (or \"output\": \
             \"object\" in its JSON){}",
            match event.kind.as_str() {
                "train_mlp" => "safetensors",
                _ => "npy",
            },
            match event.kind.as_str() {
                "train_mlp" => " and name a .safetensors file: its object is the trained model",
                _ => "",
            }
        ),
    })
}
