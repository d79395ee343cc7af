//! The auto jobs, in pull requests the scheduler makes itself, one after another (each up to
//! [`PULL_BATCH`] jobs, waiting up to [`PULL_EXPIRES`]), rather than through the client's
//! self-renewing pull stream: that one asks for more as jobs are taken, so a stopping scheduler
//! could never take all that was delivered to it, and what it left waited out the ack wait with
//! a delivery spent. Here a stopping scheduler makes no new request and takes the rest of the
//! last one.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull::Batch};
use futures::StreamExt as _;

/// Most jobs one pull request asks for.
const PULL_BATCH: usize = 256;

/// How long a pull request waits on the consumer: seconds, not the client's 30, whose request,
/// lost with a consumer leader that died, left auto jobs unrouted for 35 s.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// The pull requests for auto jobs, one open at a time.
pub(super) struct Pulls {
    consumer: PullConsumer,
    open: Option<Batch>,
}

impl Pulls {
    pub(super) fn new(consumer: PullConsumer) -> Self {
        Pulls {
            consumer,
            open: None,
        }
    }

    /// Make the next request, for at most `room` jobs, when none is open and there is room;
    /// why it could not be made. (Asked for no more than can be routed at once: jobs left
    /// unread past the request's end are dropped by the client, and wait out the ack wait.)
    pub(super) async fn request(&mut self, room: usize) -> Result<(), String> {
        if self.open.is_none() && room > 0 {
            let batch = self
                .consumer
                .batch()
                .max_messages(room.min(PULL_BATCH))
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            self.open = Some(batch);
        }
        Ok(())
    }

    /// The next job of the open request; `None` once it is done (or none is open). Cancel-safe:
    /// a job is taken only when this returns it.
    pub(super) async fn next(&mut self) -> Option<Result<jetstream::Message, String>> {
        let open = self.open.as_mut()?;
        match open.next().await {
            Some(taken) => Some(taken.map_err(|e| e.to_string())),
            None => {
                self.open = None;
                None
            }
        }
    }

    /// End the open request here: its inbox goes, so that no job is delivered to a
    /// scheduler that stops.
    pub(super) fn close(&mut self) {
        self.open = None;
    }

    /// Whether the consumer is gone (deleted: `kiln init` makes it again), not merely out of
    /// reach.
    pub(super) async fn consumer_gone(&self) -> bool {
        matches!(
            self.consumer.get_info().await,
            Err(e) if kiln_proto::streams::consumer_gone(&e)
        )
    }
}
