//! Submitting jobs: [`JobSpec`]s built and checked by their kind, [`publish_all`] with
//! pipelined acknowledgements, and a [`ResultCollector`] that waits for their results.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use kiln_kernels::{JobMeta, KindEntry};
use kiln_proto::{Codec, DeviceClass, HEADER_MSG_ID, OutputMode, ResultEvent, subject};

use crate::error::{Context as _, Error, Result};

/// A job ready to publish.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The job's id, also its `Nats-Msg-Id`.
    pub id: String,
    /// `jobs.<class>.<kind>`.
    pub subject: String,
    /// The encoded job.
    pub body: Vec<u8>,
    /// How `body` is encoded.
    pub codec: Codec,
    /// What the job computes (see [`job_digest`]), recorded with its `queued` state; `None`
    /// for a job not built from its parameters here.
    pub digest: Option<String>,
}

impl JobSpec {
    /// Build a job of `kind` for `class` from JSON parameters (checked by the kind).
    pub fn new(
        kind: &KindEntry,
        class: DeviceClass,
        params: serde_json::Value,
        id: String,
        seed: u64,
        timeout_ms: Option<u64>,
        codec: Codec,
    ) -> Result<Self> {
        let meta = JobMeta {
            id: Some(id),
            seed: Some(seed),
            timeout_ms,
            output: OutputMode::Auto,
        };
        Self::build(kind, class, params, meta, codec)
    }

    /// [`JobSpec::new`] with every envelope field given; `meta.id` is required.
    pub fn build(
        kind: &KindEntry,
        class: DeviceClass,
        params: serde_json::Value,
        meta: JobMeta,
        codec: Codec,
    ) -> Result<Self> {
        let id = meta
            .id
            .clone()
            .ok_or_else(|| Error::Invalid("a job needs an id".into()))?;
        let digest = job_digest(kind.name, &params, &meta);
        let body = kind
            .encode_job(params, meta, codec)
            .map_err(|e| Error::Invalid(e.message))?;
        Ok(JobSpec {
            id,
            subject: subject::job(class, kind.name),
            body,
            codec,
            digest: Some(digest),
        })
    }
}

