//! How the aggregator acks the results it folded: each one, or, where its consumer acks
//! cumulatively, once per snapshot up to the watermark.
//!
//! A cumulative ack (`AckPolicy::All`) acks every result at or below the one acked, so one ack
//! per snapshot replaces one per result; the server then has one message and one ack-state
//! update to handle per snapshot instead of per job. It is safe only where every result at or
//! below the acked one was folded or is not in the stream: a delivery lost on the way (a
//! consumer leader moving in a cluster) must hold it back, or that result would be acked
//! without ever being counted. So the aggregator acks up to its watermark only
//! ([`crate::fold::Folds::through`]), and tells a lost delivery from a result that is not in
//! the stream by the consumer's delivery sequence: it counts every delivery, so consecutive
//! deliveries that skip stream sequences prove those sequences absent, and a skipped
//! delivery leaves a hole that its redelivery, or a read from the stream, fills.

use std::collections::BTreeMap;

use async_nats::Subject;
use async_nats::jetstream::consumer::AckPolicy;

/// What the aggregator holds to ack, and where the consumer's deliveries stand.
#[derive(Debug)]
pub(crate) struct Acks {
    cumulative: bool,
    /// The consumer sequence of the last delivery, and the highest stream sequence
    /// delivered.
    last_delivery: u64,
    highest: u64,
    /// No delivery was skipped since the one that delivered `highest`: a skipped one may have
    /// held a result above it.
    unbroken: bool,
    /// Folded results not yet acked: reply subjects by stream sequence.
    held: BTreeMap<u64, Subject>,
}

impl Acks {
    /// For a consumer with `policy` whose last delivery so far was `(consumer sequence,
    /// stream sequence)`.
    pub(crate) fn new(policy: AckPolicy, (last_delivery, highest): (u64, u64)) -> Self {
        Acks {
            cumulative: policy == AckPolicy::All,
            last_delivery,
            highest,
            unbroken: true,
            held: BTreeMap::new(),
        }
    }

    /// Whether one ack stands for every result at or below it.
    pub(crate) fn cumulative(&self) -> bool {
        self.cumulative
    }

    /// A delivery: the stream sequences it proves absent (first, last), if any. Deliveries
    /// of new results come in stream order, one consumer sequence each: when no delivery was
    /// skipped from the one of the highest stream sequence delivered to this one, nothing
    /// between the two is in the stream (it would have been delivered first). A skipped
    /// delivery in between (lost on the way, with redeliveries after it that merely follow
    /// one another) may have held one of them.
    pub(crate) fn delivered(&mut self, consumer_seq: u64, stream_seq: u64) -> Option<(u64, u64)> {
        let follows = consumer_seq == self.last_delivery + 1;
        let absent = (follows && self.unbroken && stream_seq > self.highest + 1)
            .then(|| (self.highest + 1, stream_seq - 1));
        // A consumer sequence that goes back (a new consumer leader carrying on from an older
        // state, the consumer made again) starts the count again from there.
        self.last_delivery = consumer_seq;
        if stream_seq > self.highest {
            self.highest = stream_seq;
            self.unbroken = true;
        } else {
            self.unbroken &= follows;
        }
        absent
    }

    /// Hold a folded result's reply subject until its snapshot is stored.
    pub(crate) fn hold(&mut self, stream_seq: u64, reply: Option<Subject>) {
        if let Some(reply) = reply {
            self.held.insert(stream_seq, reply);
        }
    }

    /// The acks to send now that a snapshot counting every folded result is stored: each
    /// held result, or, cumulatively, the highest one at or below `through` (the rest at or
    /// below it are acked with it; those above wait for the watermark).
    pub(crate) fn due(&mut self, through: u64) -> Vec<Subject> {
        if !self.cumulative {
            return std::mem::take(&mut self.held).into_values().collect();
        }
        let above = self.held.split_off(&(through + 1));
        let due = std::mem::replace(&mut self.held, above);
        due.into_values().next_back().into_iter().collect()
    }

    /// Results held unacked.
    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(seq: u64) -> Option<Subject> {
        Some(Subject::from(format!(
            "$JS.ACK.KILN_RESULTS.aggregator.1.{seq}"
        )))
    }

    #[test]
    fn consecutive_deliveries_prove_the_sequences_they_skip_absent() {
        let mut acks = Acks::new(AckPolicy::All, (10, 100));
        assert_eq!(acks.delivered(11, 101), None);
        assert_eq!(acks.delivered(12, 105), Some((102, 104)), "102–104 deleted");
        // A delivery skipped: 106–109 may be that one, not absent.
        assert_eq!(acks.delivered(14, 110), None);
        // A redelivery (of the lost one) between new ones proves nothing below the highest.
        assert_eq!(acks.delivered(15, 107), None);
        assert_eq!(acks.delivered(16, 112), Some((111, 111)));
        // A new consumer leader carrying on from an older state: counted from there.
        assert_eq!(acks.delivered(13, 113), None);
        assert_eq!(acks.delivered(14, 115), Some((114, 114)));
    }

    #[test]
    fn a_skipped_delivery_before_redeliveries_proves_nothing_absent() {
        let mut acks = Acks::new(AckPolicy::All, (12, 103));
        // Delivery 13 (result 104) is lost; 14 is a redelivery of an old result.
        assert_eq!(acks.delivered(14, 50), None);
        // 15 follows 14, but 104 may be the lost delivery: not absent.
        assert_eq!(acks.delivered(15, 105), None);
        // From 105 on, deliveries follow one another again.
        assert_eq!(acks.delivered(16, 60), None);
        assert_eq!(acks.delivered(17, 108), Some((106, 107)));
    }

    #[test]
    fn cumulative_acks_go_up_to_the_watermark_only() {
        let mut acks = Acks::new(AckPolicy::All, (0, 0));
        for seq in [1, 2, 3, 5, 6] {
            acks.hold(seq, reply(seq));
        }
        assert_eq!(
            acks.due(3),
            vec![reply(3).unwrap()],
            "4 is a hole: 5 and 6 wait"
        );
        assert_eq!(acks.held(), 2);
        assert!(acks.due(3).is_empty());
        assert_eq!(acks.due(6), vec![reply(6).unwrap()]);
        assert_eq!(acks.held(), 0);
    }

    #[test]
    fn explicit_acks_ack_every_result() {
        let mut acks = Acks::new(AckPolicy::Explicit, (0, 0));
        for seq in [1, 2, 5] {
            acks.hold(seq, reply(seq));
        }
        assert_eq!(acks.due(1).len(), 3);
        assert_eq!(acks.held(), 0);
    }
}
