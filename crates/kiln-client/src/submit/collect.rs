//! Waiting for the results of jobs: a [`ResultCollector`] hears them on a subscription, reads
//! them as they come, and takes each job's stored answer from `KILN_RESULTS`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use kiln_proto::{ResultEvent, subject};

use crate::error::{Context as _, Error, Result};

/// Collects result events for known job ids. Subscribe before publishing, so that none
/// is missed.
pub struct ResultCollector {
    /// The results heard on the subscriptions, read off them at once by a task of their own
    /// (see [`ResultCollector::subscribe`]).
    heard: tokio::sync::mpsc::UnboundedReceiver<HeardOn>,
    /// That task, stopped with the collector.
    reading: tokio::task::AbortHandle,
    /// The kind whose results these are (`None`: any kind, and no lookups by subject).
    kind: Option<String>,
    /// The client's statistics, whose count of connections says when it reconnected: results
    /// published meanwhile reached no subscriber, and are looked up in `KILN_RESULTS`.
    statistics: Arc<async_nats::Statistics>,
    /// The client's connections when the collector subscribed: a reconnection since (while
    /// the jobs were still being published, too) is looked for in `collect`.
    connects: u64,
    /// `KILN_RESULTS`, named once: a lookup per result, no stream-info request per result.
    results: async_nats::jetstream::stream::Stream<()>,
    /// The connection, whose state says how long the last lookup may take.
    client: async_nats::Client,
    /// Ids whose stored answer is an earlier job's ([`ResultCollector::answered_before`]).
    answered_before: HashSet<String>,
    /// When the collector subscribed, before any of its jobs was published: a stored answer
    /// of a job enqueued well before it is an earlier job's ([`EARLIER_BY`]).
    since: time::OffsetDateTime,
    /// The ids are new (see [`ResultCollector::new_ids`]): a result heard is taken as it comes.
    new_ids: bool,
}

/// How much earlier than a collection's start a looked-up answer's `enqueued_at` (the
/// server's clock) must lie to be an earlier job's (this client's clock may be that far off;
/// an earlier job closer than the server's 10-minute duplicate window was dropped as this
/// one's duplicate, and is told at submission).
const EARLIER_BY: time::Duration = time::Duration::minutes(1);

/// Up to this many jobs, a collector subscribes to each job's own result subject, so the
/// server sends it only those results; past it, to every result of the kind (one
/// subscription, the results of other people's jobs passed over here).
const SUBSCRIBE_EACH_UP_TO: usize = 1000;

/// Longest a collector looks results up once its wait is over; with the connection down,
/// which every lookup would wait out, the shorter one (`--wait-timeout 4s` took 9 s).
const LAST_LOOK: Duration = Duration::from_secs(5);

/// How long a result heard of and not found stored is looked up again before it is taken
/// as heard (see `collect`).
const UNSTORED_PATIENCE: Duration = Duration::from_secs(5);

/// What a collection waits for, has, and tells as each result comes.
type Answered<'a, F> = (
    &'a mut HashSet<String>,
    &'a mut HashMap<String, ResultEvent>,
    &'a mut F,
);

/// A result heard of on the subscription (on `subject`), and when.
struct Heard {
    subject: String,
    event: ResultEvent,
    at: tokio::time::Instant,
}
const LAST_LOOK_DISCONNECTED: Duration = Duration::from_secs(1);

/// Results heard that a collector looks up in `KILN_RESULTS` at once (each is one request to
/// the server): one at a time, a burst of results was read at the pace of those round trips.
const LOOKUPS_AT_ONCE: usize = 64;

/// A result heard, looked up: its subject, its `enqueued_at` as heard, and what was found.
type Looked = (
    String,
    time::OffsetDateTime,
    Result<ResultEvent, ResultEvent>,
);

impl Drop for ResultCollector {
    fn drop(&mut self) {
        self.reading.abort();
    }
}

/// A result as heard: its subject and its body (its headers, a map each, left behind).
type HeardOn = (async_nats::Subject, bytes::Bytes);

/// Read `subscription` as fast as it delivers into `heard`, keeping only the results of
/// `wanted` (every one when `None`). async-nats holds 65,536 messages a subscription
/// unread and drops what comes after: `kiln submit -n 300000 --wait` read none while it
/// published, and then one per lookup, and said 223,224 results that were stored never came.
async fn read_results(
    mut subscription: futures::stream::SelectAll<async_nats::Subscriber>,
    wanted: Option<HashSet<String>>,
    heard: tokio::sync::mpsc::UnboundedSender<HeardOn>,
) {
    while let Some(message) = subscription.next().await {
        // results.<kind>.<id>, or results.<kind>.<id>.replay-<n>
        let id = message.subject.split('.').nth(2).unwrap_or_default();
        if wanted.as_ref().is_some_and(|wanted| !wanted.contains(id)) {
            continue;
        }
        if heard.send((message.subject, message.payload)).is_err() {
            return;
        }
    }
}

