//! JSON and bincode bodies, chosen by the `Content-Type` header.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// `Content-Type` of JSON bodies (the default when the header is absent).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The most a bincode body may claim while it is decoded (strings and sequences), in bytes:
/// far above what a body within the server's 1 MiB payload limit can really hold.
pub(crate) const DECODE_LIMIT: usize = 64 << 20;

/// `Content-Type` of bincode bodies: the same structure, kiln's own fast path.
pub const CONTENT_TYPE_BINCODE: &str = "application/x-bincode";

/// How a message body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// JSON (`application/json`), the default.
    #[default]
    Json,
    /// bincode (`application/x-bincode`), the same structure in kiln's own fast path.
    Bincode,
}

impl Codec {
    /// The codec named by a `Content-Type` header value (`None` means JSON).
    pub fn from_content_type(value: Option<&str>) -> Result<Self> {
        let Some(value) = value else {
            return Ok(Codec::Json);
        };
        let mut parts = value.split(';');
        let mime = parts.next().unwrap_or("").trim();
        // A charset other than UTF-8 (or its subset ASCII) would be read as UTF-8: refused.
        let other_charset = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("charset")
                    && !["utf-8", "utf8", "us-ascii"]
                        .iter()
                        .any(|c| v.trim().trim_matches('"').eq_ignore_ascii_case(c))
            })
        });
        match mime.to_ascii_lowercase().as_str() {
            _ if other_charset => Err(Error::ContentType(value.to_owned())),
            "" | CONTENT_TYPE_JSON | "text/json" | "text/plain" => Ok(Codec::Json),
            CONTENT_TYPE_BINCODE | "application/bincode" => Ok(Codec::Bincode),
            _ => Err(Error::ContentType(value.to_owned())),
        }
    }

    /// The codec named by the `Content-Type` header of a NATS message.
    pub fn from_headers(headers: Option<&async_nats::HeaderMap>) -> Result<Self> {
        // Made at compile time: a lookup by `&str` allocates the name first.
        const CONTENT_TYPE: async_nats::header::HeaderName =
            async_nats::header::HeaderName::from_static("Content-Type");
        let value = headers
            .and_then(|h| h.get(CONTENT_TYPE))
            .map(|v| v.as_str());
        Self::from_content_type(value)
    }

    /// The `Content-Type` header value that names this codec.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::Json => CONTENT_TYPE_JSON,
            Codec::Bincode => CONTENT_TYPE_BINCODE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Json => "JSON",
            Codec::Bincode => "bincode",
        }
    }

    /// Encode a body; `what` names the value in the error if it cannot be encoded.
    pub fn encode<T: Serialize>(self, what: &'static str, value: &T) -> Result<Vec<u8>> {
        let encoded = match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Codec::Bincode => bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| e.to_string()),
        };
        encoded.map_err(|message| Error::Encode {
            what,
            codec: self.name(),
            message,
        })
    }

    /// Decode a body. Bincode reads lengths before the data they announce: a 10-byte body
    /// can claim a string of 4·10¹⁸ bytes, whose allocation aborts the process. Decoding
    /// stops with an error once what it would hold passes [`DECODE_LIMIT`].
    pub fn decode<T: DeserializeOwned>(self, what: &'static str, bytes: &[u8]) -> Result<T> {
        let decoded = match self {
            // Decoded again only to name the field an error is about: no cost when it is not.
            // (Trailing characters fail only the first, which says so.) A UTF-8 byte-order
            // mark, which Windows tools write, is passed over (RFC 8259 allows it).
            Codec::Json => {
                let bytes = without_bom(bytes);
                serde_json::from_slice(bytes).map_err(|e| {
                    let message =
                        json_at_path::<T, _>(&mut serde_json::Deserializer::from_slice(bytes))
                            .err()
                            .unwrap_or_else(|| e.to_string());
                    format!("{message}{}{}", not_in_json(bytes, &e), in_utf16(bytes))
                })
            }
            Codec::Bincode => bincode::serde::decode_from_slice(
                bytes,
                bincode::config::standard().with_limit::<DECODE_LIMIT>(),
            )
            .map_err(|e| bincode_error(bytes, &e))
            .and_then(|(value, read)| {
                if read == bytes.len() {
                    Ok(value)
                } else {
                    Err(format!("{} trailing bytes", bytes.len() - read))
                }
            }),
        };
        decoded.map_err(|message| Error::Decode {
            what,
            codec: self.name(),
            message,
        })
    }
}

