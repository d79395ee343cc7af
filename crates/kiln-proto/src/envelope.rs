//! A job message's envelope: what its subject and headers say about it, read once when it
//! arrives, every value checked and bounded.
//!
//! Headers are untrusted input. Anyone allowed to submit can write any header, so the
//! `Kiln-*` headers that only kiln's own roles set (`Kiln-Job-Id`, `Kiln-Routing`,
//! `Kiln-Replay`, `Kiln-Handbacks`, `Kiln-Enqueued-At`) are read only from a copy's subject
//! (`jobs.<class>.<kind>.copy`, which submitters may not publish to); on a submitted job they
//! are ignored. Even a copy's values are bounded: a number that is not finite, negative or
//! absurd, an oversized string, a time outside the job's life is dropped, not folded into
//! metrics.

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use time::OffsetDateTime;

use crate::{
    DeviceClass, HEADER_DLQ_BODY, HEADER_DLQ_REASON, HEADER_DLQ_SUBJECT, HEADER_ENQUEUED_AT,
    HEADER_HANDBACKS, HEADER_JOB_ID, HEADER_MSG_ID, HEADER_REPLAY, HEADER_ROUTING, Routing,
    copy_headers_except, enqueued_at_value, resolve_job_id, valid_job_id,
};

/// The headers only kiln writes: never copied from a job as they came, always written again
/// from checked values ([`Envelope::copy_headers`]).
pub const OWN_HEADERS: [&str; 8] = [
    HEADER_JOB_ID,
    HEADER_ROUTING,
    HEADER_REPLAY,
    HEADER_HANDBACKS,
    HEADER_ENQUEUED_AT,
    HEADER_DLQ_REASON,
    HEADER_DLQ_SUBJECT,
    HEADER_DLQ_BODY,
];

/// Most replays from the dead-letter queue a job can have had.
pub const MAX_REPLAYS: u32 = 10_000;
/// Most hand-backs a header may count.
pub const MAX_HANDBACKS: u32 = 10_000;
/// Most bytes of a `Kiln-Routing` header read.
pub(crate) const MAX_ROUTING_BYTES: usize = 4096;
/// Longest routing reason and scheduler name kept, in characters.
const MAX_ROUTING_TEXT: usize = 256;
/// The largest predicted time believed, in milliseconds (a week).
const MAX_PREDICTED_MS: f64 = 7.0 * 24.0 * 3600.0 * 1000.0;
/// How long before its copy's publish a job may have been submitted (a job that waited
/// longer than this in queues is older than any stream keeps one).
const MAX_COPY_AGE: time::Duration = time::Duration::days(30);

/// A job's envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Whether the job came on a copy's subject.
    pub copy: bool,
    /// `Nats-Msg-Id`, when a valid job id.
    pub msg_id: Option<String>,
    /// A copy's `Kiln-Job-Id`, when a valid job id (on a submitted job it is ignored: it
    /// would let a job take another's id, `seq-` ids included, and its answer).
    pub job_id: Option<String>,
    /// A routed copy's `Kiln-Routing`.
    pub routing: Option<Routing>,
    /// A replayed copy's `Kiln-Replay` (0: never replayed).
    pub replay: u32,
    /// A handed-back copy's `Kiln-Handbacks` (0: never handed back).
    pub handbacks: u32,
    /// When the job was submitted: a copy's `Kiln-Enqueued-At` where it holds a time in the
    /// job's life, else when this message was stored.
    pub enqueued_at: OffsetDateTime,
    /// Whether its `Content-Type` names bincode (the body is read as JSON otherwise).
    pub bincode: bool,
}

