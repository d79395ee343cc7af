//! The worker's entry in `KILN_WORKERS`, refreshed every heartbeat and removed on a clean stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream;
use kiln_kernels::ComputeDevice;
use kiln_proto::{BUCKET_WORKERS, WorkerInfo};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::shared::Shared;

/// A running heartbeat; [`Heartbeat::stop`] removes the entry.
pub(crate) struct Heartbeat {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// A key-value key for a worker name (keys allow letters, digits and `-_=.`).
fn key(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_=.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Refuse to start under `name` while a live worker uses it: its entry in `KILN_WORKERS` is
/// refreshed every `heartbeat`. An entry that is not (left by a worker that stopped without
/// removing it, until its TTL) is no obstacle.
pub(crate) async fn check_name_free(
    js: &jetstream::Context,
    name: &str,
    heartbeat: std::time::Duration,
) -> crate::Result<()> {
    let Ok(store) = js.get_key_value(BUCKET_WORKERS).await else {
        return Ok(());
    };
    let key = key(name);
    let read = async || -> Option<WorkerInfo> {
        let entry = store.get(&key).await.ok()??;
        serde_json::from_slice(&entry).ok()
    };
    let Some(first) = read().await else {
        return Ok(());
    };
    // A worker draining under this name (the one this replaces, in a rolling restart that
    // does not wait for it to exit) leaves its entry soon: no obstacle.
    if first.state == "draining" {
        return Ok(());
    }
    tokio::time::sleep(heartbeat + heartbeat / 2).await;
    match read().await {
        Some(again) if again.updated_at != first.updated_at && again.state != "draining" => {
            Err(crate::Error::NameTaken {
                name: again.name,
                device: again.device,
                started_at: again
                    .started_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            })
        }
        _ => Ok(()),
    }
}

impl Heartbeat {
    pub(crate) async fn start(
        js: &jetstream::Context,
        shared: Arc<Shared>,
        serving: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let mut store = js
            .get_key_value(BUCKET_WORKERS)
            .await
            .map_err(|e| format!("opening the {BUCKET_WORKERS} bucket: {e}"))?;
        let (stop, mut stopped) = oneshot::channel();
        let started_at = OffsetDateTime::now_utc();
        let key = key(&shared.config.name);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(shared.config.topology.heartbeat);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticker.tick() => {
                        let info = info(&shared, &serving, started_at);
                        let Ok(body) = serde_json::to_vec(&info) else { continue };
                        let Err(e) = store.put(&key, body.clone().into()).await else { continue };
                        // The bucket keeps its entries in memory: a restarted server comes
                        // back without it. Make it again, as every role does at start.
                        let text = e.to_string();
                        if !(text.contains("no stream found") || text.contains("stream not found")) {
                            tracing::warn!(error = %e, "heartbeat failed");
                            continue;
                        }
                        // Create only (a worker may not update streams); another worker may have made it first.
                        let made = match shared.js.create_key_value(shared.config.topology.workers_bucket()).await {
                            Ok(store) => Ok(store),
                            Err(e) => shared.js.get_key_value(BUCKET_WORKERS).await.map_err(|_| e),
                        };
                        match made {
                            Ok(again) => {
                                tracing::info!("{BUCKET_WORKERS} was gone (a server restart); made it again");
                                store = again;
                                if let Err(e) = store.put(&key, body.into()).await {
                                    tracing::warn!(error = %e, "heartbeat failed");
                                }
                            }
                            Err(again) => tracing::warn!(error = %e, making_it = %again, "heartbeat failed: {BUCKET_WORKERS} is missing and could not be made"),
                        }
                    }
                }
            }
            // A clean stop leaves at once rather than after the TTL.
            let _ = store.delete(&key).await;
        });
        Ok(Heartbeat {
            stop: Some(stop),
            task,
        })
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn info(shared: &Shared, serving: &AtomicBool, started_at: OffsetDateTime) -> WorkerInfo {
    let config = &shared.config;
    let stats = shared.stats();
    WorkerInfo {
        name: config.name.clone(),
        class: config.class,
        device: config.device.to_string(),
        backend: match config.device {
            ComputeDevice::Cpu => "ndarray",
            ComputeDevice::Cuda(_) => "cuda",
        }
        .into(),
        engines: shared.engines.names(&config.device),
        capacity: config.compute_slots,
        max_in_flight: config.max_in_flight,
        // Jobs held (computing, waiting for a slot, publishing) — not the slots reserved by
        // a pull request still waiting for jobs.
        in_flight: config.metrics.in_flight.get().max(0) as usize,
        succeeded: stats.succeeded,
        failed: stats.failed,
        running: shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .take(1000)
            .cloned()
            .collect(),
        // A draining worker takes no new jobs (the scheduler counts serving workers only) but
        // still holds some, which `kiln status <id>` finds here.
        state: if config.health.is_stopping() {
            "draining"
        } else if serving.load(Ordering::Relaxed) {
            "serving"
        } else {
            "warming_up"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        updated_at: OffsetDateTime::now_utc(),
    }
}