/// The result `results` holds on `subject`: a subscriber sees every result published, also
/// one the stream refused because the job was answered before (a redelivery, an id used
/// again), and the answer is the stored one. `Err` with the event as it came when nothing is
/// stored there (yet: subscribers may hear of a result just before the stream has stored
/// it; or the publish was refused, and the worker tries again; or it was stored and dropped
/// for room already); the event as it came when the stream cannot be read.
///
/// On `results.unknown.<id>` the stored answer may be another kind's job's under the same id
/// (each names its own kind): only the one naming the kind heard is taken.
async fn stored(
    results: &async_nats::jetstream::stream::Stream<()>,
    subject: &str,
    came: ResultEvent,
) -> Result<ResultEvent, ResultEvent> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match results.get_last_raw_message_by_subject(subject).await {
        Ok(message) => match serde_json::from_slice::<ResultEvent>(&message.payload) {
            Ok(stored)
                if stored.id == came.id
                    && (stored.kind != UNKNOWN_KIND || stored.error == came.error) =>
            {
                Ok(stored)
            }
            _ => Ok(came),
        },
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Err(came),
        Err(_) => Ok(came),
    }
}

/// The kind a worker answers a job under when its build does not run the job's kind, on
/// `results.unknown.<id>`, with an error naming the kind asked for (a `kiln` newer than its
/// workers; docs/CONTRACT.md).
const UNKNOWN_KIND: &str = "unknown";

/// How a worker's error for a kind its build does not run begins (the kind follows, quoted).
const UNKNOWN_JOB_KIND: &str = "unknown job kind ";

/// Whether `event`, heard or stored under a job id, answers that id's job of `kind`: a
/// result of that kind (of any, for `None`), or one of kind `unknown` whose error names it,
/// or (another answer as `unknown`, such as a job given up before its kind was read) of a
/// job enqueued since `since` (give or take [`EARLIER_BY`]), as the Python client takes it.
fn answers(kind: Option<&str>, event: &ResultEvent, since: time::OffsetDateTime) -> bool {
    let Some(kind) = kind else {
        return true;
    };
    if event.kind == kind {
        return true;
    }
    if event.kind != UNKNOWN_KIND {
        return false;
    }
    let message = event
        .error
        .as_ref()
        .map_or("", |error| error.message.as_str());
    match message.starts_with(UNKNOWN_JOB_KIND) {
        true => message.contains(&format!("{kind:?}")),
        false => event.enqueued_at >= since - EARLIER_BY,
    }
}

/// The kinds whose result subjects answer a job of `kind`: its own, and `unknown`.
fn answering_kinds(kind: &str) -> Vec<&str> {
    match kind {
        UNKNOWN_KIND => vec![kind],
        _ => vec![kind, UNKNOWN_KIND],
    }
}

/// A result heard on `subject`, looked up in `results` ([`stored`]), with its `enqueued_at`
/// as heard.
async fn look_up_heard(
    results: async_nats::jetstream::stream::Stream<()>,
    subject: String,
    event: ResultEvent,
) -> Looked {
    let enqueued_at = event.enqueued_at;
    let looked = stored(&results, &subject, event).await;
    (subject, enqueued_at, looked)
}

/// Take `event` as its job's answer, if its id is still waited for: told to `on_result`, kept
/// in `results`.
fn take((ids, results, on_result): Answered<'_, impl FnMut(&ResultEvent)>, event: ResultEvent) {
    if ids.remove(&event.id) {
        on_result(&event);
        results.insert(event.id.clone(), event);
    }
}

