//! A worker's life in three phases: start, the pull loop (take as many jobs as the worker can
//! start soon, hand each to its own task), and the drain.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::Batch};
use futures::StreamExt as _;
use tokio::sync::OwnedSemaphorePermit;

use crate::arrival::Arrival;
use crate::config::WorkerConfig;
use crate::error::{Error, Result};
use crate::shared::{Holding, Shared, WorkerStats};
use crate::start::Started;

/// How long one pull request waits for jobs before it is renewed. Short, so that a shutdown
/// leaves few jobs delivered-but-unhandled (those are redelivered after the ack wait).
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Serve jobs until `shutdown` resolves, then drain: stop pulling, let running jobs finish
/// (up to the drain timeout), and return.
pub async fn run(
    client: async_nats::Client,
    config: WorkerConfig,
    shutdown: impl Future<Output = impl Sized>,
) -> Result<WorkerStats> {
    tokio::pin!(shutdown);
    let Some(started) = crate::start::start(client, config, &mut shutdown).await? else {
        return Ok(WorkerStats::default());
    };
    pull(&started, &mut shutdown).await;
    drain(started).await
}

/// Pull jobs until `shutdown` resolves or the device stops working.
async fn pull(started: &Started, shutdown: &mut (impl Future + Unpin)) {
    let shared = &started.shared;
    let admission = &shared.admission;
    loop {
        if shared.poisoned.get().is_some() || shared.name_taken.get().is_some() {
            return;
        }
        let Some(room) = admission.room() else {
            tokio::select! {
                _ = &mut *shutdown => return,
                _ = admission.released() => continue,
            }
        };
        let permits = tokio::select! {
            _ = &mut *shutdown => return,
            permits = admission.reserve(room) => permits,
        };
        let batch = match started
            .consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "pull request failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if take(shared, batch, permits, shutdown).await.is_break() {
            return;
        }
    }
}

/// Hand each job of one pull request to its own task, holding one of `permits`; `Break` when
/// the worker is to stop pulling. Stopping (shut down, or the device unusable), it still takes
/// the jobs delivered for this pull, those buffered and any arriving within 50 ms, for the
/// drain to finish or hand back: dropped, they were held by the server as delivered to this
/// worker until the ack wait ran out, and spent a delivery.
async fn take(
    shared: &Arc<Shared>,
    mut batch: Batch,
    mut permits: Vec<OwnedSemaphorePermit>,
    shutdown: &mut (impl Future + Unpin),
) -> ControlFlow<()> {
    let mut stopping = false;
    loop {
        let next = match stopping {
            true => match tokio::time::timeout(UNTAKEN_WAIT, batch.next()).await {
                Ok(next) => next,
                Err(_) => return ControlFlow::Break(()),
            },
            false => tokio::select! {
                _ = &mut *shutdown => {
                    stopping = true;
                    continue;
                }
                next = batch.next() => next,
            },
        };
        match next {
            None if stopping => return ControlFlow::Break(()),
            None => return ControlFlow::Continue(()),
            Some(Ok(message)) => {
                // (A job taken on an unusable device is handed back without spending a
                // delivery.)
                stopping |= shared.poisoned.get().is_some();
                let Some(permit) = permits.pop() else {
                    // The server never sends more than asked; hand back anything extra.
                    let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
                    continue;
                };
                start_job(shared, message, permit);
            }
            Some(Err(_)) if stopping => return ControlFlow::Break(()),
            Some(Err(e)) => {
                // A server without a leader for the consumer (an election in a cluster)
                // answers every pull at once: pause rather than ask again in a hot loop.
                tracing::warn!(error = %e, "error while pulling jobs; pulling again in 250 ms");
                tokio::time::sleep(Duration::from_millis(250)).await;
                return ControlFlow::Continue(());
            }
        }
    }
}

/// How long a stopping worker waits for more of a pull's jobs to arrive.
const UNTAKEN_WAIT: Duration = Duration::from_millis(50);

