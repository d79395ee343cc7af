//! KEDA's ScaledObject (keda.sh/v1alpha1), the fields kiln uses. Unknown fields are errors, so
//! a misspelt field fails the check instead of being ignored by KEDA.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaledObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ScaledObjectSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
    pub polling_interval: Option<u32>,
    pub cooldown_period: Option<u32>,
    pub initial_cooldown_period: Option<u32>,
    pub idle_replica_count: Option<u32>,
    pub min_replica_count: Option<u32>,
    pub max_replica_count: Option<u32>,
    pub advanced: Option<Advanced>,
    pub fallback: Option<serde_json::Value>,
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleTargetRef {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub env_source_container_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Advanced {
    pub restore_to_original_replica_count: Option<bool>,
    pub horizontal_pod_autoscaler_config: Option<HpaConfig>,
    pub scaling_modifiers: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaConfig {
    pub name: Option<String>,
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// One trigger. KEDA reads `metadata` as a map of strings: a number written unquoted is an
/// error here, as it is for KEDA's admission webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub authentication_ref: Option<serde_json::Value>,
    pub metric_type: Option<String>,
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
