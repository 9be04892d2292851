//! JPEG decoding through the system libjpeg-turbo (csrc/turbo_decode.c, compiled by
//! build.rs when libjpeg's headers are present): its SIMD decoder is faster than the
//! pure-Rust ones, and its DCT scaling reduces by any M/8, not only 1/2, 1/4, 1/8, so a
//! 640×427 photo headed for a 256-pixel resize is decoded at 5/8 (400×267) straight
//! from the coefficients.
//!
//! Without libjpeg-turbo, [`AVAILABLE`] is false and [`decode_rgb`] declines every image
//! (its `ffi` stand-in answers so).

use image::RgbImage;

use super::jpeg::Failure;

/// Whether this build links libjpeg-turbo.
pub(super) const AVAILABLE: bool = cfg!(graft_libjpeg_turbo);

/// The size libjpeg produces at `eighths`/8 of `stored`: each side rounded up.
pub(super) fn scaled_size(stored: (u32, u32), eighths: u32) -> (u32, u32) {
    let side = |n: u32| (u64::from(n) * u64::from(eighths)).div_ceil(8) as u32;
    (side(stored.0), side(stored.1))
}

/// Decodes the JPEG `bytes`, whose stored (unoriented) size is `stored`, to RGB at
/// `eighths`/8 of that size (1..=8), without EXIF orientation. CMYK/YCCK and anything
/// else libjpeg refuses is [`Failure::Other`]; data that ends early is
/// [`Failure::Truncated`] (libjpeg would otherwise fill the rest grey and warn); a
/// scan past the `max_scans`th stops the decode as [`Failure::TooManyScans`].
pub(super) fn decode_rgb(bytes: &[u8], stored: (u32, u32), eighths: u32, max_scans: u32) -> Result<RgbImage, Failure> {
    debug_assert!((1..=8).contains(&eighths));
    let (width, height) = scaled_size(stored, eighths);
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    let (status, message, got) = ffi::decode(bytes, eighths, max_scans, &mut pixels);
    match status {
        ffi::OK if got == (width, height) => {
            RgbImage::from_raw(width, height, pixels).ok_or_else(|| Failure::Other("buffer size".to_owned()))
        }
        // The frame header disagrees with the size read by the header check.
        ffi::OK | ffi::SIZE => Err(Failure::Other(format!(
            "libjpeg decodes {}×{}, expected {width}×{height} at {eighths}/8",
            got.0, got.1
        ))),
        ffi::TRUNCATED => Err(Failure::Truncated(message)),
        ffi::SCANS => Err(Failure::TooManyScans { max_scans }),
        _ => Err(Failure::Other(message)),
    }
}

#[cfg(graft_libjpeg_turbo)]
mod ffi {
    use std::ffi::{c_char, c_int, c_uint};

    pub const OK: c_int = 0;
    pub const TRUNCATED: c_int = 2;
    pub const SIZE: c_int = 3;
    pub const SCANS: c_int = 4;

    unsafe extern "C" {
        fn graft_jpeg_decode_rgb(
            data: *const u8,
            len: usize,
            scale_num: c_uint,
            max_scans: c_uint,
            out: *mut u8,
            capacity: usize,
            width: *mut c_uint,
            height: *mut c_uint,
            message: *mut c_char,
            message_len: usize,
        ) -> c_int;
    }

    /// (status, libjpeg's message, the output size it computed).
    pub fn decode(bytes: &[u8], eighths: u32, max_scans: u32, out: &mut [u8]) -> (c_int, String, (u32, u32)) {
        let mut message = [0u8; 256];
        let (mut width, mut height) = (0, 0);
        // SAFETY: every pointer is valid for the length passed with it; the C side writes at
        // most `out.len()` bytes into `out` (it checks the output size against `capacity`
        // first) and a NUL-terminated string of at most `message.len()` bytes into `message`.
        let status = unsafe {
            graft_jpeg_decode_rgb(
                bytes.as_ptr(),
                bytes.len(),
                eighths,
                max_scans,
                out.as_mut_ptr(),
                out.len(),
                &mut width,
                &mut height,
                message.as_mut_ptr().cast(),
                message.len(),
            )
        };
        let end = message.iter().position(|&b| b == 0).unwrap_or(message.len());
        (status, String::from_utf8_lossy(&message[..end]).into_owned(), (width, height))
    }
}

