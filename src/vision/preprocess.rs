//! Preprocessing: resize (pad / crop / stretch), colour order, normalisation and
//! layout, written in one pass into the caller's tensor slice.

use image::RgbImage;

use super::resample::{self, SourceWindow};

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

impl Layout {
    /// The name manifests use ("NCHW", "NHWC").
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// How the image is brought to the model's input size.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum ResizeMode {
    /// Keep the aspect ratio, fit inside, pad with black — `tf.image.resize_with_pad`'s geometry.
    Pad,
    /// Resize the shorter side to `size / fraction`, then take the centre — torchvision's
    /// `Resize(256)` + `CenterCrop(224)` for fraction 0.875.
    Crop { fraction: f64 },
    /// Resize to the input size, ignoring the aspect ratio.
    Stretch,
}

/// `value = (pixel · scale − mean[c]) / std[c]`, pixel in 0..255, channels in the model's colour order.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Normalization {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// Keras `preprocess_input(mode="caffe")` (ResNet50): BGR, minus the ImageNet BGR means.
    pub const CAFFE: Self = Self { scale: 1.0, mean: [103.939, 116.779, 123.68], std: [1.0; 3] };
    /// Keras `preprocess_input(mode="tf")` (Xception): x / 127.5 − 1.
    pub const TF: Self = Self { scale: 1.0 / 127.5, mean: [1.0; 3], std: [1.0; 3] };
    /// torchvision: (x / 255 − mean) / std with the ImageNet RGB statistics.
    pub const TORCH: Self = Self { scale: 1.0 / 255.0, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
}

/// How a trained head wants its images brought to the model's size: as the base model does
/// (its manifest's resize), or keeping every pixel whatever the base does. A localizer needs
/// the whole image: a centre crop cuts off a sixth of a 4:3 photo's width at each side, and
/// the objects there with it.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Geometry {
    /// The base's own resize, as its manifest says.
    #[default]
    Model,
    /// The whole image, fitted inside with its aspect kept, padded with black.
    Pad,
    /// The whole image, stretched to the input size.
    Stretch,
}

impl Geometry {
    /// `base` with this geometry's resize.
    pub fn apply(self, base: &Preprocessing) -> Preprocessing {
        let resize = match self {
            Geometry::Model => base.resize,
            Geometry::Pad => ResizeMode::Pad,
            Geometry::Stretch => ResizeMode::Stretch,
        };
        Preprocessing { resize, ..base.clone() }
    }

    /// The name a job and a stored model use ("model", "pad", "stretch").
    pub fn as_str(self) -> &'static str {
        match self {
            Geometry::Model => "model",
            Geometry::Pad => "pad",
            Geometry::Stretch => "stretch",
        }
    }

    /// Reads [`Self::as_str`]'s names.
    pub fn parse(name: &str) -> Option<Self> {
        [Geometry::Model, Geometry::Pad, Geometry::Stretch].into_iter().find(|g| g.as_str() == name)
    }
}

/// Everything needed to turn an RGB image into one model input.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Preprocessing {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub color: ColorOrder,
    pub resize: ResizeMode,
    pub normalization: Normalization,
}

/// The geometry of one resize: the whole image scaled to `resized`, of which the
/// rectangle at `source_offset` of size `region` is placed at `target_offset` of the
/// input canvas. Kept so that coordinates can be mapped back to the original image.
///
/// `resized` and `source_offset` only describe the scale and the position: no buffer of
/// that size is ever made (for a 1,000,000×1 image cropped to 224×224, `resized` is
/// 256,000,000×256). The pixels are resampled from [`ResizePlan::source_window`], the
/// kept rectangle in the original's own pixels, straight to `region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ResizePlan {
    pub original: (u32, u32),
    pub resized: (u64, u64),
    pub source_offset: (u64, u64),
    pub region: (u32, u32),
    pub target_offset: (u32, u32),
}