impl ResultCollector {
    /// Subscribe to the results of jobs `ids` of `kind` (every result when `kind` is `None`),
    /// and to their answers as `unknown` (workers that do not run `kind`).
    pub async fn subscribe(
        client: &async_nats::Client,
        kind: Option<&str>,
        ids: &[String],
    ) -> Result<Self> {
        let subjects: Vec<String> = match kind {
            Some(kind) if ids.len() <= SUBSCRIBE_EACH_UP_TO => answering_kinds(kind)
                .into_iter()
                .flat_map(|kind| ids.iter().map(move |id| subject::result(kind, id)))
                .collect(),
            Some(kind) => answering_kinds(kind)
                .into_iter()
                .map(subject::results_of_kind)
                .collect(),
            None => vec!["results.>".to_owned()],
        };
        let mut subscribers = Vec::with_capacity(subjects.len());
        for subject in subjects {
            subscribers.push(
                client
                    .subscribe(subject.clone())
                    .await
                    .nats(|| format!("subscribing to {subject}"))?,
            );
        }
        // The subscriptions are in place once the server has seen them.
        client
            .flush()
            .await
            .nats(|| "subscribing to results".into())?;
        let results = async_nats::jetstream::new(client.clone())
            .get_stream_no_info(kiln_proto::streams::STREAM_RESULTS)
            .await
            .map_err(|e| Error::Invalid(format!("naming the results stream: {e}")))?;
        let (sender, heard) = tokio::sync::mpsc::unbounded_channel();
        let wanted = (!ids.is_empty()).then(|| ids.iter().cloned().collect());
        let subscription = futures::stream::select_all(subscribers);
        let reading = tokio::spawn(read_results(subscription, wanted, sender)).abort_handle();
        Ok(Self {
            heard,
            reading,
            kind: kind.map(str::to_owned),
            statistics: client.statistics(),
            connects: client.statistics().connects.load(Ordering::Relaxed),
            results,
            client: client.clone(),
            answered_before: HashSet::new(),
            since: time::OffsetDateTime::now_utc(),
            new_ids: false,
        })
    }

    /// Say that the ids were made for these jobs and never used before (not given by a
    /// person, who may give one again): no earlier job can have answered one, so a result
    /// heard is the job's own answer, taken as it comes rather than looked up in
    /// `KILN_RESULTS` (a request per result, which held `kiln submit -n 200000 --wait` to
    /// about half its workers' pace and kept the server busy answering them).
    pub fn new_ids(mut self) -> Self {
        self.new_ids = true;
        self
    }

    /// Look the results heard of and not found stored up again (a few at a time): those found
    /// stored, and those heard [`UNSTORED_PATIENCE`] ago or more, are done. Looked up one by
    /// one as they came, each waited for about a second in turn, and a burst whose results
    /// were dropped for room held `--wait` for an hour.
    async fn settle_unstored(
        &mut self,
        unstored: &mut HashMap<String, Heard>,
        now: tokio::time::Instant,
        (ids, results, on_result): Answered<'_, impl FnMut(&ResultEvent)>,
    ) {
        let this = &*self;
        let looked: Vec<(String, Result<ResultEvent, ResultEvent>)> = futures::stream::iter(
            unstored
                .values()
                .map(|heard| (heard.subject.clone(), heard.event.clone())),
        )
        .map(|(subject, came)| async move {
            (came.id.clone(), stored(&this.results, &subject, came).await)
        })
        .buffer_unordered(32)
        .collect()
        .await;
        let mut done = Vec::new();
        for (id, looked) in looked {
            let Some(heard) = unstored.get(&id) else {
                continue;
            };
            match looked {
                Ok(stored) => {
                    if stored.enqueued_at != heard.event.enqueued_at {
                        self.answered_before.insert(id.clone());
                    }
                    done.push(stored);
                }
                Err(came) if now >= heard.at + UNSTORED_PATIENCE => done.push(came),
                Err(_) => continue,
            }
            unstored.remove(&id);
        }
        for event in done {
            take((&mut *ids, &mut *results, &mut *on_result), event);
        }
    }

    /// The ids collected whose stored answer is not this job's but an earlier job's under the
    /// same id (submitted before the server's duplicate window, or without a `Nats-Msg-Id`,
    /// so the server did not drop this one as a duplicate): this job ran, and its result was
    /// refused, as a job id keeps its first answer. Told by the job's submit time
    /// (`enqueued_at`), which every run of one submission shares (a redelivery's result is
    /// refused too, but it is the same job's).
    pub fn answered_before(&self) -> &HashSet<String> {
        &self.answered_before
    }

