//! Services and PodDisruptionBudgets select pods of the overlay; a Service exposes the
//! aggregator's metrics.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::objects::{Objects, Workload, kiln_role, label_selector_selects, selects};
use super::{METRICS_PORT, METRICS_PORT_NAME};

pub(super) fn check_services(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
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

pub(super) fn check_pdbs(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
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
