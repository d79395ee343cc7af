//! The dead-letter queue: jobs given up after their last attempt, listed and replayed.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use kiln_proto::streams::STREAM_DLQ;
use kiln_proto::{HEADER_DLQ_REASON, HEADER_DLQ_SUBJECT, HEADER_MSG_ID};
use serde::Serialize;

use crate::error::{Context as _, Error, Result, open_stream};

/// What a letter that does not say where its job came from lists as its subject.
const UNKNOWN: &str = "unknown";

/// One dead letter in `KILN_DLQ`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its sequence in `KILN_DLQ` (what [`replay`] names it by).
    pub sequence: u64,
    /// Its subject: `dlq.<kind>`.
    pub subject: String,
    /// The subject the job was submitted on: `jobs.<class>.<kind>` (`unknown` when the
    /// letter does not say, which no letter kiln writes lacks).
    pub original_subject: String,
    /// The job's id (`dlq-seq-<sequence>` when the letter names none).
    pub id: String,
    /// Why it was given up.
    pub reason: String,
    #[serde(skip)]
    headers: async_nats::HeaderMap,
    #[serde(skip)]
    payload: bytes::Bytes,
}

/// Resubmit `letter` to the subject it came from, as a new run of the same job id, and delete
/// it from the queue; returns the subject it went to. A letter that cannot be replayed (see
/// [`DeadLetter::replay_subject`]) is an [`Error::Invalid`] saying why, and stays.
pub async fn replay(js: &jetstream::Context, letter: &DeadLetter) -> Result<String> {
    let target = letter.replay_subject().map_err(Error::Invalid)?;
    let dlq = open_stream(js, STREAM_DLQ).await?;
    let claim = Claim::take(js, letter).await?;
    // Claimed: the letter must still be there (another replay may have sent and removed
    // it, then claimed another kind's letter of the same id over this one's record).
    match dlq.get_raw_message(letter.sequence).await {
        Ok(_) => {}
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            claim.release().await;
            return Err(Error::Invalid(format!(
                "dead letter {} ({}) is no longer in {STREAM_DLQ}: another `kiln dlq replay` \
                 (or `kiln dlq rm`) took it meanwhile",
                letter.sequence, letter.id
            )));
        }
        Err(e) => {
            claim.release().await;
            return Err(e).nats(|| format!("reading dead letter {}", letter.sequence));
        }
    }
    let what = || format!("resubmitting dead letter {}", letter.sequence);
    let sent = async {
        js.publish_with_headers(
            target.clone(),
            letter.replay_headers(),
            letter.payload.clone(),
        )
        .await?
        .await
    };
    match sent.await {
        Ok(_) => {}
        // Refused (a full queue), so not sent: the letter can be replayed again at once.
        // Unanswered, it may be stored: the claim stands for `CLAIM_HOLDS`.
        Err(e) if !crate::submit::unanswered(&e) => {
            claim.release().await;
            let text = e.to_string();
            if text.contains("maximum messages exceeded") || text.contains("maximum bytes exceeded")
            {
                return Err(Error::Invalid(format!(
                    "dead letter {} ({}) was not replayed: {} is full (`kiln init \
                     --max-queued-jobs`; it also holds at most 1 GiB), so the server refused \
                     it; it stays, to replay once workers have taken jobs",
                    letter.sequence,
                    letter.id,
                    kiln_proto::streams::STREAM_JOBS
                )));
            }
            return Err(e).nats(what);
        }
        Err(e) => return Err(e).nats(what),
    }
    dlq.delete_message(letter.sequence)
        .await
        .nats(|| format!("removing dead letter {} from {STREAM_DLQ}", letter.sequence))?;
    Ok(target)
}

/// How long a replay's claim holds against another `kiln dlq replay` of the same letter: a
/// replay sends its job within moments of claiming it, so an older claim whose letter is
/// still there was left by one that died or failed.
const CLAIM_HOLDS: Duration = Duration::from_secs(60);

