//! Augmentation on decoded pixels: horizontal flip, random crop, brightness and
//! contrast. A variant is fixed by its seed, so the features of variant k of an image
//! are computed once and cached like any other features.

use image::RgbImage;
use image::imageops;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::boxes::PixelBox;

#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augmentation {
    /// Mirror left–right with probability ½.
    pub flip: bool,
    /// Keep a random window of (1 − crop) to 1 of each side; 0 disables.
    pub crop: f32,
    /// Add a uniform shift in [−brightness, brightness] × 255 to every channel.
    pub brightness: f32,
    /// Scale around the mean by a factor in [1 − contrast, 1 + contrast].
    pub contrast: f32,
    /// Augmented variants per training image (each computed once and cached).
    pub variants: usize,
}

impl Default for Augmentation {
    fn default() -> Self {
        Self { flip: true, crop: 0.1, brightness: 0.1, contrast: 0.1, variants: 3 }
    }
}

impl Augmentation {
    pub fn validate(&self) -> Result<(), String> {
        let in_unit = |v: f32| v.is_finite() && (0.0..1.0).contains(&v);
        if !in_unit(self.crop) || !in_unit(self.brightness) || !in_unit(self.contrast) {
            return Err("augment.crop, brightness and contrast must be in [0, 1)".into());
        }
        if !(1..=16).contains(&self.variants) {
            return Err("augment.variants must be between 1 and 16".into());
        }
        Ok(())
    }

    /// Where variant `seed` crops and whether it mirrors: fixed by the seed alone, not the
    /// image, so a box can follow the pixels without decoding them.
    pub fn geometry(&self, seed: u64) -> AugmentGeometry {
        self.draw_geometry(&mut StdRng::seed_from_u64(seed))
    }

    /// The first draws of a variant's generator; the colour draws follow in `apply`.
    fn draw_geometry(&self, rng: &mut StdRng) -> AugmentGeometry {
        let (keep, fx, fy) = if self.crop > 0.0 {
            (1.0 - rng.random_range(0.0..=self.crop), rng.random_range(0.0..=1.0), rng.random_range(0.0..=1.0))
        } else {
            (1.0, 0.0, 0.0)
        };
        let flip = self.flip && rng.random_bool(0.5);
        AugmentGeometry { keep, fx, fy, flip }
    }

    /// The variant `seed` of `image`.
    pub fn apply(&self, image: &RgbImage, seed: u64) -> RgbImage {
        let mut rng = StdRng::seed_from_u64(seed);
        let geometry = self.draw_geometry(&mut rng);
        let (w, h) = image.dimensions();
        let (x, y, cw, ch) = geometry.window_pixels(w, h);
        let mut out =
            if (cw, ch) == (w, h) { image.clone() } else { imageops::crop_imm(image, x, y, cw, ch).to_image() };
        if geometry.flip {
            imageops::flip_horizontal_in_place(&mut out);
        }
        let shift =
            if self.brightness > 0.0 { rng.random_range(-self.brightness..=self.brightness) * 255.0 } else { 0.0 };
        let factor =
            if self.contrast > 0.0 { rng.random_range(1.0 - self.contrast..=1.0 + self.contrast) } else { 1.0 };
        if shift != 0.0 || factor != 1.0 {
            let mean =
                out.as_raw().iter().map(|&v| f64::from(v)).sum::<f64>() as f32 / out.as_raw().len().max(1) as f32;
            for v in out.iter_mut() {
                *v = ((f32::from(*v) - mean) * factor + mean + shift).round().clamp(0.0, 255.0) as u8;
            }
        }
        out
    }
}

/// The geometric part of one augmented variant: a window keeping `keep` of each side,
/// placed at fractions `fx`, `fy` of the free room, then an optional left–right mirror.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentGeometry {
    keep: f32,
    fx: f32,
    fy: f32,
    pub flip: bool,
}

impl AugmentGeometry {
    /// The window `(x, y, width, height)` in pixels of a `w`×`h` image.
    pub fn window_pixels(&self, w: u32, h: u32) -> (u32, u32, u32, u32) {
        let (cw, ch) = (((w as f32 * self.keep) as u32).clamp(1, w), ((h as f32 * self.keep) as u32).clamp(1, h));
        let x = (((w - cw) as f32 * self.fx).round() as u32).min(w - cw);
        let y = (((h - ch) as f32 * self.fy).round() as u32).min(h - ch);
        (x, y, cw, ch)
    }

