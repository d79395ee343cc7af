//! The Prometheus Operator's objects, where an overlay has them: the PodMonitor scrapes the
//! metrics port of every long-running kiln role and names the scrape job `kiln` (which the
//! alerts select); the PrometheusRule carries exactly `deploy/prometheus/rules/kiln.rules.yml`.

use super::METRICS_PORT_NAME;
use super::objects::{Objects, Workload, is_kiln, label_selector_selects};

/// The scrape job the alert rules select (`up{job="kiln"}`).
const JOB: &str = "kiln";

pub(super) fn check_monitoring(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
    for pm in &o.pod_monitors {
        let name = pm.metadata.name.clone().unwrap_or_default();
        let selected: Vec<&Workload<'_>> = workloads
            .iter()
            .filter(|w| {
                w.namespace == pm.metadata.namespace
                    && label_selector_selects(&pm.spec.selector, &w.labels)
            })
            .collect();
        if selected.is_empty() {
            p.push(format!("PodMonitor {name} selects no pods of this overlay"));
        }
        for endpoint in &pm.spec.pod_metrics_endpoints {
            let port = endpoint.port.as_deref().unwrap_or_default();
            if port != METRICS_PORT_NAME {
                p.push(format!(
                    "PodMonitor {name} scrapes port {port:?}; kiln serves /metrics on the port named {METRICS_PORT_NAME:?}"
                ));
            }
            let sets_job = endpoint.relabelings.iter().any(|r| {
                r.target_label.as_deref() == Some("job")
                    && r.source_labels.is_empty()
                    && r.replacement.as_deref() == Some(JOB)
                    && matches!(r.action.as_deref(), None | Some("replace"))
            });
            if !sets_job && pm.spec.job_label.is_none() {
                p.push(format!(
                    "PodMonitor {name}: no relabeling sets job={JOB:?}, which the alert rules select (up{{job=\"kiln\"}})"
                ));
            }
        }
    }
    if !o.pod_monitors.is_empty() {
        // Every long-running kiln role is scraped on a port it exposes.
        for w in workloads.iter().filter(|w| w.long_running) {
            if !w.pod.containers.iter().any(is_kiln) {
                continue;
            }
            let scraped = o.pod_monitors.iter().any(|pm| {
                w.namespace == pm.metadata.namespace
                    && label_selector_selects(&pm.spec.selector, &w.labels)
                    && pm.spec.pod_metrics_endpoints.iter().any(|e| {
                        w.pod
                            .containers
                            .iter()
                            .flat_map(|c| c.ports.iter().flatten())
                            .any(|cp| cp.name.is_some() && cp.name == e.port)
                    })
            });
            if !scraped {
                p.push(format!(
                    "{} {}: no PodMonitor scrapes its {METRICS_PORT_NAME:?} port",
                    w.kind, w.name
                ));
            }
        }
    }
    if o.prometheus_rules.is_empty() {
        return;
    }
    let rules = match crate::alert_rules(&crate::workspace_root()) {
        Ok(rules) => rules,
        Err(e) => {
            p.push(e);
            return;
        }
    };
    for pr in &o.prometheus_rules {
        if pr.spec != rules {
            p.push(format!(
                "PrometheusRule {}: its spec differs from deploy/prometheus/rules/kiln.rules.yml; run `./dev prometheus-rule`",
                pr.metadata.name.clone().unwrap_or_default()
            ));
        }
    }
}
