#![warn(missing_docs, unreachable_pub)]
//! kiln's aggregator: folds result events into per-(kind, device class) metrics and
//! publishes them as snapshots on `metrics.<kind>.<class>`.
//!
//! It acks a result only after a snapshot that includes it is stored, and restores its
//! state from the latest snapshots at start, so a restart neither loses nor double-counts;
//! a result seen twice (same job id) is counted once.
//!
//! ```
//! use kiln_aggregator::Folds;
//! let mut folds = Folds::default();
//! assert!(folds.snapshots(time::OffsetDateTime::now_utc()).is_empty());
//! ```

mod acks;
mod error;
mod fold;
mod prom;
mod service;
mod snapshots;
mod watermark;

pub use error::{Error, Result};
pub use fold::{ErrorHead, Fold, Folds, ResultHead};
pub use service::{AggregatorConfig, run};
