//! Admission: how many jobs a worker holds (slots and the recent pace), and which of them may
//! compute now (compute slots and the memory budget).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use kiln_kernels::MemoryBudget;
use kiln_proto::JobError;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::WorkerConfig;

/// The recent pace of a worker's jobs, which decides how many jobs it holds ([`Pace::limit`]).
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// Exponentially weighted mean compute time of the recent jobs, in ms; `None` before the
    /// first job.
    mean_ms: Mutex<Option<f64>>,
}

impl Pace {
    /// The weight of the newest job in the mean.
    const WEIGHT: f64 = 0.2;

    /// A job computed in `compute_ms`.
    pub(crate) fn record(&self, compute_ms: f64) {
        let mut mean = self.mean_ms.lock().unwrap_or_else(|e| e.into_inner());
        *mean = Some(match *mean {
            Some(m) => m + Self::WEIGHT * (compute_ms - m),
            None => compute_ms,
        });
    }

    /// How many jobs to hold at once: one per compute slot, plus as many as the slots get
    /// through in `prefetch` at the recent pace (none before the first job), at most `max`.
    pub(crate) fn limit(&self, compute_slots: usize, prefetch: Duration, max: usize) -> usize {
        let mean = *self.mean_ms.lock().unwrap_or_else(|e| e.into_inner());
        let ahead = match mean {
            Some(ms) => {
                let per_slot = prefetch.as_secs_f64() * 1000.0 / ms.max(1e-3);
                (per_slot * compute_slots as f64).min(max as f64) as usize
            }
            None => 0,
        };
        compute_slots.saturating_add(ahead).clamp(1, max.max(1))
    }
}

/// Whole MiB, at least one, within what a semaphore can count: the unit jobs reserve
/// memory in.
pub(crate) fn mib(bytes: u64) -> u32 {
    bytes.div_ceil(1 << 20).clamp(1, u32::MAX as u64) as u32
}

/// The MiB a job of `elements` tensor elements reserves while it computes.
pub(crate) fn job_mib(elements: u64) -> u32 {
    mib(elements.saturating_mul(kiln_kernels::BYTES_PER_ELEMENT))
}

/// Room the pull loop may fill now: see [`Admission::room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Room {
    /// Jobs to hold at once at the recent pace.
    pub limit: usize,
    /// Jobs that may be taken now (the limit less the jobs held).
    pub free: usize,
}

/// Jobs that may hold objects loaded ahead of their compute beyond one per compute slot.
const LOADS_AHEAD: usize = 4;

/// What a job that reads objects holds from before it downloads them until it has computed:
/// one of the places for loading jobs and what loading the objects takes out of the loading
/// budget.
pub(crate) struct LoadPermit {
    _place: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
}

/// One of the places for loading jobs, held while a job looks at its objects' first bytes to
/// tell what loading them takes, then for as long as its [`LoadPermit`].
pub(crate) struct LoadPlace {
    place: OwnedSemaphorePermit,
    memory: Arc<Semaphore>,
    budget: u64,
}

impl LoadPlace {
    /// Wait for `bytes` (at most the whole loading budget) out of the loading budget.
    /// Cancel-safe.
    pub(crate) fn reserve(self, bytes: u64) -> impl Future<Output = LoadPermit> + Send + 'static {
        let mib = mib(bytes).min(mib(self.budget));
        async move {
            let memory = self.memory.acquire_many_owned(mib).await;
            LoadPermit {
                _place: self.place,
                _memory: memory.expect("semaphore is never closed"),
            }
        }
    }
}

/// What a job holds while it computes: a compute slot and its share of the memory budget.
pub(crate) struct ComputePermit {
    _compute: OwnedSemaphorePermit,
    memory: OwnedSemaphorePermit,
}

impl ComputePermit {
    /// The job has computed, but its output is in memory until it is stored: free the compute
    /// slot and keep the memory. (A worker whose jobs computed faster than their outputs
    /// reached the object store held one output per job it held, past its budget.)
    pub(crate) fn computed(self) -> MemoryHeld {
        MemoryHeld {
            _memory: self.memory,
        }
    }
}

/// A computed job's share of the memory budget, held until its output is stored.
pub(crate) struct MemoryHeld {
    _memory: OwnedSemaphorePermit,
}

