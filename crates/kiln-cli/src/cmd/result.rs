//! `kiln result <id>`: find a job's result event in KILN_RESULTS.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use kiln_proto::streams::STREAM_RESULTS;
use kiln_proto::{ResultEvent, subject};

use crate::cli::{NatsArgs, ResultArgs};

pub async fn run(nats: &NatsArgs, args: ResultArgs) -> anyhow::Result<ExitCode> {
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client);
    match find(&js, &args.id, args.kind.as_deref()).await? {
        Some(event) => {
            println!("{}", serde_json::to_string_pretty(&event)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "no result for job {:?} yet: it is queued, running, or older than the results stream keeps",
                args.id
            );
            Ok(ExitCode::from(2))
        }
    }
}

/// The job's state in `KILN_STATE`, if kiln recorded one.
pub async fn state(js: &jetstream::Context, id: &str) -> Option<kiln_proto::JobState> {
    let store = js.get_key_value(kiln_proto::BUCKET_STATE).await.ok()?;
    let value = store.get(kiln_proto::job_key(id)).await.ok()??;
    serde_json::from_slice(&value).ok()
}

/// Job `id`'s latest result: one lookup when the aggregator recorded its final state in
/// `KILN_STATE`, else a scan of the results stream (jobs published before the state
/// existed, or while no aggregator runs).
pub async fn find(
    js: &jetstream::Context,
    id: &str,
    kind: Option<&str>,
) -> anyhow::Result<Option<ResultEvent>> {
    if let Some(seq) = state(js, id).await.and_then(|s| s.result_seq)
        && let Ok(stream) = js.get_stream(STREAM_RESULTS).await
        && let Ok(message) = stream.get_raw_message(seq).await
        && let Ok(event) = serde_json::from_slice::<ResultEvent>(&message.payload)
        && event.id == id
    {
        return Ok(Some(event));
    }
    scan(js, id, kind).await
}

/// Scan the results stream (subject filter given by `kind`) for job `id`'s latest result.
/// The scan reads the stream once; results carry the job id only in their body.
async fn scan(
    js: &jetstream::Context,
    id: &str,
    kind: Option<&str>,
) -> anyhow::Result<Option<ResultEvent>> {
    let stream = js
        .get_stream(STREAM_RESULTS)
        .await
        .context("kiln's streams do not exist yet on this server; run `kiln init`")?;
    let filter = kind.map_or_else(|| "results.>".to_owned(), subject::result);
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("creating a reader on the results stream")?;
    let pending = consumer.info().await?.num_pending;
    if pending == 0 {
        return Ok(None);
    }
    let mut messages = consumer.messages().await?;
    let mut seen = 0u64;
    let mut found = None;
    while seen < pending {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            break;
        };
        let message = message?;
        seen += 1;
        if let Ok(event) = serde_json::from_slice::<ResultEvent>(&message.payload)
            && event.id == id
        {
            // Keep scanning: a replay from the dead-letter queue has a later result.
            found = Some(event);
        }
    }
    Ok(found)
}
