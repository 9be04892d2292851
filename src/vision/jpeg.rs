//! Reduced-size JPEG decoding: jpeg-decoder's scaled inverse DCT produces the image at
//! 1/2, 1/4 or 1/8 of its size straight from the coefficients (an 8×8 block becomes 4×4,
//! 2×2 or its DC value alone), skipping most of the IDCT, upsampling and colour work
//! that a full decode followed by a shrink would spend.
//!
//! Only the common cases are taken here (8-bit baseline or progressive, grayscale or
//! three-component colour); anything else, and any error, is reported so that the caller
//! can decode the image the ordinary way — except truncation, which is reported as such.

use image::{DynamicImage, GrayImage, RgbImage};
use jpeg_decoder::{CodingProcess, Decoder, PixelFormat};

/// The DCT scale reductions jpeg-decoder offers, the strongest first.
const DENOMINATORS: [u32; 3] = [8, 4, 2];

/// Why [`decode_scaled`] returned no image.
#[derive(Debug)]
pub(super) enum Failure {
    /// The data ends before the image does (an end-of-file error while reading). The full
    /// path would not catch this: the image crate runs zune-jpeg in its lenient mode,
    /// which paints whatever is missing grey and reports success.
    Truncated(String),
    /// The decoder reached a scan past the limit (libjpeg-turbo's progress monitor).
    TooManyScans { max_scans: u32 },
    /// Declined (a kind of JPEG left to the full path) or failed for any other reason.
    Other(String),
}

impl From<jpeg_decoder::Error> for Failure {
    fn from(error: jpeg_decoder::Error) -> Self {
        match error {
            jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Self::Truncated(e.to_string())
            }
            other => Self::Other(other.to_string()),
        }
    }
}

/// Decodes the JPEG `bytes`, whose stored (unoriented) size is `full`, at `1/denominator`
/// of that size: `⌈full / denominator⌉` in each dimension. Grayscale comes back as
/// `ImageLuma8`, colour as `ImageRgb8` (YCbCr or RGB as the file says); no EXIF
/// orientation is applied.
///
/// Declines CMYK/YCCK, lossless and 12-bit files and a header that disagrees with `full`.
/// jpeg-decoder reads with `read_exact` and never pads missing data, so a file cut short
/// anywhere, down to a missing end-of-image marker, is [`Failure::Truncated`], never a
/// partly grey image.
pub(super) fn decode_scaled(bytes: &[u8], full: (u32, u32), denominator: u32) -> Result<DynamicImage, Failure> {
    debug_assert!(DENOMINATORS.contains(&denominator));
    // A panic inside the decoder on hostile input must not take the request down with it:
    // it is one more reason to use the full-size path.
    let result = std::panic::catch_unwind(|| decode(bytes, full, denominator))
        .unwrap_or_else(|_| Err(Failure::Other("jpeg-decoder panicked".to_owned())));
    match result {
        // A file that ends with its end-of-image marker was not cut short: if the decoder
        // still ran out of data, the fault is the decoder's, and the full path decides.
        Err(Failure::Truncated(reason)) if bytes.ends_with(&[0xFF, 0xD9]) => {
            Err(Failure::Other(format!("ran out of data before the end-of-image marker: {reason}")))
        }
        other => other,
    }
}

fn decode(bytes: &[u8], full: (u32, u32), denominator: u32) -> Result<DynamicImage, Failure> {
    let declined = |reason: String| Err(Failure::Other(reason));
    let mut decoder = Decoder::new(bytes);
    decoder.read_info()?;
    let Some(info) = decoder.info() else { return declined("no frame header".to_owned()) };
    if (u32::from(info.width), u32::from(info.height)) != full {
        return declined(format!("frame is {}×{}, the header said {}×{}", info.width, info.height, full.0, full.1));
    }
    if !matches!(info.coding_process, CodingProcess::DctSequential | CodingProcess::DctProgressive) {
        return declined(format!("{:?} coding", info.coding_process));
    }
    if !matches!(info.pixel_format, PixelFormat::L8 | PixelFormat::RGB24) {
        // CMYK and YCCK: the full path's colour handling stays the only one.
        return declined(format!("{:?} pixels", info.pixel_format));
    }
    // Both fit in u16: they are at most the frame's own u16 dimensions.
    let (width, height) = (info.width.div_ceil(denominator as u16), info.height.div_ceil(denominator as u16));
    // `scale` picks the smallest reduction that reaches the request in either dimension;
    // asking for exactly ⌈full / denominator⌉ selects `denominator` (checked below).
    let scaled = decoder.scale(width, height)?;
    if scaled != (width, height) {
        return declined(format!("asked for {width}×{height}, would get {}×{}", scaled.0, scaled.1));
    }
    let (width, height) = (u32::from(width), u32::from(height));
    let channels = info.pixel_format.pixel_bytes();
    decoder.set_max_decoding_buffer_size(width as usize * height as usize * channels);
    let pixels = decoder.decode()?;
    let image = match info.pixel_format {
        PixelFormat::L8 => GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        _ => RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
    };
    image.map_or_else(|| declined("decoded buffer does not match the scaled size".to_owned()), Ok)
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
            assert!(matches!(result, Err(Failure::Truncated(_))), "{len} of {}: {result:?}", bytes.len());
        }
    }

    #[test]
    fn a_header_that_disagrees_is_declined() {
        let bytes = jpeg(&DynamicImage::ImageRgb8(gradient(96, 64)));
        let result = decode_scaled(&bytes, (64, 96), 2);
        assert!(matches!(&result, Err(Failure::Other(reason)) if reason.contains("96×64")), "{result:?}");
    }
}