impl Envelope {
    /// Read the envelope of a job stored at `published` on a subject that is a copy's
    /// (`copy`) or not.
    pub fn read(copy: bool, headers: Option<&HeaderMap>, published: OffsetDateTime) -> Self {
        // Names made at compile time: a lookup by `&str` allocates the name first.
        const MSG_ID: HeaderName = HeaderName::from_static(HEADER_MSG_ID);
        const JOB_ID: HeaderName = HeaderName::from_static(HEADER_JOB_ID);
        const ROUTING: HeaderName = HeaderName::from_static(HEADER_ROUTING);
        const REPLAY: HeaderName = HeaderName::from_static(HEADER_REPLAY);
        const HANDBACKS: HeaderName = HeaderName::from_static(HEADER_HANDBACKS);
        const ENQUEUED_AT: HeaderName = HeaderName::from_static(HEADER_ENQUEUED_AT);
        let get = |name: HeaderName| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        // kiln's own headers are read on a copy only (most jobs are not: no lookups).
        let trusted = |name: HeaderName| copy.then(|| get(name)).flatten();
        let id = |v: Option<&str>| {
            v.map(str::trim)
                .filter(|v| valid_job_id(v))
                .map(str::to_owned)
        };
        let count = |name: HeaderName, max: u32| {
            trusted(name)
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|n| *n <= max)
                .unwrap_or(0)
        };
        Envelope {
            copy,
            msg_id: id(get(MSG_ID)),
            job_id: id(trusted(JOB_ID)),
            routing: trusted(ROUTING).and_then(routing),
            replay: count(REPLAY, MAX_REPLAYS),
            handbacks: count(HANDBACKS, MAX_HANDBACKS),
            enqueued_at: trusted(ENQUEUED_AT)
                .and_then(|v| {
                    OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .filter(|at| *at <= published && published - *at <= MAX_COPY_AGE)
                .unwrap_or(published),
            bincode: matches!(
                crate::Codec::from_headers(headers),
                Ok(crate::Codec::Bincode)
            ),
        }
    }

    /// The headers of a copy of job `id` (routed, handed back, dead-lettered): the original's
    /// less its publish conditions and less kiln's own headers as they came, with kiln's own
    /// written again from this envelope's checked values. The caller then sets what the copy
    /// changes (a routing, one more hand-back, a message id).
    pub fn copy_headers(&self, original: Option<&HeaderMap>, id: &str) -> HeaderMap {
        let mut headers = copy_headers_except(original, &OWN_HEADERS);
        headers.insert(HEADER_JOB_ID, id);
        headers.insert(
            HEADER_ENQUEUED_AT,
            enqueued_at_value(self.enqueued_at).as_str(),
        );
        if let Some(routing) = self
            .routing
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
        {
            headers.insert(HEADER_ROUTING, routing.as_str());
        }
        if self.replay > 0 {
            headers.insert(HEADER_REPLAY, self.replay.to_string().as_str());
        }
        if self.handbacks > 0 {
            headers.insert(HEADER_HANDBACKS, self.handbacks.to_string().as_str());
        }
        headers
    }

    /// The id the job goes by (see [`resolve_job_id`]), given its body's id.
    pub fn id(&self, body_id: Option<&str>, stream_sequence: u64) -> String {
        resolve_job_id(
            body_id,
            self.job_id.as_deref(),
            self.msg_id.as_deref(),
            stream_sequence,
        )
    }

    /// The id of a job whose body did not decode, read off the body without its parameters:
    /// the body's `id` if valid, else a routed or replayed copy's `Kiln-Job-Id`, else its
    /// `Nats-Msg-Id`, else its stream sequence. Workers, the scheduler and dead-lettering
    /// answer such a job under this id, where its submitter waits.
    pub fn undecoded_id(&self, payload: &[u8], stream_sequence: u64) -> String {
        let body_id = match self.bincode {
            true => bincode_body_id(payload),
            false => body_id(payload),
        };
        let body_id = body_id.filter(|id| crate::submittable_job_id(id));
        self.id(body_id.as_deref(), stream_sequence)
    }
}

/// A `Kiln-Routing` value, checked: a routed class (gpu or cpu), predictions that are finite
/// times between zero and a week (others dropped), text cut to a bounded length.
pub(crate) fn routing(value: &str) -> Option<Routing> {
    if value.len() > MAX_ROUTING_BYTES {
        return None;
    }
    let mut r: Routing = serde_json::from_str(value).ok()?;
    if r.chosen == DeviceClass::Auto {
        return None;
    }
    let believable =
        |ms: Option<f64>| ms.filter(|v| v.is_finite() && (0.0..=MAX_PREDICTED_MS).contains(v));
    r.predicted_gpu_ms = believable(r.predicted_gpu_ms);
    r.predicted_cpu_ms = believable(r.predicted_cpu_ms);
    r.by = cut(&r.by, MAX_ROUTING_TEXT);
    r.reason = cut(&r.reason, MAX_ROUTING_TEXT);
    Some(r)
}

/// `text` cut to at most `max` characters, the last of them a `…` where it was cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.char_indices().nth(max).is_none() {
        return text.to_owned();
    }
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if max > 0 => format!("{}…", &text[..at]),
        _ => String::new(),
    }
}