impl ResizePlan {
    pub fn new(original: (u32, u32), target: (u32, u32), mode: ResizeMode) -> Self {
        let (w, h) = (f64::from(original.0), f64::from(original.1));
        let (tw, th) = target;
        let wide = |size: (u32, u32)| (u64::from(size.0), u64::from(size.1));
        match mode {
            ResizeMode::Stretch => {
                Self { original, resized: wide(target), source_offset: (0, 0), region: target, target_offset: (0, 0) }
            }
            ResizeMode::Pad => {
                // As tf.image.resize_with_pad: the larger ratio decides, sizes and padding floor.
                let ratio = (w / f64::from(tw)).max(h / f64::from(th));
                let (rw_f, rh_f) = (w / ratio, h / ratio);
                let region = ((rw_f.floor() as u32).clamp(1, tw), (rh_f.floor() as u32).clamp(1, th));
                let pad_left = ((f64::from(tw) - rw_f) / 2.0).floor().max(0.0) as u32;
                let pad_top = ((f64::from(th) - rh_f) / 2.0).floor().max(0.0) as u32;
                let target_offset = (pad_left.min(tw - region.0), pad_top.min(th - region.1));
                Self { original, resized: wide(region), source_offset: (0, 0), region, target_offset }
            }
            ResizeMode::Crop { fraction } => {
                // Shorter side to round(size / fraction), the other side truncated as torchvision
                // does; in u64, as the long side of an extreme aspect ratio passes u32.
                let crop_side_w = (f64::from(tw) / fraction).round();
                let crop_side_h = (f64::from(th) / fraction).round();
                let resized = if w <= h {
                    let rw = crop_side_w.max(f64::from(tw));
                    (rw as u64, ((rw * h / w) as u64).max(u64::from(th)))
                } else {
                    let rh = crop_side_h.max(f64::from(th));
                    (((rh * w / h) as u64).max(u64::from(tw)), rh as u64)
                };
                // torchvision's CenterCrop: int(round((size - crop) / 2)), Python rounding (ties to even).
                let left = ((resized.0 - u64::from(tw)) as f64 / 2.0).round_ties_even() as u64;
                let top = ((resized.1 - u64::from(th)) as f64 / 2.0).round_ties_even() as u64;
                Self { original, resized, source_offset: (left, top), region: target, target_offset: (0, 0) }
            }
        }
    }

    /// The rectangle of the original image that becomes `region`, in original pixels
    /// (fractional): the kept part of the scaled image, scaled back.
    pub fn source_window(&self) -> SourceWindow {
        let along = |offset: u64, kept: u32, resized: u64, full: u32| {
            let full = f64::from(full);
            if offset == 0 && u64::from(kept) == resized {
                return (0.0, full);
            }
            let per_pixel = full / resized.max(1) as f64;
            let start = (offset as f64 * per_pixel).min(full);
            (start, (f64::from(kept) * per_pixel).min(full - start))
        };
        let (left, width) = along(self.source_offset.0, self.region.0, self.resized.0, self.original.0);
        let (top, height) = along(self.source_offset.1, self.region.1, self.resized.1, self.original.1);
        SourceWindow { left, top, width, height }
    }
}

/// Number of f32 values one image occupies in the model input.
pub fn tensor_len(spec: &Preprocessing) -> usize {
    spec.width as usize * spec.height as usize * 3
}

