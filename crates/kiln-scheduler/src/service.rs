//! The scheduler service: pull `jobs.auto.>`, decide with the [`CostModel`], republish to
//! `jobs.gpu.<kind>.copy` or `jobs.cpu.<kind>.copy` (the subjects only kiln's own roles may
//! publish to, whose headers workers believe), ack once the routed copy is stored.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use futures::future::{BoxFuture, FutureExt as _};
use futures::stream::FuturesUnordered;
use kiln_proto::streams::{self, STREAM_JOBS};
use kiln_proto::{DeviceClass, Limits, Topology};

use crate::model::CostModel;

mod classes;
mod pulls;
mod route;

use classes::{Classes, learn, refresh};
use pulls::Pulls;
use route::{Held, ROUTING_IN_FLIGHT, Routed, Settled, settle};

/// The `kiln scheduler` settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Name recorded in routing decisions.
    pub name: String,
    /// Stream sizes and replicas, for the streams and consumers it creates if missing.
    pub topology: Topology,
    /// How often backlogs and live workers are re-read from the server.
    pub refresh: Duration,
    /// Prometheus metrics (register them to serve them).
    pub metrics: kiln_telemetry::SchedulerMetrics,
    /// Readiness for `/readyz`.
    pub health: kiln_telemetry::Health,
}

impl SchedulerConfig {
    /// The defaults, under `name`: re-read the classes every 250 ms.
    pub fn new(name: String) -> Self {
        Self {
            name,
            topology: Topology::default(),
            refresh: Duration::from_millis(250),
            metrics: kiln_telemetry::SchedulerMetrics::default(),
            health: kiln_telemetry::Health::default(),
        }
    }
}

/// What a scheduler did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Auto jobs it routed to the GPU class.
    pub routed_gpu: u64,
    /// Auto jobs it routed to the CPU class.
    pub routed_cpu: u64,
}

/// Errors that stop the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stream, consumer or bucket could not be created or opened.
    #[error(transparent)]
    Setup(#[from] streams::SetupError),
    /// Something on the server could not be read.
    #[error("could not read {what}: {message}")]
    Read {
        /// What: `the jobs stream`, `auto jobs`, ….
        what: &'static str,
        /// The server's or client's error.
        message: String,
    },
}

