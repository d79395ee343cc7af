//! What no job could read, told from a file's first bytes before it is stored: `kiln submit
//! --input KEY=@FILE` refuses such a file without sending it, and `kiln put` says so.

use super::error::{invalid, truncated};
use super::npy::read_npy_header;
use super::safetensors::{choose_key, read_safetensors_header, tensor_elem};
use super::{DataError, Format};

/// Why no job could read a file of `size` bytes that starts with `prefix` (its first few KiB,
/// or all of it), as far as those bytes tell; `key` is the safetensors entry a job would pick.
/// `Ok` where they do not tell (a header past them, an image's pixels, a CSV's rows): a worker
/// decides those, with the same readers.
pub fn check_start(
    what: &str,
    prefix: &[u8],
    size: u64,
    key: Option<&str>,
) -> Result<(), DataError> {
    check(what, prefix, size, key, Reads::Any)
}

/// [`check_start`] for a file one tensor parameter reads (`a`, `image`, `x`; not a dataset or
/// a model, which read every entry): a safetensors file of several entries needs `key`, the
/// one to pick.
pub fn check_tensor_start(
    what: &str,
    prefix: &[u8],
    size: u64,
    key: Option<&str>,
) -> Result<(), DataError> {
    check(what, prefix, size, key, Reads::OneTensor)
}

/// Which of a safetensors file's entries a job reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// One, picked or the only one.
    OneTensor,
    /// One when picked; else all of them (a dataset, a model) or not known.
    Any,
}

fn check(
    what: &str,
    prefix: &[u8],
    size: u64,
    key: Option<&str>,
    reads: Reads,
) -> Result<(), DataError> {
    // A file that grew between its size and its read: what was read is there.
    let size = size.max(prefix.len() as u64);
    if size == 0 {
        return Err(invalid(format!(
            "{what} is empty; a job reads .npy, safetensors, PNG, JPEG or CSV"
        )));
    }
    let whole = prefix.len() as u64 >= size;
    match Format::sniff(prefix) {
        None => Err(invalid(format!(
            "{what} is {}{}",
            Format::describe(None),
            match reads {
                Reads::OneTensor => not_a_tensor_format_hint(prefix),
                Reads::Any => not_a_format_hint(prefix),
            }
        ))),
        Some(Format::Npy) => match npy_header_end(prefix) {
            Some(end) if end <= prefix.len() || whole => check_npy(what, prefix, size, end),
            _ => Ok(()),
        },
        Some(Format::Safetensors) => match safetensors_header_end(prefix) {
            Some(end) if end <= prefix.len() || whole => {
                check_safetensors(what, prefix, size, key, reads)
            }
            _ => Ok(()),
        },
        Some(Format::Png | Format::Jpeg | Format::Csv) => Ok(()),
    }
}

/// [`not_a_format_hint`] for data one tensor parameter reads (`a`, `image`, `x`), whose
/// values can be given inline: JSON values go there instead.
pub fn not_a_tensor_format_hint(prefix: &[u8]) -> &'static str {
    match looks_like_json(prefix) {
        true => {
            "; it looks like JSON: give values inline as a JSON parameter instead (kiln \
             submit -p a='[1, 2, 3]')"
        }
        false => not_a_format_hint(prefix),
    }
}