/// A replay recorded as queued in `KILN_STATE` before it is sent, over the record read (a
/// write conditional on its revision): `kiln status` then says the replay is queued (the
/// failed run's result stays stored, and would otherwise be what it shows until the replay
/// answers), and of two `kiln dlq replay`s of one letter at once only one sends it (both
/// had, and the job ran twice). A record that cannot be read or written only makes the
/// status less precise: the replay goes ahead.
struct Claim {
    store: Option<jetstream::kv::Store>,
    key: String,
    /// What the record held before, and the claim's revision.
    before: Option<(bytes::Bytes, u64)>,
}

impl Claim {
    async fn take(js: &jetstream::Context, letter: &DeadLetter) -> Result<Claim> {
        use async_nats::jetstream::kv::Operation;
        let key = kiln_proto::job_key(&letter.id);
        let mut claim = Claim {
            store: None,
            key: key.clone(),
            before: None,
        };
        let Ok(original) = kiln_proto::JobSubject::parse(&letter.original_subject) else {
            return Ok(claim);
        };
        let Ok(store) = js.get_key_value(kiln_proto::BUCKET_STATE).await else {
            return Ok(claim);
        };
        let replay = letter.replay_number();
        let entry = match store.entry(&key).await {
            Ok(entry) => entry,
            Err(e) => {
                tracing::debug!(error = %e, id = %letter.id, "the job's state could not be read");
                return Ok(claim);
            }
        };
        let taken = || {
            Error::Invalid(format!(
                "dead letter {} ({}) is being replayed already: replay {replay} of its job was \
                 recorded as queued by another `kiln dlq replay` moments ago (`kiln status {}` \
                 follows it; if the letter is still listed in a minute, replay it again)",
                letter.sequence, letter.id, letter.id
            ))
        };
        let live = entry.as_ref().filter(|e| e.operation == Operation::Put);
        let current =
            live.and_then(|e| serde_json::from_slice::<kiln_proto::JobState>(&e.value).ok());
        let fresh =
            |c: &kiln_proto::JobState| (time::OffsetDateTime::now_utc() - c.at) < CLAIM_HOLDS;
        let claimed = current.filter(|c| {
            c.phase == kiln_proto::Phase::Queued && c.kind == original.kind && c.replay >= replay
        });
        if let Some(claimed) = claimed {
            if fresh(&claimed) {
                return Err(taken());
            }
            // An older claim whose letter stayed: its replay died before sending, or after
            // (its letter not removed). A stored answer of this replay says which.
            if answered(js, &claimed.kind, &letter.id, replay).await {
                return Err(Error::Invalid(format!(
                    "dead letter {} ({}) was replayed already: replay {replay} of its job is \
                     answered (`kiln result {} --kind {}`); `kiln dlq rm {}` removes the letter",
                    letter.sequence, letter.id, letter.id, claimed.kind, letter.sequence
                )));
            }
        }
        let mut state = kiln_proto::JobState::queued(original.kind, original.class);
        state.replay = replay;
        let value: bytes::Bytes = serde_json::to_vec(&state).unwrap_or_default().into();
        let written = match write_over(&store, &key, value, entry.as_ref()).await {
            Ok(written) => written,
            Err(Lost) => return Err(taken()),
        };
        if let Some(revision) = written {
            let before = live.map(|e| e.value.clone()).unwrap_or_default();
            claim.before = Some((before, revision));
            claim.store = Some(store);
        }
        Ok(claim)
    }