/// Resizes `image` per `spec` and writes the normalised tensor of one image into `out`
/// (length `width·height·3`, in the spec's layout). Returns the geometry used.
///
/// Only the part of the image that reaches the input is resampled, straight to its size
/// on the input, so no intermediate image is larger than the input (the resizer's own
/// scratch is bounded too, see `resample.rs`).
pub fn preprocess_into(image: &RgbImage, spec: &Preprocessing, out: &mut [f32]) -> ResizePlan {
    assert_eq!(out.len(), tensor_len(spec), "output slice must hold exactly one image");
    let plan = ResizePlan::new(image.dimensions(), (spec.width, spec.height), spec.resize);
    let region = resample::resize_window(image, plan.source_window(), plan.region);
    let (tw, th) = (spec.width as usize, spec.height as usize);
    let plane = tw * th;
    let norm = &spec.normalization;
    // Per output channel: pixel · a + b, with the channel read from RGB in the spec's order.
    let source_channel: [usize; 3] = match spec.color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    };
    let a: [f32; 3] = std::array::from_fn(|c| norm.scale / norm.std[c]);
    let b: [f32; 3] = std::array::from_fn(|c| -norm.mean[c] / norm.std[c]);

    let pixels = region.as_raw();
    let (dx, dy) = (plan.target_offset.0 as usize, plan.target_offset.1 as usize);
    let (region_w, region_h) = (plan.region.0 as usize, plan.region.1 as usize);
    for y in 0..th {
        for x in 0..tw {
            let inside = (dx..dx + region_w).contains(&x) && (dy..dy + region_h).contains(&y);
            let rgb = if inside {
                let src = ((y - dy) * region_w + (x - dx)) * 3;
                [pixels[src], pixels[src + 1], pixels[src + 2]]
            } else {
                [0, 0, 0]
            };
            for c in 0..3 {
                let value = f32::from(rgb[source_channel[c]]) * a[c] + b[c];
                let index = match spec.layout {
                    Layout::Nchw => c * plane + y * tw + x,
                    Layout::Nhwc => (y * tw + x) * 3 + c,
                };
                out[index] = value;
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_plan_follows_tf_resize_with_pad() {
        // 640×427 into 224×224: ratio = 640/224; height 427·224/640 = 149.45 → 149; pad (224 − 149.45)/2 = 37.27 → 37.
        let plan = ResizePlan::new((640, 427), (224, 224), ResizeMode::Pad);
        assert_eq!(plan.resized, (224, 149));
        assert_eq!(plan.target_offset, (0, 37));
    }

    #[test]
    fn crop_plan_follows_torchvision() {
        // Shorter side 427 → 256, longer 640·256/427 = 383.7 → 383; left (383 − 224)/2 = 79.5 → 80 (ties to even), top (256 − 224)/2 = 16.
        let plan = ResizePlan::new((640, 427), (224, 224), ResizeMode::Crop { fraction: 0.875 });
        assert_eq!(plan.resized, (383, 256));
        assert_eq!(plan.source_offset, (80, 16));
    }

    #[test]
    fn caffe_normalisation_swaps_to_bgr_and_subtracts_means() {
        let image = RgbImage::from_pixel(2, 2, image::Rgb([10, 20, 30]));
        let spec = Preprocessing {
            width: 2,
            height: 2,
            layout: Layout::Nhwc,
            color: ColorOrder::Bgr,
            resize: ResizeMode::Stretch,
            normalization: Normalization::CAFFE,
        };
        let mut out = vec![0.0; 12];
        preprocess_into(&image, &spec, &mut out);
        let expected = [30.0 - 103.939, 20.0 - 116.779, 10.0 - 123.68];
        for (got, want) in out[..3].iter().zip(expected) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }

    const CROP: ResizeMode = ResizeMode::Crop { fraction: 0.875 };

    fn spec(resize: ResizeMode) -> Preprocessing {
        Preprocessing {
            width: 224,
            height: 224,
            layout: Layout::Nhwc,
            color: ColorOrder::Rgb,
            resize,
            normalization: Normalization { scale: 1.0, mean: [0.0; 3], std: [1.0; 3] },
        }
    }

    /// The crop taken in source coordinates gives the pixels of the former way (the whole
    /// image resized to `resized` by one fast_image_resize call, then the window cut out).
    #[test]
    fn the_source_window_crop_matches_resizing_the_whole_image() {
        use fast_image_resize::images::{Image, ImageRef};
        use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
        for (w, h) in [(640, 427), (427, 640), (300, 200), (97, 1203), (257, 256), (100, 80)] {
            let image = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 5 % 256) as u8, (y * 3 % 256) as u8, ((x ^ y) % 256) as u8])
            });
            let plan = ResizePlan::new((w, h), (224, 224), CROP);
            let (rw, rh) = (plan.resized.0 as u32, plan.resized.1 as u32);
            let src = ImageRef::new(w, h, image.as_raw(), PixelType::U8x3).unwrap();
            let mut whole = Image::new(rw, rh, PixelType::U8x3);
            let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
            Resizer::new().resize(&src, &mut whole, &options).unwrap();
            let whole = RgbImage::from_raw(rw, rh, whole.into_vec()).unwrap();
            let (sx, sy) = (plan.source_offset.0 as u32, plan.source_offset.1 as u32);
            let mut out = vec![0.0; 224 * 224 * 3];
            preprocess_into(&image, &spec(CROP), &mut out);
            let mut worst = 0.0f32;
            for (i, got) in out.iter().enumerate() {
                let (x, y, c) = ((i / 3) % 224, i / 3 / 224, i % 3);
                let want = f32::from(whole.get_pixel(sx + x as u32, sy + y as u32)[c]);
                worst = worst.max((got - want).abs());
            }
            assert!(worst <= 1.0, "{w}×{h}: {worst} levels from resize-then-crop");
        }
    }

    /// Extreme and tiny aspect ratios in every mode: the output region never exceeds the
    /// input, pad keeps at least one row or column, the resizer's scratch stays under
    /// 8 MiB plus the image itself, and the pixels are the image's (a uniform image gives
    /// its colour wherever the image lands, black padding elsewhere).
    #[test]
    fn extreme_aspect_ratios_cost_no_more_than_the_input() {
        let sizes = [(1_000_000, 1), (1, 1_000_000), (40_000, 1), (1, 40_000), (1, 3), (3, 1), (1, 1), (2, 1), (1, 2)];
        for (w, h) in sizes {
            let image = RgbImage::from_pixel(w, h, image::Rgb([200, 100, 50]));
            for mode in [ResizeMode::Pad, CROP, ResizeMode::Stretch] {
                let plan = ResizePlan::new((w, h), (224, 224), mode);
                let case = format!("{w}×{h} {mode:?}");
                assert!(plan.region.0 >= 1 && plan.region.1 >= 1, "{case}: {plan:?}");
                assert!(plan.target_offset.0 + plan.region.0 <= 224, "{case}: {plan:?}");
                assert!(plan.target_offset.1 + plan.region.1 <= 224, "{case}: {plan:?}");
                let window = plan.source_window();
                assert!(window.left >= 0.0 && window.left + window.width <= f64::from(w), "{case}: {window:?}");
                assert!(window.top >= 0.0 && window.top + window.height <= f64::from(h), "{case}: {window:?}");
                let (_, scratch) = resample::strategy((w, h), window, plan.region);
                let image_bytes = u64::from(w) * u64::from(h) * 3;
                assert!(scratch <= (8 << 20) + image_bytes, "{case}: {scratch} bytes of scratch");

                let started = std::time::Instant::now();
                let mut out = vec![0.0; 224 * 224 * 3];
                preprocess_into(&image, &spec(mode), &mut out);
                let elapsed = started.elapsed();
                assert!(elapsed < std::time::Duration::from_secs(5), "{case}: {elapsed:?}");
                for y in 0..224u32 {
                    for x in 0..224u32 {
                        let (dx, dy) = plan.target_offset;
                        let inside = (dx..dx + plan.region.0).contains(&x) && (dy..dy + plan.region.1).contains(&y);
                        let want = if inside { [200.0, 100.0, 50.0] } else { [0.0; 3] };
                        let at = ((y * 224 + x) * 3) as usize;
                        assert_eq!(&out[at..at + 3], &want, "{case} at ({x}, {y})");
                    }
                }
            }
        }
    }

    /// Worked by hand. A 1,000,000×1 crop: the short side 1 → 256 (×256), so the scaled
    /// image is 256,000,000×256 and the centre window starts at (255,999,776 / 2, 16) =
    /// (127,999,888, 16): in source pixels x 499,999.5625 and y 0.0625, 0.875 pixels square.
    /// Pad: the height 224 / 1,000,000 floors to 0 and is kept at 1 row, (224 − 0.000224) / 2
    /// floors to 111 rows of padding above; the width 1,000,000 / (1,000,000 / 224) is
    /// 223.99999999999997 in f64 and floors to 223.
    #[test]
    fn a_one_pixel_high_image_by_hand() {
        let plan = ResizePlan::new((1_000_000, 1), (224, 224), CROP);
        assert_eq!((plan.resized, plan.source_offset), ((256_000_000, 256), (127_999_888, 16)));
        let window = plan.source_window();
        let expected = [499_999.562_5, 0.0625, 0.875, 0.875];
        for (got, want) in [window.left, window.top, window.width, window.height].into_iter().zip(expected) {
            assert!((got - want).abs() < 1e-9, "{window:?}");
        }
        let pad = ResizePlan::new((1_000_000, 1), (224, 224), ResizeMode::Pad);
        assert_eq!((pad.region, pad.target_offset), ((223, 1), (0, 111)));
        let tall = ResizePlan::new((1, 1_000_000), (224, 224), ResizeMode::Pad);
        assert_eq!((tall.region, tall.target_offset), ((1, 223), (111, 0)));
    }

    /// The long side of a 40,000,000×1 crop is 10,240,000,000 pixels, past u32: the window
    /// is still centred (x 19,999,999.5625 of 40,000,000).
    #[test]
    fn a_scaled_side_past_u32_is_still_centred() {
        let plan = ResizePlan::new((40_000_000, 1), (224, 224), CROP);
        assert_eq!(plan.resized, (10_240_000_000, 256));
        let window = plan.source_window();
        assert!((window.left - 19_999_999.562_5).abs() < 1e-6, "{window:?}");
    }
}
