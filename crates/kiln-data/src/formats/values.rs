//! Element types as stored, and reading their values into f32 a chunk at a time.

use std::io::{self, Read};

use safetensors::tensor::Dtype;

use super::DataError;
use super::error::{invalid, io_error};

/// Values are read and converted this many bytes at a time.
const READ_CHUNK: usize = 1 << 16;

/// Read until `buf` is full or the input ends; the number of bytes read.
pub(super) fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
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
pub(super) fn skip(what: &str, reader: &mut dyn Read, limit: u64) -> Result<u64, DataError> {
    io::copy(&mut reader.take(limit), &mut io::sink()).map_err(|e| io_error(what, &e))
}

/// Read and drop the rest of the input (its reader may check a digest at the end).
pub(super) fn drain(what: &str, reader: &mut dyn Read) -> Result<u64, DataError> {
    skip(what, reader, u64::MAX)
}

/// An element type as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Elem {
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
    pub(super) fn size(self) -> usize {
        match self {
            Elem::Bool | Elem::U8 | Elem::I8 => 1,
            Elem::U16 | Elem::I16 | Elem::F16 | Elem::BF16 => 2,
            Elem::U32 | Elem::I32 | Elem::F32 => 4,
            Elem::U64 | Elem::I64 | Elem::F64 => 8,
        }
    }

    pub(super) fn name(self) -> &'static str {
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

    pub(super) fn from_safetensors(dtype: Dtype) -> Option<Elem> {
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

/// Append the values in `bytes` (whole elements) to `out` as f32. `Err(value)`: a finite f64
/// too large for f32 (it would be computed as an infinity; inline values are refused the same
/// way).
pub(super) fn convert(
    elem: Elem,
    big_endian: bool,
    bytes: &[u8],
    out: &mut Vec<f32>,
) -> Result<(), f64> {
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
        Elem::F64 => {
            for chunk in bytes.chunks_exact(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                if be {
                    b.reverse();
                }
                let value = f64::from_le_bytes(b);
                let narrowed = value as f32;
                if narrowed.is_infinite() && value.is_finite() {
                    return Err(value);
                }
                out.push(narrowed);
            }
        }
    }
    Ok(())
}

/// Why a value read from an object is refused ([`convert`]'s `Err`).
pub(super) fn beyond_f32(what: &str, value: f64) -> DataError {
    invalid(format!(
        "{what}: the value {value:e} is beyond f32's range (±3.4e38), which kiln computes in; \
         it would be computed as an infinity: scale the data first"
    ))
}

/// The number of values of `shape`, refused (`TooLarge`) over `max_elements` or past u64.
pub(super) fn count_elements(
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
        // No file holds that many: its header is corrupt.
        None => Err(invalid(format!(
            "{what}: {noun} of shape {shape:?} overflows a 64-bit element count: the header \
             is corrupt"
        ))),
    }
}

/// A vector for `elements` values, or `TooLarge` when the memory is not there.
pub(super) fn allocate(what: &str, elements: u64) -> Result<Vec<f32>, DataError> {
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
pub(super) fn read_values(
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
        convert(elem, big_endian, &buf[..got], &mut values)
            .map_err(|value| beyond_f32(what, value))?;
    }
    Ok(Ok(values))
}
