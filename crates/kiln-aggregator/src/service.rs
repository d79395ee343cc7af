//! The aggregator service: consume results, fold, snapshot on an interval, then ack.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer, pull};
use bytes::Bytes;
use futures::StreamExt as _;
use kiln_proto::Topology;
use kiln_proto::streams::{self, CONSUMER_AGGREGATOR, STREAM_RESULTS};
use time::OffsetDateTime;

use crate::acks::Acks;
use crate::error::{Error, Result};
use crate::fold::{Folds, ResultHead};
use crate::prom::{BacklogSampler, Exporter};
use crate::snapshots::{Last, last_message, store};
use kiln_telemetry::trace::{self, KeyValue, SpanKind, TraceSpan};

/// The `kiln aggregator` settings.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// How often changed metrics are published (and folded results acked).
    pub interval: Duration,
    /// Stream sizes and replicas, for the streams and consumers it creates if missing.
    pub topology: Topology,
    /// Prometheus metrics (register them to serve them).
    pub metrics: kiln_telemetry::AggregatorMetrics,
    /// Readiness for `/readyz`.
    pub health: kiln_telemetry::Health,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            topology: Topology::default(),
            metrics: kiln_telemetry::AggregatorMetrics::default(),
            health: kiln_telemetry::Health::default(),
        }
    }
}

/// Fold result events until `shutdown` resolves; a last snapshot is published on the way out.
///
/// One aggregator counts at a time. One that finds another reading results (a pull request
/// of its waiting on the consumer) stands by until that one stops, then carries on from the
/// snapshots it left. Every snapshot is stored on the condition that the last one of its
/// subject is the one this aggregator read or wrote; an aggregator whose snapshot is refused
/// so (two started at once, or one was cut off long enough for another to take over) stops
/// counting and stands by: two counting at once each stored their own share, and whichever
/// stored last erased the other's counts.
pub async fn run(
    client: async_nats::Client,
    config: AggregatorConfig,
    shutdown: impl Future<Output = impl Sized>,
) -> Result<()> {
    config.health.watch(&client);
    let js = jetstream::new(client);
    streams::ensure_all(&js, &config.topology).await?;
    let _backlog = BacklogSampler::start(js.clone(), config.metrics.clone());
    let mut exporter = Exporter::new(config.metrics.clone());
    // This run's name on its snapshots ([`HEADER_AGGREGATOR`]).
    let instance = kiln_proto::new_job_id();
    tokio::pin!(shutdown);
    // At start, no wait when no other reads results; after standing down, three quiet looks:
    // the other's pull request may be between two waits at the first.
    let mut patient = false;
    loop {
        if !stand_by(&js, &config.health, patient, &mut shutdown).await {
            return Ok(());
        }
        let (folds, sequences, mut results, acks) = resume(&js).await?;
        let mut aggregator = Aggregator {
            js: js.clone(),
            folds,
            sequences,
            acks,
            spans: Vec::new(),
            exporter,
            instance: instance.clone(),
        };
        config.health.serving();
        match aggregator
            .fold_until(&mut results, config.interval, &mut shutdown)
            .await
        {
            Ended::Stopped => {
                config.health.stopping();
                return aggregator.stop().await;
            }
            Ended::Lost(last_error) => {
                config.health.stopping();
                aggregator.stop().await?;
                // An aggregator that stopped counting must not look like one told to stop: a
                // supervisor restarting it on failure only would leave results uncounted.
                return Err(Error::Read {
                    what: "result events",
                    message: format!(
                        "the {CONSUMER_AGGREGATOR} consumer stopped delivering them \
                         ({last_error}); was it deleted? `kiln init` makes it again"
                    ),
                });
            }
            Ended::Superseded(subject) => {
                // What it folded since its last snapshot is the other's to count.
                aggregator.exporter.discard();
                tracing::warn!(
                    %subject,
                    "another aggregator stored a snapshot this one did not know of: two were \
                     counting; this one stops and stands by (the results it held unacked go to \
                     the other)"
                );
                config.health.standing_by();
                exporter = aggregator.exporter;
                patient = true;
            }
        }
    }
}

