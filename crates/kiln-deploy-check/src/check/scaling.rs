//! KEDA ScaledObjects: each scales a Deployment of kiln workers on the consumer they pull
//! through, and the workers of every consumer are scaled.

use std::collections::{BTreeMap, BTreeSet};

use kiln_proto::DeviceClass;
use kiln_proto::streams::STREAM_JOBS;

use super::nats::{AUTH_ACCOUNT, Nats, nats};
use super::objects::{Objects, Workload, container_env, kiln_role};
use crate::keda::{NATS_JETSTREAM_FIELDS, ScaledObject, Trigger};

pub(super) fn check_keda(o: &Objects, workloads: &[Workload<'_>], p: &mut Vec<String>) {
    let mut nats_problems = Vec::new();
    let n = nats(o, &mut nats_problems);
    let mut scaled_consumers = BTreeSet::new();
    for so in &o.scaled_objects {
        let what = format!(
            "ScaledObject {}",
            so.metadata.name.clone().unwrap_or_default()
        );
        let Some(workers) = scaled_workers(&what, so, o, workloads, p) else {
            continue;
        };
        check_replica_bounds(&what, so, p);
        if so.spec.triggers.is_empty() {
            p.push(format!("{what}: no triggers"));
        }
        for t in &so.spec.triggers {
            if let Some(consumer) = check_trigger(&what, t, &workers, n.as_ref(), p) {
                scaled_consumers.insert(consumer.to_owned());
            }
        }
    }
    for consumer in [DeviceClass::Gpu.consumer(), DeviceClass::Cpu.consumer()] {
        if !scaled_consumers.contains(consumer) {
            p.push(format!(
                "no ScaledObject scales the workers of consumer {consumer}"
            ));
        }
    }
    p.extend(nats_problems);
}

/// The kiln workers a ScaledObject scales.
struct Workers {
    /// Their container's environment.
    env: BTreeMap<String, String>,
    /// Their `--device`.
    device: String,
    /// The consumer they pull through.
    serves: &'static str,
}

/// The workers `so` scales: its target is an existing Deployment that runs a kiln worker on
/// a known device. `None` (with the problem said) when not.
fn scaled_workers(
    what: &str,
    so: &ScaledObject,
    o: &Objects,
    workloads: &[Workload<'_>],
    p: &mut Vec<String>,
) -> Option<Workers> {
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
        return None;
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
        return None;
    };
    let env = container_env(worker, o, &target.namespace);
    let device = env
        .get("KILN_DEVICE")
        .cloned()
        .unwrap_or_else(|| "auto".into());
    let serves = if device.starts_with("cuda") {
        DeviceClass::Gpu.consumer()
    } else if device == "cpu" {
        DeviceClass::Cpu.consumer()
    } else {
        p.push(format!(
            "{what}: worker {} runs --device {device}; give it cpu or cuda so that its \
             consumer is known",
            target.name
        ));
        return None;
    };
    Some(Workers {
        env,
        device,
        serves,
    })
}

fn check_replica_bounds(what: &str, so: &ScaledObject, p: &mut Vec<String>) {
    let (min, max) = (
        so.spec.min_replica_count.unwrap_or(0),
        so.spec.max_replica_count,
    );
    if max.is_none_or(|max| max < min.max(1)) {
        p.push(format!(
            "{what}: maxReplicaCount must be at least max(minReplicaCount, 1)"
        ));
    }
}

/// A nats-jetstream trigger on the jobs stream, through the workers' consumer, in the
/// account of kiln's users; the consumer it names, `None` for a trigger of another type.
fn check_trigger<'t>(
    what: &str,
    t: &'t Trigger,
    workers: &Workers,
    n: Option<&Nats<'_>>,
    p: &mut Vec<String>,
) -> Option<&'t str> {
    if t.kind != "nats-jetstream" {
        p.push(format!(
            "{what}: trigger type {} is not nats-jetstream",
            t.kind
        ));
        return None;
    }
    for key in t.metadata.keys() {
        if !NATS_JETSTREAM_FIELDS.contains(&key.as_str()) {
            p.push(format!(
                "{what}: {key} is not a nats-jetstream scaler field"
            ));
        }
    }
    if field(t, "stream") != STREAM_JOBS {
        p.push(format!("{what}: stream must be {STREAM_JOBS}"));
    }
    let consumer = field(t, "consumer");
    let (device, serves) = (&workers.device, workers.serves);
    if consumer != serves {
        p.push(format!(
            "{what}: consumer {consumer:?}, but its workers (--device {device}) pull \
             through {serves:?}, which `kiln init` creates"
        ));
    }
    let account = match n {
        Some(n) if n.auth_from_secret => AUTH_ACCOUNT,
        _ => "$G",
    };
    if field(t, "account") != account {
        p.push(format!(
            "{what}: account must be {account}, the account kiln's users are in \
             ($G without users, {AUTH_ACCOUNT} with the nats-auth component)"
        ));
    }
    check_lag_threshold(what, t, workers, p);
    if let Some(n) = n {
        check_monitoring_endpoint(what, t, n, p);
    }
    Some(consumer)
}

/// A trigger's metadata field, empty when absent.
fn field<'t>(t: &'t Trigger, key: &str) -> &'t str {
    t.metadata.get(key).map(String::as_str).unwrap_or("")
}

/// The lag that scales up is at least what one busy worker holds.
fn check_lag_threshold(what: &str, t: &Trigger, workers: &Workers, p: &mut Vec<String>) {
    match field(t, "lagThreshold").parse::<u64>() {
        Ok(lag) => {
            let in_flight = workers
                .env
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
}

fn check_monitoring_endpoint(what: &str, t: &Trigger, n: &Nats<'_>, p: &mut Vec<String>) {
    let want = format!(
        "{}.{}.svc.cluster.local:{}",
        n.service,
        n.namespace,
        n.monitor_port.unwrap_or(8222)
    );
    if field(t, "natsServerMonitoringEndpoint") != want {
        p.push(format!(
            "{what}: natsServerMonitoringEndpoint must be {want}: the StatefulSet's \
             governing headless Service, so that <server name>.<endpoint> reaches \
             each node (found {:?})",
            field(t, "natsServerMonitoringEndpoint")
        ));
    }
}
