//! Images: PNG and JPEG decoded to [C, H, W] values in [0, 1], and tensors encoded as PNG.

use std::io;

use image::{ColorType, ImageDecoder};

use super::error::invalid;
use super::values::count_elements;
use super::{DataError, Format};
use crate::HostTensor;

/// Decode a PNG or JPEG into channels × height × width, values in [0, 1] (8-bit) as
/// torchvision's `ToTensor` does; grey images have 1 channel, grey with alpha 2, RGB 3,
/// RGBA 4 (a PNG's transparency chunk adds alpha: palette or RGB to 4, grey to 2). 16-bit
/// PNGs are scaled by 1/65535. The image's size is checked before it is
/// decoded, from its header: against `max_elements`, and what decoding it takes (the file's
/// `bytes`, held meanwhile, its pixels as the decoder writes them, and the f32 values)
/// against `max_bytes`, the caller's memory budget: a 97 KB PNG of 10,000 × 10,000 grey
/// pixels decodes to 500 MB.
pub fn decode_image(
    what: &str,
    bytes: &[u8],
    max_elements: u64,
    max_bytes: u64,
) -> Result<HostTensor, DataError> {
    let format = Format::sniff(bytes);
    let cursor = io::Cursor::new(bytes);
    let budget = Budget {
        max_elements,
        max_bytes,
        file: bytes.len() as u64,
    };
    match format {
        Some(Format::Png) => {
            let mut limits = image::Limits::default();
            // The decoder's own allocations: the pixels (at most 16 bits a value) and slack
            // for metadata chunks.
            limits.max_alloc = Some(max_elements.saturating_mul(2).max(1 << 29));
            let decoder = image::codecs::png::PngDecoder::with_limits(cursor, limits)
                .map_err(|e| image_error(what, "PNG", e))?;
            decode_pixels(what, "PNG", decoder, budget)
        }
        Some(Format::Jpeg) => {
            // The decoder fills what a cut file lacks with grey, and says nothing.
            if jpeg_end(bytes) == JpegEnd::Truncated {
                return Err(invalid(format!(
                    "{what} is a truncated JPEG: its data ends before its end-of-image marker, \
                     so part of the image is missing; send the whole file"
                )));
            }
            let decoder = image::codecs::jpeg::JpegDecoder::new(cursor)
                .map_err(|e| image_error(what, "JPEG", e))?;
            decode_pixels(what, "JPEG", decoder, budget)
        }
        other => Err(invalid(format!(
            "{what} is {}, not a PNG or JPEG image; store the image as PNG or JPEG",
            Format::describe(other)
        ))),
    }
}

/// How a JPEG's markers end, read forward from its start: each segment skipped by its length
/// (an EXIF thumbnail with it), each scan's coded data up to the next marker (in coded data an
/// `FF` byte is followed by `00` or a restart marker), up to the first end-of-image marker;
/// what follows it (a phone's motion-photo video, padding) is not read.
#[derive(Debug, PartialEq, Eq)]
enum JpegEnd {
    /// An end-of-image marker after a scan.
    Complete,
    /// The bytes end inside a segment or a scan, or before an end-of-image marker.
    Truncated,
    /// Something else where a marker should be: left to the decoder to judge.
    Unknown,
}

