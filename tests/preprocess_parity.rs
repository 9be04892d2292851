//! Preprocessing and decoding against independent references built with Pillow and
//! numpy by tests/fixtures/make_fixtures.py.

mod common;

use common::*;
use graft::vision::{
    ColorOrder, DecodeLimits, Layout, Normalization, Preprocessing, ResizeMode, decode_image, preprocess_into,
};

fn normalization(name: &str) -> (Normalization, ColorOrder) {
    match name {
        "caffe" => (Normalization::CAFFE, ColorOrder::Bgr),
        "tf" => (Normalization::TF, ColorOrder::Rgb),
        "torch" => (Normalization::TORCH, ColorOrder::Rgb),
        "custom" => (Normalization { scale: 1.0, mean: [127.0; 3], std: [128.0; 3] }, ColorOrder::Rgb),
        other => panic!("unknown normalisation {other}"),
    }
}

fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Every resize mode × normalisation × layout on a real photo (china.jpg, 640×427, as
/// Pillow decoded it) against Pillow's BILINEAR resize + numpy normalisation.
///
/// Tolerance, in 0..255 pixel units (the tensor difference × std / scale): graft's
/// resampler and Pillow's use the same antialiased bilinear filter but round their
/// fixed-point intermediate sums differently, so a value may land one level apart and
/// never more (measured: max 1 level; 8–15 % of values one level apart, so the mean is
/// 0.08–0.15 level). Allowed: max 1 level (+0.01 for float32 rounding), mean 0.2 level.
#[test]
fn tensors_match_pillow_and_numpy_for_every_mode() {
    let dir = fixtures().join("preprocess");
    let image = decode_image(&std::fs::read(dir.join("china_decoded.png")).unwrap(), &DecodeLimits::default()).unwrap();
    let cases = json(&dir.join("cases.json"));
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 12, "3 resize modes × 4 normalisations");
    for case in cases {
        let (normalization, color) = normalization(case["normalize"].as_str().unwrap());
        let spec = Preprocessing {
            width: 224,
            height: 224,
            layout: if case["layout"] == "NCHW" { Layout::Nchw } else { Layout::Nhwc },
            color,
            resize: match case["resize"].as_str().unwrap() {
                "pad" => ResizeMode::Pad,
                "crop" => ResizeMode::Crop { fraction: 0.875 },
                _ => ResizeMode::Stretch,
            },
            normalization,
        };
        let expected = read_f32(&dir.join(case["file"].as_str().unwrap()));
        let mut got = vec![0.0f32; expected.len()];
        preprocess_into(&image, &spec, &mut got);
        // Back to pixel levels: |Δ| · std[c] / scale, with c the element's channel in the layout.
        let plane = 224 * 224;
        let channel = |i: usize| if spec.layout == Layout::Nchw { i / plane } else { i % 3 };
        let diffs: Vec<f32> = got
            .iter()
            .zip(&expected)
            .enumerate()
            .map(|(i, (g, e))| (g - e).abs() * normalization.std[channel(i)] / normalization.scale)
            .collect();
        let max = diffs.iter().copied().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        println!("{}: max {max:.3} levels, mean {mean:.4}", case["file"]);
        assert!(max <= 1.01, "{}: max difference {max} levels", case["file"]);
        assert!(mean <= 0.2, "{}: mean difference {mean} levels", case["file"]);
    }
}

/// EXIF orientation, grayscale, palette, 16-bit and alpha images decode to the upright
/// 8-bit RGB that the reference computed (16-bit: round(v / 257); alpha: over white).
#[test]
fn special_images_decode_to_the_reference_rgb() {
    let names = json(&fixtures().join("images/special.json"));
    for name in names.as_array().unwrap() {
        let name = name.as_str().unwrap();
        let got = decode_image(&image(name), &DecodeLimits::default()).unwrap();
        let stem = name.rsplit_once('.').unwrap().0;
        let want = decode_image(&image(&format!("{stem}.expected.png")), &DecodeLimits::default()).unwrap();
        assert_eq!(got.dimensions(), want.dimensions(), "{name}: orientation or size");
        // The EXIF case is a JPEG (lossy, two decoders): a few levels; the PNGs are exact.
        let allowed = if name.ends_with(".jpg") { 6 } else { 0 };
        let max = got.as_raw().iter().zip(want.as_raw()).map(|(g, w)| g.abs_diff(*w)).max().unwrap();
        assert!(max <= allowed, "{name}: max difference {max} levels");
    }
}

/// graft's JPEG decoder against Pillow's (libjpeg-turbo) on a real photo: both follow
/// the JPEG standard but their IDCT and chroma upsampling round differently.
#[test]
fn real_photo_decodes_like_pillow() {
    let got = decode_image(&image("china.jpg"), &DecodeLimits::default()).unwrap();
    let want = decode_image(
        &std::fs::read(fixtures().join("preprocess/china_decoded.png")).unwrap(),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(got.dimensions(), (640, 427));
    assert_eq!(got.dimensions(), want.dimensions());
    let diffs: Vec<u8> = got.as_raw().iter().zip(want.as_raw()).map(|(g, w)| g.abs_diff(*w)).collect();
    let mean = diffs.iter().map(|d| f64::from(*d)).sum::<f64>() / diffs.len() as f64;
    let max = *diffs.iter().max().unwrap();
    println!("china.jpg decode vs Pillow: max {max} levels, mean {mean:.3}");
    assert!(mean <= 1.0, "mean difference {mean} levels");
}
