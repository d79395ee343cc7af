//! numpy's `.npy`: its header (a Python dict literal) read and written, its values streamed.

use std::io::Read;

use super::error::{invalid, io_error, truncated};
use super::values::{Elem, count_elements, drain, read_full, read_values};
use super::{DataError, NPY_MAGIC};
use crate::HostTensor;

/// Largest `.npy` header kiln reads (numpy itself refuses more than 10 000 bytes by default).
const MAX_NPY_HEADER: u64 = 1 << 20;

/// What an `.npy` header says.
#[derive(Debug, PartialEq)]
pub(super) struct NpyHeader {
    pub(super) elem: Elem,
    pub(super) big_endian: bool,
    pub(super) shape: Vec<usize>,
}

/// A Python literal as found in an `.npy` header.
#[derive(Debug, PartialEq)]
enum Py {
    Str(String),
    Bool(bool),
    Int(u64),
    /// A negative integer, by its magnitude (no size numpy writes; named in the error).
    Negative(u64),
    /// An integer past u64, as written (cut).
    Huge(String),
    None,
    Tuple(Vec<Py>),
    List(Vec<Py>),
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
        match *self.text.get(self.pos)? {
            quote @ (b'\'' | b'"') => self.string(quote),
            b'(' => self.seq(b')', depth),
            b'[' => self.seq(b']', depth).map(|items| match items {
                Py::Tuple(items) => Py::List(items),
                other => other,
            }),
            b'{' => self.dict(depth),
            b'0'..=b'9' => self.int(),
            b'-' if self.text.get(self.pos + 1).is_some_and(u8::is_ascii_digit) => {
                self.pos += 1;
                match self.int()? {
                    Py::Int(n) => Some(Py::Negative(n)),
                    other => Some(other),
                }
            }
            _ => self.word(),
        }
    }

    /// A string between `quote`s; a backslash keeps the byte after it as it is.
    fn string(&mut self, quote: u8) -> Option<Py> {
        let rest = &self.text[self.pos..];
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

    /// A tuple (or, once `value` has renamed it, a list), ending in `close`, a trailing comma
    /// allowed. As in Python, one item in parentheses without a comma is that item, not a tuple.
    fn seq(&mut self, close: u8, depth: usize) -> Option<Py> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Some(Py::Tuple(items));
            }
            items.push(self.value(depth + 1)?);
            if !self.eat(b',') {
                if !self.eat(close) {
                    return None;
                }
                return Some(match (close, items.len()) {
                    (b')', 1) => items.pop()?,
                    _ => Py::Tuple(items),
                });
            }
        }
    }

    /// A dict of `key: value` items, a trailing comma allowed.
    fn dict(&mut self, depth: usize) -> Option<Py> {
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

    /// A non-negative integer.
    fn int(&mut self) -> Option<Py> {
        let rest = &self.text[self.pos..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let text = std::str::from_utf8(&rest[..digits]).ok()?;
        self.pos += digits;
        // Past u64: no size a file can hold, named as such rather than as no Python dict.
        let Ok(n) = text.parse() else {
            return Some(Py::Huge(kiln_proto::cut(text, 40)));
        };
        // Python 2 wrote long integers as `3L`.
        if self.text.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        Some(Py::Int(n))
    }

    /// `True`, `False` or `None`.
    fn word(&mut self) -> Option<Py> {
        let rest = &self.text[self.pos..];
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

/// A key of an `.npy` header's dict, as an error names it.
fn py_repr(key: &Py) -> String {
    match key {
        Py::Str(s) => format!("'{s}'"),
        Py::Int(n) => n.to_string(),
        Py::Negative(n) => format!("-{n}"),
        Py::Huge(digits) => digits.clone(),
        Py::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        Py::None => "None".to_owned(),
        Py::Tuple(_) => "(a tuple)".to_owned(),
        Py::List(_) => "(a list)".to_owned(),
        Py::Dict(_) => "(a dict)".to_owned(),
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
        // numpy's names of fixed width read the same (`np.dtype("float32")`, which `np.load`
        // accepts), in the machine's byte order.
        "float16" => Elem::F16,
        "float32" => Elem::F32,
        "float64" => Elem::F64,
        "int8" => Elem::I8,
        "int16" => Elem::I16,
        "int32" => Elem::I32,
        "int64" => Elem::I64,
        "uint8" => Elem::U8,
        "uint16" => Elem::U16,
        "uint32" => Elem::U32,
        "uint64" => Elem::U64,
        "bool" => Elem::Bool,
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
pub(super) fn read_npy_header(what: &str, reader: &mut dyn Read) -> Result<NpyHeader, DataError> {
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

/// numpy refuses a header whose keys are not exactly these three; a key given twice (which
/// Python would read as its last value) is refused rather than read either way.
fn check_keys(items: &[(Py, Py)]) -> Result<(), String> {
    const KEYS: [&str; 3] = ["descr", "fortran_order", "shape"];
    for key in KEYS {
        let times = items
            .iter()
            .filter(|(k, _)| matches!(k, Py::Str(s) if s == key))
            .count();
        if times > 1 {
            return Err(format!("gives '{key}' {times} times"));
        }
    }
    match items
        .iter()
        .find(|(k, _)| !matches!(k, Py::Str(s) if KEYS.contains(&s.as_str())))
    {
        Some((key, _)) => Err(format!(
            "has the key {key}, besides numpy's 'descr', 'fortran_order' and 'shape'",
            key = py_repr(key)
        )),
        None => Ok(()),
    }
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
    parser.skip_ws();
    if parser.pos < text.len() {
        return Err(bad("has more after its dict"));
    }
    check_keys(&items).map_err(|why| bad(&why))?;
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
            .map(|(_, v)| v)
    };
    let (elem, big_endian) = match get("descr") {
        Some(Py::Str(descr)) => npy_elem(what, descr)?,
        Some(Py::List(_)) => {
            return Err(invalid(format!(
                "{what} has a structured dtype (named fields), which kiln does not read; save \
                 one plain numeric array per file"
            )));
        }
        Some(_) => return Err(bad("has a 'descr' that is not a dtype")),
        None => return Err(bad("has no dtype ('descr')")),
    };
    match get("fortran_order") {
        Some(Py::Bool(false)) => {}
        Some(Py::Bool(true)) => {
            return Err(invalid(format!(
                "{what} is stored in Fortran (column-major) order, which kiln does not read; \
                 save it with np.save(f, np.ascontiguousarray(a))"
            )));
        }
        Some(_) => return Err(bad("has a 'fortran_order' that is neither True nor False")),
        None => return Err(bad("has no 'fortran_order'")),
    }
    let shape = match get("shape") {
        Some(Py::Tuple(dims)) if dims.iter().any(|d| matches!(d, Py::Negative(_))) => {
            let shown: Vec<String> = dims.iter().map(py_repr).collect();
            return Err(bad(&format!(
                "has a negative size in its shape ({})",
                shown.join(", ")
            )));
        }
        Some(Py::Tuple(dims)) if dims.iter().any(|d| matches!(d, Py::Huge(_))) => {
            let shown: Vec<String> = dims.iter().map(py_repr).collect();
            return Err(bad(&format!(
                "has a size past 64 bits in its shape ({})",
                shown.join(", ")
            )));
        }
        Some(Py::Tuple(dims)) => dims
            .iter()
            .map(|d| match d {
                Py::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("has a shape that is not a tuple of sizes"))?,
        Some(_) => return Err(bad("has a shape that is not a tuple of sizes")),
        None => return Err(bad("has no shape")),
    };
    Ok(NpyHeader {
        elem,
        big_endian,
        shape,
    })
}

pub(super) fn read_npy(
    what: &str,
    reader: &mut dyn Read,
    max_elements: u64,
) -> Result<HostTensor, DataError> {
    let header = read_npy_header(what, reader)?;
    let elements = count_elements(what, &header.shape, max_elements, "tensor")?;
    let bytes = elements
        .checked_mul(header.elem.size() as u64)
        .ok_or_else(|| {
            invalid(format!(
                "{what}: its size overflows a 64-bit count: the header is corrupt"
            ))
        })?;
    let values = read_values(what, reader, header.elem, header.big_endian, elements)?
        .map_err(|found| truncated(what, bytes, found))?;
    let rest = drain(what, reader)?;
    if rest > 0 {
        return Err(invalid(format!(
            "{what}: {rest} bytes follow the {bytes} bytes of values its header declares, \
             which np.save never writes; save the array again"
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::read_tensor;
    use crate::formats::tests::{Counting, le, message, npy, read};

    #[test]
    fn reads_npy_f32_in_c_order() {
        let values = [1.5f32, -2.0, 3.25, 0.0, 1e-3, 7.0];
        let file = npy("<f4", false, "(2, 3)", &le(&values, f32::to_le_bytes));
        let t = read(&file, None).unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, values);
        let mut longer = file.clone();
        longer.extend_from_slice(&[1, 2, 3]);
        let m = message(read(&longer, None));
        assert!(
            m.contains("3 bytes follow the 24 bytes of values its header declares"),
            "{m}"
        );
    }

    #[test]
    fn a_size_past_64_bits_is_refused_as_an_overflow() {
        let file = npy("<f4", false, "(99999999999999999999999,)", &[0; 4]);
        let m = message(read(&file, None));
        assert!(
            m.contains("has a size past 64 bits in its shape (99999999999999999999999)"),
            "{m}"
        );
    }

    #[test]
    fn reads_numpys_dtype_names_as_their_codes() {
        let values = [1.5f32, -2.0];
        let file = npy("float32", false, "(2,)", &le(&values, f32::to_le_bytes));
        assert_eq!(read(&file, None).unwrap().data, values);
        let file = npy("uint8", false, "(3,)", &[1, 2, 255]);
        assert_eq!(read(&file, None).unwrap().data, [1.0, 2.0, 255.0]);
        // Still no name of a width that depends on the machine.
        let m = message(read(&npy("long", false, "(1,)", &[0; 8]), None));
        assert!(
            m.contains("has dtype \"long\", which kiln does not read"),
            "{m}"
        );
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
        // A finite value past f32's range is refused, as inline values are; a stored
        // infinity stays one (big-endian too).
        for (descr, bytes) in [
            ("<f8", le(&[1.0f64, 1e39], f64::to_le_bytes)),
            (">f8", le(&[1.0f64, -1e39], f64::to_be_bytes)),
        ] {
            let m = message(read(&npy(descr, false, "(2,)", &bytes), None));
            assert!(
                m.contains("the value ") && m.contains("e39 is beyond f32's range"),
                "{m}"
            );
        }
        let t = read(
            &npy(
                "<f8",
                false,
                "(2,)",
                &le(&[f64::INFINITY, 2.0], f64::to_le_bytes),
            ),
            None,
        )
        .unwrap();
        assert_eq!(t.data, vec![f32::INFINITY, 2.0]);

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
        npy_with_dict(
            "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        )
    }

    /// An `.npy` file whose header dict is `dict` as written.
    fn npy_with_dict(dict: &str, data: &[u8]) -> Vec<u8> {
        let total = (10 + dict.len() + 1).next_multiple_of(64);
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        out.extend_from_slice(data);
        out
    }

    /// What numpy's own reader (`_read_array_header`) refuses, kiln refuses too, rather than
    /// read values numpy would not: other keys, a shape that is no tuple, a key given twice
    /// (Python keeps the last, an earlier kiln read the first), text after the dict.
    #[test]
    fn refuses_npy_headers_numpy_refuses() {
        let four = 1.5f32.to_le_bytes().repeat(4);
        for (dict, why) in [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'extra': 1}",
                "has the key 'extra', besides numpy's 'descr', 'fortran_order' and 'shape'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': [4]}",
                "has a shape that is not a tuple of sizes",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4)}",
                "has a shape that is not a tuple of sizes",
            ),
            (
                "{'descr': '<i4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}",
                "gives 'descr' 2 times",
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}",
                "has a 'fortran_order' that is neither True nor False",
            ),
            (
                "{'descr': 4, 'fortran_order': False, 'shape': (4,)}",
                "has a 'descr' that is not a dtype",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)} x",
                "has more after its dict",
            ),
            ("{'descr': '<f4', 'fortran_order': False}", "has no shape"),
            // It said "is not a Python dict", which it is.
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4)}",
                "has a negative size in its shape (-1, 4)",
            ),
        ] {
            let m = message(read(&npy_with_dict(dict, &four), None));
            assert_eq!(
                m,
                format!("t: its .npy header {why}; save it again with np.save"),
                "{dict}"
            );
        }
        // What numpy writes, in the spellings it has used, still reads.
        for dict in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
            "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (4,)}",
            "{'shape': (4L,), 'fortran_order': False, 'descr': '<f4'}",
        ] {
            let t = read(&npy_with_dict(dict, &four), None).unwrap();
            assert_eq!(t.data, vec![1.5; 4], "{dict}");
        }
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

        // A shape whose product overflows u64: no file holds it, so the header is corrupt.
        let file = npy("<f4", false, "(18446744073709551615, 3)", &[]);
        assert!(matches!(read(&file, None), Err(DataError::Invalid(_))));
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
}
