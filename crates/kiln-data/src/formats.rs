//! The file formats kiln reads and writes, told apart by their first bytes.
//!
//! Every decoder takes `what`, the name the caller knows the data by (an object name, a file
//! name), and starts each error message with it. Values become f32 whatever they were stored
//! as; integers above 2^24 in magnitude lose precision on the way (f32 has a 24-bit
//! significand).

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read};

use image::{ColorType, ImageDecoder};
use safetensors::tensor::{Dtype, Metadata, TensorInfo, View};

use crate::{Dataset, HostTensor, Model};

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
/// Largest `.npy` header kiln reads (numpy itself refuses more than 10 000 bytes by default).
const MAX_NPY_HEADER: u64 = 1 << 20;
/// Values are read and converted this many bytes at a time.
const READ_CHUNK: usize = 1 << 16;

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

/// What was wrong with some data, in words a user can act on. `what` in each message is the
/// name the caller gave (an object name, a file name).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// The data is not in a format kiln reads, or is corrupt or truncated.
    #[error("{0}")]
    Invalid(String),
    /// The data holds more values than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// Reading the data failed (the connection, the store).
    #[error("{0}")]
    Io(String),
}

impl From<DataError> for kiln_proto::JobError {
    /// Bad data fails the job; a failed read is internal, so a worker retries it.
    fn from(error: DataError) -> Self {
        match error {
            DataError::Invalid(message) => kiln_proto::JobError::invalid_input(message),
            DataError::TooLarge(message) => kiln_proto::JobError::too_large(message),
            DataError::Io(message) => kiln_proto::JobError::internal(message),
        }
    }
}

fn invalid(message: String) -> DataError {
    DataError::Invalid(message)
}

fn io_error(what: &str, error: &io::Error) -> DataError {
    DataError::Io(format!("{what}: reading failed ({error}); try again"))
}

fn truncated(what: &str, expected: u64, found: u64) -> DataError {
    invalid(format!(
        "{what}: truncated: header says {expected} bytes of values, found {found}; \
         upload the whole file again"
    ))
}

/// Read until `buf` is full or the input ends; the number of bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Read and drop up to `limit` bytes; the number dropped.
fn skip(what: &str, reader: &mut dyn Read, limit: u64) -> Result<u64, DataError> {
    io::copy(&mut reader.take(limit), &mut io::sink()).map_err(|e| io_error(what, &e))
}

/// Read and drop the rest of the input (its reader may check a digest at the end).
fn drain(what: &str, reader: &mut dyn Read) -> Result<u64, DataError> {
    skip(what, reader, u64::MAX)
}

// ---------------------------------------------------------------------------------------
// Element types

/// An element type as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Bool,
    U8,
    I8,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::Bool | Elem::U8 | Elem::I8 => 1,
            Elem::U16 | Elem::I16 | Elem::F16 | Elem::BF16 => 2,
            Elem::U32 | Elem::I32 | Elem::F32 => 4,
            Elem::U64 | Elem::I64 | Elem::F64 => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Elem::Bool => "bool",
            Elem::U8 => "u8",
            Elem::I8 => "i8",
            Elem::U16 => "u16",
            Elem::I16 => "i16",
            Elem::F16 => "f16",
            Elem::BF16 => "bf16",
            Elem::U32 => "u32",
            Elem::I32 => "i32",
            Elem::F32 => "f32",
            Elem::U64 => "u64",
            Elem::I64 => "i64",
            Elem::F64 => "f64",
        }
    }

    fn from_safetensors(dtype: Dtype) -> Option<Elem> {
        Some(match dtype {
            Dtype::BOOL => Elem::Bool,
            Dtype::U8 => Elem::U8,
            Dtype::I8 => Elem::I8,
            Dtype::U16 => Elem::U16,
            Dtype::I16 => Elem::I16,
            Dtype::F16 => Elem::F16,
            Dtype::BF16 => Elem::BF16,
            Dtype::U32 => Elem::U32,
            Dtype::I32 => Elem::I32,
            Dtype::F32 => Elem::F32,
            Dtype::U64 => Elem::U64,
            Dtype::I64 => Elem::I64,
            Dtype::F64 => Elem::F64,
            _ => return None,
        })
    }
}

/// Append the values in `bytes` (whole elements) to `out` as f32.
fn convert(elem: Elem, big_endian: bool, bytes: &[u8], out: &mut Vec<f32>) {
    fn each<const N: usize>(
        bytes: &[u8],
        big_endian: bool,
        out: &mut Vec<f32>,
        f: impl Fn([u8; N]) -> f32,
    ) {
        out.extend(bytes.chunks_exact(N).map(|chunk| {
            let mut value = [0u8; N];
            value.copy_from_slice(chunk);
            if big_endian {
                value.reverse();
            }
            f(value)
        }));
    }
    let be = big_endian;
    match elem {
        Elem::Bool => each::<1>(bytes, be, out, |[b]| if b != 0 { 1.0 } else { 0.0 }),
        Elem::U8 => each::<1>(bytes, be, out, |[b]| f32::from(b)),
        Elem::I8 => each::<1>(bytes, be, out, |b| f32::from(i8::from_le_bytes(b))),
        Elem::U16 => each::<2>(bytes, be, out, |b| f32::from(u16::from_le_bytes(b))),
        Elem::I16 => each::<2>(bytes, be, out, |b| f32::from(i16::from_le_bytes(b))),
        Elem::F16 => each::<2>(bytes, be, out, |b| half::f16::from_le_bytes(b).to_f32()),
        Elem::BF16 => each::<2>(bytes, be, out, |b| half::bf16::from_le_bytes(b).to_f32()),
        Elem::U32 => each::<4>(bytes, be, out, |b| u32::from_le_bytes(b) as f32),
        Elem::I32 => each::<4>(bytes, be, out, |b| i32::from_le_bytes(b) as f32),
        Elem::F32 => each::<4>(bytes, be, out, f32::from_le_bytes),
        Elem::U64 => each::<8>(bytes, be, out, |b| u64::from_le_bytes(b) as f32),
        Elem::I64 => each::<8>(bytes, be, out, |b| i64::from_le_bytes(b) as f32),
        Elem::F64 => each::<8>(bytes, be, out, |b| f64::from_le_bytes(b) as f32),
    }
}

