//! The structural checks of a rendered overlay.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Probe, Secret, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kiln_proto::DeviceClass;
use kiln_proto::streams::STREAM_JOBS;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::keda::{NATS_JETSTREAM_FIELDS, ScaledObject};

/// The port every long-running kiln role serves /metrics, /healthz and /readyz on.
const METRICS_PORT: i32 = 9090;
const METRICS_PORT_NAME: &str = "metrics";
const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Split a multi-document YAML stream into JSON values (empty documents dropped).
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(yaml).enumerate() {
        let value = yaml_serde::Value::deserialize(doc)
            .map_err(|e| format!("document {i} is not YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("document {i} has no JSON form: {e}"))?;
        docs.push(json);
    }
    Ok(docs)
}

/// Parse and check a rendered overlay; returns every problem found (empty = fine).
pub fn check_yaml(yaml: &str) -> Vec<String> {
    match parse_documents(yaml) {
        Ok(docs) => check_documents(&docs),
        Err(e) => vec![e],
    }
}

/// A workload with a pod template.
struct Workload<'a> {
    kind: &'static str,
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    selector: Option<&'a LabelSelector>,
    pod: &'a PodSpec,
    /// Deployments and StatefulSets: serve until stopped, so they need probes.
    long_running: bool,
    /// `spec.replicas` as written (None: left to the default or an autoscaler).
    replicas: Option<i32>,
}

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    services: Vec<Service>,
    stateful_sets: Vec<StatefulSet>,
    deployments: Vec<Deployment>,
    jobs: Vec<Job>,
    pdbs: Vec<PodDisruptionBudget>,
    scaled_objects: Vec<ScaledObject>,
}

/// Check parsed documents; returns every problem found (empty = fine).
pub fn check_documents(docs: &[Value]) -> Vec<String> {
    let mut p = Vec::new();
    let objects = typed_objects(docs, &mut p);
    let workloads = workloads(&objects);
    check_namespaces(docs, &objects, &mut p);
    check_workloads(&workloads, &objects, &mut p);
    check_services(&objects, &workloads, &mut p);
    check_pdbs(&objects, &workloads, &mut p);
    check_nats(&objects, &workloads, &mut p);
    check_keda(&objects, &workloads, &mut p);
    check_gpu(&workloads, &mut p);
    p
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

fn typed_objects(docs: &[Value], p: &mut Vec<String>) -> Objects {
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
            _ => p.push(format!(
                "{}: {api} {kind} is not a kind this check knows; teach kiln-deploy-check \
                 its API type",
                name_of(doc)
            )),
        }
    }
    o
}

fn workloads(o: &Objects) -> Vec<Workload<'_>> {
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

fn template_labels(
    meta: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) -> BTreeMap<String, String> {
    meta.as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn label_selector_selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exprs = selector.match_expressions.as_deref().unwrap_or_default();
    let Some(matches) = &selector.match_labels else {
        return false;
    };
    exprs.is_empty() && selects(matches, labels)
}

fn all_containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
}

/// A container's environment as kiln sees it: envFrom ConfigMaps, then literal env values
/// (valueFrom entries appear as `<from …>`).
fn container_env(c: &Container, o: &Objects, ns: &Option<String>) -> BTreeMap<String, String> {
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

fn find_config_map<'a>(o: &'a Objects, name: &str, ns: &Option<String>) -> Option<&'a ConfigMap> {
    o.config_maps
        .iter()
        .find(|cm| cm.metadata.name.as_deref() == Some(name) && &cm.metadata.namespace == ns)
}

fn is_kiln(c: &Container) -> bool {
    c.image
        .as_deref()
        .is_some_and(|image| image_name(image).starts_with("kiln"))
}

/// `registry/path/kiln-cuda:tag@digest` → `kiln-cuda`.
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

