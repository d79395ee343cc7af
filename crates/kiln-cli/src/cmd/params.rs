//! `kiln submit`'s job parameters: `-p key=value` pairs and `--params JSON`, each read from
//! the command line, a file or standard input.

use anyhow::Context as _;

/// Parse `-p key=value` pairs and `--params JSON` into one JSON object. `--params @FILE` and
/// `-p key=@FILE` read the JSON from a file, `@-` from standard input (for jobs too big for
/// the command line).
pub fn parse_params(pairs: &[String], json: Option<&str>) -> anyhow::Result<serde_json::Value> {
    let mut source = JsonSource::default();
    let mut params = match json {
        Some(text) => {
            let text = source.read("--params", text)?;
            let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "--params is not valid JSON ({e}): give a JSON object, or @FILE / @- to read \
                     it from a file / standard input"
                )
            })?;
            anyhow::ensure!(
                value.is_object(),
                "--params must be a JSON object (`{{\"n\": 512}}`), got {}",
                json_type(&value)
            );
            value
        }
        None => serde_json::json!({}),
    };
    let mut given: Vec<&str> = Vec::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("-p {pair:?}: write parameters as key=value"))?;
        let key = key.trim();
        anyhow::ensure!(
            !key.is_empty(),
            "-p {pair:?}: the parameter name is missing"
        );
        anyhow::ensure!(
            !given.contains(&key),
            "-p {key}=… is given twice: give each parameter once"
        );
        given.push(key);
        let value = if value.starts_with('@') {
            let text = source.read(&format!("-p {key}"), value)?;
            serde_json::from_str(&text)
                .with_context(|| format!("-p {key}={value}: the file is not valid JSON"))?
        } else {
            serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()))
        };
        params[key] = value;
    }
    Ok(params)
}

/// Reads `@FILE` and `@-` arguments; standard input only once.
#[derive(Default)]
struct JsonSource {
    stdin_read: bool,
}

impl JsonSource {
    /// `arg` itself, or with `@FILE` the file's text, with `@-` standard input's, without a
    /// leading byte-order mark (PowerShell writes one; a worker passes over it too).
    fn read(&mut self, flag: &str, arg: &str) -> anyhow::Result<String> {
        let text = self.read_text(flag, arg)?;
        Ok(match text.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => text,
        })
    }

    fn read_text(&mut self, flag: &str, arg: &str) -> anyhow::Result<String> {
        use std::io::Read as _;
        match arg.strip_prefix('@') {
            None => Ok(arg.to_owned()),
            Some("-") => {
                anyhow::ensure!(
                    !self.stdin_read,
                    "{flag}=@-: standard input was already read for another parameter; give \
                     the others as @FILE"
                );
                self.stdin_read = true;
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .with_context(|| format!("{flag}: reading JSON from standard input"))?;
                Ok(text)
            }
            Some("") => anyhow::bail!("{flag}: name a file after @ (or @- for standard input)"),
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("{flag}: reading JSON from {path}")),
        }
    }
}

/// "an array", "a string", … for messages.
fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_files_with_a_byte_order_mark_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("params.json");
        std::fs::write(&file, "\u{feff}{\"n\": 4}").unwrap();
        let at = format!("@{}", file.display());
        assert_eq!(
            parse_params(&[], Some(&at)).unwrap(),
            serde_json::json!({"n": 4})
        );
        let pair = format!("a={at}");
        assert_eq!(
            parse_params(&[pair], None).unwrap(),
            serde_json::json!({"a": {"n": 4}})
        );
    }
}