fn jpeg_end(bytes: &[u8]) -> JpegEnd {
    let mut at = 2; // past the start-of-image marker
    let mut scanned = false;
    loop {
        // A marker: `FF`, any number of `FF` fill bytes, its code.
        match bytes.get(at) {
            None => return JpegEnd::Truncated,
            Some(0xFF) => {}
            Some(_) => return JpegEnd::Unknown,
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&code) = bytes.get(at) else {
            return JpegEnd::Truncated;
        };
        at += 1;
        match code {
            0xD9 if scanned => return JpegEnd::Complete,
            0xD9 | 0xD8 | 0x00 => return JpegEnd::Unknown,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(length) = bytes.get(at..at + 2) else {
            return JpegEnd::Truncated;
        };
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if length < 2 {
            return JpegEnd::Unknown;
        }
        at += length;
        if at > bytes.len() {
            return JpegEnd::Truncated;
        }
        if code != 0xDA {
            continue;
        }
        // A scan's coded data, up to the `FF` that starts the next marker.
        scanned = true;
        loop {
            let Some(next) = bytes[at..].iter().position(|&b| b == 0xFF) else {
                return JpegEnd::Truncated;
            };
            at += next;
            let mut code = at + 1;
            while bytes.get(code) == Some(&0xFF) {
                code += 1;
            }
            match bytes.get(code) {
                None => return JpegEnd::Truncated,
                Some(0x00 | 0xD0..=0xD7) => at = code + 1,
                Some(_) => break,
            }
        }
    }
}

/// The most a PNG's headers may take to read when telling its size (an ICC profile is
/// kilobytes; a deflate bomb in one is a gigabyte).
const HEADER_ALLOC: u64 = 8 << 20;

/// The values an image decodes to (channels × height × width) and the bytes its decoder
/// writes them in, from its first bytes; `None` when its headers are not within them.
pub(super) fn image_header(prefix: &[u8]) -> Option<(u64, u64)> {
    let cursor = io::Cursor::new(prefix);
    let (dimensions, color, total) = match Format::sniff(prefix)? {
        Format::Png => {
            // Reading up to the first IDAT decompresses what comes before (an iCCP profile):
            // bounded, so that a crafted chunk cannot make a worker allocate before it has
            // reserved anything.
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(HEADER_ALLOC);
            described(image::codecs::png::PngDecoder::with_limits(cursor, limits).ok()?)
        }
        Format::Jpeg => described(image::codecs::jpeg::JpegDecoder::new(cursor).ok()?),
        _ => return None,
    };
    let (width, height) = dimensions;
    let elements = u64::from(color.channel_count())
        .checked_mul(u64::from(width))?
        .checked_mul(u64::from(height))?;
    Some((elements, total))
}

/// A decoder's dimensions, pixel format and the bytes its pixels take.
fn described(decoder: impl ImageDecoder) -> ((u32, u32), ColorType, u64) {
    (
        decoder.dimensions(),
        decoder.color_type(),
        decoder.total_bytes(),
    )
}

/// A PNG's width and height from its IHDR chunk, which always comes first (at byte 8, its
/// fields from byte 16); `None` when `prefix` does not hold it.
pub(super) fn png_size(prefix: &[u8]) -> Option<(u32, u32)> {
    if prefix.len() < 24 || &prefix[12..16] != b"IHDR" {
        return None;
    }
    let be =
        |i: usize| u32::from_be_bytes([prefix[i], prefix[i + 1], prefix[i + 2], prefix[i + 3]]);
    Some((be(16), be(20)))
}

/// An upper bound on the bytes decoding a PNG takes, from its IHDR chunk where the rest of its
/// headers are not within `prefix`: 16-bit RGBA pixels and their f32 values.
pub(super) fn png_bound(prefix: &[u8]) -> Option<u64> {
    let (width, height) = png_size(prefix)?;
    let pixels = u64::from(width).checked_mul(u64::from(height))?;
    pixels.checked_mul(4 * (2 + 4))
}

/// What decoding an image may take.
#[derive(Clone, Copy)]
struct Budget {
    max_elements: u64,
    max_bytes: u64,
    /// The encoded file's bytes, held while it decodes.
    file: u64,
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

/// One sample of a pixel format as an f32, and its size in bytes.
type Sample = (usize, fn(&[u8]) -> f32);

fn sample_of(color: ColorType) -> Option<Sample> {
    match color {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => {
            Some((1, |b| f32::from(b[0]) / 255.0))
        }
        ColorType::L16 | ColorType::La16 | ColorType::Rgb16 | ColorType::Rgba16 => {
            Some((2, |b| f32::from(u16::from_ne_bytes([b[0], b[1]])) / 65535.0))
        }
        ColorType::Rgb32F | ColorType::Rgba32F => {
            Some((4, |b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
        }
        _ => None,
    }
}

fn decode_pixels(
    what: &str,
    kind: &str,
    decoder: impl ImageDecoder,
    budget: Budget,
) -> Result<HostTensor, DataError> {
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    let channels = usize::from(color.channel_count());
    let (h, w) = (height as usize, width as usize);
    let shape = vec![channels, h, w];
    let elements = count_elements(what, &shape, budget.max_elements, "image")?;
    let Some((sample_bytes, to_f32)) = sample_of(color) else {
        return Err(invalid(format!(
            "{what}: its {kind} pixel format {color:?} is not read by kiln; save it as 8-bit \
             grey, RGB or RGBA"
        )));
    };
    let needed = budget
        .file
        .saturating_add(decoder.total_bytes())
        .saturating_add(elements.saturating_mul(4));
    if needed > budget.max_bytes {
        return Err(DataError::TooLarge(format!(
            "{what}: this {width} × {height} {kind} with {channels} channel(s) takes {} MiB \
             to decode (its {}-byte file, its pixels and {elements} f32 values), over this \
             worker's memory budget of {} MiB; send a smaller image or run a worker with more \
             memory",
            super::mib(needed),
            budget.file,
            super::mib(budget.max_bytes)
        )));
    }
    let mut pixels = vec![0u8; usize::try_from(decoder.total_bytes()).unwrap_or(usize::MAX)];
    decoder
        .read_image(&mut pixels)
        .map_err(|e| image_error(what, kind, e))?;
    // Interleaved (height, width, channel) to planar (channel, height, width), straight from
    // the decoder's bytes (one f32 buffer, not two).
    let plane = h * w;
    let mut data = vec![0f32; plane * channels];
    for (i, pixel) in pixels.chunks_exact(sample_bytes * channels).enumerate() {
        for (c, sample) in pixel.chunks_exact(sample_bytes).enumerate() {
            data[c * plane + i] = to_f32(sample);
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

#[cfg(test)]
mod tests {
    use image::ImageEncoder as _;

    use super::*;
    use crate::formats::encode_npy;
    use crate::formats::tests::{le, message, png};

    #[test]
    fn decodes_png_to_channels_height_width() {
        // 3 wide, 2 high, RGB.
        let pixels: Vec<u8> = (0..18).map(|i| i * 10).collect();
        let file = png(&pixels, 3, 2, image::ExtendedColorType::Rgb8);
        let t = decode_image("img", &file, 1000, u64::MAX).unwrap();
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
        let t = decode_image("img", &grey, 1000, u64::MAX).unwrap();
        assert_eq!((t.shape, t.data), (vec![1, 2, 2], vec![0.0, 1.0, 0.2, 0.4]));

        let grey_alpha = png(&[255, 0], 1, 1, image::ExtendedColorType::La8);
        let t = decode_image("img", &grey_alpha, 1000, u64::MAX).unwrap();
        assert_eq!((t.shape, t.data), (vec![2, 1, 1], vec![1.0, 0.0]));

        let rgba = png(&[0, 51, 102, 255], 1, 1, image::ExtendedColorType::Rgba8);
        let t = decode_image("img", &rgba, 1000, u64::MAX).unwrap();
        assert_eq!((t.shape, t.data), (vec![4, 1, 1], vec![0.0, 0.2, 0.4, 1.0]));

        // 16-bit: scaled by 1/65535 (the encoder takes native-endian samples).
        let samples = le(&[0u16, 65535, 13107], u16::to_ne_bytes);
        let deep = png(&samples, 3, 1, image::ExtendedColorType::L16);
        let t = decode_image("img", &deep, 1000, u64::MAX).unwrap();
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
        let t = decode_image("photo", &file, 1000, u64::MAX).unwrap();
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
        let t = decode_image("photo", &grey, 1000, u64::MAX).unwrap();
        assert_eq!(t.shape, vec![1, 4, 4]);
        assert!(
            t.data.iter().all(|v| (v * 255.0 - 128.0).abs() <= 2.0),
            "{:?}",
            t.data
        );
    }

    /// A JPEG cut short is refused: the decoder would fill the missing rows with grey and say
    /// nothing. Bytes after its end are no harm.
    #[test]
    fn a_truncated_jpeg_is_refused_and_trailing_bytes_are_not() {
        let (width, height) = (64u32, 48u32);
        let pixels: Vec<u8> = (0..width * height * 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut file = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90)
            .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        let whole = decode_image("photo", &file, 1 << 20, u64::MAX).unwrap();
        // Cut in the headers, in the scan, before and inside the end-of-image marker.
        for cut in [100, file.len() * 6 / 10, file.len() - 2, file.len() - 1] {
            match decode_image("photo", &file[..cut], 1 << 20, u64::MAX) {
                Err(DataError::Invalid(m)) => assert_eq!(
                    m,
                    "photo is a truncated JPEG: its data ends before its end-of-image marker, \
                     so part of the image is missing; send the whole file"
                ),
                other => panic!("cut at {cut}: expected Invalid, got {other:?}"),
            }
        }
        // After the end: padding, or a trailer (a phone's motion-photo video) holding what
        // would be a scan's start with no end after it. Fill bytes before the end marker.
        for trailer in [&[0u8; 100][..], &[0xFF, 0xDA, 0x00, 0x08, 1, 2, 3, 0xFF]] {
            let mut padded = file.clone();
            padded.extend_from_slice(trailer);
            assert_eq!(
                decode_image("photo", &padded, 1 << 20, u64::MAX).unwrap(),
                whole
            );
        }
        let mut filled = file[..file.len() - 2].to_vec();
        filled.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xD9]);
        assert_eq!(jpeg_end(&filled), JpegEnd::Complete);
        assert_eq!(jpeg_end(&file), JpegEnd::Complete);
    }

    #[test]
    fn refuses_images_over_the_element_limit_and_non_images() {
        let file = png(&[0u8; 48], 4, 4, image::ExtendedColorType::Rgb8);
        assert!(decode_image("img", &file, 48, u64::MAX).is_ok());
        // The file, 48 bytes of pixels and 48 f32 values: 240 bytes and the file's to
        // decode, refused under that.
        let whole = 240 + file.len() as u64;
        assert!(decode_image("img", &file, 48, whole).is_ok());
        match decode_image("img", &file, 48, whole - 1) {
            Err(DataError::TooLarge(m)) => assert!(
                m.starts_with(&format!(
                    "img: this 4 × 4 PNG with 3 channel(s) takes 0.0 MiB to decode (its \
                     {}-byte file, its pixels and 48 f32 values), over this worker's memory \
                     budget of 0.0 MiB",
                    file.len()
                )),
                "{m}"
            ),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        match decode_image("img", &file, 47, u64::MAX) {
            Err(DataError::TooLarge(m)) => {
                assert!(
                    m.starts_with("img: image of shape [3, 4, 4] holds 48 values"),
                    "{m}"
                )
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let m = message(decode_image(
            "img",
            &encode_npy(&HostTensor::default()),
            10,
            u64::MAX,
        ));
        assert_eq!(
            m,
            "img is a .npy tensor, not a PNG or JPEG image; store the image as PNG or JPEG"
        );
        let m = message(decode_image("img", &file[..40], 100, u64::MAX));
        assert!(m.starts_with("img is not a valid PNG"), "{m}");
    }

    #[test]
    fn encode_png_round_trips_through_decode_image() {
        let data: Vec<f32> = (0..12).map(|i| (i * 20) as f32 / 255.0).collect();
        let t = HostTensor::new(vec![3, 2, 2], data.clone());
        let back = decode_image("out", &encode_png(&t).unwrap(), 100, u64::MAX).unwrap();
        assert_eq!(back, t);

        // [1, C, H, W] and [H, W]; clamping and NaN.
        let t = HostTensor::new(vec![1, 4, 1, 2], data[..8].to_vec());
        assert_eq!(
            decode_image("out", &encode_png(&t).unwrap(), 100, u64::MAX)
                .unwrap()
                .data,
            data[..8]
        );
        let t = HostTensor::new(vec![1, 4], vec![-1.0, 2.0, f32::NAN, 0.5]);
        let back = decode_image("out", &encode_png(&t).unwrap(), 100, u64::MAX).unwrap();
        assert_eq!(back.shape, vec![1, 1, 4]);
        assert_eq!(back.data, vec![0.0, 1.0, 0.0, 128.0 / 255.0]);
        let t = HostTensor::new(vec![2, 1, 1], vec![1.0, 0.0]);
        assert_eq!(
            decode_image("out", &encode_png(&t).unwrap(), 100, u64::MAX).unwrap(),
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
}
