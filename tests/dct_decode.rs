//! Reduced-size JPEG decoding (`decode_image_scaled` / `decode_image_for`): the DCT-scaled
//! decode, preprocessed, against the full decode, preprocessed, on real photos enlarged to
//! 2560×1708 so that every reduction is exercised; EXIF orientation on the scaled path;
//! what still takes the full path; truncation.

mod common;

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use common::*;
use graft::vision::{
    ColorOrder, DecodeLimits, Layout, Normalization, Preprocessing, ResizeMode, VisionError, decode_image,
    decode_image_for, decode_image_scaled, jpeg_scales, min_decode_size, preprocess_into,
};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

const TARGET: (u32, u32) = (224, 224);
/// china.jpg and flower.jpg (640×427) enlarged 4×: 427·4 = 1708.
const LARGE: (u32, u32) = (2560, 1708);
const CROP: ResizeMode = ResizeMode::Crop { fraction: 0.875 };

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

/// Tensor values are pixel levels (0..255), RGB, NHWC.
fn spec(resize: ResizeMode) -> Preprocessing {
    Preprocessing {
        width: TARGET.0,
        height: TARGET.1,
        layout: Layout::Nhwc,
        color: ColorOrder::Rgb,
        resize,
        normalization: Normalization { scale: 1.0, mean: [0.0; 3], std: [1.0; 3] },
    }
}

fn tensor(image: &RgbImage, resize: ResizeMode) -> Vec<f32> {
    let mut out = vec![0.0; (TARGET.0 * TARGET.1 * 3) as usize];
    preprocess_into(image, &spec(resize), &mut out);
    out
}

/// (max, mean) absolute difference in pixel levels.
fn difference(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let diffs = a.iter().zip(b).map(|(x, y)| (x - y).abs());
    let (max, sum) = diffs.fold((0.0f32, 0.0f64), |(max, sum), d| (max.max(d), sum + f64::from(d)));
    (max, (sum / a.len() as f64) as f32)
}

fn encode_jpeg(image: &DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_with_encoder(JpegEncoder::new_with_quality(&mut out, quality)).unwrap();
    out.into_inner()
}

