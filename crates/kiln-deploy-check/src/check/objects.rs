//! The overlay's documents as Kubernetes API types, its workloads, and the questions the
//! checks ask of them (what a selector selects, what environment a container gets).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::keda::ScaledObject;
use crate::monitoring::{PodMonitor, PrometheusRule};

/// A workload with a pod template.
pub(super) struct Workload<'a> {
    pub(super) kind: &'static str,
    pub(super) name: String,
    pub(super) namespace: Option<String>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) selector: Option<&'a LabelSelector>,
    pub(super) pod: &'a PodSpec,
    /// Deployments and StatefulSets: serve until stopped, so they need probes.
    pub(super) long_running: bool,
    /// `spec.replicas` as written (None: left to the default or an autoscaler).
    pub(super) replicas: Option<i32>,
}

#[derive(Default)]
pub(super) struct Objects {
    pub(super) namespaces: Vec<Namespace>,
    pub(super) config_maps: Vec<ConfigMap>,
    pub(super) secrets: Vec<Secret>,
    pub(super) services: Vec<Service>,
    pub(super) stateful_sets: Vec<StatefulSet>,
    pub(super) deployments: Vec<Deployment>,
    pub(super) jobs: Vec<Job>,
    pub(super) pdbs: Vec<PodDisruptionBudget>,
    pub(super) scaled_objects: Vec<ScaledObject>,
    pub(super) pod_monitors: Vec<PodMonitor>,
    pub(super) prometheus_rules: Vec<PrometheusRule>,
}

fn name_of(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("?");
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    format!("{kind}/{name}")
}

/// Deserialize into a Kubernetes API type, then serialize back: a field the type does not
/// know is silently dropped by the deserializer, so any difference is a field that is not
/// part of the API (a typo, or a field of another version).
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, p: &mut Vec<String>) -> Option<T> {
    let object: T = match serde_json::from_value(doc.clone()) {
        Ok(object) => object,
        Err(e) => {
            p.push(format!(
                "{} does not parse as its API type: {e}",
                name_of(doc)
            ));
            return None;
        }
    };
    match serde_json::to_value(&object) {
        Ok(back) => {
            let mut dropped = Vec::new();
            lost_fields(doc, &back, String::new(), &mut dropped);
            for path in dropped {
                p.push(format!(
                    "{}: field {path} is not part of the Kubernetes API (v1.33)",
                    name_of(doc)
                ));
            }
        }
        Err(e) => p.push(format!("{} does not serialize back: {e}", name_of(doc))),
    }
    Some(object)
}

/// Paths present in `original` but absent (or different) in `back`.
fn lost_fields(original: &Value, back: &Value, path: String, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => lost_fields(value, other, here, out),
                    // An empty object or list written out and dropped as a default is fine.
                    None if is_empty(value) => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, value) in a.iter().enumerate() {
                match b.get(i) {
                    Some(other) => lost_fields(value, other, format!("{path}[{i}]"), out),
                    None => out.push(format!("{path}[{i}]")),
                }
            }
        }
        (a, b) if a == b => {}
        // Numbers written as strings (or the reverse) where the API type says otherwise.
        (a, b) if a.to_string().trim_matches('"') == b.to_string().trim_matches('"') => {}
        _ => out.push(format!("{path} (value {original})")),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

pub(super) fn typed_objects(docs: &[Value], p: &mut Vec<String>) -> Objects {
    let mut o = Objects::default();
    for doc in docs {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        match (api, kind) {
            ("v1", "Namespace") => o.namespaces.extend(typed(doc, p)),
            ("v1", "ConfigMap") => o.config_maps.extend(typed(doc, p)),
            ("v1", "Secret") => o.secrets.extend(typed(doc, p)),
            ("v1", "Service") => o.services.extend(typed(doc, p)),
            ("apps/v1", "StatefulSet") => o.stateful_sets.extend(typed(doc, p)),
            ("apps/v1", "Deployment") => o.deployments.extend(typed(doc, p)),
            ("batch/v1", "Job") => o.jobs.extend(typed(doc, p)),
            ("policy/v1", "PodDisruptionBudget") => o.pdbs.extend(typed(doc, p)),
            ("keda.sh/v1alpha1", "ScaledObject") => {
                match serde_json::from_value::<ScaledObject>(doc.clone()) {
                    Ok(so) => o.scaled_objects.push(so),
                    Err(e) => p.push(format!("{} is not a valid ScaledObject: {e}", name_of(doc))),
                }
            }
            ("monitoring.coreos.com/v1", "PodMonitor") => {
                match serde_json::from_value::<PodMonitor>(doc.clone()) {
                    Ok(pm) => o.pod_monitors.push(pm),
                    Err(e) => p.push(format!("{} is not a valid PodMonitor: {e}", name_of(doc))),
                }
            }
            ("monitoring.coreos.com/v1", "PrometheusRule") => {
                match serde_json::from_value::<PrometheusRule>(doc.clone()) {
                    Ok(pr) => o.prometheus_rules.push(pr),
                    Err(e) => p.push(format!(
                        "{} is not a valid PrometheusRule: {e}",
                        name_of(doc)
                    )),
                }
            }
            _ => p.push(format!(
                "{}: {api} {kind} is not a kind this check knows; teach kiln-deploy-check \
                 its API type",
                name_of(doc)
            )),
        }
    }
    o
}

