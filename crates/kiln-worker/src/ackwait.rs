//! The consumer's ack wait and delivery limit as the server has them now, which a job's
//! progress acks and its last-attempt decision follow.
//!
//! A worker reads it at start, but an operator can change it while workers run (`nats consumer
//! edit`, or a consumer made by a worker with `--ack-wait 300s` and set back by an older `kiln
//! init`): progress acks sent at a third of a wait the server no longer uses let it deliver a
//! healthy running job again every ack wait, until its last delivery was spent and the job was
//! dead-lettered while it still computed. So the wait is read again every 2 s (one small
//! request; a job delivered again to another worker is no sign to the worker running it), and
//! at once when this worker is delivered a job again (the sign that some worker is behind).
//!
//! Its max deliveries are read in the same request: a worker that still counted the limit it
//! read at start would, with the limit lowered, hand a failed job back for a delivery the
//! server will never make (the job is then answered only as "gave up", by whichever worker
//! serves the dead letters, without its own error), and with the limit raised, answer a job
//! `failed` deliveries before the server would give up on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How often the consumer's ack wait is read again: a wait cut to 1 s costs a running job at
/// most two of its five deliveries before its worker's progress acks follow.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// The ack wait progress acks follow, and the consumer's max deliveries, kept current by
/// [`AckWait::follow`].
pub(crate) struct AckWait {
    now: watch::Sender<Duration>,
    max_deliver: AtomicI64,
    stale: Notify,
}

impl AckWait {
    pub(crate) fn new(ack_wait: Duration, max_deliver: i64) -> Self {
        AckWait {
            now: watch::Sender::new(ack_wait),
            max_deliver: AtomicI64::new(max_deliver),
            stale: Notify::new(),
        }
    }

    /// The ack wait as last read.
    pub(crate) fn current(&self) -> Duration {
        *self.now.borrow()
    }

    /// The most deliveries the server makes of a job (-1 or 0: no limit), as last read.
    pub(crate) fn max_deliver(&self) -> i64 {
        self.max_deliver.load(Ordering::Relaxed)
    }

    /// Read it again now: the server delivered a job again, so some worker's progress acks
    /// came too late.
    pub(crate) fn stale(&self) {
        self.stale.notify_one();
    }

    /// Ticks for one job's progress acks: three per ack wait, following it as it changes.
    pub(crate) fn progress(&self) -> Progress {
        Progress {
            wait: self.now.subscribe(),
            last: Instant::now(),
        }
    }

    /// Keep the ack wait current from `consumer` until the returned guard is dropped.
    pub(crate) fn follow(this: Arc<Self>, consumer: PullConsumer) -> Following {
        Following(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(REFRESH_EVERY) => {}
                    () = this.stale.notified() => {}
                }
                let Ok(info) = consumer.get_info().await else {
                    continue;
                };
                this.set(info.config.ack_wait);
                this.set_max_deliver(info.config.max_deliver);
            }
        }))
    }

    fn set(&self, ack_wait: Duration) {
        if ack_wait.is_zero() {
            return;
        }
        self.now.send_if_modified(|now| {
            if *now == ack_wait {
                return false;
            }
            tracing::info!(was = ?*now, ?ack_wait, "the consumer's ack wait changed; progress acks follow it");
            *now = ack_wait;
            true
        });
    }
}

impl AckWait {
    fn set_max_deliver(&self, max_deliver: i64) {
        let was = self.max_deliver.swap(max_deliver, Ordering::Relaxed);
        if was != max_deliver {
            tracing::info!(
                was,
                max_deliver,
                "the consumer's max deliveries changed; the worker follows them"
            );
        }
    }
}

/// Stops following the ack wait when dropped.
pub(crate) struct Following(tokio::task::JoinHandle<()>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A job's progress-ack ticks: one a third of the ack wait after the last (no closer than
/// 100 ms apart), sooner when the ack wait shrinks meanwhile. Cancel-safe, as a tokio interval
/// is.
pub(crate) struct Progress {
    wait: watch::Receiver<Duration>,
    last: Instant,
}

impl Progress {
    pub(crate) async fn tick(&mut self) {
        loop {
            let every = (*self.wait.borrow_and_update() / 3).max(Duration::from_millis(100));
            let at = self.last + every;
            tokio::select! {
                () = tokio::time::sleep_until(at) => break,
                changed = self.wait.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(at).await;
                        break;
                    }
                }
            }
        }
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn progress_follows_the_ack_wait_as_it_changes() {
        let wait = AckWait::new(Duration::from_secs(300), 5);
        let mut progress = wait.progress();
        let start = Instant::now();
        // A tick is due 100 s on; 10 s in, the ack wait drops to 30 s: the tick comes at once
        // (10 s is already past its new third), the next 10 s later.
        let ticking = tokio::spawn(async move {
            progress.tick().await;
            let first = start.elapsed();
            progress.tick().await;
            (first, start.elapsed())
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        wait.set(Duration::from_secs(30));
        let (first, second) = ticking.await.unwrap();
        assert_eq!(first.as_secs(), 10);
        assert_eq!(second.as_secs(), 20);
        assert_eq!(*wait.now.borrow(), Duration::from_secs(30));
        // A zero (a consumer that says nothing) changes nothing.
        wait.set(Duration::ZERO);
        assert_eq!(*wait.now.borrow(), Duration::from_secs(30));
    }
}