/// The number of values of `shape`, refused (`TooLarge`) over `max_elements` or past u64.
fn count_elements(
    what: &str,
    shape: &[usize],
    max_elements: u64,
    noun: &str,
) -> Result<u64, DataError> {
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    match elements {
        Some(n) if n <= max_elements => Ok(n),
        Some(n) => Err(DataError::TooLarge(format!(
            "{what}: {noun} of shape {shape:?} holds {n} values, over this worker's limit of \
             {max_elements} (--max-elements); send a smaller one"
        ))),
        None => Err(DataError::TooLarge(format!(
            "{what}: {noun} of shape {shape:?} overflows a 64-bit element count; send a \
             smaller one"
        ))),
    }
}

/// A vector for `elements` values, or `TooLarge` when the memory is not there.
fn allocate(what: &str, elements: u64) -> Result<Vec<f32>, DataError> {
    let mut values = Vec::new();
    usize::try_from(elements)
        .ok()
        .and_then(|n| values.try_reserve_exact(n).ok())
        .ok_or_else(|| {
            DataError::TooLarge(format!(
                "{what}: {elements} values do not fit in this worker's memory; send a smaller \
                 tensor"
            ))
        })?;
    Ok(values)
}

/// Read `elements` values of `elem` in chunks, converting them as they come. `Err(found)`
/// when the input ends after `found` bytes of values.
fn read_values(
    what: &str,
    reader: &mut dyn Read,
    elem: Elem,
    big_endian: bool,
    elements: u64,
) -> Result<Result<Vec<f32>, u64>, DataError> {
    let mut values = allocate(what, elements)?;
    let total = elements * elem.size() as u64;
    let mut buf = vec![0u8; READ_CHUNK.min(total as usize)];
    let mut done = 0u64;
    while done < total {
        let want = buf.len().min((total - done) as usize);
        let got = read_full(reader, &mut buf[..want]).map_err(|e| io_error(what, &e))?;
        done += got as u64;
        if got < want {
            return Ok(Err(done));
        }
        convert(elem, big_endian, &buf[..got], &mut values);
    }
    Ok(Ok(values))
}

// ---------------------------------------------------------------------------------------
// .npy

/// What an `.npy` header says.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    elem: Elem,
    big_endian: bool,
    shape: Vec<usize>,
}

/// A Python literal as found in an `.npy` header.
#[derive(Debug, PartialEq)]
enum Py {
    Str(String),
    Bool(bool),
    Int(u64),
    None,
    Seq(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

/// A parser of the Python literals numpy writes in `.npy` headers (`repr` of a dict).
struct PyParser<'a> {
    text: &'a [u8],
    pos: usize,
}

impl PyParser<'_> {
    const MAX_DEPTH: usize = 16;

    fn skip_ws(&mut self) {
        while self.text.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        if self.text.get(self.pos) == Some(&byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Py> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        let rest = &self.text[self.pos..];
        match *rest.first()? {
            quote @ (b'\'' | b'"') => {
                let mut out = Vec::new();
                let mut i = 1;
                loop {
                    match *rest.get(i)? {
                        b if b == quote => break,
                        b'\\' => {
                            out.push(*rest.get(i + 1)?);
                            i += 2;
                        }
                        b => {
                            out.push(b);
                            i += 1;
                        }
                    }
                }
                self.pos += i + 1;
                String::from_utf8(out).ok().map(Py::Str)
            }
            b'(' | b'[' => {
                let close = if rest[0] == b'(' { b')' } else { b']' };
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(close) {
                        return Some(Py::Seq(items));
                    }
                    items.push(self.value(depth + 1)?);
                    if !self.eat(b',') {
                        return self.eat(close).then_some(Py::Seq(items));
                    }
                }
            }
            b'{' => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return Some(Py::Dict(items));
                    }
                    let key = self.value(depth + 1)?;
                    if !self.eat(b':') {
                        return None;
                    }
                    let value = self.value(depth + 1)?;
                    items.push((key, value));
                    if !self.eat(b',') {
                        return self.eat(b'}').then_some(Py::Dict(items));
                    }
                }
            }
            b'0'..=b'9' => {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                let n = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
                self.pos += digits;
                // Python 2 wrote long integers as `3L`.
                if self.text.get(self.pos) == Some(&b'L') {
                    self.pos += 1;
                }
                Some(Py::Int(n))
            }
            _ => {
                for (word, value) in [
                    (&b"True"[..], Py::Bool(true)),
                    (b"False", Py::Bool(false)),
                    (b"None", Py::None),
                ] {
                    if rest.starts_with(word) {
                        self.pos += word.len();
                        return Some(value);
                    }
                }
                None
            }
        }
    }
}

/// The element type of an `.npy` `descr` such as `<f4`; `Err` says why it is not read.
fn npy_elem(what: &str, descr: &str) -> Result<(Elem, bool), DataError> {
    let (big_endian, code) = match descr.as_bytes().first() {
        Some(b'>') => (true, &descr[1..]),
        Some(b'<' | b'|' | b'=') => (false, &descr[1..]),
        _ => (false, descr),
    };
    let elem = match code {
        "f2" | "e" => Elem::F16,
        "f4" | "f" => Elem::F32,
        "f8" | "d" => Elem::F64,
        "i1" | "b" => Elem::I8,
        "i2" | "h" => Elem::I16,
        "i4" | "i" => Elem::I32,
        "i8" | "q" => Elem::I64,
        "u1" | "B" => Elem::U8,
        "u2" | "H" => Elem::U16,
        "u4" | "I" => Elem::U32,
        "u8" | "Q" => Elem::U64,
        "b1" | "?" => Elem::Bool,
        "O" | "O8" | "O4" => {
            return Err(invalid(format!(
                "{what} holds Python objects (dtype object); save a numeric array instead \
                 (np.save(f, a.astype(np.float32)))"
            )));
        }
        _ => {
            return Err(invalid(format!(
                "{what} has dtype {descr:?}, which kiln does not read; save it as float32 \
                 (np.save(f, a.astype(np.float32)))"
            )));
        }
    };
    Ok((elem, big_endian))
}

