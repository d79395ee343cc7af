//! One module per subcommand.

mod bench;
mod bench_kernels;
mod bench_scheduler;
mod cancel;
mod demo;
mod dlq;
mod init;
mod kinds;
mod result;
mod roles;
mod status;
mod submit;
mod suite;
mod watch;
mod worker;

use std::process::ExitCode;

use kiln_proto::Topology;

use crate::cli::{Cli, Command, NatsArgs};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let nats = cli.nats;
    match cli.command {
        Command::Init => init::run(&nats).await,
        Command::Worker(args) => worker::worker(&nats, args).await,
        Command::Aggregator(args) => worker::aggregator(&nats, args).await,
        Command::Scheduler(args) => worker::scheduler(&nats, args).await,
        Command::Submit(args) => submit::run(&nats, args).await,
        Command::Status(args) => status::run(&nats, args).await,
        Command::Result(args) => result::run(&nats, args).await,
        Command::Dlq(args) => dlq::run(&nats, args).await,
        Command::Cancel(args) => cancel::run(&nats, args).await,
        Command::Watch(args) => watch::run(&nats, args).await,
        Command::Demo(args) => demo::run(&nats, args).await,
        Command::Bench(args) => bench::run(&nats, args).await,
        Command::Kinds => kinds::run(),
    }
}

fn topology(nats: &NatsArgs) -> Topology {
    Topology {
        replicas: nats.replicas,
        max_queued_jobs: nats.max_queued_jobs,
        ..Topology::default()
    }
}
