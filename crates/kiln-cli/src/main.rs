//! The `kiln` command: one binary, one subcommand per role. Thin: parse arguments, set up
//! logging, call the libraries.

use std::process::ExitCode;

use kiln_cli::{cli, cmd, log, screen};
use tracing::Level;

// Workers allocate and free many small buffers per job from several threads at once; glibc's
// arena locks and consolidation showed up at ~12% of the worker's CPU in `kiln-bench pipeline`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = cli::parse();
    if !cli.command.is_service() {
        die_quietly_on_broken_pipe();
    }
    if matches!(cli.command, cli::Command::Aggregator(_)) {
        no_huge_pages();
    }
    init_tracing(&cli);
    // (Not for a command that connects nowhere: a context selected and since deleted broke
    // shell completion.)
    if !cli.command.offline()
        && let Err(e) = cli.nats.resolve()
    {
        log::say(Level::ERROR, &format!("kiln: {}", causes(&e)));
        return ExitCode::FAILURE;
    }
    // Before the runtime: the OTLP exporter builds a blocking HTTP client. Dropped after it,
    // which flushes the spans still queued.
    let _traces = match kiln_telemetry::trace::init(cli.command.service_name()) {
        Ok(guard) => Some(guard),
        Err(e) => {
            tracing::warn!("{e}; continuing without trace export");
            None
        }
    };
    let mut runtime = match cli.command.async_threads() {
        // A worker's job passes from the connection's reader to the job's task to the
        // writer: on one thread, with no wake-up of another in between (`kiln-bench latency`,
        // docs/BENCHMARKS.md). Compute keeps its own threads (the blocking pool). One thread
        // is a current-thread runtime: a task woken there runs after those already ready,
        // not at once as in the multi-thread one's LIFO slot, so the connection's writer
        // sends the results of every job ready together in one write rather than one each.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(threads);
            runtime
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::say(
                Level::ERROR,
                &format!("kiln: could not start the async runtime: {e}"),
            );
            return ExitCode::FAILURE;
        }
    };
    if cli.command.async_threads().is_some() {
        let threads = runtime.metrics().num_workers();
        let flavor = match runtime.handle().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
            _ => "multi_thread",
        };
        tracing::info!(threads, flavor, "async runtime");
    }
    let code = match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            log::say(Level::ERROR, &format!("kiln: {}", causes(&e)));
            ExitCode::FAILURE
        }
    };
    // Do not wait for compute still running on the blocking pool (a warm-up interrupted by
    // a shutdown, a job past the drain timeout): it is handed back by the server.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// An error and its causes on one line, each cause once: many errors (kiln's own and
