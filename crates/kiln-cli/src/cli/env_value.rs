//! An invalid value read from an environment variable, named as that variable: clap names
//! the flag (`--ack-wait-s`), which someone who set `KILN_ACK_WAIT_S` in a Deployment never
//! typed and may not find.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The message for `error` when the invalid value came from an environment variable (no
/// argument on `argv` carries it, and the variable of the flag, in the subcommand `argv`
/// names, holds it), else `None`.
pub(super) fn message(cmd: &clap::Command, error: &clap::Error, argv: &[String]) -> Option<String> {
    if error.kind() == ErrorKind::ArgumentConflict {
        return conflict(cmd, error, argv);
    }
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let long = context(ContextKind::InvalidArg)?
        .split_whitespace()
        .next()?
        .strip_prefix("--")?
        .to_owned();
    let value = context(ContextKind::InvalidValue)?;
    // Typed (`--device GPU`, `--device=GPU`, `-dGPU`): clap's message names it rightly.
    if argv.iter().skip(1).any(|a| a.ends_with(value.as_str())) {
        return None;
    }
    let env = env_of(&path(cmd, argv), &long, &value)?;
    let why = match (error.kind(), error.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            format!(" [possible values: {}]", valid.join(", "))
        }
        _ => std::error::Error::source(error)
            .map(|e| format!(": {e}"))
            .unwrap_or_default(),
    };
    Some(format!(
        "invalid value '{value}' in the environment variable {env} (the setting of \
         --{long}){why}"
    ))
}

/// Two flags that cannot go together (two spellings of one setting), one of them or both set
/// by an environment variable: named as the variables. clap named the flags, one of which the
/// user never typed (`--ack-wait` with `KILN_ACK_WAIT_S` set in a Deployment). `None` when
/// both were typed.
fn conflict(cmd: &clap::Command, error: &clap::Error, argv: &[String]) -> Option<String> {
    let long = |kind| -> Option<String> {
        let arg = match error.get(kind)? {
            ContextValue::String(s) => s.clone(),
            ContextValue::Strings(v) => v.first()?.clone(),
            _ => return None,
        };
        Some(
            arg.split_whitespace()
                .next()?
                .strip_prefix("--")?
                .to_owned(),
        )
    };
    let (first, prior) = (long(ContextKind::InvalidArg)?, long(ContextKind::PriorArg)?);
    let path = path(cmd, argv);
    let said = |long: &str| -> (String, bool) {
        let flag = format!("--{long}");
        let typed = argv
            .iter()
            .skip(1)
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        match (typed, env_set(&path, long)) {
            (false, Some(env)) => (format!("the environment variable {env} ({flag})"), true),
            _ => (flag, false),
        }
    };
    let ((first, env_first), (prior, env_prior)) = (said(&first), said(&prior));
    (env_first || env_prior)
        .then(|| format!("{first} cannot be used with {prior}: they set the same thing; give one"))
}

/// The environment variable of argument `--long` (as [`env_of`] finds it) when it is set.
fn env_set(path: &[&clap::Command], long: &str) -> Option<String> {
    let arg = path
        .iter()
        .rev()
        .find_map(|cmd| cmd.get_arguments().find(|a| a.get_long() == Some(long)))?;
    let env = arg.get_env()?.to_str()?;
    std::env::var_os(env).is_some().then(|| env.to_owned())
}

/// The command and the subcommands `argv` names, outermost first.
fn path<'a>(cmd: &'a clap::Command, argv: &[String]) -> Vec<&'a clap::Command> {
    let mut path = vec![cmd];
    for arg in argv.iter().skip(1) {
        let here = path[path.len() - 1];
        if let Some(sub) = here.find_subcommand(arg) {
            path.push(sub);
        }
    }
    path
}

/// The environment variable of argument `--long` of the innermost command in `path` that has
/// one (global flags live on the outer ones), when it holds `value` now.
fn env_of(path: &[&clap::Command], long: &str, value: &str) -> Option<String> {
    let arg = path
        .iter()
        .rev()
        .find_map(|cmd| cmd.get_arguments().find(|a| a.get_long() == Some(long)))?;
    let env = arg.get_env()?.to_str()?;
    (std::env::var(env).ok()? == value).then(|| env.to_owned())
}

/// Why the server URL(s) given (`--nats-url`, else `NATS_URL`) cannot be used, naming where
/// they were set; `None` when they parse (or none was given).
pub(super) fn bad_server(given: Option<&str>, argv: &[String]) -> Option<String> {
    let given = given?;
    let (bad, why) = kiln_client::server_addrs(given).err()?;
    let typed = argv.iter().skip(1).any(|a| a.ends_with(given));
    let source = if typed {
        "--nats-url"
    } else {
        "the environment variable NATS_URL"
    };
    Some(format!(
        "{bad:?} in {source} {}: {why}",
        kiln_client::NOT_A_NATS_URL
    ))
}
