//! One module per subcommand; `roles`, `submit` and `worker` are also used by `kiln-bench`.

mod bench;
mod cancel;
mod data;
pub(crate) mod demo;
mod dlq;
mod init;
mod kinds;
mod metrics;
mod objects;
mod params;
mod result;
pub mod roles;
mod status;
pub mod submit;
mod watch;
pub mod worker;
mod workers;

use std::process::ExitCode;

use kiln_proto::Topology;

use crate::cli::{Cli, Command, NatsArgs};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let nats = cli.nats;
    match cli.command {
        Command::Init => init::run(&nats).await,
        Command::Worker(args) => on_pool(async move { worker::worker(&nats, args).await }).await,
        Command::Aggregator(args) => {
            on_pool(async move { worker::aggregator(&nats, args).await }).await
        }
        Command::Scheduler(args) => {
            on_pool(async move { worker::scheduler(&nats, args).await }).await
        }
        Command::Submit(args) => submit::run(&nats, args).await,
        Command::Status(args) => status::run(&nats, args).await,
        Command::Result(args) => result::run(&nats, args).await,
        Command::Dlq(args) => dlq::run(&nats, args).await,
        Command::Cancel(args) => cancel::run(&nats, args).await,
        Command::Watch(args) => watch::run(&nats, args).await,
        Command::Demo(args) => demo::run(&nats, args).await,
        Command::Bench(args) => bench::run(&nats, args),
        Command::Kinds(args) => kinds::run(args.format),
        Command::Workers(args) => workers::run(&nats, args.format).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "kiln", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Put(args) => data::put(&nats, args).await,
        Command::Get(args) => data::get(&nats, args).await,
        Command::Ls(args) => objects::ls(&nats, args).await,
        Command::Rm(args) => objects::rm(&nats, args).await,
    }
}

/// Run a service as a task of the runtime rather than as `main`'s own future, which a
/// multi-thread runtime (`--async-threads` 2 or more) polls on `main`'s thread, outside its
/// pool: there, every message its loop took from the connection's task (on a pool thread)
/// woke the main thread, and every job task it spawned woke a pool thread back, two thread
/// hand-offs per job on the latency path. (With one async thread, the current-thread runtime
/// runs every task on `main`'s thread anyway.)
async fn on_pool(
    service: impl Future<Output = anyhow::Result<ExitCode>> + Send + 'static,
) -> anyhow::Result<ExitCode> {
    match tokio::spawn(service).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(anyhow::anyhow!("the service's task ended: {e}")),
    }
}

/// The streams' shape that `--replicas` and the limits flags ask for.
pub fn topology(nats: &NatsArgs) -> Topology {
    Topology {
        replicas: nats.replicas,
        max_queued_jobs: nats.max_queued_jobs,
        results_max_bytes: nats.results_max_bytes,
        data_max_age: nats.data_max_age(),
        data_max_bytes: nats.data_max_bytes,
        // `kiln init` takes no ack wait or deliveries: the consumers keep theirs.
        keep_delivery: true,
        ..Topology::default()
    }
}

/// `value` as one JSON document on standard output.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The JSON answer (`-o json`) of a command that found nothing under the id it was given, or
/// was given an id that cannot exist: exit status [`EXIT_NOT_FOUND`].
#[derive(serde::Serialize)]
pub struct NotFound<'a> {
    pub id: &'a str,
    /// `invalid` (not a job id), `no_result`, …
    pub state: &'static str,
    /// What the text form says on stderr.
    pub message: String,
}

impl<'a> NotFound<'a> {
    pub fn invalid(id: &'a str, message: String) -> Self {
        NotFound {
            id,
            state: "invalid",
            message,
        }
    }
}

/// Exit status of a command that found nothing under the id or sequence it was given, or was
/// given one that cannot exist (an invalid job id): distinct from 1, a failure.
pub const EXIT_NOT_FOUND: u8 = 2;

/// `ids` for a message: all of them when there are few, else the first ten and how many more.
pub fn list_ids<S: AsRef<str>>(ids: &[S]) -> String {
    const SHOWN: usize = 10;
    let head: Vec<&str> = ids.iter().take(SHOWN).map(AsRef::as_ref).collect();
    match ids.len().saturating_sub(SHOWN) {
        0 => head.join(", "),
        more => format!("{} and {more} more", head.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_id_lists_are_cut_short_with_a_count() {
        assert_eq!(list_ids(&["a", "b"]), "a, b");
        let ids: Vec<String> = (0..25).map(|i| format!("j-{i}")).collect();
        let listed = list_ids(&ids);
        assert!(
            listed.starts_with("j-0, j-1,") && listed.ends_with("j-9 and 15 more"),
            "{listed}"
        );
    }
}
