//! `kiln result <id>`: find a job's result event in KILN_RESULTS.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use kiln_proto::streams::STREAM_RESULTS;
use kiln_proto::{JobState, ResultEvent, subject};

use super::EXIT_NOT_FOUND;
use crate::cli::{NatsArgs, ResultArgs};

pub async fn run(nats: &NatsArgs, args: ResultArgs) -> anyhow::Result<ExitCode> {
    if let Err(message) = super::check_job_id(&args.id) {
        eprintln!("kiln: {message}");
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    let kind = match args.kind.as_deref() {
        Some(name) => match kiln_kernels::find(name) {
            Some(entry) => Some(entry.name),
            None => {
                eprintln!(
                    "kiln: unknown job kind {name:?} for --kind; known kinds: {}",
                    kiln_kernels::kind_names().join(", ")
                );
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            }
        },
        None => None,
    };
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client);
    if let Some(event) = find(&js, &args.id, kind).await? {
        println!("{}", serde_json::to_string_pretty(&event)?);
        if let Some(path) = &args.output {
            super::data::save_output(&js, &event, path).await?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // --kind only narrows the search: say so when the job's result is of another kind.
    let other = match kind {
        Some(_) => find(&js, &args.id, None).await?,
        None => None,
    };
    match (kind, other) {
        (Some(kind), Some(other)) => eprintln!(
            "no {kind} result for job {:?}: its result is a {} result (`kiln result {}` \
             prints it)",
            args.id, other.kind, args.id
        ),
        _ => eprintln!(
            "no result for job {:?} yet: it is queued, running, or older than the results \
             stream keeps",
            args.id
        ),
    }
    Ok(ExitCode::from(EXIT_NOT_FOUND))
}

/// The job's state in `KILN_STATE`, if kiln recorded one (`kiln submit` records `queued`).
pub async fn state(js: &jetstream::Context, id: &str) -> Option<JobState> {
    let store = js.get_key_value(kiln_proto::BUCKET_STATE).await.ok()?;
    let value = store.get(kiln_proto::job_key(id)).await.ok()??;
    serde_json::from_slice(&value).ok()
}

/// Job `id`'s latest result (of `kind`, when given): one lookup of the last message on its
/// result subjects (`results.<kind>.<id>`, and `results.<kind>.<id>.replay-<n>` after
/// replays from the dead-letter queue, which come later and win).
pub async fn find(
    js: &jetstream::Context,
    id: &str,
    kind: Option<&str>,
) -> anyhow::Result<Option<ResultEvent>> {
    if !kiln_proto::valid_job_id(id) {
        return Ok(None);
    }
    let stream = js
        .get_stream(STREAM_RESULTS)
        .await
        .context("kiln's streams do not exist yet on this server; run `kiln init`")?;
    let kind = kind.unwrap_or("*");
    for subject in [
        format!("{}.>", subject::result(kind, id)),
        subject::result(kind, id),
    ] {
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let event = serde_json::from_slice::<ResultEvent>(&message.payload)
                    .with_context(|| format!("the result stored on {subject} does not parse"))?;
                return Ok(Some(event));
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("looking up the result on {subject}"));
            }
        }
    }
    Ok(None)
}

/// The results that jobs `ids` already have (for resubmissions the server dropped as
/// duplicates), each found by its subject.
pub async fn existing(
    js: &jetstream::Context,
    ids: &[String],
    kind: Option<&str>,
) -> anyhow::Result<HashMap<String, ResultEvent>> {
    let found: Vec<anyhow::Result<Option<ResultEvent>>> = futures::stream::iter(ids)
        .map(|id| find(js, id, kind))
        .buffered(64)
        .collect()
        .await;
    let mut results = HashMap::new();
    for (id, event) in ids.iter().zip(found) {
        if let Some(event) = event? {
            results.insert(id.clone(), event);
        }
    }
    Ok(results)
}