/// The first top-level `"id"` of a JSON body, read up to it: a body that goes wrong after its
/// id (a `NaN`, bytes after the object, a second `"id"`) or that starts with a UTF-8
/// byte-order mark is still answered under the id it gave, where its submitter waits, not
/// under `seq-<sequence>`.
fn body_id(payload: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    struct FirstId<'a>(&'a mut Option<String>);
    impl<'de> DeserializeSeed<'de> for FirstId<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for FirstId<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "id" {
                    *self.0 = map.next_value::<Option<String>>()?;
                    return Ok(());
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let payload = crate::without_bom(payload);
    let mut id = None;
    // Errors after the id (the object not read to its end, above, is one) do not matter.
    let _ = FirstId(&mut id).deserialize(&mut serde_json::Deserializer::from_slice(payload));
    id
}

/// The `id` a bincode body starts with: a body that goes wrong after it (a `NaN` where the
/// kind refuses one, bytes after the job) is answered under it, as a JSON one is.
fn bincode_body_id(payload: &[u8]) -> Option<String> {
    let config = bincode::config::standard().with_limit::<{ crate::codec::DECODE_LIMIT }>();
    bincode::serde::decode_from_slice::<Option<String>, _>(payload, config)
        .ok()
        .and_then(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, *v);
        }
        h
    }

    const ROUTING: &str = r#"{"chosen":"gpu","by":"s1","predicted_gpu_ms":2.5,"predicted_cpu_ms":9.0,"reason":"faster"}"#;

    #[test]
    fn a_submitted_job_cannot_claim_kilns_own_headers() {
        let published = at("2026-12-02T10:00:00Z");
        let h = headers(&[
            (HEADER_ROUTING, ROUTING),
            (HEADER_REPLAY, "3"),
            (HEADER_HANDBACKS, "2"),
            (HEADER_ENQUEUED_AT, "2026-11-20T10:00:00Z"),
            (HEADER_JOB_ID, "mine"),
        ]);
        let e = Envelope::read(false, Some(&h), published);
        assert_eq!(e.routing, None);
        assert_eq!((e.replay, e.handbacks), (0, 0));
        assert_eq!(e.enqueued_at, published);
        // A forged `Kiln-Job-Id` took a job sent without an id its `seq-` id, and its answer.
        assert_eq!(e.job_id, None);
        assert_eq!(e.id(None, 7), "seq-7");
        let copy = Envelope::read(true, Some(&h), published);
        assert_eq!(copy.job_id.as_deref(), Some("mine"));
        assert_eq!(copy.routing.unwrap().predicted_gpu_ms, Some(2.5));
        assert_eq!((copy.replay, copy.handbacks), (3, 2));
        assert_eq!(copy.enqueued_at, at("2026-11-20T10:00:00Z"));
    }

    #[test]
    fn a_copys_values_are_bounded() {
        let published = at("2026-12-02T10:00:00Z");
        let forged = r#"{"chosen":"cpu","by":"s","predicted_gpu_ms":1.7e308,"predicted_cpu_ms":-1,"reason":"x"}"#;
        let h = headers(&[
            (HEADER_ROUTING, forged),
            (HEADER_REPLAY, "4294967295"),
            (HEADER_HANDBACKS, "-1"),
            (HEADER_ENQUEUED_AT, "2020-01-01T00:00:00Z"),
            (HEADER_MSG_ID, "has spaces in it"),
        ]);
        let e = Envelope::read(true, Some(&h), published);
        let r = e.routing.clone().unwrap();
        assert_eq!((r.predicted_gpu_ms, r.predicted_cpu_ms), (None, None));
        assert_eq!((e.replay, e.handbacks), (0, 0));
        assert_eq!(e.enqueued_at, published, "older than any job lives");
        assert_eq!(e.msg_id, None);
        assert_eq!(e.id(None, 7), "seq-7");
        // A time after the copy was stored is no submission time either.
        let h = headers(&[(HEADER_ENQUEUED_AT, "2026-12-03T00:00:00Z")]);
        assert_eq!(
            Envelope::read(true, Some(&h), published).enqueued_at,
            published
        );
        // An auto "choice", an oversized header, text that is not JSON: no routing.
        assert!(routing(&ROUTING.replace("\"gpu\"", "\"auto\"")).is_none());
        assert!(routing(&" ".repeat(MAX_ROUTING_BYTES + 1)).is_none());
        assert!(routing("{").is_none());
        let long = ROUTING.replace("faster", &"é".repeat(1000));
        assert_eq!(
            routing(&long).unwrap().reason.chars().count(),
            MAX_ROUTING_TEXT
        );
    }

    #[test]
    fn a_copy_carries_checked_values_not_the_forged_ones() {
        let published = at("2026-12-02T10:00:00Z");
        let h = headers(&[
            (HEADER_ROUTING, ROUTING),
            (HEADER_REPLAY, "3"),
            (HEADER_DLQ_REASON, "forged"),
            ("X-Mine", "kept"),
            ("Nats-Expected-Stream", "KILN_JOBS"),
        ]);
        let submitted = Envelope::read(false, Some(&h), published);
        let copy = submitted.copy_headers(Some(&h), "j-1");
        assert_eq!(copy.get(HEADER_JOB_ID).unwrap().as_str(), "j-1");
        assert_eq!(copy.get("X-Mine").unwrap().as_str(), "kept");
        for gone in [
            HEADER_ROUTING,
            HEADER_REPLAY,
            HEADER_DLQ_REASON,
            "Nats-Expected-Stream",
        ] {
            assert!(copy.get(gone).is_none(), "{gone} was copied");
        }
        let trusted = Envelope::read(true, Some(&h), published).copy_headers(Some(&h), "j-1");
        assert_eq!(trusted.get(HEADER_REPLAY).unwrap().as_str(), "3");
        let again = Envelope::read(true, Some(&trusted), published);
        assert_eq!(
            again.routing,
            Envelope::read(true, Some(&h), published).routing
        );
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 3), "hé…");
        assert_eq!(cut("héllo", 5), "héllo");
        assert_eq!(cut("héllo", 1), "…");
        assert_eq!(cut("hi", 2), "hi");
        assert_eq!(cut("", 0), "");
        assert_eq!(cut("hi", 0), "");
    }

    proptest::proptest! {
        #[test]
        fn any_header_values_give_a_bounded_envelope(
            routing in "[^\r\n]{0,300}",
            replay in "[^\r\n]{0,20}",
            handbacks in "[^\r\n]{0,20}",
            enqueued in "[^\r\n]{0,40}",
            id in "[^\r\n]{0,200}",
            copy: bool,
        ) {
            let published = at("2026-12-02T10:00:00Z");
            let mut h = HeaderMap::new();
            for (k, v) in [(HEADER_ROUTING, &routing), (HEADER_REPLAY, &replay),
                           (HEADER_HANDBACKS, &handbacks), (HEADER_ENQUEUED_AT, &enqueued),
                           (HEADER_JOB_ID, &id), (HEADER_MSG_ID, &id)] {
                h.insert(k, v.as_str());
            }
            let e = Envelope::read(copy, Some(&h), published);
            proptest::prop_assert!(e.replay <= MAX_REPLAYS && e.handbacks <= MAX_HANDBACKS);
            proptest::prop_assert!(e.enqueued_at <= published);
            proptest::prop_assert!(published - e.enqueued_at <= MAX_COPY_AGE);
            if let Some(r) = &e.routing {
                for ms in [r.predicted_gpu_ms, r.predicted_cpu_ms].into_iter().flatten() {
                    proptest::prop_assert!(ms.is_finite() && ms >= 0.0);
                }
            }
            proptest::prop_assert!(valid_job_id(&e.id(None, 1)));
        }
    }

    /// A body that goes wrong after its id is answered under that id (a NaN, trailing
    /// bytes, a byte-order mark and a second id each sent the answer to `seq-<n>`).
    #[test]
    fn the_body_id_is_read_up_to_where_the_body_goes_wrong() {
        let id = |body: &[u8]| body_id(body);
        assert_eq!(id(br#"{"id":"a","params":{}}"#).as_deref(), Some("a"));
        assert_eq!(
            id(br#"{"params":{"a":[1]},"id":"b"}"#).as_deref(),
            Some("b")
        );
        assert_eq!(
            id(br#"{"id":"nan","params":{"a":[NaN]}}"#).as_deref(),
            Some("nan")
        );
        assert_eq!(
            id(br#"{"id":"t","params":{}} trailing"#).as_deref(),
            Some("t")
        );
        assert_eq!(id(b"\xEF\xBB\xBF{\"id\":\"bom\"}").as_deref(), Some("bom"));
        assert_eq!(
            id(br#"{"id":"first","id":"second"}"#).as_deref(),
            Some("first")
        );
        // No id to be had: before it goes wrong, or not a string.
        assert_eq!(id(br#"{"params":{"a":[NaN]},"id":"late"}"#), None);
        assert_eq!(id(br#"{"id":7}"#), None);
        assert_eq!(id(br#"{"id":null}"#), None);
        assert_eq!(id(b"[1,2]"), None);
        assert_eq!(id(b"\xff\xfe"), None);
    }

    /// A bincode body is read as bincode: its id comes first, and a body that goes wrong
    /// after it (a NaN the kind refuses, trailing bytes) is answered under it (it was
    /// answered under `seq-<n>`, where no submitter waits).
    #[test]
    fn a_bincode_body_is_answered_under_its_id() {
        #[derive(serde::Serialize)]
        struct Params {
            a: Vec<f32>,
        }
        let job = crate::Job {
            id: Some("bc-nan".to_owned()),
            params: Params { a: vec![f32::NAN] },
            timeout_ms: None,
            seed: None,
            output: Default::default(),
        };
        let mut body = crate::Codec::Bincode.encode("job", &job).unwrap();
        body.extend_from_slice(b"trailing");
        let bincode = headers(&[("Content-Type", crate::Codec::Bincode.content_type())]);
        let envelope = Envelope::read(false, Some(&bincode), at("2026-12-05T10:00:00Z"));
        assert!(envelope.bincode);
        assert_eq!(envelope.undecoded_id(&body, 7), "bc-nan");
        // Read as JSON (no Content-Type), the same bytes give no id.
        let json = Envelope::read(false, None, at("2026-12-05T10:00:00Z"));
        assert_eq!(json.undecoded_id(&body, 7), "seq-7");
        // A bincode body without an id, or too short to hold one, goes by its sequence.
        let none = crate::Job { id: None, ..job };
        let body = crate::Codec::Bincode.encode("job", &none).unwrap();
        assert_eq!(envelope.undecoded_id(&body, 8), "seq-8");
        assert_eq!(envelope.undecoded_id(&[1, 200], 9), "seq-9");
        // A kiln-own id is not taken from a body.
        let seq = crate::Job {
            id: Some("seq-1".to_owned()),
            ..none
        };
        let body = crate::Codec::Bincode.encode("job", &seq).unwrap();
        assert_eq!(envelope.undecoded_id(&body, 10), "seq-10");
    }
}
