//! `kiln cancel <id>…`: mark jobs cancelled. Workers mirror the mark: a queued job is answered
//! `cancelled` when a worker takes it, a running one stops at its next checkpoint. A finished
//! job is not marked: the mark lives a day and would cancel a later run of the same id.

use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream;
use kiln_proto::{BUCKET_CANCEL, job_key, streams};

use super::status::{Place, locate};
use crate::cli::{CancelArgs, NatsArgs};

pub async fn run(nats: &NatsArgs, args: CancelArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.ids.is_empty(), "name the job ids to cancel");
    // Nothing is marked when any id is one no worker would take.
    let invalid: Vec<String> = args
        .ids
        .iter()
        .filter_map(|id| super::check_job_id(id).err())
        .collect();
    if !invalid.is_empty() {
        for message in &invalid {
            eprintln!("kiln: {message}");
        }
        eprintln!("kiln: nothing was cancelled");
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    }
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client);
    streams::ensure_all(&js, &super::topology(nats)).await?;
    let store = js
        .get_key_value(BUCKET_CANCEL)
        .await
        .with_context(|| format!("opening the {BUCKET_CANCEL} bucket"))?;
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    for id in &args.ids {
        let place = locate(&js, id).await?;
        let outcome = match &place {
            Place::Finished(_) | Place::Gone(_) => {
                println!(
                    "{}; not marked: it is finished, and a mark would cancel a later run of \
                     this id",
                    place.describe(id)
                );
                continue;
            }
            Place::Queued(_) => {
                format!("{id}: queued: marked; a worker answers it `cancelled` when it takes it")
            }
            Place::Running(line) => {
                format!("{line}: marked; it stops at its next checkpoint (each training epoch)")
            }
            Place::CancelRequested => format!("{id}: cancel already requested: marked again"),
            Place::Unknown => format!(
                "{id}: unknown (no record, no result, no live worker holds it): marked in case \
                 it is still in flight; the mark lasts a day"
            ),
        };
        let body = serde_json::json!({ "id": id, "requested_at": at });
        store
            .put(job_key(id), serde_json::to_vec(&body)?.into())
            .await
            .with_context(|| format!("cancelling {id}"))?;
        println!("{outcome}");
    }
    Ok(ExitCode::SUCCESS)
}
