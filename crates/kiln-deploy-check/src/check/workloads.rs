//! Pods: selectors that select their own template, non-root, resources, the ConfigMaps they
//! name, probes and the metrics port; and no fixed replicas where an autoscaler scales.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::objects::{
    Objects, Workload, all_containers, container_env, find_config_map, is_kiln,
    label_selector_selects,
};
use super::{METRICS_PORT, METRICS_PORT_NAME};

pub(super) fn check_workloads(workloads: &[Workload<'_>], o: &Objects, p: &mut Vec<String>) {
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