/// Read an `.npy` header (magic, version, header length, dict), leaving the reader at the
/// first value.
fn read_npy_header(what: &str, reader: &mut dyn Read) -> Result<NpyHeader, DataError> {
    let cut = || {
        invalid(format!(
            "{what}: truncated: the .npy header is cut short; upload the whole file again"
        ))
    };
    let mut start = [0u8; 8];
    if read_full(reader, &mut start).map_err(|e| io_error(what, &e))? < start.len() {
        return Err(cut());
    }
    if !start.starts_with(NPY_MAGIC) {
        return Err(invalid(format!(
            "{what} is not a .npy file (no \\x93NUMPY magic); save it with np.save"
        )));
    }
    let (major, minor) = (start[6], start[7]);
    let header_len = match major {
        1 => {
            let mut len = [0u8; 2];
            if read_full(reader, &mut len).map_err(|e| io_error(what, &e))? < 2 {
                return Err(cut());
            }
            u64::from(u16::from_le_bytes(len))
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            if read_full(reader, &mut len).map_err(|e| io_error(what, &e))? < 4 {
                return Err(cut());
            }
            u64::from(u32::from_le_bytes(len))
        }
        _ => {
            return Err(invalid(format!(
                "{what} is .npy version {major}.{minor}, which kiln does not read; save it \
                 with np.save (versions 1.0 to 3.0)"
            )));
        }
    };
    if header_len > MAX_NPY_HEADER {
        return Err(invalid(format!(
            "{what}: its .npy header claims {header_len} bytes, more than any numpy writes; \
             save it again with np.save"
        )));
    }
    let mut text = Vec::new();
    reader
        .take(header_len)
        .read_to_end(&mut text)
        .map_err(|e| io_error(what, &e))?;
    if (text.len() as u64) < header_len {
        return Err(cut());
    }
    parse_npy_dict(what, &text)
}

fn parse_npy_dict(what: &str, text: &[u8]) -> Result<NpyHeader, DataError> {
    let bad = |why: &str| {
        invalid(format!(
            "{what}: its .npy header {why}; save it again with np.save"
        ))
    };
    let mut parser = PyParser { text, pos: 0 };
    let Some(Py::Dict(items)) = parser.value(0) else {
        return Err(bad("is not a Python dict"));
    };
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
            .map(|(_, v)| v)
    };
    let (elem, big_endian) = match get("descr") {
        Some(Py::Str(descr)) => npy_elem(what, descr)?,
        Some(Py::Seq(_)) => {
            return Err(invalid(format!(
                "{what} has a structured dtype (named fields), which kiln does not read; save \
                 one plain numeric array per file"
            )));
        }
        _ => return Err(bad("has no dtype ('descr')")),
    };
    match get("fortran_order") {
        Some(Py::Bool(false)) => {}
        Some(Py::Bool(true)) => {
            return Err(invalid(format!(
                "{what} is stored in Fortran (column-major) order, which kiln does not read; \
                 save it with np.save(f, np.ascontiguousarray(a))"
            )));
        }
        _ => return Err(bad("has no 'fortran_order'")),
    }
    let shape = match get("shape") {
        Some(Py::Seq(dims)) => dims
            .iter()
            .map(|d| match d {
                Py::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("has a shape that is not a tuple of sizes"))?,
        _ => return Err(bad("has no shape")),
    };
    Ok(NpyHeader {
        elem,
        big_endian,
        shape,
    })
}

fn read_npy(what: &str, reader: &mut dyn Read, max_elements: u64) -> Result<HostTensor, DataError> {
    let header = read_npy_header(what, reader)?;
    let elements = count_elements(what, &header.shape, max_elements, "tensor")?;
    let bytes = elements
        .checked_mul(header.elem.size() as u64)
        .ok_or_else(|| {
            DataError::TooLarge(format!(
                "{what}: its size overflows 64 bits; send a smaller tensor"
            ))
        })?;
    let values = read_values(what, reader, header.elem, header.big_endian, elements)?
        .map_err(|found| truncated(what, bytes, found))?;
    drain(what, reader)?;
    Ok(HostTensor {
        shape: header.shape,
        data: values,
    })
}

