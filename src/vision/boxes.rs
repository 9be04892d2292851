//! Boxes through the preprocessing geometry. A localization head predicts a box as
//! centre x, centre y, width, height in [0, 1] of the model input; users annotate and
//! read boxes in pixels of their original image. [`box_to_input`] and
//! [`box_from_input`] convert between the two through the same [`ResizePlan`] the
//! pixels went through, undoing padding and cropping exactly.

use serde::{Deserialize, Serialize};

use super::preprocess::ResizePlan;

/// A box in pixels of an (upright) image: corners, x to the right, y down.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelBox {
    pub x_min: f32,
    pub y_min: f32,
    pub x_max: f32,
    pub y_max: f32,
}

impl PixelBox {
    pub fn width(&self) -> f32 {
        self.x_max - self.x_min
    }

    pub fn height(&self) -> f32 {
        self.y_max - self.y_min
    }

    /// Width times height; an inverted or NaN box has no area (0), so it never wins
    /// a comparison by size.
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }

    /// The box limited to `[0, width] × [0, height]`.
    pub fn clipped(&self, width: f32, height: f32) -> Self {
        Self {
            x_min: self.x_min.clamp(0.0, width),
            y_min: self.y_min.clamp(0.0, height),
            x_max: self.x_max.clamp(0.0, width),
            y_max: self.y_max.clamp(0.0, height),
        }
    }
}

/// `[cx, cy, w, h]`, each a fraction of the model input's width or height.
pub type InputBox = [f32; 4];

/// The box of the original image (`plan.original` pixels) as the model input sees it,
/// limited to the part of the input the image covers (a box reaching outside a centre
/// crop is cut at the crop's edge; padding is never part of a box).
pub fn box_to_input(bbox: PixelBox, plan: &ResizePlan, target: (u32, u32)) -> InputBox {
    let (sx, sy) = scales(plan);
    let (ox, oy) = offsets(plan);
    let (left, top) = (f64::from(plan.target_offset.0), f64::from(plan.target_offset.1));
    let (right, bottom) = (left + f64::from(plan.region.0), top + f64::from(plan.region.1));
    let x = |v: f32| (f64::from(v) * sx + ox).clamp(left, right);
    let y = |v: f32| (f64::from(v) * sy + oy).clamp(top, bottom);
    let (x_min, x_max, y_min, y_max) = (x(bbox.x_min), x(bbox.x_max), y(bbox.y_min), y(bbox.y_max));
    let (tw, th) = (f64::from(target.0), f64::from(target.1));
    [(x_min + x_max) / 2.0 / tw, (y_min + y_max) / 2.0 / th, (x_max - x_min) / tw, (y_max - y_min) / th]
        .map(|v| v as f32)
}

/// A predicted input box back in pixels of the original image, limited to the image.
pub fn box_from_input(input: InputBox, plan: &ResizePlan, target: (u32, u32)) -> PixelBox {
    let (sx, sy) = scales(plan);
    let (ox, oy) = offsets(plan);
    let [cx, cy, w, h] = input.map(|v| if v.is_finite() { f64::from(v) } else { 0.0 });
    let (tw, th) = (f64::from(target.0), f64::from(target.1));
    let x = |v: f64| ((v * tw - ox) / sx) as f32;
    let y = |v: f64| ((v * th - oy) / sy) as f32;
    PixelBox { x_min: x(cx - w / 2.0), y_min: y(cy - h / 2.0), x_max: x(cx + w / 2.0), y_max: y(cy + h / 2.0) }
        .clipped(plan.original.0 as f32, plan.original.1 as f32)
}

/// Input pixels per original pixel along each axis. In f64: the scaled size of an extreme
/// aspect ratio (256,000,000 pixels for a 1,000,000×1 crop) is past f32's exact integers.
fn scales(plan: &ResizePlan) -> (f64, f64) {
    let ratio = |resized: u64, original: u32| resized as f64 / f64::from(original.max(1));
    (ratio(plan.resized.0, plan.original.0), ratio(plan.resized.1, plan.original.1))
}

