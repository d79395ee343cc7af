//! What the scheduler knows of the two classes between reads: each one's backlog and live
//! workers as last read from the server, and the jobs it routed since.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use kiln_proto::streams::{self, STREAM_JOBS};
use kiln_proto::{DeviceClass, JobSubject};

use crate::model::{ClassState, CostModel};

/// The classes' state as last read, plus the jobs routed since (so that a burst between two
/// reads does not all land on one class), less those of them whose results have come back.
#[derive(Debug, Default)]
pub(super) struct Classes {
    pub(super) gpu: ClassState,
    pub(super) cpu: ClassState,
    /// The jobs this scheduler routed since the last read, by id, with their class. Only
    /// these come off a backlog when their result arrives: the read itself counted the
    /// others, and a duplicate result, another scheduler's job or one submitted to a class
    /// directly must not take a job off twice or take off one never counted.
    pub(super) routed_since: HashMap<String, (DeviceClass, String)>,
    /// When the live workers were last read (`None`: never).
    workers_read_at: Option<std::time::Instant>,
}

/// How long a read of the live workers stands while new reads fail: as long as a worker's
/// heartbeat lives by default (three of two seconds). Past it the classes count no workers,
/// as they would once the heartbeats had expired.
const WORKERS_STAND_FOR: Duration = Duration::from_secs(6);

/// Subjects of the jobs stream counted into the mix of the queues: one per class and kind
/// (two with the copies) in a working system. This bounds the work of counting a stream full
/// of jobs on made-up kinds, not what the server sends (its first page of subjects).
const MAX_SUBJECTS: usize = 1000;

impl Classes {
    pub(super) fn state(&mut self, class: DeviceClass) -> &mut ClassState {
        match class {
            DeviceClass::Gpu => &mut self.gpu,
            _ => &mut self.cpu,
        }
    }

    /// Count a job this scheduler routed to `class` against it until its result arrives or
    /// the next read of the queues counts it.
    pub(super) fn routed(&mut self, id: String, class: DeviceClass, kind: &str) {
        let state = self.state(class);
        state.backlog += 1;
        *state.queued.entry(kind.to_owned()).or_default() += 1;
        self.routed_since.insert(id, (class, kind.to_owned()));
    }
}

/// Re-read each class's backlog (pending + in flight on its consumer) and live workers. A
/// read that fails (a slow or restarting server) keeps what the last one found, for up to
/// [`WORKERS_STAND_FOR`]: a worker does not vanish from the model because one read of the
/// workers bucket timed out, which routed every auto job away from a live GPU class until
/// the next read.
pub(super) async fn refresh(js: &jetstream::Context, classes: &mut Classes) {
    match streams::live_workers(js).await {
        Ok(workers) => {
            let (mut gpu, mut cpu) = (Workers::default(), Workers::default());
            for w in workers.iter().filter(|w| w.state == "serving") {
                let class = if w.class == DeviceClass::Gpu {
                    &mut gpu
                } else {
                    &mut cpu
                };
                class.live += 1;
                // Saturating: an entry is anyone's to write on an open server, and one
                // claiming usize::MAX made the sum overflow (a panic, for good).
                class.capacity = class.capacity.saturating_add(w.capacity);
            }
            gpu.set(&mut classes.gpu);
            cpu.set(&mut classes.cpu);
            classes.workers_read_at = Some(std::time::Instant::now());
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not read live workers; keeping the last read");
            if classes
                .workers_read_at
                .is_none_or(|at| at.elapsed() > WORKERS_STAND_FOR)
            {
                Workers::default().set(&mut classes.gpu);
                Workers::default().set(&mut classes.cpu);
            }
        }
    }
    let Ok(stream) = js.get_stream(STREAM_JOBS).await else {
        return;
    };
    for class in [DeviceClass::Gpu, DeviceClass::Cpu] {
        // The jobs routed since are in the backlog just read; after a failed read they are
        // still counted in the one kept, and come off it when their results arrive.
        if let Ok(info) = stream.consumer_info(class.consumer()).await {
            classes.state(class).backlog = info.num_pending + info.num_ack_pending as u64;
            classes
                .routed_since
                .retain(|_, (routed, _)| *routed != class);
        }
    }
    match queued(&stream).await {
        Ok([gpu, cpu]) => {
            classes.gpu.queued = gpu;
            classes.cpu.queued = cpu;
        }
        // Priced at the class mean until a read succeeds: a mix kept from an older read would
        // drift, with the jobs routed since added to it and none taken off.
        Err(e) => {
            tracing::debug!(error = %e, "could not read the queues' kinds; pricing them at the class mean");
            classes.gpu.queued.clear();
            classes.cpu.queued.clear();
        }
    }
}

