//! safetensors: a JSON header, then the values. Tensors are streamed from it one entry at a
//! time; models (every tensor, with the file's metadata) are read and written whole.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;

use safetensors::tensor::{Dtype, Metadata, TensorInfo, View};

use super::error::{invalid, io_error, truncated};
use super::values::{
    Elem, allocate, beyond_f32, convert, count_elements, drain, read_full, read_values, skip,
};
use super::{DataError, Format, MAX_SAFETENSORS_HEADER};
use crate::{HostTensor, Model};

/// Read a safetensors header (length and JSON), leaving the reader at the first value.
pub(super) fn read_safetensors_header(
    what: &str,
    reader: &mut dyn Read,
) -> Result<Metadata, DataError> {
    let mut len = [0u8; 8];
    if read_full(reader, &mut len).map_err(|e| io_error(what, &e))? < len.len() {
        return Err(invalid(format!(
            "{what}: truncated: a safetensors file starts with 8 bytes of header length; \
             upload the whole file again"
        )));
    }
    let len = u64::from_le_bytes(len);
    if !(2..=MAX_SAFETENSORS_HEADER).contains(&len) {
        return Err(invalid(format!(
            "{what}: its safetensors header length {len} is not between 2 and \
             {MAX_SAFETENSORS_HEADER} bytes; save the file again with safetensors"
        )));
    }
    let mut text = Vec::new();
    reader
        .take(len)
        .read_to_end(&mut text)
        .map_err(|e| io_error(what, &e))?;
    if (text.len() as u64) < len {
        return Err(invalid(format!(
            "{what}: truncated: its safetensors header says {len} bytes, found {}; upload \
             the whole file again",
            text.len()
        )));
    }
    let not_valid = |e: serde_json::Error| {
        invalid(format!(
            "{what}: its safetensors header is not valid ({e}); save the file again with \
             safetensors"
        ))
    };
    // The header's map keeps the last of two entries under one name, silently: refused.
    if let Some(name) = serde_json::from_slice::<TwiceNamed>(&text)
        .map_err(not_valid)?
        .0
    {
        return Err(invalid(format!(
            "{what}: its safetensors header gives {name:?} twice; save the file again with \
             safetensors"
        )));
    }
    serde_json::from_slice::<Metadata>(&text).map_err(not_valid)
}

/// The first name a JSON object gives twice at its top level, if any.
struct TwiceNamed(Option<String>);

impl<'de> serde::Deserialize<'de> for TwiceNamed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = TwiceNamed;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<TwiceNamed, M::Error> {
                let (mut seen, mut twice) = (std::collections::HashSet::new(), None);
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if twice.is_none() && !seen.insert(name.clone()) {
                        twice = Some(name);
                    }
                }
                Ok(TwiceNamed(twice))
            }
        }
        deserializer.deserialize_map(Names)
    }
}

/// Names for a message: all of them, or the first 20 and how many more.
pub(super) fn list_names(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut list = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    list
}

/// The entry to read: `key`, or the only one.
pub(super) fn choose_key(
    what: &str,
    names: &[String],
    key: Option<&str>,
) -> Result<String, DataError> {
    match (key, names) {
        (_, []) => Err(invalid(format!(
            "{what} holds no tensors; store at least one"
        ))),
        (Some(key), _) if names.iter().any(|n| n == key) => Ok(key.to_string()),
        (Some(key), _) => Err(invalid(format!(
            "{what} has no tensor {key:?}; pick one of {} with \"tensor\" (kiln submit: \
             --input KEY=@FILE#NAME, or KEY=OBJECT#NAME for one stored)",
            list_names(names)
        ))),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(invalid(format!(
            "{what} holds {} tensors ({}); pick one with \"tensor\": \"NAME\" (kiln submit: \
             --input KEY=@FILE#NAME, or KEY=OBJECT#NAME for one stored)",
            names.len(),
            list_names(names)
        ))),
    }
}

