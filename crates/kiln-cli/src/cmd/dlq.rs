//! `kiln dlq list` and `kiln dlq replay`: inspect dead letters and resubmit them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use kiln_proto::streams::STREAM_DLQ;
use kiln_proto::{HEADER_DLQ_REASON, HEADER_DLQ_SUBJECT, HEADER_MSG_ID};

use crate::cli::{DlqArgs, DlqCommand, NatsArgs};

/// One dead letter.
struct Letter {
    sequence: u64,
    subject: String,
    original_subject: String,
    id: String,
    reason: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
}

pub async fn run(nats: &NatsArgs, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let client = crate::connect::connect_with(nats, false).await?;
    let js = jetstream::new(client);
    let letters = read(&js).await?;
    match args.command {
        DlqCommand::List => {
            if letters.is_empty() {
                println!("{STREAM_DLQ} is empty");
            }
            for l in &letters {
                println!(
                    "{:>8}  {:<16} {:<28} from {:<24} {}",
                    l.sequence, l.subject, l.id, l.original_subject, l.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { sequences, all } => {
            anyhow::ensure!(
                all || !sequences.is_empty(),
                "name the dead letters to replay by sequence (see `kiln dlq list`), or --all"
            );
            let stream = js.get_stream(STREAM_DLQ).await?;
            let mut replayed = 0;
            let mut refused = 0;
            for l in letters
                .iter()
                .filter(|l| all || sequences.contains(&l.sequence))
            {
                // The subject comes from the dead letter's own header: replay only to a job
                // subject, never to results, metrics or anything else a forged letter names.
                let Ok(original) = kiln_proto::JobSubject::parse(&l.original_subject) else {
                    eprintln!(
                        "dead letter {} ({}) names {:?} as its job's subject, which is no \
                         jobs.<gpu|cpu|auto>.<kind> subject: not replayed (it stays in {STREAM_DLQ})",
                        l.sequence, l.id, l.original_subject
                    );
                    refused += 1;
                    continue;
                };
                if !kiln_proto::valid_job_id(&l.id) {
                    eprintln!(
                        "dead letter {} names the job id {:?}: {}; not replayed (it stays in \
                         {STREAM_DLQ})",
                        l.sequence,
                        kiln_proto::cut(&l.id, 80),
                        kiln_proto::JOB_ID_RULE
                    );
                    refused += 1;
                    continue;
                }
                if let Some(why) = l.headers.get(kiln_proto::HEADER_DLQ_BODY) {
                    eprintln!(
                        "dead letter {} ({}) holds no job to replay: its body was {}; submit \
                         the job again (it stays in {STREAM_DLQ})",
                        l.sequence,
                        l.id,
                        why.as_str()
                    );
                    refused += 1;
                    continue;
                }
                // A copy made by kiln (jobs.<class>.<kind>.copy, whose headers workers
                // believe), without publish conditions nor the letter's own headers, counted
                // from the replay, a new submission.
                let target = original.copy_subject();
                let mut headers =
                    kiln_proto::copy_headers_except(Some(&l.headers), &kiln_proto::OWN_HEADERS);
                // A fresh message id: the original is still in the job stream's duplicate
                // window. The job keeps its id in Kiln-Job-Id.
                headers.insert(kiln_proto::HEADER_JOB_ID, l.id.as_str());
                // A replay is a new run with a result of its own (the failed one stays).
                let replay = l
                    .headers
                    .get(kiln_proto::HEADER_REPLAY)
                    .and_then(|v| v.as_str().trim().parse::<u32>().ok())
                    .filter(|n| *n < kiln_proto::MAX_REPLAYS)
                    .unwrap_or(0)
                    + 1;
                headers.insert(kiln_proto::HEADER_REPLAY, replay.to_string().as_str());
                headers.insert(
                    HEADER_MSG_ID,
                    format!("replay-{}-{}", l.sequence, l.id).as_str(),
                );
                js.publish_with_headers(target.clone(), headers, l.payload.clone())
                    .await?
                    .await
                    .with_context(|| format!("resubmitting dead letter {}", l.sequence))?;
                stream.delete_message(l.sequence).await?;
                println!("replayed {} ({}) to {target}", l.sequence, l.id);
                replayed += 1;
            }
            let absent: Vec<String> = sequences
                .iter()
                .filter(|s| !letters.iter().any(|l| l.sequence == **s))
                .map(u64::to_string)
                .collect();
            println!("{replayed} dead letter(s) resubmitted");
            if refused > 0 {
                return Ok(ExitCode::FAILURE);
            }
            if absent.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "no dead letter with sequence {} in {STREAM_DLQ}; `kiln dlq list` shows the \
                 sequences there",
                super::list_ids(&absent)
            );
            Ok(ExitCode::from(super::EXIT_NOT_FOUND))
        }
    }
}

/// Every message in the dead-letter stream, oldest first.
async fn read(js: &jetstream::Context) -> anyhow::Result<Vec<Letter>> {
    let stream = js
        .get_stream(STREAM_DLQ)
        .await
        .context("kiln's streams do not exist yet on this server; run `kiln init`")?;
    let mut reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "dlq.>".into(),
            ..Default::default()
        })
        .await?;
    let pending = reader.info().await?.num_pending;
    let mut messages = reader.messages().await?;
    let mut letters = Vec::new();
    while (letters.len() as u64) < pending {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            break;
        };
        let message = message?;
        let sequence = message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let id = header(kiln_proto::HEADER_JOB_ID)
            .or_else(|| header(HEADER_MSG_ID).map(|m| m.trim_start_matches("dlq-").to_owned()))
            .unwrap_or_else(|| format!("dlq-seq-{sequence}"));
        letters.push(Letter {
            sequence,
            subject: message.subject.to_string(),
            original_subject: header(HEADER_DLQ_SUBJECT).unwrap_or_else(|| {
                format!("jobs.cpu.{}", message.subject.trim_start_matches("dlq."))
            }),
            id,
            reason: header(HEADER_DLQ_REASON).unwrap_or_default(),
            payload: message.payload.clone(),
            headers,
        });
    }
    Ok(letters)
}