fn check_namespaces(docs: &[Value], o: &Objects, p: &mut Vec<String>) {
    let created: BTreeSet<String> = o
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let used: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap_or("").to_owned())
        .collect();
    if used.len() != 1 {
        p.push(format!(
            "objects are spread over namespaces {used:?}; one overlay, one namespace"
        ));
    }
    for ns in &used {
        if ns.is_empty() {
            p.push("some objects have no namespace: set `namespace:` in the overlay".into());
        } else if !created.contains(ns) {
            p.push(format!(
                "namespace {ns} is used but the overlay does not create it"
            ));
        }
    }
}

fn check_workloads(workloads: &[Workload<'_>], o: &Objects, p: &mut Vec<String>) {
    for w in workloads {
        let what = format!("{} {}", w.kind, w.name);
        if let Some(selector) = w.selector
            && !label_selector_selects(selector, &w.labels)
        {
            p.push(format!(
                "{what}: its selector does not select its own pod template"
            ));
        }
        if w.pod
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root)
            != Some(true)
        {
            p.push(format!(
                "{what}: pods must set securityContext.runAsNonRoot: true"
            ));
        }
        for c in all_containers(w.pod) {
            let what = format!("{what}, container {}", c.name);
            check_resources(&what, c, p);
            check_config_refs(&what, c, w, o, p);
            if w.long_running {
                check_probes(&what, c, is_kiln(c), p);
            }
            if is_kiln(c) && w.long_running {
                check_metrics_port(&what, c, &container_env(c, o, &w.namespace), p);
            }
        }
        for volume in w.pod.volumes.iter().flatten() {
            if let Some(cm) = &volume.config_map
                && find_config_map(o, &cm.name, &w.namespace).is_none()
            {
                p.push(format!(
                    "{what}: volume {} names a missing ConfigMap {}",
                    volume.name, cm.name
                ));
            }
        }
    }
    // Deployments an autoscaler owns must leave `replicas` alone, or every apply resets it.
    for so in &o.scaled_objects {
        let target = &so.spec.scale_target_ref.name;
        if let Some(w) = workloads
            .iter()
            .find(|w| w.kind == "Deployment" && &w.name == target)
            && w.replicas.is_some()
        {
            p.push(format!(
                "Deployment {target} sets spec.replicas although ScaledObject {} scales it",
                so.metadata.name.as_deref().unwrap_or("?")
            ));
        }
    }
}

fn check_resources(what: &str, c: &Container, p: &mut Vec<String>) {
    let Some(resources) = &c.resources else {
        p.push(format!("{what}: no resources"));
        return;
    };
    for (side, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for key in ["cpu", "memory"] {
            if !map.as_ref().is_some_and(|m| m.contains_key(key)) {
                p.push(format!("{what}: no {key} in resources.{side}"));
            }
        }
    }
}

fn check_config_refs(
    what: &str,
    c: &Container,
    w: &Workload<'_>,
    o: &Objects,
    p: &mut Vec<String>,
) {
    for source in c.env_from.iter().flatten() {
        if let Some(cm_ref) = &source.config_map_ref
            && find_config_map(o, &cm_ref.name, &w.namespace).is_none()
        {
            p.push(format!(
                "{what}: envFrom names a missing ConfigMap {}",
                cm_ref.name
            ));
        }
    }
}

fn check_probes(what: &str, c: &Container, kiln: bool, p: &mut Vec<String>) {
    let port_name =
        |probe: &Probe| -> Option<IntOrString> { probe.http_get.as_ref().map(|h| h.port.clone()) };
    for (which, probe, path) in [
        ("liveness", &c.liveness_probe, "/healthz"),
        ("readiness", &c.readiness_probe, "/readyz"),
    ] {
        let Some(probe) = probe else {
            p.push(format!("{what}: no {which} probe"));
            continue;
        };
        if !kiln {
            continue;
        }
        let get = probe.http_get.as_ref();
        if get.and_then(|g| g.path.as_deref()) != Some(path) {
            p.push(format!("{what}: the {which} probe must GET {path}"));
        }
        match port_name(probe) {
            Some(IntOrString::String(name)) if name == METRICS_PORT_NAME => {}
            Some(IntOrString::Int(METRICS_PORT)) => {}
            other => p.push(format!(
                "{what}: the {which} probe must use the metrics port ({METRICS_PORT_NAME} = \
                 {METRICS_PORT}), not {other:?}"
            )),
        }
    }
}