pub(super) fn tensor_elem(what: &str, key: &str, info: &TensorInfo) -> Result<Elem, DataError> {
    Elem::from_safetensors(info.dtype).ok_or_else(|| {
        invalid(format!(
            "{what}: tensor {key:?} has dtype {}, which kiln does not read; store it as F32 \
             (or F16, BF16, F64, an integer type or BOOL)",
            info.dtype
        ))
    })
}

pub(super) fn read_safetensors(
    what: &str,
    reader: &mut dyn Read,
    key: Option<&str>,
    max_elements: u64,
) -> Result<HostTensor, DataError> {
    let metadata = read_safetensors_header(what, reader)?;
    let key = choose_key(what, &metadata.offset_keys(), key)?;
    let info = metadata
        .info(&key)
        .ok_or_else(|| invalid(format!("{what}: tensor {key:?} vanished from its header")))?;
    let elem = tensor_elem(what, &key, info)?;
    let noun = format!("tensor {key:?}");
    let elements = count_elements(what, &info.shape, max_elements, &noun)?;
    let data_len = metadata.data_len() as u64;
    let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
    let skipped = skip(what, reader, start)?;
    if skipped < start {
        return Err(truncated(what, data_len, skipped));
    }
    let values = read_values(what, reader, elem, false, elements)?
        .map_err(|found| truncated(what, data_len, start + found))?;
    let rest = drain(what, reader)?;
    if end + rest < data_len {
        return Err(truncated(what, data_len, end + rest));
    }
    if end + rest > data_len {
        return Err(invalid(format!(
            "{what}: {} bytes follow the {data_len} bytes of data its header declares; save \
             the file again",
            end + rest - data_len
        )));
    }
    Ok(HostTensor {
        shape: info.shape.clone(),
        data: values,
    })
}

/// A safetensors file in memory: its header and its values.
pub(super) struct Safetensors<'a> {
    metadata: Metadata,
    data: &'a [u8],
}

impl<'a> Safetensors<'a> {
    pub(super) fn parse(what: &str, bytes: &'a [u8]) -> Result<Self, DataError> {
        let mut rest = bytes;
        let metadata = read_safetensors_header(what, &mut rest)?;
        let data_len = metadata.data_len() as u64;
        if (rest.len() as u64) < data_len {
            return Err(truncated(what, data_len, rest.len() as u64));
        }
        Ok(Safetensors {
            metadata,
            data: rest,
        })
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    pub(super) fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.metadata.info(key)
    }

    /// Value `index` of tensor `key` as its file holds it (an integer exactly, where its f32
    /// rounding would show 4294967296 as 4294967300), for messages; `None` past its end.
    pub(super) fn exact_value(&self, key: &str, index: usize) -> Option<String> {
        let info = self.info(key)?;
        let elem = Elem::from_safetensors(info.dtype)?;
        let start = info.data_offsets.0 + index * elem.size();
        let bytes = self.data.get(start..start + elem.size())?;
        let eight = || <[u8; 8]>::try_from(bytes).ok();
        Some(match elem {
            Elem::I64 => i64::from_le_bytes(eight()?).to_string(),
            Elem::U64 => u64::from_le_bytes(eight()?).to_string(),
            Elem::F64 => f64::from_le_bytes(eight()?).to_string(),
            _ => {
                let mut value = Vec::with_capacity(1);
                convert(elem, false, bytes, &mut value).ok()?;
                value.first()?.to_string()
            }
        })
    }

    /// The tensor `key` as f32; its values count against `budget`.
    pub(super) fn tensor(
        &self,
        what: &str,
        key: &str,
        budget: &mut u64,
    ) -> Result<HostTensor, DataError> {
        let info = self
            .info(key)
            .ok_or_else(|| invalid(format!("{what} has no tensor {key:?}")))?;
        let elem = tensor_elem(what, key, info)?;
        let noun = format!("tensor {key:?}");
        let elements = count_elements(what, &info.shape, *budget, &noun)?;
        *budget -= elements;
        let mut values = allocate(what, elements)?;
        convert(
            elem,
            false,
            &self.data[info.data_offsets.0..info.data_offsets.1],
            &mut values,
        )
        .map_err(|value| beyond_f32(what, value))?;
        Ok(HostTensor {
            shape: info.shape.clone(),
            data: values,
        })
    }
}

