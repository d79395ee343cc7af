//! The worker's device-memory gauges, refreshed in the background.

use std::sync::Arc;
use std::time::Duration;

use kiln_kernels::ComputeDevice;

use crate::shared::Shared;

/// How often device memory is read: a CUDA read waits behind the work queued on the device,
/// so it is never done on a scrape.
const EVERY: Duration = Duration::from_secs(2);

/// Stops the sampler when dropped.
pub(crate) struct Sampler(tokio::task::JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keep `kiln_worker_device_memory_*` current: CubeCL's allocator on CUDA, the process's
/// resident memory on the CPU.
pub(crate) fn sample_memory(shared: Arc<Shared>) -> Sampler {
    Sampler(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(EVERY);
        loop {
            ticker.tick().await;
            let device = shared.config.device.clone();
            let read = tokio::task::spawn_blocking(move || match device {
                ComputeDevice::Cpu => {
                    kiln_telemetry::process_resident_memory_bytes().map(|rss| (rss, 0))
                }
                ComputeDevice::Cuda(_) => {
                    kiln_kernels::device_memory(&device).map(|m| (m.in_use, m.reserved))
                }
            })
            .await;
            if let Ok(Some((in_use, reserved))) = read {
                let metrics = &shared.config.metrics;
                metrics.memory_in_use_bytes.set(in_use as i64);
                metrics.memory_reserved_bytes.set(reserved as i64);
            }
        }
    }))
}