/// A bincode error in words: bincode's own are Rust debug dumps (`UnexpectedVariant {
/// type_name: "Option<T>", … found: 123 }`). A body that is JSON (sent with bincode's
/// `Content-Type`) is said to be.
fn bincode_error(bytes: &[u8], e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    let looks_like_json = matches!(
        without_bom(bytes).iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    ) && serde_json::from_slice::<serde::de::IgnoredAny>(without_bom(bytes))
        .is_ok();
    if looks_like_json {
        return "the body is JSON, but the message's Content-Type says bincode: send it \
                without that header (JSON is the default) or encode it as bincode"
            .to_owned();
    }
    match e {
        E::UnexpectedEnd { additional } => {
            format!("the body ends early ({additional} more bytes expected)")
        }
        E::LimitExceeded => "the body declares more data than a job may hold".to_owned(),
        E::UnexpectedVariant { found, .. } => {
            format!(
                "the body is not a job in kiln's bincode layout (a tag of {found} where none fits)"
            )
        }
        E::Utf8 { .. } => "a string in the body is not UTF-8".to_owned(),
        // A value the layout holds but kiln refuses (a NaN in inline values): its own words.
        E::OtherString(message) => message.clone(),
        E::Other(message) => (*message).to_owned(),
        other => format!("the body is not a job in kiln's bincode layout ({other})"),
    }
}

/// `bytes` without a leading UTF-8 byte-order mark.
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// What to add to a JSON error at a value JSON has no word for (`NaN`, `Infinity`, as Python's
/// `json.dumps` and JavaScript's `String(x)` write them): that it has none.
fn not_in_json(bytes: &[u8], e: &serde_json::Error) -> &'static str {
    if e.line() == 0 {
        return "";
    }
    let line_start: usize = bytes
        .split(|&b| b == b'\n')
        .take(e.line() - 1)
        .map(|line| line.len() + 1)
        .sum();
    // serde_json's column is that of the byte it stopped at, counted from 1.
    let at = line_start + e.column().saturating_sub(1);
    let words = [
        &b"NaN"[..],
        b"Infinity",
        b"-Infinity",
        b"nan",
        b"inf",
        b"-inf",
    ];
    let found = [at, at.saturating_sub(1)].into_iter().any(|at| {
        let rest = bytes.get(at..).unwrap_or_default();
        words.iter().any(|word| rest.starts_with(word))
    });
    match found {
        true => {
            " (JSON has no NaN or infinities: send finite numbers, or the values in a .npy file)"
        }
        false => "",
    }
}

/// What to add to a JSON error for a body in UTF-16 (as PowerShell's `Out-File` and .NET's
/// `Encoding.Unicode` write text): JSON on the wire is UTF-8.
pub fn in_utf16(bytes: &[u8]) -> &'static str {
    let start = bytes.get(..2).unwrap_or_default();
    // A byte-order mark, or an ASCII character with a zero byte beside it (`{\0` or `\0{`).
    let utf16 = matches!(start, [0xFF, 0xFE] | [0xFE, 0xFF])
        || matches!(start, [a, 0] | [0, a] if a.is_ascii_graphic() || a.is_ascii_whitespace());
    match utf16 {
        true => " (the body looks like UTF-16 text: send JSON as UTF-8)",
        false => "",
    }
}

/// Deserialize JSON, an error naming the field it is about: `params.n: invalid type: string
/// "abc", expected u64 at line 1 column 18` (the path is left out at the top level).
pub fn json_at_path<'de, T, D>(deserializer: D) -> std::result::Result<T, String>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let hint = whole_number_hint(&inner);
        match path {
            // `?`: serde_path_to_error's mark for a place it cannot name (the body cut short
            // after its last field), which said nothing to the sender.
            path if path == "." || path == "?" => format!("{inner}{hint}"),
            // A key is whatever the sender wrote: at most the first 80 characters of the path.
            path => match path.char_indices().nth(80) {
                Some((end, _)) => format!("{}…: {inner}{hint}", &path[..end]),
                None => format!("{path}: {inner}{hint}"),
            },
        }
    })
}

