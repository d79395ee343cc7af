//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod data;
mod env_value;
mod roles;
mod values;

pub use data::{GetArgs, LsArgs, PutArgs, RmArgs};
pub use roles::{AggregatorArgs, SchedulerArgs, WorkerArgs};

use values::{
    MAX_LIFETIME_HOURS, byte_limit, device_class, either, job_timeout, job_timeout_ms, lifetime,
    limit, period, period_ms, replicas, scale, wait_timeout,
};

/// Most jobs one `kiln submit --count` sends: `KILN_JOBS`'s default limit on waiting jobs.
/// Every job (its id, its body) is built before the first is sent, and `--wait` holds every
/// id: ten billion aborted the command on allocation.
pub const MAX_COUNT: u64 = 1_000_000;

/// kiln: run compute jobs on GPUs and CPUs over NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr (filter with RUST_LOG).
    // Before the connection flags, whose help heading would otherwise be its too.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The `--help` heading of the settings of kiln's streams and buckets, which every command
/// applies when it creates them (`kiln init` also when it updates them).
const STREAM_SETTINGS: &str =
    "Stream settings (applied by kiln init, and where a command creates them)";

/// How to reach NATS.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated [default: the context's, else
    /// nats://127.0.0.1:4222].
    #[arg(
        long = "nats-url",
        short = 's',
        visible_alias = "server",
        env = "NATS_URL",
        global = true,
        // A URL may carry credentials (nats://user:password@host), which --help would show.
        hide_env_values = true
    )]
    pub server: Option<String>,
    /// The `nats` CLI context to read the server and credentials from
    /// (~/.config/nats/context/NAME.json); default: the one `nats context select` chose.
    /// Flags and environment variables override its values.
    #[arg(long, env = "NATS_CONTEXT", global = true)]
    pub context: Option<String>,
    /// The server URL(s) in use: --nats-url, else the context's, else the default
    /// ([`NatsArgs::resolve`]).
    #[arg(skip = kiln_client::DEFAULT_NATS_URL.to_owned())]
    pub nats_url: String,
    /// Token to authenticate with.
    #[arg(long, env = "NATS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Credentials file (JWT + nkey seed) for decentralised auth.
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// File holding an nkey seed (SU...) to authenticate with.
    #[arg(long, env = "NATS_NKEY", global = true)]
    pub nkey: Option<PathBuf>,
    /// User name for user/password auth.
    #[arg(long, env = "NATS_USER", global = true)]
    pub user: Option<String>,
    /// Password for user/password auth.
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// CA certificate (PEM) to verify the server with; implies TLS.
    #[arg(long, env = "NATS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, env = "NATS_CERT", global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, env = "NATS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Start TLS before the NATS protocol, for servers that require it (`handshake_first`).
    #[arg(long, global = true)]
    pub tls_first: bool,
    /// Stream and consumer replicas when kiln creates them (1 on a laptop, 3 on a cluster).
    #[arg(
        long,
        env = "KILN_REPLICAS",
        default_value_t = 1,
        global = true,
        value_parser = replicas,
        help_heading = STREAM_SETTINGS
    )]
    pub replicas: usize,
    /// Most jobs waiting in KILN_JOBS when kiln creates or updates it; beyond it submissions
    /// are refused with an error (nothing is dropped).
    #[arg(
        long,
        env = "KILN_MAX_QUEUED_JOBS",
        default_value_t = 1_000_000,
        global = true,
        help_heading = STREAM_SETTINGS,
        allow_hyphen_values = true,
        value_parser = limit
    )]
    pub max_queued_jobs: i64,
    /// Most bytes of result events kept (kiln init; at least 1 MiB; a unit may follow:
    /// 512MiB, 4GiB; MB and GB are powers of 1000); past it the oldest results make room.
    /// A job is answered once for as long as its result is kept. Job states (KILN_STATE, for
    /// kiln status) are kept within the same number of bytes, the oldest going first.
    #[arg(
        long,
        env = "KILN_RESULTS_MAX_BYTES",
        default_value_t = 4 << 30,
        global = true,
        help_heading = STREAM_SETTINGS,
        allow_hyphen_values = true,
        value_parser = byte_limit
    )]
    pub results_max_bytes: i64,
    /// How long objects stay in the KILN_DATA object store (kiln init) [default: 7d].
    #[arg(
        long,
        value_parser = lifetime,
        value_name = "DURATION",
        global = true,
        help_heading = STREAM_SETTINGS
    )]
    pub data_max_age: Option<Duration>,
    /// --data-max-age in hours (the older spelling).
    #[arg(
        long,
        env = "KILN_DATA_MAX_AGE_HOURS",
        global = true,
        help_heading = STREAM_SETTINGS,
        conflicts_with = "data_max_age",
        value_name = "HOURS",
        value_parser = clap::value_parser!(u64).range(1..=MAX_LIFETIME_HOURS)
    )]
    pub data_max_age_hours: Option<u64>,
    /// Most bytes the KILN_DATA object store holds (kiln init; at least 1 MiB; a unit may
    /// follow: 512MiB, 8GiB; MB and GB are powers of 1000).
    #[arg(
        long,
        env = "KILN_DATA_MAX_BYTES",
        default_value_t = 8 << 30,
        global = true,
        help_heading = STREAM_SETTINGS,
        allow_hyphen_values = true,
        value_parser = byte_limit
    )]
    pub data_max_bytes: i64,
}

