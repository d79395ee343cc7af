//! A job's spans on the worker: `kiln.job` (from enqueue to ack, a child of the submitter's or
//! scheduler's span when the job carries `traceparent`, else the root of a new trace), with
//! `kiln.queue_wait`, `kiln.compute` and `kiln.publish_result` under it. Nothing is created
//! when tracing is off.

use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use kiln_proto::{DeviceClass, JobError};
use kiln_telemetry::trace::{self, KeyValue, SpanKind, TraceSpan};
use time::OffsetDateTime;

use crate::config::WorkerConfig;

pub(crate) struct JobTrace {
    job: TraceSpan,
}

impl JobTrace {
    /// Start the job's span when this message was stored (`published`; for a routed copy the
    /// copy's time, inside the scheduler's `kiln.route` span, which covers the time before) and
    /// record its wait in the queue; `None` when tracing is off.
    pub(crate) fn start(
        message: &jetstream::Message,
        kind: &str,
        class: DeviceClass,
        attempt: u64,
        published: OffsetDateTime,
        started_at: OffsetDateTime,
        config: &WorkerConfig,
    ) -> Option<Self> {
        if !trace::enabled() {
            return None;
        }
        let parent = trace::extract(message.headers.as_ref());
        let enqueued = SystemTime::from(published);
        let job = TraceSpan::start(
            "kiln.job",
            SpanKind::Consumer,
            &parent,
            Some(enqueued),
            vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", message.subject.to_string()),
                KeyValue::new("kiln.job.kind", kind.to_owned()),
                KeyValue::new("kiln.job.class", class.to_string()),
                KeyValue::new("kiln.job.attempt", attempt as i64),
                KeyValue::new("kiln.worker", config.name.clone()),
                KeyValue::new("kiln.device", config.device.to_string()),
            ],
        )?;
        job.record(
            "kiln.queue_wait",
            enqueued,
            SystemTime::from(started_at).max(enqueued),
            vec![],
        );
        Some(JobTrace { job })
    }

    pub(crate) fn id(&self, id: &str) {
        self.job
            .set_attribute(KeyValue::new("kiln.job.id", id.to_owned()));
    }

    /// Record the compute that just ended, `compute_ms` long.
    pub(crate) fn compute(&self, compute_ms: f64, result: &Result<serde_json::Value, JobError>) {
        let end = SystemTime::now();
        let start = end
            .checked_sub(Duration::from_secs_f64(compute_ms.max(0.0) / 1000.0))
            .unwrap_or(end);
        let mut attributes = vec![KeyValue::new("kiln.compute_ms", compute_ms)];
        if let Err(e) = result {
            attributes.push(KeyValue::new("kiln.error.kind", e.kind.to_string()));
        }
        self.job.record("kiln.compute", start, end, attributes);
    }

    /// The span of the result's publish (until its PubAck); the result carries its context.
    pub(crate) fn publish(&self, subject: &str) -> TraceSpan {
        self.job.child(
            "kiln.publish_result",
            SpanKind::Producer,
            None,
            vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.destination.name", subject.to_owned()),
            ],
        )
    }

    /// How the job ended on this delivery: `succeeded`, `failed`, `retried` or `handed_back`.
    pub(crate) fn outcome(&self, status: &str, error: Option<&JobError>) {
        self.job
            .set_attribute(KeyValue::new("kiln.job.status", status.to_owned()));
        if let Some(error) = error {
            self.job.error(error.to_string());
        }
    }
}
