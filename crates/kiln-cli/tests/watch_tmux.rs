//! `kiln watch` in a real terminal: tmux runs it at 160×45 against a real server, worker and
//! aggregator; the screen shows the worker, then the jobs as they are submitted, and `q`
//! quits; with the server gone it says so and still quits at once on a key or a signal.
//! Skipped (with a note) where tmux is not installed. And `kiln watch` with a stdout that is
//! not a terminal, stopped by SIGTERM with the server gone.

mod common;

use std::io::BufRead as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, KILN, assert_success};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// The first session's screen.
    fn screen(&self) -> String {
        self.screen_of("watch")
    }

    fn screen_of(&self, session: &str) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", session]).stdout)
            .into_owned()
    }

    /// Wait until the first session's screen satisfies `done`; returns it.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.wait_for_in("watch", what, done)
    }

    /// Wait until `session`'s screen satisfies `done`; returns it.
    fn wait_for_in(&self, session: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen_of(session);
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{session}: {what} never showed; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The words of the kinds-table row of (kind, class), borders removed.
fn kind_row(screen: &str, kind: &str, class: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let words: Vec<String> = line
            .replace('│', " ")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (words.len() > 5 && words[0] == kind && words[1] == class).then_some(words)
    })
}

#[test]
fn watch_renders_in_tmux_and_updates_as_jobs_flow() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    }
    let mut cluster = Cluster::new();
    cluster.cpu_worker();
    cluster.aggregator();
    let tmux = Tmux {
        socket: format!("kiln-watch-test-{}", std::process::id()),
    };
    let nats = format!("NATS_URL={}", cluster.server.url());
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "45",
        "-s",
        "watch",
        "env",
        &nats,
        KILN,
        "watch",
        "--interval-ms",
        "200",
    ]);
    assert!(
        started.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&started.stderr)
    );

    let screen = tmux.wait_for("the live worker", |s| {
        s.contains("kiln watch") && s.contains("test-worker") && s.contains("serving")
    });
    assert!(screen.contains("workers-cpu"), "{screen}");
    assert!(screen.contains("Recent failures"), "{screen}");

    assert_success(&cluster.kiln(&[
        "submit",
        "vector_add",
        "-p",
        "len=1024",
        "--count",
        "30",
        "--wait",
    ]));
    tmux.wait_for("30 vector adds", |s| {
        kind_row(s, "vector_add", "cpu")
            .is_some_and(|w| w[2] == "30" && w[3] == "30" && w[4] == "0")
    });
    // More jobs, one of them failing: the same screen updates.
    assert_success(&cluster.kiln(&["submit", "matmul", "-p", "n=64", "--count", "5", "--wait"]));
    // Size limits are the worker's to enforce: `kiln submit` publishes it, the worker refuses.
    let bad = cluster.kiln(&[
        "submit",
        "matmul",
        "-p",
        "n=100000",
        "--id",
        "watch-too-large",
        "--wait",
    ]);
    assert!(
        !bad.status.success(),
        "a matmul over the worker's limit fails"
    );
    let screen = tmux.wait_for("the matmuls and the failure", |s| {
        kind_row(s, "matmul", "cpu").is_some_and(|w| w[2] == "6" && w[3] == "5" && w[4] == "1")
            && s.contains("watch-too-large")
    });
    assert!(screen.contains("too_large"), "{screen}");
    println!("{screen}");

    tmux.run(&["send-keys", "-t", "watch", "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.run(&["has-session", "-t", "watch"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "kiln watch did not quit on q:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Send `signal` (`TERM`, `INT`) to the process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Long enough for a busy machine to schedule a process that handles a key or a signal at
/// once; far shorter than the tens of seconds `kiln watch` took, when it waited for a
/// server that was gone, to notice one.
const QUITS_WITHIN: Duration = Duration::from_secs(5);

/// The server SIGKILLed under four dashboards: each says the server is unreachable (and no
/// log line is drawn over it), and q, Esc, Ctrl-C and SIGTERM each end theirs at once, with
/// the terminal back from the alternate screen.
#[test]
fn watch_quits_at_once_when_the_server_is_gone() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    }
    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init"]));
    let tmux = Tmux {
        socket: format!("kiln-watch-gone-test-{}", std::process::id()),
    };
    let nats = format!("NATS_URL={}", cluster.server.url());
    let sessions = ["q", "esc", "ctrl-c", "sigterm"];
    for session in sessions {
        // A shell runs kiln and, once it ends, says how and stays: the pane lives on, so tmux
        // reads all kiln wrote. A pane whose process ends is closed as soon as tmux reaps it,
        // dropping output tmux has not read yet (tmux 3.3a's `server_child_exited`); CI once
        // saw kiln's exit status 0 with the alternate screen still on that way.
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "45",
            "-s",
            session,
            "sh",
            "-c",
            r#"env "$@"; echo "kiln exited with status $?"; exec sleep 3600"#,
            "sh",
            &nats,
            "RUST_LOG=warn",
            KILN,
            "watch",
            "--interval-ms",
            "200",
        ]);
        assert!(
            started.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }
    for session in sessions {
        tmux.wait_for_in(session, "the queues", |s| s.contains("workers-cpu"));
    }

    cluster.server.kill();
    for session in sessions {
        let shown = tmux.wait_for_in(session, "the server unreachable", |s| {
            s.contains("server unreachable")
        });
        assert!(
            !shown.contains("lost the connection"),
            "{session}: a log line is drawn over the dashboard:\n{shown}"
        );
    }

    let pane = |session: &str, format: &str| {
        let out = tmux.run(&["display-message", "-p", "-t", session, format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for session in sessions {
        match session {
            "q" => tmux.run(&["send-keys", "-t", session, "q"]),
            "esc" => tmux.run(&["send-keys", "-t", session, "Escape"]),
            "ctrl-c" => tmux.run(&["send-keys", "-t", session, "C-c"]),
            _ => {
                // The pane's process is the shell; `env` replaced itself with kiln, its child.
                let shell = pane(session, "#{pane_pid}");
                // `/proc/PID/task/PID/children` needs CONFIG_PROC_CHILDREN; pgrep does not.
                let children =
                    std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
                        .unwrap_or_else(|_| {
                            let out = Command::new("pgrep")
                                .args(["-P", &shell])
                                .output()
                                .expect("run pgrep");
                            String::from_utf8_lossy(&out.stdout).into_owned()
                        });
                let pid = children.trim().parse().expect("one child: kiln");
                signal(pid, "TERM");
                continue;
            }
        };
    }
    for session in sessions {
        let deadline = Instant::now() + QUITS_WITHIN;
        let screen = loop {
            let screen = tmux.screen_of(session);
            if screen.contains("kiln exited") {
                break screen;
            }
            assert!(
                Instant::now() < deadline,
                "{session}: kiln watch did not quit with the server gone:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            screen.contains("kiln exited with status 0"),
            "{session}: kiln watch's exit:\n{screen}"
        );
        assert_eq!(
            pane(session, "#{alternate_on}"),
            "0",
            "{session}: kiln watch left the alternate screen on:\n{screen}"
        );
    }
}

/// `kiln watch` every 200 ms against `cluster`, its stdout a pipe (no terminal), and the lines
/// it prints as they come.
fn plain_watch(cluster: &Cluster) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(KILN)
        .args(["watch", "--interval-ms", "200"])
        .env("NATS_URL", cluster.server.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kiln watch");
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("kiln's stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, lines)
}

/// The lines before the first of `lines` that contains `needle`, which must come `within`.
fn line_with(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return seen,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no line with {needle:?} from kiln watch: {e}; {seen:?}"),
        }
    }
}

/// With stdout not a terminal, `kiln watch` prints the status every interval; with the server
/// gone it says at once that it is unreachable, and SIGTERM (then SIGINT, for another) ends it at
/// once, with status 0.
#[test]
fn plain_watch_stops_at_once_on_a_signal_when_the_server_is_gone() {
    let mut cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init"]));
    let mut watches: Vec<_> = ["TERM", "INT"]
        .into_iter()
        .map(|signal| {
            let (child, lines) = plain_watch(&cluster);
            (signal, child, lines)
        })
        .collect();
    for (_, _, lines) in &watches {
        line_with(lines, "KILN_JOBS", Duration::from_secs(60));
    }
    cluster.server.kill();
    let killed = Instant::now();
    for (_, _, lines) in &watches {
        line_with(lines, "server unreachable", Duration::from_secs(60));
    }
    // Said at the next refresh, not after the read in flight has waited out its requests'
    // timeout (10 s, then the request's raw error, before).
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "server unreachable said {:?} after the server went",
        killed.elapsed()
    );
    for (name, child, _) in &watches {
        signal(child.id(), name);
    }
    for (name, child, _) in &mut watches {
        let deadline = Instant::now() + QUITS_WITHIN;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("kiln watch did not stop on SIG{name} with the server gone");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "SIG{name}: kiln watch exited with {status}"
        );
    }
}

/// A server that stops answering (paused, overloaded) with its connection still up: the plain
/// watch says it is unreachable after its 10 s bound, never a request's own timeout error,
/// which raced the bound before ("reading KILN_JOBS: request error: timed out").
#[test]
fn plain_watch_says_a_silent_server_is_unreachable() {
    let cluster = Cluster::new();
    assert_success(&cluster.kiln(&["init"]));
    let (mut child, lines) = plain_watch(&cluster);
    line_with(&lines, "KILN_JOBS", Duration::from_secs(30));
    let pid = cluster.server.pid();
    signal(pid, "STOP");
    let before = line_with(
        &lines,
        "server unreachable: no answer within 10 s",
        Duration::from_secs(30),
    );
    signal(pid, "CONT");
    assert!(
        before.iter().all(|l| !l.contains("request error")),
        "{before:?}"
    );
    line_with(&lines, "KILN_JOBS", Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
}