/// Jobs per kind queued on each class (`[gpu, cpu]`), pending or in flight: the jobs
/// stream's message counts per subject (`jobs.<class>.<kind>` and its copies), which in a
/// work queue are the jobs not yet acked.
async fn queued(
    stream: &jetstream::stream::Stream,
) -> Result<[BTreeMap<String, u64>; 2], jetstream::stream::InfoError> {
    let mut subjects = stream
        .info_with_subjects("jobs.>")
        .await?
        .take(MAX_SUBJECTS);
    let mut queued = [BTreeMap::new(), BTreeMap::new()];
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry?;
        let Ok(job) = JobSubject::parse(&subject) else {
            continue;
        };
        let i = match job.class {
            DeviceClass::Gpu => 0,
            DeviceClass::Cpu => 1,
            DeviceClass::Auto => continue,
        };
        *queued[i].entry(job.kind.to_owned()).or_default() += count as u64;
    }
    Ok(queued)
}

/// The live workers of one class, as one read of the workers bucket found them.
#[derive(Default)]
struct Workers {
    live: usize,
    capacity: usize,
}

impl Workers {
    fn set(self, state: &mut ClassState) {
        state.live_workers = self.live;
        state.capacity = self.capacity;
    }
}

/// The fields of a result event the model learns from.
#[derive(serde::Deserialize)]
struct Observed {
    id: String,
    kind: String,
    class: DeviceClass,
    status: kiln_proto::Status,
    compute_ms: f64,
    #[serde(default)]
    flops: f64,
}