/// Where the resized image's origin lands on the input canvas.
fn offsets(plan: &ResizePlan) -> (f64, f64) {
    (
        f64::from(plan.target_offset.0) - plan.source_offset.0 as f64,
        f64::from(plan.target_offset.1) - plan.source_offset.1 as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::ResizeMode;

    const CROP: ResizeMode = ResizeMode::Crop { fraction: 0.875 };

    fn close(a: InputBox, b: InputBox) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    fn pixel(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> PixelBox {
        PixelBox { x_min, y_min, x_max, y_max }
    }

    /// Worked by hand. Pad 200×100 into 64×64: ratio 200/64 = 3.125, resized 64×32,
    /// 16 rows of padding above. (50, 25)–(150, 75) → x 16..48, y 8+16..24+16 = 24..40.
    #[test]
    fn pad_landscape_by_hand() {
        let plan = ResizePlan::new((200, 100), (64, 64), ResizeMode::Pad);
        let input = box_to_input(pixel(50.0, 25.0, 150.0, 75.0), &plan, (64, 64));
        assert!(close(input, [0.5, 0.5, 0.5, 0.25]), "{input:?}");
    }

    /// Pad 100×200 (portrait) into 64×32: ratio max(100/64, 200/32) = 6.25, resized 16×32,
    /// 24 columns of padding on the left. (0, 0)–(50, 100) → x 24..32, y 0..16.
    #[test]
    fn pad_portrait_by_hand() {
        let plan = ResizePlan::new((100, 200), (64, 32), ResizeMode::Pad);
        assert_eq!((plan.resized, plan.target_offset), ((16, 32), (24, 0)));
        let input = box_to_input(pixel(0.0, 0.0, 50.0, 100.0), &plan, (64, 32));
        assert!(close(input, [28.0 / 64.0, 8.0 / 32.0, 8.0 / 64.0, 16.0 / 32.0]), "{input:?}");
    }

    /// Crop 300×200 to 224 (fraction 0.875): shorter side 256, resized 384×256 (×1.28),
    /// window from (80, 16). (100, 50)–(200, 150) → x 128−80..256−80 = 48..176, y 64−16..192−16 = 48..176.
    #[test]
    fn crop_landscape_by_hand() {
        let plan = ResizePlan::new((300, 200), (224, 224), CROP);
        assert_eq!((plan.resized, plan.source_offset), ((384, 256), (80, 16)));
        let input = box_to_input(pixel(100.0, 50.0, 200.0, 150.0), &plan, (224, 224));
        assert!(close(input, [0.5, 0.5, 128.0 / 224.0, 128.0 / 224.0]), "{input:?}");
        // A box reaching left of the window is cut at its edge: x 0 → −80 → 0.
        let cut = box_to_input(pixel(0.0, 50.0, 100.0, 150.0), &plan, (224, 224));
        assert!(close(cut, [24.0 / 224.0, 0.5, 48.0 / 224.0, 128.0 / 224.0]), "{cut:?}");
    }

    /// Stretch 640×480 to 224×224: x × 0.35, y × 0.4667. (64, 48)–(320, 240) → 22.4..112, 22.4..112.
    #[test]
    fn stretch_by_hand() {
        let plan = ResizePlan::new((640, 480), (224, 224), ResizeMode::Stretch);
        let input = box_to_input(pixel(64.0, 48.0, 320.0, 240.0), &plan, (224, 224));
        let side = (112.0 - 22.4) / 224.0;
        assert!(close(input, [67.2 / 224.0, 67.2 / 224.0, side, side]), "{input:?}");
    }

    /// There and back, every mode, portrait and landscape: sub-pixel.
    #[test]
    fn round_trips_are_sub_pixel() {
        for original in [(640, 427), (427, 640), (1000, 333), (97, 1203)] {
            for mode in [ResizeMode::Pad, CROP, ResizeMode::Stretch] {
                let plan = ResizePlan::new(original, (224, 224), mode);
                let (w, h) = (original.0 as f32, original.1 as f32);
                // Near the centre, so that even the narrow centre crop of 97×1203 (rows
                // 0.465–0.535 of the height) keeps it whole.
                let bbox = pixel(0.4 * w, 0.48 * h, 0.55 * w, 0.52 * h);
                let back = box_from_input(box_to_input(bbox, &plan, (224, 224)), &plan, (224, 224));
                for (a, b) in [(bbox.x_min, back.x_min), (bbox.y_min, back.y_min), (bbox.x_max, back.x_max)] {
                    assert!((a - b).abs() < 0.01, "{original:?} {mode:?}: {bbox:?} → {back:?}");
                }
                assert!((bbox.y_max - back.y_max).abs() < 0.01, "{original:?} {mode:?}");
            }
        }
    }

    #[test]
    fn predictions_outside_the_image_are_clipped() {
        let plan = ResizePlan::new((200, 100), (64, 64), ResizeMode::Pad);
        // A box over the top padding maps above the image: clipped to row 0.
        let back = box_from_input([0.5, 0.1, 0.5, 0.2], &plan, (64, 64));
        assert_eq!((back.y_min, back.x_min, back.x_max), (0.0, 50.0, 150.0));
        let nan = box_from_input([f32::NAN, 0.5, 0.5, 0.5], &plan, (64, 64));
        assert!(nan.x_min.is_finite() && nan.x_max.is_finite());
    }
}