/// Whether text (after a byte-order mark and white space) starts as a JSON object or array.
fn looks_like_json(prefix: &[u8]) -> bool {
    let text = kiln_proto::without_bom(prefix);
    matches!(
        text.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// What data in no format kiln reads looks like, where it says how to fix it: text in
/// UTF-16, JSON (which no parameter reads from a file: a dataset, which cannot go inline,
/// is CSV). Empty when it says nothing.
pub fn not_a_format_hint(prefix: &[u8]) -> &'static str {
    if let Some(image) = other_image(prefix) {
        return match image {
            "GIF" => {
                "; it is a GIF image: kiln reads PNG and JPEG, so convert it (PIL: \
                      Image.open(f).convert(\"RGB\").save(\"x.png\"))"
            }
            "BMP" => {
                "; it is a BMP image: kiln reads PNG and JPEG, so convert it (PIL: \
                      Image.open(f).save(\"x.png\"))"
            }
            "WebP" => {
                "; it is a WebP image: kiln reads PNG and JPEG, so convert it (PIL: \
                       Image.open(f).save(\"x.png\"))"
            }
            _ => {
                "; it is a TIFF image: kiln reads PNG and JPEG, so convert it (PIL: \
                  Image.open(f).save(\"x.png\"))"
            }
        };
    }
    if prefix.starts_with(&[0xFF, 0xFE]) || prefix.starts_with(&[0xFE, 0xFF]) {
        return "; it starts with a UTF-16 byte-order mark: kiln reads CSV as UTF-8, so save \
                it as UTF-8";
    }
    if looks_like_other_text(prefix) {
        return "; it looks like text that is not UTF-8 (Latin-1 or Windows-1252, as older \
                Excel saves CSV): kiln reads CSV as UTF-8, so save it as UTF-8";
    }
    match looks_like_json(prefix) {
        true => {
            "; it looks like JSON, which kiln reads only as a job's parameters: a dataset is \
             CSV (features...,label rows) or safetensors x and y, and a tensor's values can \
             go inline (kiln submit -p a='[1, 2, 3]')"
        }
        false => "",
    }
}

/// The image format kiln does not read that `prefix` starts like, by its magic bytes.
fn other_image(prefix: &[u8]) -> Option<&'static str> {
    if prefix.starts_with(b"GIF87a") || prefix.starts_with(b"GIF89a") {
        Some("GIF")
    } else if prefix.starts_with(b"BM") && bmp_header(prefix) {
        Some("BMP")
    } else if prefix.starts_with(b"RIFF") && prefix.get(8..12) == Some(b"WEBP") {
        Some("WebP")
    } else if prefix.starts_with(b"II*\0") || prefix.starts_with(b"MM\0*") {
        Some("TIFF")
    } else {
        None
    }
}

/// Whether a prefix starting `BM` has a BMP file header: its reserved bytes zero (no text
/// has those) and a DIB header of a size some BMP version writes.
fn bmp_header(prefix: &[u8]) -> bool {
    let dib = prefix
        .get(14..18)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    prefix.get(6..10) == Some(&[0; 4]) && matches!(dib, Some(12 | 40 | 52 | 56 | 64 | 108 | 124))
}

/// Text in a single-byte encoding: no NUL or other control bytes but whitespace, mostly
/// ASCII, and some bytes past it (which made it invalid UTF-8).
fn looks_like_other_text(prefix: &[u8]) -> bool {
    let control = |b: &u8| b.is_ascii_control() && !b.is_ascii_whitespace();
    let high = prefix.iter().filter(|b| !b.is_ascii()).count();
    !prefix.is_empty()
        && std::str::from_utf8(prefix).is_err()
        && !prefix.iter().any(control)
        && high > 0
        && high * 10 <= prefix.len()
}

/// Where a `.npy` header ends (magic, version, length, dict), from its first 12 bytes; 0 for
/// a version no reader takes (the header reader says so).
fn npy_header_end(prefix: &[u8]) -> Option<usize> {
    match prefix.get(6)? {
        1 => Some(10 + usize::from(u16::from_le_bytes(prefix.get(8..10)?.try_into().ok()?))),
        2 | 3 => Some(12 + u32::from_le_bytes(prefix.get(8..12)?.try_into().ok()?) as usize),
        _ => Some(0),
    }
}

fn check_npy(what: &str, prefix: &[u8], size: u64, end: usize) -> Result<(), DataError> {
    let header = read_npy_header(what, &mut &prefix[..])?;
    let values = header
        .shape
        .iter()
        .try_fold(header.elem.size() as u64, |n, &d| n.checked_mul(d as u64));
    match values {
        Some(values) if (end as u64).saturating_add(values) > size => {
            Err(truncated(what, values, size.saturating_sub(end as u64)))
        }
        // As the reader words it: the file's size alone tells.
        Some(values) if (end as u64).saturating_add(values) < size => Err(invalid(format!(
            "{what}: {} bytes follow the {values} bytes of values its header declares, which \
             np.save never writes; save the array again",
            size - end as u64 - values
        ))),
        Some(_) => Ok(()),
        None => Err(invalid(format!(
            "{what}: its header declares shape {:?}, whose bytes overflow a 64-bit count: no \
             file holds that; the header is corrupt, so save the array again",
            header.shape
        ))),
    }
}

