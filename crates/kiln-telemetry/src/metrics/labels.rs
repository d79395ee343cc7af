//! Label sets.

use prometheus_client::encoding::EncodeLabelSet;

/// `{kind}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The job kind (`matmul`, …; `unknown` for a kind this build does not run).
    pub kind: String,
}

/// `{kind, status}`: status is `succeeded`, `failed` or (worker) `retried`, `handed_back`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindStatusLabels {
    /// The job kind (`matmul`, …; `unknown` for a kind this build does not run).
    pub kind: String,
    /// How the job ended: `succeeded`, `failed`, `retried` or `handed_back`.
    pub status: String,
}

/// `{kind, class}`: class is the device class whose consumer ran the job (`gpu`, `cpu`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindClassLabels {
    /// The job kind (`matmul`, …; `unknown` for a kind this build does not run).
    pub kind: String,
    /// The device class: `gpu` or `cpu`.
    pub class: String,
}

/// `{kind, class, status}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job kind (`matmul`, …; `unknown` for a kind this build does not run).
    pub kind: String,
    /// The device class: `gpu` or `cpu`.
    pub class: String,
    /// How the job ended: `succeeded` or `failed`.
    pub status: String,
}

/// `{class}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// The device class: `gpu`, `cpu` or `auto`.
    pub class: String,
}

/// `{consumer}`: a durable consumer (`workers-gpu`, `workers-cpu`, `scheduler`, `aggregator`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The consumer's durable name.
    pub consumer: String,
}

/// `{kind, size}`: size is the decade of the job's flops (see [`crate::size_bucket`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SizeLabels {
    /// The job kind (`matmul`, …; `unknown` for a kind this build does not run).
    pub kind: String,
    /// The decade of the job's flops, as `1e6` (`0` below 1).
    pub size: String,
}

/// `{kind, class, error}`: error is the failure's machine-readable kind (`invalid_input`,
/// `timeout`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The job kind (`matmul`, …; `unknown` for a kind this build does not run).
    pub kind: String,
    /// The device class: `gpu` or `cpu`.
    pub class: String,
    /// The failure's error kind (`invalid_input`, `timeout`, …).
    pub error: String,
}
