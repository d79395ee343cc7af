//! The file formats kiln reads and writes, told apart by their first bytes.
//!
//! Every decoder takes `what`, the name the caller knows the data by (an object name, a file
//! name), and starts each error message with it. Values become f32 whatever they were stored
//! as; integers above 2^24 in magnitude lose precision on the way (f32 has a 24-bit
//! significand).

use std::io::Read;

// One module per format family; `values` reads the element types every tensor format stores.
mod check;
mod datasets;
mod error;
mod images;
mod npy;
mod safetensors;
mod sizes;
mod values;

pub use self::check::{
    check_start, check_tensor_start, not_a_format_hint, not_a_tensor_format_hint,
};
pub use self::datasets::decode_dataset;
pub use self::error::DataError;
pub use self::images::{decode_image, encode_png};
pub use self::npy::{encode_npy, npy_header};
pub use self::safetensors::{decode_model, encode_safetensors};
pub(crate) use self::safetensors::{f32_bytes, safetensors_header};
pub use self::sizes::{LoadSize, load_size};

use self::error::{invalid, io_error};
use self::images::png_size;
use self::npy::{read_npy, read_npy_header};
use self::safetensors::{read_safetensors, read_safetensors_header};
use self::values::{Elem, read_full};
use crate::HostTensor;

/// `bytes` in MiB with one decimal, as messages about memory give sizes.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// A format kiln reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// numpy `.npy` (magic `\x93NUMPY`).
    Npy,
    /// safetensors (8-byte little-endian header length, then a JSON header).
    Safetensors,
    /// PNG image, read as [C, H, W] values from 0 to 1; what `png` outputs are written as.
    Png,
    /// JPEG image, read as [C, H, W] values from 0 to 1 (never written).
    Jpeg,
    /// Comma-separated text: features…, label.
    Csv,
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_SOI: &[u8] = &[0xFF, 0xD8, 0xFF];
/// Largest safetensors header kiln reads (the safetensors crate's own limit).
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

impl Format {
    /// The format of data starting with `prefix` (16 bytes are enough), or `None` when it
    /// is none kiln reads.
    pub fn sniff(prefix: &[u8]) -> Option<Format> {
        if prefix.starts_with(NPY_MAGIC) {
            return Some(Format::Npy);
        }
        if prefix.starts_with(PNG_SIGNATURE) {
            return Some(Format::Png);
        }
        if prefix.starts_with(JPEG_SOI) {
            return Some(Format::Jpeg);
        }
        if let Some((len, rest)) = prefix.split_first_chunk::<8>() {
            let len = u64::from_le_bytes(*len);
            if (2..=MAX_SAFETENSORS_HEADER).contains(&len) && rest.first() == Some(&b'{') {
                return Some(Format::Safetensors);
            }
        }
        looks_like_csv(prefix).then_some(Format::Csv)
    }

    /// Lowercase name (`npy`, `safetensors`, `png`, `jpeg`, `csv`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Npy => "npy",
            Format::Safetensors => "safetensors",
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Csv => "csv",
        }
    }

    /// What data in this format is, for messages: "a .npy tensor", "a PNG image", ….
    pub fn describe(format: Option<Format>) -> &'static str {
        match format {
            Some(Format::Npy) => "a .npy tensor",
            Some(Format::Safetensors) => "a safetensors file",
            Some(Format::Png) => "a PNG image",
            Some(Format::Jpeg) => "a JPEG image",
            Some(Format::Csv) => "CSV text",
            None => "in no format kiln reads (.npy, safetensors, PNG, JPEG, CSV)",
        }
    }
}

