//! Decoding: the header is read first (format, dimensions, pixel budget), then the
//! pixels, with EXIF orientation applied and every colour type turned into 8-bit RGB.
//! JPEGs headed for a smaller model input are decoded reduced by the JPEG decoder's DCT
//! scaling ([`decode_image_for`]): any M/8 with libjpeg-turbo, else 1/4 or 1/8.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::preprocess::{Preprocessing, ResizeMode, ResizePlan};
use super::{jpeg, turbo};

/// Formats graft decodes; anything else is refused before decoding.
const SUPPORTED: [ImageFormat; 5] =
    [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp];

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width × height accepted, checked from the header before any pixel is decoded.
    pub max_pixels: u64,
    /// Most scans a JPEG may have, counted from its markers before decoding (and enforced
    /// again inside libjpeg-turbo). Encoders write 1 (baseline) or about 10 (progressive).
    pub max_jpeg_scans: u32,
}

/// The default scan cap: ten times a progressive encoder's usual script (libjpeg's
/// simple progression writes 10 scans for colour, 6 for grayscale), a fifth of
/// TurboJPEG's hard limit of 500.
pub const DEFAULT_MAX_JPEG_SCANS: u32 = 100;

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 40_000_000, max_jpeg_scans: DEFAULT_MAX_JPEG_SCANS }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VisionError {
    #[error("the data is not an image graft recognises (JPEG, PNG, WebP, GIF or BMP)")]
    NotAnImage,
    #[error("{0} images are not supported; send JPEG, PNG, WebP, GIF or BMP")]
    UnsupportedFormat(String),
    #[error("the image is {width}×{height} = {pixels} pixels, over the budget of {max_pixels} pixels")]
    TooManyPixels { width: u32, height: u32, pixels: u64, max_pixels: u64 },
    #[error("the image has a zero dimension ({width}×{height})")]
    Empty { width: u32, height: u32 },
    #[error("the image is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("the JPEG has more than {max_scans} scans, the most graft decodes (progressive JPEGs have about 10)")]
    TooManyScans { max_scans: u32 },
}

/// Decodes an encoded image into upright 8-bit RGB.
///
/// Alpha is composited over white (what a viewer shows), 16-bit channels are
/// rounded to 8 bits, grayscale and palette images are expanded to RGB.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, VisionError> {
    decode_image_scaled(bytes, limits, |size| size).map(|decoded| decoded.image)
}

/// An image decoded by [`decode_image_scaled`]: upright 8-bit RGB, and how much the JPEG
/// decoder's DCT scaling reduced it (8 eighths when it was decoded at full size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    pub image: RgbImage,
    /// The image is `⌈original · scale_eighths / 8⌉`, one of [`jpeg_scales`].
    pub scale_eighths: u32,
    /// The full size of the upright image, whatever size it was decoded at.
    pub original: (u32, u32),
}

/// The DCT reductions, in eighths of the full size, this build decodes JPEGs at, the
/// strongest first. libjpeg-turbo: 1/8, 1/4, 1/2 and the full size; its other M/8 use
/// plain-C inverse DCTs and are slower than its SIMD full decode (640×427: 5/8 2.0 ms,
/// 8/8 1.9 ms, 4/8 1.7 ms). jpeg-decoder: 1/8 and 1/4 (its 1/2 is slower than zune-jpeg's
/// full decode) and the full size.
pub fn jpeg_scales() -> &'static [u32] {
    if turbo::AVAILABLE { &[1, 2, 4, 8] } else { &[1, 2, 8] }
}

/// As [`decode_image`], but a JPEG is decoded at the strongest DCT reduction of
/// [`jpeg_scales`] that leaves it at least `min_size` (width, height, after EXIF
/// orientation) in both dimensions.
///
/// Every other image, and any JPEG the scaled decoder declines or fails on, takes the
/// full-size path of [`decode_image`], with its results and errors unchanged; a JPEG
/// cut short is [`VisionError::Corrupt`] either way.
pub fn decode_image_for(bytes: &[u8], limits: &DecodeLimits, min_size: (u32, u32)) -> Result<RgbImage, VisionError> {
    decode_image_scaled(bytes, limits, |_| min_size).map(|decoded| decoded.image)
}

