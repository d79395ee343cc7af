//! One job by its id: its result, its recorded state, where it is now, and cancelling it.

use std::collections::HashMap;

use async_nats::jetstream;
use futures::StreamExt as _;
use kiln_proto::streams::{self, STREAM_RESULTS};
use kiln_proto::{BUCKET_CANCEL, JobState, Phase, ResultEvent, job_key, subject};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Context as _, Error, Result, open_stream};

/// What job ids may be: what [`kiln_proto::valid_job_id`] accepts (workers refuse other ids).
pub const JOB_ID_RULE: &str = "1 to 128 ASCII letters, digits, '-' and '_'";

/// `Err` with a one-line explanation when `id` is not a valid job id. A long id is shown cut
/// short, with its length.
pub fn check_job_id(id: &str) -> Result<(), String> {
    if kiln_proto::valid_job_id(id) {
        return Ok(());
    }
    const SHOWN: usize = 40;
    let shown = if id.chars().count() > SHOWN {
        let head: String = id.chars().take(SHOWN).collect();
        format!("{head:?}… ({} bytes)", id.len())
    } else {
        format!("{id:?}")
    };
    Err(format!(
        "{shown} is not a job id: job ids are {JOB_ID_RULE}"
    ))
}

/// [`check_job_id`] for an id to submit a job under: kiln's own `seq-<sequence>` ids are
/// refused too ([`kiln_proto::submittable_job_id`]).
pub fn check_submitted_id(id: &str) -> Result<(), String> {
    check_job_id(id)?;
    match kiln_proto::submittable_job_id(id) {
        true => Ok(()),
        false => Err(format!(
            "{id:?} cannot be submitted: {}",
            kiln_proto::ASSIGNED_ID_RULE
        )),
    }
}

/// The job's state in `KILN_STATE`, if kiln recorded one (`kiln submit` records `queued`).
pub async fn state(js: &jetstream::Context, id: &str) -> Option<JobState> {
    stored_state(js, id).await.map(|(record, _)| record)
}

/// Job `id`'s record and when the server stored it.
async fn stored_state(js: &jetstream::Context, id: &str) -> Option<(JobState, OffsetDateTime)> {
    let entry = stored_entry(js, kiln_proto::BUCKET_STATE, id).await?;
    Some((serde_json::from_slice(&entry.value).ok()?, entry.created))
}

/// Job `id`'s entry in `bucket`, unless it has none or it was deleted.
async fn stored_entry(
    js: &jetstream::Context,
    bucket: &str,
    id: &str,
) -> Option<async_nats::jetstream::kv::Entry> {
    let store = js.get_key_value(bucket).await.ok()?;
    let entry = store.entry(job_key(id)).await.ok()??;
    (entry.operation == async_nats::jetstream::kv::Operation::Put).then_some(entry)
}

/// Job `id`'s latest result (of `kind`, when given): one lookup of the last message on its
/// result subjects (`results.<kind>.<id>`, and `results.<kind>.<id>.replay-<n>` after
/// replays from the dead-letter queue, which come later and win).
pub async fn find_result(
    js: &jetstream::Context,
    id: &str,
    kind: Option<&str>,
) -> Result<Option<ResultEvent>> {
    if !kiln_proto::valid_job_id(id) {
        return Ok(None);
    }
    let stream = open_stream(js, STREAM_RESULTS).await?;
    let kind = kind.unwrap_or("*");
    for subject in [
        format!("{}.>", subject::result(kind, id)),
        subject::result(kind, id),
    ] {
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let event = serde_json::from_slice::<ResultEvent>(&message.payload)
                    .nats(|| format!("the result stored on {subject} does not parse"))?;
                return Ok(Some(event));
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e).nats(|| format!("looking up the result on {subject}")),
        }
    }
    Ok(None)
}

