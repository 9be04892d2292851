//! What each fuzz target asserts about one input. The fuzz targets call these, and so
//! does `tests/fuzz_regressions.rs` on the committed seeds and on every input a fuzzer
//! once crashed on (`fuzz/regressions/<target>/`), so a fixed crash stays fixed.
#![allow(dead_code)]

use std::io::Write;

use graft::data::annotations::{AnnotationFormat, parse};
use graft::data::archive::{ArchiveLimits, read_archive};
use graft::data::{IngestOptions, Ingestor};
use graft::jobs::JobSpec;
use graft::vision::{
    ColorOrder, DecodeLimits, Layout, Normalization, Preprocessing, ResizeMode, decode_for, preprocess_into,
};

/// Image bytes → decode (header checks, EXIF, DCT-scaled JPEG) → preprocess, for every
/// resize mode and layout. The first two bytes pick the mode and the input size, the rest
/// is the encoded image. A decoded image stays within the pixel budget and every value
/// written is finite.
pub fn decode_preprocess(data: &[u8]) {
    const MAX_PIXELS: u64 = 4_000_000;
    let [mode, size, image @ ..] = data else { return };
    let resize = match mode % 3 {
        0 => ResizeMode::Pad,
        1 => ResizeMode::Crop { fraction: 0.875 },
        _ => ResizeMode::Stretch,
    };
    let spec = Preprocessing {
        width: 1 + u32::from(*size % 64),
        height: 1 + u32::from(size.rotate_left(3) % 64),
        layout: if mode & 0x10 == 0 { Layout::Nchw } else { Layout::Nhwc },
        color: if mode & 0x20 == 0 { ColorOrder::Rgb } else { ColorOrder::Bgr },
        resize,
        normalization: Normalization::TORCH,
    };
    let limits = DecodeLimits { max_pixels: MAX_PIXELS, ..DecodeLimits::default() };
    if let Ok(decoded) = decode_for(image, &limits, &spec) {
        let (w, h) = decoded.image.dimensions();
        assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS, "decoded {w}×{h} past the pixel budget");
        let mut out = vec![f32::NAN; spec.width as usize * spec.height as usize * 3];
        preprocess_into(&decoded.image, &spec, &mut out);
        assert!(out.iter().all(|v| v.is_finite()), "every input value is written, and finite");
    }
}

/// Archive bytes (zip, tar, tar.gz) → the safe archive reader → ingestion (decode, hash,
/// class folders, annotations, splits), as an upload goes. Nothing past the limits is
/// handed over.
pub fn archive_ingest(data: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(data).expect("the temporary file takes the bytes");
    let limits = ArchiveLimits { max_entries: 256, max_entry_bytes: 1 << 20, max_total_bytes: 8 << 20 };
    let options = IngestOptions {
        decode: DecodeLimits { max_pixels: 1_000_000, ..DecodeLimits::default() },
        min_images_per_class: 1,
        ..IngestOptions::default()
    };
    let mut stored = 0u64;
    let mut store = |_: &str, bytes: &[u8]| -> Result<(), String> {
        assert!(bytes.len() as u64 <= limits.max_entry_bytes, "an entry over the per-file limit was read");
        stored += bytes.len() as u64;
        Ok(())
    };
    let mut ingestor = Ingestor::new(options, &mut store);
    if read_archive(file.path(), &limits, &mut |entry| ingestor.add(entry)).is_ok() {
        let _ = ingestor.finish();
    }
    assert!(stored <= limits.max_total_bytes, "more than the archive limit was stored");
}

/// One annotation parser on arbitrary bytes: bad records become problems, an unreadable
/// file an error, and every box returned is finite.
pub fn annotations(format: AnnotationFormat, data: &[u8]) {
    if let Ok(parsed) = parse(format, "annotations", data) {
        for image in &parsed.images {
            for labeled in &image.boxes {
                let b = labeled.bbox;
                assert!([b.x_min, b.y_min, b.x_max, b.y_max].iter().all(|v| v.is_finite()), "{b:?}");
            }
        }
    }
}

/// A job submission's JSON → `JobSpec::parse`. The worker parses the stored spec again,
/// so a spec that parses must serialise to JSON that parses to the same spec.
pub fn job_spec(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Ok(spec) = JobSpec::parse(&body) {
        let stored = serde_json::to_value(&spec).expect("a parsed spec serialises");
        let reparsed = JobSpec::parse(&stored).expect("a stored spec parses again");
        assert_eq!(reparsed, spec);
    }
}

/// What a target does with one input.
pub type Check = fn(&[u8]);

/// The targets by name, for the regression test.
pub const TARGETS: [(&str, Check); 8] = [
    ("decode_preprocess", decode_preprocess),
    ("archive_ingest", archive_ingest),
    ("annotations_voc", |d| annotations(AnnotationFormat::Voc, d)),
    ("annotations_via_csv", |d| annotations(AnnotationFormat::ViaCsv, d)),
    ("annotations_via_json", |d| annotations(AnnotationFormat::ViaJson, d)),
    ("annotations_coco", |d| annotations(AnnotationFormat::Coco, d)),
    ("annotations_csv", |d| annotations(AnnotationFormat::Csv, d)),
    ("job_spec", job_spec),
];