fn check_metrics_port(
    what: &str,
    c: &Container,
    env: &BTreeMap<String, String>,
    p: &mut Vec<String>,
) {
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some(METRICS_PORT_NAME));
    match port {
        Some(port) if port.container_port == METRICS_PORT => {}
        _ => p.push(format!(
            "{what}: needs containerPort {METRICS_PORT} named {METRICS_PORT_NAME}"
        )),
    }
    let want = format!("0.0.0.0:{METRICS_PORT}");
    if env.get("KILN_METRICS_ADDR") != Some(&want) {
        p.push(format!(
            "{what}: KILN_METRICS_ADDR must be {want} (the port the probes use)"
        ));
    }
    if env.get("NATS_URL").is_none_or(|url| url.is_empty()) {
        p.push(format!("{what}: no NATS_URL"));
    }
}

fn check_services(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
    for svc in &o.services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &svc.spec else { continue };
        let selector = spec.selector.clone().unwrap_or_default();
        let targets: Vec<&Workload<'_>> = workloads
            .iter()
            .filter(|w| w.namespace == svc.metadata.namespace && selects(&selector, &w.labels))
            .collect();
        if targets.is_empty() {
            p.push(format!(
                "Service {name} selects no pods of this overlay ({selector:?})"
            ));
            continue;
        }
        for port in spec.ports.iter().flatten() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            for w in &targets {
                let exposes = w
                    .pod
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .any(|cp| match &target {
                        IntOrString::Int(n) => cp.container_port == *n,
                        IntOrString::String(s) => cp.name.as_deref() == Some(s),
                    });
                if !exposes {
                    p.push(format!(
                        "Service {name} port {} targets {target:?}, which {} {} does not expose",
                        port.port, w.kind, w.name
                    ));
                }
            }
        }
    }
    // The aggregator's metrics are reachable through a Service.
    let aggregator = workloads.iter().find(|w| {
        w.pod
            .containers
            .iter()
            .any(|c| kiln_role(c) == Some("aggregator"))
    });
    match aggregator {
        None => p.push("no aggregator Deployment".into()),
        Some(agg) => {
            let exposed = o.services.iter().any(|svc| {
                let spec = svc.spec.as_ref();
                let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
                selects(&selector, &agg.labels)
                    && spec.and_then(|s| s.ports.as_ref()).is_some_and(|ports| {
                        ports.iter().any(|port| {
                            port.target_port == Some(IntOrString::String(METRICS_PORT_NAME.into()))
                                || port.target_port == Some(IntOrString::Int(METRICS_PORT))
                        })
                    })
            });
            if !exposed {
                p.push("no Service exposes the aggregator's metrics port".into());
            }
        }
    }
}

/// The kiln subcommand a container runs (`worker`, `aggregator`, …).
fn kiln_role(c: &Container) -> Option<&str> {
    if !is_kiln(c) {
        return None;
    }
    c.args.as_ref().and_then(|a| a.first()).map(String::as_str)
}

fn check_pdbs(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
    for pdb in &o.pdbs {
        let name = pdb.metadata.name.clone().unwrap_or_default();
        let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            p.push(format!("PodDisruptionBudget {name} has no selector"));
            continue;
        };
        if !workloads
            .iter()
            .any(|w| w.long_running && label_selector_selects(selector, &w.labels))
        {
            p.push(format!(
                "PodDisruptionBudget {name} selects no pods of this overlay"
            ));
        }
    }
}

