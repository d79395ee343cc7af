//! An invalid value read from an environment variable, named as that variable: clap names
//! the flag (`--ack-wait-s`), which someone who set `KILN_ACK_WAIT_S` in a Deployment never
//! typed and may not find.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// The message for `error` when the invalid value came from an environment variable (the
/// flag it sets is not on `argv`, and the variable holds the value), else `None`.
pub(super) fn message(cmd: &clap::Command, error: &clap::Error, argv: &[String]) -> Option<String> {
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
    let flag = format!("--{long}");
    if argv
        .iter()
        .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
    {
        return None;
    }
    let env = env_of(cmd, &long, &value)?;
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
         {flag}){why}"
    ))
}

/// The environment variable of an argument named `--long` somewhere in `cmd` that holds
/// `value` now.
fn env_of(cmd: &clap::Command, long: &str, value: &str) -> Option<String> {
    let here = cmd.get_arguments().find_map(|arg| {
        let env = arg.get_env()?.to_str()?;
        (arg.get_long() == Some(long) && std::env::var(env).ok()? == value).then(|| env.to_owned())
    });
    here.or_else(|| {
        cmd.get_subcommands()
            .find_map(|sub| env_of(sub, long, value))
    })
}
