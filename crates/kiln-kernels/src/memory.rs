//! How much memory a device offers jobs, found before any job runs, so that a job too big
//! for it is refused before anything is allocated.

use std::fmt;

use crate::ComputeDevice;

/// Bytes one tensor element takes at most: kiln plans in f32 (bf16/f16 jobs are generated
/// in f32 and cast on the device, so f32 is their peak too).
pub const BYTES_PER_ELEMENT: u64 = 4;

/// Share of the host's memory (or of the container's cgroup limit) that CPU jobs may hold
/// at once: the rest is the worker itself, the allocator's slack and the OS.
const HOST_SHARE: f64 = 0.8;
/// Share of a GPU's memory jobs may hold: CubeCL's memory pools round allocations up and
/// keep freed pages, and the CUDA context takes a few hundred MiB.
const GPU_SHARE: f64 = 0.85;

/// The memory jobs on one device may hold together, and where the figure came from (for
/// error messages that name the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes of tensors the jobs may hold together.
    pub bytes: u64,
    /// Where the figure came from, for people: `--max-memory-mb`, `85% of cuda:0's 79.1 GiB`.
    pub source: String,
}

impl MemoryBudget {
    /// A budget set by the operator (`--max-memory-mb`).
    pub fn configured(mib: u64) -> Self {
        Self {
            bytes: mib.saturating_mul(1 << 20),
            source: "--max-memory-mb".into(),
        }
    }

    /// What `device` offers: a share of the host memory (the cgroup limit when the worker
    /// runs in a container with a smaller one), or of the GPU's memory.
    pub fn detect(device: &ComputeDevice) -> Result<Self, String> {
        match device {
            ComputeDevice::Cpu => Ok(host_budget()),
            ComputeDevice::Cuda(index) => {
                if crate::cuda_device_count() <= *index {
                    return Err(format!("no CUDA device {index} on this machine"));
                }
                let context = cudarc::driver::CudaContext::new(*index)
                    .map_err(|e| format!("could not open cuda:{index}: {e}"))?;
                let total = context
                    .total_mem()
                    .map_err(|e| format!("could not read cuda:{index}'s memory size: {e}"))?
                    as u64;
                Ok(Self {
                    bytes: (total as f64 * GPU_SHARE) as u64,
                    source: format!(
                        "{:.0}% of cuda:{index}'s {}",
                        GPU_SHARE * 100.0,
                        Bytes(total)
                    ),
                })
            }
        }
    }

    /// Refuse a job that needs more than the whole budget.
    pub fn check(&self, kind: &str, elements: u64) -> Result<(), kiln_proto::JobError> {
        let needed = elements.saturating_mul(BYTES_PER_ELEMENT);
        if needed > self.bytes {
            // Rounded alike ("1.0 MiB, over … 1.0 MiB"), the two are said in bytes.
            let (need, limit) = match (Bytes(needed).to_string(), Bytes(self.bytes).to_string()) {
                (need, limit) if need == limit => {
                    (format!("{needed} bytes"), format!("{} bytes", self.bytes))
                }
                rounded => rounded,
            };
            return Err(kiln_proto::JobError::too_large(format!(
                "{kind} needs about {need} of tensors, over this worker's memory limit of \
                 {limit} ({}); submit a smaller job or send it to a worker with more memory",
                self.source
            )));
        }
        Ok(())
    }
}

fn host_budget() -> MemoryBudget {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let total = system.total_memory();
    let (limit, what) = match system.cgroup_limits() {
        Some(cgroup) if cgroup.total_memory > 0 && cgroup.total_memory < total => {
            (cgroup.total_memory, "the container's memory limit")
        }
        _ => (total, "host memory"),
    };
    MemoryBudget {
        bytes: (limit as f64 * HOST_SHARE) as u64,
        source: format!("{:.0}% of {what}, {}", HOST_SHARE * 100.0, Bytes(limit)),
    }
}

/// A byte count for people: `1.5 GiB`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            n if n >= 1 << 30 => write!(f, "{:.1} GiB", b / (1u64 << 30) as f64),
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", b / (1u64 << 20) as f64),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", b / 1024.0),
            n => write!(f, "{n} B"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_budget_is_a_share_of_real_memory() {
        let budget = MemoryBudget::detect(&ComputeDevice::Cpu).unwrap();
        assert!(budget.bytes > 64 << 20, "{budget:?}");
        assert!(budget.source.contains("80%"), "{budget:?}");
    }

    #[test]
    fn refuses_a_job_bigger_than_the_budget_and_names_the_limit() {
        let budget = MemoryBudget::configured(64);
        assert!(budget.check("matmul", 16 << 20).is_ok());
        let error = budget.check("matmul", 20 << 20).unwrap_err();
        assert_eq!(error.kind, kiln_proto::ErrorKind::TooLarge);
        assert!(
            error.message.contains("needs about 80.0 MiB of tensors")
                && error.message.contains("memory limit of 64.0 MiB"),
            "{error}"
        );
        assert!(error.message.contains("--max-memory-mb"), "{error}");
        // Four bytes over: both read 64.0 MiB rounded ("64.0 MiB, over … 64.0 MiB"), so the
        // two are said in bytes.
        let error = budget.check("matmul", (16 << 20) + 1).unwrap_err();
        assert!(
            error
                .message
                .contains("needs about 67108868 bytes of tensors, over this worker's memory limit of 67108864 bytes"),
            "{error}"
        );
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }
}
