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
            let value: serde_json::Value = unique_json(&text).map_err(|e| {
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
            unique_json(&text)
                .with_context(|| format!("-p {key}={value}: the file is not valid JSON"))?
        } else {
            match serde_json::from_str::<serde_json::Value>(value) {
                Ok(json) => {
                    unique_json(value).with_context(|| format!("-p {key}={value}"))?;
                    json
                }
                // An array or object meant as one; no parameter is a string starting so.
                Err(e) if value.trim_start().starts_with(['[', '{']) => {
                    let nan = ["NaN", "nan", "Infinity", "inf"]
                        .iter()
                        .any(|word| value.contains(word));
                    anyhow::bail!(
                        "-p {key}={value}: not valid JSON ({e}){}",
                        match nan {
                            true =>
                                "; JSON has no NaN or Infinity: give values holding them \
                                     as a .npy file (--input KEY=@FILE)",
                            false => "",
                        }
                    )
                }
                Err(_) => serde_json::Value::String(value.to_owned()),
            }
        };
        params[key] = value;
    }
    Ok(params)
}

/// `text` as JSON, refused when an object in it gives a key twice: serde_json keeps the last
/// (`{"a": [1, 2], "a": [5, 5]}` ran with the second `a`), where a worker refuses such a job.
fn unique_json(text: &str) -> serde_json::Result<serde_json::Value> {
    serde_json::from_str::<Unique>(text)?;
    serde_json::from_str(text)
}

/// Any JSON value none of whose objects gives a key twice.
struct Unique;

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Unique)
    }
}

impl<'de> serde::de::Visitor<'de> for Unique {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} is given twice in one object"
                )));
            }
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
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
        match arg.strip_prefix('@') {
            None => Ok(arg.to_owned()),
            Some("-") => {
                anyhow::ensure!(
                    !self.stdin_read,
                    "{flag}=@-: standard input was already read for another parameter; give \
                     the others as @FILE"
                );
                self.stdin_read = true;
                read_limited(std::io::stdin(), flag, "standard input")
            }
            Some("") => anyhow::bail!("{flag}: name a file after @ (or @- for standard input)"),
            Some(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("{flag}: reading JSON from {path}"))?;
                read_limited(file, flag, path)
            }
        }
    }
}

/// Most JSON read for parameters: a NATS server takes no message over 64 MiB (1 MiB by
/// default), so no job body could carry more. Read whole, `@/dev/zero` grew the process
/// without bound.
const MAX_PARAMS_TEXT: u64 = 64 << 20;

fn read_limited(reader: impl std::io::Read, flag: &str, from: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    reader
        .take(MAX_PARAMS_TEXT + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{flag}: reading JSON from {from}"))?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_PARAMS_TEXT,
        "{flag}: {from} holds more than 64 MiB of JSON, more than any job can carry (a NATS \
         server takes messages of 1 MiB by default, 64 MiB at most): store large inputs as \
         objects (--input KEY=@FILE) and name them"
    );
    Ok(text)
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
    fn an_array_that_is_not_json_is_refused_not_sent_as_a_string() {
        let error = parse_params(&["b=[NaN,2]".into()], None)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("-p b=[NaN,2]: not valid JSON (expected value"),
            "{error}"
        );
        assert!(error.contains("JSON has no NaN or Infinity"), "{error}");
        let error = parse_params(&["a=[1,2".into()], None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not valid JSON (EOF while parsing a list"),
            "{error}"
        );
        assert!(!error.contains("NaN"), "{error}");
        let plain = parse_params(&["filter=sobel".into()], None).unwrap();
        assert_eq!(plain, serde_json::json!({"filter": "sobel"}));
    }

    #[test]
    fn params_past_what_a_job_can_carry_are_refused_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("huge.json");
        let huge = std::fs::File::create(&file).unwrap();
        huge.set_len(MAX_PARAMS_TEXT + 2).unwrap();
        let at = format!("@{}", file.display());
        let error = parse_params(&[], Some(&at)).unwrap_err().to_string();
        assert!(error.contains("holds more than 64 MiB of JSON"), "{error}");
    }

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

    /// A key given twice ran with the last value, where a worker refuses such a job.
    #[test]
    fn a_key_given_twice_is_refused() {
        let e = parse_params(&[], Some(r#"{"a": [1, 2], "b": [1, 2], "a": [5, 5]}"#)).unwrap_err();
        assert!(
            format!("{e:#}").contains("the key \"a\" is given twice"),
            "{e:#}"
        );
        let nested = [r#"a={"object": "x", "object": "y"}"#.to_owned()];
        let e = parse_params(&nested, None).unwrap_err();
        assert!(
            format!("{e:#}").contains("the key \"object\" is given twice"),
            "{e:#}"
        );
        let fine = parse_params(
            &[r#"a=[{"n": 1}, {"n": 2}]"#.to_owned()],
            Some(r#"{"b": 1}"#),
        );
        assert_eq!(
            fine.unwrap(),
            serde_json::json!({"a": [{"n": 1}, {"n": 2}], "b": 1})
        );
    }
}