/// What a job computes, as the hex SHA-256 of its kind, parameters, seed, timeout and output
/// mode (not its id, class or encoding). An input object given with its digest counts by
/// that digest, not its name (with the reference's other fields, a safetensors `tensor`):
/// `--input KEY=@FILE` stores each submission's file under a name of its own, and the same
/// file sent twice is the same job. Two submissions of one id with
/// different digests are two different jobs, of which the server keeps the first.
pub fn job_digest(kind: &str, params: &serde_json::Value, meta: &JobMeta) -> String {
    use sha2::Digest as _;
    fn by_content(value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::Object(map) => {
                // An object's name gives way to its digest; the rest (a safetensors file's
                // `tensor`) still counts.
                let by_digest = matches!(
                    (map.get("object"), map.get("sha256")),
                    (Some(Value::String(_)), Some(Value::String(_)))
                );
                let fields = map.iter().filter(|(k, _)| !(by_digest && *k == "object"));
                Value::Object(
                    fields
                        .map(|(k, v)| match (by_digest && k == "sha256", v) {
                            (true, Value::String(d)) => (k.clone(), d.to_ascii_lowercase().into()),
                            _ => (k.clone(), by_content(v)),
                        })
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(by_content).collect()),
            other => other.clone(),
        }
    }
    let what = serde_json::json!({
        "kind": kind,
        "params": by_content(params),
        "seed": meta.seed.unwrap_or(0),
        "timeout_ms": meta.timeout_ms,
        "output": meta.output,
    });
    let bytes = serde_json::to_vec(&what).unwrap_or_default();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

mod published;

pub(crate) use published::unanswered;
use published::{Published, Sent};

/// Most publishes awaiting their PubAck at once.
const PUBLISH_WINDOW: usize = 1024;

/// Publish jobs with pipelined acknowledgements; fails on the first job the server refuses
/// (a full stream, for instance). Returns the ids the server dropped as duplicates (submitted
/// within its duplicate window), in submission order.
///
/// `on_stored` is called once per job the server acknowledged (stored or dropped), for
/// progress.
///
/// With `track`, each job not dropped is recorded as `queued` in `KILN_STATE` too (`kiln status
/// <id>` says so until its result is stored), once its PubAck says it was stored; a
/// duplicate's record is left as it is. The writes are pipelined the same way; the pipeline
/// benchmark publishes without them, as plain NATS clients do.
pub async fn publish_all(
    js: &jetstream::Context,
    jobs: impl IntoIterator<Item = JobSpec>,
    track: bool,
    on_stored: impl FnMut(),
) -> Result<Vec<String>> {
    publish_all_counted(js, jobs, track, on_stored).await.1
}

/// [`publish_all`], and whether any of the jobs may be in `KILN_JOBS` now, whatever it
/// returned: stored by the server (not dropped as a duplicate), or sent with no answer from
/// it (a timeout, a lost connection). A caller that stored objects for these jobs alone
/// removes them when none may be: no job will ever read them.
pub async fn publish_all_counted(
    js: &jetstream::Context,
    jobs: impl IntoIterator<Item = JobSpec>,
    track: bool,
    mut on_stored: impl FnMut(),
) -> (bool, Result<Vec<String>>) {
    let mut published = Published {
        js,
        track,
        on_stored: &mut on_stored,
        states: FuturesUnordered::new(),
        duplicates: Vec::new(),
        stored: 0,
        refused: Vec::new(),
        unacked: Vec::new(),
        unsure: HashSet::new(),
        unanswered: false,
        refusals: 0,
    };
    let result = publish_into(&mut published, jobs.into_iter().collect()).await;
    // An error before any refusal: a job not sent, or a record not written for one stored.
    let unsure = result.is_err() && published.refusals == 0;
    // (Jobs still waiting to be sent again when another error ended it may be stored too.)
    let may_run = published.stored > published.duplicates.len()
        || published.unanswered
        || !published.unacked.is_empty()
        || unsure;
    (may_run, result)
}

async fn publish_into(published: &mut Published<'_>, jobs: Vec<JobSpec>) -> Result<Vec<String>> {
    let js = published.js;
    let total = jobs.len();
    let mut pending = FuturesUnordered::new();
    for (order, mut job) in jobs.into_iter().enumerate() {
        // Once the server refuses one (a full queue), send no more: settle those on the way.
        if !published.refused.is_empty() {
            break;
        }
        // Once it stops answering (a crash, an election), settle those on the way and send
        // them again; go on only once it answers (else a dead server held a large submission
        // for one ack timeout a window, and as long again for each new send).
        if !published.unacked.is_empty() {
            while let Some((sent, ack)) = pending.next().await {
                published.settle(sent, ack).await?;
            }
            published.send_again().await?;
            if !published.refused.is_empty() {
                break;
            }
        }
        let (ack, span, headers, body) = publish_one(js, &mut job).await?;
        let sent = Sent {
            order,
            id: job.id,
            subject: job.subject,
            digest: job.digest,
            headers,
            body,
            again: false,
        };
        pending.push(async move {
            let ack = ack.await;
            drop(span);
            (sent, ack)
        });
        if pending.len() >= PUBLISH_WINDOW
            && let Some((sent, ack)) = pending.next().await
        {
            published.settle(sent, ack).await?;
        }
    }
    while let Some((sent, ack)) = pending.next().await {
        published.settle(sent, ack).await?;
    }
    published.send_again().await?;
    if !published.refused.is_empty() {
        return Err(published.refusal(total));
    }
    // A state that was not stored only makes `kiln status` less precise; the jobs are in.
    while let Some(stored) = published.states.next().await {
        if let Err(e) = stored {
            tracing::debug!(error = %e, "a queued state was not stored");
        }
    }
    let mut duplicates = published.duplicates.clone();
    duplicates.sort_unstable_by_key(|(order, _)| *order);
    Ok(duplicates.into_iter().map(|(_, id)| id).collect())
}

/// Publish one job (its id as `Nats-Msg-Id`, its trace context when tracing; its body is
/// taken): its PubAck to wait for, its span, open until then, and what was sent.
async fn publish_one(
    js: &jetstream::Context,
    job: &mut JobSpec,
) -> Result<(
    jetstream::context::PublishAckFuture,
    Option<kiln_telemetry::trace::TraceSpan>,
    HeaderMap,
    bytes::Bytes,
)> {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, job.id.as_str());
    // JSON is what a job without a Content-Type is read as: only bincode names itself,
    // and a JSON job carries one header less through the stream and to its worker.
    if job.codec != Codec::Json {
        headers.insert("Content-Type", job.codec.content_type());
    }
    // Tracing on: each job is the root of its own trace, its context in the headers.
    let span = submit_span(job);
    if let Some(span) = &span {
        span.inject(&mut headers);
    }
    let size = job.body.len();
    let body = bytes::Bytes::from(std::mem::take(&mut job.body));
    let ack = match js
        .publish_with_headers(job.subject.clone(), headers.clone(), body.clone())
        .await
    {
        Ok(ack) => ack,
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
            return Err(Error::Invalid(format!(
                "job {} is {size} bytes, over the NATS server's max_payload ({} bytes): \
                 send large inputs as objects (`kiln submit --input KEY=@FILE`, or \
                 `{{\"object\": NAME}}` after `kiln put`), give sizes and let the worker \
                 generate the inputs (`kiln kinds`), or raise max_payload in the server's \
                 configuration",
                job.id,
                js.client().server_info().max_payload
            )));
        }
        Err(e) => {
            return Err(e).nats(|| format!("publishing job {} on {}", job.id, job.subject));
        }
    };
    Ok((ack, span, headers, body))
}