/// Whether the JPEG's last scan is followed by an end-of-image marker (FF D9). Inside
/// entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so
/// FF D9 after the last start-of-scan (FF DA) is the real end; bytes after it are fine.
///
/// The last of the two markers decides, found from the end (in a whole file, at once);
/// a scan before it is then looked for from the start, where the headers end.
pub(super) fn has_end_of_image(bytes: &[u8]) -> bool {
    let is_marker = |w: &[u8]| w == [0xFF, 0xD9] || w == [0xFF, 0xDA];
    match bytes.windows(2).rposition(is_marker) {
        Some(end) if bytes[end + 1] == 0xD9 => bytes[..end].windows(2).any(|w| w == [0xFF, 0xDA]),
        _ => false,
    }
}

#[cfg(test)]
mod end_of_image_tests {
    use super::has_end_of_image;

    #[test]
    fn a_cut_after_the_scan_started_has_no_end() {
        let whole = [0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD9, 0x00, 0x00];
        assert!(has_end_of_image(&whole));
        assert!(!has_end_of_image(&whole[..9]));
        assert!(!has_end_of_image(&[0xFF, 0xD8, 0xFF, 0xD9]), "no scan at all");
    }
}

/// The start-of-scan markers (FF DA) of the JPEG's own frame, counted up to `limit + 1`
/// (enough to tell that it is over), without decoding anything.
///
/// The marker segments are walked from the start: a segment's length skips its payload,
/// so an EXIF thumbnail inside APP1 is not counted, and the walk ends at the first
/// end-of-image marker, so neither are the MPF pictures cameras append after it. In the
/// entropy-coded data after a scan header, 0xFF is only ever followed by 0x00 (a stuffed
/// byte) or a restart marker, so the next other marker is found by looking for 0xFF.
pub(super) fn count_scans(bytes: &[u8], limit: u32) -> u32 {
    let mut scans = 0;
    let mut at = 2; // after SOI
    while at + 1 < bytes.len() {
        let Some(skip) = bytes[at..].iter().position(|&b| b == 0xFF) else { break };
        at += skip;
        let Some(&marker) = bytes.get(at + 1) else { break };
        match marker {
            // A fill byte before a marker; a stuffed zero or a restart inside scan data.
            0xFF => at += 1,
            0x00 | 0xD0..=0xD7 | 0x01 | 0xD8 => at += 2,
            0xD9 => break,
            _ => {
                if marker == 0xDA {
                    scans += 1;
                    if scans > limit {
                        break;
                    }
                }
                let Some(length) = bytes.get(at + 2..at + 4) else { break };
                at += 2 + usize::from(u16::from_be_bytes([length[0], length[1]])).max(2);
            }
        }
    }
    scans
}

#[cfg(test)]
pub(super) mod test_support {
    /// A valid 8×8 grayscale progressive JPEG, built marker by marker: its DC scan and then
    /// `ac_scans` AC scans (coefficients 1–63), every coefficient 0. Each table holds one
    /// 1-bit code, so every scan's data is the code `0` padded with ones: the byte 0x7F.
    pub fn progressive_jpeg(ac_scans: u32) -> Vec<u8> {
        let segment = |marker: u8, payload: &[u8]| {
            let mut out = vec![0xFF, marker];
            out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
            out.extend_from_slice(payload);
            out
        };
        // One code of length 1, for symbol 0 (DC: difference category 0; AC: end of block).
        let one_code_table = |class_and_id: u8| {
            let mut payload = vec![class_and_id, 1];
            payload.extend_from_slice(&[0; 15]);
            payload.push(0x00);
            payload
        };
        let mut jpeg = vec![0xFF, 0xD8];
        let mut quant = vec![0x00];
        quant.extend_from_slice(&[1; 64]);
        jpeg.extend(segment(0xDB, &quant));
        // SOF2: 8 bits, 8×8, one component (id 1, 1×1 sampling, table 0).
        jpeg.extend(segment(0xC2, &[8, 0, 8, 0, 8, 1, 1, 0x11, 0]));
        jpeg.extend(segment(0xC4, &one_code_table(0x00)));
        jpeg.extend(segment(0xC4, &one_code_table(0x10)));
        // Component 1, tables 0/0, spectral range, successive approximation 0.
        jpeg.extend(segment(0xDA, &[1, 1, 0x00, 0, 0, 0x00]));
        jpeg.push(0x7F);
        for _ in 0..ac_scans {
            jpeg.extend(segment(0xDA, &[1, 1, 0x00, 1, 63, 0x00]));
            jpeg.push(0x7F);
        }
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        jpeg
    }
}

#[cfg(test)]
mod scan_count_tests {
    use super::count_scans;
    use super::test_support::progressive_jpeg;

    #[test]
    fn every_scan_of_the_frame_is_counted() {
        assert_eq!(count_scans(&progressive_jpeg(0), 100), 1);
        assert_eq!(count_scans(&progressive_jpeg(40), 100), 41);
        // Counting stops one past the limit.
        assert_eq!(count_scans(&progressive_jpeg(40), 10), 11);
    }

    #[test]
    fn a_baseline_photo_has_one_scan() {
        let image = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 77]));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        assert_eq!(count_scans(out.get_ref(), 100), 1);
    }

    /// Scan markers inside a metadata segment (an embedded thumbnail) or after the end of
    /// the image (an appended MPF picture) are not the frame's.
    #[test]
    fn thumbnails_and_appended_pictures_are_not_counted() {
        let inner = progressive_jpeg(5);
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&(inner.len() as u16 + 2).to_be_bytes());
        app1.extend_from_slice(&inner);
        let main = progressive_jpeg(2);
        let mut file = main[..2].to_vec();
        file.extend(&app1);
        file.extend(&main[2..]);
        file.extend(&inner);
        assert_eq!(count_scans(&file, 100), 3);
    }
}