/// Run one delivered job on its own task, holding `permit` until it is done.
fn start_job(shared: &Arc<Shared>, message: jetstream::Message, permit: OwnedSemaphorePermit) {
    let shared = shared.clone();
    shared.config.metrics.in_flight.inc();
    shared.arriving.fetch_add(1, Ordering::Relaxed);
    // Boxed: a job's future holds every path a job can take (objects to load and store,
    // hand-backs, dead letters), kilobytes that spawning would otherwise copy several times
    // over (spawning showed at 7% of the worker's CPU).
    tokio::spawn(Box::pin(async move {
        let arrival = Arrival::read(message, &shared.config);
        let holding = arrival
            .as_ref()
            .and_then(|arrival| Holding::start(&shared, arrival.stream_sequence, arrival.attempt));
        match (arrival, holding) {
            (Some(arrival), Some(_holding)) => {
                // Delivered again: some worker's progress acks may have fallen behind an ack
                // wait cut meanwhile (see `ackwait`).
                if arrival.attempt > 1 {
                    shared.ack_wait.stale();
                }
                crate::job::handle(&shared, arrival).await;
            }
            (arrival, _) => {
                // Not on its way to a compute step (see `job::Arriving`).
                shared.arriving.fetch_sub(1, Ordering::Relaxed);
                if let Some(arrival) = arrival {
                    tracing::info!(
                        sequence = arrival.stream_sequence,
                        attempt = arrival.attempt,
                        "a job this worker is running was delivered again; left to the \
                         attempt running"
                    );
                    // The server thinks it stalled: tell it at once that it runs, and read
                    // the ack wait again, which its progress acks may have fallen behind
                    // (see `ackwait`).
                    let _ = arrival.message.ack_with(jetstream::AckKind::Progress).await;
                    shared.ack_wait.stale();
                    if let Some(trace) = &arrival.trace {
                        trace.outcome("delivered_again", None);
                    }
                }
            }
        }
        shared.config.metrics.in_flight.dec();
        shared.admission.release(permit);
    }));
}

/// Drain: no new pulls; wait for running jobs, then tell stragglers to hand back.
async fn drain(started: Started) -> Result<WorkerStats> {
    let shared = &started.shared;
    shared.config.health.stopping();
    started.heartbeat.beat_now();
    tracing::info!(worker = %shared.config.name, "shutting down: draining running jobs");
    let _ = started.stop_dead_letters.send(true);
    let drain = shared.config.drain_timeout;
    // The dead-letter task finishes the letter it is writing meanwhile, not before: with
    // the server gone, each wait added to the stop, which then outlived its grace period.
    let (drained, _) = tokio::join!(
        shared.admission.all_released(drain),
        tokio::time::timeout(Duration::from_secs(5), started.dead_letters),
    );
    // Jobs answered until now are acked before the worker says it stopped; any answered
    // after this (a drain that ran out of time) are acked at once. Without a connection the
    // acks cannot leave: a moment for it to come back, not five seconds.
    let connected = shared.client.connection_state() == async_nats::connection::State::Connected;
    let acks_within = Duration::from_secs(if connected { 5 } else { 1 });
    shared.acks.close(acks_within).await;
    started.heartbeat.stop().await;
    let stats = shared.stats();
    if !drained {
        shared.stopping.store(true, Ordering::SeqCst);
        let running = shared.admission.held();
        let handed_back = || shared.counters.handed_back.load(Ordering::Relaxed);
        let before = handed_back();
        // Give checkpointing kernels a moment to notice and hand their jobs back (a hand-back
        // is a publish and a confirmed ack: milliseconds, seconds if the server is slow).
        if !shared.admission.all_released(Duration::from_secs(10)).await {
            // The rest compute a step with no checkpoint in it: hand them back without
            // waiting for it, rather than leave them to come back after the ack wait.
            shared.abandon.send_replace(true);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while shared.config.metrics.in_flight.get() > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let handed_back = (handed_back() - before) as usize;
        return Err(Error::DrainTimeout {
            running,
            handed_back,
            timeout: drain,
        });
    }
    if let Some(other) = shared.name_taken.get() {
        return Err(crate::heartbeat::taken(other));
    }
    if let Some(reason) = shared.poisoned.get() {
        return Err(Error::DevicePoisoned {
            device: shared.config.device.to_string(),
            reason: reason.clone(),
        });
    }
    // Debug: `kiln worker` says the same to its operator in one line of its own.
    tracing::debug!(
        succeeded = stats.succeeded,
        failed = stats.failed,
        retried = stats.retried,
        handed_back = stats.handed_back,
        "worker stopped"
    );
    Ok(stats)
}
