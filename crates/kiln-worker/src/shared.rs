//! What every job task of one worker shares, and what the worker counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_nats::jetstream;

use crate::admission::Admission;
use crate::cancel::Cancellations;
use crate::config::WorkerConfig;

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Jobs answered with a `succeeded` result.
    pub succeeded: u64,
    /// Jobs answered with a `failed` result.
    pub failed: u64,
    /// Jobs handed back for another attempt.
    pub retried: u64,
    /// Jobs queued again unfinished because the worker stopped (no attempt spent).
    pub handed_back: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub handed_back: AtomicU64,
}

/// State every job task of one worker shares.
pub(crate) struct Shared {
    pub js: jetstream::Context,
    /// The connection `js` uses, kept so that a job reads the server's `max_payload` without
    /// cloning the client (`Context::client` does: several reference counts and a channel
    /// sender, up and down again, per job).
    pub client: async_nats::Client,
    pub config: WorkerConfig,
    /// What the kinds with a choice run on, as the worker chose at start.
    pub engines: kiln_kernels::Engines,
    /// How many jobs the worker holds, and which of them compute now.
    pub admission: Admission,
    pub counters: Counters,
    /// Set when a shutdown ran out of patience: checkpoints then hand jobs back.
    pub stopping: AtomicBool,
    /// Set when jobs still compute after the checkpoints' grace (a step with no checkpoint
    /// in it): their tasks stop waiting for the computation, hand the jobs back, and the
    /// process exits without its outcome.
    pub abandon: tokio::sync::watch::Sender<bool>,
    /// Set (with the reason) when the device stopped working: the worker stops pulling,
    /// hands back what it holds, and exits with an error.
    pub poisoned: OnceLock<String>,
    /// Set (with its entry) when another worker took this worker's name while this one was
    /// stalled past its entry's TTL: the worker stops pulling, finishes what it holds, and
    /// exits with an error, rather than serve on under an entry that is the other's.
    pub name_taken: OnceLock<kiln_proto::WorkerInfo>,
    /// Jobs cancelled with `kiln cancel`.
    pub cancelled: Cancellations,
    /// Jobs held now, by kind and id (one id sent as two kinds is two jobs), for the
    /// heartbeat (`kiln status <id>`).
    pub running: Mutex<HashMap<(String, String), kiln_proto::RunningJob>>,
    /// Small jobs waiting to share a launch ([`crate::batch`]).
    pub batcher: crate::batch::Batcher,
    /// Jobs delivered and not yet at their compute step (decoding, loading their objects):
    /// when none are, no job is on its way to join a batch, which then runs at once.
    pub arriving: std::sync::atomic::AtomicUsize,
    /// Whether result events carry a message id (see [`crate::publish::ResultIds`]).
    pub result_ids: crate::publish::ResultIds,
    /// The `KILN_DATA` object store, opened when a job first needs it.
    pub data: tokio::sync::OnceCell<kiln_data::store::Bucket>,
    /// The consumer's ack wait, which progress acks follow ([`crate::ackwait`]).
    pub ack_wait: Arc<crate::ackwait::AckWait>,
    /// Acks of answered jobs, sent a moment later ([`crate::acks`]).
    pub acks: crate::acks::Acks,
    /// The `KILN_JOBS` sequences of the jobs this worker holds ([`Holding`]), each with the
    /// most deliveries the server has made of it.
    pub holding: Mutex<HashMap<u64, u64>>,
}

/// A job's `KILN_JOBS` sequence in [`Shared::holding`] until this is dropped. A server that
/// restarts can deliver a job again while a worker still runs it (its record of the delivery
/// was not yet on disk): the second delivery is left to the attempt running, whose progress
/// acks and final ack count for the job's sequence whichever delivery they name, instead of
/// running the job a second time on the same worker (a 30 s training ran twice).
pub(crate) struct Holding<'a> {
    shared: &'a Shared,
    sequence: u64,
}

impl<'a> Holding<'a> {
    /// `None` when this worker holds the job of `sequence` already: then its `attempt` is
    /// remembered, as a delivery the server has spent ([`Shared::deliveries`]).
    pub(crate) fn start(shared: &'a Shared, sequence: u64, attempt: u64) -> Option<Self> {
        let mut holding = shared.holding.lock().unwrap_or_else(|e| e.into_inner());
        match holding.entry(sequence) {
            std::collections::hash_map::Entry::Occupied(mut held) => {
                let most = held.get_mut();
                *most = (*most).max(attempt);
                None
            }
            std::collections::hash_map::Entry::Vacant(free) => {
                free.insert(attempt);
                drop(holding);
                Some(Holding { shared, sequence })
            }
        }
    }
}

impl Shared {
    /// The most deliveries the server has made of the job at `sequence` that this worker
    /// holds: more than its run's own attempt when it was delivered again meanwhile, which
    /// spent one of its deliveries.
    pub(crate) fn deliveries(&self, sequence: u64, attempt: u64) -> u64 {
        let holding = self.holding.lock().unwrap_or_else(|e| e.into_inner());
        holding
            .get(&sequence)
            .map_or(attempt, |most| (*most).max(attempt))
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut holding = self
            .shared
            .holding
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        holding.remove(&self.sequence);
    }
}

impl Shared {
    /// What the worker did so far.
    pub(crate) fn stats(&self) -> WorkerStats {
        WorkerStats {
            succeeded: self.counters.succeeded.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            handed_back: self.counters.handed_back.load(Ordering::Relaxed),
        }
    }
}
