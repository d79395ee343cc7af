//! The aggregator's Prometheus view: counters and histograms from each counted result,
//! throughput per snapshot interval, the GPU-vs-CPU speedup; and, read every 2 s, each
//! consumer's backlog, the dead letters and the live workers per class.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use kiln_proto::streams::{self, CONSUMER_AGGREGATOR, STREAM_DLQ, STREAM_JOBS, STREAM_RESULTS};
use kiln_proto::{DeviceClass, Status};
use kiln_telemetry::{
    AggregatorMetrics, ClassLabels, ConsumerLabels, FailureLabels, JobLabels, KindClassLabels,
    SizeLabels,
};

use crate::fold::ResultHead;

/// Sum and count of compute times, for a mean.
#[derive(Debug, Default, Clone, Copy)]
struct Mean {
    sum_ms: f64,
    count: u64,
}

impl Mean {
    fn add(&mut self, ms: f64) {
        self.sum_ms += ms;
        self.count += 1;
    }

    fn get(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }
}

/// Feeds [`AggregatorMetrics`] from the fold loop.
#[derive(Debug, Default)]
pub(crate) struct Exporter {
    metrics: AggregatorMetrics,
    /// Mean compute time of succeeded jobs by (kind, size bucket): [gpu, cpu].
    compute: HashMap<(String, String), [Mean; 2]>,
    /// Jobs counted since the last tick, by (kind, class).
    window: HashMap<(String, String), u64>,
    /// Jobs folded since the last snapshot stored, counted when the next is.
    pending: Vec<ResultHead>,
    last_tick: Option<Instant>,
}

fn status(status: Status) -> &'static str {
    match status {
        Status::Succeeded => "succeeded",
        Status::Failed => "failed",
    }
}

impl Exporter {
    pub(crate) fn new(metrics: AggregatorMetrics) -> Self {
        Exporter {
            metrics,
            ..Exporter::default()
        }
    }

    /// A result counted for the first time, in the Prometheus counters once the snapshot
    /// that counts it is stored ([`Exporter::tick`]). An aggregator that was cut off (paused,
    /// partitioned) while another took over finds, at its next snapshot, that it is no longer
    /// the one counting: what it folded meanwhile is the other's to count ([`Exporter::discard`]),
    /// or `sum(kiln_jobs_total)` over the two counted those jobs twice.
    pub(crate) fn counted(&mut self, event: ResultHead) {
        self.pending.push(event);
    }

    /// Forget the results folded since the last snapshot stored.
    pub(crate) fn discard(&mut self) {
        self.pending.clear();
    }

    fn count(&mut self, event: &ResultHead) {
        let class = event.class.as_str();
        let kc = KindClassLabels {
            kind: event.kind.clone(),
            class: class.to_owned(),
        };
        let m = &self.metrics;
        m.jobs
            .get_or_create(&JobLabels {
                kind: event.kind.clone(),
                class: class.to_owned(),
                status: status(event.status).to_owned(),
            })
            .inc();
        if let Some(error) = &event.error {
            m.failures
                .get_or_create(&FailureLabels {
                    kind: event.kind.clone(),
                    class: class.to_owned(),
                    error: error.kind.to_string(),
                })
                .inc();
        }
        m.queue_seconds
            .get_or_create(&kc)
            .observe(seconds(event.queue_ms));
        // Succeeded jobs only, as in the snapshots (see `Fold::compute`).
        if event.status == Status::Succeeded {
            m.compute_seconds
                .get_or_create(&kc)
                .observe(seconds(event.compute_ms));
        }
        m.total_seconds
            .get_or_create(&kc)
            .observe(seconds(event.total_ms));
        if let Some(predicted) = event
            .routing
            .as_ref()
            .and_then(kiln_proto::Routing::predicted_ms)
            && predicted.is_finite()
        {
            m.prediction_error_seconds
                .get_or_create(&kc)
                .observe(seconds((predicted - event.total_ms).abs()));
        }
        *self
            .window
            .entry((event.kind.clone(), class.to_owned()))
            .or_default() += 1;

        let slot = match event.class {
            DeviceClass::Gpu => 0,
            DeviceClass::Cpu => 1,
            DeviceClass::Auto => return,
        };
        if event.status != Status::Succeeded {
            return;
        }
        let size = kiln_telemetry::size_bucket(event.flops);
        let means = self
            .compute
            .entry((event.kind.clone(), size.clone()))
            .or_default();
        means[slot].add(event.compute_ms);
        if let (Some(gpu), Some(cpu)) = (means[0].get(), means[1].get())
            && gpu > 0.0
        {
            m.speedup
                .get_or_create(&SizeLabels {
                    kind: event.kind.clone(),
                    size,
                })
                .set(cpu / gpu);
        }
    }

