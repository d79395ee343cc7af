//! `kiln scheduler` metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::labels::KindClassLabels;

/// A scheduler's metrics. Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct SchedulerMetrics {
    /// `kiln_scheduler_routed_jobs_total{kind, class}`: auto jobs routed, by the class chosen.
    pub routed: Family<KindClassLabels, Counter>,
    /// `kiln_scheduler_route_failures_total`: tries at routing a copy that the server did not
    /// store, each counted (a job held while `KILN_JOBS` is full, once per try; one refused
    /// otherwise is handed back and routed again).
    pub route_failures: Counter,
}

impl SchedulerMetrics {
    /// Register every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kiln_scheduler_routed_jobs",
            "Auto jobs routed, by kind and the device class chosen",
            self.routed.clone(),
        );
        registry.register(
            "kiln_scheduler_route_failures",
            "Tries at routing a copy the server did not store (a job held for room counts once per try)",
            self.route_failures.clone(),
        );
    }

    /// Count one routed job.
    pub fn routed(&self, kind: &str, class: &str) {
        self.routed
            .get_or_create(&KindClassLabels {
                kind: kind.to_owned(),
                class: class.to_owned(),
            })
            .inc();
    }
}
