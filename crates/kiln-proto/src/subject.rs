//! Subject names: `jobs.<class>.<kind>`, `results.<kind>.<id>`, `metrics.<kind>.<class>`, `dlq.<kind>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where a job asks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// GPU workers (`jobs.gpu.<kind>`).
    Gpu,
    /// CPU workers (`jobs.cpu.<kind>`).
    Cpu,
    /// Whichever class the scheduler predicts finishes first (`jobs.auto.<kind>`).
    Auto,
}

impl DeviceClass {
    /// The lowercase name used in subjects and on the wire: `gpu`, `cpu` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Gpu => "gpu",
            DeviceClass::Cpu => "cpu",
            DeviceClass::Auto => "auto",
        }
    }

    /// The durable consumer that serves this class.
    pub fn consumer(self) -> &'static str {
        match self {
            DeviceClass::Gpu => crate::streams::CONSUMER_WORKERS_GPU,
            DeviceClass::Cpu => crate::streams::CONSUMER_WORKERS_CPU,
            DeviceClass::Auto => crate::streams::CONSUMER_SCHEDULER,
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`: tables give it a width (`{:<5}`).
        f.pad(self.as_str())
    }
}

impl FromStr for DeviceClass {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "gpu" => Ok(DeviceClass::Gpu),
            "cpu" => Ok(DeviceClass::Cpu),
            "auto" => Ok(DeviceClass::Auto),
            other => Err(Error::DeviceClass(other.to_owned())),
        }
    }
}

/// `jobs.<class>.<kind>`
pub fn job(class: DeviceClass, kind: &str) -> String {
    format!("jobs.{class}.{kind}")
}

/// `jobs.<class>.<kind>.copy`: a copy of a job made by kiln itself (a scheduler's routed copy,
/// a worker's hand-back, a replay from the dead-letter queue). Only kiln's own roles may
/// publish here (see `nats/secure/secure.conf`), so a worker trusts the `Kiln-*` headers of
/// a job only on this subject: on `jobs.<class>.<kind>` they are whatever the submitter wrote.
pub fn job_copy(class: DeviceClass, kind: &str) -> String {
    format!("jobs.{class}.{kind}.copy")
}

/// The subjects `KILN_JOBS` stores for a class: `jobs.<class>.*` and the copies
/// `jobs.<class>.*.copy` (on auto: replays from the dead-letter queue of jobs that no
/// scheduler could route).
pub fn stored_jobs_of_class(class: DeviceClass) -> Vec<String> {
    vec![format!("jobs.{class}.*"), format!("jobs.{class}.*.copy")]
}

/// `jobs.<class>.>`: every job of a class, submitted or copied (a consumer's filter).
pub fn jobs_of_class(class: DeviceClass) -> String {
    format!("jobs.{class}.>")
}

/// `results.<kind>.<id>`: the one subject job `id`'s result is stored on (in its first life;
/// a replay from the dead-letter queue answers on [`result_of`]'s replay subject). The
/// results stream keeps one message a subject and refuses a second, so a job id is answered
/// once for as long as results are kept. `id` must be a valid job id
/// ([`crate::valid_job_id`]): one token.
pub fn result(kind: &str, id: &str) -> String {
    result_of(kind, id, 0)
}

/// The result subject of job `id` in its `replay`th life: `results.<kind>.<id>` for the
/// first, `results.<kind>.<id>.replay-<n>` after `n` replays from the dead-letter queue.
pub fn result_of(kind: &str, id: &str, replay: u32) -> String {
    match replay {
        0 => format!("results.{kind}.{id}"),
        n => format!("results.{kind}.{id}.replay-{n}"),
    }
}

/// `results.<kind>.>`: every result of a kind.
pub fn results_of_kind(kind: &str) -> String {
    format!("results.{kind}.>")
}

/// `results.*.<id>` and `results.*.<id>.>`: job `id`'s results of any kind, first life and
/// replays.
pub fn results_of_job(id: &str) -> [String; 2] {
    [format!("results.*.{id}"), format!("results.*.{id}.>")]
}

/// `metrics.<kind>.<class>`
pub fn metrics(kind: &str, class: &str) -> String {
    format!("metrics.{kind}.{class}")
}

/// `dlq.<kind>`
pub fn dlq(kind: &str) -> String {
    format!("dlq.{kind}")
}

/// Whether every subject `wanted` matches (itself a subject or a filter with `*` and `>`)
/// is matched by the filter `filter` too: `jobs.>` covers `jobs.gpu.*`, `jobs.*.*` covers
/// `jobs.cpu.matmul` but not `jobs.cpu.matmul.copy`.
pub fn covers(filter: &str, wanted: &str) -> bool {
    let (mut f, mut w) = (filter.split('.'), wanted.split('.'));
    loop {
        match (f.next(), w.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(_), Some("*")) => return false,
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `subject` is a copy's, `jobs.<class>.<kind>.copy` ([`job_copy`]), which only kiln's
/// roles may publish to, so that kiln's own headers on it are believed: also when its kind is
/// no kind name (`jobs.cpu.mat+mul.copy`, the scheduler's copy of such an auto job, which
/// [`JobSubject::parse`] refuses), whose `Kiln-Job-Id` still names the job.
pub fn is_copy_subject(subject: &str) -> bool {
    let mut parts = subject.split('.');
    matches!(
        (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next()
        ),
        (Some("jobs"), Some(_), Some(_), Some("copy"), None)
    )
}

/// A job subject taken apart. The kind is kept as written: whether it names a known kind
/// is the worker's question, answered with an `invalid_input` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSubject<'a> {
    /// The class the subject names.
    pub class: DeviceClass,
    /// The kind the subject names, as written.
    pub kind: &'a str,
    /// A copy kiln made ([`job_copy`]), whose `Kiln-*` headers are kiln's own.
    pub copy: bool,
}

impl<'a> JobSubject<'a> {
    /// Take apart `jobs.<class>.<kind>` or `jobs.<class>.<kind>.copy`; any other subject is
    /// an [`Error::Subject`], an unknown class an [`Error::DeviceClass`].
    pub fn parse(subject: &'a str) -> Result<Self, Error> {
        let mut parts = subject.split('.');
        let parsed = match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("jobs"), Some(class), Some(kind), copy, None)
                if is_token(kind) && matches!(copy, None | Some("copy")) =>
            {
                Some(JobSubject {
                    class: class.parse()?,
                    kind,
                    copy: copy.is_some(),
                })
            }
            _ => None,
        };
        parsed.ok_or_else(|| Error::Subject(subject.to_owned()))
    }

    /// The subject a copy of this job goes to.
    pub fn copy_subject(&self) -> String {
        job_copy(self.class, self.kind)
    }
}

/// A name safe to use as a single subject token (kinds, worker names).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables pad the class to their column's width (`kiln workers` printed `gpu` under a
    /// five-wide `class`, and every later column two places off).
    #[test]
    fn a_class_takes_the_width_it_is_given() {
        assert_eq!(format!("{:<5}|", DeviceClass::Gpu), "gpu  |");
        assert_eq!(format!("{:>5}|", DeviceClass::Auto), " auto|");
        assert_eq!(DeviceClass::Cpu.to_string(), "cpu");
    }

    #[test]
    fn copies_are_told_by_their_subject_whatever_their_kind() {
        assert!(is_copy_subject("jobs.cpu.matmul.copy"));
        assert!(is_copy_subject("jobs.cpu.mat+mul.copy"));
        assert!(!is_copy_subject("jobs.cpu.matmul"));
        assert!(!is_copy_subject("jobs.cpu.copy"));
        assert!(!is_copy_subject("jobs.cpu.matmul.copy.more"));
        assert!(!is_copy_subject("results.cpu.matmul.copy"));
    }

    #[test]
    fn a_filter_covers_the_subjects_it_matches() {
        assert!(covers("jobs.>", "jobs.gpu.*"));
        assert!(covers("jobs.>", "jobs.cpu.*.copy"));
        assert!(covers("jobs.*.*", "jobs.cpu.matmul"));
        assert!(covers("jobs.gpu.*", "jobs.gpu.*"));
        assert!(!covers("jobs.*.*", "jobs.cpu.matmul.copy"));
        assert!(!covers("jobs.gpu.*", "jobs.*.*"));
        assert!(!covers("jobs.gpu.*", "jobs.cpu.*"));
        assert!(!covers("jobs.>", "jobs"));
        assert!(!covers("jobs.gpu", "jobs.gpu.*"));
        assert!(!covers("jobs.gpu.matmul", "jobs.gpu.*"));
        assert!(!covers("results.>", "jobs.gpu.*"));
    }

    #[test]
    fn builds_and_parses_job_subjects() {
        assert_eq!(job(DeviceClass::Cpu, "matmul"), "jobs.cpu.matmul");
        let parsed = JobSubject::parse("jobs.gpu.conv2d").unwrap();
        assert_eq!(parsed.class, DeviceClass::Gpu);
        assert_eq!(parsed.kind, "conv2d");
        assert!(JobSubject::parse("jobs.tpu.matmul").is_err());
        assert!(!parsed.copy);
        assert!(JobSubject::parse("jobs.cpu.matmul.extra").is_err());
        let copy = JobSubject::parse("jobs.cpu.matmul.copy").unwrap();
        assert!(copy.copy && copy.kind == "matmul" && copy.class == DeviceClass::Cpu);
        assert_eq!(copy.copy_subject(), "jobs.cpu.matmul.copy");
        assert_eq!(parsed.copy_subject(), "jobs.gpu.conv2d.copy");
        assert!(JobSubject::parse("jobs.auto.matmul.copy").unwrap().copy);
        assert!(JobSubject::parse("jobs.cpu.matmul.copy.copy").is_err());
        assert!(JobSubject::parse("jobs.cpu.").is_err());
        assert!(JobSubject::parse("results.matmul").is_err());
        assert_eq!(metrics("matmul", "cpu"), "metrics.matmul.cpu");
        assert_eq!(result("matmul", "j-1"), "results.matmul.j-1");
        assert_eq!(result_of("matmul", "j-1", 2), "results.matmul.j-1.replay-2");
    }
}
