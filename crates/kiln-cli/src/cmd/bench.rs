//! `kiln bench …`: the benchmarks live in their own binary, `kiln-bench` (the `bench/`
//! crate), so the `kiln` that workers run carries no benchmark, plotting or test-server code.
//! This subcommand runs it with the same arguments and connection settings.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::{BenchForward, NatsArgs};

pub fn run(nats: &NatsArgs, args: BenchForward) -> anyhow::Result<ExitCode> {
    let Some(bin) = find_kiln_bench() else {
        anyhow::bail!(
            "kiln bench runs the kiln-bench binary, which is not beside {} nor on PATH: build \
             it with `cargo build --release -p kiln-bench` (or run `./dev bench`)",
            std::env::current_exe().map_or_else(|_| "kiln".into(), |p| p.display().to_string())
        );
    };
    let mut command = std::process::Command::new(&bin);
    command.args(&args.args).envs(nats_env(nats));
    let status = command
        .status()
        .map_err(|e| anyhow::anyhow!("could not run {}: {e}", bin.display()))?;
    // The benchmark's own exit status (a signal counts as failure).
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// `kiln-bench` beside this binary (cargo builds both into one folder), else on PATH.
fn find_kiln_bench() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("kiln-bench")))
        .filter(|path| path.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("kiln-bench"))
                .find(|path| path.is_file())
        })
    })
}

/// The connection settings as the environment variables both binaries read, so that
/// `kiln --nats-url … bench …` means what it says.
fn nats_env(nats: &NatsArgs) -> Vec<(&'static str, OsString)> {
    let mut env = vec![
        ("NATS_URL", OsString::from(&nats.nats_url)),
        ("KILN_REPLICAS", nats.replicas.to_string().into()),
        (
            "KILN_MAX_QUEUED_JOBS",
            nats.max_queued_jobs.to_string().into(),
        ),
        (
            "KILN_RESULTS_MAX_BYTES",
            nats.results_max_bytes.to_string().into(),
        ),
        (
            "KILN_DATA_MAX_AGE_HOURS",
            // Whole hours, rounded up: kiln-bench reads the same flags.
            nats.data_max_age()
                .as_secs()
                .div_ceil(3600)
                .to_string()
                .into(),
        ),
        (
            "KILN_DATA_MAX_BYTES",
            nats.data_max_bytes.to_string().into(),
        ),
    ];
    let paths = [
        ("NATS_CREDS", &nats.creds),
        ("NATS_NKEY", &nats.nkey),
        ("NATS_CA", &nats.tls_ca),
        ("NATS_CERT", &nats.tls_cert),
        ("NATS_KEY", &nats.tls_key),
    ];
    for (name, value) in paths {
        if let Some(path) = value {
            env.push((name, path.into()));
        }
    }
    for (name, value) in [
        ("NATS_USER", &nats.user),
        ("NATS_PASSWORD", &nats.password),
        ("NATS_TOKEN", &nats.token),
    ] {
        if let Some(text) = value {
            env.push((name, text.into()));
        }
    }
    env
}
