//! `kiln result <id>`: find a job's result event in KILN_RESULTS.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use kiln_proto::streams::{self, STREAM_RESULTS};
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

/// The job's state in `KILN_STATE`, if kiln recorded one.
pub async fn state(js: &jetstream::Context, id: &str) -> Option<JobState> {
    let store = js.get_key_value(kiln_proto::BUCKET_STATE).await.ok()?;
    let value = store.get(kiln_proto::job_key(id)).await.ok()??;
    serde_json::from_slice(&value).ok()
}

/// Job `id`'s latest result (of `kind`, when given): one lookup when the aggregator recorded
/// its final state in `KILN_STATE`, else a scan of the results stream (jobs published before
/// the state existed, or while no aggregator runs).
pub async fn find(
    js: &jetstream::Context,
    id: &str,
    kind: Option<&str>,
) -> anyhow::Result<Option<ResultEvent>> {
    if let Some(seq) = state(js, id).await.and_then(|s| s.result_seq)
        && let Some(event) = recorded(js, id, seq).await
        && kind.is_none_or(|k| event.kind == k)
    {
        return Ok(Some(event));
    }
    Ok(scan(js, &HashSet::from([id]), kind).await?.remove(id))
}

/// The results that jobs `ids` already have, for resubmissions the server dropped as
/// duplicates: from each job's final state where the aggregator recorded it, else from one
/// scan of the results stream. A job recorded as `queued` has no result yet once the
/// aggregator has folded every result; while it has not, the scan takes only results of runs
/// enqueued since the job was recorded (not those of an earlier run of the same id).
pub async fn existing(
    js: &jetstream::Context,
    ids: &[String],
    kind: Option<&str>,
) -> anyhow::Result<HashMap<String, ResultEvent>> {
    // Clocks of the submitter (the record) and of the server (enqueued_at) may differ a
    // little; an earlier run of the same id is at least a duplicate window older.
    const SKEW: time::Duration = time::Duration::minutes(1);
    let mut found = HashMap::new();
    let mut since = HashMap::new();
    let mut caught_up = None;
    for id in ids {
        match state(js, id).await {
            Some(s) if s.phase.is_final() => {
                let event = match s.result_seq {
                    Some(seq) => recorded(js, id, seq).await,
                    None => None,
                };
                match event {
                    Some(event) => {
                        found.insert(id.clone(), event);
                    }
                    None => {
                        since.insert(id.as_str(), None);
                    }
                }
            }
            Some(s) => {
                let caught_up = match caught_up {
                    Some(known) => known,
                    None => *caught_up.insert(aggregator_caught_up(js).await),
                };
                if !caught_up {
                    since.insert(id.as_str(), Some(s.at - SKEW));
                }
            }
            None => {
                since.insert(id.as_str(), None);
            }
        }
    }
    if !since.is_empty() {
        let wanted: HashSet<&str> = since.keys().copied().collect();
        for (id, event) in scan(js, &wanted, kind).await? {
            if since[id.as_str()].is_none_or(|at| event.enqueued_at >= at) {
                found.insert(id, event);
            }
        }
    }
    Ok(found)
}

/// Whether the aggregator has folded (and recorded the final state of) every stored result.
pub async fn aggregator_caught_up(js: &jetstream::Context) -> bool {
    let Ok(results) = js.get_stream(STREAM_RESULTS).await else {
        return false;
    };
    match results.consumer_info(streams::CONSUMER_AGGREGATOR).await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
        Err(_) => false,
    }
}

/// The result stored at `seq` in `KILN_RESULTS`, when it is job `id`'s.
async fn recorded(js: &jetstream::Context, id: &str, seq: u64) -> Option<ResultEvent> {
    let stream = js.get_stream(STREAM_RESULTS).await.ok()?;
    let message = stream.get_raw_message(seq).await.ok()?;
    let event = serde_json::from_slice::<ResultEvent>(&message.payload).ok()?;
    (event.id == id).then_some(event)
}

/// Scan the results stream (subject filter given by `kind`) for the latest result of each of
/// jobs `ids`. The scan reads the stream once; results carry the job id only in their body.
async fn scan(
    js: &jetstream::Context,
    ids: &HashSet<&str>,
    kind: Option<&str>,
) -> anyhow::Result<HashMap<String, ResultEvent>> {
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
    let mut found = HashMap::new();
    let pending = consumer.info().await?.num_pending;
    if pending == 0 {
        return Ok(found);
    }
    let mut messages = consumer.messages().await?;
    let mut seen = 0u64;
    while seen < pending {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            break;
        };
        let message = message?;
        seen += 1;
        if let Ok(event) = serde_json::from_slice::<ResultEvent>(&message.payload)
            && ids.contains(event.id.as_str())
        {
            // Keep scanning: a replay from the dead-letter queue has a later result.
            found.insert(event.id.clone(), event);
        }
    }
    Ok(found)
}
