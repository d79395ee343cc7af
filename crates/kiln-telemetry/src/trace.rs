//! OpenTelemetry traces across processes, linked by W3C trace context in NATS headers.
//!
//! [`init`] installs an OTLP/HTTP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, honouring the standard variables
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_PROTOCOL` =
//! `http/protobuf` or `http/json`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`,
//! `OTEL_TRACES_SAMPLER`). Without it [`enabled`] is false, [`TraceSpan::start`] returns `None`
//! and the roles only forward the `traceparent`/`tracestate` headers they received
//! ([`forward`]): no span, no allocation per job.
//!
//! ```
//! use kiln_telemetry::trace::{self, SpanKind, TraceSpan};
//! // Tracing is off unless init() found an endpoint: nothing is created.
//! let span = TraceSpan::start("kiln.submit", SpanKind::Producer, &trace::Context::new(), None, vec![]);
//! assert!(span.is_none() && !trace::enabled());
//! ```

use std::sync::OnceLock;
use std::time::SystemTime;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

pub use opentelemetry::trace::{SpanKind, Status};
pub use opentelemetry::{Context, KeyValue};

/// The W3C trace-context headers.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// How long an exiting process waits for its last spans to be exported.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Keeps the exporter alive; dropping it flushes the spans still queued (blocking, at most
/// [`FLUSH_TIMEOUT`], so that an unreachable collector cannot hold up an exit) — drop it after
/// the async runtime has stopped.
#[must_use = "dropping the guard stops the exporter"]
#[derive(Debug)]
pub struct TraceGuard(Option<SdkTracerProvider>);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            // (Not `eprintln!`: it panics when stderr's reader has gone.)
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("kiln: could not flush the last trace spans: {e}\n"),
            );
        }
    }
}

/// Whether the standard environment asks for OTLP trace export.
fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// Start exporting spans over OTLP/HTTP when the environment configures an endpoint, under
/// `service` unless `OTEL_SERVICE_NAME` says otherwise. Call once, before the async runtime
/// starts (the exporter builds a blocking HTTP client). Without an endpoint this does nothing
/// and returns an inert guard.
pub fn init(service: &str) -> Result<TraceGuard, String> {
    if !configured() {
        return Ok(TraceGuard(None));
    }
    use opentelemetry_otlp::WithExportConfig as _;
    let (protocol, warning) = protocol(|name| std::env::var(name).ok());
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| format!("could not set up the OTLP trace exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(crate::export::Reporting::new(exporter))
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("kiln");
    TRACER
        .set(tracer)
        .map_err(|_| "trace export was already set up".to_owned())?;
    Ok(TraceGuard(Some(provider)))
}

/// The OTLP encoding the environment asks for (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`): `http/protobuf` unless it says `http/json`, as the
/// specification's default is. Chosen here because the exporter's own default follows its
/// cargo features (JSON when both encodings are built in). A value kiln cannot honour comes
/// with a warning to log.
fn protocol(
    var: impl Fn(&str) -> Option<String>,
) -> (opentelemetry_otlp::Protocol, Option<String>) {
    use opentelemetry_otlp::Protocol;
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        let Some(value) = var(name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        return match value.as_str() {
            "http/protobuf" => (Protocol::HttpBinary, None),
            "http/json" => (Protocol::HttpJson, None),
            "grpc" => (
                Protocol::HttpBinary,
                Some(format!(
                    "{name}=grpc: kiln exports OTLP over HTTP only (http/protobuf, http/json); \
                     using http/protobuf, so point the endpoint at the collector's OTLP/HTTP \
                     port (4318)"
                )),
            ),
            other => (
                Protocol::HttpBinary,
                Some(format!(
                    "{name}={other:?} is not an OTLP protocol kiln knows (http/protobuf, \
                     http/json); using http/protobuf"
                )),
            ),
        };
    }
    (Protocol::HttpBinary, None)
}

/// Whether spans are exported (so worth creating).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Writes trace context into NATS headers.
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Reads trace context from NATS headers.
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// The trace context a message carries; an empty context (a new trace starts) when it
/// carries none or an invalid one.
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&HeaderExtractor(headers)),
        None => Context::new(),
    }
}

