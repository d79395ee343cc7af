//! Cancellations: the worker mirrors the `KILN_CANCEL` bucket into memory, so that checking a
//! job (before it starts, and at each checkpoint) costs a set lookup, not a server round trip.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, kv::Operation};
use futures::StreamExt as _;
use kiln_proto::{BUCKET_CANCEL, job_key};

/// The cancelled job keys, kept current by a watcher task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cancellations(Arc<RwLock<HashSet<String>>>);

impl Cancellations {
    /// Start mirroring the bucket (its current keys first, then every change).
    pub(crate) async fn watch(js: &jetstream::Context) -> Result<Self, String> {
        let store = js
            .get_key_value(BUCKET_CANCEL)
            .await
            .map_err(|e| format!("opening the {BUCKET_CANCEL} bucket: {e}"))?;
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| format!("watching {BUCKET_CANCEL}: {e}"))?;
        let cancellations = Cancellations::default();
        let set = cancellations.0.clone();
        tokio::spawn(async move {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let mut set = set.write().unwrap_or_else(|e| e.into_inner());
                match entry.operation {
                    Operation::Put => set.insert(entry.key),
                    Operation::Delete | Operation::Purge => set.remove(&entry.key),
                };
            }
        });
        Ok(cancellations)
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&job_key(id))
    }
}