/// What to add to serde's `invalid type: floating point `1.8446744073709552e19`, expected
/// u64`: JSON has one kind of number, and a whole number past the field's range is read as a
/// float, which said "floating point" of a number written without a point.
fn whole_number_hint(message: &str) -> String {
    // A float (a fraction, or past u64), or a negative whole number (`-1`).
    if !message.contains("invalid type: floating point")
        && !message.contains("invalid value: integer `-")
    {
        return String::new();
    }
    let ranges = [
        ("u8", u64::from(u8::MAX)),
        ("u16", u64::from(u16::MAX)),
        ("u32", u64::from(u32::MAX)),
        ("u64", u64::MAX),
        ("usize", usize::MAX as u64),
    ];
    ranges
        .iter()
        .find(|(name, _)| {
            let expected = format!("expected {name}");
            message.ends_with(&expected) || message.contains(&format!("{expected} "))
        })
        .map(|(_, max)| format!(" (a whole number from 0 to {max}, without a fraction)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f64 reads back as the number its text names: `kiln result` printed values up to
    /// an ulp off those stored, and inline f32 inputs rounded otherwise than numpy's
    /// float64-to-float32 (serde_json reads exactly only with `float_roundtrip`).
    #[test]
    fn numbers_read_back_exactly() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let value = f64::from_bits(x);
            if !value.is_finite() {
                continue;
            }
            let text = serde_json::to_string(&value).unwrap();
            let back: f64 = Codec::Json.decode("test", text.as_bytes()).unwrap();
            assert_eq!(back.to_bits(), value.to_bits(), "{text}");
        }
        let stored: f64 = Codec::Json.decode("test", b"2322.1484154760838").unwrap();
        assert_eq!(
            serde_json::to_string(&stored).unwrap(),
            "2322.1484154760838"
        );
    }

    #[test]
    fn a_utf16_body_is_said_to_be() {
        let text = r#"{"id":"a","params":{}}"#;
        let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let bom_le = [&[0xFF, 0xFE][..], &le].concat();
        for body in [le, be, bom_le] {
            let err = Codec::Json
                .decode::<serde_json::Value>("job", &body)
                .unwrap_err();
            assert!(err.to_string().contains("looks like UTF-16"), "{err}");
        }
        let err = Codec::Json
            .decode::<serde_json::Value>("job", b"{x")
            .unwrap_err();
        assert!(!err.to_string().contains("UTF-16"), "{err}");
    }

    #[test]
    fn content_type_selects_codec() {
        assert_eq!(Codec::from_content_type(None).unwrap(), Codec::Json);
        assert_eq!(
            Codec::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Codec::Json
        );
        assert_eq!(
            Codec::from_content_type(Some("application/x-bincode")).unwrap(),
            Codec::Bincode
        );
        let err = Codec::from_content_type(Some("text/xml")).unwrap_err();
        assert!(err.to_string().contains("text/xml"), "{err}");
        // A body in another charset would be read as UTF-8.
        assert_eq!(
            Codec::from_content_type(Some("application/json; charset=\"UTF-8\"")).unwrap(),
            Codec::Json
        );
        let err = Codec::from_content_type(Some("application/json; charset=utf-16")).unwrap_err();
        assert!(err.to_string().contains("charset=utf-16"), "{err}");
    }

    #[test]
    fn bincode_round_trips_and_rejects_trailing_bytes() {
        let value = (7u32, vec![1.5f32, 2.5], Some("x".to_string()));
        let mut bytes = Codec::Bincode.encode("test", &value).unwrap();
        let back: (u32, Vec<f32>, Option<String>) = Codec::Bincode.decode("test", &bytes).unwrap();
        assert_eq!(back, value);
        bytes.push(0);
        let err = Codec::Bincode
            .decode::<(u32, Vec<f32>, Option<String>)>("test", &bytes)
            .unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn bincode_lengths_past_the_limit_are_refused_before_anything_is_allocated() {
        // `Some(` then a string length of 4·10¹⁸ (varint 0xfd + u64), and no string.
        let mut bytes = vec![0x01, 0xfd];
        bytes.extend_from_slice(&4_000_000_000_000_000_000u64.to_le_bytes());
        let err = Codec::Bincode
            .decode::<(Option<String>, u32)>("job", &bytes)
            .unwrap_err();
        assert!(err.to_string().contains("bincode"), "{err}");
        // The same for a sequence.
        let mut bytes = vec![0xfd];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(Codec::Bincode.decode::<Vec<f32>>("job", &bytes).is_err());
    }

    #[test]
    fn bincode_errors_are_words_and_a_json_body_is_named() {
        type Job = (Option<String>, Vec<f32>);
        let json = br#"{"id":"a","params":{"n":3}}"#;
        let err = Codec::Bincode
            .decode::<Job>("job", json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the body is JSON, but the message's Content-Type says bincode"),
            "{err}"
        );
        assert!(!err.contains("UnexpectedVariant"), "{err}");
        // Not JSON: a tag that fits no variant, and a body cut short.
        let err = Codec::Bincode
            .decode::<Job>("job", &[7, 0])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a tag of 7 where none fits"), "{err}");
        let err = Codec::Bincode
            .decode::<Job>("job", &[1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("the body ends early"), "{err}");
        assert!(!err.contains('{'), "{err}");
        // A value the layout holds that the job refuses: the job's words, not a debug dump.
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        struct Finite(#[serde(deserialize_with = "finite")] f32);
        fn finite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
            let x = <f32 as serde::Deserialize>::deserialize(d)?;
            match x.is_finite() {
                true => Ok(x),
                false => Err(serde::de::Error::custom("element [0] is NaN or infinite")),
            }
        }
        let nan = Codec::Bincode.encode("job", &Finite(f32::NAN)).unwrap();
        let err = Codec::Bincode
            .decode::<Finite>("job", &nan)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with(": element [0] is NaN or infinite"), "{err}");
        assert!(
            !err.contains("OtherString") && !err.contains("layout"),
            "{err}"
        );
    }

    #[test]
    fn a_whole_number_past_its_range_is_said_to_be() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Job {
            seed: Option<u64>,
            n: Option<u32>,
        }
        let err = Codec::Json
            .decode::<Job>("job", br#"{"seed": 18446744073709551616}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("seed: invalid type: floating point")
                && err.ends_with(
                    "(a whole number from 0 to 18446744073709551615, without a fraction)"
                ),
            "{err}"
        );
        let err = Codec::Json
            .decode::<Job>("job", br#"{"n": 1.5}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("(a whole number from 0 to 4294967295, without a fraction)"),
            "{err}"
        );
        let err = Codec::Json
            .decode::<Job>("job", br#"{"seed": -1}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("seed: invalid value: integer `-1`")
                && err.ends_with(
                    "(a whole number from 0 to 18446744073709551615, without a fraction)"
                ),
            "{err}"
        );
        let err = Codec::Json
            .decode::<Job>("job", br#"{"n": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("whole number"), "{err}");
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Params {
            n: u64,
            hidden: Vec<u64>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Job {
            params: Params,
        }
        let err = Codec::Json
            .decode::<Job>("job", br#"{"params": {"n": "abc", "hidden": []}}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not decode job as JSON: params.n: invalid type: string \"abc\", expected \
             u64 at line 1 column 22"
        );
        // Trailing characters: the whole body is not one JSON value.
        let err = Codec::Json
            .decode::<Job>("job", br#"{"params": {"n": 1, "hidden": []}}}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not decode job as JSON: trailing characters at line 1 column 35"
        );
        // Cut short: no path of `?`.
        let err = Codec::Json
            .decode::<Job>("job", br#"{"params": {"n": 1, "hidden": []}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not decode job as JSON: EOF while parsing an object at line 1 column 33"
        );
        let err = json_at_path::<Params, _>(serde_json::json!({"n": 1, "hidden": [2, -1]}));
        assert_eq!(
            err.unwrap_err(),
            "hidden[1]: invalid value: integer `-1`, expected u64 (a whole number from 0 to \
             18446744073709551615, without a fraction)"
        );
        // A long key is cut in the path (the decoder's own message may repeat it).
        let long = "k".repeat(500);
        let err = json_at_path::<Params, _>(serde_json::json!({ "n": 1, long.clone(): 1 }));
        let message = err.unwrap_err();
        let path = format!("{}…: unknown field `{long}`", &long[..80]);
        assert!(message.starts_with(&path), "{message}");
        let err = json_at_path::<Params, _>(serde_json::json!("x"));
        assert_eq!(
            err.unwrap_err(),
            "invalid type: string \"x\", expected struct Params"
        );
    }
}