/// How long each of the aggregator's pull requests waits on the consumer.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// How often a standby aggregator looks at the consumer, and how many looks in a row must
/// find no other aggregator's pull request waiting before it takes over.
const STANDBY_LOOK_EVERY: Duration = Duration::from_secs(1);
const STANDBY_QUIET_LOOKS: u32 = 3;

/// Wait while another aggregator reads results: its pull requests wait on the consumer for
/// as long as it runs, and the server drops them when its connection goes. `false` when
/// `shutdown` came first. Unless `patient`, an aggregator that finds none at once starts at
/// once; a patient one waits for [`STANDBY_QUIET_LOOKS`] looks in a row that find none.
async fn stand_by(
    js: &jetstream::Context,
    health: &kiln_telemetry::Health,
    patient: bool,
    shutdown: &mut (impl Future + Unpin),
) -> bool {
    let mut quiet = 0;
    let mut standing_by = patient;
    loop {
        let waiting = async {
            let stream = js.get_stream(STREAM_RESULTS).await.ok()?;
            let info = stream.consumer_info(CONSUMER_AGGREGATOR).await.ok()?;
            Some(info.num_waiting)
        }
        .await;
        match waiting {
            Some(0) | None if !standing_by => return true,
            Some(0) => {
                quiet += 1;
                if quiet >= STANDBY_QUIET_LOOKS {
                    tracing::info!("the other aggregator stopped reading results; taking over");
                    return true;
                }
            }
            Some(_) | None => {
                quiet = 0;
                if !standing_by {
                    tracing::info!(
                        "another aggregator is reading results: standing by until it stops"
                    );
                    health.standing_by();
                    standing_by = true;
                }
            }
        }
        tokio::select! {
            _ = &mut *shutdown => return false,
            _ = tokio::time::sleep(STANDBY_LOOK_EVERY) => {}
        }
    }
}

/// The folds as the latest snapshots left them (with each snapshot subject's last sequence)
/// and the consumer opened where it stands, asked again while JetStream does not answer (a
/// cluster node just restarted, a stream leader being elected).
async fn resume(js: &jetstream::Context) -> Result<(Folds, Sequences, Results, Acks)> {
    streams::patiently("resume from the stored state", || async {
        let (mut folds, sequences) = restore(js).await?;
        let (results, acks) = Results::open(js, &mut folds).await?;
        Ok((folds, sequences, results, acks))
    })
    .await
}

/// The last stored sequence of each snapshot subject: the condition of its next snapshot.
pub(crate) type Sequences = HashMap<String, u64>;

/// Folds as the latest snapshots in `KILN_METRICS` left them.
async fn restore(js: &jetstream::Context) -> Result<(Folds, Sequences)> {
    let mut folds = Folds::default();
    let stored = streams::latest_metrics_stored(js)
        .await
        .map_err(|message| Error::Read {
            what: "the latest metrics snapshots",
            message,
        })?;
    let mut sequences = Sequences::new();
    for stored in &stored {
        sequences.insert(stored.subject.clone(), stored.sequence);
        match &stored.snapshot {
            Some(snapshot) => folds.restore(snapshot),
            None => tracing::warn!(
                subject = %stored.subject,
                sequence = stored.sequence,
                "the last message there is no metrics snapshot: the counts it held are lost, and \
                 counting goes on from here"
            ),
        }
    }
    tracing::info!(
        restored = stored.len(),
        "aggregator restored its state from KILN_METRICS"
    );
    Ok((folds, sequences))
}

/// The results stream and the aggregator's messages from it.
struct Results {
    stream: jetstream::stream::Stream,
    messages: jetstream::consumer::pull::Stream,
}