// Models: every tensor of a file at once, with its metadata.

/// Read every tensor of a safetensors file, in the file's order, with its metadata. All
/// tensors together may hold at most `max_elements` values.
pub fn decode_model(what: &str, bytes: &[u8], max_elements: u64) -> Result<Model, DataError> {
    match Format::sniff(bytes) {
        Some(Format::Safetensors) => {}
        other => {
            return Err(invalid(format!(
                "{what} is {}, not a model; store the model as safetensors",
                Format::describe(other)
            )));
        }
    }
    let file = Safetensors::parse(what, bytes)?;
    let mut budget = max_elements;
    let tensors = file
        .names()
        .into_iter()
        .map(|name| Ok((name.clone(), file.tensor(what, &name, &mut budget)?)))
        .collect::<Result<Vec<_>, DataError>>()?;
    let metadata = file
        .metadata
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Model { tensors, metadata })
}

/// An f32 tensor as the safetensors crate writes it.
struct F32View<'a>(&'a HostTensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        f32_bytes(&self.0.data)
    }

    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// The little-endian bytes of `values`: a view on little-endian machines, a copy elsewhere.
pub(crate) fn f32_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

fn check_shape(name: &str, tensor: &HostTensor) -> Result<(), DataError> {
    let elements = tensor
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    if elements != Some(tensor.data.len()) {
        return Err(invalid(format!(
            "tensor {name:?} of shape {:?} holds {} values, which does not match its shape; \
             fix its shape",
            tensor.shape,
            tensor.data.len()
        )));
    }
    Ok(())
}

/// A safetensors file of f32 tensors, with metadata (tensors ordered as the safetensors
/// crate orders them: by name, all being f32).
pub fn encode_safetensors(model: &Model) -> Result<Vec<u8>, DataError> {
    let mut seen = BTreeSet::new();
    for (name, tensor) in &model.tensors {
        check_shape(name, tensor)?;
        if !seen.insert(name.as_str()) {
            return Err(invalid(format!(
                "a model has two tensors named {name:?}; give each its own name"
            )));
        }
    }
    let metadata = (!model.metadata.is_empty()).then(|| {
        model
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>()
    });
    let file = safetensors::serialize(
        model
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), F32View(t))),
        metadata,
    )
    .map_err(|e| invalid(format!("could not write the model as safetensors: {e}")))?;
    Ok(if model.metadata.is_empty() {
        file
    } else {
        with_sorted_header(file)
    })
}

/// `file` with its header's keys, and its metadata's, in sorted order: the safetensors crate
/// writes the metadata from a HashMap, so one model trained twice got other bytes (and
/// another sha256) each time.
fn with_sorted_header(file: Vec<u8>) -> Vec<u8> {
    use std::collections::BTreeMap;
    let Some(len) = file.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return file;
    };
    let end = 8 + u64::from_le_bytes(len) as usize;
    let Some(Ok(header)) = file
        .get(8..end)
        .map(serde_json::from_slice::<BTreeMap<String, serde_json::Value>>)
    else {
        return file;
    };
    let sorted: BTreeMap<&String, serde_json::Value> = header
        .iter()
        .map(|(key, value)| match value.as_object() {
            Some(fields) => {
                let fields: BTreeMap<_, _> = fields.iter().collect();
                (
                    key,
                    serde_json::to_value(fields).unwrap_or_else(|_| value.clone()),
                )
            }
            None => (key, value.clone()),
        })
        .collect();
    let Ok(mut json) = serde_json::to_vec(&sorted) else {
        return file;
    };
    // The values start 8-aligned, as the crate pads them (with spaces, which JSON allows).
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + file.len() - end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&file[end..]);
    out
}

