//! KEDA's ScaledObject (keda.sh/v1alpha1), the fields kiln uses. Unknown fields are errors, so
//! a misspelt field fails the check instead of being ignored by KEDA.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

/// A ScaledObject document: scales one Deployment from its triggers.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaledObject {
    /// `keda.sh/v1alpha1`.
    pub api_version: String,
    /// `ScaledObject`.
    pub kind: String,
    /// Name, namespace and labels.
    pub metadata: ObjectMeta,
    /// What it scales, within which bounds, on which triggers.
    pub spec: ScaledObjectSpec,
}

/// A ScaledObject's `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaledObjectSpec {
    /// The workload scaled (a Deployment).
    pub scale_target_ref: ScaleTargetRef,
    /// Seconds between two checks of the triggers (KEDA's default: 30).
    pub polling_interval: Option<u32>,
    /// Seconds after the last active trigger before scaling to zero (KEDA's default: 300).
    pub cooldown_period: Option<u32>,
    /// Seconds after the ScaledObject is created before `cooldown_period` starts (default: 0).
    pub initial_cooldown_period: Option<u32>,
    /// Replicas while no trigger is active, below `min_replica_count` (`None`: not used).
    pub idle_replica_count: Option<u32>,
    /// Fewest replicas (KEDA's default: 0).
    pub min_replica_count: Option<u32>,
    /// Most replicas (KEDA's default: 100).
    pub max_replica_count: Option<u32>,
    /// The HPA KEDA makes, and what happens when the ScaledObject is deleted.
    pub advanced: Option<Advanced>,
    /// Replicas to keep while a trigger fails, kept unparsed.
    pub fallback: Option<serde_json::Value>,
    /// What the replica count follows.
    pub triggers: Vec<Trigger>,
}

/// The workload a ScaledObject scales.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleTargetRef {
    /// The workload's API version (KEDA's default: `apps/v1`).
    pub api_version: Option<String>,
    /// The workload's kind (KEDA's default: `Deployment`).
    pub kind: Option<String>,
    /// The workload's name, in the ScaledObject's namespace.
    pub name: String,
    /// The container whose environment triggers may read (default: the first).
    pub env_source_container_name: Option<String>,
}

/// A ScaledObject's `spec.advanced`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Advanced {
    /// Whether deleting the ScaledObject puts back the replica count it found.
    pub restore_to_original_replica_count: Option<bool>,
    /// Name and scaling behaviour of the HPA KEDA makes.
    pub horizontal_pod_autoscaler_config: Option<HpaConfig>,
    /// A formula over the triggers' metrics, kept unparsed.
    pub scaling_modifiers: Option<serde_json::Value>,
}

/// The HPA KEDA makes for a ScaledObject.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaConfig {
    /// The HPA's name (KEDA's default: `keda-hpa-<ScaledObject name>`).
    pub name: Option<String>,
    /// Its scale-up and scale-down policies, as in an `autoscaling/v2` HPA.
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// One trigger. KEDA reads `metadata` as a map of strings: a number written unquoted is an
/// error here, as it is for KEDA's admission webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    /// The scaler: `nats-jetstream`, `prometheus`, ….
    #[serde(rename = "type")]
    pub kind: String,
    /// The trigger's name, for `scalingModifiers` and the HPA's metric.
    pub name: Option<String>,
    /// The scaler's settings; for nats-jetstream, the fields in `NATS_JETSTREAM_FIELDS`.
    pub metadata: BTreeMap<String, String>,
    /// A TriggerAuthentication to read secrets from, kept unparsed.
    pub authentication_ref: Option<serde_json::Value>,
    /// `AverageValue` (KEDA's default), `Value` or `Utilization`.
    pub metric_type: Option<String>,
    /// Whether the HPA's reads are answered from the value cached at the last poll.
    pub use_cached_metrics: Option<bool>,
}

/// The nats-jetstream scaler's metadata fields (KEDA 2.8 and later).
pub(crate) const NATS_JETSTREAM_FIELDS: &[&str] = &[
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
];