/// Learn from a result event; a job this scheduler routed since the last read comes off its
/// class's backlog at once, rather than pricing the class's queue until the next read.
pub(super) fn learn(model: &mut CostModel, classes: &mut Classes, payload: &[u8]) {
    let Ok(o) = serde_json::from_slice::<Observed>(payload) else {
        return;
    };
    if let Some((class, kind)) = classes.routed_since.remove(&o.id) {
        let state = classes.state(class);
        state.backlog = state.backlog.saturating_sub(1);
        // The kind it was routed as: one kiln does not run is answered as `unknown`.
        if let Some(count) = state.queued.get_mut(&kind) {
            *count = count.saturating_sub(1);
        }
    }
    if o.status == kiln_proto::Status::Succeeded && kiln_kernels::find(&o.kind).is_some() {
        model.observe(&o.kind, o.class, o.flops, o.compute_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, class: &str, status: &str) -> Vec<u8> {
        serde_json::json!({
            "id": id, "kind": "matmul", "class": class, "status": status,
            "compute_ms": 40.0, "flops": 2.0e9,
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn results_take_only_the_jobs_routed_since_the_last_read_off_their_backlog() {
        let mut model = CostModel::default();
        let mut classes = Classes::default();
        // The last read counted 3 gpu jobs; this scheduler routed two more since, one per class.
        classes.gpu.backlog = 4;
        classes.cpu.backlog = 1;
        classes
            .routed_since
            .insert("a".into(), (DeviceClass::Gpu, "matmul".into()));
        classes
            .routed_since
            .insert("b".into(), (DeviceClass::Cpu, "matmul".into()));
        let before = model.estimate("matmul", DeviceClass::Gpu, 2.0e9);

        learn(&mut model, &mut classes, &event("a", "gpu", "succeeded"));
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 1));
        let taught = model.estimate("matmul", DeviceClass::Gpu, 2.0e9);
        assert!(taught > before, "{before} -> {taught}");

        // A duplicate of that result, a job the last read counted, and one another scheduler
        // routed or that was submitted to the class directly: no change to the backlogs.
        for id in ["a", "counted-by-the-read", "elsewhere"] {
            learn(&mut model, &mut classes, &event(id, "gpu", "succeeded"));
        }
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 1));

        // A failed job left its queue too, but its time teaches nothing.
        let cpu_before = model.estimate("matmul", DeviceClass::Cpu, 2.0e9);
        learn(&mut model, &mut classes, &event("b", "cpu", "failed"));
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 0));
        assert_eq!(
            model.estimate("matmul", DeviceClass::Cpu, 2.0e9),
            cpu_before
        );
        assert!(classes.routed_since.is_empty());

        // What does not parse changes nothing.
        learn(&mut model, &mut classes, b"not json");
        assert_eq!((classes.gpu.backlog, classes.cpu.backlog), (3, 0));
    }

    /// A server with kiln's streams and buckets, and a JetStream context on it.
    async fn server_with_streams() -> (kiln_testkit::NatsServer, jetstream::Context) {
        let server = kiln_testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = jetstream::new(client);
        streams::ensure_all(&js, &kiln_proto::Topology::default())
            .await
            .expect("streams");
        (server, js)
    }

    /// The queues' mix is read from the jobs stream's subjects: per class, per kind (one
    /// kiln does not run too: the model prices it at the class mean), copies with their
    /// kind, auto jobs (not yet routed) left out.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_queues_are_read_per_kind() {
        let (_server, js) = server_with_streams().await;
        let jobs = [
            ("jobs.gpu.train_mlp", 3),
            ("jobs.gpu.train_mlp.copy", 2),
            ("jobs.gpu.matmul", 1),
            ("jobs.cpu.vector_add", 4),
            ("jobs.auto.matmul", 5),
            ("jobs.cpu.nokind", 1),
        ];
        for (subject, count) in jobs {
            for _ in 0..count {
                js.publish(subject, "{}".into())
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
            }
        }
        let mut classes = Classes::default();
        refresh(&js, &mut classes).await;
        let mix = |pairs: &[(&str, u64)]| {
            pairs
                .iter()
                .map(|&(k, n)| (k.to_owned(), n))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(classes.gpu.queued, mix(&[("train_mlp", 5), ("matmul", 1)]));
        assert_eq!(classes.cpu.queued, mix(&[("vector_add", 4), ("nokind", 1)]));
        // What the scheduler routes counts at once, and comes off when answered.
        classes.routed("r".into(), DeviceClass::Cpu, "matmul");
        assert_eq!(classes.cpu.queued["matmul"], 1);
        let mut model = CostModel::default();
        let result = serde_json::json!({
            "id": "r", "kind": "matmul", "class": "cpu", "status": "succeeded",
            "compute_ms": 1.0, "flops": 1.0e6,
        });
        learn(&mut model, &mut classes, result.to_string().as_bytes());
        assert_eq!(classes.cpu.queued["matmul"], 0);
    }

    /// A heartbeat of a serving worker of `class` with `capacity` compute slots.
    fn heartbeat(name: &str, class: DeviceClass, capacity: usize) -> Vec<u8> {
        let now = time::OffsetDateTime::now_utc();
        serde_json::to_vec(&kiln_proto::WorkerInfo {
            name: name.into(),
            class,
            device: "cpu".into(),
            backend: "ndarray".into(),
            engines: Default::default(),
            capacity,
            max_in_flight: 64,
            in_flight: 0,
            succeeded: 0,
            failed: 0,
            state: "serving".into(),
            running: Vec::new(),
            version: "test".into(),
            started_at: now,
            updated_at: now,
        })
        .expect("a heartbeat")
    }

    /// Store a heartbeat of a serving worker in the workers bucket.
    async fn beat(js: &jetstream::Context, name: &str, class: DeviceClass, capacity: usize) {
        let kv = js
            .get_key_value(kiln_proto::BUCKET_WORKERS)
            .await
            .expect("bucket");
        kv.put(name, heartbeat(name, class, capacity).into())
            .await
            .expect("put");
    }

    /// A read of the workers bucket that fails keeps the classes as the last read found
    /// them; a read that succeeds and finds no worker empties them.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_read_keeps_the_last_live_workers() {
        let (_server, js) = server_with_streams().await;
        beat(&js, "g", DeviceClass::Gpu, 2).await;
        beat(&js, "c", DeviceClass::Cpu, 1).await;
        let mut classes = Classes::default();
        refresh(&js, &mut classes).await;
        let seen = |c: &Classes| {
            (
                (c.gpu.live_workers, c.gpu.capacity),
                (c.cpu.live_workers, c.cpu.capacity),
            )
        };
        assert_eq!(seen(&classes), ((1, 2), (1, 1)));

        // The bucket cannot be read: the last read stands, for as long as a heartbeat would.
        js.delete_key_value(kiln_proto::BUCKET_WORKERS)
            .await
            .expect("delete bucket");
        refresh(&js, &mut classes).await;
        assert_eq!(seen(&classes), ((1, 2), (1, 1)));
        classes.workers_read_at = classes
            .workers_read_at
            .and_then(|at| at.checked_sub(WORKERS_STAND_FOR + Duration::from_secs(1)));
        refresh(&js, &mut classes).await;
        assert_eq!(seen(&classes), ((0, 0), (0, 0)), "a read too old to stand");

        // Readable again, with one worker back.
        streams::ensure_all(&js, &kiln_proto::Topology::default())
            .await
            .expect("streams");
        beat(&js, "g", DeviceClass::Gpu, 3).await;
        refresh(&js, &mut classes).await;
        assert_eq!(seen(&classes), ((1, 3), (0, 0)));
    }
}
