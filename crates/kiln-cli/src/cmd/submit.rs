//! `kiln submit`, and the progress bar `demo` and `bench` share.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use async_nats::jetstream;
use indicatif::{ProgressBar, ProgressStyle};
use kiln_client::data::Input;
use kiln_client::{JobSpec, ResultCollector, publish_all_counted};
use kiln_kernels::{JobMeta, KindEntry};
use kiln_proto::{Codec, DeviceClass, OutputMode, ResultEvent, Status};

use crate::cli::{NatsArgs, SubmitArgs};

mod duplicates;

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Transfers smaller than this go without a bar: they are over before one would show.
const BAR_BYTES: u64 = 8 << 20;

/// A progress bar in bytes on stderr for a transfer (hidden when stderr is not a terminal;
/// none for a small one), moved by the callback [`BytesBar::on_bytes`] gives the transfer, and
/// cleared when dropped: a message printed after it, an error included, has no bar above it.
pub struct BytesBar {
    bar: Option<ProgressBar>,
    inc: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

impl BytesBar {
    /// A bar for `total` bytes (`what`: "storing", "fetching").
    pub fn new(total: u64, what: &str) -> Self {
        let bar = (total >= BAR_BYTES).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(what.to_owned());
            bar
        });
        let inc = bar.clone().map(|bar| {
            let inc: Box<dyn Fn(u64) + Send + Sync> = Box::new(move |n| bar.inc(n));
            inc
        });
        BytesBar { bar, inc }
    }

    /// What the transfer tells the bytes it moved (none without a bar).
    pub fn on_bytes(&self) -> kiln_client::data::OnBytes<'_> {
        self.inc.as_deref()
    }
}

impl Drop for BytesBar {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `kiln submit`: check what was asked, publish the jobs, and with `--wait` print their
/// results as they come.
pub async fn run(nats: &NatsArgs, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut submission = Submission::parse(&args)?;
    if let Err(message) = submission.check_ids() {
        eprintln!("kiln: --id: {message}");
        return Ok(ExitCode::from(super::EXIT_NOT_FOUND));
    }
    let client = kiln_client::connect_to_jetstream(&nats.connect_options()).await?;
    let js = jetstream::new(client.clone());
    kiln_proto::streams::ensure_all(&js, &super::topology(nats)).await?;
    // SIGINT and SIGTERM from here to the end, heard by this one listener: while the jobs
    // are built (storing --input files hears them itself), sent, their ids checked and
    // while --wait waits (they ended a long `--count` without a word of what was sent). One
    // that comes before the publish ends the command with nothing sent.
    let mut signal = std::pin::pin!(crate::signal::wait_for_signal());
    let jobs = submission.jobs(&js).await?;
    warn_if_unserved(&js, submission.class).await;
    // An auto job only GPUs compute is routed to the GPU class even with no GPU worker live,
    // to wait there for one.
    let gpu_only = submission
        .kind
        .check_params(submission.params.clone(), &kiln_proto::Limits::UNLIMITED)
        .is_ok_and(|plan| plan.gpu_only);
    if submission.class == DeviceClass::Auto && gpu_only {
        warn_if_unserved(&js, DeviceClass::Gpu).await;
    }
    let collector = if submission.wait {
        let kind = Some(submission.kind.name);
        let collector = ResultCollector::subscribe(&client, kind, &submission.ids).await?;
        // Ids kiln made up: no earlier job answered one, so what is heard is taken as it
        // comes, without looking each result up.
        Some(match args.id {
            None => collector.new_ids(),
            Some(_) => collector,
        })
    } else {
        None
    };
    let digests: HashMap<String, String> = jobs
        .iter()
        .filter_map(|job| Some((job.id.clone(), job.digest.clone()?)))
        .collect();
    let bar = (submission.args.count > 1).then(|| progress_bar(submission.args.count, "submitted"));
    let mut duplicates = tokio::select! {
        biased;
        () = &mut signal => {
            submission.interrupted_publishing(bar.as_ref());
            // The jobs' `queued` records, which `kiln status` reads, may still be on their way.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), client.flush()).await;
            std::process::exit(130);
        }
        published = submission.publish(&js, jobs, bar.as_ref()) => published?,
    };
    // An id the earlier submission used for another kind, or for other parameters: this job
    // will never run.
    let taken = tokio::select! {
        taken = duplicates::taken(&js, submission.kind.name, &mut duplicates, &digests) => taken,
        () = &mut signal => match submission.wait {
            true => submission.stopped_waiting(None, submission.ids.iter().cloned()),
            false => submission.interrupted_sent(),
        },
    };
    match collector {
        // A script reading the id gets none for a job that will not run.
        None if !taken.is_empty() => Ok(ExitCode::FAILURE),
        None => {
            submission.print_submitted(&duplicates);
            Ok(ExitCode::SUCCESS)
        }
        // `finish` fails the command for the taken ids too.
        Some(mut collector) => {
            submission
                .wait(&js, &mut collector, (&duplicates, &taken), &mut signal)
                .await
        }
    }
}

/// A `kiln submit` command line, checked before connecting.
struct Submission<'a> {
    args: &'a SubmitArgs,
    kind: &'static KindEntry,
    class: DeviceClass,
    params: serde_json::Value,
    inputs: Vec<Input>,
    /// The objects `--input` files were stored as, once stored.
    uploaded: Vec<String>,
    output: OutputMode,
    codec: Codec,
    /// `--id`, or a fresh one.
    base_id: String,
    /// Every job's id: `base_id` alone, or `<base_id>-<i>` with `--count`.
    ids: Vec<String>,
    /// Wait for the results (`--wait`, or `--output`).
    wait: bool,
}

