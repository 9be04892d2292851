//! Reduced-size JPEG decoding: jpeg-decoder's scaled inverse DCT produces the image at
//! 1/2, 1/4 or 1/8 of its size straight from the coefficients (an 8×8 block becomes 4×4,
//! 2×2 or its DC value alone), skipping most of the IDCT, upsampling and colour work
//! that a full decode followed by a shrink would spend.
//!
//! Only the common cases are taken here (8-bit baseline or progressive, grayscale or
//! three-component colour); anything else, and any error, is reported so that the caller
//! can decode the image the ordinary way.

use image::{DynamicImage, GrayImage, RgbImage};
use jpeg_decoder::{CodingProcess, Decoder, PixelFormat};

/// The DCT scale reductions jpeg-decoder offers, the strongest first.
pub(super) const DENOMINATORS: [u32; 3] = [8, 4, 2];

/// Decodes the JPEG `bytes`, whose stored (unoriented) size is `full`, at `1/denominator`
/// of that size: `⌈full / denominator⌉` in each dimension. Grayscale comes back as
/// `ImageLuma8`, colour as `ImageRgb8` (YCbCr or RGB as the file says); no EXIF
/// orientation is applied.
///
/// Returns why it declined or failed instead of an image: CMYK/YCCK, lossless or
/// 12-bit files, a header that disagrees with `full`, and every decoding error
/// (jpeg-decoder reads with `read_exact`, so a truncated file is an `UnexpectedEof`
/// error, never a partly grey image).
pub(super) fn decode_scaled(bytes: &[u8], full: (u32, u32), denominator: u32) -> Result<DynamicImage, String> {
    debug_assert!(DENOMINATORS.contains(&denominator));
    // A panic inside the decoder on hostile input must not take the request down with it:
    // it is one more reason to use the full-size path.
    std::panic::catch_unwind(|| decode(bytes, full, denominator))
        .unwrap_or_else(|_| Err("jpeg-decoder panicked".to_owned()))
}

fn decode(bytes: &[u8], full: (u32, u32), denominator: u32) -> Result<DynamicImage, String> {
    let mut decoder = Decoder::new(bytes);
    decoder.read_info().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no frame header")?;
    if (u32::from(info.width), u32::from(info.height)) != full {
        return Err(format!("frame is {}×{}, the header said {}×{}", info.width, info.height, full.0, full.1));
    }
    if !matches!(info.coding_process, CodingProcess::DctSequential | CodingProcess::DctProgressive) {
        return Err(format!("{:?} coding", info.coding_process));
    }
    if !matches!(info.pixel_format, PixelFormat::L8 | PixelFormat::RGB24) {
        // CMYK and YCCK: the full path's colour handling stays the only one.
        return Err(format!("{:?} pixels", info.pixel_format));
    }
    let (width, height) = (full.0.div_ceil(denominator), full.1.div_ceil(denominator));
    // `scale` picks the smallest reduction that reaches the request in either dimension;
    // asking for exactly ⌈full / denominator⌉ selects `denominator` (checked below).
    let scaled = decoder
        .scale(u16::try_from(width).map_err(|e| e.to_string())?, u16::try_from(height).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if (u32::from(scaled.0), u32::from(scaled.1)) != (width, height) {
        return Err(format!("asked for {width}×{height} and would get {}×{}", scaled.0, scaled.1));
    }
    let channels = info.pixel_format.pixel_bytes();
    decoder.set_max_decoding_buffer_size(width as usize * height as usize * channels);
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let image = match info.pixel_format {
        PixelFormat::L8 => GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        _ => RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
    };
    image.ok_or_else(|| "decoded buffer does not match the scaled size".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Cursor;

    use image::codecs::jpeg::JpegEncoder;

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128]))
    }

    fn jpeg(image: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90)).unwrap();
        out.into_inner()
    }

    #[test]
    fn sizes_are_the_ceiling_of_each_reduction() {
        let bytes = jpeg(&DynamicImage::ImageRgb8(gradient(203, 101)));
        for (denominator, size) in [(2, (102, 51)), (4, (51, 26)), (8, (26, 13))] {
            let image = decode_scaled(&bytes, (203, 101), denominator).unwrap();
            assert_eq!((image.width(), image.height()), size, "1/{denominator}");
            assert!(matches!(image, DynamicImage::ImageRgb8(_)));
        }
    }

    #[test]
    fn grayscale_stays_one_channel() {
        let gray = DynamicImage::ImageRgb8(gradient(64, 48)).into_luma8();
        let bytes = jpeg(&DynamicImage::ImageLuma8(gray));
        let image = decode_scaled(&bytes, (64, 48), 4).unwrap();
        assert!(matches!(image, DynamicImage::ImageLuma8(_)), "{:?}", image.color());
        assert_eq!((image.width(), image.height()), (16, 12));
    }

    /// jpeg-decoder must not hand back a partial image for a cut-off file: every
    /// truncation, down to losing only the end-of-image marker, is an error.
    #[test]
    fn every_truncation_is_an_error() {
        let bytes = jpeg(&DynamicImage::ImageRgb8(gradient(96, 64)));
        assert!(decode_scaled(&bytes, (96, 64), 2).is_ok());
        for len in [bytes.len() - 1, bytes.len() - 2, bytes.len() - 3, bytes.len() * 3 / 4, bytes.len() / 2, 40] {
            let result = decode_scaled(&bytes[..len], (96, 64), 2);
            assert!(result.is_err(), "{len} of {} bytes decoded", bytes.len());
        }
    }

    #[test]
    fn a_header_that_disagrees_is_declined() {
        let bytes = jpeg(&DynamicImage::ImageRgb8(gradient(96, 64)));
        assert!(decode_scaled(&bytes, (64, 96), 2).unwrap_err().contains("96×64"));
    }
}