/// The span of one job's publish (until its PubAck), when tracing is on.
fn submit_span(job: &JobSpec) -> Option<kiln_telemetry::trace::TraceSpan> {
    use kiln_telemetry::trace::{Context, KeyValue, SpanKind, TraceSpan};
    if !kiln_telemetry::trace::enabled() {
        return None;
    }
    TraceSpan::start(
        "kiln.submit",
        SpanKind::Producer,
        &Context::new(),
        None,
        vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", job.subject.clone()),
            KeyValue::new("kiln.job.id", job.id.clone()),
        ],
    )
}

/// Collects result events for known job ids. Subscribe before publishing, so that none
/// is missed.
pub struct ResultCollector {
    subscriber: futures::stream::SelectAll<async_nats::Subscriber>,
    /// The kind whose results these are (`None`: any kind, and no lookups by subject).
    kind: Option<String>,
    /// The client's statistics, whose count of connections says when it reconnected: results
    /// published meanwhile reached no subscriber, and are looked up in `KILN_RESULTS`.
    statistics: Arc<async_nats::Statistics>,
    /// The client's connections when the collector subscribed: a reconnection since (while
    /// the jobs were still being published, too) is looked for in `collect`.
    connects: u64,
    /// `KILN_RESULTS`, named once: a lookup per result, no stream-info request per result.
    results: async_nats::jetstream::stream::Stream<()>,
    /// The connection, whose state says how long the last lookup may take.
    client: async_nats::Client,
    /// Ids whose stored answer is an earlier job's ([`ResultCollector::answered_before`]).
    answered_before: HashSet<String>,
    /// When the collector subscribed, before any of its jobs was published: a stored answer
    /// of a job enqueued well before it is an earlier job's ([`EARLIER_BY`]).
    since: time::OffsetDateTime,
}

/// How much earlier than a collection's start a looked-up answer's `enqueued_at` (the
/// server's clock) must lie to be an earlier job's (this client's clock may be that far off;
/// an earlier job closer than the server's 10-minute duplicate window was dropped as this
/// one's duplicate, and is told at submission).
const EARLIER_BY: time::Duration = time::Duration::minutes(1);

/// Up to this many jobs, a collector subscribes to each job's own result subject, so the
/// server sends it only those results; past it, to every result of the kind (one
/// subscription, the results of other people's jobs passed over here).
const SUBSCRIBE_EACH_UP_TO: usize = 1000;