/// The `.npy` header (magic, version, header dict, padding) of an f32 little-endian tensor of
/// `shape`; the values follow as raw little-endian f32.
pub fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Version 1.0 (2-byte length) unless the dict is too long for it; either way the
    // values start at a multiple of 64 bytes, as numpy aligns them.
    let (version, prefix_len) = if dict.len() + 1 + 64 <= usize::from(u16::MAX) {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let total = (prefix_len + dict.len() + 1).next_multiple_of(64);
    let header_len = total - prefix_len;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// A whole `.npy` file for `tensor`.
pub fn encode_npy(tensor: &HostTensor) -> Vec<u8> {
    let mut out = npy_header(&tensor.shape);
    for v in &tensor.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------
// safetensors

/// Read a safetensors header (length and JSON), leaving the reader at the first value.
fn read_safetensors_header(what: &str, reader: &mut dyn Read) -> Result<Metadata, DataError> {
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
    serde_json::from_slice::<Metadata>(&text).map_err(|e| {
        invalid(format!(
            "{what}: its safetensors header is not valid ({e}); save the file again with \
             safetensors"
        ))
    })
}

/// Names for a message: all of them, or the first 20 and how many more.
fn list_names(names: &[String]) -> String {
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
fn choose_key(what: &str, names: &[String], key: Option<&str>) -> Result<String, DataError> {
    match (key, names) {
        (_, []) => Err(invalid(format!(
            "{what} holds no tensors; store at least one"
        ))),
        (Some(key), _) if names.iter().any(|n| n == key) => Ok(key.to_string()),
        (Some(key), _) => Err(invalid(format!(
            "{what} has no tensor {key:?}; pick one of {} with \"tensor\"",
            list_names(names)
        ))),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(invalid(format!(
            "{what} holds {} tensors ({}); pick one with \"tensor\": \"NAME\"",
            names.len(),
            list_names(names)
        ))),
    }
}

fn tensor_elem(what: &str, key: &str, info: &TensorInfo) -> Result<Elem, DataError> {
    Elem::from_safetensors(info.dtype).ok_or_else(|| {
        invalid(format!(
            "{what}: tensor {key:?} has dtype {}, which kiln does not read; store it as F32 \
             (or F16, BF16, F64, an integer type or BOOL)",
            info.dtype
        ))
    })
}

fn read_safetensors(
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
    Ok(HostTensor {
        shape: info.shape.clone(),
        data: values,
    })
}

/// A safetensors file in memory: its header and its values.
struct Safetensors<'a> {
    metadata: Metadata,
    data: &'a [u8],
}

impl<'a> Safetensors<'a> {
    fn parse(what: &str, bytes: &'a [u8]) -> Result<Self, DataError> {
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

    fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.metadata.info(key)
    }

    /// The tensor `key` as f32; its values count against `budget`.
    fn tensor(&self, what: &str, key: &str, budget: &mut u64) -> Result<HostTensor, DataError> {
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
        );
        Ok(HostTensor {
            shape: info.shape.clone(),
            data: values,
        })
    }
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
                    "{what} is .npy: it holds one tensor; drop \"tensor\" ({key:?})"
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

// ---------------------------------------------------------------------------------------
// Images

/// Decode a PNG or JPEG into channels × height × width, values in [0, 1] (8-bit) as
/// torchvision's `ToTensor` does; grey images have 1 channel, grey with alpha 2, RGB 3,
/// RGBA 4. 16-bit PNGs are scaled by 1/65535. The image's size is checked against
/// `max_elements` before it is decoded.
pub fn decode_image(what: &str, bytes: &[u8], max_elements: u64) -> Result<HostTensor, DataError> {
    let format = Format::sniff(bytes);
    let cursor = io::Cursor::new(bytes);
    match format {
        Some(Format::Png) => {
            let mut limits = image::Limits::default();
            // The decoder's own allocations: the pixels (at most 16 bits a value) and slack
            // for metadata chunks.
            limits.max_alloc = Some(max_elements.saturating_mul(2).max(1 << 29));
            let decoder = image::codecs::png::PngDecoder::with_limits(cursor, limits)
                .map_err(|e| image_error(what, "PNG", e))?;
            decode_pixels(what, "PNG", decoder, max_elements)
        }
        Some(Format::Jpeg) => {
            let decoder = image::codecs::jpeg::JpegDecoder::new(cursor)
                .map_err(|e| image_error(what, "JPEG", e))?;
            decode_pixels(what, "JPEG", decoder, max_elements)
        }
        other => Err(invalid(format!(
            "{what} is {}, not a PNG or JPEG image; store the image as PNG or JPEG",
            Format::describe(other)
        ))),
    }
}

fn image_error(what: &str, kind: &str, error: image::ImageError) -> DataError {
    match error {
        image::ImageError::Limits(e) => DataError::TooLarge(format!(
            "{what}: decoding this {kind} needs more memory than this worker allows ({e}); \
             send a smaller image"
        )),
        e => invalid(format!(
            "{what} is not a valid {kind} ({e}); save the image again (for example with PIL's \
             Image.save)"
        )),
    }
}

fn decode_pixels(
    what: &str,
    kind: &str,
    decoder: impl ImageDecoder,
    max_elements: u64,
) -> Result<HostTensor, DataError> {
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    let channels = usize::from(color.channel_count());
    let (h, w) = (height as usize, width as usize);
    let shape = vec![channels, h, w];
    count_elements(what, &shape, max_elements, "image")?;
    let mut pixels = vec![0u8; usize::try_from(decoder.total_bytes()).unwrap_or(usize::MAX)];
    decoder
        .read_image(&mut pixels)
        .map_err(|e| image_error(what, kind, e))?;
    let values: Vec<f32> = match color {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => {
            pixels.iter().map(|&v| f32::from(v) / 255.0).collect()
        }
        ColorType::L16 | ColorType::La16 | ColorType::Rgb16 | ColorType::Rgba16 => pixels
            .chunks_exact(2)
            .map(|v| f32::from(u16::from_ne_bytes([v[0], v[1]])) / 65535.0)
            .collect(),
        ColorType::Rgb32F | ColorType::Rgba32F => pixels
            .chunks_exact(4)
            .map(|v| f32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
            .collect(),
        other => {
            return Err(invalid(format!(
                "{what}: its {kind} pixel format {other:?} is not read by kiln; save it as 8-bit \
                 grey, RGB or RGBA"
            )));
        }
    };
    // Interleaved (height, width, channel) to planar (channel, height, width).
    let plane = h * w;
    let mut data = vec![0f32; plane * channels];
    for (i, pixel) in values.chunks_exact(channels).enumerate() {
        for (c, &v) in pixel.iter().enumerate() {
            data[c * plane + i] = v;
        }
    }
    Ok(HostTensor { shape, data })
}

/// A PNG of a tensor shaped [H, W], [C, H, W] or [1, C, H, W] with C of 1 (grey), 2 (grey
/// and alpha), 3 (RGB) or 4 (RGBA): values clamped to [0, 1] and scaled to 8 bits; NaN
/// becomes 0.
pub fn encode_png(tensor: &HostTensor) -> Result<Vec<u8>, DataError> {
    let (c, h, w) = match tensor.shape[..] {
        [h, w] => (1, h, w),
        [c, h, w] | [1, c, h, w] => (c, h, w),
        _ => (0, 0, 0),
    };
    let color = match c {
        1 => image::ExtendedColorType::L8,
        2 => image::ExtendedColorType::La8,
        3 => image::ExtendedColorType::Rgb8,
        4 => image::ExtendedColorType::Rgba8,
        _ => {
            return Err(invalid(format!(
                "a tensor of shape {:?} is not an image; PNG output takes [H, W], [C, H, W] or \
                 [1, C, H, W] with C of 1, 2, 3 or 4",
                tensor.shape
            )));
        }
    };
    let (Ok(width), Ok(height)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(invalid(format!(
            "an image of shape {:?} is too large for PNG; store it as .npy",
            tensor.shape
        )));
    };
    if w == 0 || h == 0 {
        return Err(invalid(format!(
            "an image of shape {:?} is empty, which PNG cannot hold; store it as .npy",
            tensor.shape
        )));
    }
    let plane = h * w;
    if tensor.data.len() != plane * c {
        return Err(invalid(format!(
            "a tensor of shape {:?} holds {} values instead of {}; fix its shape",
            tensor.shape,
            tensor.data.len(),
            plane * c
        )));
    }
    let to_u8 = |v: f32| {
        if v.is_nan() {
            0
        } else {
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        }
    };
    let mut pixels = vec![0u8; plane * c];
    for (channel, values) in tensor.data.chunks_exact(plane).enumerate() {
        for (i, &v) in values.iter().enumerate() {
            pixels[i * c + channel] = to_u8(v);
        }
    }
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &pixels,
        width,
        height,
        color,
    )
    .map_err(|e| {
        invalid(format!(
            "could not encode a PNG of shape {:?}: {e}",
            tensor.shape
        ))
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Datasets

/// Read a dataset: CSV (one sample a row: features…, label; an optional header row) or
/// safetensors with `x` (samples × features) and `y` (one integer label a sample).
///
/// Labels are non-negative integers (floats with integral values are accepted); a dataset
/// needs at least two classes. Features must be finite numbers.
pub fn decode_dataset(what: &str, bytes: &[u8], max_elements: u64) -> Result<Dataset, DataError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid(format!(
            "{what} is empty; a dataset needs rows of features…, label"
        )));
    }
    let dataset = match Format::sniff(bytes) {
        Some(Format::Csv) => decode_csv(what, bytes, max_elements)?,
        Some(Format::Safetensors) => decode_xy(what, bytes, max_elements)?,
        other => {
            return Err(invalid(format!(
                "{what} is {}, not a dataset; store a CSV (features…, label per row) or a \
                 safetensors file with x and y",
                Format::describe(other)
            )));
        }
    };
    check_classes(what, &dataset.y)?;
    Ok(dataset)
}

fn check_classes(what: &str, y: &[u32]) -> Result<(), DataError> {
    let classes: BTreeSet<u32> = y.iter().copied().collect();
    match classes.first() {
        None => Err(invalid(format!(
            "{what} holds no samples; a dataset needs rows of features…, label"
        ))),
        Some(only) if classes.len() == 1 => Err(invalid(format!(
            "{what} has one class (label {only}): a classifier needs at least two"
        ))),
        Some(_) => Ok(()),
    }
}

/// A label: a non-negative integer that fits u32 (an integral float is accepted).
fn label(value: f64) -> Option<u32> {
    (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX))
        .then_some(value as u32)
}

fn decode_csv(what: &str, bytes: &[u8], max_elements: u64) -> Result<Dataset, DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut record = csv::StringRecord::new();
    let mut columns = None;
    let mut x = Vec::new();
    let mut y = Vec::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                return Err(invalid(format!(
                    "{what}: line {line} is not valid CSV ({e}); save it as plain UTF-8 \
                     comma-separated text"
                )));
            }
        }
        let line = record.position().map_or(0, csv::Position::line);
        let Some(expected) = columns else {
            if record.len() < 2 {
                return Err(invalid(format!(
                    "{what} has {} column on line {line}: a dataset row is features…, label \
                     (at least 2 columns)",
                    record.len()
                )));
            }
            columns = Some(record.len());
            if record.iter().any(|field| field.parse::<f64>().is_err()) {
                // A header row.
                continue;
            }
            record_row(what, &record, line, max_elements, &mut x, &mut y)?;
            continue;
        };
        if record.len() != expected {
            return Err(invalid(format!(
                "{what}: line {line} has {} fields, but the first row has {expected}; give \
                 every row the same columns",
                record.len()
            )));
        }
        record_row(what, &record, line, max_elements, &mut x, &mut y)?;
    }
    let features = columns.unwrap_or(1) - 1;
    Ok(Dataset {
        x: HostTensor {
            shape: vec![y.len(), features],
            data: x,
        },
        y,
    })
}

