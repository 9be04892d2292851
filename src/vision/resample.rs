//! Resampling for preprocessing: a window of the source image, in its (fractional)
//! pixels, resized to an output size with the antialiased bilinear filter of Pillow's
//! `Image.resize(BILINEAR)`, by fast_image_resize, with its scratch memory bounded
//! whatever the image's aspect ratio.
//!
//! One fast_image_resize call runs both passes of the separable filter; for 8-bit pixels
//! the vertical one first, into a buffer as wide as the source columns the filter reads
//! and as tall as the output, and each pass with a table of about 2·scale + 3 weights
//! per output pixel. For a photo both are smaller than the photo itself. For an extreme
//! aspect ratio they are not: stretching 1,000,000×1 to 224×224 would take a
//! 1,000,000×224 buffer (672 MB), and padding a 40,000,000×1 image into 224×224 would
//! take 640 MB of horizontal weights. Such a window is resized in two one-axis passes
//! instead ([`Strategy::TwoPass`]), the order chosen for the smaller intermediate image,
//! each pass in chunks of output pixels small enough that no weight table exceeds
//! [`CHUNK_WEIGHT_BYTES`]. A chunk's output pixels sample the same source positions as
//! in one call (the filter is clipped at the source's edges either way), so the two
//! ways agree to the rounding of their 8-bit intermediate.

use std::borrow::Cow;

use fast_image_resize::images::{CroppedImageMut, Image, ImageRef};
use fast_image_resize::{FilterType, IntoImageView, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// A rectangle of the source image in its pixels; fractional, inside the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceWindow {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl SourceWindow {
    /// The whole of a `width`×`height` image.
    pub fn whole((width, height): (u32, u32)) -> Self {
        Self { left: 0.0, top: 0.0, width: f64::from(width), height: f64::from(height) }
    }
}

/// The least scratch a single call may take before the two-pass way is used (a photo's
/// resize stays a single call well below it: 6,000×4,000 into 224×224 takes 4 MB).
const MIN_SCRATCH_BYTES: u64 = 8 << 20;

/// The largest weight table one chunk of a pass may build.
const CHUNK_WEIGHT_BYTES: u64 = 1 << 20;

const BYTES_PER_PIXEL: u64 = 3;

/// How a window is brought to the output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Strategy {
    /// One fast_image_resize call with the window as its source crop.
    OneCall,
    /// Two one-axis passes, `first` first, through an intermediate image of
    /// `intermediate` pixels (width, height).
    TwoPass { first: Axis, intermediate: (u32, u32) },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Axis {
    Horizontal,
    Vertical,
}

/// The strategy for resizing `window` of a `source`-sized image to `size`, and the bytes
/// of scratch (weight tables and intermediate images) it takes at most.
///
/// A single call is used while its scratch stays within the source image's own size (or
/// [`MIN_SCRATCH_BYTES`]), which holds for every ordinary photo, so their pixels come from
/// the same one call as always.
pub(super) fn strategy(source: (u32, u32), window: SourceWindow, size: (u32, u32)) -> (Strategy, u64) {
    let one_call = one_call_scratch(source, window, size);
    let budget = (u64::from(source.0) * u64::from(source.1) * BYTES_PER_PIXEL).max(MIN_SCRATCH_BYTES);
    if one_call <= budget {
        return (Strategy::OneCall, one_call);
    }
    let rows = span(window.top, window.height, size.1, source.1);
    let columns = span(window.left, window.width, size.0, source.0);
    let horizontal_first = (size.0, rows.1 - rows.0);
    let vertical_first = (columns.1 - columns.0, size.1);
    let pixels = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
    let (first, intermediate) = if pixels(horizontal_first) < pixels(vertical_first) {
        (Axis::Horizontal, horizontal_first)
    } else {
        (Axis::Vertical, vertical_first)
    };
    // A chunk holds at least one output pixel, so its table is at most the larger of the two.
    let chunk_weights =
        |extent: f64, out: u32| weight_bytes(extent, out).min(CHUNK_WEIGHT_BYTES.max(per_output(extent, out)));
    let scratch = pixels(intermediate) * BYTES_PER_PIXEL
        + chunk_weights(window.width, size.0)
        + chunk_weights(window.height, size.1);
    (Strategy::TwoPass { first, intermediate }, scratch)
}

/// `window` of `image` resized to `size` (each side at least 1). The image itself when the
/// window is all of it at its own size.
pub(super) fn resize_window(image: &RgbImage, window: SourceWindow, size: (u32, u32)) -> Cow<'_, RgbImage> {
    if window == SourceWindow::whole(image.dimensions()) && size == image.dimensions() {
        return Cow::Borrowed(image);
    }
    let (strategy, _) = strategy(image.dimensions(), window, size);
    Cow::Owned(resize_with(image, window, size, strategy))
}