    /// Wait until every id in `ids` has a result, or `timeout` passes; returns what came (for
    /// an id answered before, the stored answer: see [`ResultCollector::answered_before`]).
    /// `on_result` sees each result as it comes. Results stored while the client was
    /// reconnecting reach no subscriber: after a reconnection, and before giving up, the ids
    /// still waited for are looked up in `KILN_RESULTS` (a server restart lost `--wait` the
    /// results stored as the workers reconnected, and it said they never came).
    pub async fn collect(
        &mut self,
        mut ids: HashSet<String>,
        timeout: Duration,
        mut on_result: impl FnMut(&ResultEvent),
    ) -> HashMap<String, ResultEvent> {
        let mut results = HashMap::new();
        // (A timeout past what an Instant can hold waits for ever: it panicked.)
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        let mut seen_connects = self.connects;
        // Once more a while after a reconnection: a worker may store its result after the
        // first look, before this client's subscriptions are back.
        let mut look_again = None;
        let mut look = tokio::time::interval(Duration::from_millis(500));
        // Results heard of and not found stored: a publish the stream refused (the worker
        // tries again, and is heard again), or one stored and dropped for room before it was
        // looked up (a small `--results-max-bytes` filled faster than it is read), which
        // never comes again: taken as heard after UNSTORED_PATIENCE (waited for for ever).
        let mut unstored: HashMap<String, Heard> = HashMap::new();
        // Results heard, being looked up ([`LOOKUPS_AT_ONCE`] at most).
        let mut looking = FuturesUnordered::new();
        while !ids.is_empty() {
            // Results may come faster than they are taken: the wait ends on time all the same
            // (`--wait-timeout 3s` of 200,000 jobs returned after 21 s).
            let next = match tokio::time::Instant::now() >= deadline {
                true => None,
                false => tokio::select! {
                    Some(looked) = looking.next() => {
                        let answered = (&mut ids, &mut results, &mut on_result);
                        self.took(looked, &mut unstored, answered);
                        continue;
                    }
                    next = tokio::time::timeout_at(deadline, self.heard.recv()),
                        if looking.len() < LOOKUPS_AT_ONCE => next.ok().flatten(),
                    now = look.tick() => {
                        let answered = (&mut ids, &mut results, &mut on_result);
                        self.settle_unstored(&mut unstored, now, answered).await;
                        let connects = self.statistics.connects.load(Ordering::Relaxed);
                        let again = look_again.is_some_and(|at| now >= at);
                        if connects != seen_connects || again {
                            look_again = (connects != seen_connects)
                                .then(|| now + Duration::from_secs(3));
                            seen_connects = connects;
                            let looking = self.look_up(&mut ids, &mut results, &mut on_result);
                            let _ = tokio::time::timeout_at(deadline, looking).await;
                        }
                        continue;
                    }
                },
            };
            let answered = (&mut ids, &mut results, &mut on_result);
            let Some((subject, payload)) = next else {
                self.wind_up(&mut looking, &mut unstored, answered).await;
                break;
            };
            let Some(event) = self.answer_heard(&payload, answered) else {
                continue;
            };
            looking.push(look_up_heard(
                self.results.clone(),
                subject.to_string(),
                event,
            ));
        }
        results
    }

    /// A result heard as `payload`: `None` when it is none of the jobs' answers, or when it was
    /// taken as it came ([`ResultCollector::new_ids`]); else the event, to look up.
    fn answer_heard(
        &mut self,
        payload: &[u8],
        (ids, results, on_result): Answered<'_, impl FnMut(&ResultEvent)>,
    ) -> Option<ResultEvent> {
        let event = serde_json::from_slice::<ResultEvent>(payload).ok()?;
        if !ids.contains(&event.id) || !answers(self.kind.as_deref(), &event, self.since) {
            return None;
        }
        // A job delivered again (its first run's ack lost, or run twice at once) may be
        // heard from the run whose result the stream refused: looked up, as are ids a
        // person gave.
        if !self.new_ids || event.attempt > 1 {
            return Some(event);
        }
        take((ids, results, on_result), event);
        None
    }