/// The results that jobs `ids` already have (for resubmissions the server dropped as
/// duplicates), each found by its subject.
pub async fn existing_results(
    js: &jetstream::Context,
    ids: &[String],
    kind: Option<&str>,
) -> Result<HashMap<String, ResultEvent>> {
    let found: Vec<Result<Option<ResultEvent>>> = futures::stream::iter(ids)
        .map(|id| find_result(js, id, kind))
        .buffered(64)
        .collect()
        .await;
    let mut results = HashMap::new();
    for (id, event) in ids.iter().zip(found) {
        if let Some(event) = event? {
            results.insert(id.clone(), event);
        }
    }
    Ok(results)
}

/// Where a job is. Serialized with its `state` as a tag: `finished`, `gone`, `running`,
/// `cancel_requested`, `queued`, `unknown`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Place {
    /// It has a result.
    Finished {
        /// Its latest result event.
        result: Box<ResultEvent>,
    },
    /// It has no stored result and will not get one: recorded as queued, but no longer in
    /// `KILN_JOBS` (its result dropped from `KILN_RESULTS` since, or the job deleted), or its
    /// final state recorded with its result no longer stored.
    Gone {
        /// The record in `KILN_STATE`.
        record: JobState,
        /// Why, in a sentence, with what to do.
        reason: String,
    },
    /// A live worker holds it.
    Running {
        /// The job's kind.
        kind: String,
        /// The worker's device (`cpu`, `cuda:0`).
        device: String,
        /// The worker's name.
        worker: String,
        /// The delivery attempt, from 1.
        attempt: u64,
        /// Held, but waiting for a compute slot.
        waiting: bool,
        /// `kiln cancel` marked it: it stops at its next checkpoint.
        cancel_requested: bool,
    },
    /// Marked cancelled, and neither finished nor running.
    CancelRequested {
        /// The record in `KILN_STATE`, where kiln submitted it: `None` for an id kiln knows
        /// nothing else of (a typo, or a job published without `kiln submit`).
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<JobState>,
    },
    /// Recorded as queued.
    Queued {
        /// The record in `KILN_STATE`.
        record: JobState,
    },
    /// No record, no result, no live worker holds it.
    Unknown,
}

/// Where job `id` is: its result (found by its subject), else the live worker holding it
/// (from the heartbeats, at most 2 s old), else cancel requested, queued (from the record
/// `kiln submit` keeps in `KILN_STATE`) or unknown. A result older than a replay recorded as
/// queued (`kiln dlq replay`) is the failed run's, not the answer: the replay is located as a
/// job not answered yet.
pub async fn locate(js: &jetstream::Context, id: &str) -> Result<Place> {
    let stored = stored_state(js, id).await;
    let queued_at = stored.as_ref().map(|(_, at)| *at);
    let record = stored.map(|(record, _)| record);
    // The answer, unless a replay was queued after it.
    let answer = async |record: Option<&JobState>| -> Result<Option<ResultEvent>> {
        Ok(find_result(js, id, None).await?.filter(|event| {
            !record.is_some_and(|r| r.phase == Phase::Queued && r.replay > event.replay)
        }))
    };
    if let Some(event) = answer(record.as_ref()).await? {
        return Ok(Place::Finished {
            result: Box::new(event),
        });
    }
    // A mark older than the job's record was for an earlier job under the id, or none.
    let cancelled = match stored_entry(js, BUCKET_CANCEL, id).await {
        Some(mark) => queued_at.is_none_or(|at| kiln_proto::cancel_applies(mark.created, at)),
        None => false,
    };
    if let Some(running) = running(js, id, cancelled, |_, _| true).await {
        // A result stored since the first look wins over a heartbeat not yet refreshed.
        if let Some(event) = answer(record.as_ref()).await? {
            return Ok(Place::Finished {
                result: Box::new(event),
            });
        }
        return Ok(running);
    }
    if cancelled {
        return Ok(Place::CancelRequested { record });
    }
    let Some(record) = record else {
        return Ok(Place::Unknown);
    };
    if record.phase != Phase::Queued {
        let reason = "its final state is recorded, but its result is no longer stored".into();
        return Ok(Place::Gone { record, reason });
    }
    let Some(reason) = left_the_queue(js, &record).await else {
        return Ok(Place::Queued { record });
    };
    // Answered, or taken, since the first look: a work queue lets go of a job only once
    // its result is stored (or its copy, routed or handed back, is queued).
    if let Some(event) = answer(Some(&record)).await? {
        return Ok(Place::Finished {
            result: Box::new(event),
        });
    }
    if let Some(running) = running(js, id, cancelled, |_, _| true).await {
        return Ok(running);
    }
    Ok(Place::Gone { record, reason })
}

