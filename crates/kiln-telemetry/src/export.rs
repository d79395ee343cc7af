//! The OTLP span exporter, saying when exports fail. The SDK drops the spans of a failed export
//! without a word, so a role whose collector was refused or hung went on as if traced.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// How often a run of failing exports is told again.
const REMIND_EVERY: Duration = Duration::from_secs(60);

/// `inner`, logging the first failed export, then at most one line a minute while exports
/// keep failing (with the spans dropped meanwhile), and a line when they work again.
#[derive(Debug)]
pub(crate) struct Reporting<E> {
    inner: E,
    failures: Mutex<Failures>,
}

impl<E> Reporting<E> {
    pub(crate) fn new(inner: E) -> Self {
        Reporting {
            inner,
            failures: Mutex::new(Failures::default()),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let error = result.as_ref().err().map(ToString::to_string);
        let line = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(error, spans, Instant::now());
        match line {
            Some(Line::Failing(message)) => tracing::warn!("{message}"),
            Some(Line::Working(message)) => tracing::info!("{message}"),
            None => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A run of failed exports.
#[derive(Debug, Default)]
struct Failures {
    /// Exports failed since the last that worked.
    failed: u64,
    /// Spans dropped since the last line said so.
    dropped: u64,
    /// When a line last told of them.
    told: Option<Instant>,
}

/// What to log after an export.
#[derive(Debug, PartialEq)]
enum Line {
    Failing(String),
    Working(String),
}

impl Failures {
    /// An export of `spans` spans ended with `error` (`None`: it worked) at `now`.
    fn note(&mut self, error: Option<String>, spans: u64, now: Instant) -> Option<Line> {
        let Some(error) = error else {
            let failed = std::mem::take(self).failed;
            return (failed > 0).then(|| {
                Line::Working(format!(
                    "trace spans reach the OTLP endpoint again, after {failed} failed export(s)"
                ))
            });
        };
        self.failed += 1;
        self.dropped += spans;
        if self
            .told
            .is_some_and(|at| now.duration_since(at) < REMIND_EVERY)
        {
            return None;
        }
        self.told = Some(now);
        let dropped = std::mem::take(&mut self.dropped);
        Some(Line::Failing(format!(
            "could not export trace spans to the OTLP endpoint ({}); {dropped} span(s) \
             dropped{}; kiln works on untraced, and says so again each minute exports fail",
            Short(&error),
            match self.failed {
                1 => String::new(),
                n => format!(" over the last {n} failed exports"),
            }
        )))
    }
}

/// An error message, cut to one readable line.
struct Short<'a>(&'a str);

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.0.lines().next().unwrap_or_default();
        match line.char_indices().nth(300) {
            Some((at, _)) => write!(f, "{}…", &line[..at]),
            None => f.write_str(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_at_once_then_once_a_minute_and_the_recovery_too() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut failures = Failures::default();
        let refused = || Some("connection refused".to_owned());
        let Some(Line::Failing(first)) = failures.note(refused(), 3, at(0)) else {
            panic!("the first failure is told");
        };
        assert!(
            first.starts_with("could not export trace spans to the OTLP endpoint (connection refused); 3 span(s) dropped"),
            "{first}"
        );
        assert_eq!(failures.note(refused(), 4, at(5)), None);
        assert_eq!(failures.note(refused(), 5, at(30)), None);
        let Some(Line::Failing(again)) = failures.note(refused(), 6, at(61)) else {
            panic!("told again after a minute");
        };
        assert!(
            again.contains("15 span(s) dropped over the last 4 failed exports"),
            "{again}"
        );
        assert_eq!(
            failures.note(None, 2, at(62)),
            Some(Line::Working(
                "trace spans reach the OTLP endpoint again, after 4 failed export(s)".into()
            ))
        );
        assert_eq!(
            failures.note(None, 2, at(63)),
            None,
            "working: nothing to say"
        );
        assert!(matches!(
            failures.note(refused(), 1, at(64)),
            Some(Line::Failing(_))
        ));
    }
}