impl NatsArgs {
    /// Fill in what flags and the environment left open from the `nats` CLI's context (named
    /// by --context, else the selected one), then the defaults.
    pub fn resolve(&mut self) -> anyhow::Result<()> {
        let mut o = kiln_client::ConnectOptions::from(&*self);
        o.url = self.server.clone();
        let o = o.resolve()?;
        self.nats_url = o.server_url().to_owned();
        (self.server, self.token, self.user, self.password) = (o.url, o.token, o.user, o.password);
        (self.creds, self.nkey) = (o.creds, o.nkey);
        (self.tls_ca, self.tls_cert, self.tls_key) = (o.tls_ca, o.tls_cert, o.tls_key);
        self.tls_first = o.tls_first;
        Ok(())
    }

    /// --data-max-age, or --data-max-age-hours, or 7 days.
    pub fn data_max_age(&self) -> Duration {
        let hours = |h: u64| Duration::from_secs(h.saturating_mul(3600));
        either(
            self.data_max_age,
            self.data_max_age_hours.map(hours),
            hours(168),
        )
    }

    /// The options to connect with (after [`NatsArgs::resolve`]).
    pub fn connect_options(&self) -> kiln_client::ConnectOptions {
        self.into()
    }
}

impl From<&NatsArgs> for kiln_client::ConnectOptions {
    fn from(args: &NatsArgs) -> Self {
        Self {
            // Resolved ([`NatsArgs::resolve`]): the flag's, the context's or the default.
            url: Some(args.nats_url.clone()),
            context: args.context.clone(),
            token: args.token.clone(),
            user: args.user.clone(),
            password: args.password.clone(),
            creds: args.creds.clone(),
            nkey: args.nkey.clone(),
            tls_ca: args.tls_ca.clone(),
            tls_cert: args.tls_cert.clone(),
            tls_key: args.tls_key.clone(),
            tls_first: args.tls_first,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update kiln's streams and consumers (every role also does it at start).
    Init,
    /// Serve jobs on one device: `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA if present, else CPU).
    Worker(WorkerArgs),
    /// Fold result events into metrics snapshots on metrics.<kind>.<class>.
    Aggregator(AggregatorArgs),
    /// Route jobs.auto.<kind> to the device class that will finish them first.
    Scheduler(SchedulerArgs),
    /// Submit jobs of one kind.
    Submit(SubmitArgs),
    /// Show queues, workers and per-kind metrics once; with a job id, where that job is.
    Status(StatusArgs),
    /// Print the result event of a job.
    Result(ResultArgs),
    /// Dead letters: jobs given up after their last attempt.
    Dlq(DlqArgs),
    /// Cancel jobs: queued ones are answered `cancelled`, running ones stop at a checkpoint.
    Cancel(CancelArgs),
    /// Live per-kind, per-device table, refreshed from the metrics stream.
    Watch(WatchArgs),
    /// Run the whole system locally: nats-server (if none is reachable), aggregator, workers,
    /// a mixed workload with progress, and the GPU-vs-CPU table.
    Demo(DemoArgs),
    /// Benchmarks that print ratios measured in the same run: runs `kiln-bench` (built by
    /// `cargo build --release -p kiln-bench`, found beside this binary or on PATH) with these
    /// arguments. `kiln bench --help` lists its parts.
    #[command(disable_help_flag = true)]
    Bench(BenchForward),
    /// List the job kinds this build can run, with their parameters.
    Kinds(FormatArgs),
    /// List the live workers (from their heartbeats): device, class, engines, capacity, jobs
    /// held, last heartbeat.
    Workers(FormatArgs),
    /// Print a shell completion script: `kiln completions bash > ~/.local/share/bash-completion/completions/kiln`
    /// (zsh: into a folder on $fpath as _kiln; fish: ~/.config/fish/completions/kiln.fish).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Store a file (a .npy or safetensors tensor, a PNG/JPEG image, a CSV dataset) in the
    /// KILN_DATA object store, for jobs to name as {"object": NAME}.
    Put(PutArgs),
    /// Fetch an object from KILN_DATA (a job's stored output, a trained model) into a file.
    Get(GetArgs),
    /// List the objects in KILN_DATA (size, when stored, name), and how full it is.
    Ls(LsArgs),
    /// Remove objects from KILN_DATA (stored outputs, data no job needs any more), freeing
    /// their space; a job naming one later is answered that it is not found.
    Rm(RmArgs),
}

impl Command {
    /// The OpenTelemetry service name of this process's spans (unless OTEL_SERVICE_NAME).
    pub fn service_name(&self) -> &'static str {
        match self {
            Command::Worker(_) => "kiln-worker",
            Command::Aggregator(_) => "kiln-aggregator",
            Command::Scheduler(_) => "kiln-scheduler",
            Command::Submit(_) => "kiln-submit",
            _ => "kiln",
        }
    }

    /// Threads of the async runtime this command asks for (`--async-threads`); `None`: one
    /// per CPU core, tokio's default.
    pub fn async_threads(&self) -> Option<usize> {
        match self {
            Command::Worker(args) => Some(args.async_threads),
            Command::Aggregator(args) => Some(args.async_threads),
            _ => None,
        }
    }

    /// Long-running roles log at info by default; one-shot commands only warn.
    pub fn is_service(&self) -> bool {
        matches!(
            self,
            Command::Worker(_) | Command::Aggregator(_) | Command::Scheduler(_)
        )
    }

    /// A command that talks to no server (`kinds`, `completions`): a bad NATS_URL or a
    /// stale context selection is not its business.
    pub fn offline(&self) -> bool {
        matches!(self, Command::Kinds(_) | Command::Completions { .. })
    }
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// Job kind (see `kiln kinds`).
    pub kind: String,
    /// A parameter as key=value; the value is read as JSON when it parses, else as a string
    /// (`-p n=512 -p dtype=bf16 -p hidden=[64,64]`); key=@FILE reads the value as JSON from a
    /// file, key=@- from standard input.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// All parameters as one JSON object (merged under -p values); @FILE reads it from a file,
    /// @- from standard input (for inputs too big for the command line).
    #[arg(long = "params", value_name = "JSON|@FILE|@-")]
    pub params_json: Option<String>,
    /// Device class: gpu, cpu or auto.
    #[arg(long, short = 'd', env = "KILN_SUBMIT_DEVICE", default_value = "cpu", value_parser = device_class)]
    pub device: kiln_proto::DeviceClass,
    /// Number of jobs, 1 to 1000000 (KILN_JOBS's default limit on waiting jobs; every job is
    /// built before the first is sent); job i gets seed + i and id <id>-<i>.
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    pub count: u64,
    /// Job id (default: a fresh unique id): 1 to 128 ASCII letters, digits, '-' and '_';
    /// with --count, ids are <id>-<i>. It is also the Nats-Msg-Id, so
    /// resubmitting an id within 10 minutes is dropped by the server (and reported, with the
    /// earlier submission's result under --wait).
    #[arg(long)]
    pub id: Option<String>,
    /// Seed for generated inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Give up on the job after this much compute time (30s, 500ms, 2m).
    #[arg(long, value_parser = job_timeout, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// --timeout in milliseconds (the older spelling).
    #[arg(long, conflicts_with = "timeout", value_parser = job_timeout_ms, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Encode jobs with bincode instead of JSON.
    #[arg(long)]
    pub bincode: bool,
    /// Wait for the results and print them; exit non-zero if any failed.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// How long --wait waits for all results, more than 0 [default: 5m].
    #[arg(long, value_parser = wait_timeout, value_name = "DURATION")]
    pub wait_timeout: Option<Duration>,
    /// --wait-timeout in seconds (the older spelling).
    #[arg(
        long,
        conflicts_with = "wait_timeout",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub wait_timeout_s: Option<u64>,
    /// A tensor parameter from a file or an object: KEY=@FILE stores FILE in KILN_DATA and
    /// passes it as {"object": ..}; KEY=@FILE#ENTRY picks one entry of a safetensors file;
    /// KEY=NAME names an object already stored (`kiln put`), KEY=NAME#ENTRY one entry of it
    /// (a name holding `#` goes as -p 'KEY={"object": "NAME"}').
    #[arg(long = "input", short = 'i', value_name = "KEY=@FILE|KEY=NAME")]
    pub inputs: Vec<String>,
    /// Store the job's output in KILN_DATA, wait for it and write it to FILE; the format
    /// follows the extension: .npy, .safetensors or .png. Implies --wait; one job only.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Store the output in KILN_DATA whatever its size (`"output": "object"`), as .npy,
    /// safetensors or png; results name it in output.object.
    #[arg(long, value_name = "npy|safetensors|png", conflicts_with = "output")]
    pub output_format: Option<String>,
}

/// How a command that reads prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// One JSON document on standard output, numbers as numbers.
    Json,
}