/// [`decode_image_for`] with the minimum size computed from the image's oriented full
/// size (read from the header), e.g. `|size| min_decode_size(target, mode, size)`, and
/// the reduction used reported alongside the image.
pub fn decode_image_scaled(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_size: impl FnOnce((u32, u32)) -> (u32, u32),
) -> Result<DecodedImage, VisionError> {
    let header = open(bytes, limits)?;
    if header.format == ImageFormat::Jpeg {
        let stored = header.decoder.dimensions();
        let oriented = oriented_size(stored, header.orientation);
        let eighths = dct_scale_eighths(oriented, min_size(oriented));
        match decode_jpeg_pixels(bytes, stored, eighths, limits.max_jpeg_scans) {
            Ok(mut image) => {
                image.apply_orientation(header.orientation);
                return Ok(DecodedImage { image: to_rgb8(image), scale_eighths: eighths, original: oriented });
            }
            // The image crate's decoder would paint the missing part grey and call it a success.
            Err(jpeg::Failure::Truncated(reason)) => {
                return Err(VisionError::Corrupt(format!("the JPEG data ends before the image does ({reason})")));
            }
            Err(jpeg::Failure::TooManyScans { max_scans }) => return Err(VisionError::TooManyScans { max_scans }),
            Err(jpeg::Failure::Other(reason)) => {
                tracing::debug!(%reason, eighths, "JPEG left to the image crate's decoder at full size");
            }
        }
    }
    let image = decode_full(header.decoder, header.orientation)?;
    let original = image.dimensions();
    Ok(DecodedImage { image, scale_eighths: 8, original })
}

/// The JPEG's pixels at `eighths`/8 of its stored size, unoriented: libjpeg-turbo when
/// linked, jpeg-decoder for its 1/8 and 1/4; a full-size decode without libjpeg-turbo is
/// declined here and left to the image crate.
fn decode_jpeg_pixels(
    bytes: &[u8],
    stored: (u32, u32),
    eighths: u32,
    max_scans: u32,
) -> Result<DynamicImage, jpeg::Failure> {
    if turbo::AVAILABLE {
        return turbo::decode_rgb(bytes, stored, eighths, max_scans).map(DynamicImage::ImageRgb8);
    }
    if eighths < 8 {
        return jpeg::decode_scaled(bytes, stored, 8 / eighths);
    }
    Err(jpeg::Failure::Other("full size".to_owned()))
}

/// Decodes an image for a model's preprocessing: [`decode_image_scaled`] with the smallest
/// size that keeps its resize a downscale. Serving, feature extraction and the benchmark
/// all decode through here, so they see the same pixels.
pub fn decode_for(bytes: &[u8], limits: &DecodeLimits, spec: &Preprocessing) -> Result<DecodedImage, VisionError> {
    decode_image_scaled(bytes, limits, |size| min_decode_size((spec.width, spec.height), spec.resize, size))
}

/// The smallest decoded size that keeps the preprocessing resize of an image whose
/// (oriented) size is `original` a downscale: the size the whole image is resized to
/// before the centre crop (`Crop`) or the padding (`Pad`), or `target` itself (`Stretch`).
/// A reduced decode keeps the aspect ratio, so being at least this large in both
/// dimensions means the resize never enlarges it.
pub fn min_decode_size(target: (u32, u32), mode: ResizeMode, original: (u32, u32)) -> (u32, u32) {
    if original.0 == 0 || original.1 == 0 {
        return target;
    }
    let (width, height) = ResizePlan::new(original, target, mode).resized;
    // Past u32 no decoded size is large enough: the full size is used.
    (u32::try_from(width).unwrap_or(u32::MAX), u32::try_from(height).unwrap_or(u32::MAX))
}

/// The strongest reduction of [`jpeg_scales`] whose decoded size, `⌈size · e / 8⌉`, is at
/// least `min_size` in both dimensions (`size` being the oriented full size).
fn dct_scale_eighths(size: (u32, u32), min_size: (u32, u32)) -> u32 {
    let fits = |eighths: u32| {
        let scaled = turbo::scaled_size(size, eighths);
        scaled.0 >= min_size.0 && scaled.1 >= min_size.1
    };
    jpeg_scales().iter().copied().find(|&e| fits(e)).unwrap_or(8)
}

/// The size after applying `orientation`: the EXIF orientations 5–8 turn the image a
/// quarter and swap width and height.
fn oriented_size((width, height): (u32, u32), orientation: Orientation) -> (u32, u32) {
    match orientation {
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH => {
            (height, width)
        }
        Orientation::NoTransforms
        | Orientation::Rotate180
        | Orientation::FlipHorizontal
        | Orientation::FlipVertical => (width, height),
    }
}

