//! Small previews of stored images (the console's dataset grids and misclassified images):
//! upright, the longer side at most `size` pixels, as JPEG.

use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;

use super::decode::{DecodeLimits, VisionError, decode_image_scaled};

/// Smallest and largest side a thumbnail may be asked for.
pub const THUMBNAIL_SIZES: std::ops::RangeInclusive<u32> = 16..=512;
/// JPEG quality of thumbnails: small files, no visible blocks at grid size.
const QUALITY: u8 = 80;

/// The image scaled so that it fits in `size` × `size` (never enlarged), encoded as JPEG.
/// A JPEG is decoded at the smallest DCT scale that still covers the thumbnail.
pub fn thumbnail_jpeg(bytes: &[u8], limits: &DecodeLimits, size: u32) -> Result<Vec<u8>, VisionError> {
    let size = size.clamp(*THUMBNAIL_SIZES.start(), *THUMBNAIL_SIZES.end());
    let decoded = decode_image_scaled(bytes, limits, |(w, h)| fitted((w, h), size))?;
    let image = decoded.image;
    let (width, height) = fitted(image.dimensions(), size);
    let image = if (width, height) == image.dimensions() {
        image
    } else {
        image::imageops::resize(&image, width, height, FilterType::Triangle)
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, QUALITY)
        .encode_image(&image)
        .map_err(|e| VisionError::Corrupt(format!("thumbnail encoding failed: {e}")))?;
    Ok(out)
}

/// `(width, height)` scaled down to fit in `size` × `size`, keeping the aspect ratio, each
/// side at least 1.
fn fitted((width, height): (u32, u32), size: u32) -> (u32, u32) {
    let longer = width.max(height).max(1);
    if longer <= size {
        return (width.max(1), height.max(1));
    }
    let scale =
        |side: u32| ((u64::from(side) * u64::from(size) + u64::from(longer) / 2) / u64::from(longer)).max(1) as u32;
    (scale(width), scale(height))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, RgbImage};

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image =
            RgbImage::from_fn(width, height, |x, _| if x < width / 2 { Rgb([250, 0, 0]) } else { Rgb([0, 0, 250]) });
        let mut bytes = std::io::Cursor::new(Vec::new());
        image.write_to(&mut bytes, ImageFormat::Png).unwrap();
        bytes.into_inner()
    }

    const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 10_000_000, max_jpeg_scans: 64 };

    #[test]
    fn fits_the_longer_side_and_keeps_the_aspect_ratio() {
        assert_eq!(fitted((400, 100), 128), (128, 32));
        assert_eq!(fitted((100, 400), 128), (32, 128));
        assert_eq!(fitted((60, 40), 128), (60, 40), "never enlarged");
        assert_eq!(fitted((5000, 1), 64), (64, 1), "a side never reaches 0");
    }

    #[test]
    fn a_thumbnail_is_a_jpeg_of_the_fitted_size_with_the_picture_kept() {
        let jpeg = thumbnail_jpeg(&png(300, 150), &LIMITS, 100).unwrap();
        let image = image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (100, 50));
        // Left half red, right half blue, as in the original.
        assert!(image.get_pixel(10, 25)[0] > 200 && image.get_pixel(10, 25)[2] < 60);
        assert!(image.get_pixel(90, 25)[2] > 200 && image.get_pixel(90, 25)[0] < 60);
    }

    #[test]
    fn the_decode_budget_holds() {
        let tight = DecodeLimits { max_pixels: 100, max_jpeg_scans: 64 };
        assert!(matches!(thumbnail_jpeg(&png(300, 150), &tight, 100), Err(VisionError::TooManyPixels { .. })));
        assert!(matches!(thumbnail_jpeg(b"not an image", &LIMITS, 100), Err(VisionError::NotAnImage)));
    }
}
