//! GPU workers ask for GPUs, run the CUDA image, tolerate the GPU taint and select GPU nodes.

use super::objects::{Workload, image_name};

const GPU_RESOURCE: &str = "nvidia.com/gpu";

pub(super) fn check_gpu(workloads: &[Workload<'_>], p: &mut Vec<String>) {
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