/// An image whose header has passed: supported format, within the pixel budget, not empty,
/// with the decoder's allocation limit set and the EXIF orientation read.
struct Header<D> {
    decoder: D,
    format: ImageFormat,
    orientation: Orientation,
}

fn open<'a>(bytes: &'a [u8], limits: &DecodeLimits) -> Result<Header<impl ImageDecoder + 'a>, VisionError> {
    let format = image::guess_format(bytes).map_err(|_| VisionError::NotAnImage)?;
    if !SUPPORTED.contains(&format) {
        return Err(VisionError::UnsupportedFormat(format!("{format:?}").to_uppercase()));
    }
    // zune-jpeg paints the missing part of a cut-off JPEG grey and reports success.
    if format == ImageFormat::Jpeg && !jpeg::has_end_of_image(bytes) {
        return Err(VisionError::Corrupt(
            "the JPEG data ends before its end-of-image marker (the file is truncated)".into(),
        ));
    }
    // Every decoder reads all of a progressive JPEG's scans, each a pass over the image.
    if format == ImageFormat::Jpeg && jpeg::count_scans(bytes, limits.max_jpeg_scans) > limits.max_jpeg_scans {
        return Err(VisionError::TooManyScans { max_scans: limits.max_jpeg_scans });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // The PNG decoder takes its allocation limit when it is made, before the header is read.
    reader.limits(allocation_limits(limits.max_pixels, limits.max_pixels));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(VisionError::TooManyPixels { width, height, pixels, max_pixels: limits.max_pixels });
    }
    if pixels == 0 {
        return Err(VisionError::Empty { width, height });
    }
    decoder.set_limits(allocation_limits(pixels, limits.max_pixels)).map_err(decode_error)?;
    // A broken EXIF block is no reason to refuse the pixels: treat it as upright.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok(Header { decoder, format, orientation })
}

/// The image crate's allocation limit for an image of `pixels`: the widest colour type
/// (RGBA, 16 bits per channel) plus the decoder's scratch, which is proportional to the
/// pixel budget up to 64 MiB. A GIF frame larger than its logical screen is decoded into a
/// buffer of its own, and this is what bounds it.
fn allocation_limits(pixels: u64, max_pixels: u64) -> Limits {
    let scratch = max_pixels.saturating_mul(8).clamp(1 << 20, 64 << 20);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(scratch));
    decoder_limits
}

fn decode_error(error: image::ImageError) -> VisionError {
    match error {
        image::ImageError::Limits(limit) => {
            VisionError::Corrupt(format!("decoding it needs more memory than its size allows ({limit})"))
        }
        other => VisionError::Corrupt(other.to_string()),
    }
}

fn decode_full(decoder: impl ImageDecoder, orientation: Orientation) -> Result<RgbImage, VisionError> {
    let size = decoder.dimensions();
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    // The buffer is the header's size, which passed the budget; checked all the same.
    let decoded = (image.width(), image.height());
    if decoded != size {
        return Err(VisionError::Corrupt(format!("decoded {decoded:?}, the header said {size:?}")));
    }
    image.apply_orientation(orientation);
    Ok(to_rgb8(image))
}