    /// A result whose job was already counted.
    /// `count` results were dropped from `KILN_RESULTS` before any aggregator read them:
    /// counted in `kiln_results_dropped_unread_total`, and said, since the job counts miss
    /// them for good.
    pub(crate) fn dropped_unread(&self, count: u64) {
        if count == 0 {
            return;
        }
        self.metrics.dropped_unread.inc_by(count);
        tracing::warn!(
            count,
            "results were dropped from KILN_RESULTS (its age or size limit) before any \
             aggregator read them: the job counts miss them; keep an aggregator running, or \
             raise `kiln init --results-max-bytes`"
        );
    }

    pub(crate) fn duplicate(&self, event: &ResultHead) {
        self.metrics
            .duplicates
            .get_or_create(&KindClassLabels {
                kind: event.kind.clone(),
                class: event.class.to_string(),
            })
            .inc();
    }

    /// End of a snapshot interval: set each (kind, class)'s throughput over it.
    pub(crate) fn tick(&mut self) {
        for event in std::mem::take(&mut self.pending) {
            self.count(&event);
        }
        let now = Instant::now();
        let Some(last) = self.last_tick.replace(now) else {
            self.window.values_mut().for_each(|n| *n = 0);
            return;
        };
        let elapsed = (now - last).as_secs_f64();
        if elapsed <= 0.0 {
            return;
        }
        for ((kind, class), count) in &mut self.window {
            self.metrics
                .throughput
                .get_or_create(&KindClassLabels {
                    kind: kind.clone(),
                    class: class.clone(),
                })
                .set(*count as f64 / elapsed);
            *count = 0;
        }
    }
}

fn seconds(ms: f64) -> f64 {
    if ms.is_finite() {
        ms.max(0.0) / 1000.0
    } else {
        0.0
    }
}

/// How often consumers' backlogs, the dead letters and the live workers are read.
const BACKLOG_EVERY: Duration = Duration::from_secs(2);

/// Keep the consumer, dead-letter and live-worker gauges current until dropped.
pub(crate) struct BacklogSampler(tokio::task::JoinHandle<()>);

impl Drop for BacklogSampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl BacklogSampler {
    pub(crate) fn start(js: jetstream::Context, metrics: AggregatorMetrics) -> Self {
        BacklogSampler(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(BACKLOG_EVERY);
            loop {
                ticker.tick().await;
                sample(&js, &metrics).await;
                sample_dead_letters(&js, &metrics).await;
                sample_workers(&js, &metrics).await;
            }
        }))
    }
}

async fn sample(js: &jetstream::Context, metrics: &AggregatorMetrics) {
    let consumers = [
        (
            STREAM_JOBS,
            DeviceClass::Gpu.consumer(),
            Some(DeviceClass::Gpu),
        ),
        (
            STREAM_JOBS,
            DeviceClass::Cpu.consumer(),
            Some(DeviceClass::Cpu),
        ),
        (
            STREAM_JOBS,
            DeviceClass::Auto.consumer(),
            Some(DeviceClass::Auto),
        ),
        (STREAM_RESULTS, CONSUMER_AGGREGATOR, None),
    ];
    for (stream, consumer, class) in consumers {
        let Ok(stream) = js.get_stream(stream).await else {
            continue;
        };
        let Ok(info) = stream.consumer_info(consumer).await else {
            continue;
        };
        let labels = ConsumerLabels {
            consumer: consumer.to_owned(),
        };
        let pending = info.num_pending as i64;
        let in_flight = info.num_ack_pending as i64;
        metrics.consumer_pending.get_or_create(&labels).set(pending);
        metrics
            .consumer_ack_pending
            .get_or_create(&labels)
            .set(in_flight);
        if let Some(class) = class {
            metrics
                .backlog
                .get_or_create(&ClassLabels {
                    class: class.to_string(),
                })
                .set(pending + in_flight);
        }
    }
}

/// `kiln_dead_letters`: the messages in `KILN_DLQ`. Left as it was when the stream cannot
/// be read (absent until it was).
async fn sample_dead_letters(js: &jetstream::Context, metrics: &AggregatorMetrics) {
    let Ok(mut stream) = js.get_stream(STREAM_DLQ).await else {
        return;
    };
    if let Ok(info) = stream.info().await {
        metrics.set_dead_letters(info.state.messages);
    }
}

/// `kiln_workers_live{class}`: the workers whose heartbeat has not expired, counted as
/// `kiln status` lists them; `gpu` and `cpu` are always present (0 when none), so that an
/// alert can compare a class's backlog with its workers. Left as it was when the bucket
/// cannot be read.
async fn sample_workers(js: &jetstream::Context, metrics: &AggregatorMetrics) {
    let Ok(workers) = streams::live_workers(js).await else {
        return;
    };
    for class in [DeviceClass::Gpu, DeviceClass::Cpu] {
        let live = workers.iter().filter(|w| w.class == class).count();
        metrics
            .workers_live
            .get_or_create(&ClassLabels {
                class: class.to_string(),
            })
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }
}