/// Route auto jobs until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    config: SchedulerConfig,
    shutdown: impl Future<Output = impl Sized>,
) -> Result<SchedulerStats, Error> {
    config.health.watch(&client);
    let js = jetstream::new(client.clone());
    streams::ensure_all(&js, &config.topology).await?;
    let mut inputs = Inputs::open(&client, &js).await?;
    let mut scheduler = Scheduler::start(js, config, inputs.max_deliver).await;
    let mut ticker = tokio::time::interval(scheduler.config.refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Copies published and awaiting the server's acknowledgement.
    let mut in_flight = InFlight::new();
    // Why the auto jobs stopped coming without a shutdown (the consumer deleted), if they did.
    let mut lost: Option<String> = None;
    loop {
        if let Err(e) = inputs
            .jobs
            .request(ROUTING_IN_FLIGHT - in_flight.len())
            .await
            && let Some(why) =
                pull_failed(&inputs.jobs, "pull request for auto jobs failed", e).await
        {
            lost = Some(why);
            break;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => refresh(&scheduler.js, &mut scheduler.classes).await,
            Some(message) = inputs.results.next() => {
                learn(&mut scheduler.model, &mut scheduler.classes, &message.payload);
            }
            Some((routed, stored)) = in_flight.next(), if !in_flight.is_empty() => {
                scheduler.settled(routed, stored).await;
            }
            _ = tokio::time::sleep_until(scheduler.held.next_due()),
                if !scheduler.held.is_empty() && in_flight.len() < ROUTING_IN_FLIGHT =>
            {
                scheduler.route_due(&mut in_flight).await;
            }
            next = inputs.jobs.next(), if in_flight.len() < ROUTING_IN_FLIGHT => match next {
                Some(Ok(message)) => {
                    if let Some((routed, ack)) = scheduler.route(message, None).await {
                        in_flight.push(stored(routed, ack).boxed());
                    }
                }
                Some(Err(e)) => {
                    if let Some(why) = pull_failed(&inputs.jobs, "error while pulling auto jobs", e).await {
                        lost = Some(why);
                        break;
                    }
                }
                // That request is done: the next is made at the top of the loop.
                None => {}
            },
        }
    }
    wind_down(&mut scheduler, &mut inputs.jobs, in_flight, lost.is_none()).await;
    // The acks and hand-backs are in the client's buffer: out before the process exits, or
    // the jobs come back after the ack wait and are routed (and run) again.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    let stats = scheduler.stop();
    match lost {
        // A scheduler that stopped routing must not look like one that was told to stop: a
        // supervisor restarting it on failure only would leave auto jobs unrouted.
        Some(last_error) => Err(Error::Read {
            what: "auto jobs",
            message: format!(
                "the {} consumer stopped delivering them: it is gone ({last_error}); \
                 `kiln init` makes it again",
                streams::CONSUMER_SCHEDULER
            ),
        }),
        None => Ok(stats),
    }
}

/// A pull request that could not be made, or ended in an error: `Some` with the error when
/// the consumer is gone (the scheduler then stops, for its supervisor to restart it once
/// `kiln init` made it again); otherwise it is logged, and pulling goes on after a pause
/// (a server without a leader for the consumer answers every request at once).
async fn pull_failed(pulls: &Pulls, what: &str, error: String) -> Option<String> {
    if pulls.consumer_gone().await {
        return Some(error);
    }
    tracing::warn!(%error, "{what}; pulling again in 250 ms");
    tokio::time::sleep(Duration::from_millis(250)).await;
    None
}

/// Stopping: route the rest of the last pull request's jobs when `take_the_rest` (those
/// delivered, and any that come within [`UNTAKEN_WAIT`] of each other; no new request is
/// made: left, they stayed delivered to this scheduler until the ack wait ran out, each with
/// a delivery spent), settle every copy in flight, and hand the held jobs back.
async fn wind_down(
    scheduler: &mut Scheduler,
    pulls: &mut Pulls,
    mut in_flight: InFlight,
    take_the_rest: bool,
) {
    while take_the_rest
        && let Ok(Some(Ok(message))) = tokio::time::timeout(UNTAKEN_WAIT, pulls.next()).await
    {
        if in_flight.len() >= ROUTING_IN_FLIGHT
            && let Some((routed, stored)) = in_flight.next().await
        {
            scheduler.settled(routed, stored).await;
        }
        if let Some((routed, ack)) = scheduler.route(message, None).await {
            in_flight.push(stored(routed, ack).boxed());
        }
    }
    pulls.close();
    // The copies already published: ack their originals (or hand them back).
    while let Some((routed, stored)) = in_flight.next().await {
        scheduler.settled(routed, stored).await;
    }
    // Jobs held for room: back to the queue at once, for another scheduler.
    for (message, _) in std::mem::take(&mut scheduler.held).all() {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
}

/// How long a stopping scheduler waits for more of its last pull request's jobs (a request
/// just made is answered within milliseconds, on a loaded machine within a few dozen).
const UNTAKEN_WAIT: Duration = Duration::from_millis(250);

/// What the scheduler reads: the auto jobs, and the result events it learns from.
struct Inputs {
    jobs: Pulls,
    results: async_nats::Subscriber,
    /// The scheduler consumer's deliveries per job (0 or less: no limit).
    max_deliver: i64,
}

impl Inputs {
    async fn open(client: &async_nats::Client, js: &jetstream::Context) -> Result<Self, Error> {
        let read = |what: &'static str| move |e: String| Error::Read { what, message: e };
        let consumer: PullConsumer = js
            .get_stream(STREAM_JOBS)
            .await
            .map_err(|e| read("the jobs stream")(e.to_string()))?
            .get_consumer(DeviceClass::Auto.consumer())
            .await
            .map_err(|e| read("the scheduler consumer")(e.to_string()))?;
        let max_deliver = consumer.cached_info().config.max_deliver;
        let jobs = Pulls::new(consumer);
        // Every result teaches the model how long a kind takes on a class.
        let results = client
            .subscribe("results.>")
            .await
            .map_err(|e| read("result events")(e.to_string()))?;
        Ok(Inputs {
            jobs,
            results,
            max_deliver,
        })
    }
}

/// Copies published and awaiting the server's acknowledgement.
type InFlight = FuturesUnordered<BoxFuture<'static, (Routed, Result<(), String>)>>;

/// Wait for the server to store a routed copy; the copy, and whether it was stored.
async fn stored(
    routed: Routed,
    ack: jetstream::context::PublishAckFuture,
) -> (Routed, Result<(), String>) {
    let stored = ack.await.map(|_| ()).map_err(|e| e.to_string());
    (routed, stored)
}

/// A scheduler at work: what it has learned and read, and what it has routed.
struct Scheduler {
    js: jetstream::Context,
    config: SchedulerConfig,
    model: CostModel,
    classes: Classes,
    limits: Limits,
    stats: SchedulerStats,
    /// Jobs whose copies `KILN_JOBS` had no room for, waiting to be routed again.
    held: Held,
    /// The scheduler consumer's deliveries per job (0 or less: no limit).
    max_deliver: i64,
    /// `kiln cancel`'s marks, for the jobs it answers or holds.
    marks: route::CancelMarks,
}

impl Scheduler {
    /// Read the classes once, then report ready.
    async fn start(js: jetstream::Context, config: SchedulerConfig, max_deliver: i64) -> Self {
        let mut classes = Classes::default();
        refresh(&js, &mut classes).await;
        let scheduler = Scheduler {
            marks: route::CancelMarks::new(js.clone()),
            js,
            config,
            model: CostModel::default(),
            classes,
            limits: Limits {
                max_elements: u64::MAX,
                ..Limits::default()
            },
            stats: SchedulerStats::default(),
            held: Held::default(),
            max_deliver,
        };
        tracing::info!(scheduler = %scheduler.config.name, "scheduler routing jobs.auto.>");
        scheduler.config.health.serving();
        scheduler
    }

    /// Report stopped; what it routed.
    fn stop(self) -> SchedulerStats {
        self.config.health.stopping();
        // Debug: `kiln scheduler` says the same to its operator in one line of its own.
        tracing::debug!(
            gpu = self.stats.routed_gpu,
            cpu = self.stats.routed_cpu,
            "scheduler stopped"
        );
        self.stats
    }

    /// Route again the held jobs that are due, as many as the copies in flight leave room for.
    async fn route_due(&mut self, in_flight: &mut InFlight) {
        for (message, hold) in self.held.due(ROUTING_IN_FLIGHT - in_flight.len()) {
            if let Some((routed, ack)) = self.route(message, Some(hold)).await {
                in_flight.push(stored(routed, ack).boxed());
            }
        }
    }

    /// [`settle`] a routed copy: count it if it went to a class, hold it if there was no
    /// room for it.
    async fn settled(&mut self, routed: Routed, stored: Result<(), String>) {
        let last_delivery = self.max_deliver > 0
            && routed
                .message
                .info()
                .is_ok_and(|info| info.delivered >= self.max_deliver);
        let stored = match stored {
            // A copy whose PubAck did not come may be stored all the same. Before the job is
            // answered for it, the copy goes again under the same message id: the server
            // acknowledges it as a duplicate when it was stored.
            Err(e) if last_delivery && e.contains("timed out") => {
                let again = self
                    .js
                    .publish_with_headers(
                        routed.target.clone(),
                        routed.headers.clone(),
                        routed.message.payload.clone(),
                    )
                    .await;
                match again {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            other => other,
        };
        let marks = &self.marks;
        match settle(&self.js, &self.config, marks, routed, stored, last_delivery).await {
            Settled::Routed(DeviceClass::Gpu) => self.stats.routed_gpu += 1,
            Settled::Routed(_) => self.stats.routed_cpu += 1,
            Settled::Held(message, hold) => self.held.push(*message, hold),
            Settled::Done => {}
        }
    }
}
