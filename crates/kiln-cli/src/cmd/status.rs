//! `kiln status`: queues, consumers and the metrics table, once.

use std::fmt::Write as _;
use std::process::ExitCode;

use async_nats::jetstream;
use kiln_client::cluster::Overview;
use kiln_client::jobs::{Place, locate};
use kiln_proto::streams::{STREAM_DLQ, STREAM_JOBS, STREAM_RESULTS};
use serde::Serialize;

use super::NotFound;
use crate::cli::{Format, NatsArgs, StatusArgs};

pub async fn run(nats: &NatsArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let json = args.output.format == Format::Json;
    if let Some(id) = &args.id
        && let Err(message) = kiln_client::jobs::check_job_id(id)
    {
        eprintln!("kiln: {message}");
        if json {
            super::print_json(&NotFound::invalid(id, message))?;
        }
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    }
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    let js = jetstream::new(client);
    match args.id {
        None if json => super::print_json(&kiln_client::cluster::overview(&js).await?)?,
        None => print!("{}", overview(&js).await?),
        Some(id) => {
            let place = locate(&js, &id).await?;
            // Answered, the id may still run: as another kind (two jobs under one id), or
            // sent again (its result will be refused).
            let also = match &place {
                Place::Finished { result } => {
                    kiln_client::jobs::running_under(&js, &id, result).await
                }
                _ => None,
            };
            if json {
                super::print_json(&JobStatus {
                    id: &id,
                    place: &place,
                    also_running: also.as_ref(),
                })?;
            } else {
                println!("{}", describe(&place, &id));
                if let Some(also) = &also {
                    println!("{}", describe(also, &id));
                    if let (Place::Finished { result }, Place::Running { kind, .. }) =
                        (&place, also)
                        && *kind == result.kind
                    {
                        println!(
                            "  sent again under its id: its result will be refused, the first \
                             answer stands (`kiln cancel {id}` stops it)"
                        );
                    }
                }
                if let Place::Queued { record } = &place {
                    let hint = match record.class {
                        kiln_proto::DeviceClass::Auto => routed_hint(&js, &record.kind).await,
                        class => class_hint(&js, class, &record.kind).await,
                    };
                    if let Some(hint) = hint {
                        println!("  {hint}");
                    }
                }
            }
            // As `kiln result`: a job kiln knows nothing of is not found.
            if matches!(place, Place::Unknown) {
                return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a job queued as `auto` of `kind` may be now (its record is not updated when the
/// scheduler routes it): still in the auto queue, or, when the scheduler has taken every
/// auto job, in one of the classes' queues, with their backlogs and live workers, so that a
/// job routed to a class with no worker is seen to wait for one.
async fn routed_hint(js: &jetstream::Context, kind: &str) -> Option<String> {
    use kiln_proto::DeviceClass;
    use kiln_proto::streams::CONSUMER_SCHEDULER;
    let overview = kiln_client::cluster::overview(js).await.ok()?;
    let consumer = |name: &str| overview.consumers.iter().find(|c| c.name == name);
    let scheduler = consumer(CONSUMER_SCHEDULER)?;
    let unrouted = scheduler.pending + scheduler.in_flight;
    // A scheduler holds the jobs it took while KILN_JOBS has no room for their copies: by
    // count, or by bytes (within a largest message, 1 MiB, of the limit).
    let full = overview
        .max_queued_jobs
        .is_some_and(|max| overview.queued_jobs >= max)
        || overview
            .max_queued_bytes
            .is_some_and(|max| overview.queued_bytes.saturating_add(1 << 20) > max);
    if scheduler.in_flight > 0 && full {
        return Some(format!(
            "{unrouted} auto job(s) wait to be routed, {} of them held by the scheduler: \
             {STREAM_JOBS} is full ({} jobs, {}), so their copies wait for room (2 minutes at \
             most, then each is answered failed)",
            scheduler.in_flight,
            overview.queued_jobs,
            kiln_data::formats::mib(overview.queued_bytes)
        ));
    }
    if unrouted > 0 {
        return Some(match scheduler.waiting_pulls {
            0 => format!(
                "{unrouted} auto job(s) wait to be routed and no scheduler is pulling them: \
                 start `kiln scheduler`"
            ),
            _ => format!("{unrouted} auto job(s) wait to be routed"),
        });
    }
    Some(format!(
        "routed: the scheduler has taken every auto job, so it waits in the queue it chose \
         ({}; {})",
        class_line(&overview, DeviceClass::Gpu, kind),
        class_line(&overview, DeviceClass::Cpu, kind)
    ))
}

/// The queue of a job sent to `class` directly, with its backlog and live workers: a job
/// taken by a worker that died, on a class with none live, said only "queued".
async fn class_hint(
    js: &jetstream::Context,
    class: kiln_proto::DeviceClass,
    kind: &str,
) -> Option<String> {
    let overview = kiln_client::cluster::overview(js).await.ok()?;
    Some(class_line(&overview, class, kind))
}

/// `jobs.<class>.<kind>`: the jobs of the class waiting, those taken and not answered (by a
/// live worker, or one no longer live), and the live workers.
fn class_line(
    overview: &kiln_client::cluster::Overview,
    class: kiln_proto::DeviceClass,
    kind: &str,
) -> String {
    let queue = overview
        .consumers
        .iter()
        .find(|c| c.name == class.consumer());
    let live = overview.workers.iter().filter(|w| w.takes(class)).count();
    // A draining worker still holds its jobs: it finishes or hands them back.
    let holders = overview.workers.iter().any(|w| w.class == class);
    let waiting = queue.map_or(0, |c| c.pending);
    // A job taken by a worker that was killed is neither waiting nor on a live worker until
    // its ack wait ends: "0 waiting, no live worker" hid it.
    let taken = match (queue.map_or(0, |c| c.in_flight), holders) {
        (0, _) => String::new(),
        (n, false) => format!(
            ", {n} taken by a worker no longer live (handed out again once its ack wait ends, \
             to the next worker of the class that pulls, or answered failed if that was its \
             last delivery)"
        ),
        (n, true) => format!(", {n} taken and not answered yet"),
    };
    format!(
        "jobs.{class}.{kind}: {waiting} job(s) of the class waiting{taken}, {}",
        match live {
            0 => "no live worker".to_owned(),
            n => format!("{n} live worker(s)"),
        }
    )
}

/// `kiln status <id> -o json`: the id, and where the job is (`state`: finished, gone,
/// running, cancel_requested, queued or unknown, with what kiln knows of it there); for a
/// finished job, the job of another kind under its id that a worker runs, if any.
#[derive(Serialize)]
struct JobStatus<'a> {
    id: &'a str,
    #[serde(flatten)]
    place: &'a Place,
    #[serde(skip_serializing_if = "Option::is_none")]
    also_running: Option<&'a Place>,
}

/// One line for `kiln status <id>` saying where job `id` is.
pub fn describe(place: &Place, id: &str) -> String {
    match place {
        Place::Finished { result } => finished(id, result),
        Place::Gone { reason, .. } => format!("{id}: gone: {reason}"),
        Place::Running {
            kind,
            device,
            worker,
            attempt,
            waiting,
            cancel_requested,
        } => format!(
            "{id}: {} ({kind}) on {device} ({worker}), attempt {attempt}{}",
            match waiting {
                true => "held, waiting for a compute slot",
                false => "running",
            },
            match cancel_requested {
                true => "; cancel requested, it stops at its next checkpoint",
                false => "",
            }
        ),
        Place::CancelRequested {
            record: Some(record),
        } => format!(
            "{id}: cancel requested; queued on jobs.{}.{} since {}: a worker answers it \
             `cancelled` when it takes it",
            record.class,
            record.kind,
            record
                .at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        ),
        // `kiln cancel` marks an id it knows nothing of too (a job published without `kiln
        // submit` has no record): no promise that a job will be answered.
        Place::CancelRequested { record: None } => format!(
            "{id}: cancel requested, and nothing else is known of it (no record, no result, no \
             worker holds it): a job of this id sent before the mark (with no record, as a \
             plain publish) is answered `cancelled` when a worker takes it; one sent after it \
             runs"
        ),
        Place::Queued { record } => format!(
            "{id}: queued on jobs.{}.{}{} since {}{}",
            record.class,
            record.kind,
            match record.class {
                // Routed or not: its record is not updated when the scheduler routes it.
                kiln_proto::DeviceClass::Auto => {
                    " (the scheduler routes it to the GPU or CPU workers, where it waits for a \
                     worker of that class; `kiln status` shows each class's backlog)"
                }
                _ => "",
            },
            record
                .at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            match record.replay {
                0 => String::new(),
                n => format!(" (replay {n} from the dead-letter queue)"),
            }
        ),
        Place::Unknown => {
            format!(
                "{id}: unknown: no record, no result, and no live worker said it held it at \
                 its last heartbeat (every 2 s) (a job published without `kiln submit` has no \
                 record: it may still wait in KILN_JOBS, whose queues `kiln status` shows, or \
                 have started since)"
            )
        }
    }
}

/// "succeeded / failed / cancelled on <device> (<worker>, attempt N[, replay N]) in … ms".
fn finished(id: &str, event: &kiln_proto::ResultEvent) -> String {
    let status = match (&event.status, &event.error) {
        (kiln_proto::Status::Failed, Some(e)) if e.kind == kiln_proto::ErrorKind::Cancelled => {
            format!("cancelled ({})", e.message)
        }
        (kiln_proto::Status::Failed, Some(e)) => format!("failed ({}: {})", e.kind, e.message),
        (kiln_proto::Status::Failed, None) => "failed".to_owned(),
        (kiln_proto::Status::Succeeded, _) => "succeeded".to_owned(),
    };
    let replay = match event.replay {
        0 => String::new(),
        n => format!(", replay {n}"),
    };
    let (worker, attempt, ms) = (&event.worker, event.attempt, event.total_ms);
    let internal = event
        .error
        .as_ref()
        .is_some_and(|e| e.kind == kiln_proto::ErrorKind::Internal);
    match event.device.as_str() {
        // Given up on after its deliveries ran out (the workers that held it were killed):
        // it may have computed, on a device no result names.
        "none" if internal => format!(
            "{id}: {status}, answered by {worker} (attempt {attempt}{replay}) in {ms:.3} ms"
        ),
        // Answered before it reached a device (refused, or cancelled while queued): it said
        // "on none".
        "none" => format!(
            "{id}: {status} before computing, by {worker} (attempt {attempt}{replay}) in \
             {ms:.3} ms"
        ),
        device => {
            format!(
                "{id}: {status} on {device} ({worker}, attempt {attempt}{replay}) in {ms:.3} ms"
            )
        }
    }
}

/// Queue and consumer state, then the per-kind metrics table.
pub async fn overview(js: &jetstream::Context) -> anyhow::Result<String> {
    Ok(overview_text(&kiln_client::cluster::overview(js).await?))
}

/// [`Overview`] as `kiln status` prints it.
fn overview_text(o: &Overview) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{STREAM_JOBS}: {} job(s) queued, {} bytes",
        o.queued_jobs, o.queued_bytes
    );
    for c in &o.consumers {
        let name = &c.name;
        let _ = match &c.error {
            None => writeln!(
                out,
                "  {name:<12} pending {:>8}  in flight {:>6}  redelivered {:>6}  waiting pulls {:>3}",
                c.pending, c.in_flight, c.redelivered, c.waiting_pulls
            ),
            Some(e) => writeln!(out, "  {name:<12} unavailable: {e}"),
        };
    }
    match &o.workers_error {
        None => {
            let _ = writeln!(out, "workers: {} live", o.workers.len());
            for w in &o.workers {
                let engines: Vec<String> = w
                    .engines
                    .iter()
                    .map(|(kind, on)| format!("{kind}={on}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<28} {:<4} {:<7} {:<8} {:<10} slots {:>3}  in flight {:>4}  ok {:>8}  failed {:>6}  {}",
                    w.name,
                    w.class,
                    w.device,
                    w.backend,
                    w.state,
                    w.capacity,
                    w.in_flight,
                    w.succeeded,
                    w.failed,
                    engines.join(" ")
                );
            }
        }
        Some(e) => {
            let _ = writeln!(out, "workers: unavailable: {e}");
        }
    }
    for (name, count) in [(STREAM_RESULTS, o.results), (STREAM_DLQ, o.dead_letters)] {
        if let Some(count) = count {
            let _ = writeln!(out, "{name}: {count} message(s)");
        }
    }
    let _ = writeln!(out);
    out.push_str(&crate::table::metrics_table(&o.metrics));
    out
}
