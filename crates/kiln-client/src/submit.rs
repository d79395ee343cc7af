//! Submitting jobs: [`JobSpec`]s built and checked by their kind, [`publish_all`] with
//! pipelined acknowledgements, and a [`ResultCollector`] that waits for their results.

use std::collections::HashSet;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use kiln_kernels::{JobMeta, KindEntry};
use kiln_proto::{Codec, DeviceClass, HEADER_MSG_ID, OutputMode, subject};

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

mod collect;
mod published;

pub use collect::ResultCollector;
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