impl<'a> Submission<'a> {
    fn parse(args: &'a SubmitArgs) -> anyhow::Result<Self> {
        let kind = kiln_kernels::find(&args.kind).with_context(|| {
            format!(
                "unknown job kind {:?}; known kinds: {}",
                args.kind,
                kiln_kernels::kind_names().join(", ")
            )
        })?;
        let class = args.device;
        // A zero timeout fails every job at its first checkpoint.
        anyhow::ensure!(
            args.timeout_ms() != Some(0),
            "--timeout must be more than 0 (leave it out for no timeout)"
        );
        // Job i gets seed + i: past the largest seed, that panicked.
        anyhow::ensure!(
            args.seed
                .checked_add(args.count.saturating_sub(1))
                .is_some(),
            "--seed {} with --count {}: job i gets seed + i, and the last would be past the \
             largest seed, {}",
            args.seed,
            args.count,
            u64::MAX
        );
        let params = super::params::parse_params(&args.params, args.params_json.as_deref())?;
        let inputs = parse_inputs(args)?;
        let output = match (&args.output, &args.output_format) {
            (Some(path), _) => {
                kiln_client::data::check_output_folder(path)?;
                kiln_client::data::output_mode_for(path)?
            }
            (None, Some(name)) => kiln_client::data::output_mode_named(name)?,
            (None, None) => OutputMode::Auto,
        };
        // A trained model is several tensors: only a safetensors file holds it. Said before
        // the job trains, not after.
        anyhow::ensure!(
            args.output.is_none() || kind.name != "train_mlp" || output == OutputMode::Safetensors,
            "train_mlp stores its trained model as safetensors (several tensors), which a .{} \
             file cannot hold: name a .safetensors file",
            args.output
                .as_deref()
                .and_then(|p| p.extension())
                .and_then(|e| e.to_str())
                .unwrap_or("npy")
        );
        anyhow::ensure!(
            args.output.is_none() || args.count == 1,
            "--output writes one job's output to one file: leave out --count, or use \
             --output-format and `kiln result <id> --output FILE` for each job"
        );
        kiln_client::check_class(kind, class, &params)?;
        let codec = if args.bincode {
            Codec::Bincode
        } else {
            Codec::Json
        };
        let base_id = args.id.clone().unwrap_or_else(kiln_proto::new_job_id);
        let ids: Vec<String> = match args.count {
            1 => vec![base_id.clone()],
            n => (0..n).map(|i| format!("{base_id}-{i}")).collect(),
        };
        Ok(Self {
            args,
            kind,
            class,
            params,
            inputs,
            uploaded: Vec::new(),
            output,
            codec,
            base_id,
            ids,
            wait: args.wait || args.output.is_some(),
        })
    }

