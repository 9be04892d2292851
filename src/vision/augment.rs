//! Augmentation on decoded pixels: horizontal flip, random crop, brightness and
//! contrast. A variant is fixed by its seed, so the features of variant k of an image
//! are computed once and cached like any other features.

use image::RgbImage;
use image::imageops;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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

    /// The variant `seed` of `image`.
    pub fn apply(&self, image: &RgbImage, seed: u64) -> RgbImage {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = if self.crop > 0.0 {
            let (w, h) = image.dimensions();
            let keep = 1.0 - rng.random_range(0.0..=self.crop);
            let (cw, ch) = (((w as f32 * keep) as u32).max(1), ((h as f32 * keep) as u32).max(1));
            let (x, y) = (rng.random_range(0..=w - cw), rng.random_range(0..=h - ch));
            imageops::crop_imm(image, x, y, cw, ch).to_image()
        } else {
            image.clone()
        };
        if self.flip && rng.random_bool(0.5) {
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
}
