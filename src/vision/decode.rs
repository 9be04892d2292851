//! Decoding: the header is read first (format, dimensions, pixel budget), then the
//! pixels, with EXIF orientation applied and every colour type turned into 8-bit RGB.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Formats graft decodes; anything else is refused before decoding.
const SUPPORTED: [ImageFormat; 5] =
    [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp];

#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest width × height accepted, checked from the header before any pixel is decoded.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 40_000_000 }
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
}

/// Decodes an encoded image into upright 8-bit RGB.
///
/// Alpha is composited over white (what a viewer shows), 16-bit channels are
/// rounded to 8 bits, grayscale and palette images are expanded to RGB.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, VisionError> {
    let format = image::guess_format(bytes).map_err(|_| VisionError::NotAnImage)?;
    if !SUPPORTED.contains(&format) {
        return Err(VisionError::UnsupportedFormat(format!("{format:?}").to_uppercase()));
    }
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder = reader.into_decoder().map_err(|e| VisionError::Corrupt(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(VisionError::TooManyPixels { width, height, pixels, max_pixels: limits.max_pixels });
    }
    if pixels == 0 {
        return Err(VisionError::Empty { width, height });
    }
    let mut decoder_limits = Limits::default();
    // Room for the widest colour type (RGBA, 16 bits per channel) plus the decoder's scratch.
    decoder_limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder.set_limits(decoder_limits).map_err(|e| VisionError::Corrupt(e.to_string()))?;
    // A broken EXIF block is no reason to refuse the pixels: treat it as upright.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| VisionError::Corrupt(e.to_string()))?;
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
        let err = decode_image(&png, &DecodeLimits { max_pixels: 59_999 }).unwrap_err();
        assert_eq!(err, VisionError::TooManyPixels { width: 300, height: 200, pixels: 60_000, max_pixels: 59_999 });
        assert!(decode_image(&png, &DecodeLimits { max_pixels: 60_000 }).is_ok());
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

    #[test]
    fn truncated_png_is_corrupt() {
        let png = encode(&DynamicImage::new_rgb8(64, 64), ImageFormat::Png);
        let err = decode_image(&png[..png.len() / 2], &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, VisionError::Corrupt(_)), "{err:?}");
    }
}
