//! Generated labelled images for training tests: four colour classes that any
//! reasonable feature extractor separates, written as a class-folder zip.

use std::io::{Cursor, Write};

use image::{ImageFormat, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const CLASSES: [(&str, [u8; 3]); 4] =
    [("blue", [30, 60, 200]), ("green", [40, 180, 60]), ("red", [210, 40, 40]), ("yellow", [230, 210, 40])];

/// An image of class `class`: its colour with noise and a few random grey rectangles,
/// at a random size around the fixture model's 32×32 input.
pub fn class_image(class: usize, seed: u64) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(seed * 31 + class as u64);
    let (w, h) = (rng.random_range(28..64), rng.random_range(28..64));
    let base = CLASSES[class].1;
    let mut image = RgbImage::from_fn(w, h, |_, _| {
        Rgb(base.map(|c| (i32::from(c) + rng.random_range(-40..=40)).clamp(0, 255) as u8))
    });
    for _ in 0..3 {
        let (x0, y0) = (rng.random_range(0..w / 2), rng.random_range(0..h / 2));
        let (rw, rh) = (rng.random_range(2..w / 3), rng.random_range(2..h / 3));
        let grey = rng.random_range(60..200);
        for y in y0..(y0 + rh).min(h) {
            for x in x0..(x0 + rw).min(w) {
                image.put_pixel(x, y, Rgb([grey; 3]));
            }
        }
    }
    image
}

pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// `per_class` images of every class under `top/<class>/`, plus a text file and one
/// duplicated image, as a zip.
pub fn class_folder_zip(top: &str, per_class: usize, seed: u64) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (class, (name, _)) in CLASSES.iter().enumerate() {
        for i in 0..per_class {
            let image = class_image(class, seed * 1000 + i as u64);
            let (format, ext) = if i % 2 == 0 { (ImageFormat::Png, "png") } else { (ImageFormat::Jpeg, "jpg") };
            zip.start_file(format!("{top}/{name}/img_{i:03}.{ext}"), options).unwrap();
            zip.write_all(&encode(&image, format)).unwrap();
        }
    }
    zip.start_file(format!("{top}/LICENSE.txt"), options).unwrap();
    zip.write_all(b"free for tests").unwrap();
    zip.start_file(format!("{top}/red/copy_of_img_000.png"), options).unwrap();
    zip.write_all(&encode(&class_image(2, seed * 1000), ImageFormat::Png)).unwrap();
    zip.finish().unwrap().into_inner()
}

/// A Pascal VOC (LabelImg) annotation of `file` with one `<object>` per (label, box).
pub fn voc_xml(file: &str, (width, height): (u32, u32), objects: &[(&str, [u32; 4])]) -> Vec<u8> {
    let objects: String = objects
        .iter()
        .map(|(name, [x_min, y_min, x_max, y_max])| {
            format!(
                "<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x_min}</xmin>\
                 <ymin>{y_min}</ymin><xmax>{x_max}</xmax><ymax>{y_max}</ymax></bndbox></object>"
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?>\n<annotation><folder>images</folder><filename>{file}</filename>\
         <size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )
    .into_bytes()
}