/// A worker's admission: the jobs it holds, and the compute slots and memory they share.
pub(crate) struct Admission {
    /// One permit per job held (running, waiting for a compute slot, or publishing).
    held: Arc<Semaphore>,
    max_in_flight: usize,
    compute_slots: usize,
    prefetch: Duration,
    compute: Arc<Semaphore>,
    /// Memory jobs hold while they run, in MiB (see [`MemoryBudget`]).
    memory_mib: Arc<Semaphore>,
    memory: MemoryBudget,
    /// The recent pace of jobs, which decides how many the pull loop holds.
    pace: Pace,
    /// Signalled each time a held job is released.
    released: Notify,
    /// Places for jobs that load objects: one per compute slot and [`LOADS_AHEAD`].
    loads: Arc<Semaphore>,
    /// The objects' bytes jobs hold loaded (downloading, waiting for a compute slot or
    /// computing), in MiB: as many as the memory budget.
    loaded_mib: Arc<Semaphore>,
}

impl Admission {
    /// The admission of a worker configured with `config`, whose jobs share `memory`.
    pub(crate) fn new(config: &WorkerConfig, memory: MemoryBudget) -> Self {
        let max_in_flight = config.max_in_flight.max(1);
        let compute_slots = config.compute_slots.max(1);
        let budget_mib = mib(memory.bytes) as usize;
        Admission {
            held: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            compute_slots,
            prefetch: config.prefetch,
            compute: Arc::new(Semaphore::new(compute_slots)),
            memory_mib: Arc::new(Semaphore::new(budget_mib)),
            memory,
            pace: Pace::default(),
            released: Notify::new(),
            loads: Arc::new(Semaphore::new(compute_slots + LOADS_AHEAD)),
            loaded_mib: Arc::new(Semaphore::new(budget_mib)),
        }
    }

    /// The most jobs held at once (`max_in_flight`, at least one).
    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The memory budget the jobs share.
    pub(crate) fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// Refuse a job that needs more than the whole memory budget.
    pub(crate) fn fits(&self, kind: &str, elements: u64) -> Result<(), JobError> {
        self.memory.check(kind, elements)
    }

    /// Whether jobs of `elements` tensor elements together reserve no more than the whole
    /// memory budget: a batch of them can ever get its memory.
    pub(crate) fn fits_together(&self, elements: u64) -> bool {
        job_mib(elements) <= mib(self.memory.bytes)
    }

    /// A job computed in `compute_ms`: the pace the worker holds jobs at follows it.
    pub(crate) fn record(&self, compute_ms: f64) {
        self.pace.record(compute_ms);
    }

    /// Jobs held now.
    pub(crate) fn held(&self) -> usize {
        self.max_in_flight - self.held.available_permits()
    }

    /// Hold one job per compute slot, plus as many as the slots get through in
    /// `--prefetch-ms` at the recent pace: small jobs keep the slots busy between pulls,
    /// while a long job stays in the queue, where an idle worker (or a new one KEDA starts
    /// for the backlog) can take it, instead of waiting here behind another. `None` when the
    /// worker holds that many already.
    pub(crate) fn room(&self) -> Option<Room> {
        let limit = self
            .pace
            .limit(self.compute_slots, self.prefetch, self.max_in_flight);
        let held = self.held();
        (held < limit).then(|| Room {
            limit,
            free: limit - held,
        })
    }

    /// Reserve up to `room.free` job slots. Each pull request is a subscription on the
    /// server, so this waits for a chunk of at least a quarter of the limit, and a busy worker
    /// does not pull one job at a time; then it takes what else is free. Cancel-safe.
    pub(crate) async fn reserve(&self, room: Room) -> Vec<OwnedSemaphorePermit> {
        let chunk = (room.limit / 4).clamp(1, room.free) as u32;
        let mut first = self
            .held
            .clone()
            .acquire_many_owned(chunk)
            .await
            .expect("semaphore is never closed");
        let mut permits = Vec::with_capacity(self.max_in_flight);
        for _ in 1..chunk {
            permits.push(first.split(1).expect("the chunk holds this many permits"));
        }
        permits.push(first);
        while permits.len() < room.free {
            match self.held.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        permits
    }

    /// A held job is done: free its slot and wake the pull loop.
    pub(crate) fn release(&self, permit: OwnedSemaphorePermit) {
        drop(permit);
        self.released.notify_one();
    }

    /// Wait until a held job is released.
    pub(crate) async fn released(&self) {
        self.released.notified().await;
    }

    /// Wait for a compute slot and the memory of a job of `elements` tensor elements: jobs
    /// that fit the budget alone but not beside the ones running wait for them instead of
    /// running out of memory together. More than the whole budget waits for all of it, not
    /// for ever (the semaphore is fair: a request it can never grant would stop every job
    /// behind it). Cancel-safe.
    pub(crate) fn compute_permit(
        &self,
        elements: u64,
    ) -> impl Future<Output = ComputePermit> + Send + 'static {
        let compute = self.compute.clone();
        let memory = self.memory_mib.clone();
        let mib = job_mib(elements).min(mib(self.memory.bytes));
        async move {
            let memory = memory.acquire_many_owned(mib).await;
            let compute = compute.acquire_owned().await;
            ComputePermit {
                _compute: compute.expect("semaphore is never closed"),
                memory: memory.expect("semaphore is never closed"),
            }
        }
    }

