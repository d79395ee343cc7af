//! kiln's roles as separate processes, the way users run them: one `kiln worker --device cpu`
//! and one `kiln aggregator`, started from the `kiln` binary beside this one.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use tokio::process::Child;

/// How often the latency bench's aggregator process snapshots (and acks).
pub(crate) const SNAPSHOT_INTERVAL_MS: u64 = 50;

/// How often the pipeline's aggregator snapshots: its side ends at the snapshot that counts
/// the last job, so the interval is part of the time it measures (half of it, on average; 25
/// ms of a 0.5 s run at 50 ms, 10 ms at 20; a shorter one costs the aggregator more snapshots).
pub(crate) const PIPELINE_SNAPSHOT_MS: u64 = 20;

/// A running `kiln worker` and `kiln aggregator`; [`RoleProcesses::stop`] stops them with
/// SIGTERM (a dropped one is killed).
pub(crate) struct RoleProcesses {
    children: Vec<(&'static str, Child)>,
}

impl RoleProcesses {
    /// Start a CPU worker named `<prefix>worker` and an aggregator on `nats_url`, and wait
    /// until the worker says it is serving.
    pub(crate) async fn start(
        js: &jetstream::Context,
        nats_url: &str,
        prefix: &str,
        snapshot_ms: u64,
    ) -> anyhow::Result<Self> {
        let exe = crate::kiln_binary()?;
        let name = format!("{prefix}worker");
        let worker = spawn(
            &exe,
            nats_url,
            &["worker", "--device", "cpu", "--no-warmup", "--name", &name],
        )?;
        let interval = snapshot_ms.to_string();
        let aggregator = spawn(&exe, nats_url, &["aggregator", "--interval-ms", &interval])?;
        let roles = RoleProcesses {
            children: vec![("worker", worker), ("aggregator", aggregator)],
        };
        crate::suite::scaling::wait_live(js, &name, 1).await?;
        Ok(roles)
    }

    /// The process ids, by role (for `perf record -p`).
    pub(crate) fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children
            .iter()
            .filter_map(|(role, child)| Some((*role, child.id()?)))
            .collect()
    }

    /// SIGTERM each process and wait up to 30 s for it to exit (then kill it): the
    /// aggregator stores its last snapshot and acks what it counted on the way out.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for (role, child) in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(30);
            match tokio::time::timeout_at(deadline.into(), child.wait()).await {
                Ok(exit) => {
                    let exit = exit?;
                    anyhow::ensure!(exit.success(), "kiln {role} exited with {exit}");
                }
                Err(_) => {
                    let _ = child.kill().await;
                    anyhow::bail!("kiln {role} did not stop within 30 s of SIGTERM");
                }
            }
        }
        Ok(())
    }
}

fn spawn(exe: &Path, nats_url: &str, args: &[&str]) -> anyhow::Result<Child> {
    tokio::process::Command::new(exe)
        .args(args)
        .env("NATS_URL", nats_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args[0]))
}
