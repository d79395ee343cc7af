//! A job's objects: loading the inputs its parameters name from `KILN_DATA` before it runs,
//! and storing the output it leaves there after.

use async_nats::jetstream::{self, AckKind};
use kiln_data::store;
use kiln_kernels::{DecodedJob, Inputs, Stored};
use kiln_proto::{ErrorKind, JobError, ObjectDescriptor};

use crate::admission::LoadPermit;
use crate::compute::Interrupted;
use crate::shared::Shared;

/// The `KILN_DATA` bucket, opened on first use (a worker that never sees an object never
/// needs it, and a bucket made after the worker started is found).
pub(crate) async fn bucket(shared: &Shared) -> Result<&store::Bucket, JobError> {
    shared
        .data
        .get_or_try_init(|| async { store::open(&shared.js).await.map_err(JobError::from) })
        .await
}

/// Why a job's objects were not loaded.
pub(crate) enum Unloaded {
    /// Answer the job with this error.
    Failed(JobError),
    /// The worker stops past its drain timeout while the job waited to load: hand it back
    /// with this reason, as a job waiting for a compute slot is.
    Stopping(JobError),
}

impl From<JobError> for Unloaded {
    fn from(error: JobError) -> Self {
        Unloaded::Failed(error)
    }
}

/// Load every object `job`'s parameters name, then check the job again with the sizes now
/// known. Downloads wait for a [`LoadPermit`]: a place for loading jobs, then what loading the
/// objects takes ([`store::load_size`]: a small PNG decodes to many times its bytes), which the
/// caller holds until the job has computed and stored its output (`None`: no objects).
/// Progress acks keep the job while it waits and while large objects arrive; a wait ends when
/// the worker stops or the job is cancelled.
pub(crate) async fn load(
    shared: &Shared,
    message: &jetstream::Message,
    job: &mut DecodedJob,
    named: (&str, time::OffsetDateTime),
) -> Result<Option<LoadPermit>, Unloaded> {
    let wanted = job.objects();
    if wanted.is_empty() {
        return Ok(None);
    }
    let fetch = async {
        let bucket = bucket(shared).await?;
        let budget = shared.admission.memory().bytes;
        let place = watched(shared, named, shared.admission.load_place()).await?;
        let (measured, bytes) = measure(bucket, &wanted, budget).await?;
        let permit = Some(watched(shared, named, place.reserve(bytes)).await?);
        let max_elements = shared.config.limits.max_elements;
        // The bytes measured, which the permit covers: all of them together, the others
        // dropped as soon as one fails (a wrong format need not wait for a large download).
        let loads = wanted.iter().zip(&measured).map(|(w, m)| async move {
            store::fetch_measured(bucket, &w.reference, m, w.want, budget, max_elements)
                .await
                .map_err(|e| in_param(w.param, e.into()))
        });
        let loads = futures::future::try_join_all(loads).await?;
        let mut inputs = Inputs::none();
        let mut objects = Vec::with_capacity(wanted.len());
        for ((w, loaded), m) in wanted.into_iter().zip(loads).zip(&measured) {
            objects.push(format!(
                "{}: {}",
                w.param,
                m.what(w.reference.object.as_str())
            ));
            inputs.insert(w.param, loaded);
        }
        Ok::<_, Unloaded>((inputs, permit, objects))
    };
    // Boxed: the object store's futures are tens of kilobytes, which every job's future would
    // otherwise carry (and spawning copy) whether it loads objects or not.
    let fetching = Box::pin(with_progress(message, shared.ack_wait.progress(), fetch));
    let (inputs, permit, objects) = fetching.await?;
    // What the objects are together (shapes that do not fit): the message names them all.
    job.load(inputs).map_err(|mut error| {
        if error.kind == ErrorKind::InvalidInput && !error.message.contains("object ") {
            error.message = format!("{} ({})", error.message, objects.join("; "));
        }
        error
    })?;
    if let Err(refused) = shared.admission.fits(job.kind.name, job.plan.elements) {
        // Before the permit goes: the next loading job may take the memory it held.
        job.unload();
        return Err(refused.into());
    }
    Ok(permit)
}