/// `-o text|json`.
#[derive(Debug, Clone, Copy, Args)]
pub struct FormatArgs {
    /// Output format: text, or json (one JSON document on standard output).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Args)]
pub struct ResultArgs {
    /// The job id (exit status 2 when it has no result, or is not a valid job id).
    pub id: String,
    /// Only a result of this kind (looks only at results.<kind>.<id>).
    #[arg(long)]
    pub kind: Option<String>,
    /// text or json: how to print the result (both print its JSON); any other value is a
    /// FILE to write the job's stored output (output.object) to, converted to the format its
    /// .npy, .safetensors or .png extension names.
    #[arg(long, short = 'o', value_name = "text|json|FILE", value_parser = result_output)]
    pub output: Option<ResultOutput>,
}

/// `kiln result -o`: a format, or a file for the job's stored output.
#[derive(Debug, Clone)]
pub enum ResultOutput {
    Format(Format),
    File(PathBuf),
}

fn result_output(value: &str) -> Result<ResultOutput, String> {
    Ok(match value {
        "text" => ResultOutput::Format(Format::Text),
        "json" => ResultOutput::Format(Format::Json),
        file => ResultOutput::File(PathBuf::from(file)),
    })
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// A job id: answers succeeded / failed / cancelled (with its result) / running (where,
    /// attempt) / cancel requested / queued / gone (it will not be answered, and why) /
    /// unknown (exit status 2, as for an id that is not a valid job id). With -o json a
    /// finished job's state is `finished`, its result saying which.
    pub id: Option<String>,
    #[command(flatten)]
    pub output: FormatArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The job ids. Finished jobs are not marked (a mark lasts a day and would cancel a later
    /// run of the same id); ids kiln knows nothing of are, in case they are still in flight.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List the dead letters: sequence, job id, original subject, why.
    List(FormatArgs),
    /// Resubmit dead letters to the subject they came from, and remove them from the queue.
    // One or the other: the usage line says so (`<SEQUENCES>...|--all`).
    #[command(group(clap::ArgGroup::new("letters").required(true).args(["sequences", "all"])))]
    Replay {
        /// Sequences of the dead letters (from `kiln dlq list`); exit status 2 when one is not
        /// in the queue.
        sequences: Vec<u64>,
        /// Replay every dead letter (not with sequences).
        #[arg(long, conflicts_with = "sequences")]
        all: bool,
    },
    /// Remove dead letters without replaying them (one that cannot be replayed, a job no
    /// longer wanted); its job's failed result stays. Exit status 2 when one is not in the
    /// queue.
    Rm {
        /// Sequences of the dead letters (from `kiln dlq list`).
        #[arg(required = true)]
        sequences: Vec<u64>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Time between refreshes [default: 1s].
    #[arg(long, value_parser = period, value_name = "DURATION")]
    pub interval: Option<Duration>,
    /// --interval in milliseconds (the older spelling).
    #[arg(long, conflicts_with = "interval", value_parser = period_ms, value_name = "MS")]
    pub interval_ms: Option<u64>,
    /// Print the table once and exit.
    #[arg(long)]
    pub once: bool,
}

impl WatchArgs {
    /// --interval, or --interval-ms, or 1 s.
    pub fn interval(&self) -> Duration {
        let old = self.interval_ms.map(Duration::from_millis);
        either(self.interval, old, Duration::from_secs(1))
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Scale of the workload.
    #[arg(long, default_value_t = 1.0, help = crate::cmd::demo::scale_help(), value_parser = scale, allow_hyphen_values = true)]
    pub scale: f64,
    /// Never start a local nats-server; fail if --nats-url is unreachable.
    #[arg(long)]
    pub no_embedded: bool,
}

/// `kiln bench …`: everything after `bench`, for `kiln-bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchForward {
    /// The arguments of `kiln-bench` (`suite`, `pipeline`, `kernels`, `scheduler`, `--help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

impl SubmitArgs {
    /// --timeout, or --timeout-ms, in whole milliseconds (rounded up): the job's `timeout_ms`.
    pub fn timeout_ms(&self) -> Option<u64> {
        let ms = |d: Duration| {
            d.as_nanos()
                .div_ceil(1_000_000)
                .try_into()
                .unwrap_or(u64::MAX)
        };
        self.timeout.map(ms).or(self.timeout_ms)
    }

    /// --wait-timeout, or --wait-timeout-s, or 5 minutes.
    pub fn wait_timeout(&self) -> Duration {
        either(
            self.wait_timeout,
            self.wait_timeout_s.map(Duration::from_secs),
            Duration::from_secs(300),
        )
    }
}

/// Parse the command line, or exit as clap does (status 2), except that an invalid value
/// taken from an environment variable is named as that variable.
pub fn parse() -> Cli {
    use clap::CommandFactory as _;
    // Lossy: an argument that is no UTF-8 (a path) must not panic here.
    let argv = || -> Vec<String> {
        std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    };
    match Cli::try_parse() {
        Ok(cli) => {
            // A usage error like any other bad value, named where it was set (`NATS_URL=
            // http://x kiln status` blamed --nats-url, with exit 1).
            if let Some(message) = env_value::bad_server(cli.nats.server.as_deref(), &argv())
                && !cli.command.offline()
            {
                eprintln!("error: {message}");
                std::process::exit(2)
            }
            cli
        }
        Err(error) => {
            let argv = argv();
            match env_value::message(&Cli::command(), &error, &argv) {
                Some(message) => {
                    eprintln!("error: {message}");
                    std::process::exit(2)
                }
                None => error.exit(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn id_help_says_what_valid_job_id_accepts() {
        let cli = super::Cli::command();
        let submit = cli.find_subcommand("submit").unwrap();
        let id = submit.get_arguments().find(|a| a.get_id() == "id").unwrap();
        let help = id.get_help().unwrap().to_string();
        let rule = format!(
            "1 to {} ASCII letters, digits, '-' and '_'",
            kiln_proto::MAX_ID_LEN
        );
        assert!(help.contains(&rule), "{help}");
        assert!(kiln_proto::valid_job_id("a-b_C9") && !kiln_proto::valid_job_id("a/b.c*"));
    }

    /// `kiln cancel` with no id is a usage error (exit 2), as for any missing argument.
    #[test]
    fn cancel_needs_an_id() {
        use clap::Parser as _;
        let e = super::Cli::try_parse_from(["kiln", "cancel"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        assert!(super::Cli::try_parse_from(["kiln", "cancel", "a", "b"]).is_ok());
    }

    /// `--all` replays every dead letter: with sequences as well it is refused, rather than
    /// replaying all and then reporting the named ones missing.
    #[test]
    fn dlq_replay_takes_all_or_sequences_not_both() {
        use clap::Parser as _;
        let e = super::Cli::try_parse_from(["kiln", "dlq", "replay", "--all", "1"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let message = e.to_string();
        assert!(
            message.contains("--all") && message.contains("[SEQUENCES]"),
            "{message}"
        );
        let replay = |args: &[&str]| {
            let argv = [&["kiln", "dlq", "replay"][..], args].concat();
            let cli = super::Cli::try_parse_from(argv).unwrap();
            let super::Command::Dlq(dlq) = cli.command else {
                panic!("not dlq: {:?}", cli.command)
            };
            let super::DlqCommand::Replay { sequences, all } = dlq.command else {
                panic!("not replay: {:?}", dlq.command)
            };
            (sequences, all)
        };
        assert_eq!(replay(&["--all"]), (vec![], true));
        // Neither: a usage error (exit 2), as `kiln dlq rm` with no sequences.
        let e = super::Cli::try_parse_from(["kiln", "dlq", "replay"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert_eq!(replay(&["1", "2"]), (vec![1, 2], false));
    }

    /// A zero `--wait-timeout` is refused, as a zero `--timeout` is (it was taken, and
    /// `--wait` waited all the same).
    #[test]
    fn a_zero_wait_timeout_is_refused() {
        use clap::Parser as _;
        for flag in [["--wait-timeout", "0s"], ["--wait-timeout-s", "0"]] {
            let argv = ["kiln", "submit", "vector_add", "--wait", flag[0], flag[1]];
            let message = super::Cli::try_parse_from(argv).unwrap_err().to_string();
            assert!(message.contains(flag[0]), "{message}");
        }
        let argv = [
            "kiln",
            "submit",
            "vector_add",
            "--wait",
            "--wait-timeout",
            "1ms",
        ];
        assert!(super::Cli::try_parse_from(argv).is_ok());
    }

    /// A worker name is its key in `KILN_WORKERS`: one that cannot be a key is refused at
    /// start (it served jobs unseen, with a failing heartbeat); others are kept as given.
    #[test]
    fn worker_names_that_cannot_be_keys_are_refused() {
        use clap::Parser as _;
        let long = "w".repeat(257);
        for name in ["", ".w", "w.", "a..b", long.as_str()] {
            let e = super::Cli::try_parse_from(["kiln", "worker", "--name", name]).unwrap_err();
            let message = e.to_string();
            assert!(
                message.contains("--name") && message.contains("must "),
                "{name:?}: {message}"
            );
        }
        for name in ["gpu-box-1", "a.b", "bad name>with*chars"] {
            let cli = super::Cli::try_parse_from(["kiln", "worker", "--name", name]).unwrap();
            assert!(
                matches!(&cli.command, super::Command::Worker(w) if w.name.as_deref() == Some(name)),
                "{name:?}"
            );
        }
    }

    /// A period of 0 (`watch --interval 0s` refreshed as fast as it could) is refused, in
    /// every spelling; a short one still parses.
    #[test]
    fn periods_are_more_than_zero() {
        use clap::Parser as _;
        for args in [
            &["kiln", "watch", "--interval", "0s"][..],
            &["kiln", "watch", "--interval-ms", "0"],
            &["kiln", "aggregator", "--interval", "0ms"],
            &["kiln", "aggregator", "--interval-ms", "0"],
            &["kiln", "scheduler", "--refresh", "0s"],
            &["kiln", "scheduler", "--refresh-ms", "0"],
        ] {
            let message = super::Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(
                message.contains("must be more than 0"),
                "{args:?}: {message}"
            );
        }
        for args in [
            &["kiln", "watch", "--interval", "100ms"][..],
            &["kiln", "aggregator", "--interval-ms", "50"],
            &["kiln", "scheduler", "--refresh", "10ms"],
        ] {
            assert!(super::Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
    }

    /// An ack wait under 1 s is refused: it was raised to 1 s without a word.
    #[test]
    fn a_worker_ack_wait_under_a_second_is_refused() {
        use clap::Parser as _;
        for (flag, value, want) in [
            ("--ack-wait", "10ms", "must be at least 1s"),
            ("--ack-wait", "0s", "must be at least 1s"),
            ("--ack-wait-s", "0", "must be at least 1"),
        ] {
            let args = ["kiln", "worker", "--device", "cpu", flag, value];
            let e = super::Cli::try_parse_from(args).unwrap_err();
            assert!(e.to_string().contains(want), "{flag} {value}: {e}");
        }
        let cli = super::Cli::try_parse_from(["kiln", "worker", "--ack-wait", "1s"]).unwrap();
        let super::Command::Worker(args) = cli.command else {
            panic!("a worker command")
        };
        assert_eq!(args.ack_wait(), std::time::Duration::from_secs(1));
    }

    /// Values NATS would read as "no limit" or "keep for ever", replica counts it cannot
    /// keep, and demo scales that cannot be allocated are refused by name before anything
    /// connects; the limits that make sense still parse.
    #[test]
    fn limits_nats_would_read_as_none_are_refused() {
        use clap::Parser as _;
        let refused = [
            ("--max-queued-jobs", "0", "must be at least 1"),
            ("--max-queued-jobs", "-5", "must be at least 1"),
            ("--results-max-bytes", "0", "must be at least 1"),
            ("--data-max-bytes", "-1", "must be at least 1"),
            ("--data-max-age", "0s", "must be longer than 0"),
            // A stream smaller than one message keeps none; an age NATS refuses.
            ("--results-max-bytes", "100", "must be at least 1048576"),
            ("--data-max-bytes", "1048575", "must be at least 1048576"),
            ("--data-max-bytes", "1000KiB", "must be at least 1048576"),
            (
                "--data-max-bytes",
                "2 parsecs",
                "is no size: give bytes, or a number and a unit",
            ),
            ("--data-max-age", "50ms", "must be at least 1s"),
            ("--data-max-age-hours", "0", "0 is not in 1..=876000"),
            ("--data-max-age", "300years", "at most 876000 hours"),
            ("--data-max-age-hours", "3000000", "is not in 1..=876000"),
            ("--replicas", "0", "1 to 5 replicas"),
            ("--replicas", "7", "1 to 5 replicas"),
        ];
        for (flag, value, want) in refused {
            let e = super::Cli::try_parse_from(["kiln", "init", flag, value]).unwrap_err();
            let message = e.to_string();
            assert!(
                message.contains(flag) && message.contains(want),
                "{flag} {value}: {message}"
            );
        }
        for value in ["0", "-1", "inf", "NaN", "1001"] {
            let e = super::Cli::try_parse_from(["kiln", "demo", "--scale", value]).unwrap_err();
            let message = e.to_string();
            assert!(
                message.contains("above 0 and at most 1000"),
                "{value}: {message}"
            );
        }
        let cli = super::Cli::try_parse_from([
            "kiln",
            "init",
            "--max-queued-jobs",
            "1",
            "--data-max-age",
            "90m",
            "--replicas",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.nats.max_queued_jobs, 1);
        assert_eq!(cli.nats.replicas, 3);
        // Byte limits take units, as --data-max-age does.
        for (value, bytes) in [
            ("2MiB", 2 << 20),
            ("8 GiB", 8 << 30),
            ("3GB", 3_000_000_000),
        ] {
            let cli =
                super::Cli::try_parse_from(["kiln", "init", "--data-max-bytes", value]).unwrap();
            assert_eq!(cli.nats.data_max_bytes, bytes, "{value}");
        }
        assert_eq!(
            cli.nats.data_max_age(),
            std::time::Duration::from_secs(5400)
        );
        let smallest = (1 << 20).to_string();
        let cli =
            super::Cli::try_parse_from(["kiln", "init", "--results-max-bytes", &smallest]).unwrap();
        assert_eq!(cli.nats.results_max_bytes, 1 << 20);
        let demo = super::Cli::try_parse_from(["kiln", "demo", "--scale", "0.05"]).unwrap();
        assert!(matches!(demo.command, super::Command::Demo(d) if d.scale == 0.05));
    }
}
