//! `kiln cancel <id>…`: mark jobs cancelled. Workers mirror the mark: a queued job is answered
//! `cancelled` when a worker takes it, a running one stops at its next checkpoint.

use std::process::ExitCode;

use anyhow::Context as _;
use async_nats::jetstream;
use kiln_proto::{BUCKET_CANCEL, job_key, streams};

use crate::cli::{CancelArgs, NatsArgs};

pub async fn run(nats: &NatsArgs, args: CancelArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.ids.is_empty(), "name the job ids to cancel");
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
        let body = serde_json::json!({ "id": id, "requested_at": at });
        store
            .put(job_key(id), serde_json::to_vec(&body)?.into())
            .await
            .with_context(|| format!("cancelling {id}"))?;
        println!(
            "cancel requested for {id}: if queued it is answered `cancelled` when a worker takes it; \
             if running it stops at its next checkpoint (each training epoch); finished jobs are unaffected"
        );
    }
    Ok(ExitCode::SUCCESS)
}
