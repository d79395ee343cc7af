//! Acks of answered jobs, sent by one task a moment after their results are stored.
//!
//! A job is acked only once its result is stored (its PubAck read), as before; what changes
//! is when the ack leaves. Sent at once, it reached the server just as the submitter, which
//! had the result at the same moment, published its next job, and the server took the two
//! together: in `kiln-bench latency` that job's publish → stored stage was 20-49 µs slower
//! than the floor's, and equal to it with the ack held back by a millisecond. Held back, the
//! acks of a busy worker also leave together, in one write. A worker that stops sends what
//! it holds before it returns; one that dies in that millisecond leaves jobs whose results
//! are stored to be redelivered after the ack wait, and answered as duplicates, which any
//! lost ack already could.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How long an ack waits for others to leave with it.
const DEFER: Duration = Duration::from_millis(1);

/// One job's ack: where it goes, and the job's id for a failure's log line.
struct Ack {
    reply: Subject,
    id: String,
}

/// The queue of acks and the task that sends them.
pub(crate) struct Acks {
    client: async_nats::Client,
    queue: mpsc::UnboundedSender<Ack>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Acks {
    /// Start the task that sends acks on `client`.
    pub(crate) fn start(client: async_nats::Client) -> Self {
        let (queue, acks) = mpsc::unbounded_channel();
        let (stop, stopping) = watch::channel(false);
        let task = tokio::spawn(send_acks(client.clone(), acks, stopping));
        Acks {
            client,
            queue,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Ack the job of `message` (whose result is stored) within [`DEFER`]; at once when the
    /// sending task has stopped.
    pub(crate) async fn ack(&self, message: &async_nats::jetstream::Message, id: &str) {
        let Some(reply) = message.reply.clone() else {
            tracing::warn!(%id, "job without a reply subject: nothing to ack");
            return;
        };
        self.queue_or_send(Ack {
            reply,
            id: id.to_owned(),
        })
        .await;
    }

    async fn queue_or_send(&self, ack: Ack) {
        if let Err(mpsc::error::SendError(ack)) = self.queue.send(ack) {
            send(&self.client, ack).await;
        }
    }

    /// Send every ack queued and stop the task, waiting for it at most `within`.
    pub(crate) async fn close(&self, within: Duration) {
        self.stop.send_replace(true);
        let task = self.task.lock().map(|mut t| t.take()).unwrap_or_default();
        if let Some(task) = task
            && tokio::time::timeout(within, task).await.is_err()
        {
            tracing::warn!("acks not all sent within {within:?}; their jobs may be redelivered");
        }
    }
}

/// Send each ack [`DEFER`] after the first of its group arrived, the group together; at a
/// stop, what is queued, then flush.
async fn send_acks(
    client: async_nats::Client,
    mut acks: mpsc::UnboundedReceiver<Ack>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            first = acks.recv() => first,
            _ = stopping.wait_for(|stop| *stop) => None,
        };
        let Some(first) = first else { break };
        tokio::select! {
            _ = tokio::time::sleep(DEFER) => {}
            _ = stopping.wait_for(|stop| *stop) => {}
        }
        send(&client, first).await;
        while let Ok(ack) = acks.try_recv() {
            send(&client, ack).await;
        }
    }
    // `recv`, not `try_recv`: after `close` it returns `None` only once no send is still on
    // its way in, which `try_recv` would report as empty, losing that ack.
    acks.close();
    while let Some(ack) = acks.recv().await {
        send(&client, ack).await;
    }
    let _ = client.flush().await;
}

async fn send(client: &async_nats::Client, ack: Ack) {
    if let Err(e) = client.publish(ack.reply, Bytes::new()).await {
        tracing::warn!(id = %ack.id, error = %e, "ack failed; the job may be redelivered (its result is deduplicated)");
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use kiln_testkit::NatsServer;

    use super::*;

    /// Acks queued together leave together after [`DEFER`]; `close` sends what is queued
    /// and returns once the server has it; an ack after `close` still leaves, at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acks_leave_together_and_close_sends_what_is_queued() {
        let server = NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let listener = async_nats::connect(server.url()).await.expect("connect");
        let mut heard = listener.subscribe("acks.>").await.expect("subscribe");
        listener.flush().await.expect("flush");
        let acks = Acks::start(client.clone());
        let ack = |n: &str| Ack {
            reply: format!("acks.{n}").into(),
            id: format!("job-{n}"),
        };
        for n in 0..3 {
            acks.queue_or_send(ack(&n.to_string())).await;
        }
        let mut subjects = Vec::new();
        for _ in 0..3 {
            let ack = tokio::time::timeout(Duration::from_secs(5), heard.next())
                .await
                .expect("acks leave within the deferral")
                .expect("a message");
            assert!(ack.payload.is_empty(), "an ack is an empty message");
            subjects.push(ack.subject.to_string());
        }
        assert_eq!(subjects, ["acks.0", "acks.1", "acks.2"]);

        // Queued and closed at once: close returns after they are sent, so a message sent
        // on the same connection after it comes after them.
        for n in 3..6 {
            acks.queue_or_send(ack(&n.to_string())).await;
        }
        acks.close(Duration::from_secs(5)).await;
        assert!(acks.queue.is_closed(), "the task has stopped taking acks");
        client
            .publish("acks.marker", Bytes::new())
            .await
            .expect("publish");
        for n in ["3", "4", "5", "marker"] {
            let ack = tokio::time::timeout(Duration::from_secs(5), heard.next())
                .await
                .expect("every queued ack was sent before close returned")
                .expect("a message");
            assert_eq!(ack.subject.as_str(), format!("acks.{n}"));
        }
        // After close: sent directly.
        assert!(acks.queue.is_closed(), "no task takes acks any more");
        acks.queue_or_send(ack("late")).await;
        let late = tokio::time::timeout(Duration::from_secs(5), heard.next())
            .await
            .expect("a late ack still leaves")
            .expect("a message");
        assert_eq!(late.subject.as_str(), "acks.late");
    }
}