impl Results {
    /// Open the aggregator's consumer, telling `folds` where it stands in the stream; with
    /// how it acks, from the consumer as it is on the server.
    async fn open(js: &jetstream::Context, folds: &mut Folds) -> Result<(Self, Acks)> {
        let mut stream = js
            .get_stream(STREAM_RESULTS)
            .await
            .map_err(|e| read_error("the results stream", e))?;
        let last_sequence = stream
            .info()
            .await
            .map_err(|e| read_error("the results stream", e))?
            .state
            .last_sequence;
        let mut consumer: PullConsumer = stream
            .get_consumer(CONSUMER_AGGREGATOR)
            .await
            .map_err(|e| read_error("the aggregator consumer", e))?;
        let info = consumer
            .info()
            .await
            .map_err(|e| read_error("the aggregator consumer", e))?;
        folds.start(info.ack_floor.stream_sequence, last_sequence);
        folds.owed_through(info.delivered.stream_sequence.min(last_sequence));
        let delivered = (
            info.delivered.consumer_sequence,
            info.delivered.stream_sequence,
        );
        let acks = Acks::new(info.config.ack_policy, delivered);
        tracing::info!(
            cumulative = acks.cumulative(),
            "aggregator acks {}",
            match acks.cumulative() {
                true => "once per snapshot, up to the results it accounted for",
                false => "each result (its consumer has explicit acks)",
            }
        );
        // Pull requests that expire in seconds, not the client's 30: a standby aggregator
        // takes over once no request of another waits on the consumer, and a request of one
        // that died (or stood down) waits until it expires.
        let messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| read_error("result events", e))?;
        Ok((Results { stream, messages }, acks))
    }
}

/// How a stretch of folding ended.
enum Ended {
    /// Shutdown.
    Stopped,
    /// The results stopped coming (the consumer was deleted), with the last error read.
    Lost(String),
    /// Another aggregator stored a snapshot of this subject: stand by.
    Superseded(String),
}

/// An aggregator at work: its folds, and what waits for the next snapshot.
struct Aggregator {
    js: jetstream::Context,
    folds: Folds,
    /// The last sequence of each snapshot subject this aggregator read or stored.
    sequences: Sequences,
    /// Folded results waiting for the next snapshot that counts them. (A job's result is
    /// found by its own subject, `results.<kind>.<id>`: nothing is written per job here.)
    acks: Acks,
    /// With tracing on, one `kiln.aggregate` span per result, ended once the snapshot that
    /// counts it is stored and the result acked.
    spans: Vec<TraceSpan>,
    exporter: Exporter,
    /// This aggregator's name on the snapshots it stores ([`HEADER_AGGREGATOR`]).
    instance: String,
}

impl Aggregator {
    /// Fold results, snapshotting every `interval`, until `shutdown` resolves or the results
    /// stop coming.
    async fn fold_until(
        &mut self,
        results: &mut Results,
        interval: Duration,
        shutdown: &mut (impl Future + Unpin),
    ) -> Ended {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The consumer's ack floor, read now and then, lets the restart watermark past results
        // that will never be delivered again (see `Folds::acked_through`).
        let mut floor_ticker = tokio::time::interval(ACK_FLOOR_EVERY);
        floor_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        loop {
            tokio::select! {
                _ = &mut *shutdown => return Ended::Stopped,
                _ = ticker.tick() => {
                    if self.acks.cumulative() {
                        self.fill_holes(&results.stream).await;
                    }
                    if let Err(subject) = self.snapshot().await {
                        return Ended::Superseded(subject);
                    }
                }
                _ = floor_ticker.tick() => {
                    if let Ok(info) = results.stream.consumer_info(CONSUMER_AGGREGATOR).await {
                        self.folds.acked_through(info.ack_floor.stream_sequence);
                    }
                }
                next = results.messages.next() => match next {
                    Some(Ok(message)) => self.fold(message),
                    Some(Err(e)) => {
                        // A consumer deleted while this aggregator was disconnected ends no
                        // stream: the pulls fail (no responders) every few seconds, for ever.
                        if consumer_gone(&results.stream).await {
                            return Ended::Lost(e.to_string());
                        }
                        tracing::warn!(error = %e, "error while reading result events");
                        last_error = e.to_string();
                    }
                    None => return Ended::Lost(last_error),
                },
            }
        }
    }

