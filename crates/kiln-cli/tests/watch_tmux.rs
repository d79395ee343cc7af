//! `kiln watch` in a real terminal: tmux runs it at 160×45 against a real server, worker and
//! aggregator; the screen shows the worker, then the jobs as they are submitted, and `q`
//! quits. Skipped (with a note) where tmux is not installed.

mod common;

use std::process::{Command, Output};
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

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "watch"]).stdout)
            .into_owned()
    }

    /// Wait until the screen satisfies `done`; returns it.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never showed; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
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