    /// Put back what the record held (unless written since): the replay was not sent.
    async fn release(self) {
        let (Some(store), Some((before, revision))) = (self.store, self.before) else {
            return;
        };
        let undone = match before.is_empty() {
            true => store
                .delete_expect_revision(&self.key, Some(revision))
                .await
                .map_err(|e| e.to_string()),
            false => store
                .update(&self.key, before, revision)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = undone {
            tracing::debug!(error = %e, key = %self.key, "the replay's claim was not undone");
        }
    }
}

/// Another write to the record came first.
struct Lost;

/// Write `value` as `key`'s record over `entry` (the one read; none: no record): its new
/// revision, `None` when it could not be written for another reason (logged: the replay goes
/// ahead unclaimed), or [`Lost`] to a write that came first (on a cluster also error 10164).
async fn write_over(
    store: &jetstream::kv::Store,
    key: &str,
    value: bytes::Bytes,
    entry: Option<&jetstream::kv::Entry>,
) -> std::result::Result<Option<u64>, Lost> {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    let conflict = |e: &dyn std::fmt::Display| kiln_proto::wrong_last_sequence(&e.to_string());
    let written = match entry {
        Some(entry) => match store.update(key, value, entry.revision).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision || conflict(&e) => {
                return Err(Lost);
            }
            Err(e) => Err(e.to_string()),
        },
        None => match store.create(key, value).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists || conflict(&e) => {
                return Err(Lost);
            }
            Err(e) => Err(e.to_string()),
        },
    };
    Ok(written
        .inspect_err(
            |e| tracing::debug!(error = %e, key, "the replay's queued state was not stored"),
        )
        .ok())
}