/// The NATS StatefulSet, its governing Service and its configuration.
struct Nats<'a> {
    sts: &'a StatefulSet,
    replicas: i32,
    service: String,
    namespace: String,
    conf: String,
    auth: Option<String>,
    monitor_port: Option<i32>,
    cluster_port: Option<i32>,
    /// auth.conf comes from a Secret (the nats-auth component): users in the account KILN.
    auth_from_secret: bool,
    /// Variables set in the NATS container's environment.
    env: BTreeSet<String>,
}

/// The account of nats/secure/secure.conf's users, which the nats-auth component uses.
const AUTH_ACCOUNT: &str = "KILN";

fn nats<'a>(o: &'a Objects, p: &mut Vec<String>) -> Option<Nats<'a>> {
    let sts = o.stateful_sets.iter().find(|s| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .is_some_and(|pod| {
                pod.containers
                    .iter()
                    .any(|c| c.image.as_deref().is_some_and(|i| image_name(i) == "nats"))
            })
    });
    let Some(sts) = sts else {
        p.push("no NATS StatefulSet".into());
        return None;
    };
    let spec = sts.spec.as_ref()?;
    let pod = spec.template.spec.as_ref()?;
    let container = pod.containers.iter().find(|c| c.name == "nats")?;
    let port = |name: &str| {
        container
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some(name))
            .map(|port| port.container_port)
    };
    // The ConfigMap mounted as the config directory, directly or in a projected volume.
    let config_volume = pod.volumes.iter().flatten().find(|v| v.name == "config");
    let cm_name = config_volume.and_then(|v| {
        v.config_map.as_ref().map(|cm| cm.name.clone()).or_else(|| {
            v.projected.as_ref().and_then(|proj| {
                proj.sources
                    .iter()
                    .flatten()
                    .find_map(|s| s.config_map.as_ref().map(|cm| cm.name.clone()))
            })
        })
    });
    let auth_from_secret = config_volume
        .and_then(|v| v.projected.as_ref())
        .is_some_and(|proj| proj.sources.iter().flatten().any(|s| s.secret.is_some()));
    let env = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect();
    let Some(cm) = cm_name.and_then(|n| find_config_map(o, &n, &sts.metadata.namespace)) else {
        p.push("the NATS StatefulSet mounts no ConfigMap as its `config` volume".into());
        return None;
    };
    let data = cm.data.clone().unwrap_or_default();
    let Some(conf) = data.get("nats.conf").cloned() else {
        p.push("the NATS ConfigMap has no nats.conf".into());
        return None;
    };
    Some(Nats {
        sts,
        replicas: spec.replicas.unwrap_or(1),
        service: spec.service_name.clone().unwrap_or_default(),
        namespace: sts.metadata.namespace.clone().unwrap_or_default(),
        conf,
        auth: data.get("auth.conf").cloned(),
        monitor_port: port("monitor"),
        cluster_port: port("cluster"),
        auth_from_secret,
        env,
    })
}

/// The configuration's lines without comments.
fn conf_lines(conf: &str) -> Vec<&str> {
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect()
}

