//! kiln reads the `nats` CLI's conventions: `-s`/`--server`, `NATS_URL`, `--token`/`NATS_TOKEN`,
//! and the contexts `nats context save` writes, with flags and environment overriding a
//! context; a context that is missing or asks for what kiln cannot do is a clear error.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{KILN, assert_success, stdout};
use kiln_testkit::NatsServer;

const TOKEN: &str = "tok-7d1e03b9";

/// `kiln <args>` with a clean NATS environment and its config folder in `config`.
fn kiln(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(KILN);
    command
        .args(args)
        .env("XDG_CONFIG_HOME", config)
        .env("RUST_LOG", "warn");
    for var in [
        "NATS_URL",
        "NATS_CONTEXT",
        "NATS_TOKEN",
        "NATS_USER",
        "NATS_PASSWORD",
    ] {
        command.env_remove(var);
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("run kiln")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_context(config: &Path, name: &str, body: &serde_json::Value) {
    let dir = config.join("nats/context");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.json")), body.to_string()).unwrap();
}

#[test]
fn token_server_and_url_flags_as_nats_spells_them() {
    let server = NatsServer::start_with_args(&["--auth", TOKEN]);
    let config = tempfile::tempdir().unwrap();
    let url = server.url();

    let refused = kiln(config.path(), &[("NATS_URL", &url)], &["init"]);
    assert!(!refused.status.success(), "no token: {}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--token"),
        "the refusal names the token flag: {}",
        stderr(&refused)
    );

    let by_env = kiln(
        config.path(),
        &[("NATS_URL", &url), ("NATS_TOKEN", TOKEN)],
        &["init"],
    );
    assert_success(&by_env);
    for flag in ["-s", "--server", "--nats-url"] {
        let by_flag = kiln(
            config.path(),
            &[],
            &[flag, &url, "--token", TOKEN, "status"],
        );
        assert_success(&by_flag);
        assert!(
            stdout(&by_flag).contains("KILN_JOBS"),
            "{}",
            stdout(&by_flag)
        );
    }
}

#[test]
fn the_selected_context_supplies_server_and_token() {
    let server = NatsServer::start_with_args(&["--auth", TOKEN]);
    let config = tempfile::tempdir().unwrap();
    write_context(
        config.path(),
        "lab",
        &serde_json::json!({"description": "the lab", "url": server.url(), "token": TOKEN}),
    );
    std::fs::write(config.path().join("nats/context.txt"), "lab\n").unwrap();
    let selected = kiln(config.path(), &[], &["init"]);
    assert_success(&selected);

    // Named explicitly, with the selection pointing elsewhere.
    std::fs::write(config.path().join("nats/context.txt"), "elsewhere").unwrap();
    let named = kiln(config.path(), &[], &["--context", "lab", "status"]);
    assert_success(&named);
    let by_env = kiln(config.path(), &[("NATS_CONTEXT", "lab")], &["status"]);
    assert_success(&by_env);

    // A flag overrides the context's value.
    let wrong_token = kiln(
        config.path(),
        &[],
        &["--context", "lab", "--token", "wrong", "status"],
    );
    assert!(!wrong_token.status.success());
    assert!(
        stderr(&wrong_token).contains("refused these credentials"),
        "{}",
        stderr(&wrong_token)
    );
}

#[test]
fn a_url_with_its_own_credentials_is_used_with_them_not_the_contexts() {
    // As nats.go does: the URL's user and password, not the context's (which are wrong here).
    let server = NatsServer::start_with_args(&["--user", "ada", "--pass", "s3cret"]);
    let config = tempfile::tempdir().unwrap();
    let url = server.url();
    let with_credentials = url.replacen("nats://", "nats://ada:s3cret@", 1);
    write_context(
        config.path(),
        "lab",
        &serde_json::json!({"url": url, "user": "ada", "password": "wrong"}),
    );
    let refused = kiln(config.path(), &[], &["--context", "lab", "init"]);
    assert!(!refused.status.success());
    let own = kiln(
        config.path(),
        &[],
        &["--context", "lab", "-s", &with_credentials, "init"],
    );
    assert_success(&own);
    let by_env = kiln(
        config.path(),
        &[("NATS_URL", &with_credentials)],
        &["--context", "lab", "status"],
    );
    assert_success(&by_env);
}

#[test]
fn a_missing_or_unsupported_context_is_a_clear_error() {
    let config = tempfile::tempdir().unwrap();
    let missing = kiln(config.path(), &[], &["--context", "nosuch", "status"]);
    assert!(!missing.status.success());
    let message = stderr(&missing);
    assert!(
        message.contains("NATS context \"nosuch\" not found")
            && message.contains("nats context ls"),
        "{message}"
    );

    write_context(
        config.path(),
        "hub",
        &serde_json::json!({"url": "nats://127.0.0.1:1", "jetstream_domain": "hub"}),
    );
    let domain = kiln(config.path(), &[], &["--context", "hub", "status"]);
    assert!(!domain.status.success());
    assert!(
        stderr(&domain).contains("jetstream_domain"),
        "{}",
        stderr(&domain)
    );

    let traversal = kiln(config.path(), &[], &["--context", "../x", "status"]);
    assert!(!traversal.status.success());
    assert!(
        stderr(&traversal).contains("is not a NATS context name"),
        "{}",
        stderr(&traversal)
    );

    // A selection that names a context since deleted fails what connects, and nothing else:
    // shell completion and `kinds` printed nothing, exit 1.
    std::fs::write(config.path().join("nats/context.txt"), "deleted\n").unwrap();
    let stale = kiln(config.path(), &[], &["status"]);
    assert!(!stale.status.success());
    assert!(
        stderr(&stale).contains("the one `nats context select` chose")
            && !stderr(&stale).contains("leave out --context"),
        "{}",
        stderr(&stale)
    );
    for offline in [&["completions", "bash"][..], &["kinds"]] {
        let out = kiln(config.path(), &[], offline);
        assert!(out.status.success(), "{offline:?}: {}", stderr(&out));
        assert!(!out.stdout.is_empty(), "{offline:?}");
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    let config = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kiln"),
        ("fish", "complete -c kiln"),
    ] {
        let output = kiln(config.path(), &[], &["completions", shell]);
        assert_success(&output);
        let script = stdout(&output);
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(script.contains("submit"), "{shell} completes subcommands");
    }
}