/// [`resize_window`] the given way; kept apart so that the two ways can be compared.
pub(super) fn resize_with(image: &RgbImage, window: SourceWindow, size: (u32, u32), strategy: Strategy) -> RgbImage {
    let source = ImageRef::new(image.width(), image.height(), image.as_raw(), PixelType::U8x3)
        .expect("an RgbImage buffer always matches its dimensions");
    let mut resizer = Resizer::new();
    let out = match strategy {
        Strategy::OneCall => {
            let mut out = Image::new(size.0, size.1, PixelType::U8x3);
            resize(&mut resizer, &source, &mut out, window);
            out
        }
        Strategy::TwoPass { first: Axis::Horizontal, .. } => {
            let rows = span(window.top, window.height, size.1, image.height());
            let across = SourceWindow { top: f64::from(rows.0), height: f64::from(rows.1 - rows.0), ..window };
            let half = pass(&mut resizer, &source, Axis::Horizontal, across, size.0);
            let rest =
                SourceWindow { left: 0.0, width: f64::from(size.0), top: window.top - f64::from(rows.0), ..window };
            pass(&mut resizer, &half, Axis::Vertical, rest, size.1)
        }
        Strategy::TwoPass { first: Axis::Vertical, .. } => {
            let columns = span(window.left, window.width, size.0, image.width());
            let across = SourceWindow { left: f64::from(columns.0), width: f64::from(columns.1 - columns.0), ..window };
            let half = pass(&mut resizer, &source, Axis::Vertical, across, size.1);
            let rest = SourceWindow {
                top: 0.0,
                height: f64::from(size.1),
                left: window.left - f64::from(columns.0),
                ..window
            };
            pass(&mut resizer, &half, Axis::Horizontal, rest, size.0)
        }
    };
    RgbImage::from_raw(size.0, size.1, out.into_vec()).expect("the output buffer has w·h·3 bytes")
}

/// Resizes `window` of `source` along `axis` only, to `out_len` pixels on that axis; on
/// the other axis the window's extent must be whole pixels and is kept. Done in chunks
/// of output pixels whose weight tables stay within [`CHUNK_WEIGHT_BYTES`].
fn pass(
    resizer: &mut Resizer,
    source: &impl IntoImageView,
    axis: Axis,
    window: SourceWindow,
    out_len: u32,
) -> Image<'static> {
    let (start, extent, across) = match axis {
        Axis::Horizontal => (window.left, window.width, window.height as u32),
        Axis::Vertical => (window.top, window.height, window.width as u32),
    };
    let mut out = match axis {
        Axis::Horizontal => Image::new(out_len, across, PixelType::U8x3),
        Axis::Vertical => Image::new(across, out_len, PixelType::U8x3),
    };
    let chunk = (CHUNK_WEIGHT_BYTES / per_output(extent, out_len)).clamp(1, u64::from(out_len)) as u32;
    let scale = extent / f64::from(out_len);
    let limit = match axis {
        Axis::Horizontal => f64::from(source.width()),
        Axis::Vertical => f64::from(source.height()),
    };
    for first in (0..out_len).step_by(chunk as usize) {
        let last = (first + chunk).min(out_len);
        let from = start + f64::from(first) * scale;
        let to = if last == out_len { start + extent } else { start + f64::from(last) * scale };
        let len = (to - from).min(limit - from);
        let (part, dst) = match axis {
            Axis::Horizontal => (
                SourceWindow { left: from, width: len, ..window },
                CroppedImageMut::new(&mut out, first, 0, last - first, across),
            ),
            Axis::Vertical => (
                SourceWindow { top: from, height: len, ..window },
                CroppedImageMut::new(&mut out, 0, first, across, last - first),
            ),
        };
        resize(resizer, source, &mut dst.expect("the chunk lies inside the pass's output"), part);
    }
    out
}

fn resize(
    resizer: &mut Resizer,
    source: &impl IntoImageView,
    dst: &mut impl fast_image_resize::IntoImageViewMut,
    window: SourceWindow,
) {
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).crop(
        window.left,
        window.top,
        window.width,
        window.height,
    );
    resizer.resize(source, dst, &options).expect("the window lies inside the source, both are U8x3 and non-empty");
}

/// The filter's reach in source pixels on either side of an output pixel's centre: the
/// bilinear support (1) times the downscale factor, at least 1.
fn radius(extent: f64, out: u32) -> f64 {
    (extent / f64::from(out.max(1))).max(1.0)
}

/// Bytes of weights one output pixel needs (fast_image_resize keeps 2·⌈radius⌉ + 1 f64s).
fn per_output(extent: f64, out: u32) -> u64 {
    weight_slots(extent, out) * 8
}

