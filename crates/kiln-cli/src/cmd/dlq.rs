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
            list(&letters);
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay { sequences, all } => replay(&js, &letters, &sequences, all).await,
    }
}

/// `kiln dlq list`: one line per dead letter.
fn list(letters: &[Letter]) {
    if letters.is_empty() {
        println!("{STREAM_DLQ} is empty");
    }
    for l in letters {
        println!(
            "{:>8}  {:<16} {:<28} from {:<24} {}",
            l.sequence, l.subject, l.id, l.original_subject, l.reason
        );
    }
}

/// `kiln dlq replay`: resubmit the letters named by sequence (or all of them) and delete
/// them from the queue. Fails when one was refused; exit status 2 when a sequence is not
/// there.
async fn replay(
    js: &jetstream::Context,
    letters: &[Letter],
    sequences: &[u64],
    all: bool,
) -> anyhow::Result<ExitCode> {
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
        let target = match l.replay_subject() {
            Ok(target) => target,
            Err(why) => {
                eprintln!("{why}");
                refused += 1;
                continue;
            }
        };
        js.publish_with_headers(target.clone(), l.replay_headers(), l.payload.clone())
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

impl Letter {
    /// Where a replay of this letter goes, or why it is not replayed: a copy made by kiln
    /// (jobs.<class>.<kind>.copy, whose headers workers believe), without publish conditions
    /// nor the letter's own headers, counted from the replay, a new submission.
    fn replay_subject(&self) -> Result<String, String> {
        // The subject comes from the dead letter's own header: replay only to a job
        // subject, never to results, metrics or anything else a forged letter names.
        let Ok(original) = kiln_proto::JobSubject::parse(&self.original_subject) else {
            return Err(format!(
                "dead letter {} ({}) names {:?} as its job's subject, which is no \
                 jobs.<gpu|cpu|auto>.<kind> subject: not replayed (it stays in {STREAM_DLQ})",
                self.sequence, self.id, self.original_subject
            ));
        };
        if !kiln_proto::valid_job_id(&self.id) {
            return Err(format!(
                "dead letter {} names the job id {:?}: {}; not replayed (it stays in \
                 {STREAM_DLQ})",
                self.sequence,
                kiln_proto::cut(&self.id, 80),
                kiln_proto::JOB_ID_RULE
            ));
        }
        if let Some(why) = self.headers.get(kiln_proto::HEADER_DLQ_BODY) {
            return Err(format!(
                "dead letter {} ({}) holds no job to replay: its body was {}; submit \
                 the job again (it stays in {STREAM_DLQ})",
                self.sequence,
                self.id,
                why.as_str()
            ));
        }
        Ok(original.copy_subject())
    }

    /// The headers of this letter's replay.
    fn replay_headers(&self) -> async_nats::HeaderMap {
        let mut headers =
            kiln_proto::copy_headers_except(Some(&self.headers), &kiln_proto::OWN_HEADERS);
        // A fresh message id: the original is still in the job stream's duplicate
        // window. The job keeps its id in Kiln-Job-Id.
        headers.insert(kiln_proto::HEADER_JOB_ID, self.id.as_str());
        // A replay is a new run with a result of its own (the failed one stays).
        let replay = self
            .headers
            .get(kiln_proto::HEADER_REPLAY)
            .and_then(|v| v.as_str().trim().parse::<u32>().ok())
            .filter(|n| *n < kiln_proto::MAX_REPLAYS)
            .unwrap_or(0)
            + 1;
        headers.insert(kiln_proto::HEADER_REPLAY, replay.to_string().as_str());
        headers.insert(
            HEADER_MSG_ID,
            format!("replay-{}-{}", self.sequence, self.id).as_str(),
        );
        headers
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