    /// Publish the changed snapshots and ack the results they count. A snapshot the server did
    /// not store (a stream leader election in a cluster, a server restart) is retried at the
    /// next tick; its results stay unacked until then.
    /// `Err` with the subject when another aggregator stored a snapshot of it meanwhile.
    async fn snapshot(&mut self) -> std::result::Result<(), String> {
        match self.flush().await {
            Ok(()) => {
                self.spans.clear();
                self.exporter.tick();
            }
            Err(Error::Superseded { subject }) => return Err(subject),
            Err(e) => tracing::warn!(error = %e, "metrics snapshot not stored; retrying"),
        }
        Ok(())
    }

    /// Fold one result event, to be acked with the next snapshot.
    fn fold(&mut self, message: jetstream::Message) {
        let (sequence, delivery) = message.info().map_or((0, 0), |info| {
            (info.stream_sequence, info.consumer_sequence)
        });
        if let Some((first, last)) = self.acks.delivered(delivery, sequence) {
            let dropped = self.folds.absent(first, last);
            self.exporter.dropped_unread(dropped);
        }
        if let Some((event, first)) = self.fold_body(sequence, &message.subject, &message.payload) {
            if self.spans.len() >= MAX_OPEN_SPANS {
                // Snapshots have failed for long (every result redelivered, a span each):
                // the oldest end now rather than grow the aggregator without bound.
                self.spans.drain(..MAX_OPEN_SPANS / 2);
            }
            self.spans.extend(trace_aggregate(&message, &event));
            self.export(event, first);
        }
        self.acks.hold(sequence, message.reply.clone());
    }

    /// Fold the result at `sequence`; the event, when it parses, and whether it was the first
    /// of its job.
    fn fold_body(
        &mut self,
        sequence: u64,
        subject: &str,
        body: &[u8],
    ) -> Option<(ResultHead, bool)> {
        match serde_json::from_slice::<ResultHead>(body) {
            // Every result is stored on its job's own subject: one that names another kind
            // or job (published by hand, with a worker's rights) would count a job twice, or
            // one that never ran.
            Ok(event) if !is_subject_of(subject, &event.kind, &event.id, event.replay) => {
                self.folds.delivered_at(sequence);
                tracing::warn!(%subject, kind = %event.kind, id = %event.id, "result event names another job than its subject; not counted");
                None
            }
            Ok(event) if !self.folds.has_room_for(&event.kind, event.class) => {
                self.folds.delivered_at(sequence);
                tracing::warn!(%subject, kind = %event.kind, "result of a kind past the {} kinds and classes counted; not counted", crate::fold::MAX_FOLDS);
                None
            }
            Ok(event) => {
                let first = self.folds.add_at(&event, sequence);
                Some((event, first))
            }
            Err(e) => {
                self.folds.delivered_at(sequence);
                tracing::warn!(%subject, error = %e, "result event does not parse; not counted");
                None
            }
        }
    }

    /// A folded result to Prometheus: a job's first counts with the next snapshot stored (see
    /// [`Exporter::counted`]), a later one as a duplicate at once.
    fn export(&mut self, event: ResultHead, first: bool) {
        if first {
            self.exporter.counted(event);
        } else {
            self.exporter.duplicate(&event);
        }
    }