/// Why job `record` (recorded as queued, not answered, held by no live worker) will not be
/// answered, when `KILN_JOBS` holds no job of its kind on any subject it can be on: its
/// class's (or every class's for `auto`, whose routed copy goes to a class), copies included.
/// A record that names the job's sequence narrows that: while the stream holds that message
/// the job is queued, and once it does not, only a copy (routed or handed back) can be it.
/// `None` while one may be it, or the stream cannot be read.
async fn left_the_queue(js: &jetstream::Context, record: &JobState) -> Option<String> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    use kiln_proto::DeviceClass;
    let jobs = js.get_stream(streams::STREAM_JOBS).await.ok()?;
    let classes: &[DeviceClass] = match record.class {
        DeviceClass::Auto => &[DeviceClass::Auto, DeviceClass::Gpu, DeviceClass::Cpu],
        class => &[class][..],
    };
    let kind = &record.kind;
    let mut filters = vec![format!("jobs.*.{kind}"), format!("jobs.*.{kind}.copy")];
    // Within a second: a user without `$JS.API.STREAM.MSG.GET.KILN_JOBS` (the secure
    // configuration's submitter) gets no reply, and is told by the subjects alone.
    if let Some(seq) = record.job_seq {
        let get =
            tokio::time::timeout(std::time::Duration::from_secs(1), jobs.get_raw_message(seq));
        match get.await {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                filters.remove(0);
            }
            _ => {}
        }
    }
    for filter in filters {
        let mut subjects = jobs.info_with_subjects(filter).await.ok()?;
        while let Some(subject) = subjects.next().await {
            let (subject, count) = subject.ok()?;
            let class = subject.split('.').nth(1).unwrap_or_default();
            if count > 0 && classes.iter().any(|c| c.to_string() == class) {
                return None;
            }
        }
    }
    let format = |at: OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let window = streams::DUPLICATE_WINDOW;
    let again = match record.at + window {
        until if until > OffsetDateTime::now_utc() => format!(
            "submit it again under another id, or under this one after {} (until {} min after \
             a submission the server drops another job under its id as a duplicate)",
            format(until),
            window.as_secs() / 60
        ),
        _ => "submit it again".to_owned(),
    };
    // Results stored after the job was queued have been dropped (`KILN_RESULTS` keeps the
    // newest within its limits): its own may have been one of them.
    let results = js
        .get_stream(STREAM_RESULTS)
        .await
        .ok()?
        .cached_info()
        .state
        .clone();
    let dropped = results.first_sequence > 1
        && (results.messages == 0 || results.first_timestamp > record.at);
    Some(match dropped {
        true => format!(
            "no longer in {jobs} and no result stored: most likely it was answered and its \
             result has since been dropped from {STREAM_RESULTS}, which keeps the newest results \
             within its size limit (`kiln init --results-max-bytes`) for 7 days{oldest}; or it \
             was deleted from {jobs}; {again}",
            jobs = streams::STREAM_JOBS,
            oldest = match results.messages {
                0 => String::new(),
                _ => format!(
                    " (the oldest kept is from {})",
                    format(results.first_timestamp)
                ),
            },
        ),
        false => format!(
            "no longer in {jobs} and never answered: the stream was purged or the job deleted, \
             and it will not run; {again}",
            jobs = streams::STREAM_JOBS,
        ),
    })
}

/// A job under `id` that a live worker holds beside the answer `answered`: one id sent as
/// two kinds is two jobs, and one may run after the other is answered; so may one of the
/// same kind sent again (its result will be refused: an id keeps its first answer). A
/// same-kind entry counts only in a heartbeat written after that answer: the worker that
/// answered lists the job until its next heartbeat, up to 2 s later.
pub async fn running_under(
    js: &jetstream::Context,
    id: &str,
    answered: &ResultEvent,
) -> Option<Place> {
    running(js, id, false, |w, j| {
        j.kind != answered.kind || w.updated_at > answered.finished_at
    })
    .await
}

