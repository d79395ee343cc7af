//! Label sets.

use prometheus_client::encoding::EncodeLabelSet;

/// `{kind}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// `{kind, status}`: status is `succeeded`, `failed` or (worker) `retried`, `handed_back`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindStatusLabels {
    pub kind: String,
    pub status: String,
}

/// `{kind, class}`: class is the device class whose consumer ran the job (`gpu`, `cpu`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindClassLabels {
    pub kind: String,
    pub class: String,
}

/// `{kind, class, status}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    pub class: String,
    pub status: String,
}

/// `{class}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

/// `{consumer}`: a durable consumer (`workers-gpu`, `workers-cpu`, `scheduler`, `aggregator`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub consumer: String,
}

/// `{kind, size}`: size is the decade of the job's flops (see [`crate::size_bucket`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SizeLabels {
    pub kind: String,
    pub size: String,
}

/// `{kind, class, error}`: error is the failure's machine-readable kind (`invalid_input`,
/// `timeout`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: String,
    pub class: String,
    pub error: String,
}