    /// Read from the stream the results below the highest one delivered that never were:
    /// deliveries lost on the way, results a previous instance held unacked when it stopped,
    /// results deleted. The server would send the pending ones again only after the ack wait,
    /// while every result after them waits for the watermark to be acked (and, held past its
    /// own ack wait, comes again too); so they are read at once, in one pass of an ordered
    /// consumer from the first to the last, and what that pass does not find is not in the
    /// stream. A pass that fails leaves them for the next tick.
    async fn fill_holes(&mut self, stream: &jetstream::stream::Stream) {
        let holes = self.folds.holes(MAX_HOLES_READ);
        let (Some(&first), Some(&last)) = (holes.first(), holes.last()) else {
            return;
        };
        tracing::info!(
            missing = holes.len(),
            first,
            last,
            unacked = self.acks.held(),
            "some results below the last one delivered never were; reading them from the stream"
        );
        let mut wanted: BTreeSet<u64> = holes.into_iter().collect();
        let reached = match self.read_range(stream, first, last, &mut wanted).await {
            Ok(reached) => reached,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the missing results; trying again at the next snapshot");
                return;
            }
        };
        let dropped = wanted
            .range(..=reached)
            .map(|sequence| self.folds.absent(*sequence, *sequence))
            .sum();
        self.exporter.dropped_unread(dropped);
    }

    /// Fold the results in `wanted` (removing them) from one ordered pass over `first..=last`;
    /// the sequence up to which the pass saw every result there is.
    async fn read_range(
        &mut self,
        stream: &jetstream::stream::Stream,
        first: u64,
        last: u64,
        wanted: &mut BTreeSet<u64>,
    ) -> std::result::Result<u64, String> {
        let reader = stream
            .create_consumer(pull::OrderedConfig {
                // A name of its own each pass: the server keeps an idle ordered consumer
                // for 30 s, and one of the same name with another start would be refused.
                name: Some(format!(
                    "{CONSUMER_AGGREGATOR}-holes-{}",
                    OffsetDateTime::now_utc().unix_timestamp_nanos()
                )),
                filter_subject: "results.>".into(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: first,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = reader.messages().await.map_err(|e| e.to_string())?;
        loop {
            let message = tokio::time::timeout(HOLE_READ_PATIENCE, messages.next())
                .await
                .map_err(|_| format!("no result for {HOLE_READ_PATIENCE:?}"))?
                .ok_or("the reader ended")?
                .map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if wanted.remove(&sequence)
                && let Some((event, first)) =
                    self.fold_body(sequence, &message.subject, &message.payload)
            {
                self.export(event, first);
            }
            // Past the last one missing, or at the end of the stream (nothing after this one).
            if sequence >= last || pending == 0 {
                return Ok(last);
            }
        }
    }

    /// [`flush`] this aggregator's folds, acks and snapshot sequences.
    async fn flush(&mut self) -> Result<()> {
        flush(
            &self.js,
            &mut self.folds,
            &mut self.acks,
            (&mut self.sequences, &self.instance),
        )
        .await
    }

    /// The last snapshot, and the results it counts acked.
    async fn stop(mut self) -> Result<()> {
        match self.flush().await {
            // Another aggregator counts now; the results this one held go to it.
            Err(Error::Superseded { subject }) => {
                tracing::warn!(%subject, "last snapshot not stored: another aggregator stored one since");
            }
            stored => {
                stored?;
                self.exporter.tick();
            }
        }
        self.spans.clear();
        // The last acks are in the client's buffer: out before the process exits, or their
        // results come back and are counted as duplicates.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.js.client().flush()).await;
        tracing::info!("aggregator stopped");
        Ok(())
    }
}

/// Most `kiln.aggregate` spans held open for the next snapshot (tracing on).
const MAX_OPEN_SPANS: usize = 200_000;

/// How often the aggregator reads its consumer's ack floor again.
const ACK_FLOOR_EVERY: Duration = Duration::from_secs(10);

/// Missing results read from the stream at most in one pass (the consumer's max ack pending:
/// more are never held by one instance).
const MAX_HOLES_READ: usize = 200_000;

/// How long a pass over missing results waits for the next one before it gives up (and tries
/// again at the next snapshot).
const HOLE_READ_PATIENCE: Duration = Duration::from_secs(5);

/// Publish the snapshots that changed since the last flush, wait for the server to store
/// them, then ack the results they include.
async fn flush(
    js: &jetstream::Context,
    folds: &mut Folds,
    acks: &mut Acks,
    (sequences, instance): (&mut Sequences, &str),
) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let snapshots = folds.snapshots(now);
    let mut stored = store(js, &snapshots, (now, instance), sequences).await;
    // A message there that is no snapshot was not stored by another aggregator (a publish by
    // hand, a forgery where metrics.> is open to all): it is replaced at once, not taken for a
    // second aggregator, which stood this one by and restored the counts from it. (What was
    // stored of this flush goes again under the same message ids: the server keeps it once.)
    // Nor is a snapshot this aggregator stored itself whose acknowledgement it never got (the
    // server restarted while the publish was on its way, and stored it on its return): it
    // goes on from it.
    for _ in 0..snapshots.len() {
        let Err(Error::Superseded { subject }) = &stored else {
            break;
        };
        match last_message(js, subject, instance).await {
            Some(Last::NoSnapshot(sequence)) => {
                tracing::warn!(%subject, sequence, "a message that is no metrics snapshot was stored there; this aggregator's counts replace it");
                sequences.insert(subject.clone(), sequence);
            }
            Some(Last::Ours(sequence)) => {
                tracing::info!(%subject, sequence, "a snapshot of this aggregator's was stored without its acknowledgement reaching it (a server restart); going on from it");
                sequences.insert(subject.clone(), sequence);
            }
            None => break,
        }
        stored = store(js, &snapshots, (now, instance), sequences).await;
    }
    if stored.is_err() {
        // Not stored: these snapshots go out again at the next flush, the results stay unacked.
        folds.unstored(&snapshots);
    }
    stored?;
    for reply in acks.due(folds.through()) {
        if let Err(e) = js.client().publish(reply, Bytes::new()).await {
            tracing::warn!(error = %e, "could not ack folded results; they will be redelivered and dropped as duplicates");
        }
    }
    Ok(())
}

/// Whether the aggregator's consumer is gone (deleted), not merely out of reach.
async fn consumer_gone(stream: &jetstream::stream::Stream) -> bool {
    matches!(
        stream.consumer_info(CONSUMER_AGGREGATOR).await,
        Err(e) if streams::consumer_gone(&e)
    )
}

fn read_error(what: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Read {
        what,
        message: e.to_string(),
    }
}

/// The span of one result's aggregation, under the worker's publish span, when tracing is on.
fn trace_aggregate(message: &jetstream::Message, event: &ResultHead) -> Option<TraceSpan> {
    if !trace::enabled() {
        return None;
    }
    let parent = trace::extract(message.headers.as_ref());
    TraceSpan::start(
        "kiln.aggregate",
        SpanKind::Consumer,
        &parent,
        None,
        vec![
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", message.subject.to_string()),
            KeyValue::new("kiln.job.id", event.id.clone()),
            KeyValue::new("kiln.job.kind", event.kind.clone()),
            KeyValue::new("kiln.job.class", event.class.to_string()),
        ],
    )
}

/// Whether `subject` is the result subject of job `id` of `kind`, run `replay`
/// ([`kiln_proto::subject::result_of`]), compared in place: no subject is built per result.
fn is_subject_of(subject: &str, kind: &str, id: &str, replay: u32) -> bool {
    let rest = subject
        .strip_prefix("results.")
        .and_then(|s| s.strip_prefix(kind))
        .and_then(|s| s.strip_prefix('.'))
        .and_then(|s| s.strip_prefix(id));
    match (rest, replay) {
        (Some(""), 0) => true,
        (Some(rest), n) if n > 0 => rest
            .strip_prefix(".replay-")
            .is_some_and(|r| !r.starts_with('0') && r.parse::<u32>() == Ok(n)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_subject_of;
    use kiln_proto::subject::result_of;

    #[test]
    fn a_result_is_on_its_own_subject_and_no_other() {
        for (kind, id, replay) in [
            ("vector_add", "va-1", 0),
            ("unknown", "uk-1", 0),
            ("matmul", "mm-1", 3),
        ] {
            assert!(is_subject_of(
                &result_of(kind, id, replay),
                kind,
                id,
                replay
            ));
        }
        for (subject, kind, id, replay) in [
            ("results.vector_add.x", "vector_add", "ghost-1", 0),
            ("results.matmul.va-1", "vector_add", "va-1", 0),
            ("results.vector_add.va-1.replay-2", "vector_add", "va-1", 0),
            ("results.vector_add.va-1", "vector_add", "va-1", 2),
            ("results.vector_add.va-1.replay-02", "vector_add", "va-1", 2),
            ("results.vector_add.va-12", "vector_add", "va-1", 0),
            ("results.vector_add", "vector_add", "", 0),
        ] {
            assert!(!is_subject_of(subject, kind, id, replay), "{subject}");
        }
    }
}