/// Copy the W3C trace-context headers from one message to another when they are well formed:
/// what a role does when it does not trace itself, so that a trace still links its
/// neighbours. Anything else is left behind: a `traceparent` of 64 KiB copied onto a result
/// beside kiln's own headers made every publish of the answer fail.
pub fn forward(from: Option<&HeaderMap>, to: &mut HeaderMap) {
    // Names made at compile time: a lookup by `&str` allocates the name first.
    const PARENT: async_nats::header::HeaderName =
        async_nats::header::HeaderName::from_static(TRACE_HEADERS[0]);
    const STATE: async_nats::header::HeaderName =
        async_nats::header::HeaderName::from_static(TRACE_HEADERS[1]);
    let Some(from) = from else { return };
    let Some(parent) = from.get(PARENT).map(|v| v.as_str()) else {
        return;
    };
    if !is_traceparent(parent) {
        return;
    }
    to.insert(TRACE_HEADERS[0], parent);
    if let Some(state) = from.get(STATE).map(|v| v.as_str())
        && state.len() <= MAX_TRACESTATE
        && state.bytes().all(|b| (b' '..=b'~').contains(&b))
    {
        to.insert(TRACE_HEADERS[1], state);
    }
}

/// The longest `tracestate` passed on: W3C Trace Context asks that at least 512 characters be
/// propagated, and lets longer ones be cut.
const MAX_TRACESTATE: usize = 512;

/// Whether `value` is a W3C `traceparent`: `version-traceid-parentid-flags` in lowercase hex,
/// 2-32-16-2 digits, the version not `ff` and the ids not all zeros (version 00 has nothing
/// after the flags; a later version may, after a dash, and is passed on as its first 55
/// characters would be read).
pub fn is_traceparent(value: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |s: &str| s.bytes().all(|b| b == b'0');
    let Some(head) = value.get(..55) else {
        return false;
    };
    let rest = &value[55..];
    let fields: Vec<&str> = head.split('-').collect();
    let [version, trace, parent, flags] = fields[..] else {
        return false;
    };
    let sizes = (version.len(), trace.len(), parent.len(), flags.len()) == (2, 32, 16, 2);
    let later = match version {
        "00" => rest.is_empty(),
        _ => rest.is_empty() || (rest.starts_with('-') && value.len() <= 256),
    };
    sizes
        && [version, trace, parent, flags].into_iter().all(hex)
        && version != "ff"
        && !zeros(trace)
        && !zeros(parent)
        && later
}

/// A span being recorded; it ends when [`TraceSpan::end`] is called or when it is dropped.
#[derive(Debug, Clone)]
pub struct TraceSpan {
    cx: Context,
}