fn to_rgb8(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut rgb = RgbImage::new(width, height);
    for (out, px) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(px[3]);
        for c in 0..3 {
            // c·α + 255·(1 − α), rounded, all in 0..255 units.
            out[c] = ((u32::from(px[c]) * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn text_is_not_an_image() {
        assert_eq!(decode_image(b"hello, world", &DecodeLimits::default()), Err(VisionError::NotAnImage));
    }

    #[test]
    fn pixel_budget_is_checked_before_decoding() {
        let png = encode(&DynamicImage::new_rgb8(300, 200), ImageFormat::Png);
        let err = decode_image(&png, &DecodeLimits { max_pixels: 59_999, ..DecodeLimits::default() }).unwrap_err();
        assert_eq!(err, VisionError::TooManyPixels { width: 300, height: 200, pixels: 60_000, max_pixels: 59_999 });
        assert!(decode_image(&png, &DecodeLimits { max_pixels: 60_000, ..DecodeLimits::default() }).is_ok());
    }

    #[test]
    fn half_transparent_red_over_white_is_pink() {
        let mut img = image::RgbaImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgba([255, 0, 0, 128]));
        img.put_pixel(1, 0, image::Rgba([0, 0, 0, 0]));
        let png = encode(&DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let rgb = decode_image(&png, &DecodeLimits::default()).unwrap();
        // 255·128/255 + 255·127/255 = 255; 0·128/255 + 255·127/255 = 127.
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 127, 127]);
        assert_eq!(rgb.get_pixel(1, 0).0, [255, 255, 255]);
    }

    fn gradient_jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + y) % 256) as u8])
        });
        encode(&DynamicImage::ImageRgb8(image), ImageFormat::Jpeg)
    }

    #[test]
    fn the_strongest_reduction_that_stays_at_least_the_minimum_is_chosen() {
        // 2560×1708: 1/8 is 320×214, 1/4 is 640×427.
        assert_eq!(dct_scale_eighths((2560, 1708), (383, 256)), 2);
        assert_eq!(dct_scale_eighths((2560, 1708), (224, 149)), 1);
        assert_eq!(dct_scale_eighths((2560, 1708), (224, 224)), 2);
        assert_eq!(dct_scale_eighths((1024, 1024), (256, 256)), 2);
        assert_eq!(dct_scale_eighths((1023, 1024), (256, 256)), 2, "⌈1023 / 4⌉ = 256");
        assert_eq!(dct_scale_eighths((100, 100), (0, 0)), 1);
        assert_eq!(dct_scale_eighths((640, 427), (640, 427)), 8, "the full size is the full size");
        // 640×427 for a 383×256 resize: 4/8 would be 320×214.
        assert_eq!(dct_scale_eighths((640, 427), (383, 256)), 8);
        // For a 224×149 fit, 4/8 (320×214) is enough; jpeg-decoder's 1/2 is not used.
        let expected = if turbo::AVAILABLE { 4 } else { 8 };
        assert_eq!(dct_scale_eighths((640, 427), (224, 149)), expected);
    }

    #[test]
    fn quarter_turns_swap_the_axes() {
        for orientation in [Orientation::Rotate90, Orientation::Rotate270, Orientation::Rotate90FlipH] {
            assert_eq!(oriented_size((40, 30), orientation), (30, 40));
        }
        for orientation in [Orientation::NoTransforms, Orientation::Rotate180, Orientation::FlipVertical] {
            assert_eq!(oriented_size((40, 30), orientation), (40, 30));
        }
    }

    #[test]
    fn min_decode_size_is_the_resize_before_crop_or_pad() {
        let crop = ResizeMode::Crop { fraction: 0.875 };
        assert_eq!(min_decode_size((224, 224), crop, (640, 427)), (383, 256));
        assert_eq!(min_decode_size((224, 224), crop, (2560, 1708)), (383, 256));
        assert_eq!(min_decode_size((224, 224), crop, (1708, 2560)), (256, 383));
        assert_eq!(min_decode_size((224, 224), ResizeMode::Pad, (2560, 1708)), (224, 149));
        assert_eq!(min_decode_size((224, 224), ResizeMode::Stretch, (2560, 1708)), (224, 224));
        assert_eq!(min_decode_size((224, 224), ResizeMode::Stretch, (0, 10)), (224, 224));
    }

    #[test]
    fn a_large_jpeg_is_decoded_reduced() {
        let bytes = gradient_jpeg(1030, 800);
        let decoded = decode_image_scaled(&bytes, &DecodeLimits::default(), |_| (100, 100)).unwrap();
        assert_eq!(decoded.scale_eighths, 1);
        assert_eq!(decoded.image.dimensions(), (129, 100)); // ⌈1030 / 8⌉ × 800 / 8
        let decoded = decode_image_scaled(&bytes, &DecodeLimits::default(), |_| (250, 200)).unwrap();
        assert_eq!((decoded.scale_eighths, decoded.image.dimensions()), (2, (258, 200)));
        // 2/8 is 258×200, too small; libjpeg-turbo has 4/8 (515×400), jpeg-decoder nothing
        // between 1/4 and the full size.
        let decoded = decode_image_scaled(&bytes, &DecodeLimits::default(), |_| (300, 300)).unwrap();
        let expected = if turbo::AVAILABLE { (4, (515, 400)) } else { (8, (1030, 800)) };
        assert_eq!((decoded.scale_eighths, decoded.image.dimensions()), expected);
        // The pixels are the full decode's, averaged: compare against an 8×8 box average.
        let full = decode_image(&bytes, &DecodeLimits::default()).unwrap();
        let small = decode_image_for(&bytes, &DecodeLimits::default(), (100, 100)).unwrap();
        let mut worst = 0u32;
        for (x, y, px) in small.enumerate_pixels().filter(|(x, y, _)| *x < 128 && *y < 100) {
            for c in 0..3 {
                let sum: u32 = (0..64).map(|i| u32::from(full.get_pixel(x * 8 + i % 8, y * 8 + i / 8)[c])).sum();
                worst = worst.max((sum / 64).abs_diff(u32::from(px[c])));
            }
        }
        assert!(worst <= 6, "worst difference from the box average: {worst} levels");
    }

    #[test]
    fn the_budget_is_checked_before_a_reduced_decode() {
        let bytes = gradient_jpeg(1030, 800);
        let err = decode_image_for(&bytes, &DecodeLimits { max_pixels: 823_999, ..DecodeLimits::default() }, (10, 10))
            .unwrap_err();
        assert!(matches!(err, VisionError::TooManyPixels { width: 1030, height: 800, .. }), "{err:?}");
    }

    #[test]
    fn a_truncated_large_jpeg_is_still_corrupt() {
        let bytes = gradient_jpeg(1030, 800);
        let cut = &bytes[..bytes.len() / 2];
        let err = decode_image_for(cut, &DecodeLimits::default(), (100, 100)).unwrap_err();
        assert!(matches!(&err, VisionError::Corrupt(m) if m.contains("ends before")), "{err:?}");
        // The full path refuses it too (zune-jpeg alone would paint the lower half grey).
        let err = decode_image(cut, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(&err, VisionError::Corrupt(m) if m.contains("truncated")), "{err:?}");
        // A cut inside the headers fails in the header check, before either decoder.
        let err = decode_image_for(&bytes[..300], &DecodeLimits::default(), (100, 100)).unwrap_err();
        assert_eq!(Err(err), decode_image(&bytes[..300], &DecodeLimits::default()));
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let png = encode(&DynamicImage::new_rgb8(64, 64), ImageFormat::Png);
        let err = decode_image(&png[..png.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, VisionError::Corrupt(_)), "{err:?}");
    }

    /// A progressive JPEG over the scan cap is refused before decoding, on every path
    /// (full and reduced); one within it decodes to its grey.
    #[test]
    fn jpegs_over_the_scan_cap_are_refused() {
        let limits = DecodeLimits { max_jpeg_scans: 30, ..DecodeLimits::default() };
        let within = jpeg::test_support::progressive_jpeg(29);
        let image = decode_image(&within, &limits).unwrap();
        assert_eq!(image.dimensions(), (8, 8));
        assert!(image.pixels().all(|p| p.0.iter().all(|&v| v.abs_diff(128) <= 1)), "{:?}", image.get_pixel(0, 0));
        let over = jpeg::test_support::progressive_jpeg(30);
        assert_eq!(decode_image(&over, &limits), Err(VisionError::TooManyScans { max_scans: 30 }));
        assert_eq!(decode_image_for(&over, &limits, (1, 1)), Err(VisionError::TooManyScans { max_scans: 30 }));
        let default = DecodeLimits::default();
        assert!(decode_image(&jpeg::test_support::progressive_jpeg(99), &default).is_ok());
        assert_eq!(
            decode_image(&jpeg::test_support::progressive_jpeg(100), &default),
            Err(VisionError::TooManyScans { max_scans: 100 })
        );
    }

    /// A GIF whose logical screen is 1×1 but whose frame is 3000×3000: the header passes
    /// any budget, the frame's own buffer (36 MB) is refused by the allocation limit.
    #[test]
    fn a_gif_frame_larger_than_its_screen_is_refused() {
        let frame = image::RgbaImage::from_pixel(3000, 3000, image::Rgba([10, 20, 30, 255]));
        let mut gif = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut gif).encode_frame(image::Frame::new(frame)).unwrap();
        let limits = DecodeLimits { max_pixels: 1_000_000, ..DecodeLimits::default() };
        assert!(decode_image(&gif, &DecodeLimits::default()).is_ok(), "the GIF itself is valid");
        // The logical screen's width and height, bytes 6–9 (little-endian), to 1×1.
        gif[6..10].copy_from_slice(&[1, 0, 1, 0]);
        let err = decode_image(&gif, &limits).unwrap_err();
        assert!(matches!(&err, VisionError::Corrupt(m) if m.contains("memory")), "{err:?}");
    }
}