    /// Wait for a place to load objects, then ([`LoadPlace::reserve`]) for what loading them
    /// takes. Loading ahead is what keeps compute slots busy, but a worker holding hundreds of
    /// jobs (small ones sped its pulls up) started every download at once: the server closed
    /// its connection as a slow consumer, every job it held failed, and their inputs together
    /// passed the memory budget many times over. Computing jobs never wait for a load permit,
    /// and a job waiting for its bytes holds only its place, so holding a permit until the job
    /// has computed cannot deadlock. Cancel-safe.
    pub(crate) fn load_place(&self) -> impl Future<Output = LoadPlace> + Send + 'static {
        let (places, memory) = (self.loads.clone(), self.loaded_mib.clone());
        let budget = self.memory.bytes;
        async move {
            let place = places.acquire_owned().await;
            LoadPlace {
                place: place.expect("semaphore is never closed"),
                memory,
                budget,
            }
        }
    }

    /// A place and `bytes` out of the loading budget, one after the other.
    #[cfg(test)]
    async fn load_permit(&self, bytes: u64) -> LoadPermit {
        self.load_place().await.reserve(bytes).await
    }

    /// Wait up to `timeout` for every held job to be released; whether they were.
    pub(crate) async fn all_released(&self, timeout: Duration) -> bool {
        let all = self.max_in_flight as u32;
        tokio::time::timeout(timeout, self.held.acquire_many(all))
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(100);

    fn admission(max_in_flight: usize, compute_slots: usize, memory_mib: u64) -> Admission {
        let mut config = WorkerConfig::new(kiln_kernels::ComputeDevice::Cpu);
        config.max_in_flight = max_in_flight;
        config.compute_slots = compute_slots;
        config.prefetch = WINDOW;
        Admission::new(&config, MemoryBudget::configured(memory_mib))
    }

    /// At most one loading job per compute slot and four more, and at most the budget's
    /// bytes loaded; a job larger than the budget waits for all of it, not for ever.
    #[tokio::test]
    async fn loads_wait_for_a_place_and_for_their_bytes() {
        let admission = admission(256, 2, 16);
        let now = |f| futures::FutureExt::now_or_never(f);
        let small: Vec<LoadPermit> = (0..6)
            .map(|_| now(admission.load_permit(1 << 20)).expect("a place is free"))
            .collect();
        assert!(
            now(admission.load_permit(1)).is_none(),
            "six places, all held"
        );
        drop(small);
        let big = now(admission.load_permit(10 << 20)).expect("10 of 16 MiB");
        assert!(now(admission.load_permit(7 << 20)).is_none(), "6 MiB left");
        let rest = now(admission.load_permit(6 << 20)).expect("the 6 MiB left");
        drop((big, rest));
        let all = now(admission.load_permit(1 << 40)).expect("at most the whole budget");
        assert!(
            now(admission.load_permit(1)).is_none(),
            "the budget is held"
        );
        drop(all);
        assert!(now(admission.load_permit(1)).is_some());
    }

    #[test]
    fn a_new_worker_holds_one_job_per_compute_slot() {
        assert_eq!(Pace::default().limit(4, WINDOW, 256), 4);
    }

    #[test]
    fn small_jobs_are_held_ahead_and_long_ones_are_not() {
        let pace = Pace::default();
        pace.record(2.0);
        // 2 slots get through 100 jobs of 2 ms in 100 ms.
        assert_eq!(pace.limit(2, WINDOW, 256), 102);
        assert_eq!(pace.limit(2, WINDOW, 64), 64, "never above --max-in-flight");
        assert_eq!(pace.limit(2, Duration::ZERO, 256), 2, "--prefetch-ms 0");
        let long = Pace::default();
        long.record(3000.0);
        assert_eq!(long.limit(2, WINDOW, 256), 2);
        let tiny = Pace::default();
        tiny.record(0.0);
        assert_eq!(
            tiny.limit(2, WINDOW, 256),
            256,
            "a zero mean is not a division by zero"
        );
    }

    #[test]
    fn the_pace_follows_recent_jobs() {
        let pace = Pace::default();
        pace.record(1.0);
        for _ in 0..30 {
            pace.record(1000.0);
        }
        // After a run of one-second jobs the worker holds no more than its slots again.
        assert_eq!(pace.limit(2, WINDOW, 256), 2);
        for _ in 0..40 {
            pace.record(1.0);
        }
        assert!(pace.limit(2, WINDOW, 256) > 100);
    }

    #[test]
    fn memory_is_reserved_in_whole_mib_within_a_semaphores_count() {
        assert_eq!(mib(0), 1, "every job reserves something");
        assert_eq!(mib(1), 1);
        assert_eq!(mib(1 << 20), 1);
        assert_eq!(mib((1 << 20) + 1), 2);
        assert_eq!(mib(u64::MAX), u32::MAX);
        // A million f32 elements are 4 MiB; an absurd count saturates instead of wrapping.
        assert_eq!(job_mib(1 << 20), 4);
        assert_eq!(job_mib(u64::MAX), u32::MAX);
    }

    #[test]
    fn a_job_over_the_whole_budget_is_refused_and_one_within_it_is_not() {
        let admission = admission(8, 2, 4);
        assert!(
            admission.fits("matmul", 1 << 20).is_ok(),
            "4 MiB fits 4 MiB"
        );
        let refused = admission.fits("matmul", (1 << 20) + 1).unwrap_err();
        assert_eq!(refused.kind, kiln_proto::ErrorKind::TooLarge);
        assert!(refused.message.contains("--max-memory-mb"), "{refused}");
    }

    #[tokio::test]
    async fn jobs_that_fit_the_budget_alone_wait_for_each_other() {
        let admission = admission(8, 4, 8);
        // Two jobs of 4 MiB fill an 8 MiB budget; a third waits although slots are free.
        let first = admission.compute_permit(1 << 20).await;
        let _second = admission.compute_permit(1 << 20).await;
        let third = admission.compute_permit(1 << 20);
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending());
        drop(first);
        assert!(futures::poll!(third.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn a_computed_job_frees_its_slot_and_keeps_its_memory_until_stored() {
        let admission = admission(8, 1, 8);
        let first = admission.compute_permit(1 << 20).await.computed();
        // The one compute slot is free: a job that fits beside the stored output computes.
        let small = admission.compute_permit(1).await;
        drop(small);
        // One that needs the output's memory too waits until it is stored.
        let big = admission.compute_permit(1 << 21);
        tokio::pin!(big);
        assert!(futures::poll!(big.as_mut()).is_pending());
        drop(first);
        assert!(futures::poll!(big.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn no_more_jobs_than_compute_slots_compute_at_once() {
        let admission = admission(8, 2, 1024);
        let _a = admission.compute_permit(1).await;
        let b = admission.compute_permit(1).await;
        let c = admission.compute_permit(1);
        tokio::pin!(c);
        assert!(futures::poll!(c.as_mut()).is_pending());
        drop(b);
        assert!(futures::poll!(c.as_mut()).is_ready());
    }

    #[tokio::test]
    async fn the_pull_loop_never_holds_more_than_the_limit_or_max_in_flight() {
        let admission = admission(6, 2, 1024);
        // Before the first job: one per compute slot.
        let room = admission.room().expect("an idle worker has room");
        assert_eq!(room, Room { limit: 2, free: 2 });
        let first = admission.reserve(room).await;
        assert_eq!((first.len(), admission.held()), (2, 2));
        assert_eq!(admission.room(), None, "full at the limit");
        // Fast jobs raise the limit, never above max_in_flight.
        admission.record(0.01);
        let room = admission.room().expect("room at the faster pace");
        assert_eq!(room, Room { limit: 6, free: 4 });
        let more = admission.reserve(room).await;
        assert_eq!((more.len(), admission.held()), (4, 6));
        assert_eq!(admission.room(), None);
        // A released job frees its slot and wakes the loop.
        let woken = admission.released();
        tokio::pin!(woken);
        assert!(futures::poll!(woken.as_mut()).is_pending());
        for permit in first {
            admission.release(permit);
        }
        assert!(futures::poll!(woken.as_mut()).is_ready());
        assert_eq!(admission.held(), 4);
        assert!(!admission.all_released(Duration::from_millis(10)).await);
        drop(more);
        assert!(admission.all_released(Duration::from_secs(5)).await);
    }
}
