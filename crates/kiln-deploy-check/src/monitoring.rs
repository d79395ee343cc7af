//! The Prometheus Operator's PodMonitor and PrometheusRule (monitoring.coreos.com/v1), the
//! fields kiln uses. Unknown fields are errors, so a misspelt field fails the check instead of
//! being dropped by the API server's schema pruning.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;

/// A PodMonitor document: which pods' ports Prometheus scrapes, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitor {
    /// `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// `PodMonitor`.
    pub kind: String,
    /// Name, namespace and labels (the operator's `podMonitorSelector` reads the labels).
    pub metadata: ObjectMeta,
    /// What it scrapes.
    pub spec: PodMonitorSpec,
}

/// A PodMonitor's `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMonitorSpec {
    /// The pods scraped, in the PodMonitor's namespace.
    pub selector: LabelSelector,
    /// Each port scraped on those pods.
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
    /// A pod label whose value becomes the `job` label.
    pub job_label: Option<String>,
}

/// One scraped port of a PodMonitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodMetricsEndpoint {
    /// The container port's name.
    pub port: Option<String>,
    /// The HTTP path (default `/metrics`).
    pub path: Option<String>,
    /// How often (default: the Prometheus' own).
    pub interval: Option<String>,
    /// Whether the scraped metrics' own labels win over the target's (`honor_labels`).
    #[serde(default)]
    pub honor_labels: bool,
    /// Relabelings applied to the target before the scrape.
    #[serde(default)]
    pub relabelings: Vec<Relabeling>,
}

/// A relabel config in the operator's spelling.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Relabeling {
    /// Labels whose values, joined by `separator`, are matched against `regex`.
    #[serde(default)]
    pub source_labels: Vec<String>,
    /// Joins the source labels' values (default `;`).
    pub separator: Option<String>,
    /// The label written (action `replace`).
    pub target_label: Option<String>,
    /// RE2, anchored (default `(.*)`).
    pub regex: Option<String>,
    /// Modulus for `hashmod`.
    pub modulus: Option<u64>,
    /// The value written, with `${1}` … (default `$1`).
    pub replacement: Option<String>,
    /// `replace` (default), `keep`, `drop`, `labelmap`, …
    pub action: Option<String>,
}

/// A PrometheusRule document: rule groups in the rule file format, under `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusRule {
    /// `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// `PrometheusRule`.
    pub kind: String,
    /// Name, namespace and labels (the operator's `ruleSelector` reads the labels).
    pub metadata: ObjectMeta,
    /// `groups`, as a Prometheus rule file has them.
    pub spec: serde_json::Value,
}