/// Longest a collector looks results up once its wait is over; with the connection down,
/// which every lookup would wait out, the shorter one (`--wait-timeout 4s` took 9 s).
const LAST_LOOK: Duration = Duration::from_secs(5);

/// How long a result heard of and not found stored is looked up again before it is taken
/// as heard (see `collect`).
const UNSTORED_PATIENCE: Duration = Duration::from_secs(5);

/// What a collection waits for, has, and tells as each result comes.
type Answered<'a, F> = (
    &'a mut HashSet<String>,
    &'a mut HashMap<String, ResultEvent>,
    &'a mut F,
);

/// A result heard of on the subscription (on `subject`), and when.
struct Heard {
    subject: String,
    event: ResultEvent,
    at: tokio::time::Instant,
}
const LAST_LOOK_DISCONNECTED: Duration = Duration::from_secs(1);

impl ResultCollector {
    /// Subscribe to the results of jobs `ids` of `kind` (every result when `kind` is `None`).
    pub async fn subscribe(
        client: &async_nats::Client,
        kind: Option<&str>,
        ids: &[String],
    ) -> Result<Self> {
        let subjects: Vec<String> = match kind {
            Some(kind) if ids.len() <= SUBSCRIBE_EACH_UP_TO => {
                ids.iter().map(|id| subject::result(kind, id)).collect()
            }
            Some(kind) => vec![subject::results_of_kind(kind)],
            None => vec!["results.>".to_owned()],
        };
        let mut subscribers = Vec::with_capacity(subjects.len());
        for subject in subjects {
            subscribers.push(
                client
                    .subscribe(subject.clone())
                    .await
                    .nats(|| format!("subscribing to {subject}"))?,
            );
        }
        // The subscriptions are in place once the server has seen them.
        client
            .flush()
            .await
            .nats(|| "subscribing to results".into())?;
        let results = async_nats::jetstream::new(client.clone())
            .get_stream_no_info(kiln_proto::streams::STREAM_RESULTS)
            .await
            .map_err(|e| Error::Invalid(format!("naming the results stream: {e}")))?;
        Ok(Self {
            subscriber: futures::stream::select_all(subscribers),
            kind: kind.map(str::to_owned),
            statistics: client.statistics(),
            connects: client.statistics().connects.load(Ordering::Relaxed),
            results,
            client: client.clone(),
            answered_before: HashSet::new(),
            since: time::OffsetDateTime::now_utc(),
        })
    }