/// Where a safetensors header ends (its 8-byte length, then that many bytes of JSON).
fn safetensors_header_end(prefix: &[u8]) -> Option<usize> {
    let len = u64::from_le_bytes(prefix.get(..8)?.try_into().ok()?);
    usize::try_from(len).ok()?.checked_add(8)
}

fn check_safetensors(
    what: &str,
    prefix: &[u8],
    size: u64,
    key: Option<&str>,
    reads: Reads,
) -> Result<(), DataError> {
    let metadata = read_safetensors_header(what, &mut &prefix[..])?;
    let names = metadata.offset_keys();
    if names.is_empty() {
        return Err(invalid(format!(
            "{what} holds no tensors; store at least one"
        )));
    }
    // The entry a tensor parameter reads: the one picked, or the only one. A file of several
    // entries without a pick may be a dataset or a model, which read them all.
    let picked = match (key, &names[..]) {
        (Some(_), _) => Some(choose_key(what, &names, key)?),
        (None, [only]) => Some(only.clone()),
        (None, _) => None,
    };
    if let Some(name) = picked
        && let Some(info) = metadata.info(&name)
    {
        tensor_elem(what, &name, info)?;
    }
    let end = safetensors_header_end(prefix).unwrap_or(0) as u64;
    let values = names
        .iter()
        .filter_map(|n| metadata.info(n))
        .map(|info| info.data_offsets.1 as u64)
        .max()
        .unwrap_or(0);
    if end.saturating_add(values) > size {
        return Err(truncated(what, values, size.saturating_sub(end)));
    }
    if end.saturating_add(values) < size {
        return Err(invalid(format!(
            "{what}: {} bytes follow the {values} bytes of data its header declares; save \
             the file again",
            size - end - values
        )));
    }
    if reads == Reads::OneTensor && key.is_none() {
        choose_key(what, &names, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(prefix: &[u8], size: u64, key: Option<&str>) -> String {
        match check_start("file f", prefix, size, key) {
            Err(DataError::Invalid(message)) => message,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn text_in_utf16_and_json_say_how_to_fix_them() {
        let utf16: Vec<u8> = "\u{feff}a,b\n1,2\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let message = refused(&utf16, utf16.len() as u64, None);
        assert!(
            message.starts_with("file f is in no format kiln reads"),
            "{message}"
        );
        assert!(message.contains("UTF-16 byte-order mark"), "{message}");
        // JSON goes inline, where the parameter takes values; a dataset never does.
        let message = check_tensor_start("file f", b"  [1, 2, 3]", 11, None)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("looks like JSON: give values inline"),
            "{message}"
        );
        let message = refused(b"  [1, 2, 3]", 11, None);
        assert!(
            message.contains("looks like JSON") && message.contains("a dataset is CSV"),
            "{message}"
        );
        let latin1 = b"temp\xe9rature,label\n1,0\n2,1\n";
        let message = refused(latin1, latin1.len() as u64, None);
        assert!(message.contains("text that is not UTF-8"), "{message}");
        let binary = [0x00u8, 0x9f, 0x12, 0xff, 0x80, 0x01];
        let message = refused(&binary, 6, None);
        assert!(!message.contains("text"), "{message}");
        assert_eq!(
            refused(b"", 0, None),
            "file f is empty; a job reads .npy, safetensors, PNG, JPEG or CSV"
        );
        assert!(check_start("file f", b"x,y\n1,2\n", 8, None).is_ok());
        // Images in formats kiln does not read are named, with what to do.
        let mut bmp = b"BM\x36\x00\x0c\x00\x00\x00\x00\x00\x36\x00\x00\x00".to_vec();
        bmp.extend_from_slice(&40u32.to_le_bytes());
        bmp.extend_from_slice(&[0; 32]);
        let tiff = b"II*\x00\x08\x00\x00\x00".to_vec();
        for (bytes, named) in [
            (b"GIF89a\x01\x00\x01\x00".to_vec(), "it is a GIF image"),
            (
                b"RIFF\x24\x00\x00\x00WEBPVP8 ".to_vec(),
                "it is a WebP image",
            ),
            (bmp, "it is a BMP image"),
            (tiff, "it is a TIFF image"),
        ] {
            let message = refused(&bytes, bytes.len() as u64, None);
            assert!(message.contains(named), "{message}");
            assert!(message.contains("convert it"), "{message}");
        }
        // Text that starts with BM is not taken for a BMP.
        let text = b"BMW,Audi,label\n1,2,0\n";
        assert!(check_start("file f", text, text.len() as u64, None).is_ok());
    }

    #[test]
    fn an_npy_of_a_dtype_kiln_does_not_read_or_cut_short_is_refused() {
        let header = |descr: &str| {
            let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}")
                .into_bytes();
            while (10 + h.len() + 1) % 64 != 0 {
                h.push(b' ');
            }
            h.push(b'\n');
            let mut out = b"\x93NUMPY\x01\x00".to_vec();
            out.extend_from_slice(&(h.len() as u16).to_le_bytes());
            out.extend_from_slice(&h);
            out
        };
        let mut complex = header("<c8");
        complex.extend_from_slice(&[0; 16]);
        let message = refused(&complex, complex.len() as u64, None);
        assert!(message.contains("has dtype \"<c8\""), "{message}");
        let mut floats = header("<f4");
        floats.extend_from_slice(&[0; 8]);
        assert!(check_start("file f", &floats, floats.len() as u64, None).is_ok());
        // Its first bytes only, of a file that is whole: fine.
        assert!(check_start("file f", &floats[..64], floats.len() as u64, None).is_ok());
        let cut = &floats[..floats.len() - 3];
        let message = refused(cut, cut.len() as u64, None);
        assert!(
            message.contains("truncated: header says 8 bytes of values, found 5"),
            "{message}"
        );
        // Bytes after the values: told by the size alone, before 150 MB of them are sent.
        let header_only = &floats[..floats.len() - 8];
        let message = refused(header_only, floats.len() as u64 + 150_000_000, None);
        assert!(
            message.contains("150000000 bytes follow the 8 bytes of values its header declares"),
            "{message}"
        );
    }

    #[test]
    fn a_safetensors_entry_kiln_cannot_read_is_refused_when_it_is_the_one_read() {
        let file = |header: &str, values: usize| {
            let mut out = (header.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(header.as_bytes());
            out.extend(std::iter::repeat_n(0u8, values));
            out
        };
        let two = file(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"C64","shape":[1],"data_offsets":[8,16]}}"#,
            16,
        );
        let size = two.len() as u64;
        // Not told which entry is read: a job picks one, or a dataset reads x and y.
        assert!(check_start("file f", &two, size, None).is_ok());
        assert!(check_start("file f", &two, size, Some("a")).is_ok());
        let message = refused(&two, size, Some("z"));
        assert!(message.contains("tensor \"z\" has dtype C64"), "{message}");
        let message = refused(&two, size, Some("nope"));
        assert!(message.contains("has no tensor \"nope\""), "{message}");
        let message = refused(&two[..two.len() - 4], size - 4, None);
        assert!(message.contains("truncated"), "{message}");
        let mut longer = two.clone();
        longer.extend_from_slice(&[0; 4]);
        let message = refused(&longer, size + 4, None);
        assert!(
            message.contains("4 bytes follow the 16 bytes of data its header declares"),
            "{message}"
        );
        let empty = file("{}", 0);
        let message = refused(&empty, empty.len() as u64, None);
        assert!(message.contains("holds no tensors"), "{message}");
    }
}