    /// Whether the ids are valid job ids (the message says why not).
    fn check_ids(&self) -> Result<(), String> {
        // The last id is the longest.
        use kiln_client::jobs::check_submitted_id;
        check_submitted_id(&self.base_id)
            .and_then(|()| check_submitted_id(self.ids.last().map_or("", String::as_str)))
    }

    /// Store the `--input` files, then build every job.
    async fn jobs(&mut self, js: &jetstream::Context) -> anyhow::Result<Vec<JobSpec>> {
        if !self.inputs.is_empty() {
            let bucket = kiln_client::data::bucket(js).await?;
            let total = self
                .inputs
                .iter()
                .filter_map(|input| match &input.source {
                    kiln_client::data::Source::File(path) => std::fs::metadata(path).ok(),
                    kiln_client::data::Source::Object(_) => None,
                })
                .map(|m| m.len())
                .sum();
            let bar = BytesBar::new(total, "storing");
            let stop = AtomicBool::new(false);
            let mut stored = Vec::new();
            let attaching = kiln_client::data::attach_inputs(
                &bucket,
                &self.base_id,
                &self.inputs,
                &mut self.params,
                bar.on_bytes(),
                Some(&stop),
                &mut stored,
            );
            let attached = super::data::upload_or_interrupted(&stop, attaching).await;
            drop(bar);
            match attached {
                Ok(attached) => {
                    self.uploaded = stored;
                    attached?;
                }
                // What was stored (all of it, when the last byte was read before the signal;
                // the inputs finished before it, when the one on its way did not stop in
                // time): no job will be sent to read it.
                Err(ended) => {
                    let removing = kiln_client::data::remove_inputs(&bucket, &stored);
                    let _ = tokio::time::timeout(super::data::STOP_WITHIN, removing).await;
                    match ended {
                        Some(_) => eprintln!("kiln: interrupted; no job was submitted"),
                        None => eprintln!(
                            "kiln: interrupted; no job was submitted; {}",
                            super::data::not_removed("the --input file on its way")
                        ),
                    }
                    std::process::exit(130);
                }
            }
        }
        self.ids
            .iter()
            .zip(0..)
            .map(|(id, i)| {
                let meta = JobMeta {
                    id: Some(id.clone()),
                    // Within u64: checked in `parse` (a `seed..` range panicked at u64::MAX).
                    seed: Some(self.args.seed + i),
                    timeout_ms: self.args.timeout_ms(),
                    output: self.output,
                };
                JobSpec::build(self.kind, self.class, self.params.clone(), meta, self.codec)
            })
            .collect::<kiln_client::Result<_>>()
            .map_err(Into::into)
    }

    /// Publish the jobs (with a progress bar for more than one) and say which the server
    /// dropped as duplicates; returns those.
    async fn publish(
        &self,
        js: &jetstream::Context,
        jobs: Vec<JobSpec>,
        bar: Option<&ProgressBar>,
    ) -> anyhow::Result<Vec<String>> {
        let (may_run, duplicates) = publish_all_counted(js, jobs, true, || {
            if let Some(bar) = bar {
                bar.inc(1)
            }
        })
        .await;
        // Inputs stored for jobs none of which the server took: no job will ever read them.
        if !may_run && !self.uploaded.is_empty() {
            let bucket = kiln_client::data::bucket(js).await?;
            kiln_client::data::remove_inputs(&bucket, &self.uploaded).await;
        }
        let duplicates = duplicates?;
        if let Some(bar) = bar {
            bar.finish();
        }
        if !duplicates.is_empty() {
            eprintln!(
                "{} job id(s) were already submitted within the last {} min, so the server \
                 kept the earlier submission and dropped this one: {}",
                duplicates.len(),
                kiln_proto::streams::DUPLICATE_WINDOW.as_secs() / 60,
                super::list_ids(&duplicates)
            );
        }
        Ok(duplicates)
    }

