//! What [`publish_all`](super::publish_all) keeps of each job it sent: its PubAck, stored,
//! a duplicate or refused, and the jobs no PubAck came for, sent again.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use super::PUBLISH_WINDOW;
use crate::error::{Context as _, Error, Result};

/// Pauses before each new send of the jobs whose PubAck did not come (a server restarting, a
/// cluster electing a leader), about 15 s in all; under the same message id, the server
/// stores each job once. (A submission cut off by a server crash said that jobs the server
/// had stored were refused: they ran, and the same submission again was refused.)
const RESEND_PAUSES: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// A job published, its PubAck not yet in.
pub(super) struct Sent {
    /// Its place in the submission.
    pub(super) order: usize,
    pub(super) id: String,
    pub(super) subject: String,
    pub(super) digest: Option<String>,
    /// What was sent, to send again when no PubAck comes.
    pub(super) headers: HeaderMap,
    pub(super) body: bytes::Bytes,
    /// Sent again, no PubAck having come: a duplicate is then most likely the earlier send.
    pub(super) again: bool,
}

/// Whether a publish failed for want of an answer (the job may be stored), not refused.
pub(crate) fn unanswered(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind as Kind;
    matches!(
        e.kind(),
        Kind::TimedOut | Kind::BrokenPipe | Kind::MaxAckPending
    )
}

/// What [`publish_all`] does with each PubAck.
pub(super) struct Published<'a> {
    pub(super) js: &'a jetstream::Context,
    pub(super) track: bool,
    pub(super) on_stored: &'a mut dyn FnMut(),
    pub(super) states:
        FuturesUnordered<<jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture>,
    pub(super) duplicates: Vec<(usize, String)>,
    /// Jobs the server stored (duplicates included).
    pub(super) stored: usize,
    /// Jobs the server refused, by their place in the submission, with why.
    pub(super) refused: Vec<(usize, String, jetstream::context::PublishError)>,
    /// Jobs no PubAck came for, to send again.
    pub(super) unacked: Vec<(Sent, jetstream::context::PublishError)>,
    /// Of `refused`, those never answered (by their place): they may be stored.
    pub(super) unsure: std::collections::HashSet<usize>,
    /// A job was sent and no answer came (timed out, connection lost): it may be stored.
    pub(super) unanswered: bool,
    /// How many the server refused or did not answer (`refused` loses one to the error).
    pub(super) refusals: usize,
}

impl Published<'_> {
    /// Note the server's answer to one job: stored (and, when tracking, recorded as
    /// queued), a duplicate, or refused.
    pub(super) async fn settle(
        &mut self,
        sent: Sent,
        ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    ) -> Result<()> {
        let ack = match ack {
            Ok(ack) => ack,
            // Sent again, any error leaves it unsure: its first send may be stored (an
            // election answers "no responders" meanwhile).
            Err(e) if unanswered(&e) || sent.again => {
                self.unacked.push((sent, e));
                return Ok(());
            }
            Err(e) => {
                self.refusals += 1;
                self.refused.push((sent.order, sent.id, e));
                return Ok(());
            }
        };
        self.stored += 1;
        (self.on_stored)();
        if ack.duplicate && !sent.again {
            self.duplicates.push((sent.order, sent.id));
            return Ok(());
        }
        if self.track
            && let Ok(subject) = kiln_proto::JobSubject::parse(&sent.subject)
        {
            let mut state = kiln_proto::JobState::queued(subject.kind, subject.class);
            state.digest = sent.digest;
            state.job_seq = Some(ack.sequence);
            let ack = self
                .js
                .publish(
                    kiln_proto::state_subject(&sent.id),
                    serde_json::to_vec(&state).unwrap_or_default().into(),
                )
                .await
                .nats(|| format!("recording job {} as queued", sent.id))?;
            self.states.push(ack.into_future());
            while self.states.len() >= PUBLISH_WINDOW && self.states.next().await.is_some() {}
        }
        Ok(())
    }
}

impl Published<'_> {
    /// Send the jobs no PubAck came for again, after each of [`RESEND_PAUSES`], until each
    /// is answered; those never answered count as refused (they may be stored).
    pub(super) async fn send_again(&mut self) -> Result<()> {
        for pause in RESEND_PAUSES {
            if self.unacked.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            let mut pending = FuturesUnordered::new();
            for (mut sent, _) in std::mem::take(&mut self.unacked) {
                sent.again = true;
                let (subject, headers) = (sent.subject.clone(), sent.headers.clone());
                match self
                    .js
                    .publish_with_headers(subject, headers, sent.body.clone())
                    .await
                {
                    Ok(ack) => pending.push(async move { (ack.await, sent) }),
                    Err(e) => self.unacked.push((sent, e)),
                }
                if pending.len() >= PUBLISH_WINDOW
                    && let Some((ack, sent)) = pending.next().await
                {
                    self.settle(sent, ack).await?;
                }
            }
            while let Some((ack, sent)) = pending.next().await {
                self.settle(sent, ack).await?;
            }
        }
        for (sent, e) in std::mem::take(&mut self.unacked) {
            self.unanswered = true;
            self.unsure.insert(sent.order);
            self.refusals += 1;
            self.refused.push((sent.order, sent.id, e));
        }
        Ok(())
    }

    /// The error for a submission the server refused part of, or did not answer for: which
    /// jobs, and how many of the `total` are in (those run; a script resubmits the others).
    pub(super) fn refusal(&mut self, total: usize) -> Error {
        self.refused.sort_by_key(|(order, ..)| *order);
        let shown = |ids: Vec<&str>| match ids.len() {
            0..=5 => ids.join(", "),
            n => format!("{} … {} ({n} jobs)", ids[..3].join(", "), ids[n - 1]),
        };
        let (silent, refused): (Vec<_>, Vec<_>) = self
            .refused
            .iter()
            .partition(|(order, ..)| self.unsure.contains(order));
        let ids =
            |of: &[&(usize, String, _)]| shown(of.iter().map(|(_, id, _)| id.as_str()).collect());
        let mut what = Vec::new();
        if !refused.is_empty() {
            what.push(format!(
                "the server refused {} (if the KILN_JOBS stream is full, wait for workers to \
                 catch up or raise its limits)",
                ids(&refused)
            ));
        }
        if !silent.is_empty() {
            what.push(format!(
                "no acknowledgement came for {}, sent again four times over about 35 s (the \
                 server unreachable): each may or may not be stored, `kiln status <id>` says \
                 which",
                ids(&silent)
            ));
        }
        let unsent = total - self.stored - self.refused.len();
        let (_, _, first) = self.refused.remove(0);
        Error::Nats {
            what: format!(
                "{}; {} of {total} job(s) were stored and will run{}",
                what.join("; "),
                self.stored,
                match unsent {
                    0 => String::new(),
                    n => format!(", {n} were not sent"),
                }
            ),
            source: Box::new(first),
        }
    }
}