fn check_nats(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
    let Some(n) = nats(o, p) else { return };
    let lines = conf_lines(&n.conf);
    let sts_name = n.sts.metadata.name.clone().unwrap_or_default();

    // The governing Service is headless and publishes pods before they are ready.
    match o
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&n.service))
    {
        None => p.push(format!(
            "StatefulSet {sts_name} names a missing Service {}",
            n.service
        )),
        Some(svc) => {
            let spec = svc.spec.clone().unwrap_or_default();
            if spec.cluster_ip.as_deref() != Some("None") {
                p.push(format!(
                    "Service {} must be headless (clusterIP: None)",
                    n.service
                ));
            }
            if spec.publish_not_ready_addresses != Some(true) && n.replicas > 1 {
                p.push(format!(
                    "Service {} must publish not-ready addresses: the routes need them before \
                     JetStream can make any pod ready",
                    n.service
                ));
            }
        }
    }
    if n.sts
        .spec
        .as_ref()
        .is_none_or(|s| s.volume_claim_templates.is_none())
    {
        p.push(format!(
            "StatefulSet {sts_name} keeps JetStream on no PersistentVolumeClaim"
        ));
    }
    if !lines
        .iter()
        .any(|l| l.replace(' ', "") == "server_name:$POD_NAME")
    {
        p.push("nats.conf must set server_name: $POD_NAME (KEDA finds leaders by it)".into());
    }
    if !lines.iter().any(|l| l.starts_with("store_dir")) {
        p.push("nats.conf enables no JetStream store_dir".into());
    }

    // Cluster routes: one per pod under the headless Service, or no cluster for one node.
    let clustered = lines.iter().any(|l| l.starts_with("cluster"));
    let routes: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.starts_with("nats://") || l.starts_with("nats-route://"))
        .map(|l| l.trim_end_matches(',').to_owned())
        .collect();
    if n.replicas > 1 {
        let cluster_port = n.cluster_port.unwrap_or(6222);
        let want: BTreeSet<String> = (0..n.replicas)
            .map(|i| format!("nats://{sts_name}-{i}.{}:{cluster_port}", n.service))
            .collect();
        if !clustered || routes != want {
            p.push(format!(
                "StatefulSet {sts_name} has {} replicas, so nats.conf needs a cluster block \
                 with the routes {want:?}; it has {routes:?}",
                n.replicas
            ));
        }
        if !lines
            .iter()
            .any(|l| l.replace(' ', "") == "no_advertise:true")
        {
            p.push(
                "clustered nats.conf must set no_advertise: true (KEDA's scaler then finds \
                    consumer leaders through the route names)"
                    .into(),
            );
        }
    } else if clustered {
        p.push("a single NATS node must not have a cluster block (it would wait for peers)".into());
    }

    // The configuration is valid for nats-server itself.
    validate_with_nats_server(&n, &sts_name, p);

    // Every kiln process uses the StatefulSet's size as its stream replicas, and `kiln init`
    // (which creates them) is among them.
    let mut init_seen = false;
    for w in workloads {
        for c in w.pod.containers.iter().filter(|c| is_kiln(c)) {
            let env = container_env(c, o, &w.namespace);
            if kiln_role(c) == Some("init") {
                init_seen = true;
            }
            if n.auth_from_secret {
                let user = env.get("NATS_USER").cloned().unwrap_or_default();
                let password_var = format!("KILN_{}_PASSWORD", user.to_uppercase());
                if user.is_empty() || !env.contains_key("NATS_PASSWORD") {
                    p.push(format!(
                        "{} {}: NATS requires users, but this role has no NATS_USER and \
                         NATS_PASSWORD",
                        w.kind, w.name
                    ));
                } else if !n.env.contains(&password_var) {
                    p.push(format!(
                        "{} {}: connects as {user}, but the NATS pods get no {password_var}",
                        w.kind, w.name
                    ));
                }
            }
            let replicas = env
                .get("KILN_REPLICAS")
                .cloned()
                .unwrap_or_else(|| "1".into());
            if replicas != n.replicas.to_string() {
                p.push(format!(
                    "{} {}: KILN_REPLICAS={replicas}, but NATS has {} nodes; streams would be \
                     created with another replica count",
                    w.kind, w.name, n.replicas
                ));
            }
            let url = env.get("NATS_URL").cloned().unwrap_or_default();
            let client_service = url
                .trim_start_matches("nats://")
                .split([':', '.'])
                .next()
                .unwrap_or_default()
                .to_owned();
            if !o.services.iter().any(|s| {
                s.metadata.name.as_deref() == Some(client_service.as_str())
                    && s.spec.as_ref().is_some_and(|spec| {
                        spec.ports.iter().flatten().any(|port| port.port == 4222)
                            && spec.selector.as_ref().is_some_and(|sel| {
                                n.sts.spec.as_ref().is_some_and(|sts| {
                                    selects(sel, &template_labels(&sts.template.metadata))
                                })
                            })
                    })
            }) {
                p.push(format!(
                    "{} {}: NATS_URL {url} does not name a Service of the NATS pods on port 4222",
                    w.kind, w.name
                ));
            }
        }
    }
    if !init_seen {
        p.push("no `kiln init` Job creates the streams and consumers".into());
    }
}

