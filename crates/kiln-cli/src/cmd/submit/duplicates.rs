//! Jobs the server dropped as duplicates of earlier submissions under their ids: which of
//! those earlier jobs are this one (the same kind and digest), which are not or cannot be
//! told to be, and which will never be answered.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_nats::jetstream;
use futures::StreamExt as _;
use kiln_proto::ResultEvent;

/// The duplicates whose earlier submission was of another kind or computed something else
/// (by its `queued` record, else by its result, either made within the duplicate window;
/// `digests` are this submission's, by id), taken out of `duplicates` and reported: the
/// server dropped these jobs for good, since kiln publishes the job id as `Nats-Msg-Id`,
/// and the result under their ids, if any, is the earlier job's. Where neither is found
/// (the earlier one was published without a record; its record is looked for again a
/// second later, in case it is not stored yet), or its record has no digest, nothing says
/// what it computed: those are taken out and reported too, since the result under the
/// id may be for other inputs.
pub(super) async fn taken(
    js: &jetstream::Context,
    kind: &str,
    duplicates: &mut Vec<String>,
    digests: &HashMap<String, String>,
) -> HashSet<String> {
    let mut earlier: Vec<Option<Earlier>> = futures::stream::iter(duplicates.iter())
        .map(|id| earlier_job(js, id))
        .buffered(64)
        .collect()
        .await;
    // A `kiln submit` of the same id a moment before this one writes its record just
    // after its job is stored: look once more for those not found.
    if earlier.iter().any(Option::is_none) {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        for (id, earlier) in duplicates.iter().zip(earlier.iter_mut()) {
            if earlier.is_none() {
                *earlier = earlier_job(js, id).await;
            }
        }
    }
    let mut not_ours = NotOurs::default();
    let mut others = Vec::new();
    for (id, earlier) in std::mem::take(duplicates).into_iter().zip(earlier) {
        let ours = digests.get(&id);
        match earlier {
            Some(earlier) if earlier.kind != kind => {
                not_ours.by_kind.entry(earlier.kind).or_default().push(id)
            }
            Some(Earlier {
                digest: Some(digest),
                ..
            }) if ours.is_some_and(|ours| *ours != digest) => not_ours.other_params.push(id),
            Some(Earlier {
                digest: Some(_), ..
            }) => others.push(id),
            // Nothing says what the earlier job computed: its result may be another's.
            _ if ours.is_some() => not_ours.unconfirmed.push(id),
            _ => others.push(id),
        }
    }
    *duplicates = others;
    not_ours.report(kind);
    not_ours
        .by_kind
        .into_values()
        .flatten()
        .chain(not_ours.other_params)
        .chain(not_ours.unconfirmed)
        .collect()
}

/// Duplicates whose earlier job is not, or cannot be told to be, this submission's.
#[derive(Default)]
struct NotOurs {
    /// By the earlier job's kind, where it is not this one's.
    by_kind: BTreeMap<String, Vec<String>>,
    /// Of this kind, computing something else.
    other_params: Vec<String>,
    /// Of this kind, with no record of what it computes.
    unconfirmed: Vec<String>,
}

