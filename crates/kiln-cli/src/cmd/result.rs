//! `kiln result <id>`: find a job's result event in KILN_RESULTS.

use std::process::ExitCode;

use async_nats::jetstream;
use kiln_client::jobs::{check_job_id, find_result as find};

use super::EXIT_NOT_FOUND;
use crate::cli::{NatsArgs, ResultArgs};

pub async fn run(nats: &NatsArgs, args: ResultArgs) -> anyhow::Result<ExitCode> {
    if let Err(message) = check_job_id(&args.id) {
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
    let client = kiln_client::connect(&nats.connect_options()).await?;
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