pub(super) fn workloads(o: &Objects) -> Vec<Workload<'_>> {
    let mut w = Vec::new();
    for d in &o.deployments {
        let Some(spec) = &d.spec else { continue };
        if let Some(pod) = &spec.template.spec {
            w.push(Workload {
                kind: "Deployment",
                name: d.metadata.name.clone().unwrap_or_default(),
                namespace: d.metadata.namespace.clone(),
                labels: template_labels(&spec.template.metadata),
                selector: Some(&spec.selector),
                pod,
                long_running: true,
                replicas: spec.replicas,
            });
        }
    }
    for s in &o.stateful_sets {
        let Some(spec) = &s.spec else { continue };
        if let Some(pod) = &spec.template.spec {
            w.push(Workload {
                kind: "StatefulSet",
                name: s.metadata.name.clone().unwrap_or_default(),
                namespace: s.metadata.namespace.clone(),
                labels: template_labels(&spec.template.metadata),
                selector: Some(&spec.selector),
                pod,
                long_running: true,
                replicas: spec.replicas,
            });
        }
    }
    for j in &o.jobs {
        let Some(spec) = &j.spec else { continue };
        if let Some(pod) = &spec.template.spec {
            w.push(Workload {
                kind: "Job",
                name: j.metadata.name.clone().unwrap_or_default(),
                namespace: j.metadata.namespace.clone(),
                labels: template_labels(&spec.template.metadata),
                selector: spec.selector.as_ref(),
                pod,
                long_running: false,
                replicas: None,
            });
        }
    }
    w
}

pub(super) fn template_labels(
    meta: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) -> BTreeMap<String, String> {
    meta.as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

pub(super) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(super) fn label_selector_selects(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs = selector.match_expressions.as_deref().unwrap_or_default();
    let Some(matches) = &selector.match_labels else {
        return false;
    };
    exprs.is_empty() && selects(matches, labels)
}

pub(super) fn all_containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
}

/// A container's environment as kiln sees it: envFrom ConfigMaps, then literal env values
/// (valueFrom entries appear as `<from …>`).
pub(super) fn container_env(
    c: &Container,
    o: &Objects,
    ns: &Option<String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in c.env_from.iter().flatten() {
        if let Some(cm_ref) = &source.config_map_ref
            && let Some(cm) = find_config_map(o, &cm_ref.name, ns)
        {
            env.extend(cm.data.clone().unwrap_or_default());
        }
    }
    for var in c.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(_)) => "<from a reference>".to_owned(),
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    env
}

pub(super) fn find_config_map<'a>(
    o: &'a Objects,
    name: &str,
    ns: &Option<String>,
) -> Option<&'a ConfigMap> {
    o.config_maps
        .iter()
        .find(|cm| cm.metadata.name.as_deref() == Some(name) && &cm.metadata.namespace == ns)
}

pub(super) fn is_kiln(c: &Container) -> bool {
    c.image
        .as_deref()
        .is_some_and(|image| image_name(image).starts_with("kiln"))
}

/// `registry/path/kiln-cuda:tag@digest` → `kiln-cuda`.
pub(super) fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The kiln subcommand a container runs (`worker`, `aggregator`, …).
pub(super) fn kiln_role(c: &Container) -> Option<&str> {
    if !is_kiln(c) {
        return None;
    }
    c.args.as_ref().and_then(|a| a.first()).map(String::as_str)
}