/// The header (length and JSON, padded to 8 bytes) of a safetensors file holding the one f32
/// tensor `entry` of `shape`; its little-endian values follow. The same bytes as
/// [`encode_safetensors`] writes.
pub(crate) fn safetensors_header(entry: &str, shape: &[usize]) -> Result<Vec<u8>, DataError> {
    let elements: usize = shape.iter().product();
    let info = TensorInfo {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data_offsets: (0, elements * 4),
    };
    let metadata = Metadata::new(None, vec![(entry.to_string(), info)])
        .map_err(|e| invalid(format!("could not write a safetensors header: {e}")))?;
    let mut json = serde_json::to_vec(&metadata)
        .map_err(|e| invalid(format!("could not write a safetensors header: {e}")))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::formats::tests::{Counting, le, message, read, safetensors};
    use crate::formats::{decode_model, read_tensor};

    #[test]
    fn reads_the_chosen_safetensors_entry_and_the_rest_of_the_input() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [-1.0f64, 0.5];
        let file = safetensors(
            &[
                ("a", "F32", &[2, 2], le(&a, f32::to_le_bytes)),
                ("b", "F64", &[2], le(&b, f64::to_le_bytes)),
            ],
            None,
        );
        let t = read(&file, Some("a")).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 2], a.to_vec()));
        // Data past the last entry's end is not a file the library writes.
        let mut longer = file.clone();
        longer.extend_from_slice(&[0; 8]);
        let m = message(read(&longer, Some("a")));
        assert!(
            m.contains("8 bytes follow the 32 bytes of data its header declares"),
            "{m}"
        );

        let mut reader = Counting {
            inner: &file,
            taken: 0,
        };
        let t = read_tensor("t", &mut reader, Some("a"), 100).unwrap();
        assert_eq!(t.data, a);
        assert_eq!(reader.taken, file.len(), "read to the end");

        let t = read(&file, Some("b")).unwrap();
        assert_eq!((t.shape, t.data), (vec![2], vec![-1.0, 0.5]));

        assert_eq!(
            message(read(&file, None)),
            "t holds 2 tensors (\"a\", \"b\"); pick one with \"tensor\": \"NAME\" (kiln \
             submit: --input KEY=@FILE#NAME, or KEY=OBJECT#NAME for one stored)"
        );
        assert_eq!(
            message(read(&file, Some("c"))),
            "t has no tensor \"c\"; pick one of \"a\", \"b\" with \"tensor\" (kiln submit: \
             --input KEY=@FILE#NAME, or KEY=OBJECT#NAME for one stored)"
        );
        // A single entry needs no key.
        let one = safetensors(
            &[("only", "F32", &[1], le(&[9.0f32], f32::to_le_bytes))],
            None,
        );
        assert_eq!(read(&one, None).unwrap().data, vec![9.0]);
    }

    #[test]
    fn reads_safetensors_half_and_integer_dtypes() {
        let f16s = [1.5f32, -2.0].map(half::f16::from_f32);
        let bf16s = [3.0f32, -0.5, 256.0].map(half::bf16::from_f32);
        let file = safetensors(
            &[
                ("h", "F16", &[2], le(&f16s, half::f16::to_le_bytes)),
                ("bf", "BF16", &[3], le(&bf16s, half::bf16::to_le_bytes)),
                ("i", "I64", &[2], le(&[-5i64, 6], i64::to_le_bytes)),
                ("u", "U16", &[1], le(&[65535u16], u16::to_le_bytes)),
                ("m", "BOOL", &[2], vec![0, 1]),
                ("f8", "F8_E4M3", &[1], vec![0]),
            ],
            None,
        );
        assert_eq!(read(&file, Some("h")).unwrap().data, vec![1.5, -2.0]);
        assert_eq!(
            read(&file, Some("bf")).unwrap().data,
            vec![3.0, -0.5, 256.0]
        );
        assert_eq!(read(&file, Some("i")).unwrap().data, vec![-5.0, 6.0]);
        assert_eq!(read(&file, Some("u")).unwrap().data, vec![65535.0]);
        assert_eq!(read(&file, Some("m")).unwrap().data, vec![0.0, 1.0]);
        let m = message(read(&file, Some("f8")));
        assert!(m.starts_with("t: tensor \"f8\" has dtype F8_E4M3"), "{m}");
    }

    #[test]
    fn refuses_truncated_and_oversized_safetensors() {
        let file = safetensors(
            &[
                ("a", "F32", &[2], le(&[1.0f32, 2.0], f32::to_le_bytes)),
                ("b", "F32", &[2], le(&[3.0f32, 4.0], f32::to_le_bytes)),
            ],
            None,
        );
        // Cut inside "b": reading "a" still notices, as the rest is read to the end.
        let cut = &file[..file.len() - 3];
        assert_eq!(
            message(read(cut, Some("a"))),
            "t: truncated: header says 16 bytes of values, found 13; upload the whole file again"
        );
        assert_eq!(
            message(read(cut, Some("b"))),
            "t: truncated: header says 16 bytes of values, found 13; upload the whole file again"
        );
        match read_tensor("t", &mut &file[..], Some("a"), 1) {
            Err(DataError::TooLarge(m)) => assert!(m.starts_with("t: tensor \"a\""), "{m}"),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn refuses_a_header_that_names_an_entry_twice() {
        let values = le(&[1.0f32, 2.0], f32::to_le_bytes);
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&values);
        let m = message(read(&file, Some("b")));
        assert_eq!(
            m,
            "t: its safetensors header gives \"a\" twice; save the file again with safetensors"
        );
        match decode_model("t", &file, 100) {
            Err(DataError::Invalid(m)) => assert!(m.contains("gives \"a\" twice"), "{m}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn decodes_models_and_encodes_them_back() {
        let file = safetensors(
            &[
                ("w", "F32", &[2], le(&[1.0f32, 2.0], f32::to_le_bytes)),
                (
                    "b",
                    "F16",
                    &[1],
                    le(&[half::f16::from_f32(0.5)], half::f16::to_le_bytes),
                ),
            ],
            Some("{\"format\":\"kiln\",\"epochs\":\"3\"}"),
        );
        let model = decode_model("m", &file, 100).unwrap();
        assert_eq!(
            model.tensors,
            vec![
                ("w".to_string(), HostTensor::new(vec![2], vec![1.0, 2.0])),
                ("b".to_string(), HostTensor::new(vec![1], vec![0.5])),
            ]
        );
        assert_eq!(model.metadata.get("epochs").map(String::as_str), Some("3"));
        assert!(matches!(
            decode_model("m", &file, 2),
            Err(DataError::TooLarge(_))
        ));

        let encoded = encode_safetensors(&model).unwrap();
        // The same bytes every time (the metadata came in a HashMap's order).
        let mut many = model.clone();
        for i in 0..12 {
            many.metadata
                .insert(format!("key{i}"), format!("value {i}"));
        }
        let first = encode_safetensors(&many).unwrap();
        for _ in 0..20 {
            assert_eq!(encode_safetensors(&many).unwrap(), first);
        }
        assert_eq!(
            decode_model("m", &first, 100).unwrap().metadata,
            many.metadata
        );
        let back = decode_model("m", &encoded, 100).unwrap();
        // Written in the safetensors crate's order: by name.
        assert_eq!(back.tensors[0], model.tensors[1]);
        assert_eq!(back.tensors[1], model.tensors[0]);
        assert_eq!(back.metadata, model.metadata);

        let m = message(decode_model("m", b"a,b\n1,0\n", 100));
        assert_eq!(
            m,
            "m is CSV text, not a model; store the model as safetensors"
        );
    }

    #[test]
    fn streamed_safetensors_header_matches_the_crate() {
        let t = HostTensor::new(vec![2, 3], (0..6).map(|i| i as f32).collect());
        let model = Model {
            tensors: vec![("out".into(), t.clone())],
            metadata: BTreeMap::new(),
        };
        let mut streamed = safetensors_header("out", &t.shape).unwrap();
        streamed.extend_from_slice(&f32_bytes(&t.data));
        assert_eq!(streamed, encode_safetensors(&model).unwrap());
    }
}