impl NotOurs {
    /// Say on stderr why each will not run (this submission's jobs are of `kind`).
    fn report(&self, kind: &str) {
        let minutes = kiln_proto::streams::DUPLICATE_WINDOW.as_secs() / 60;
        let named = |ids: &[String]| match ids {
            [id] => (format!("job id {id} was"), "it"),
            ids => (
                format!("job ids {} were", crate::cmd::list_ids(ids)),
                "them",
            ),
        };
        if !self.unconfirmed.is_empty() {
            let (ids, them) = named(&self.unconfirmed);
            eprintln!(
                "kiln: {ids} submitted within the last {minutes} min by a client whose record \
                 of what its job computes kiln cannot compare with this one's (a plain NATS \
                 publish keeps none, the Python client a digest of its own), or replayed from \
                 the dead-letter queue: the server dropped this one as its \
                 duplicate (the job id is the Nats-Msg-Id), so this one will not run, and kiln \
                 cannot tell whether the result under the id is for the same inputs; `kiln \
                 result <id>` shows it, or submit {them} under another id"
            );
        }
        if !self.other_params.is_empty() {
            let (ids, them) = named(&self.other_params);
            eprintln!(
                "kiln: {ids} submitted within the last {minutes} min with other parameters \
                 (inputs, seed, timeout or output): the server kept that job and dropped this \
                 one as its duplicate (the job id is the Nats-Msg-Id), so this one will not run \
                 and the result under the id is the earlier job's; submit {them} under another \
                 id"
            );
        }
        for (earlier, ids) in &self.by_kind {
            // Answered under `unknown`: a kind the worker that took it did not run.
            let (job, jobs) = match earlier.as_str() {
                "unknown" => (
                    "a job of a kind the worker did not know".to_owned(),
                    "jobs of a kind the worker did not know".to_owned(),
                ),
                earlier => (format!("a {earlier} job"), format!("{earlier} jobs")),
            };
            let said = match ids.as_slice() {
                [id] => format!(
                    "job id {id} was submitted as {job} within the last {minutes} min: the \
                     server dropped this {kind} job as its duplicate (the job id is its \
                     Nats-Msg-Id) and it will not run; submit it under another id"
                ),
                _ => format!(
                    "job ids {} were submitted as {jobs} within the last {minutes} min: the \
                     server dropped these {kind} jobs as their duplicates (the job id is the \
                     Nats-Msg-Id) and they will not run; submit them under other ids",
                    crate::cmd::list_ids(ids)
                ),
            };
            eprintln!("kiln: {said}");
        }
    }
}

/// The duplicates without a result whose earlier submission will never be answered
/// ([`Place::Gone`](kiln_client::jobs::Place::Gone): no longer in `KILN_JOBS`), each said
/// on stderr; the others are waited for.
pub(super) async fn gone(
    js: &jetstream::Context,
    duplicates: &[String],
    results: &HashMap<String, ResultEvent>,
) -> HashSet<String> {
    use kiln_client::jobs::{Place, locate};
    let unanswered: Vec<&String> = duplicates
        .iter()
        .filter(|id| !results.contains_key(*id))
        .collect();
    let places: Vec<_> = futures::stream::iter(&unanswered)
        .map(|id| locate(js, id))
        .buffered(64)
        .collect()
        .await;
    let mut gone = HashSet::new();
    for (id, place) in unanswered.into_iter().zip(places) {
        if let Ok(Place::Gone { reason, .. }) = place {
            eprintln!("kiln: the earlier job {id} will not be answered: {reason}");
            gone.insert(id.clone());
        }
    }
    if gone.len() < duplicates.len() - results.len() {
        eprintln!(
            "waiting for the other {}, queued or running since the earlier submission",
            duplicates.len() - results.len() - gone.len()
        );
    }
    gone
}

/// What is known of the earlier submission of a duplicate's id.
struct Earlier {
    kind: String,
    /// What it computes, when its `queued` record says.
    digest: Option<String>,
}

/// The kind job `id` was submitted as within the duplicate window, and what it computes: its
/// `queued` record's, else its result's (`None` when neither was made in the window).
async fn earlier_job(js: &jetstream::Context, id: &str) -> Option<Earlier> {
    // A minute's grace for clocks: the server's window runs from when it stored the job.
    let window = kiln_proto::streams::DUPLICATE_WINDOW + std::time::Duration::from_secs(60);
    let recent =
        |at: time::OffsetDateTime| (time::OffsetDateTime::now_utc() - at).unsigned_abs() <= window;
    match kiln_client::jobs::state(js, id).await {
        Some(record) if recent(record.at) => Some(Earlier {
            kind: record.kind,
            digest: record.digest,
        }),
        _ => match kiln_client::jobs::find_result(js, id, None).await {
            Ok(Some(event)) if recent(event.enqueued_at) => Some(Earlier {
                kind: event.kind,
                digest: None,
            }),
            _ => None,
        },
    }
}