    /// A box of a `w`×`h` image in pixels of the variant (window size), cut at the
    /// window's edges and mirrored with the pixels. The window is taken in `size`'s own
    /// pixels, so a decoder's reduced size and the original give the same box up to rounding.
    pub fn map_box(&self, bbox: PixelBox, (w, h): (u32, u32)) -> (PixelBox, (u32, u32)) {
        let (x, y, cw, ch) = self.window_pixels(w, h);
        let moved = PixelBox {
            x_min: bbox.x_min - x as f32,
            y_min: bbox.y_min - y as f32,
            x_max: bbox.x_max - x as f32,
            y_max: bbox.y_max - y as f32,
        }
        .clipped(cw as f32, ch as f32);
        let mapped = if self.flip {
            PixelBox { x_min: cw as f32 - moved.x_max, x_max: cw as f32 - moved.x_min, ..moved }
        } else {
            moved
        };
        (mapped, (cw, ch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_deterministic_and_differ() {
        let image = RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 128]));
        let aug = Augmentation::default();
        assert_eq!(aug.apply(&image, 5), aug.apply(&image, 5));
        assert_ne!(aug.apply(&image, 5), aug.apply(&image, 6));
        let none = Augmentation { flip: false, crop: 0.0, brightness: 0.0, contrast: 0.0, variants: 1 };
        assert_eq!(none.apply(&image, 1), image);
    }

    #[test]
    fn a_flip_mirrors_the_columns() {
        let image = RgbImage::from_fn(4, 1, |x, _| image::Rgb([x as u8 * 10, 0, 0]));
        let flip = Augmentation { flip: true, crop: 0.0, brightness: 0.0, contrast: 0.0, variants: 1 };
        let flipped = (0..64).map(|seed| flip.apply(&image, seed)).find(|out| *out != image).expect("some seed flips");
        assert_eq!(flipped.get_pixel(0, 0).0[0], 30);
        assert_eq!(flipped.get_pixel(3, 0).0[0], 0);
    }

    /// A white square on black, augmented: the mapped box is where the white pixels are.
    #[test]
    fn a_box_follows_the_pixels() {
        let (w, h) = (120u32, 80u32);
        let square = PixelBox { x_min: 20.0, y_min: 30.0, x_max: 50.0, y_max: 60.0 };
        let image = RgbImage::from_fn(w, h, |x, y| {
            let inside = (20..50).contains(&x) && (30..60).contains(&y);
            image::Rgb(if inside { [255; 3] } else { [0; 3] })
        });
        let aug = Augmentation { flip: true, crop: 0.3, brightness: 0.0, contrast: 0.0, variants: 1 };
        let mut flipped = 0;
        for seed in 0..40 {
            let out = aug.apply(&image, seed);
            let geometry = aug.geometry(seed);
            flipped += usize::from(geometry.flip);
            let (mapped, size) = geometry.map_box(square, (w, h));
            assert_eq!(size, out.dimensions(), "seed {seed}");
            // The white pixels' bounding box, measured on the output.
            let white: Vec<(u32, u32)> =
                out.enumerate_pixels().filter(|(_, _, p)| p[0] > 127).map(|(x, y, _)| (x, y)).collect();
            if white.is_empty() {
                assert!(mapped.area() == 0.0, "seed {seed}: the square was cropped away but the box is {mapped:?}");
                continue;
            }
            let x_min = white.iter().map(|p| p.0).min().unwrap() as f32;
            let x_max = white.iter().map(|p| p.0).max().unwrap() as f32 + 1.0;
            let y_min = white.iter().map(|p| p.1).min().unwrap() as f32;
            let y_max = white.iter().map(|p| p.1).max().unwrap() as f32 + 1.0;
            let measured = PixelBox { x_min, y_min, x_max, y_max };
            assert_eq!(mapped, measured, "seed {seed}, flip {}", geometry.flip);
        }
        assert!((5..35).contains(&flipped), "about half the seeds mirror: {flipped}");
    }
}