/// Measure every object of `wanted` (what loading each holds, from its size and first bytes)
/// and check them against the worker's memory `budget`: the measures, and the bytes to
/// reserve for loading them. One over the budget, stored or as values, is refused before
/// anything is downloaded (the job's other objects included) and without waiting for the
/// budget; so are objects within it each and over it together.
async fn measure(
    bucket: &store::Bucket,
    wanted: &[kiln_kernels::Wanted],
    budget: u64,
) -> Result<(Vec<store::Measured>, u64), Unloaded> {
    // All measured at once (a round trip or two each), then checked in order, so the first
    // parameter at fault is the one named.
    let sizes = wanted
        .iter()
        .map(|w| store::load_size(bucket, &w.reference, w.want));
    let sizes = futures::future::join_all(sizes).await;
    let (mut bytes, mut values) = (0u64, 0u64);
    let mut measured = Vec::with_capacity(wanted.len());
    for (w, m) in wanted.iter().zip(sizes) {
        let refuse = |e: kiln_data::DataError| in_param(w.param, e.into());
        // An object that cannot be measured is not loaded either (unreserved, it could take
        // any memory): missing is `invalid_input`, a lookup that failed `internal`.
        let m = m.map_err(refuse)?;
        let what = m.what(w.reference.object.as_str());
        store::check_size(&what, m.size(), budget).map_err(refuse)?;
        m.load.check(&what, budget).map_err(refuse)?;
        bytes = bytes.saturating_add(m.load.reserve(budget));
        values = values.saturating_add(m.load.values.unwrap_or(0));
        measured.push(m);
    }
    // Each within the budget, and together over it: the job could not compute once they were
    // loaded, and loading them would hold more than the budget meanwhile (the reservation is
    // cut to the budget).
    if values > budget {
        let each: Vec<String> = wanted
            .iter()
            .zip(&measured)
            .map(|(w, m)| format!("{} {}", w.param, mib(m.load.values.unwrap_or(0))))
            .collect();
        return Err(Unloaded::Failed(JobError::too_large(format!(
            "the job's objects load as {} of f32 values together ({}), over this worker's \
             memory budget of {}; send smaller objects or run a worker with more memory",
            mib(values),
            each.join(", "),
            mib(budget)
        ))));
    }
    Ok((measured, bytes))
}

/// `bytes` in MiB, for messages (`12.5 MiB`), as kiln-data's own say them.
fn mib(bytes: u64) -> String {
    format!("{} MiB", kiln_data::formats::mib(bytes))
}

/// `error`, its message naming the job parameter `param` it is about.
fn in_param(param: &str, mut error: JobError) -> JobError {
    error.message = format!("parameter {param:?}: {}", error.message);
    error
}

/// Wait for `waiting` (a place to load, or the bytes to load with) as a job waiting for a
/// compute slot waits for one ([`crate::compute::watched`]).
async fn watched<T>(
    shared: &Shared,
    named: (&str, time::OffsetDateTime),
    waiting: impl Future<Output = T>,
) -> Result<T, Unloaded> {
    crate::compute::watched(shared, Some(named), waiting)
        .await
        .map_err(|interrupted| match interrupted {
            Interrupted::Stopping => Unloaded::Stopping(JobError::internal(
                "worker shutting down before the job loaded its objects; job handed back",
            )),
            Interrupted::Cancelled => Unloaded::Failed(JobError::new(
                ErrorKind::Cancelled,
                "cancelled on request while it waited to load its objects",
            )),
        })
}

/// Store what the job left to store (its output in full, or a trained model) and name the
/// object in its output under `"object"`.
pub(crate) async fn store_output(
    shared: &Shared,
    message: &jetstream::Message,
    name: &str,
    format: &'static str,
    stored: Stored,
    output: &mut serde_json::Value,
) -> Result<ObjectDescriptor, JobError> {
    let put = async {
        let bucket = bucket(shared).await?;
        let descriptor = match &stored {
            Stored::Tensor {
                name: entry,
                tensor,
            } => store::put_tensor(bucket, name, tensor, format, entry).await?,
            Stored::Model(model) => store::put_model(bucket, name, model).await?,
        };
        Ok::<_, JobError>(descriptor)
    };
    // Boxed, as loading is: only a job that stores an output pays for the object store's
    // futures.
    let storing = Box::pin(with_progress(message, shared.ack_wait.progress(), put));
    let descriptor = storing.await?;
    if let Some(fields) = output.as_object_mut() {
        fields.insert(
            "object".into(),
            serde_json::to_value(&descriptor).unwrap_or_default(),
        );
    }
    Ok(descriptor)
}

/// The format a stored output takes: a model is always safetensors; a tensor is what the job
/// asked for.
pub(crate) fn format_of(stored: &Stored, asked: kiln_proto::OutputMode) -> &'static str {
    match stored {
        Stored::Model(_) => "safetensors",
        Stored::Tensor { .. } => asked.format(),
    }
}

/// Run `work`, telling the server every third of the ack wait that the job is still in
/// progress.
pub(crate) async fn with_progress<T>(
    message: &jetstream::Message,
    mut ticker: crate::ackwait::Progress,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticker.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
        }
    }
}