    /// The result `KILN_RESULTS` holds on `subject`: a subscriber sees every result published,
    /// also one the stream refused because the job was answered before (a redelivery, an id
    /// used again), and the answer is the stored one. `Err` with the event as it came when
    /// nothing is stored there (yet: subscribers may hear of a result just before the stream
    /// has stored it; or the publish was refused, and the worker tries again; or it was stored
    /// and dropped for room already); the event as it came when the stream cannot be read.
    async fn stored(&self, subject: &str, came: ResultEvent) -> Result<ResultEvent, ResultEvent> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.results.get_last_raw_message_by_subject(subject).await {
            Ok(message) => match serde_json::from_slice::<ResultEvent>(&message.payload) {
                Ok(stored) if stored.id == came.id => Ok(stored),
                _ => Ok(came),
            },
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Err(came),
            Err(_) => Ok(came),
        }
    }

    /// Look the results heard of and not found stored up again (a few at a time): those found
    /// stored, and those heard [`UNSTORED_PATIENCE`] ago or more, are done. Looked up one by
    /// one as they came, each waited for about a second in turn, and a burst whose results
    /// were dropped for room held `--wait` for an hour.
    async fn settle_unstored(
        &mut self,
        unstored: &mut HashMap<String, Heard>,
        now: tokio::time::Instant,
        (ids, results, on_result): Answered<'_, impl FnMut(&ResultEvent)>,
    ) {
        let this = &*self;
        let looked: Vec<(String, Result<ResultEvent, ResultEvent>)> = futures::stream::iter(
            unstored
                .values()
                .map(|heard| (heard.subject.clone(), heard.event.clone())),
        )
        .map(|(subject, came)| async move { (came.id.clone(), this.stored(&subject, came).await) })
        .buffer_unordered(32)
        .collect()
        .await;
        let mut done = Vec::new();
        for (id, looked) in looked {
            let Some(heard) = unstored.get(&id) else {
                continue;
            };
            match looked {
                Ok(stored) => {
                    if stored.enqueued_at != heard.event.enqueued_at {
                        self.answered_before.insert(id.clone());
                    }
                    done.push(stored);
                }
                Err(came) if now >= heard.at + UNSTORED_PATIENCE => done.push(came),
                Err(_) => continue,
            }
            unstored.remove(&id);
        }
        for event in done {
            if ids.remove(&event.id) {
                on_result(&event);
                results.insert(event.id.clone(), event);
            }
        }
    }

    /// The ids collected whose stored answer is not this job's but an earlier job's under the
    /// same id (submitted before the server's duplicate window, or without a `Nats-Msg-Id`,
    /// so the server did not drop this one as a duplicate): this job ran, and its result was
    /// refused, as a job id keeps its first answer. Told by the job's submit time
    /// (`enqueued_at`), which every run of one submission shares (a redelivery's result is
    /// refused too, but it is the same job's).
    pub fn answered_before(&self) -> &HashSet<String> {
        &self.answered_before
    }

    /// Wait until every id in `ids` has a result, or `timeout` passes; returns what came (for
    /// an id answered before, the stored answer: see [`ResultCollector::answered_before`]).
    /// `on_result` sees each result as it comes. Results stored while the client was
    /// reconnecting reach no subscriber: after a reconnection, and before giving up, the ids
    /// still waited for are looked up in `KILN_RESULTS` (a server restart lost `--wait` the
    /// results stored as the workers reconnected, and it said they never came).
    pub async fn collect(
        &mut self,
        mut ids: HashSet<String>,
        timeout: Duration,
        mut on_result: impl FnMut(&ResultEvent),
    ) -> HashMap<String, ResultEvent> {
        let mut results = HashMap::new();
        // (A timeout past what an Instant can hold waits for ever: it panicked.)
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        let mut seen_connects = self.connects;
        // Once more a while after a reconnection: a worker may store its result after the
        // first look, before this client's subscriptions are back.
        let mut look_again = None;
        let mut look = tokio::time::interval(Duration::from_millis(500));
        // Results heard of and not found stored: a publish the stream refused (the worker
        // tries again, and is heard again), or one stored and dropped for room before it was
        // looked up (a small `--results-max-bytes` filled faster than it is read), which
        // never comes again: taken as heard after UNSTORED_PATIENCE (waited for for ever).
        let mut unstored: HashMap<String, Heard> = HashMap::new();
        while !ids.is_empty() {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, self.subscriber.next()) => next,
                now = look.tick() => {
                    let answered = (&mut ids, &mut results, &mut on_result);
                    self.settle_unstored(&mut unstored, now, answered).await;
                    let connects = self.statistics.connects.load(Ordering::Relaxed);
                    let again = look_again.is_some_and(|at| now >= at);
                    if connects != seen_connects || again {
                        look_again = (connects != seen_connects)
                            .then(|| now + Duration::from_secs(3));
                        seen_connects = connects;
                        let looking = self.look_up(&mut ids, &mut results, &mut on_result);
                        let _ = tokio::time::timeout_at(deadline, looking).await;
                    }
                    continue;
                }
            };
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => {
                    self.last_look((&mut ids, &mut results, &mut on_result))
                        .await;
                    break;
                }
            };
            let Ok(event) = serde_json::from_slice::<ResultEvent>(&message.payload) else {
                continue;
            };
            if !ids.contains(&event.id) {
                continue;
            }
            let enqueued_at = event.enqueued_at;
            let event = match self.stored(message.subject.as_str(), event).await {
                Ok(stored) => stored,
                Err(came) => {
                    let heard = Heard {
                        subject: message.subject.to_string(),
                        event: came,
                        at: tokio::time::Instant::now(),
                    };
                    unstored.insert(heard.event.id.clone(), heard);
                    continue;
                }
            };
            if event.enqueued_at != enqueued_at {
                self.answered_before.insert(event.id.clone());
            }
            if ids.remove(&event.id) {
                on_result(&event);
                results.insert(event.id.clone(), event);
            }
        }
        results
    }

    /// The wait is over: look the answers still waited for up once more, a few seconds at
    /// most past the deadline (a server that cannot be reached would hold every lookup for its
    /// request timeout).
    async fn last_look(
        &mut self,
        (ids, results, on_result): Answered<'_, impl FnMut(&ResultEvent)>,
    ) {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let within = if connected {
            LAST_LOOK
        } else {
            LAST_LOOK_DISCONNECTED
        };
        let _ = tokio::time::timeout(within, self.look_up(ids, results, on_result)).await;
    }

    /// Look the answers of `ids` up in `KILN_RESULTS` (a few at a time), moving those found
    /// to `results`.
    async fn look_up(
        &mut self,
        ids: &mut HashSet<String>,
        results: &mut HashMap<String, ResultEvent>,
        on_result: &mut impl FnMut(&ResultEvent),
    ) {
        let Some(kind) = self.kind.clone() else {
            return;
        };
        let stream = &self.results;
        let found: Vec<ResultEvent> = futures::stream::iter(ids.iter().cloned())
            .map(|id| {
                let subject = subject::result(&kind, &id);
                async move {
                    let message = stream
                        .get_last_raw_message_by_subject(&subject)
                        .await
                        .ok()?;
                    let event = serde_json::from_slice::<ResultEvent>(&message.payload).ok()?;
                    (event.id == id).then_some(event)
                }
            })
            .buffer_unordered(32)
            .filter_map(|event| async move { event })
            .collect()
            .await;
        // An answer found so, of a job enqueued well before this collection began, is an
        // earlier job's under the same id: this one's result was refused unheard (a
        // reconnection), or never published (a redelivery that found the answer stored). It
        // was printed and written to --output as this job's.
        for event in found {
            if event.enqueued_at < self.since - EARLIER_BY {
                self.answered_before.insert(event.id.clone());
            }
            if ids.remove(&event.id) {
                on_result(&event);
                results.insert(event.id.clone(), event);
            }
        }
    }
}

