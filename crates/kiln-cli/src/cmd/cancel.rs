//! `kiln cancel <id>…`: mark jobs cancelled. Workers mirror the mark: a queued job is answered
//! `cancelled` when a worker takes it, a running one stops at its next checkpoint. A finished
//! job is not marked: the mark lives a day and would cancel a later run of the same id.

use std::process::ExitCode;

use async_nats::jetstream;
use futures::StreamExt;
use kiln_client::jobs::{Place, cancel, check_job_id};
use kiln_proto::streams;

use super::status::describe;
use crate::cli::{CancelArgs, NatsArgs};

/// Most ids looked up and marked at once.
const CANCELS_AT_ONCE: usize = 64;

pub async fn run(nats: &NatsArgs, args: CancelArgs) -> anyhow::Result<ExitCode> {
    // Nothing is marked when any id is one no worker would take.
    let invalid: Vec<String> = args
        .ids
        .iter()
        .filter_map(|id| check_job_id(id).err())
        .collect();
    if !invalid.is_empty() {
        for message in &invalid {
            eprintln!("kiln: {message}");
        }
        eprintln!("kiln: nothing was cancelled");
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    }
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    let js = jetstream::new(client);
    streams::ensure_all(&js, &super::topology(nats)).await?;
    // Marked together, not one after the other: `kiln cancel a b` with `a` running and `b`
    // queued let a worker take `b` while `a` was being looked up and marked.
    let places: Vec<_> = futures::stream::iter(&args.ids)
        .map(|id| cancel(&js, id))
        .buffered(CANCELS_AT_ONCE)
        .collect()
        .await;
    let mut failed = 0;
    for (id, place) in args.ids.iter().zip(places) {
        let place = match place {
            Ok(place) => place,
            Err(e) => {
                eprintln!("kiln: {id}: not cancelled: {:#}", anyhow::Error::from(e));
                failed += 1;
                continue;
            }
        };
        let line = match &place {
            Place::Gone { .. } => format!("{}; not marked", describe(&place, id)),
            Place::Finished { .. } => format!(
                "{}; not marked: it is finished, and a mark would cancel a later run of this id",
                describe(&place, id)
            ),
            Place::Queued { .. } => {
                format!("{id}: queued: marked; a worker answers it `cancelled` when it takes it")
            }
            Place::Running { .. } => format!(
                "{}: marked; it stops at its next checkpoint (a training step, a slice of a large job)",
                describe(&place, id)
            ),
            Place::CancelRequested { .. } => {
                format!("{id}: cancel already requested: marked again")
            }
            Place::Unknown => format!(
                "{id}: unknown (no record, no result, no live worker said it held it at its \
                 last heartbeat): marked in case it is still in flight; the mark lasts a day"
            ),
        };
        println!("{line}");
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} job(s) not cancelled", args.ids.len());
    }
    Ok(ExitCode::SUCCESS)
}