fn record_row(
    what: &str,
    record: &csv::StringRecord,
    line: u64,
    max_elements: u64,
    x: &mut Vec<f32>,
    y: &mut Vec<u32>,
) -> Result<(), DataError> {
    let features = record.len() - 1;
    if (x.len() + features) as u64 > max_elements {
        return Err(DataError::TooLarge(format!(
            "{what} holds more than {max_elements} feature values, over this worker's limit \
             (--max-elements); send a smaller dataset"
        )));
    }
    for (column, field) in record.iter().take(features).enumerate() {
        let column = column + 1;
        let value: f32 = field.parse::<f64>().map_err(|_| {
            invalid(format!(
                "{what}: line {line}, column {column}: {field:?} is not a number; features \
                 must be numbers"
            ))
        })? as f32;
        if !value.is_finite() {
            return Err(invalid(format!(
                "{what}: line {line}, column {column}: {field:?} is not a finite number; fill \
                 in or drop the row"
            )));
        }
        x.push(value);
    }
    let field = &record[features];
    let class = field.parse::<f64>().ok().and_then(label).ok_or_else(|| {
        invalid(format!(
            "{what}: line {line}, column {}: label {field:?} is not a class number; labels \
             are non-negative integers (0, 1, 2, …)",
            features + 1
        ))
    })?;
    y.push(class);
    Ok(())
}