fn weight_slots(extent: f64, out: u32) -> u64 {
    2 * radius(extent, out).ceil() as u64 + 1
}

fn weight_bytes(extent: f64, out: u32) -> u64 {
    weight_slots(extent, out) * u64::from(out) * 8
}

/// The source pixels `[first, end)` the filter may read for an output of `out` pixels
/// over `extent` pixels from `start`, on an axis of `limit` pixels: the window widened by
/// the filter's reach, plus one for rounding.
fn span(start: f64, extent: f64, out: u32, limit: u32) -> (u32, u32) {
    let reach = radius(extent, out) + 1.0;
    let first = ((start - reach).floor().max(0.0) as u32).min(limit.saturating_sub(1));
    let end = ((start + extent + reach).ceil().min(f64::from(limit)) as u32).max(first + 1);
    (first, end)
}

/// Scratch of a single call: both weight tables, and the vertical pass's output when
/// both passes run (the horizontal one reads it).
fn one_call_scratch(source: (u32, u32), window: SourceWindow, size: (u32, u32)) -> u64 {
    let needs = |extent: f64, start: f64, out: u32| f64::from(out) != extent || start != start.round();
    let both = needs(window.width, window.left, size.0) && needs(window.height, window.top, size.1);
    let temp = if both {
        let (first, end) = span(window.left, window.width, size.0, source.0);
        u64::from(end - first) * u64::from(size.1) * BYTES_PER_PIXEL
    } else {
        0
    };
    weight_bytes(window.width, size.0) + weight_bytes(window.height, size.1) + temp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x * 3 + y * 5) % 256) as u8])
        })
    }

    fn max_difference(a: &RgbImage, b: &RgbImage) -> u8 {
        assert_eq!(a.dimensions(), b.dimensions());
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
    }

    /// The two-pass way against the single call (fast_image_resize's own), on images both
    /// can handle: within one level (each rounds its 8-bit intermediate its own way).
    #[test]
    fn two_passes_agree_with_one_call() {
        let cases = [
            ((900, 40), SourceWindow::whole((900, 40)), (64, 64)),
            ((40, 900), SourceWindow::whole((40, 900)), (64, 64)),
            ((640, 427), SourceWindow { left: 133.6, top: 0.0, width: 374.3, height: 427.0 }, (224, 224)),
            ((3000, 7), SourceWindow { left: 10.25, top: 0.5, width: 2900.5, height: 6.0 }, (50, 120)),
        ];
        for (source, window, size) in cases {
            let image = pattern(source.0, source.1);
            let one = resize_with(&image, window, size, Strategy::OneCall);
            for first in [Axis::Horizontal, Axis::Vertical] {
                let two = resize_with(&image, window, size, Strategy::TwoPass { first, intermediate: (0, 0) });
                let worst = max_difference(&one, &two);
                assert!(worst <= 1, "{source:?} {window:?} → {size:?}, {first:?} first: {worst} levels apart");
            }
        }
    }

    /// A chunked pass, worked by hand: a 300,000-pixel row into 3 pixels takes 200,001
    /// weights (1.6 MB) per output pixel, so one pixel per chunk. The triangle filter of
    /// half-width 100,000 puts ¾ of its weight on its own third and ⅛ on each neighbour:
    /// the centre is ⅛·30 + ¾·120 + ⅛·210 = 120. At the edges the filter is clipped at the
    /// image and renormalised: (75,000·30 + 12,500·120) / 87,500 = 42.86 and
    /// (75,000·210 + 12,500·120) / 87,500 = 197.14.
    #[test]
    fn a_chunked_pass_averages_its_share_of_the_row() {
        let thirds = [30u8, 120, 210];
        let image = RgbImage::from_fn(300_000, 1, |x, _| image::Rgb([thirds[(x / 100_000) as usize]; 3]));
        let out = resize_with(
            &image,
            SourceWindow::whole((300_000, 1)),
            (3, 1),
            Strategy::TwoPass { first: Axis::Horizontal, intermediate: (3, 1) },
        );
        let values: Vec<u8> = out.pixels().map(|p| p[0]).collect();
        for (got, want) in values.iter().zip([43u8, 120, 197]) {
            assert!(got.abs_diff(want) <= 1, "{values:?}");
        }
    }

    #[test]
    fn photos_take_one_call() {
        for source in [(640, 427), (6000, 4000), (4000, 6000), (100, 100)] {
            let (strategy, scratch) = strategy(source, SourceWindow::whole(source), (224, 224));
            assert_eq!(strategy, Strategy::OneCall, "{source:?}");
            assert!(scratch <= 8 << 20, "{source:?}: {scratch} bytes");
        }
    }
}