/// Whether replay `replay` of job `id` of `kind` has a stored answer.
async fn answered(js: &jetstream::Context, kind: &str, id: &str, replay: u32) -> bool {
    let subject = kiln_proto::subject::result_of(kind, id, replay);
    match js.get_stream(kiln_proto::streams::STREAM_RESULTS).await {
        Ok(results) => results
            .get_last_raw_message_by_subject(&subject)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Remove dead letter `sequence` from the queue without replaying it; `false` when there is
/// none of that sequence.
pub async fn remove(js: &jetstream::Context, sequence: u64) -> Result<bool> {
    let stream = open_stream(js, STREAM_DLQ).await?;
    match stream.delete_message(sequence).await {
        Ok(_) => Ok(true),
        // The server says "no message found" for a sequence the stream does not hold.
        Err(e) if e.to_string().contains("no message found") => Ok(false),
        Err(e) => Err(e).nats(|| format!("removing dead letter {sequence} from {STREAM_DLQ}")),
    }
}

impl DeadLetter {
    /// Where a replay of this letter goes, or why it is not replayed: a copy made by kiln
    /// (jobs.<class>.<kind>.copy, whose headers workers believe), without publish conditions
    /// nor the letter's own headers, counted from the replay, a new submission.
    pub fn replay_subject(&self) -> Result<String, String> {
        self.checked_replay_subject()
            .map_err(|why| format!("{why}; `kiln dlq rm {}` removes it", self.sequence))
    }

    fn checked_replay_subject(&self) -> Result<String, String> {
        // The subject comes from the dead letter's own header: replay only to a job
        // subject, never to results, metrics or anything else a forged letter names.
        // Nor to a subject or an id the letter does not name: a guess is not the job's.
        let named = |name: &str| self.headers.get(name).is_some();
        if !named(HEADER_DLQ_SUBJECT) || !(named(kiln_proto::HEADER_JOB_ID) || named(HEADER_MSG_ID))
        {
            return Err(format!(
                "dead letter {} ({}) does not say which subject or job id it came from: not \
                 replayed (it stays in {STREAM_DLQ})",
                self.sequence, self.id
            ));
        }
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

    /// The number of this letter's replay: one more than the letter's own run's.
    fn replay_number(&self) -> u32 {
        self.headers
            .get(kiln_proto::HEADER_REPLAY)
            .and_then(|v| v.as_str().trim().parse::<u32>().ok())
            .filter(|n| *n < kiln_proto::MAX_REPLAYS)
            .unwrap_or(0)
            + 1
    }

    /// The headers of this letter's replay.
    fn replay_headers(&self) -> async_nats::HeaderMap {
        let mut headers =
            kiln_proto::copy_headers_except(Some(&self.headers), &kiln_proto::OWN_HEADERS);
        // A message id of its own that no submitter can know in advance: the original may
        // still be in the job stream's duplicate window. The job keeps its id in Kiln-Job-Id.
        headers.insert(kiln_proto::HEADER_JOB_ID, self.id.as_str());
        // A replay is a new run with a result of its own (the failed one stays).
        headers.insert(
            kiln_proto::HEADER_REPLAY,
            self.replay_number().to_string().as_str(),
        );
        headers.insert(
            HEADER_MSG_ID,
            kiln_proto::copy_msg_id("replay", self.sequence, &self.id).as_str(),
        );
        headers
    }
}

/// Every message in the dead-letter stream, oldest first.
pub async fn dead_letters(js: &jetstream::Context) -> Result<Vec<DeadLetter>> {
    let stream = open_stream(js, STREAM_DLQ).await?;
    let mut reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "dlq.>".into(),
            ..Default::default()
        })
        .await
        .nats(|| format!("reading {STREAM_DLQ}"))?;
    let pending = reader
        .info()
        .await
        .nats(|| format!("reading {STREAM_DLQ}"))?
        .num_pending;
    let mut messages = reader
        .messages()
        .await
        .nats(|| format!("reading {STREAM_DLQ}"))?;
    let mut letters = Vec::new();
    while (letters.len() as u64) < pending {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            break;
        };
        let message = message.nats(|| format!("reading {STREAM_DLQ}"))?;
        let sequence = message
            .info()
            .map_err(|e| Error::Nats {
                what: format!("reading {STREAM_DLQ}"),
                source: e,
            })?
            .stream_sequence;
        let headers = message.headers.clone().unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let id = header(kiln_proto::HEADER_JOB_ID)
            .or_else(|| {
                // `dlq-<kind>.<id>` (before: `dlq-<id>`), the kind the letter's subject's.
                let kind = message.subject.strip_prefix("dlq.").unwrap_or_default();
                header(HEADER_MSG_ID).map(|m| {
                    let m = m.trim_start_matches("dlq-");
                    let id = m.strip_prefix(kind).and_then(|m| m.strip_prefix('.'));
                    id.unwrap_or(m).to_owned()
                })
            })
            .unwrap_or_else(|| format!("dlq-seq-{sequence}"));
        letters.push(DeadLetter {
            sequence,
            subject: message.subject.to_string(),
            original_subject: header(HEADER_DLQ_SUBJECT).unwrap_or_else(|| UNKNOWN.to_owned()),
            id,
            reason: header(HEADER_DLQ_REASON).unwrap_or_default(),
            payload: message.payload.clone(),
            headers,
        });
    }
    Ok(letters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)]) -> DeadLetter {
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        let header = |name: &str| map.get(name).map(|v| v.as_str().to_owned());
        DeadLetter {
            sequence: 3,
            subject: "dlq.matmul".into(),
            original_subject: header(HEADER_DLQ_SUBJECT).unwrap_or_else(|| UNKNOWN.into()),
            id: header(kiln_proto::HEADER_JOB_ID).unwrap_or_else(|| "dlq-seq-3".into()),
            reason: String::new(),
            headers: map,
            payload: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn a_letter_is_replayed_only_where_it_says_it_came_from() {
        let full = letter(&[
            (HEADER_DLQ_SUBJECT, "jobs.cpu.matmul"),
            (kiln_proto::HEADER_JOB_ID, "mm-1"),
        ]);
        assert_eq!(full.replay_subject().unwrap(), "jobs.cpu.matmul.copy");
        for headers in [
            vec![],
            vec![(kiln_proto::HEADER_JOB_ID, "mm-1")],
            vec![(HEADER_DLQ_SUBJECT, "jobs.cpu.matmul")],
        ] {
            let why = letter(&headers).replay_subject().unwrap_err();
            assert!(why.contains("does not say"), "{headers:?}: {why}");
        }
    }
}
