//! The lines kiln writes on stderr outside its `tracing` events (a service's last line, a fatal
//! error) in the format `--log-format` chose: with `json` (the container images' and the
//! Kubernetes manifests' setting) a log collector reads JSON lines only, the reason a role
//! exited included.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Level;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};

static JSON: AtomicBool = AtomicBool::new(false);

/// Set once, where logging is set up.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Writes `message` on stderr: as it is in text logs; in JSON logs as one line of the shape
/// `tracing`'s JSON events have (`timestamp`, `level`, `fields.message`, `target`). Written
/// directly, not as an event: a `RUST_LOG` filter that leaves kiln's own target out must not
/// drop why a process exited.
pub fn say(level: Level, message: &str) {
    use std::io::Write as _;
    let line = match JSON.load(Ordering::Relaxed) {
        true => json_line(level, message),
        false => message.to_owned(),
    };
    // Not `eprintln!`, which panics when stderr's reader has gone: a worker whose log pipe
    // closed exited 101 at its next line, as if it had crashed.
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// One line as `tracing_subscriber`'s JSON format writes an event, its fields in its order.
#[derive(serde::Serialize)]
struct Line<'a> {
    timestamp: &'a str,
    level: &'a str,
    fields: Fields<'a>,
    target: &'a str,
}

#[derive(serde::Serialize)]
struct Fields<'a> {
    message: &'a str,
}

fn json_line(level: Level, message: &str) -> String {
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    let line = Line {
        timestamp: &timestamp,
        level: level.as_str(),
        fields: Fields { message },
        target: "kiln",
    };
    serde_json::to_string(&line).unwrap_or_else(|_| format!("{message:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_json_line_is_shaped_as_tracings_events() {
        let line = super::json_line(tracing::Level::ERROR, "kiln: no \"server\"\nat all");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "kiln: no \"server\"\nat all");
        assert_eq!(v["target"], "kiln");
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.starts_with("20") && ts.ends_with('Z'), "{ts}");
        assert!(!line.contains('\n'), "one line: {line}");
    }
}