/// The fixture photo enlarged to `size` (Lanczos3) and saved as a quality-95 JPEG (4:2:0
/// chroma, as the image crate writes it); each made once per test binary.
fn enlarged_jpeg(name: &'static str, size: (u32, u32)) -> &'static [u8] {
    type Cache = Mutex<HashMap<(&'static str, (u32, u32)), &'static [u8]>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    cache.entry((name, size)).or_insert_with(|| {
        let photo = decode_image(&image(name), &limits()).unwrap();
        assert_eq!(photo.dimensions(), (640, 427));
        let large = image::imageops::resize(&photo, size.0, size.1, FilterType::Lanczos3);
        encode_jpeg(&DynamicImage::ImageRgb8(large), 95).leak()
    })
}

fn large_jpeg(name: &'static str) -> &'static [u8] {
    enlarged_jpeg(name, LARGE)
}

/// Inserts an EXIF APP1 segment holding only Orientation = `orientation` after the JFIF
/// APP0 segment the image crate writes (right after SOI when there is none).
fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
    assert_eq!(jpeg[..2], [0xFF, 0xD8], "SOI");
    let mut at = 2;
    if jpeg[2..4] == [0xFF, 0xE0] {
        // APP0: its 2-byte length counts itself but not the marker.
        at += 2 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
    }
    #[rustfmt::skip]
    let tiff: [u8; 26] = [
        b'M', b'M', 0x00, 0x2A,   // big-endian TIFF, magic 42
        0x00, 0x00, 0x00, 0x08,   // IFD0 at offset 8 from the TIFF header's start (right after it)
        0x00, 0x01,               // IFD0 holds 1 entry:
        0x01, 0x12,               //   tag 0x0112 Orientation
        0x00, 0x03,               //   type 3 = SHORT
        0x00, 0x00, 0x00, 0x01,   //   count 1
        0x00, orientation, 0x00, 0x00, // value, left-justified in the 4-byte field
        0x00, 0x00, 0x00, 0x00,   // no next IFD
    ];
    let mut app1 = vec![0xFF, 0xE1];
    let length = 2 + 6 + tiff.len(); // the length field itself + "Exif\0\0" + TIFF = 34
    app1.extend_from_slice(&(length as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&tiff);
    [&jpeg[..at], &app1, &jpeg[at..]].concat()
}

/// How far the preprocessed DCT-scaled decode may lie from the preprocessed full decode,
/// in pixel levels (max, mean absolute difference over the 224×224×3 tensor).
///
/// The two differ by design. A 1/d DCT decode is close to a d×d box average of the full
/// decode (measured: 0.3–0.7 level apart on average after preprocessing, 5–15 at most),
/// and the antialiased bilinear (triangle) resize then reduces far less; on the full path
/// the triangle filter does the whole reduction. Box-then-triangle and one wide triangle
/// weigh an edge's two sides differently, so values move on edges and little elsewhere.
///
/// A second, geometric, cause appears when a dimension is not a multiple of d: the decoder
/// rounds ⌈size / d⌉ up, its last row (column) is a partial block that the encoder padded,
/// and the resize treats the decoded image as covering `d·⌈size / d⌉` source pixels, not
/// `size`: 1712 rather than 1708 rows (+0.23 %), so rows near the bottom land up to a third
/// of an output row off, which on sharp horizontal edges is tens of levels.
///
/// Measured (libjpeg-turbo build, quality-95 JPEGs; the 640×427 rows are the photos themselves):
///
/// | photo  | size      | mode    | scale | aligned | max | mean  |
/// |--------|-----------|---------|-------|---------|-----|-------|
/// | china  | 2560×1708 | pad     | 1/8   | no      | 42  | 1.738 |
/// | china  | 2560×1708 | crop    | 1/4   | yes     |  9  | 0.736 |
/// | china  | 2560×1708 | stretch | 1/4   | yes     |  8  | 0.392 |
/// | flower | 2560×1708 | pad     | 1/8   | no      | 64  | 0.784 |
/// | flower | 2560×1708 | crop    | 1/4   | yes     |  9  | 0.400 |
/// | flower | 2560×1708 | stretch | 1/4   | yes     |  7  | 0.201 |
/// | china  | 2560×1704 | pad     | 1/8   | yes     | 16  | 0.798 |
/// | flower | 2560×1704 | pad     | 1/8   | yes     | 13  | 0.351 |
/// | china  | 640×427   | pad     | 1/2   | no      | 43  | 1.801 |
/// | flower | 640×427   | pad     | 1/2   | no      | 65  | 0.762 |
///
/// (The jpeg-decoder build measured within a few levels of these: 43/1.833, 10/0.583,
/// 62/0.868 for the first rows.)
///
/// Allowed, a little above the worst measured: max 20 levels, mean 1.2 when both sides are
/// multiples of d; max 72, mean 2.2 when not. A misplaced, mis-rotated or wrongly coloured
/// image is tens of levels off on average, far outside either.
fn tolerance(size: (u32, u32), eighths: u32) -> (f32, f32) {
    let aligned = |side: u32| (side * eighths).is_multiple_of(8);
    if aligned(size.0) && aligned(size.1) { (20.0, 1.2) } else { (72.0, 2.2) }
}

/// Preprocesses both, prints and checks their difference against [`tolerance`].
fn assert_close(label: &str, scaled: &RgbImage, full: &RgbImage, mode: ResizeMode, eighths: u32) {
    let (max, mean) = difference(&tensor(scaled, mode), &tensor(full, mode));
    let (max_allowed, mean_allowed) = tolerance(full.dimensions(), eighths);
    println!("{label} at {eighths}/8: max {max:.1} levels, mean {mean:.3} (allowed {max_allowed}, {mean_allowed})");
    assert!(max <= max_allowed, "{label}: max difference {max} levels");
    assert!(mean <= mean_allowed, "{label}: mean difference {mean} levels");
}

/// The DCT-scaled decode, preprocessed, against the full decode, preprocessed, for every
/// resize mode at 224×224, on the two photos enlarged to 2560×1708.
#[test]
fn scaled_decode_preprocesses_like_the_full_decode() {
    for name in ["china.jpg", "flower.jpg"] {
        let bytes = large_jpeg(name);
        let full = decode_image(bytes, &limits()).unwrap();
        assert_eq!(full.dimensions(), LARGE);
        for (mode_name, mode, eighths) in
            [("pad", ResizeMode::Pad, 1), ("crop", CROP, 2), ("stretch", ResizeMode::Stretch, 2)]
        {
            // pad: fitted 224×149, and 1708 / 8 = 213 ≥ 149; crop: 383×256, 1708 / 8 = 213 < 256
            // but 1708 / 4 = 427 ≥ 256; stretch: 224×224, 213 < 224, 427 ≥ 224.
            let decoded = decode_image_scaled(bytes, &limits(), |size| min_decode_size(TARGET, mode, size)).unwrap();
            assert_eq!(decoded.scale_eighths, eighths, "{name} {mode_name}");
            let side = |n: u32| (n * eighths).div_ceil(8);
            assert_eq!(decoded.image.dimensions(), (side(LARGE.0), side(LARGE.1)));
            let min = min_decode_size(TARGET, mode, LARGE);
            assert_eq!(decode_image_for(bytes, &limits(), min).unwrap(), decoded.image, "the fixed-size entry point");
            assert_close(&format!("{name} 2560×1708 {mode_name}"), &decoded.image, &full, mode, eighths);
        }
    }
}

/// Pad mode at 1/8 when the height is a multiple of 8 (2560×1704): no partial block, so
/// only the filter difference remains.
#[test]
fn aligned_sizes_differ_only_by_the_filter() {
    for name in ["china.jpg", "flower.jpg"] {
        let bytes = enlarged_jpeg(name, (2560, 1704));
        let full = decode_image(bytes, &limits()).unwrap();
        let decoded =
            decode_image_scaled(bytes, &limits(), |size| min_decode_size(TARGET, ResizeMode::Pad, size)).unwrap();
        assert_eq!((decoded.scale_eighths, decoded.image.dimensions()), (1, (320, 213)));
        assert_close(&format!("{name} 2560×1704 pad"), &decoded.image, &full, ResizeMode::Pad, 1);
    }
}

/// The photos at their own 640×427. Crop (383×256) and stretch (224×224) need more than
/// 427·4/8 = 214 rows: the full decode, bit for bit. Pad (224×149) fits in 4/8 (320×214),
/// which libjpeg-turbo offers and jpeg-decoder's path does not.
#[test]
fn photos_at_their_own_size() {
    for name in ["china.jpg", "flower.jpg"] {
        let bytes = image(name);
        let full = decode_image(&bytes, &limits()).unwrap();
        for (mode, eighths) in [(CROP, 8), (ResizeMode::Stretch, 8), (ResizeMode::Pad, 4)] {
            let expected = if jpeg_scales().contains(&eighths) { eighths } else { 8 };
            let decoded = decode_image_scaled(&bytes, &limits(), |size| min_decode_size(TARGET, mode, size)).unwrap();
            assert_eq!(decoded.scale_eighths, expected, "{name} {mode:?}");
            if expected == 8 {
                assert!(decoded.image == full, "{name} {mode:?}: not the full decode");
            } else {
                let side = |n: u32| (n * eighths).div_ceil(8);
                assert_eq!(decoded.image.dimensions(), (side(640), side(427)));
                assert_close(&format!("{name} 640×427 {mode:?}"), &decoded.image, &full, mode, eighths);
            }
        }
    }
}

/// EXIF orientation 6 (turn 90° clockwise) on the scaled path: the reduction is chosen on
/// the upright size, and the result is the unrotated scaled decode turned, exactly.
#[test]
fn exif_orientation_is_applied_on_the_scaled_path() {
    let plain = large_jpeg("china.jpg");
    let rotated = with_exif_orientation(plain, 6);
    let full = decode_image(&rotated, &limits()).unwrap();
    assert_eq!(full.dimensions(), (LARGE.1, LARGE.0), "the full path reads the hand-made EXIF block");

    // Upright 1708×2560: 1/8 would give 214 wide < 300, so 1/4. Had the stored 2560×1708
    // been used, 1/8 (320×214 ≥ 300×200) would have been chosen.
    let decoded = decode_image_scaled(&rotated, &limits(), |size| {
        assert_eq!(size, (LARGE.1, LARGE.0), "the minimum is asked for the upright size");
        (300, 200)
    })
    .unwrap();
    assert_eq!((decoded.scale_eighths, decoded.image.dimensions()), (2, (427, 640)));
    let unrotated = decode_image_scaled(plain, &limits(), |_| (200, 300)).unwrap();
    assert_eq!((unrotated.scale_eighths, unrotated.image.dimensions()), (2, (640, 427)));
    assert!(decoded.image == image::imageops::rotate90(&unrotated.image), "orientation 6 is a clockwise quarter turn");

    // And it agrees with the full path after preprocessing (crop takes 1/4 here as well).
    let scaled = decode_image_for(&rotated, &limits(), min_decode_size(TARGET, CROP, full.dimensions())).unwrap();
    assert_eq!(scaled.dimensions(), (427, 640));
    assert_close("china 2560×1708 turned, crop", &scaled, &full, CROP, 2);
}

/// A grayscale JPEG on the scaled path comes out as gray RGB like the full decode.
#[test]
fn grayscale_jpeg_on_the_scaled_path() {
    let gray = DynamicImage::ImageRgb8(decode_image(large_jpeg("flower.jpg"), &limits()).unwrap()).into_luma8();
    let bytes = encode_jpeg(&DynamicImage::ImageLuma8(gray), 90);
    let full = decode_image(&bytes, &limits()).unwrap();
    let decoded = decode_image_scaled(&bytes, &limits(), |size| min_decode_size(TARGET, CROP, size)).unwrap();
    assert_eq!((decoded.scale_eighths, decoded.image.dimensions()), (2, (640, 427)));
    assert!(decoded.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]), "gray expanded to RGB");
    assert_close("flower 2560×1708 gray, crop", &decoded.image, &full, CROP, 2);
}

/// Cut anywhere in its pixel data, a large JPEG is Corrupt on the scaled path. (The full
/// path, zune-jpeg in the image crate's lenient mode, returns such a file with the missing
/// part grey; only a cut inside the headers is an error there.)
#[test]
fn a_truncated_large_jpeg_is_corrupt() {
    let bytes = large_jpeg("china.jpg");
    for len in [bytes.len() / 10, bytes.len() / 2, bytes.len() * 9 / 10, bytes.len() - 2] {
        let err = decode_image_for(&bytes[..len], &limits(), min_decode_size(TARGET, CROP, LARGE)).unwrap_err();
        assert!(matches!(err, VisionError::Corrupt(_)), "{len} of {} bytes: {err:?}", bytes.len());
        println!(
            "cut at {len}: {err}; full path: {:?}",
            decode_image(&bytes[..len], &limits()).map(|i| i.dimensions())
        );
    }
}

/// What takes the full path comes back exactly as `decode_image` returns it, errors included.
#[test]
fn everything_else_is_the_full_decode() {
    // A JPEG under twice the minimum, with and without EXIF orientation.
    for name in ["img0.jpg", "exif_rotate.jpg", "china.jpg"] {
        let bytes = image(name);
        let decoded = decode_image_scaled(&bytes, &limits(), |size| size).unwrap();
        assert_eq!(decoded.scale_eighths, 8);
        assert!(decoded.image == decode_image(&bytes, &limits()).unwrap(), "{name}");
    }
    // Not JPEG: never scaled, however small the minimum.
    for name in ["img0.png", "gray.png", "alpha.png"] {
        let bytes = image(name);
        let decoded = decode_image_scaled(&bytes, &limits(), |_| (0, 0)).unwrap();
        assert_eq!(decoded.scale_eighths, 8);
        assert!(decoded.image == decode_image(&bytes, &limits()).unwrap(), "{name}");
    }
    // Refused before decoding, with the same errors.
    let bytes = large_jpeg("china.jpg");
    let small_budget = DecodeLimits { max_pixels: 1_000_000, ..DecodeLimits::default() };
    assert_eq!(decode_image_for(bytes, &small_budget, (1, 1)), decode_image(bytes, &small_budget));
    assert!(matches!(decode_image_for(bytes, &small_budget, (1, 1)), Err(VisionError::TooManyPixels { .. })));
    assert_eq!(decode_image_for(b"hello", &limits(), (1, 1)), Err(VisionError::NotAnImage));
    assert_eq!(decode_image_for(&bytes[..200], &limits(), (1, 1)), decode_image(&bytes[..200], &limits()));
}

/// Not an assertion: how much the reduced decode saves for a 2560×1708 photo going to
/// 224×224. In a debug build the ratio is large (8–25×) but says little: zune-jpeg's
/// SIMD paths are slow unoptimised. Measured with `cargo test --release` (2-core VM): full
/// 19–22 ms against scaled 18–19 ms (1.1–1.2×), because both decoders must still entropy-
/// decode every coefficient and that is most of the work — jpeg-decoder at 1/8 takes 16 ms
/// here, its full decode 19 ms, zune-jpeg's full decode 18 ms. For a 4000×3000 image (7×8
/// tiles of china.jpg; 1/8 for crop) it was 66 → 40 ms at quality 75, 86 → 55 ms at 90 and
/// 106 → 80 ms at 95.
#[test]
fn timing_full_versus_scaled() {
    let bytes = large_jpeg("china.jpg");
    const RUNS: u32 = 3;
    for (mode_name, mode) in [("crop", CROP), ("pad", ResizeMode::Pad)] {
        let start = Instant::now();
        for _ in 0..RUNS {
            let image = decode_image(bytes, &limits()).unwrap();
            std::hint::black_box(tensor(&image, mode));
        }
        let full = start.elapsed() / RUNS;
        let start = Instant::now();
        let mut eighths = 0;
        for _ in 0..RUNS {
            let decoded = decode_image_scaled(bytes, &limits(), |size| min_decode_size(TARGET, mode, size)).unwrap();
            eighths = decoded.scale_eighths;
            std::hint::black_box(tensor(&decoded.image, mode));
        }
        let scaled = start.elapsed() / RUNS;
        println!(
            "2560×1708 → 224×224 {mode_name}: full decode + preprocess {full:.1?}, {eighths}/8 decode + preprocess \
             {scaled:.1?} ({:.1}× faster)",
            full.as_secs_f64() / scaled.as_secs_f64()
        );
    }
}