    /// Interrupted while the jobs were sent: say how many the server had stored (they run),
    /// and which ids to ask about.
    fn interrupted_publishing(&self, bar: Option<&ProgressBar>) {
        let (base_id, count) = (&self.base_id, self.args.count);
        match bar {
            None => eprintln!(
                "kiln: interrupted while submitting {base_id}: `kiln status {base_id}` says \
                 whether the server stored it (then it runs)"
            ),
            Some(bar) => {
                bar.abandon();
                eprintln!(
                    "kiln: interrupted while submitting: the server had stored at least {} of \
                     {count} jobs ({base_id}-0 .. {base_id}-{}), which run; the rest were not \
                     sent or not stored; `kiln status <id>` says which",
                    bar.position(),
                    count - 1
                );
            }
        }
        if self.wait {
            eprintln!("their results were not waited for: `kiln result <id>` gets them later");
        }
    }

    /// Without `--wait`: print the job id, or the range of ids.
    fn print_submitted(&self, duplicates: &[String]) {
        if !duplicates.is_empty() {
            eprintln!("`kiln status <id>` and `kiln result <id>` show the earlier submission");
        }
        let (base_id, count) = (&self.base_id, self.args.count);
        if count == 1 {
            println!("{base_id}");
        } else {
            println!(
                "submitted {count} jobs: {base_id}-0 .. {base_id}-{}",
                count - 1
            );
        }
    }