fn validate_with_nats_server(n: &Nats<'_>, sts_name: &str, p: &mut Vec<String>) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            p.push(format!("cannot create a temporary directory: {e}"));
            return;
        }
    };
    let conf = dir.path().join("nats.conf");
    let written = std::fs::write(&conf, &n.conf).and_then(|()| {
        std::fs::write(
            dir.path().join("auth.conf"),
            n.auth.as_deref().unwrap_or("# auth from a Secret\n"),
        )
    });
    if let Err(e) = written {
        p.push(format!("cannot write the NATS configuration: {e}"));
        return;
    }
    let out = std::process::Command::new(kiln_testkit::nats_server_bin())
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .env("POD_NAME", format!("{sts_name}-0"))
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => p.push(format!(
            "nats-server rejects the rendered nats.conf: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => p.push(format!("cannot run nats-server -t: {e}")),
    }
}

fn check_keda(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
    let mut nats_problems = Vec::new();
    let n = nats(o, &mut nats_problems);
    let gpu = DeviceClass::Gpu.consumer();
    let cpu = DeviceClass::Cpu.consumer();
    let mut scaled_consumers = BTreeSet::new();
    for so in &o.scaled_objects {
        let name = so.metadata.name.clone().unwrap_or_default();
        let what = format!("ScaledObject {name}");
        let target_ref = &so.spec.scale_target_ref;
        if target_ref.kind.as_deref().unwrap_or("Deployment") != "Deployment"
            || target_ref.api_version.as_deref().unwrap_or("apps/v1") != "apps/v1"
        {
            p.push(format!(
                "{what}: scales something other than an apps/v1 Deployment"
            ));
        }
        let target = workloads
            .iter()
            .find(|w| w.kind == "Deployment" && w.name == target_ref.name);
        let Some(target) = target else {
            p.push(format!(
                "{what}: its target Deployment {} does not exist",
                target_ref.name
            ));
            continue;
        };
        let worker = target
            .pod
            .containers
            .iter()
            .find(|c| kiln_role(c) == Some("worker"));
        let Some(worker) = worker else {
            p.push(format!(
                "{what}: its target {} runs no kiln worker",
                target.name
            ));
            continue;
        };
        let env = container_env(worker, o, &target.namespace);
        let device = env
            .get("KILN_DEVICE")
            .cloned()
            .unwrap_or_else(|| "auto".into());
        let serves = if device.starts_with("cuda") {
            gpu
        } else if device == "cpu" {
            cpu
        } else {
            p.push(format!(
                "{what}: worker {} runs --device {device}; give it cpu or cuda so that its \
                 consumer is known",
                target.name
            ));
            continue;
        };
        let (min, max) = (
            so.spec.min_replica_count.unwrap_or(0),
            so.spec.max_replica_count,
        );
        if max.is_none_or(|max| max < min.max(1)) {
            p.push(format!(
                "{what}: maxReplicaCount must be at least max(minReplicaCount, 1)"
            ));
        }
        if so.spec.triggers.is_empty() {
            p.push(format!("{what}: no triggers"));
        }
        for t in &so.spec.triggers {
            if t.kind != "nats-jetstream" {
                p.push(format!(
                    "{what}: trigger type {} is not nats-jetstream",
                    t.kind
                ));
                continue;
            }
            for key in t.metadata.keys() {
                if !NATS_JETSTREAM_FIELDS.contains(&key.as_str()) {
                    p.push(format!(
                        "{what}: {key} is not a nats-jetstream scaler field"
                    ));
                }
            }
            let field = |key: &str| t.metadata.get(key).map(String::as_str).unwrap_or("");
            if field("stream") != STREAM_JOBS {
                p.push(format!("{what}: stream must be {STREAM_JOBS}"));
            }
            let consumer = field("consumer");
            if consumer != serves {
                p.push(format!(
                    "{what}: consumer {consumer:?}, but its workers (--device {device}) pull \
                     through {serves:?}, which `kiln init` creates"
                ));
            }
            scaled_consumers.insert(consumer.to_owned());
            let account = match &n {
                Some(n) if n.auth_from_secret => AUTH_ACCOUNT,
                _ => "$G",
            };
            if field("account") != account {
                p.push(format!(
                    "{what}: account must be {account}, the account kiln's users are in \
                     ($G without users, {AUTH_ACCOUNT} with the nats-auth component)"
                ));
            }
            match field("lagThreshold").parse::<u64>() {
                Ok(lag) => {
                    let in_flight = env
                        .get("KILN_MAX_IN_FLIGHT")
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(256);
                    if lag < in_flight {
                        p.push(format!(
                            "{what}: lagThreshold {lag} is below the {in_flight} jobs one busy \
                             worker holds (KILN_MAX_IN_FLIGHT): it would scale up with nothing \
                             queued"
                        ));
                    }
                }
                Err(_) => p.push(format!("{what}: lagThreshold must be a whole number")),
            }
            if let Some(n) = &n {
                let want = format!(
                    "{}.{}.svc.cluster.local:{}",
                    n.service,
                    n.namespace,
                    n.monitor_port.unwrap_or(8222)
                );
                if field("natsServerMonitoringEndpoint") != want {
                    p.push(format!(
                        "{what}: natsServerMonitoringEndpoint must be {want}: the StatefulSet's \
                         governing headless Service, so that <server name>.<endpoint> reaches \
                         each node (found {:?})",
                        field("natsServerMonitoringEndpoint")
                    ));
                }
            }
        }
    }
    for consumer in [gpu, cpu] {
        if !scaled_consumers.contains(consumer) {
            p.push(format!(
                "no ScaledObject scales the workers of consumer {consumer}"
            ));
        }
    }
    p.extend(nats_problems);
}