/// [`Place::Running`] when a live worker's heartbeat lists a job under `id` that `keep`
/// takes (`cancelled`: marked by `kiln cancel`).
async fn running(
    js: &jetstream::Context,
    id: &str,
    cancelled: bool,
    keep: impl Fn(&kiln_proto::WorkerInfo, &kiln_proto::RunningJob) -> bool,
) -> Option<Place> {
    let workers = streams::live_workers(js).await.unwrap_or_default();
    workers.iter().find_map(|w| {
        let job = w.running.iter().find(|j| j.id == id && keep(w, j))?;
        Some(Place::Running {
            kind: job.kind.clone(),
            device: w.device.clone(),
            worker: w.name.clone(),
            attempt: job.attempt,
            waiting: job.waiting,
            cancel_requested: cancelled,
        })
    })
}

/// Cancel job `id` unless it is finished; returns where it was. Workers mirror the mark in
/// `KILN_CANCEL`: a queued job is answered `cancelled` when a worker takes it, a running one
/// stops at its next checkpoint. A finished job ([`Place::Finished`], [`Place::Gone`]) is not
/// marked: the mark lives a day and would cancel a later run of the same id, unless a live
/// worker runs the id as another kind (returned as [`Place::Running`]). An unknown id is
/// marked, in case it is still in flight (a job published without a record); a mark cancels
/// only the jobs of its id enqueued before it ([`kiln_proto::cancel_applies`]), never one
/// sent under the id later.
pub async fn cancel(js: &jetstream::Context, id: &str) -> Result<Place> {
    check_job_id(id).map_err(Error::Invalid)?;
    let mut place = locate(js, id).await?;
    // One id sent as two kinds is two jobs: one may still run after the other is answered;
    // so may a job sent again under an answered id (its result will be refused).
    let finished = match &place {
        Place::Finished { result } => Some((result.kind.clone(), Some(result.clone()))),
        Place::Gone { record, .. } => Some((record.kind.clone(), None)),
        _ => None,
    };
    if let Some((kind, answer)) = finished {
        let other = match &answer {
            Some(answer) => running_under(js, id, answer).await,
            None => running(js, id, false, |_, j| j.kind != kind).await,
        };
        match other {
            Some(other) => place = other,
            // Or queued as the other kind (its record is the id's latest).
            None => match state(js, id).await {
                Some(record) if record.phase == Phase::Queued && record.kind != kind => {
                    place = Place::Queued { record };
                }
                _ => return Ok(place),
            },
        }
    }
    let store = js
        .get_key_value(BUCKET_CANCEL)
        .await
        .nats(|| format!("opening the {BUCKET_CANCEL} bucket"))?;
    let at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let body = serde_json::json!({ "id": id, "requested_at": at });
    store
        .put(job_key(id), body.to_string().into())
        .await
        .nats(|| format!("cancelling {id}"))?;
    Ok(place)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_rule_matches_valid_job_id() {
        assert!(JOB_ID_RULE.contains(&format!("1 to {}", kiln_proto::MAX_ID_LEN)));
        assert!(check_job_id("batch-0").is_ok());
        assert!(
            check_job_id("seq-12").is_ok(),
            "kiln's own ids are looked up"
        );
        assert!(
            check_submitted_id("seq-12")
                .unwrap_err()
                .contains("kiln's own")
        );
        assert!(check_submitted_id("sequence-12").is_ok());
        for bad in [
            "",
            "a b",
            "caf\u{e9}",
            "tab\there",
            "a/b.c*",
            "wedge.",
            ".x",
            "a..b",
        ] {
            let message = check_job_id(bad).unwrap_err();
            assert!(message.contains("is not a job id"), "{message}");
        }
        let long = "x".repeat(5000);
        let message = check_job_id(&long).unwrap_err();
        assert!(
            message.contains("(5000 bytes)") && message.len() < 200,
            "{message}"
        );
    }
}