    /// With `--wait`: print each result as it comes, then say what failed or did not come
    /// and write `--output`. Exits non-zero unless every job succeeded.
    async fn wait(
        &self,
        js: &jetstream::Context,
        collector: &mut ResultCollector,
        (duplicates, taken): (&[String], &HashSet<String>),
        signal: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<ExitCode> {
        let single = self.args.count == 1;
        // With the output going to stdout, the results go to stderr.
        let to_stderr = self.args.output.as_deref() == Some(Path::new("-"));
        let print = |event: &ResultEvent| print_result(event, single, to_stderr);
        let bar = (!single).then(|| progress_bar(self.args.count, "finished"));
        let all = || self.ids.iter().cloned();
        let mut results = tokio::select! {
            results = self.earlier_results(js, duplicates) => results?,
            () = &mut *signal => self.stopped_waiting(bar.as_ref(), all()),
        };
        // An earlier submission that will never be answered: no use waiting for it.
        let gone = tokio::select! {
            gone = duplicates::gone(js, duplicates, &results) => gone,
            () = &mut *signal => self.stopped_waiting(bar.as_ref(), all()),
        };
        let taken: &HashSet<String> = &taken.iter().chain(&gone).cloned().collect();
        for id in &self.ids {
            if let Some(event) = results.get(id) {
                print(event);
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
        }
        let waiting: HashSet<String> = self
            .ids
            .iter()
            .filter(|id| !results.contains_key(*id) && !taken.contains(*id))
            .cloned()
            .collect();
        let timeout = self.args.wait_timeout();
        let unanswered = std::sync::Mutex::new(waiting.clone());
        let collect = collector.collect(waiting, timeout, |event| {
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            unanswered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&event.id);
            print(event)
        });
        // Interrupted while waiting: the jobs go on; say which, so that they can be found
        // (an id kiln made up was printed nowhere else).
        let arrived = tokio::select! {
            arrived = collect => arrived,
            () = signal => {
                let unanswered = unanswered.lock().unwrap_or_else(|e| e.into_inner()).clone();
                self.stopped_waiting(bar.as_ref(), unanswered)
            }
        };
        results.extend(arrived);
        if let Some(bar) = &bar {
            bar.finish();
        }
        let answered_before = collector.answered_before().clone();
        self.finish(js, &results, taken, &answered_before).await
    }

    /// Interrupted once the jobs were sent, without `--wait`: they run; say which, and exit 130.
    fn interrupted_sent(&self) -> ! {
        eprintln!(
            "kiln: interrupted once the jobs were sent: {} run; `kiln status <id>` follows a job",
            super::list_ids(&self.ids)
        );
        std::process::exit(130);
    }

    /// Interrupted while the jobs were sent and before their answers came: the jobs go on; say
    /// which, so that they can be found (an id kiln made up was printed nowhere else), and
    /// exit 130.
    fn stopped_waiting(
        &self,
        bar: Option<&ProgressBar>,
        unanswered: impl IntoIterator<Item = String>,
    ) -> ! {
        if let Some(bar) = bar {
            bar.abandon();
        }
        let mut unanswered: Vec<String> = unanswered.into_iter().collect();
        unanswered.sort_unstable();
        eprintln!(
            "kiln: interrupted; stopped waiting for {}, still queued or running: `kiln status \
             <id>` follows a job, `kiln result <id>` gets its answer later{}",
            super::list_ids(&unanswered),
            match &self.args.output {
                Some(path) => format!(" (`--output {}` writes its output)", path.display()),
                None => String::new(),
            }
        );
        std::process::exit(130);
    }

    /// The results the duplicates already have. A duplicate's result is the earlier
    /// submission's: printed when it is in, else waited for (it comes on the same subject).
    async fn earlier_results(
        &self,
        js: &jetstream::Context,
        duplicates: &[String],
    ) -> anyhow::Result<HashMap<String, ResultEvent>> {
        let results =
            kiln_client::jobs::existing_results(js, duplicates, Some(self.kind.name)).await?;
        match duplicates.len() - results.len() {
            _ if duplicates.is_empty() => {}
            0 => eprintln!("their results are in (printed below)"),
            waiting => eprintln!(
                "{} of them have a result (printed below); the other {waiting} have none (what \
                 follows says where they are)",
                results.len()
            ),
        }
        Ok(results)
    }

    /// Say which results failed or did not come, write `--output`, and give the exit status.
    async fn finish(
        &self,
        js: &jetstream::Context,
        results: &HashMap<String, ResultEvent>,
        taken: &HashSet<String>,
        answered_before: &HashSet<String>,
    ) -> anyhow::Result<ExitCode> {
        let ids = &self.ids;
        if !answered_before.is_empty() {
            let ids: Vec<&String> = ids
                .iter()
                .filter(|id| answered_before.contains(*id))
                .collect();
            eprintln!(
                "{} job id(s) already had an answer, from an earlier job under the same id (sent \
                 more than {} min earlier, or without a Nats-Msg-Id, so the server did not drop \
                 this one as a duplicate: it ran, but a job id keeps its first answer and its \
                 result was refused): {}; the results above are the earlier jobs', not this \
                 submission's. Submit under new ids to get yours",
                ids.len(),
                kiln_proto::streams::DUPLICATE_WINDOW.as_secs() / 60,
                super::list_ids(&ids)
            );
        }
        let failed = results
            .values()
            .filter(|r| r.status == Status::Failed)
            .count();
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !results.contains_key(*id) && !taken.contains(*id))
            .collect();
        if !missing.is_empty() {
            // Not the jobs' doing: nothing could arrive (they may well have run meanwhile).
            let unreachable = match js.client().connection_state() {
                async_nats::connection::State::Connected => "",
                _ => " (the NATS server is unreachable now: they may have run meanwhile)",
            };
            eprintln!(
                "{} of {} result(s) did not arrive within {} s{unreachable}: {}; `kiln status \
                 <id>` says where each job is, `kiln result <id>` looks its result up later",
                missing.len(),
                ids.len(),
                self.args.wait_timeout().as_secs_f64(),
                super::list_ids(&missing)
            );
        }
        if failed > 0 {
            eprintln!("{failed} of {} job(s) failed", ids.len());
        }
        if let (Some(path), Some(event)) = (&self.args.output, results.get(&self.base_id))
            && event.status == Status::Succeeded
            && !answered_before.contains(&self.base_id)
        {
            super::data::save_output(js, event, path, true).await?;
        }
        Ok(
            if failed == 0 && missing.is_empty() && taken.is_empty() && answered_before.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            },
        )
    }
}