    /// The wait is over (its time, or the subscriptions ended): within a few seconds
    /// ([`LAST_LOOK`]; a server that cannot be reached would hold every lookup for its request
    /// timeout), finish the lookups under way, look up the results heard and not taken yet
    /// (those buffered now: more keep coming), then the answers still waited for. What was
    /// heard and not looked up in time is taken as it came.
    async fn wind_up(
        &mut self,
        looking: &mut FuturesUnordered<impl Future<Output = Looked>>,
        unstored: &mut HashMap<String, Heard>,
        (ids, results, on_result): Answered<'_, impl FnMut(&ResultEvent)>,
    ) {
        let mut heard = Vec::new();
        for _ in 0..self.heard.len() {
            let Ok((subject, payload)) = self.heard.try_recv() else {
                break;
            };
            let answered = (&mut *ids, &mut *results, &mut *on_result);
            if let Some(event) = self.answer_heard(&payload, answered) {
                heard.push((subject.to_string(), event));
            }
        }
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        let within = if connected {
            LAST_LOOK
        } else {
            LAST_LOOK_DISCONNECTED
        };
        // Ids kiln made, heard on a connection that never dropped since the subscription: every
        // answer published since was heard, and no lookup finds more (100,000 of them held a
        // `--wait-timeout 2s` with no result coming to 9 s).
        let reconnected = self.statistics.connects.load(Ordering::Relaxed) != self.connects;
        let last_look = !(self.new_ids && connected && !reconnected);
        let stream = self.results.clone();
        let looking_up = async {
            let heard_looked = futures::stream::iter(heard.iter().cloned())
                .map(|(subject, event)| look_up_heard(stream.clone(), subject, event))
                .buffer_unordered(LOOKUPS_AT_ONCE);
            let mut all = futures::stream::select(&mut *looking, heard_looked);
            while let Some(looked) = all.next().await {
                self.took(
                    looked,
                    unstored,
                    (&mut *ids, &mut *results, &mut *on_result),
                );
            }
            if last_look {
                self.look_up(&mut *ids, &mut *results, &mut *on_result)
                    .await;
            }
        };
        let _ = tokio::time::timeout(within, looking_up).await;
        let came = heard
            .into_iter()
            .map(|(_, event)| event)
            .chain(unstored.drain().map(|(_, heard)| heard.event));
        for event in came {
            take((&mut *ids, &mut *results, &mut *on_result), event);
        }
    }

    /// A result heard, as it was looked up: taken (the stored answer), or, not stored, kept
    /// to look up again (see `collect`).
    fn took(
        &mut self,
        (subject, enqueued_at, looked): Looked,
        unstored: &mut HashMap<String, Heard>,
        (ids, results, on_result): Answered<'_, impl FnMut(&ResultEvent)>,
    ) {
        match looked {
            // (Heard twice, a redelivery's refused result: the first lookup took it.)
            Ok(event) if !ids.contains(&event.id) => {}
            Ok(event) => {
                if event.enqueued_at != enqueued_at {
                    self.answered_before.insert(event.id.clone());
                }
                take((ids, results, on_result), event);
            }
            Err(came) if !ids.contains(&came.id) => {}
            Err(came) => {
                let heard = Heard {
                    subject,
                    event: came,
                    at: tokio::time::Instant::now(),
                };
                unstored.insert(heard.event.id.clone(), heard);
            }
        }
    }

    /// Look the answers of `ids` up in `KILN_RESULTS` (a few at a time), moving each found to
    /// `results` as it is found. A job's answer as `unknown` is looked up where its own
    /// kind's subject holds nothing, and taken only when its job was enqueued since this
    /// collection began (an older one is an earlier job's, and never stood in the way of
    /// this job's own answer, which is stored on the other subject).
    async fn look_up(
        &mut self,
        ids: &mut HashSet<String>,
        results: &mut HashMap<String, ResultEvent>,
        on_result: &mut impl FnMut(&ResultEvent),
    ) {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let Some(kind) = self.kind.clone() else {
            return;
        };
        let (stream, kind, since) = (self.results.clone(), &kind, self.since);
        let wanted: Vec<String> = ids.iter().cloned().collect();
        let found = futures::stream::iter(wanted)
            .map(|id| {
                let stream = &stream;
                async move {
                    for each in answering_kinds(kind) {
                        let subject = subject::result(each, &id);
                        let message = match stream.get_last_raw_message_by_subject(&subject).await {
                            Ok(message) => message,
                            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                                continue;
                            }
                            Err(_) => return None,
                        };
                        let event = serde_json::from_slice::<ResultEvent>(&message.payload).ok()?;
                        let recent = each == kind || event.enqueued_at >= since - EARLIER_BY;
                        return (event.id == id && recent && answers(Some(kind), &event, since))
                            .then_some(event);
                    }
                    None
                }
            })
            .buffer_unordered(32)
            .filter_map(|event| async move { event });
        let mut found = std::pin::pin!(found);
        // An answer found so, of a job enqueued well before this collection began, is an
        // earlier job's under the same id: this one's result was refused unheard (a
        // reconnection), or never published (a redelivery that found the answer stored). It
        // was printed and written to --output as this job's.
        while let Some(event) = found.next().await {
            if event.enqueued_at < since - EARLIER_BY {
                self.answered_before.insert(event.id.clone());
            }
            take((&mut *ids, &mut *results, &mut *on_result), event);
        }
    }
}
