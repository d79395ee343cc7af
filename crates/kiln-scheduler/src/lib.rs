#![warn(missing_docs, unreachable_pub)]
//! kiln's scheduler: routes jobs submitted to `jobs.auto.<kind>` to the device class that
//! will finish them first, by a cost model learned from result events, each class's backlog
//! and its live workers.
//!
//! ```
//! use kiln_proto::DeviceClass;
//! use kiln_scheduler::{ClassState, CostModel};
//! let model = CostModel::default();
//! let idle = ClassState { live_workers: 1, capacity: 2, ..ClassState::default() };
//! let none = ClassState::default();
//! assert_eq!(model.decide("matmul", 1e9, &none, &idle).chosen, DeviceClass::Cpu);
//! ```

mod model;
mod service;

pub use model::*;
pub use service::{Error, SchedulerConfig, SchedulerStats, run};
