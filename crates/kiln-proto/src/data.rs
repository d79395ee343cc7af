//! User data by reference: the `KILN_DATA` object store bucket, how a job names an object
//! (`{"object": "NAME"}`), and how a result names the object holding its output.

use serde::{Deserialize, Serialize};

/// The object store bucket that holds job inputs and outputs.
pub const BUCKET_DATA: &str = "KILN_DATA";

/// A job parameter given by reference: `{"object": "NAME"}`, with `"tensor": "KEY"` to pick
/// one entry of a safetensors file and `"sha256": "HEX"` to have the worker check the
/// object's digest before using it.
///
/// In JSON only the object form is read: serde's own reading of a struct also takes an array
/// of its fields, so that `"dataset": [[1, 2, 0]]` was refused as "expected a string" and a
/// bare name as "expected struct ObjectRef"; both now say what is expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct ObjectRef {
    /// The object's name in `KILN_DATA`.
    pub object: String,
    /// The entry of a safetensors file to use. (Never skipped when absent: bincode, which
    /// kiln also speaks, has no field names and cannot skip one.)
    #[serde(default)]
    pub tensor: Option<String>,
    /// The SHA-256 the object must have, in hex.
    #[serde(default)]
    pub sha256: Option<String>,
}

impl Serialize for ObjectRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ObjectRef::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for ObjectRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, Visitor, value::MapAccessDeserializer};
        struct Reference;
        impl<'de> Visitor<'de> for Reference {
            type Value = ObjectRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "an object reference {\"object\": \"NAME\"} naming an object in KILN_DATA",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ObjectRef, A::Error> {
                ObjectRef::deserialize(MapAccessDeserializer::new(map))
            }
        }
        match deserializer.is_human_readable() {
            true => deserializer.deserialize_any(Reference),
            // bincode carries the fields in order, and cannot look ahead.
            false => ObjectRef::deserialize(deserializer),
        }
    }
}

impl ObjectRef {
    /// A reference to the object called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            object: name.into(),
            tensor: None,
            sha256: None,
        }
    }
}

/// Where a job's output goes (the job envelope's `output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// Inline in the result when the job sent its own data and the output is small (at most
    /// the worker's inline limit); stored as `.npy` when it sent its own data and the output
    /// is larger; a summary (shape, checksum, norms) for generated inputs.
    #[default]
    Auto,
    /// Stored in `KILN_DATA` as `.npy` whatever its size.
    Object,
    /// Stored as `.npy`.
    Npy,
    /// Stored as safetensors (one entry, named after the output).
    Safetensors,
    /// Stored as an 8-bit PNG (image outputs: conv2d).
    Png,
}

impl OutputMode {
    /// Whether the output must be stored as an object.
    pub fn stores(self) -> bool {
        !matches!(self, OutputMode::Auto)
    }

    /// The format it is stored in: `npy`, `safetensors` or `png`.
    pub fn format(self) -> &'static str {
        match self {
            OutputMode::Auto | OutputMode::Object | OutputMode::Npy => "npy",
            OutputMode::Safetensors => "safetensors",
            OutputMode::Png => "png",
        }
    }
}

/// A stored object as a result names it (`output.object`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectDescriptor {
    /// The object store that holds it (`KILN_DATA`).
    pub bucket: String,
    /// The object's name in the store (`results/<id>/…` for an output a worker stored).
    pub name: String,
    /// `npy`, `safetensors` or `png`.
    pub format: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the object's bytes, in hex.
    pub sha256: String,
    /// Shape of the tensor it holds (for a model: empty).
    #[serde(default)]
    pub shape: Vec<u64>,
    /// Element type of the tensor it holds (`f32`; `u8` for a PNG).
    #[serde(default)]
    pub dtype: String,
}

/// The name of the object holding the output of job `id` (in its `replay`th life), stored by
/// delivery `attempt` of the message at `stream_sequence` in `KILN_JOBS`: one name per run, so
/// that a run whose result is refused (the job was answered already) never overwrites the
/// answered run's output, and can delete its own.
pub fn output_object_name(
    id: &str,
    replay: u32,
    stream_sequence: u64,
    attempt: u64,
    format: &str,
) -> String {
    match replay {
        0 => format!("results/{id}/{stream_sequence}-{attempt}.{format}"),
        n => format!("results/{id}/replay-{n}-{stream_sequence}-{attempt}.{format}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_reference_is_read_only_as_an_object_in_json() {
        let read = |json: &str| serde_json::from_str::<ObjectRef>(json);
        let full = read(r#"{"object": "d.csv", "tensor": "x", "sha256": "ab"}"#).unwrap();
        assert_eq!(
            (
                full.object.as_str(),
                full.tensor.as_deref(),
                full.sha256.as_deref()
            ),
            ("d.csv", Some("x"), Some("ab"))
        );
        assert_eq!(read(r#"{"object": "m"}"#).unwrap(), ObjectRef::new("m"));
        // Values where a reference goes, or a bare name: said as such, not as serde's
        // reading of a struct from an array ("expected a string", "struct ObjectRef").
        for (json, got) in [("[[1, 2, 0]]", "sequence"), (r#""abc""#, "string \"abc\"")] {
            let e = read(json).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "invalid type: {got}, expected an object reference {{\"object\": \"NAME\"}}"
                )),
                "{e}"
            );
        }
        let e = read(r#"{"object": "m", "entry": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `entry`"), "{e}");
        // bincode carries the fields in order.
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&full, config).unwrap();
        let (back, _): (ObjectRef, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, full);
    }
}