fn check_gpu(workloads: &[Workload<'_>], p: &mut Vec<String>) {
    let mut gpu_workers = 0;
    for w in workloads {
        for c in &w.pod.containers {
            let limits = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.clone())
                .unwrap_or_default();
            let gpus = limits.get(GPU_RESOURCE).map(|q| q.0.clone());
            let device = c
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "KILN_DEVICE")
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            let what = format!("{} {}, container {}", w.kind, w.name, c.name);
            if !device.starts_with("cuda") {
                if gpus.is_some() {
                    p.push(format!("{what}: asks for GPUs but runs no CUDA worker"));
                }
                continue;
            }
            gpu_workers += 1;
            if gpus
                .as_deref()
                .is_none_or(|n| n.parse::<u32>().map_or(true, |n| n == 0))
            {
                p.push(format!(
                    "{what}: a CUDA worker must have {GPU_RESOURCE} in its limits"
                ));
            }
            if c.image.as_deref().map(image_name) != Some("kiln-cuda") {
                p.push(format!(
                    "{what}: a CUDA worker must run the kiln-cuda image (NVRTC, headers)"
                ));
            }
            let tolerates = w.pod.tolerations.iter().flatten().any(|t| {
                t.key.as_deref() == Some(GPU_RESOURCE)
                    && matches!(t.effect.as_deref(), None | Some("NoSchedule"))
                    && matches!(t.operator.as_deref(), Some("Exists") | None | Some("Equal"))
            });
            if !tolerates {
                p.push(format!(
                    "{what}: must tolerate the {GPU_RESOURCE} NoSchedule taint"
                ));
            }
            if w.pod.node_selector.as_ref().is_none_or(|s| s.is_empty()) {
                p.push(format!("{what}: needs a nodeSelector for GPU nodes"));
            }
        }
    }
    if gpu_workers == 0 {
        p.push("no GPU worker (KILN_DEVICE=cuda)".into());
    }
}
