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

/// Scan the results stream (newest subject filter given by `kind`) for job `id`. The
/// scan reads the stream once; results carry the job id only in their body.
pub async fn find(
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
            found = Some(event);
            // Keep scanning: a later attempt would be the one that counts, but results
            // are deduplicated by job id, so the first match is the only one.
            break;
        }
    }
    Ok(found)
}
