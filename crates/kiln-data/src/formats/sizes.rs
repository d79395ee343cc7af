//! What loading an object takes, told from its first bytes before the rest is downloaded.
//!
//! A worker reserves it out of its memory budget, so that jobs whose small objects decode
//! large (a 24 KB PNG of 5000 × 5000 grey pixels is 125 MB of f32 values; a `u8` `.npy`
//! grows 4 times) load one after another instead of all at once, and a job whose values alone
//! are over the budget is refused before anything is downloaded.

use super::images::{image_header, png_bound};
use super::npy::read_npy_header;
use super::safetensors::read_safetensors_header;
use super::{Format, mib};
use crate::store::Want;

/// f32, the type every value is loaded as.
const F32: u64 = 4;

/// What loading an object holds, from its first bytes and stored size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSize {
    /// Bytes held at the peak of loading: the file where it is read whole, the decoder's
    /// pixels, the f32 values. An upper bound where the first bytes do not say (CSV, a
    /// header past them); `None` where nothing bounds it (a JPEG whose frame header is past
    /// them).
    pub peak: Option<u64>,
    /// The f32 values' bytes, where the header says; they stay loaded while the job runs.
    pub values: Option<u64>,
}

impl LoadSize {
    /// What loading takes where nothing tells: the whole budget.
    pub const UNKNOWN: LoadSize = LoadSize {
        peak: None,
        values: None,
    };

    /// Refuse (`TooLarge`) an object whose values alone are over `budget` bytes: its job could
    /// never run within the budget, so it is not downloaded.
    pub fn check(&self, what: &str, budget: u64) -> Result<(), super::DataError> {
        match self.values {
            Some(values) if values > budget => Err(super::DataError::TooLarge(format!(
                "{what} loads as {values} bytes ({} MiB) of f32 values, over this worker's \
                 memory budget of {} MiB; send a smaller object or run a worker with more \
                 memory",
                mib(values),
                mib(budget)
            ))),
            _ => Ok(()),
        }
    }

    /// What to reserve out of a `budget` of bytes: the peak, at most the whole budget (an
    /// unbounded one takes all of it, and loads alone).
    pub fn reserve(&self, budget: u64) -> u64 {
        self.peak.map_or(budget, |peak| peak.min(budget))
    }
}

/// What loading a `size`-byte object that starts with `prefix` as `want` holds (`key` picks
/// a safetensors entry). Objects the job cannot use are counted at their stored size: loading
/// refuses them.
pub fn load_size(prefix: &[u8], size: u64, want: Want, key: Option<&str>) -> LoadSize {
    let exact = |values: u64, peak: u64| LoadSize {
        peak: Some(peak),
        values: Some(values),
    };
    // Any element takes at least one byte, so a tensor's values are at most 4 times its file.
    let bound = |peak: u64| LoadSize {
        peak: Some(peak),
        values: None,
    };
    let format = Format::sniff(prefix);
    match (want, format) {
        // Streamed: only the values are held.
        (Want::Tensor | Want::Image, Some(Format::Npy | Format::Safetensors)) => {
            match tensor_elements(prefix, format, key) {
                Some(n) => exact(n * F32, n * F32),
                None => bound(size.saturating_mul(F32)),
            }
        }
        (Want::Image, Some(Format::Png | Format::Jpeg)) => match image_header(prefix) {
            Some((elements, pixel_bytes)) => {
                let values = elements.saturating_mul(F32);
                exact(
                    values,
                    size.saturating_add(pixel_bytes).saturating_add(values),
                )
            }
            None => match png_bound(prefix).filter(|_| format == Some(Format::Png)) {
                Some(b) => bound(b.saturating_add(size)),
                // Not told (a JPEG's frame header past the first bytes, a PNG's header
                // unreadable or its size past u64): the whole budget.
                None => LoadSize::UNKNOWN,
            },
        },
        (Want::Dataset | Want::Model, Some(Format::Safetensors)) => match all_elements(prefix) {
            Some(n) => {
                let values = n.saturating_mul(F32);
                exact(values, size.saturating_add(values))
            }
            None => bound(size.saturating_mul(1 + F32)),
        },
        // A value and its separator take at least two bytes; the vectors may grow to twice
        // what they hold as rows are read.
        (Want::Dataset, Some(Format::Csv)) => bound(size.saturating_mul(1 + F32)),
        _ => bound(size),
    }
}

/// The elements of the tensor a `.npy` or safetensors header describes (`key`'s entry, or the
/// only one), when the header is within `prefix`.
fn tensor_elements(prefix: &[u8], format: Option<Format>, key: Option<&str>) -> Option<u64> {
    let shape: Vec<usize> = match format? {
        Format::Npy => read_npy_header("", &mut &prefix[..]).ok()?.shape,
        Format::Safetensors => {
            let metadata = read_safetensors_header("", &mut &prefix[..]).ok()?;
            let names = metadata.offset_keys();
            let name = match (key, &names[..]) {
                (Some(key), _) => key,
                (None, [only]) => only.as_str(),
                _ => return None,
            };
            metadata.info(name)?.shape.clone()
        }
        _ => return None,
    };
    elements(&shape)
}