impl TraceSpan {
    /// Start a span under `parent` (an empty context starts a new trace), at `start` or now;
    /// `None` when tracing is off.
    pub fn start(
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        start: Option<SystemTime>,
        attributes: Vec<KeyValue>,
    ) -> Option<TraceSpan> {
        let tracer = TRACER.get()?;
        let mut builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes);
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        let span = tracer.build_with_context(builder, parent);
        Some(TraceSpan {
            cx: parent.with_span(span),
        })
    }

    /// A child span of this one.
    pub fn child(
        &self,
        name: &'static str,
        kind: SpanKind,
        start: Option<SystemTime>,
        attributes: Vec<KeyValue>,
    ) -> TraceSpan {
        Self::start(name, kind, &self.cx, start, attributes).unwrap_or_else(|| self.clone())
    }

    /// A child span that already happened, from `start` to `end`.
    pub fn record(
        &self,
        name: &'static str,
        start: SystemTime,
        end: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        if let Some(span) = Self::start(name, SpanKind::Internal, &self.cx, Some(start), attributes)
        {
            span.end_at(end);
        }
    }

    /// This span's context (a parent for others).
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Add `attribute` to the span, or replace the one of the same key.
    pub fn set_attribute(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    /// Mark the span failed.
    pub fn error(&self, description: impl Into<String>) {
        self.cx.span().set_status(Status::error(description.into()));
    }

    /// Write this span's context into `headers` (`traceparent`, `tracestate`), so that the
    /// receiver's spans become its children.
    pub fn inject(&self, headers: &mut HeaderMap) {
        TraceContextPropagator::new().inject_context(&self.cx, &mut HeaderInjector(headers));
    }

    /// End the span now.
    pub fn end(self) {
        self.cx.span().end();
    }

    /// End the span at `end`.
    pub fn end_at(self, end: SystemTime) {
        self.cx.span().end_with_timestamp(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_unless_json_is_asked_for() {
        use opentelemetry_otlp::Protocol;
        fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        }
        assert_eq!(protocol(env(&[])), (Protocol::HttpBinary, None));
        let json = [("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/JSON")];
        assert_eq!(protocol(env(&json)), (Protocol::HttpJson, None));
        // The traces variable wins over the general one.
        let both = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(protocol(env(&both)), (Protocol::HttpBinary, None));
        let grpc = [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        let (chosen, warning) = protocol(env(&grpc));
        assert_eq!(chosen, Protocol::HttpBinary);
        assert!(warning.unwrap().contains("OTLP/HTTP port (4318)"));
        let odd = [("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "carrier-pigeon")];
        let (chosen, warning) = protocol(env(&odd));
        assert_eq!(chosen, Protocol::HttpBinary);
        assert!(
            warning
                .unwrap()
                .contains("\"carrier-pigeon\" is not an OTLP protocol")
        );
    }

    #[test]
    fn only_well_formed_trace_headers_are_forwarded() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(good));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(bad), "{bad}");
        }
        assert!(is_traceparent(&format!("01{}-later", &good[2..])));
        assert!(!is_traceparent(&format!(
            "01{}-{}",
            &good[2..],
            "a".repeat(300)
        )));

        let forwarded = |parent: &str, state: &str| {
            let mut from = HeaderMap::new();
            from.insert("traceparent", parent);
            from.insert("tracestate", state);
            let mut to = HeaderMap::new();
            forward(Some(&from), &mut to);
            (
                to.get("traceparent").map(|v| v.as_str().to_owned()),
                to.get("tracestate").map(|v| v.as_str().to_owned()),
            )
        };
        assert_eq!(
            forwarded(good, "rojo=00f067aa0ba902b7"),
            (Some(good.into()), Some("rojo=00f067aa0ba902b7".into()))
        );
        // 64 KiB of either is left behind; a bad parent takes its state with it.
        let huge = "a".repeat(65_000);
        assert_eq!(forwarded(good, &huge), (Some(good.into()), None));
        assert_eq!(forwarded(&format!("00-{huge}"), "k=v"), (None, None));
    }

    #[test]
    fn headers_round_trip_w3c_trace_context() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        headers.insert("tracestate", "vendor=x");
        let cx = extract(Some(&headers));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");

        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(
            out.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(out.get("tracestate").map(|v| v.as_str()), Some("vendor=x"));

        let mut forwarded = HeaderMap::new();
        forward(Some(&headers), &mut forwarded);
        assert_eq!(
            forwarded.get("traceparent").map(|v| v.as_str()),
            headers.get("traceparent").map(|v| v.as_str())
        );
    }

    #[test]
    fn a_message_without_trace_context_starts_a_new_trace() {
        let cx = extract(Some(&HeaderMap::new()));
        assert!(!cx.span().span_context().is_valid());
        assert!(!extract(None).has_active_span());
    }
}
