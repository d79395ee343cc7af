//! The `nats` CLI's contexts (ADR-21): `~/.config/nats/context/<name>.json`, the selected one
//! named in `~/.config/nats/context.txt`, so that a server and credentials set up once with
//! `nats context save` serve `kiln` as well. Flags and environment variables override a
//! context's values, as with `nats`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The fields of a context file kiln uses; the others (JetStream domain, inbox prefix, nsc, …)
/// are refused when set, rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NatsContext {
    #[serde(default)]
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) token: String,
    #[serde(default)]
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) password: String,
    #[serde(default)]
    pub(crate) creds: String,
    #[serde(default)]
    pub(crate) nkey: String,
    #[serde(default)]
    pub(crate) cert: String,
    #[serde(default)]
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) ca: String,
    #[serde(default)]
    pub(crate) nsc: String,
    #[serde(default)]
    pub(crate) jetstream_domain: String,
    #[serde(default)]
    pub(crate) jetstream_api_prefix: String,
    #[serde(default)]
    pub(crate) inbox_prefix: String,
    #[serde(default)]
    pub(crate) user_jwt: String,
    #[serde(default)]
    pub(crate) tls_first: bool,
    #[serde(default)]
    pub(crate) socks_proxy: String,
}

/// `$XDG_CONFIG_HOME/nats`, else `~/.config/nats`.
fn config_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("nats"))
}

/// The context called `name`, or, without a name, the one `nats context select` chose (none
/// when nothing is selected). A named context that does not exist is an error.
pub(crate) fn load(name: Option<&str>) -> Result<Option<(String, NatsContext)>> {
    let Some(dir) = config_dir() else {
        return Ok(None);
    };
    let selected = name.is_none();
    let name = match name {
        Some(name) => name.to_owned(),
        None => match std::fs::read_to_string(dir.join("context.txt")) {
            Ok(selected) if !selected.trim().is_empty() => selected.trim().to_owned(),
            _ => return Ok(None),
        },
    };
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(Error::config(format!(
            "{name:?} is not a NATS context name"
        )));
    }
    let path = dir.join("context").join(format!("{name}.json"));
    // What to do about it: the name came from a flag or variable, or from the selection.
    let instead = match selected {
        true => format!(
            "the one `nats context select` chose ({}): select another, or give --context",
            dir.join("context.txt").display()
        ),
        false => "leave out --context / NATS_CONTEXT".to_owned(),
    };
    let context = read(&path).map_err(|source| Error::Config {
        message: format!(
            "NATS context {name:?}{} ({}), {instead}; `nats context ls` lists them",
            match path.exists() {
                true => "",
                false => " not found",
            },
            path.display()
        ),
        source: Some(source.into()),
    })?;
    Ok(Some((name, context)))
}

/// The context file at `path`; the error says why it cannot be used.
fn read(path: &Path) -> Result<NatsContext, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let context: NatsContext =
        serde_json::from_str(&text).map_err(|e| format!("not a context file: {e}"))?;
    for (field, value) in [
        ("nsc", &context.nsc),
        ("jetstream_domain", &context.jetstream_domain),
        ("jetstream_api_prefix", &context.jetstream_api_prefix),
        ("inbox_prefix", &context.inbox_prefix),
        ("user_jwt", &context.user_jwt),
        ("socks_proxy", &context.socks_proxy),
    ] {
        if !value.is_empty() {
            return Err(format!(
                "it sets {field}, which kiln does not support; use a context without it"
            ));
        }
    }
    Ok(context)
}

/// `Some(text)` unless empty.
pub(crate) fn given(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// A path from a context file, with a leading `~/` meaning the home folder (as `nats` reads it).
pub(crate) fn path(text: &str) -> Option<PathBuf> {
    let text = given(text)?;
    match (text.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Some(PathBuf::from(home).join(rest)),
        _ => Some(PathBuf::from(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_context_and_refuses_unsupported_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(
            &file,
            r#"{"description":"x","url":"nats://a:4222,nats://b:4222","token":"t","creds":"","tls_first":false}"#,
        )
        .unwrap();
        let context = read(&file).unwrap();
        assert_eq!(context.url, "nats://a:4222,nats://b:4222");
        assert_eq!(given(&context.token).as_deref(), Some("t"));
        assert_eq!(given(&context.creds), None);
        std::fs::write(&file, r#"{"url":"nats://a:4222","jetstream_domain":"hub"}"#).unwrap();
        let err = read(&file).unwrap_err();
        assert!(err.contains("jetstream_domain"), "{err}");
        // A SOCKS proxy kiln cannot go through is refused; TLS first is honoured.
        std::fs::write(&file, r#"{"url":"nats://a:4222","socks_proxy":"p:1080"}"#).unwrap();
        let err = read(&file).unwrap_err();
        assert!(err.contains("socks_proxy"), "{err}");
        std::fs::write(&file, r#"{"url":"nats://a:4222","tls_first":true}"#).unwrap();
        assert!(read(&file).unwrap().tls_first);
    }
}