/// One result on standard output (or error): pretty JSON for a single job, else one line each.
fn print_result(event: &ResultEvent, single: bool, to_stderr: bool) {
    let text = match single {
        true => serde_json::to_string_pretty(event),
        false => serde_json::to_string(event),
    };
    match (text, to_stderr) {
        (Ok(text), false) => println!("{text}"),
        (Ok(text), true) => eprintln!("{text}"),
        (Err(_), _) => {}
    }
}

/// Say so when nothing is pulling from the class's consumer, or no worker of the class is
/// live: the jobs are safe in KILN_JOBS, but they will wait until a worker (or, for auto,
/// the scheduler) runs.
async fn warn_if_unserved(js: &jetstream::Context, class: DeviceClass) {
    let Ok(stream) = js.get_stream(kiln_proto::streams::STREAM_JOBS).await else {
        return;
    };
    let who = match class {
        DeviceClass::Auto => "a scheduler runs (`kiln scheduler`)",
        DeviceClass::Gpu => "a GPU worker runs (`kiln worker --device cuda`)",
        DeviceClass::Cpu => "a CPU worker runs (`kiln worker --device cpu`)",
    };
    let idle = async || {
        stream
            .consumer_info(class.consumer())
            .await
            .is_ok_and(|info| info.num_waiting == 0 && info.num_ack_pending == 0)
    };
    // The consumer also counts the pulls and the jobs of a worker that was just stopped or
    // killed (until they expire, or its ack wait ends); the heartbeats say who is live.
    let live = match class {
        DeviceClass::Auto => None,
        class => kiln_client::cluster::workers(js)
            .await
            .ok()
            .map(|workers| workers.iter().any(|w| w.takes(class))),
    };
    // Idle twice, a moment apart, and no worker live: a live worker between two pulls
    // (its last jobs answered, its next pull not yet sent) made churn say nothing pulled.
    if live != Some(true) && idle().await && {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        idle().await
    } {
        eprintln!(
            "note: nothing is pulling from consumer {} right now; the jobs wait in KILN_JOBS until {who}",
            class.consumer()
        );
        return;
    }
    if live == Some(false) {
        eprintln!(
            "note: no {class} worker is live right now (by the heartbeats in {}); the jobs wait \
             in KILN_JOBS until {who}",
            kiln_proto::BUCKET_WORKERS
        );
    }
}

/// `--input KEY=…` arguments, each key given once and not also by `-p`.
fn parse_inputs(args: &SubmitArgs) -> anyhow::Result<Vec<Input>> {
    let inputs = args
        .inputs
        .iter()
        .map(|arg| Input::parse(arg))
        .collect::<kiln_client::Result<Vec<_>>>()?;
    for (i, input) in inputs.iter().enumerate() {
        anyhow::ensure!(
            inputs[..i].iter().all(|earlier| earlier.key != input.key),
            "--input {}=… is given twice: give each parameter once",
            input.key
        );
        anyhow::ensure!(
            !args.params.iter().any(|pair| pair
                .split_once('=')
                .is_some_and(|(k, _)| k.trim() == input.key)),
            "{} is given both by -p and by --input: give it once",
            input.key
        );
    }
    // A file no job could read is refused here, not stored and answered by a failed job.
    for input in &inputs {
        input.check_file()?;
    }
    Ok(inputs)
}