/// async-nats's) already end with their cause's text, which `{:#}` would print again, and
/// some of async-nats's say theirs twice ("jetstream error: X: jetstream error: X").
fn causes(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.ends_with(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    without_repeats(&line)
}

/// `line` without a run of its `: `-separated parts that repeats the run just before it.
fn without_repeats(line: &str) -> String {
    let mut parts: Vec<&str> = line.split(": ").collect();
    let mut k = 1;
    while 2 * k <= parts.len() {
        let n = parts.len();
        if parts[n - 2 * k..n - k] == parts[n - k..] {
            parts.truncate(n - k);
            k = 1;
        } else {
            k += 1;
        }
    }
    parts.join(": ")
}

/// A command that prints for people and scripts ends quietly, as Unix tools do, when whoever
/// reads its output goes away (`kiln watch | head`, `kiln completions bash | head -1`): Rust
/// ignores SIGPIPE, which turns the next print into a panic with a backtrace. Services keep
/// ignoring it: they print nothing, and a log reader that goes away must not kill a worker.
///
/// Only a broken stdout or stderr ends the command: sockets raise SIGPIPE too (async-nats
/// writes with `writev`, which has no `MSG_NOSIGNAL`), and a write to a server that just went
/// away is an error the client handles (it reconnects). With SIGPIPE at its default, a demo
/// stopped by SIGTERM died by SIGPIPE about one time in twelve, writing to the nats-server it
/// had just stopped. So the handler looks at stdout and stderr, and dies by SIGPIPE only when
/// one of them has lost its reader.
fn die_quietly_on_broken_pipe() {
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: called at the start of `main`, before any other thread exists; the handler only
    // calls functions that are async-signal-safe (`poll`, `signal`, `raise`).
    unsafe {
        libc::signal(
            libc::SIGPIPE,
            on_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// No transparent huge pages for this process. mimalloc asks for them (`MADV_HUGEPAGE`) on the
/// regions it reserves, so the first touch of any 2 MiB of them is a 2 MiB page zeroed at once.
/// The aggregator's small, short-lived allocations (a result's fields, the acks a snapshot
/// waits for) touch a little of many such regions: in `kiln-bench pipeline`, zeroing those
/// pages was half the aggregator's CPU (`perf record`), and without them it spent 7.0 µs per job
/// instead of 10.0 (medians of six runs each, interleaved; `bench/results/2026-12-06/thp/`).
/// Workers keep them: their tensors fill what they touch, and showed no gain.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this process's memory; it takes
    // no pointers. A kernel without it returns an error, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// SIGPIPE's handler: die by it (as with no handler) when stdout or stderr is a pipe or socket
/// whose reader has gone; otherwise return, and the write that raised it fails with `EPIPE`.
#[cfg(unix)]
#[allow(unsafe_code)]
extern "C" fn on_sigpipe(_: libc::c_int) {
    let mut fds = [1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of two pollfds; poll, signal and raise are
    // async-signal-safe.
    unsafe {
        let ready = libc::poll(fds.as_mut_ptr(), 2, 0);
        if ready > 0 && fds.iter().any(|f| f.revents & libc::POLLERR != 0) {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::raise(libc::SIGPIPE);
        }
    }
}

fn init_tracing(cli: &cli::Cli) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::MakeWriterExt as _;
    let default = if cli.command.is_service() {
        "info"
    } else {
        "warn"
    };
    // async-nats logs every connection event at info; kiln logs the ones that matter itself,
    // with the server's URL (see connect.rs).
    let default = format!("{default},async_nats=warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Not over `kiln watch`'s screen: a line written there would stay until redrawn.
    let writer = std::io::stderr.with_filter(|_: &tracing::Metadata<'_>| !screen::taken());
    // A line that cannot be written is lost, quietly: tracing-subscriber reports it with
    // `eprintln!`, which panics when stderr's reader has gone (a service whose log pipe
    // closed exited 101, leaving its jobs to the ack wait).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false)
        .with_ansi(colour_logs());
    log::set_json(matches!(cli.log_format, cli::LogFormat::Json));
    match cli.log_format {
        cli::LogFormat::Json => builder.json().init(),
        cli::LogFormat::Text => builder.init(),
    }
}

/// Colours in text logs only when stderr is a terminal (not a file, journald or a container's
/// log), and not when NO_COLOR is set to anything (https://no-color.org).
fn colour_logs() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_said_twice_is_said_once() {
        let twice = "could not create or update stream KILN_JOBS: jetstream error: replicas > 1 \
                     not supported (code 500): jetstream error: replicas > 1 not supported (code \
                     500)";
        assert_eq!(
            super::without_repeats(twice),
            "could not create or update stream KILN_JOBS: jetstream error: replicas > 1 not \
             supported (code 500)"
        );
        assert_eq!(super::without_repeats("a: b: c"), "a: b: c");
        assert_eq!(super::without_repeats("a: a"), "a");
    }

    /// An error that ends with its cause's text, as `#[error("…: {source}")]` makes one.
    #[derive(Debug)]
    struct Setup(std::io::Error);

    impl std::fmt::Display for Setup {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "could not create stream KILN_JOBS: {}", self.0)
        }
    }

    impl std::error::Error for Setup {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let refused = std::io::Error::other("replicas > 1 not supported");
        let e = anyhow::Error::new(Setup(refused));
        assert_eq!(
            super::causes(&e),
            "could not create stream KILN_JOBS: replicas > 1 not supported"
        );
        let e = anyhow::Error::new(std::io::Error::other("timed out")).context("connecting");
        assert_eq!(super::causes(&e), "connecting: timed out");
    }
}