/// A dtype only GPUs compute would come back refused from a CPU worker: an error now, before
/// the job is sent.
pub fn check_class(kind: &KindEntry, class: DeviceClass, params: &serde_json::Value) -> Result<()> {
    if class == DeviceClass::Cpu
        && kind
            .check_params(params.clone(), &kiln_proto::Limits::UNLIMITED)
            .is_ok_and(|plan| plan.gpu_only)
    {
        return Err(Error::Invalid(format!(
            "{} with dtype {} runs on GPU workers only (CPU workers compute f32): submit it with \
             --device gpu or --device auto",
            kind.name, params["dtype"]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input object counts by its digest and the entry it picks, not by its name.
    #[test]
    fn a_digest_counts_objects_by_content_and_entry() {
        let meta = JobMeta {
            id: None,
            seed: Some(1),
            timeout_ms: None,
            output: OutputMode::Auto,
        };
        let digest = |params: serde_json::Value| job_digest("matmul", &params, &meta);
        let object = |name: &str, sha: &str, tensor: &str| {
            serde_json::json!({
                "a": {"object": name, "sha256": sha, "tensor": tensor},
                "b": [[1.0]],
            })
        };
        let first = digest(object("inputs/x/1/a", "AB12", "layer1"));
        assert_eq!(first, digest(object("inputs/x/2/a", "ab12", "layer1")));
        assert_ne!(first, digest(object("inputs/x/2/a", "ab12", "layer2")));
        assert_ne!(first, digest(object("inputs/x/1/a", "cd34", "layer1")));
        // Without a digest the name is what is known of it.
        let named = |name: &str| digest(serde_json::json!({"a": {"object": name}}));
        assert_ne!(named("m1"), named("m2"));
        let other_seed = JobMeta {
            seed: Some(2),
            ..meta.clone()
        };
        let n4 = serde_json::json!({"n": 4});
        assert_ne!(
            job_digest("matmul", &n4, &meta),
            job_digest("matmul", &n4, &other_seed)
        );
    }
}