#[cfg(not(graft_libjpeg_turbo))]
mod ffi {
    pub const OK: i32 = 0;
    pub const TRUNCATED: i32 = 2;
    pub const SIZE: i32 = 3;
    pub const SCANS: i32 = 4;

    pub fn decode(_: &[u8], _: u32, _: u32, _: &mut [u8]) -> (i32, String, (u32, u32)) {
        (1, "built without libjpeg-turbo".to_owned(), (0, 0))
    }
}

#[cfg(all(test, graft_libjpeg_turbo))]
mod tests {
    use super::*;

    use std::io::Cursor;

    use image::DynamicImage;
    use image::codecs::jpeg::JpegEncoder;

    fn gradient_jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image).write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90)).unwrap();
        out.into_inner()
    }

    #[test]
    fn every_eighth_gives_the_rounded_up_size() {
        let bytes = gradient_jpeg(203, 101);
        for (eighths, size) in [(1, (26, 13)), (3, (77, 38)), (5, (127, 64)), (8, (203, 101))] {
            // 203·3/8 = 76.1 → 77, 101·5/8 = 63.1 → 64.
            assert_eq!(scaled_size((203, 101), eighths), size);
            let image = decode_rgb(&bytes, (203, 101), eighths, 100).unwrap();
            assert_eq!(image.dimensions(), size, "{eighths}/8");
        }
    }

    #[test]
    fn a_full_decode_matches_the_encoded_colours() {
        let bytes = gradient_jpeg(64, 48);
        let image = decode_rgb(&bytes, (64, 48), 8, 100).unwrap();
        // Quality 90 on a smooth gradient: within a few levels of what was encoded.
        for (x, y, px) in image.enumerate_pixels() {
            let expected = [(x * 255 / 64) as i32, (y * 255 / 48) as i32, 128];
            for c in 0..3 {
                assert!((i32::from(px[c]) - expected[c]).abs() <= 6, "({x}, {y}) {c}: {:?} vs {expected:?}", px.0);
            }
        }
    }

    #[test]
    fn every_cut_is_truncated_or_an_error_never_an_image() {
        let bytes = gradient_jpeg(96, 64);
        for len in [bytes.len() - 2, bytes.len() * 3 / 4, bytes.len() / 2] {
            let result = decode_rgb(&bytes[..len], (96, 64), 8, 100);
            assert!(matches!(result, Err(Failure::Truncated(_))), "{len} of {}: {result:?}", bytes.len());
        }
        assert!(matches!(decode_rgb(&bytes[..100], (96, 64), 8, 100), Err(Failure::Other(_) | Failure::Truncated(_))));
        assert!(matches!(decode_rgb(b"not a jpeg at all", (96, 64), 8, 100), Err(Failure::Other(_))));
    }

    #[test]
    fn a_header_that_disagrees_is_declined() {
        let bytes = gradient_jpeg(96, 64);
        let result = decode_rgb(&bytes, (64, 96), 8, 100);
        assert!(matches!(&result, Err(Failure::Other(reason)) if reason.contains("96×64")), "{result:?}");
    }

    /// libjpeg's progress monitor stops a progressive JPEG at the scan past the limit, with
    /// no help from the marker count done before decoding (the file has 1 DC + 40 AC scans).
    #[test]
    fn the_progress_monitor_caps_the_scans() {
        let bytes = crate::vision::jpeg::test_support::progressive_jpeg(40);
        let image = decode_rgb(&bytes, (8, 8), 8, 41).unwrap();
        // Every coefficient is 0: the level-shifted grey 128 everywhere.
        assert!(image.pixels().all(|p| p.0 == [128; 3]), "{:?}", image.get_pixel(0, 0));
        let result = decode_rgb(&bytes, (8, 8), 8, 40);
        assert!(matches!(result, Err(Failure::TooManyScans { max_scans: 40 })), "{result:?}");
        assert!(matches!(decode_rgb(&bytes, (8, 8), 8, 1), Err(Failure::TooManyScans { max_scans: 1 })));
    }
}
