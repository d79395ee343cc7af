//! The value parsers of kiln's flags: durations, and the limits that must mean what they
//! say to NATS.

use std::time::Duration;

/// A duration flag: the new spelling's value, else the older spelling's, else `default`.
pub(super) fn either(new: Option<Duration>, old: Option<Duration>, default: Duration) -> Duration {
    new.or(old).unwrap_or(default)
}

/// A duration as humantime reads it: `30s`, `250ms`, `1h 30m`, `7d`.
pub(super) fn duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| e.to_string())
}

/// A worker's `--ack-wait`: at least 1 s, the shortest the worker's progress acks (a third
/// of it, no less than 100 ms) keep a running job with; a shorter one was raised to 1 s
/// without a word.
pub(super) fn ack_wait(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d < Duration::from_secs(1) => Err("must be at least 1s".into()),
        d => Ok(d),
    }
}

/// `--wait-timeout`: more than zero (a zero one was taken, and waited all the same).
pub(super) fn wait_timeout(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d.is_zero() => {
            Err("must be more than 0: it is how long --wait waits for the results".into())
        }
        d => Ok(d),
    }
}

/// A period something repeats at (`--interval`, `--refresh`): more than zero, which would
/// repeat it as fast as the machine can.
pub(super) fn period(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d.is_zero() => Err("must be more than 0 (it is how long to wait between two)".into()),
        d => Ok(d),
    }
}

/// [`period`] in milliseconds (the older spellings, `--interval-ms`, `--refresh-ms`).
pub(super) fn period_ms(value: &str) -> Result<u64, String> {
    match value.parse::<u64>().map_err(|e| e.to_string())? {
        0 => Err("must be more than 0 (it is how long to wait between two)".into()),
        n => Ok(n),
    }
}

/// A job's compute timeout (`--timeout`): more than zero, which would fail every job at its
/// first checkpoint.
pub(super) fn job_timeout(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d.is_zero() => Err("must be more than 0 (leave it out for no timeout)".into()),
        d => Ok(d),
    }
}

/// `--timeout-ms`: [`job_timeout`] in milliseconds.
pub(super) fn job_timeout_ms(value: &str) -> Result<u64, String> {
    match value.parse::<u64>().map_err(|e| e.to_string())? {
        0 => Err("must be more than 0 (leave it out for no timeout)".into()),
        ms => Ok(ms),
    }
}

/// A device class (`gpu`, `cpu`, `auto`), read with the command line, so that a bad value
/// (also one from an environment variable) is named with the flag, or variable, it came from.
pub(super) fn device_class(value: &str) -> Result<kiln_proto::DeviceClass, String> {
    value.parse().map_err(|e: kiln_proto::Error| e.to_string())
}

/// The class a worker serves (`--serve-class`): `gpu` or `cpu`; auto jobs go to the scheduler.
pub(super) fn served_class(value: &str) -> Result<kiln_proto::DeviceClass, String> {
    match device_class(value)? {
        kiln_proto::DeviceClass::Auto => {
            Err("workers serve gpu or cpu; auto jobs go to the scheduler".into())
        }
        class => Ok(class),
    }
}

/// A worker's device as written (`cpu`, `cuda`, `cuda:N`, `auto`); whether the machine has
/// that device is checked when the worker starts.
pub(super) fn device(value: &str) -> Result<String, String> {
    let cuda_index = value.strip_prefix("cuda:").map(str::parse::<usize>);
    match (value, cuda_index) {
        ("cpu" | "cuda" | "auto", _) | (_, Some(Ok(_))) => Ok(value.to_owned()),
        _ => Err("use cpu, cuda, cuda:N (N a number) or auto".into()),
    }
}