/// The elements of every tensor of a safetensors header within `prefix`.
fn all_elements(prefix: &[u8]) -> Option<u64> {
    let metadata = read_safetensors_header("", &mut &prefix[..]).ok()?;
    metadata.offset_keys().iter().try_fold(0u64, |sum, name| {
        sum.checked_add(elements(&metadata.info(name)?.shape)?)
    })
}

/// Elements of `shape`; `None` past what f32 bytes of them can count.
fn elements(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .filter(|&n| n.checked_mul(F32).is_some())
}

#[cfg(test)]
mod tests {
    use image::ImageEncoder as _;

    use super::*;
    use crate::formats::tests::{npy, safetensors};

    const MIB: u64 = 1 << 20;

    fn png(width: u32, height: u32, color: image::ExtendedColorType, channels: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let pixels = vec![0u8; (width * height * channels) as usize];
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&pixels, width, height, color)
            .unwrap();
        out
    }

    #[test]
    fn a_small_png_of_many_pixels_is_counted_decoded() {
        let file = png(2000, 1000, image::ExtendedColorType::L8, 1);
        let size = file.len() as u64;
        assert!(size < 20_000, "a blank PNG compresses: {size} bytes");
        let load = load_size(&file[..4096.min(file.len())], size, Want::Image, None);
        let values = 2000 * 1000 * 4;
        assert_eq!(load.values, Some(values));
        assert_eq!(load.peak, Some(size + 2000 * 1000 + values));
        assert!(load.check("object grey.png", 7 * MIB).is_err());
        load.check("object grey.png", 8 * MIB).unwrap();
        assert_eq!(load.reserve(4 * MIB), 4 * MIB, "at most the budget");
    }

    /// A colour profile that inflates to 64 MiB is not read whole to tell a PNG's size (the
    /// header read inflates at most 8 MiB of it, and skips the profile past that), and the
    /// size is still told.
    #[test]
    fn a_png_whose_profile_is_a_deflate_bomb_is_told_without_inflating_it() {
        let mut file = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut file);
        encoder.set_icc_profile(vec![0u8; 64 << 20]).unwrap();
        encoder
            .write_image(&[0u8; 16], 4, 4, image::ExtendedColorType::L8)
            .unwrap();
        assert!(file.len() < 200_000, "{} bytes", file.len());
        let load = load_size(&file, file.len() as u64, Want::Image, None);
        assert_eq!(load.values, Some(4 * 4 * 4));
    }

    #[test]
    fn an_rgb_jpeg_is_counted_from_its_frame_header() {
        let mut file = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut file)
            .write_image(
                &vec![0u8; 64 * 48 * 3],
                64,
                48,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        let load = load_size(&file, file.len() as u64, Want::Image, None);
        assert_eq!(load.values, Some(3 * 64 * 48 * 4));
        assert_eq!(
            load.peak,
            Some(file.len() as u64 + 3 * 64 * 48 + 3 * 64 * 48 * 4)
        );
        // Its frame header not within the first bytes: nothing bounds it.
        let unknown = load_size(&file[..4], 1000, Want::Image, None);
        assert_eq!(unknown.peak, None);
        assert_eq!(unknown.reserve(64 * MIB), 64 * MIB, "the whole budget");
    }

    #[test]
    fn a_u8_npy_loads_as_four_times_its_values() {
        let file = npy("|u1", false, "(1000, 500)", &[0u8; 500_000]);
        let load = load_size(&file[..4096], file.len() as u64, Want::Tensor, None);
        assert_eq!(load.values, Some(2_000_000));
        assert_eq!(load.peak, Some(2_000_000), "streamed: the file is not held");
        let error = load.check("object x.npy", MIB).unwrap_err();
        assert!(
            matches!(&error, crate::formats::DataError::TooLarge(m)
                if m.contains("object x.npy loads as 2000000 bytes (1.9 MiB) of f32 values")
                    && m.contains("memory budget of 1.0 MiB")),
            "{error:?}"
        );
        // A header cut short counts every byte as a value.
        let cut = load_size(&file[..12], 5000, Want::Tensor, None);
        assert_eq!((cut.values, cut.peak), (None, Some(20_000)));
    }

    #[test]
    fn safetensors_entries_are_counted_as_the_job_loads_them() {
        let file = safetensors(
            &[
                ("a", "F16", &[10, 10], vec![0u8; 200]),
                ("b", "F64", &[5], vec![0u8; 40]),
            ],
            None,
        );
        let size = file.len() as u64;
        let picked = load_size(&file, size, Want::Tensor, Some("b"));
        assert_eq!(picked.values, Some(20));
        let model = load_size(&file, size, Want::Model, None);
        assert_eq!(model.values, Some(105 * 4));
        assert_eq!(
            model.peak,
            Some(size + 105 * 4),
            "the file is held as it decodes"
        );
        let unpicked = load_size(&file, size, Want::Tensor, None);
        assert_eq!(
            unpicked.values, None,
            "two entries and no key: loading refuses it"
        );
    }

    #[test]
    fn csv_is_bounded_by_its_size() {
        let load = load_size(b"1,2,0\n3,4,1\n", 1000, Want::Dataset, None);
        assert_eq!((load.values, load.peak), (None, Some(5000)));
        load.check("object d.csv", 1).unwrap();
    }
}