fn decode_xy(what: &str, bytes: &[u8], max_elements: u64) -> Result<Dataset, DataError> {
    let file = Safetensors::parse(what, bytes)?;
    let missing = |name: &str| {
        invalid(format!(
            "{what} has no tensor {name:?}: a dataset in safetensors holds x (samples × \
             features) and y (one label a sample); it has {}",
            list_names(&file.names())
        ))
    };
    let x_info = file.info("x").ok_or_else(|| missing("x"))?;
    let y_info = file.info("y").ok_or_else(|| missing("y"))?;
    let (samples, features) = match x_info.shape[..] {
        [samples, features] => (samples, features),
        _ => {
            return Err(invalid(format!(
                "{what}: x has shape {:?}; it must be 2-D (samples × features)",
                x_info.shape
            )));
        }
    };
    if y_info.shape != [samples] {
        return Err(invalid(format!(
            "{what}: y has shape {:?}, but x has {samples} samples; y must be 1-D with one \
             label a sample",
            y_info.shape
        )));
    }
    if features == 0 && samples > 0 {
        return Err(invalid(format!(
            "{what}: x has no features (shape {:?}); give each sample at least one",
            x_info.shape
        )));
    }
    let mut budget = max_elements;
    let x = file.tensor(what, "x", &mut budget)?;
    if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
        return Err(invalid(format!(
            "{what}: x holds a NaN or infinity at sample {}, feature {}; fill in or drop it",
            i / features,
            i % features
        )));
    }
    let mut budget = u64::MAX;
    let labels = file.tensor(what, "y", &mut budget)?;
    let y = labels
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            label(f64::from(v)).ok_or_else(|| {
                invalid(format!(
                    "{what}: y[{i}] is {v}, not a class number; labels are non-negative \
                     integers (0, 1, 2, …)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dataset { x, y })
}

// ---------------------------------------------------------------------------------------
// Models

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
    safetensors::serialize(
        model
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), F32View(t))),
        metadata,
    )
    .map_err(|e| invalid(format!("could not write the model as safetensors: {e}")))
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
        Some(Format::Png) if prefix.len() >= 26 && &prefix[12..16] == b"IHDR" => {
            let be = |i: usize| {
                u32::from_be_bytes([prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]])
            };
            let channels = match prefix[25] {
                0 => 1,
                4 => 2,
                2 | 3 => 3,
                _ => 4,
            };
            let dtype = if prefix[24] == 16 { "u16" } else { "u8" };
            (vec![channels, u64::from(be(20)), u64::from(be(16))], dtype)
        }
        _ => (Vec::new(), ""),
    };
    (format, shape, dtype.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use image::ImageEncoder as _;

    use super::*;

    /// An `.npy` file as numpy writes it: version 1.0, dict padded to 64 bytes.
    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
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
    fn safetensors(entries: &[(&str, &str, &[usize], Vec<u8>)], meta: Option<&str>) -> Vec<u8> {
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

    fn le<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| f(v)).collect()
    }

    fn read(bytes: &[u8], key: Option<&str>) -> Result<HostTensor, DataError> {
        read_tensor("t", &mut &bytes[..], key, 1 << 20)
    }

    fn message(result: Result<impl std::fmt::Debug, DataError>) -> String {
        match result.expect_err("expected an error") {
            DataError::Invalid(m) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// A reader that counts the bytes taken from it.
    struct Counting<'a> {
        inner: &'a [u8],
        taken: usize,
    }

    impl Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken += n;
            Ok(n)
        }
    }

    #[test]
    fn reads_npy_f32_in_c_order() {
        let values = [1.5f32, -2.0, 3.25, 0.0, 1e-3, 7.0];
        let file = npy("<f4", false, "(2, 3)", &le(&values, f32::to_le_bytes));
        let t = read(&file, None).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, values);
    }

    #[test]
    fn reads_npy_f64_f16_and_integers_as_f32() {
        let f64s = [0.5f64, -1e10, 3.0];
        let t = read(
            &npy("<f8", false, "(3,)", &le(&f64s, f64::to_le_bytes)),
            None,
        )
        .unwrap();
        assert_eq!(t.data, vec![0.5, -1e10, 3.0]);

        let f16s = [0.5f32, -1.25, 1024.0, 65504.0].map(half::f16::from_f32);
        let t = read(
            &npy("<f2", false, "(2, 2)", &le(&f16s, half::f16::to_le_bytes)),
            None,
        )
        .unwrap();
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(t.data, vec![0.5, -1.25, 1024.0, 65504.0]);

        // 2^24 + 1 is past f32's 24-bit significand: it rounds to 2^24, as documented.
        let i32s = [-7i32, 0, 1 << 24, (1 << 24) + 1];
        let t = read(
            &npy("<i4", false, "(4,)", &le(&i32s, i32::to_le_bytes)),
            None,
        )
        .unwrap();
        assert_eq!(t.data, vec![-7.0, 0.0, 16_777_216.0, 16_777_216.0]);

        let t = read(&npy("|u1", false, "(3,)", &[0, 128, 255]), None).unwrap();
        assert_eq!(t.data, vec![0.0, 128.0, 255.0]);

        let t = read(&npy("|b1", false, "(3,)", &[1, 0, 1]), None).unwrap();
        assert_eq!(t.data, vec![1.0, 0.0, 1.0]);

        let i64s = [-3i64, 1 << 40];
        let t = read(
            &npy("<i8", false, "(2,)", &le(&i64s, i64::to_le_bytes)),
            None,
        )
        .unwrap();
        assert_eq!(t.data, vec![-3.0, (1u64 << 40) as f32]);
    }

    #[test]
    fn reads_big_endian_npy() {
        let values = [1.0f32, -0.25, 1e20];
        let t = read(
            &npy(">f4", false, "(3,)", &le(&values, f32::to_be_bytes)),
            None,
        )
        .unwrap();
        assert_eq!(t.data, values);
        let shorts = [-2i16, 300];
        let t = read(
            &npy(">i2", false, "(1, 2)", &le(&shorts, i16::to_be_bytes)),
            None,
        )
        .unwrap();
        assert_eq!((t.shape, t.data), (vec![1, 2], vec![-2.0, 300.0]));
    }

    #[test]
    fn reads_npy_scalars_empty_arrays_and_version_2() {
        let t = read(&npy("<f4", false, "()", &2.5f32.to_le_bytes()), None).unwrap();
        assert_eq!((t.shape, t.data), (vec![], vec![2.5]));
        let t = read(&npy("<f4", false, "(0, 3)", &[]), None).unwrap();
        assert_eq!((t.shape, t.data), (vec![0, 3], vec![]));

        // Version 2.0: a 4-byte header length.
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }";
        let total = (12 + dict.len() + 1).next_multiple_of(64);
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&((total - 12) as u32).to_le_bytes());
        v2.extend_from_slice(dict.as_bytes());
        v2.resize(total - 1, b' ');
        v2.push(b'\n');
        v2.extend_from_slice(&4.0f32.to_le_bytes());
        let t = read(&v2, None).unwrap();
        assert_eq!(t.data, vec![4.0]);
    }

    #[test]
    fn refuses_fortran_order_object_and_structured_npy() {
        let m = message(read(&npy("<f4", true, "(2, 2)", &[0; 16]), None));
        assert!(m.starts_with("t is stored in Fortran"), "{m}");
        assert!(m.contains("np.ascontiguousarray"), "{m}");

        let m = message(read(&npy("|O", false, "(1,)", &[0; 8]), None));
        assert!(m.starts_with("t holds Python objects"), "{m}");

        let structured = npy_structured();
        let m = message(read(&structured, None));
        assert!(m.contains("structured dtype"), "{m}");

        let m = message(read(&npy("<c8", false, "(1,)", &[0; 8]), None));
        assert!(m.contains("dtype \"<c8\""), "{m}");
    }

    fn npy_structured() -> Vec<u8> {
        let dict =
            "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (1,), }";
        let total = (10 + dict.len() + 1).next_multiple_of(64);
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        out.extend_from_slice(&[0; 8]);
        out
    }

    #[test]
    fn refuses_truncated_npy() {
        let file = npy("<f4", false, "(2, 3)", &[0u8; 10]);
        assert_eq!(
            message(read(&file, None)),
            "t: truncated: header says 24 bytes of values, found 10; upload the whole file again"
        );
        let m = message(read(&file[..20], None));
        assert!(m.starts_with("t: truncated: the .npy header"), "{m}");
    }

    #[test]
    fn refuses_too_many_elements_from_the_header_before_reading_values() {
        let file = npy("<f4", false, "(1000000, 1000000)", &[0u8; 64]);
        let header_len = file.len() - 64;
        let mut reader = Counting {
            inner: &file,
            taken: 0,
        };
        let result = read_tensor("big", &mut reader, None, 1 << 20);
        match result {
            Err(DataError::TooLarge(m)) => {
                assert!(
                    m.starts_with("big: tensor of shape [1000000, 1000000] holds"),
                    "{m}"
                );
                assert!(m.contains("1000000000000 values"), "{m}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(reader.taken, header_len, "no value was read");

        // A shape whose product overflows u64.
        let file = npy("<f4", false, "(18446744073709551615, 3)", &[]);
        assert!(matches!(read(&file, None), Err(DataError::TooLarge(_))));
    }

    #[test]
    fn npy_with_a_key_is_refused() {
        let file = npy("<f4", false, "(1,)", &[0; 4]);
        let m = message(read(&file, Some("w")));
        assert!(
            m.starts_with("t is .npy: it holds one tensor; drop \"tensor\""),
            "{m}"
        );
    }

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
            "t holds 2 tensors (\"a\", \"b\"); pick one with \"tensor\": \"NAME\""
        );
        assert_eq!(
            message(read(&file, Some("c"))),
            "t has no tensor \"c\"; pick one of \"a\", \"b\" with \"tensor\""
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
    fn refuses_non_tensors() {
        let m = message(read(b"1,2,3\n4,5,6\n", None));
        assert_eq!(
            m,
            "t is CSV text, not a tensor; store a .npy (np.save) or safetensors file"
        );
        let m = message(read(&[0u8, 1, 2], None));
        assert!(m.starts_with("t is in no format kiln reads"), "{m}");
    }

    fn png(pixels: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(pixels, w, h, color)
            .unwrap();
        out
    }

    #[test]
    fn decodes_png_to_channels_height_width() {
        // 3 wide, 2 high, RGB.
        let pixels: Vec<u8> = (0..18).map(|i| i * 10).collect();
        let file = png(&pixels, 3, 2, image::ExtendedColorType::Rgb8);
        let t = decode_image("img", &file, 1000).unwrap();
        assert_eq!(t.shape, vec![3, 2, 3]);
        // Channel 0 is every third byte.
        let red: Vec<f32> = pixels
            .iter()
            .step_by(3)
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        assert_eq!(&t.data[..6], &red[..]);
        assert_eq!(t.data[6], 10.0 / 255.0);

        let grey = png(&[0, 255, 51, 102], 2, 2, image::ExtendedColorType::L8);
        let t = decode_image("img", &grey, 1000).unwrap();
        assert_eq!((t.shape, t.data), (vec![1, 2, 2], vec![0.0, 1.0, 0.2, 0.4]));

        let grey_alpha = png(&[255, 0], 1, 1, image::ExtendedColorType::La8);
        let t = decode_image("img", &grey_alpha, 1000).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 1, 1], vec![1.0, 0.0]));

        let rgba = png(&[0, 51, 102, 255], 1, 1, image::ExtendedColorType::Rgba8);
        let t = decode_image("img", &rgba, 1000).unwrap();
        assert_eq!((t.shape, t.data), (vec![4, 1, 1], vec![0.0, 0.2, 0.4, 1.0]));

        // 16-bit: scaled by 1/65535 (the encoder takes native-endian samples).
        let samples = le(&[0u16, 65535, 13107], u16::to_ne_bytes);
        let deep = png(&samples, 3, 1, image::ExtendedColorType::L16);
        let t = decode_image("img", &deep, 1000).unwrap();
        assert_eq!((t.shape, t.data), (vec![1, 1, 3], vec![0.0, 1.0, 0.2]));
    }

    #[test]
    fn decodes_jpeg() {
        let mut file = Vec::new();
        let pixels: Vec<u8> = [200u8, 100, 50].repeat(64);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 100)
            .write_image(&pixels, 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(Format::sniff(&file), Some(Format::Jpeg));
        let t = decode_image("photo", &file, 1000).unwrap();
        assert_eq!(t.shape, vec![3, 8, 8]);
        for (channel, want) in [200.0f32, 100.0, 50.0].into_iter().enumerate() {
            for &v in &t.data[channel * 64..(channel + 1) * 64] {
                assert!((v * 255.0 - want).abs() <= 3.0, "channel {channel}: {v}");
            }
        }
        let mut grey = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut grey, 100)
            .write_image(&[128u8; 16], 4, 4, image::ExtendedColorType::L8)
            .unwrap();
        let t = decode_image("photo", &grey, 1000).unwrap();
        assert_eq!(t.shape, vec![1, 4, 4]);
        assert!(
            t.data.iter().all(|v| (v * 255.0 - 128.0).abs() <= 2.0),
            "{:?}",
            t.data
        );
    }

    #[test]
    fn refuses_images_over_the_element_limit_and_non_images() {
        let file = png(&[0u8; 48], 4, 4, image::ExtendedColorType::Rgb8);
        assert!(decode_image("img", &file, 48).is_ok());
        match decode_image("img", &file, 47) {
            Err(DataError::TooLarge(m)) => {
                assert!(
                    m.starts_with("img: image of shape [3, 4, 4] holds 48 values"),
                    "{m}"
                )
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let m = message(decode_image("img", &encode_npy(&HostTensor::default()), 10));
        assert_eq!(
            m,
            "img is a .npy tensor, not a PNG or JPEG image; store the image as PNG or JPEG"
        );
        let m = message(decode_image("img", &file[..40], 100));
        assert!(m.starts_with("img is not a valid PNG"), "{m}");
    }

    #[test]
    fn encode_png_round_trips_through_decode_image() {
        let data: Vec<f32> = (0..12).map(|i| (i * 20) as f32 / 255.0).collect();
        let t = HostTensor::new(vec![3, 2, 2], data.clone());
        let back = decode_image("out", &encode_png(&t).unwrap(), 100).unwrap();
        assert_eq!(back, t);

        // [1, C, H, W] and [H, W]; clamping and NaN.
        let t = HostTensor::new(vec![1, 4, 1, 2], data[..8].to_vec());
        assert_eq!(
            decode_image("out", &encode_png(&t).unwrap(), 100)
                .unwrap()
                .data,
            data[..8]
        );
        let t = HostTensor::new(vec![1, 4], vec![-1.0, 2.0, f32::NAN, 0.5]);
        let back = decode_image("out", &encode_png(&t).unwrap(), 100).unwrap();
        assert_eq!(back.shape, vec![1, 1, 4]);
        assert_eq!(back.data, vec![0.0, 1.0, 0.0, 128.0 / 255.0]);
        let t = HostTensor::new(vec![2, 1, 1], vec![1.0, 0.0]);
        assert_eq!(
            decode_image("out", &encode_png(&t).unwrap(), 100).unwrap(),
            t
        );

        for shape in [vec![5, 2, 2], vec![2, 3, 2, 2], vec![4], vec![0, 3]] {
            let n = shape.iter().product();
            let m = message(encode_png(&HostTensor::new(shape, vec![0.0; n])));
            assert!(
                m.contains("[H, W], [C, H, W] or [1, C, H, W]") || m.contains("empty"),
                "{m}"
            );
        }
    }

    fn dataset(text: &str) -> Result<Dataset, DataError> {
        decode_dataset("d.csv", text.as_bytes(), 1000)
    }

    #[test]
    fn reads_csv_with_and_without_a_header() {
        let d = dataset("f1,f2,label\n1,2,0\n3.5,-4e1,1\n").unwrap();
        assert_eq!(d.x.shape, vec![2, 2]);
        assert_eq!(d.x.data, vec![1.0, 2.0, 3.5, -40.0]);
        assert_eq!(d.y, vec![0, 1]);

        let d = dataset(" 0.5 , 1.0 , 2.0\r\n\r\n1.5, 2.5, 0\r\n").unwrap();
        assert_eq!(d.x.data, vec![0.5, 1.0, 1.5, 2.5]);
        assert_eq!(d.y, vec![2, 0]);
    }

    #[test]
    fn refuses_bad_csv_naming_the_line() {
        assert_eq!(
            message(dataset("a,b,y\n1,2,0\n3,1\n")),
            "d.csv: line 3 has 2 fields, but the first row has 3; give every row the same columns"
        );
        assert_eq!(
            message(dataset("1,2,0\n1,x2,1\n")),
            "d.csv: line 2, column 2: \"x2\" is not a number; features must be numbers"
        );
        let m = message(dataset("1,2,0\nNaN,2,1\n"));
        assert!(
            m.starts_with("d.csv: line 2, column 1: \"NaN\" is not a finite number"),
            "{m}"
        );
        let m = message(dataset("1,2,0\n1,2,-1\n"));
        assert!(
            m.starts_with("d.csv: line 2, column 3: label \"-1\" is not a class number"),
            "{m}"
        );
        let m = message(dataset("1,2,0\n1,2,1.5\n"));
        assert!(m.contains("label \"1.5\""), "{m}");
        assert_eq!(
            message(dataset("1,2,0\n3,4,0.0\n")),
            "d.csv has one class (label 0): a classifier needs at least two"
        );
        let m = message(dataset("1\n2\n"));
        assert!(m.starts_with("d.csv has 1 column on line 1"), "{m}");
        let m = message(dataset("a,b,label\n"));
        assert!(m.starts_with("d.csv holds no samples"), "{m}");
        let m = message(dataset(""));
        assert!(m.starts_with("d.csv is empty"), "{m}");
        assert!(matches!(
            decode_dataset("d.csv", b"1,2,0\n3,4,1\n", 3),
            Err(DataError::TooLarge(_))
        ));
    }

    #[test]
    fn reads_safetensors_datasets() {
        let x = le(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], f32::to_le_bytes);
        let file = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "I64", &[3], le(&[0i64, 1, 2], i64::to_le_bytes)),
            ],
            None,
        );
        let d = decode_dataset("d", &file, 100).unwrap();
        assert_eq!(
            (d.x.shape, d.x.data),
            (vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        assert_eq!(d.y, vec![0, 1, 2]);

        let float_labels = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "F32", &[3], le(&[1.0f32, 0.0, 1.0], f32::to_le_bytes)),
            ],
            None,
        );
        assert_eq!(
            decode_dataset("d", &float_labels, 100).unwrap().y,
            vec![1, 0, 1]
        );

        let one_class = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "U8", &[3], vec![4, 4, 4]),
            ],
            None,
        );
        assert_eq!(
            message(decode_dataset("d", &one_class, 100)),
            "d has one class (label 4): a classifier needs at least two"
        );
        let short_y = safetensors(
            &[
                ("x", "F32", &[3, 2], x.clone()),
                ("y", "U8", &[2], vec![0, 1]),
            ],
            None,
        );
        let m = message(decode_dataset("d", &short_y, 100));
        assert!(
            m.starts_with("d: y has shape [2], but x has 3 samples"),
            "{m}"
        );
        let no_y = safetensors(&[("x", "F32", &[3, 2], x)], None);
        let m = message(decode_dataset("d", &no_y, 100));
        assert!(m.starts_with("d has no tensor \"y\""), "{m}");
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

    #[test]
    fn npy_header_is_aligned_and_reads_back() {
        for shape in [
            vec![],
            vec![3],
            vec![2, 3],
            vec![1, 2, 3, 4, 5],
            vec![usize::MAX; 3],
        ] {
            let header = npy_header(&shape);
            assert_eq!(header.len() % 64, 0, "{shape:?}");
            assert_eq!(
                usize::from(u16::from_le_bytes([header[8], header[9]])) + 10,
                header.len()
            );
            assert_eq!(header.last(), Some(&b'\n'));
            let parsed = read_npy_header("h", &mut &header[..]).unwrap();
            assert_eq!(
                parsed,
                NpyHeader {
                    elem: Elem::F32,
                    big_endian: false,
                    shape,
                }
            );
        }
        assert_eq!(
            &npy_header(&[2, 3])[10..],
            &npy("<f4", false, "(2, 3)", &[])[10..],
            "the dict numpy writes"
        );
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

    #[test]
    fn data_errors_become_job_errors_of_the_right_kind() {
        use kiln_proto::{ErrorKind, JobError};
        let kind = |e: DataError| JobError::from(e).kind;
        assert_eq!(
            kind(DataError::Invalid("x".into())),
            ErrorKind::InvalidInput
        );
        assert_eq!(kind(DataError::TooLarge("x".into())), ErrorKind::TooLarge);
        assert_eq!(kind(DataError::Io("x".into())), ErrorKind::Internal);
        assert_eq!(JobError::from(DataError::Invalid("m".into())).message, "m");
    }
}