/// Printable text (digits, signs, letters of a header row, separators, whitespace, UTF-8),
/// not starting like JSON or XML.
fn looks_like_csv(prefix: &[u8]) -> bool {
    let text = match std::str::from_utf8(prefix) {
        Ok(text) => text,
        // A prefix may end in the middle of a multi-byte character.
        Err(e) if e.error_len().is_none() => {
            match std::str::from_utf8(&prefix[..e.valid_up_to()]) {
                Ok(text) => text,
                Err(_) => return false,
            }
        }
        Err(_) => return false,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let printable = text
        .chars()
        .all(|c| matches!(c, ' ' | '\t' | '\r' | '\n') || !c.is_control());
    let first = text.trim_start().chars().next();
    printable && first.is_some_and(|c| !matches!(c, '{' | '[' | '<'))
}

/// Read a tensor from `.npy` or safetensors, streaming: values are converted to f32 as they
/// are read, never holding the file and the tensor at once. `key` picks one entry of a
/// safetensors file (required when it holds more than one). Refuses (`TooLarge`) a tensor of
/// more than `max_elements` values from its header, before reading its values.
///
/// Reads f32, f64, f16, bf16 (safetensors), the integer types and bool; integers above 2^24
/// in magnitude lose precision as f32. `.npy` may be little- or big-endian, in C order. The
/// reader is read to its end (a store's reader checks a digest there).
pub fn read_tensor(
    what: &str,
    reader: &mut dyn Read,
    key: Option<&str>,
    max_elements: u64,
) -> Result<HostTensor, DataError> {
    let mut prefix = [0u8; 16];
    let n = read_full(reader, &mut prefix).map_err(|e| io_error(what, &e))?;
    let format = Format::sniff(&prefix[..n]);
    let mut input = (&prefix[..n]).chain(reader);
    match format {
        Some(Format::Npy) => {
            if let Some(key) = key {
                return Err(invalid(format!(
                    "{what} is .npy: it holds one tensor; drop \"tensor\" ({key:?}; kiln \
                     submit: --input KEY=@FILE without #{key})"
                )));
            }
            read_npy(what, &mut input, max_elements)
        }
        Some(Format::Safetensors) => read_safetensors(what, &mut input, key, max_elements),
        other => Err(invalid(format!(
            "{what} is {}, not a tensor; store a .npy (np.save) or safetensors file",
            Format::describe(other)
        ))),
    }
}

/// What the first bytes of a file say about it: its format, and where cheap to tell, the
/// shape and element type it holds (`.npy`, a one-tensor safetensors file, PNG).
pub(crate) fn describe_prefix(prefix: &[u8]) -> (Option<Format>, Vec<u64>, String) {
    let format = Format::sniff(prefix);
    let (shape, dtype) = match format {
        Some(Format::Npy) => read_npy_header("", &mut &prefix[..])
            .map(|h| (h.shape.iter().map(|&d| d as u64).collect(), h.elem.name()))
            .unwrap_or_default(),
        Some(Format::Safetensors) => read_safetensors_header("", &mut &prefix[..])
            .ok()
            .and_then(|m| {
                let names = m.offset_keys();
                let [name] = &names[..] else { return None };
                let info = m.info(name)?;
                let elem = Elem::from_safetensors(info.dtype)?;
                Some((info.shape.iter().map(|&d| d as u64).collect(), elem.name()))
            })
            .unwrap_or_default(),
        Some(Format::Png)
            if prefix.len() >= 26
                && let Some((width, height)) = png_size(prefix) =>
        {
            // Bit depth and colour type follow the width and height.
            let channels = match prefix[25] {
                0 => 1,
                4 => 2,
                2 | 3 => 3,
                _ => 4,
            };
            let dtype = if prefix[24] == 16 { "u16" } else { "u8" };
            (vec![channels, u64::from(height), u64::from(width)], dtype)
        }
        _ => (Vec::new(), ""),
    };
    (format, shape, dtype.to_string())
}

#[cfg(test)]
mod tests {
    use std::io;

    use image::ImageEncoder as _;

    use super::*;

    /// An `.npy` file as numpy writes it: version 1.0, dict padded to 64 bytes.
    pub(super) fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let fortran = if fortran { "True" } else { "False" };
        let dict =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        let total = (10 + dict.len() + 1).next_multiple_of(64);
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        out.extend_from_slice(data);
        out
    }

    /// A safetensors file with entries in the given order (offsets follow it).
    pub(super) fn safetensors(
        entries: &[(&str, &str, &[usize], Vec<u8>)],
        meta: Option<&str>,
    ) -> Vec<u8> {
        let mut fields = Vec::new();
        if let Some(meta) = meta {
            fields.push(format!("\"__metadata__\":{meta}"));
        }
        let mut offset = 0;
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in entries {
            fields.push(format!(
                "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
                offset + bytes.len()
            ));
            offset += bytes.len();
            data.extend_from_slice(bytes);
        }
        let mut header = format!("{{{}}}", fields.join(",")).into_bytes();
        header.resize(header.len().next_multiple_of(8), b' ');
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);
        out
    }

    pub(super) fn le<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| f(v)).collect()
    }

    pub(super) fn read(bytes: &[u8], key: Option<&str>) -> Result<HostTensor, DataError> {
        read_tensor("t", &mut &bytes[..], key, 1 << 20)
    }

    pub(super) fn message(result: Result<impl std::fmt::Debug, DataError>) -> String {
        match result.expect_err("expected an error") {
            DataError::Invalid(m) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// A reader that counts the bytes taken from it.
    pub(super) struct Counting<'a> {
        pub(super) inner: &'a [u8],
        pub(super) taken: usize,
    }

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken += n;
            Ok(n)
        }
    }

    #[test]
    fn refuses_non_tensors() {
        let m = message(read(b"1,2,3\n4,5,6\n", None));
        assert_eq!(
            m,
            "t is CSV text, not a tensor; store a .npy (np.save) or safetensors file"
        );
        let m = message(read(&[0u8, 1, 2], None));
        assert!(m.starts_with("t is in no format kiln reads"), "{m}");
    }

    pub(super) fn png(pixels: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(pixels, w, h, color)
            .unwrap();
        out
    }

    #[test]
    fn sniffs_formats_by_content() {
        assert_eq!(
            Format::sniff(&encode_npy(&HostTensor::default())),
            Some(Format::Npy)
        );
        let st = safetensors(&[("a", "F32", &[1], vec![0; 4])], None);
        assert_eq!(Format::sniff(&st[..16]), Some(Format::Safetensors));
        assert_eq!(
            Format::sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
            Some(Format::Png)
        );
        assert_eq!(Format::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(Format::Jpeg));
        assert_eq!(Format::sniff(b"sepal_len,label\n"), Some(Format::Csv));
        assert_eq!(Format::sniff(b"1.5,-2e3,0\r\n"), Some(Format::Csv));
        assert_eq!(Format::sniff("caf\u{e9},y\n".as_bytes()), Some(Format::Csv));
        assert_eq!(Format::sniff(b"{\"a\": 1}"), None);
        assert_eq!(Format::sniff(b""), None);
        assert_eq!(Format::sniff(&[0, 1, 2, 3]), None);
        // A huge "header length" is not safetensors.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.push(b'{');
        assert_eq!(Format::sniff(&huge), None);
    }

    #[test]
    fn describes_stored_files_from_their_first_bytes() {
        let npy = encode_npy(&HostTensor::new(vec![2, 2], vec![0.0; 4]));
        assert_eq!(
            describe_prefix(&npy),
            (Some(Format::Npy), vec![2, 2], "f32".into())
        );
        let st = safetensors(&[("a", "F16", &[3], vec![0; 6])], None);
        assert_eq!(
            describe_prefix(&st),
            (Some(Format::Safetensors), vec![3], "f16".into())
        );
        let file = png(&[0u8; 12], 3, 1, image::ExtendedColorType::Rgba8);
        assert_eq!(
            describe_prefix(&file),
            (Some(Format::Png), vec![4, 1, 3], "u8".into())
        );
        assert_eq!(
            describe_prefix(b"1,0\n"),
            (Some(Format::Csv), vec![], String::new())
        );
    }
}