/// A stream limit (jobs, bytes): at least 1. NATS reads 0 and -1 as no limit at all, which
/// is never what `--max-queued-jobs 0` means; a limit kiln sets is a limit.
pub(super) fn limit(value: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1 (NATS would read it as no limit)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The smallest byte limit of a stream kiln keeps messages in: 1 MiB, the largest message a
/// server takes by default. A stream smaller than a message it is to keep drops it as it
/// stores it (with `--results-max-bytes 100` every job ran, was acked, and its result was
/// gone at once).
pub(super) const MIN_BYTE_LIMIT: i64 = 1 << 20;

/// A stream's byte limit, in bytes or with a unit (`512MiB`, `8GiB`, `2GB`): at least
/// [`MIN_BYTE_LIMIT`] (so never 0 or -1, which NATS reads as no limit).
pub(super) fn byte_limit(value: &str) -> Result<i64, String> {
    let trimmed = value.trim();
    // A negative count is under the least limit too (and no size bytesize reads).
    let bytes = match trimmed.parse::<i64>() {
        Ok(n) => n,
        Err(_) => {
            let size: bytesize::ByteSize = trimmed.parse().map_err(|_| {
                format!(
                    "{value:?} is no size: give bytes, or a number and a unit (512MiB, 8GiB, \
                     2GB, 4TiB)"
                )
            })?;
            i64::try_from(size.as_u64()).map_err(|_| format!("{value:?} is too large"))?
        }
    };
    match bytes {
        n if n < MIN_BYTE_LIMIT => Err(format!(
            "must be at least {MIN_BYTE_LIMIT} (1 MiB, the largest message a server takes by \
             default): a stream smaller than its messages drops each one as it stores it"
        )),
        n => Ok(n),
    }
}

/// How long stored objects live: at least a second (NATS reads a max age of 0 as for ever,
/// and refuses one under 100 ms) and at most [`MAX_LIFETIME_HOURS`] (NATS counts ages in
/// nanoseconds, in an i64).
pub(super) fn lifetime(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        Duration::ZERO => Err("must be longer than 0 (NATS would keep objects for ever)".into()),
        age if age < Duration::from_secs(1) => {
            Err("must be at least 1s: objects must outlive the jobs that read them".into())
        }
        age if age > Duration::from_secs(MAX_LIFETIME_HOURS * 3600) => Err(format!(
            "must be at most {MAX_LIFETIME_HOURS} hours (100 years)"
        )),
        age => Ok(age),
    }
}

/// The longest `--data-max-age`, in hours: 100 years.
pub(super) const MAX_LIFETIME_HOURS: u64 = 876_000;

/// Stream replicas: 1 to 5, what JetStream keeps (1 on one server, 3 on a cluster).
pub(super) fn replicas(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n @ 1..=5) => Ok(n),
        Ok(_) => Err("JetStream keeps 1 to 5 replicas (1 on one server, 3 on a cluster)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `kiln demo --scale`: a finite factor above 0, at most [`crate::cmd::demo::MAX_SCALE`].
pub(super) fn scale(value: &str) -> Result<f64, String> {
    let max = crate::cmd::demo::MAX_SCALE;
    match value.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= max => Ok(x),
        Ok(_) => Err(format!("use a factor above 0 and at most {max}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The largest `--slowdown`: a simulated device a thousand times slower than the real one is
/// slower than any GPU or CPU class kiln would be compared with, and a job's compute time
/// times a factor much larger overflows a `Duration` (every job would fail `internal`).
const MAX_SLOWDOWN: f64 = 1000.0;

/// A worker's `--slowdown`: a factor from 1 (off) to [`MAX_SLOWDOWN`].
pub(super) fn slowdown(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(x) if (1.0..=MAX_SLOWDOWN).contains(&x) => Ok(x),
        _ => Err(format!("use a factor from 1 (off) to {MAX_SLOWDOWN}")),
    }
}

/// A listening address as HOST:PORT (`0.0.0.0:9464`, `[::1]:9464`, `localhost:9464`), its
/// form checked here so that a wrong one is a usage error (exit 2) like any other flag's; the
/// host is resolved when the role starts.
pub(super) fn host_port(value: &str) -> Result<String, String> {
    let hint = "give a HOST:PORT such as 0.0.0.0:9464";
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("no port: {hint}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(hint.to_owned());
    }
    Ok(value.to_owned())
}

/// A number that must be at least 1 (`--compute-slots 0` would serve nothing; `--ack-wait-s`,
/// `--max-elements`, `--max-memory-mb`, where clap's range check said "0 is not in
/// 1..18446744073709551615").
pub(super) fn at_least_one<N>(value: &str) -> Result<N, String>
where
    N: std::str::FromStr<Err = std::num::ParseIntError> + PartialEq + From<u8>,
{
    match value.parse::<N>().map_err(|e| e.to_string())? {
        n if n == N::from(0) => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// The longest worker name, in bytes.
pub(super) const MAX_WORKER_NAME: usize = 256;

/// A worker's name: also its key in `KILN_WORKERS` (characters a key cannot hold become
/// `_`), which cannot be empty, start or end with '.', or hold "..". A worker under such a
/// name served jobs but had no heartbeat: no scheduler, `kiln workers` or alert saw it.
pub(super) fn worker_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    // The heartbeat's subject holds it: past the server's 4 KiB control line the server
    // closes the connection at every heartbeat.
    if value.len() > MAX_WORKER_NAME {
        return Err(format!("must be at most {MAX_WORKER_NAME} bytes"));
    }
    if value.starts_with('.') || value.ends_with('.') || value.contains("..") {
        return Err(
            "must not start or end with '.' or hold \"..\" (it is the worker's key in \
             KILN_WORKERS)"
                .into(),
        );
    }
    Ok(value.to_owned())
}
