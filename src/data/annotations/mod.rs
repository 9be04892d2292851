//! Bounding-box annotations that come with a dataset: Pascal VOC XML, VGG Image
//! Annotator (VIA) CSV and JSON, COCO JSON and a plain CSV, all read into one shape
//! (image name → labelled pixel boxes).
//!
//! Uploads come from many labelling tools and are often partly broken, so a bad box
//! or record is reported as a [`AnnotationProblem`] and the rest of the file still
//! counts; only a file that cannot be read at all is an `Err`. An image with any
//! unusable box is left out of [`ParsedAnnotations::images`] altogether, because
//! training on the boxes that remain would teach the model that the dropped object is
//! background.

mod coco;
mod json;
mod merge;
mod plain_csv;
mod via;
mod voc;

use std::collections::HashMap;

pub use merge::{MergedBoxes, SAME_BOX_PIXELS, merge_boxes};

use super::capped::Capped;

/// Annotation files larger than this are refused: even COCO files for tens of
/// thousands of images stay well below it, and parsing builds an in-memory tree.
pub const MAX_ANNOTATION_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnnotationFormat {
    Voc,
    ViaCsv,
    ViaJson,
    Coco,
    Csv,
}

impl AnnotationFormat {
    pub const ALL: [AnnotationFormat; 5] = [Self::Voc, Self::ViaCsv, Self::ViaJson, Self::Coco, Self::Csv];

    /// The name used in the API and in serde ("voc", "via-csv", "via-json", "coco", "csv").
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Voc => "voc",
            Self::ViaCsv => "via-csv",
            Self::ViaJson => "via-json",
            Self::Coco => "coco",
            Self::Csv => "csv",
        }
    }

    /// Reads a format name; case and `_` versus `-` do not matter, since people type these.
    pub fn parse_name(s: &str) -> Option<Self> {
        let name = s.trim().to_ascii_lowercase().replace('_', "-");
        Self::ALL.into_iter().find(|format| format.as_str() == name)
    }
}

pub use crate::vision::PixelBox;

#[derive(Debug, Clone, PartialEq)]
pub struct LabeledBox {
    pub label: String,
    pub bbox: PixelBox,
}

/// Boxes for one image as named by the annotation file.
///
/// `size` is (width, height) when the file states it (VOC, COCO, a CSV with width and
/// height columns); the caller still checks boxes against the real image with
/// [`fit_to_image`]. An image listed without boxes is a negative example.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBoxes {
    pub image: String,
    pub size: Option<(u32, u32)>,
    pub boxes: Vec<LabeledBox>,
}

/// A problem confined to one image or one record: the rest of the file still counts.
/// `file` is the annotation file's name as given to [`parse`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AnnotationProblem {
    pub file: String,
    pub reason: String,
}

/// What one annotation file yielded. Images appear in the order the file first names
/// them; boxes for the same image spread over several records are merged.
///
/// `problems` keeps the first [`LISTED_PER_KIND`](super::LISTED_PER_KIND) and counts the
/// rest: a file of a million bad rows costs a counter, not a million messages.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedAnnotations {
    pub images: Vec<ImageBoxes>,
    pub problems: Capped<AnnotationProblem>,
}

/// Choices that a file cannot state for itself.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParseOptions {
    /// The VIA region attribute that holds the label. `None` takes the first attribute
    /// whose value can be a label, which suits the common one-attribute projects.
    pub label_attribute: Option<String>,
}

/// Recognises an annotation file from its name and first bytes (`.xml` with
/// `<annotation` → Voc; `.json` with "images"+"annotations" → Coco, with "regions" /
/// `_via_img_metadata` → ViaJson; `.csv` whose header has region_shape_attributes →
/// ViaCsv, otherwise Csv). None for anything else (e.g. images).
///
/// Only the bytes given are looked at. COCO files may list all images before the
/// `"annotations"` key, so `"images"` with `"categories"` is also taken as COCO.
pub fn detect(file_name: &str, bytes: &[u8]) -> Option<AnnotationFormat> {
    let extension = file_name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase())?;
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_start_matches('\u{feff}');
    match extension.as_str() {
        "xml" => has_voc_root(text).then_some(AnnotationFormat::Voc),
        "json" => {
            if !text.trim_start().starts_with('{') {
                return None;
            }
            if has_json_key(text, "_via_img_metadata")
                || (has_json_key(text, "regions") && has_json_key(text, "filename"))
            {
                Some(AnnotationFormat::ViaJson)
            } else if has_json_key(text, "images")
                && (has_json_key(text, "annotations") || has_json_key(text, "categories"))
            {
                Some(AnnotationFormat::Coco)
            } else {
                None
            }
        }
        "csv" => {
            let header = text.lines().next().unwrap_or("");
            if header.to_ascii_lowercase().contains("region_shape_attributes") {
                Some(AnnotationFormat::ViaCsv)
            } else {
                Some(AnnotationFormat::Csv)
            }
        }
        _ => None,
    }
}

/// `<annotation>` as an element, not `<annotations>` (CVAT's root, a different format).
fn has_voc_root(text: &str) -> bool {
    text.match_indices("<annotation")
        .any(|(at, tag)| matches!(text[at + tag.len()..].chars().next(), Some('>' | '/' | ' ' | '\t' | '\r' | '\n')))
}

/// `"key"` followed by a colon, so that a label or file called "regions" does not count.
fn has_json_key(text: &str, key: &str) -> bool {
    let quoted = format!("\"{key}\"");
    text.match_indices(&quoted).any(|(at, _)| text[at + quoted.len()..].trim_start().starts_with(':'))
}

/// Parses one annotation file. Err(reason) only when the whole file is unreadable (not
/// XML/JSON/CSV, wrong top-level shape, missing required columns); bad records become
/// `problems` with a reason naming the image/record and the field.
pub fn parse(format: AnnotationFormat, source_name: &str, bytes: &[u8]) -> Result<ParsedAnnotations, String> {
    parse_with_options(format, source_name, bytes, &ParseOptions::default())
}

/// [`parse`] with options for what the file cannot state itself.
pub fn parse_with_options(
    format: AnnotationFormat,
    source_name: &str,
    bytes: &[u8],
    options: &ParseOptions,
) -> Result<ParsedAnnotations, String> {
    if bytes.len() > MAX_ANNOTATION_BYTES {
        return Err(format!(
            "the file is {} bytes; annotation files are limited to {} MiB",
            bytes.len(),
            MAX_ANNOTATION_BYTES / (1024 * 1024)
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Collector::new(source_name);
    match format {
        AnnotationFormat::Voc => voc::parse(text, &mut out)?,
        AnnotationFormat::ViaCsv => via::parse_csv(text, options, &mut out)?,
        AnnotationFormat::ViaJson => via::parse_json(text, options, &mut out)?,
        AnnotationFormat::Coco => coco::parse(text, &mut out)?,
        AnnotationFormat::Csv => plain_csv::parse(text, &mut out)?,
    }
    Ok(out.finish())
}

/// Checks a box against the real image size: NaN/inf or non-positive width/height →
/// Err(reason); a box entirely outside → Err; a box partly outside → clipped to
/// [0,w]×[0,h] and Ok((clipped, true)); within → Ok((box, false)). Boxes whose clipped
/// area is below 1 pixel² → Err.
///
/// Labelling tools often let a box run a little past the edge; clipping keeps those,
/// while a box wholly outside means the annotation belongs to another image size.
pub fn fit_to_image(bbox: PixelBox, width: u32, height: u32) -> Result<(PixelBox, bool), String> {
    let PixelBox { x_min, y_min, x_max, y_max } = bbox;
    if ![x_min, y_min, x_max, y_max].iter().all(|v| v.is_finite()) {
        return Err(format!("box ({x_min}, {y_min}, {x_max}, {y_max}) has a coordinate that is not a finite number"));
    }
    if x_max <= x_min || y_max <= y_min {
        return Err(format!(
            "box ({x_min}, {y_min}, {x_max}, {y_max}) has no positive width and height ({} × {})",
            x_max - x_min,
            y_max - y_min
        ));
    }
    if width == 0 || height == 0 {
        return Err(format!("the image size {width}×{height} has no area"));
    }
    let (w, h) = (width as f32, height as f32);
    if x_max <= 0.0 || y_max <= 0.0 || x_min >= w || y_min >= h {
        return Err(format!(
            "box ({x_min}, {y_min}, {x_max}, {y_max}) lies entirely outside the {width}×{height} image"
        ));
    }
    let clipped = PixelBox { x_min: x_min.max(0.0), y_min: y_min.max(0.0), x_max: x_max.min(w), y_max: y_max.min(h) };
    if clipped.area() < 1.0 {
        return Err(format!(
            "box ({x_min}, {y_min}, {x_max}, {y_max}) covers {} pixel² of the {width}×{height} image, less than 1",
            clipped.area()
        ));
    }
    Ok((clipped, clipped != bbox))
}

/// The largest box by area (the single box a localization head is trained on); None
/// for none. Ties go to the first, so the result does not depend on sorting.
pub fn largest(boxes: &[LabeledBox]) -> Option<&LabeledBox> {
    let mut best: Option<&LabeledBox> = None;
    for candidate in boxes {
        match best {
            Some(current) if candidate.bbox.area() <= current.bbox.area() => {}
            _ => best = Some(candidate),
        }
    }
    best
}

/// Gathers images and problems while a parser walks a file: merges records for the
/// same image, keeps first-seen order, and leaves out images with a bad box.
///
/// A file may name millions of images, so each costs little: its name is kept once (as the
/// key of `index`), and a spoiled image drops its boxes.
pub(crate) struct Collector {
    source: String,
    entries: Vec<Entry>,
    /// Image name → its place in `entries`.
    index: HashMap<Box<str>, usize>,
    problems: Capped<AnnotationProblem>,
}

struct Entry {
    size: Option<(u32, u32)>,
    boxes: Vec<LabeledBox>,
    spoiled: bool,
}

impl Collector {
    fn new(source: &str) -> Self {
        Self { source: source.to_owned(), entries: Vec::new(), index: HashMap::new(), problems: Capped::default() }
    }

    fn entry(&mut self, image: &str) -> &mut Entry {
        let at = match self.index.get(image) {
            Some(&at) => at,
            None => {
                self.entries.push(Entry { size: None, boxes: Vec::new(), spoiled: false });
                self.index.insert(image.into(), self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        &mut self.entries[at]
    }

    /// Lists an image, with or without boxes.
    fn image(&mut self, image: &str) {
        self.entry(image);
    }

    fn add_box(&mut self, image: &str, label: &str, bbox: PixelBox) {
        let entry = self.entry(image);
        if !entry.spoiled {
            entry.boxes.push(LabeledBox { label: label.to_owned(), bbox });
        }
    }

    /// Records the stated size; a second, different size for the same image makes the
    /// image ambiguous, so it is left out.
    /// A size the file states for `image`: kept when readable; otherwise a problem, named
    /// by `at`, and the image goes on without a stated size.
    fn stated_size(&mut self, image: &str, at: &str, size: Result<(u32, u32), String>) {
        match size {
            Ok(size) => self.set_size(image, size),
            Err(reason) => self.problem(format!("{at}: {reason}; the size is ignored")),
        }
    }

    fn set_size(&mut self, image: &str, size: (u32, u32)) {
        let entry = self.entry(image);
        match entry.size {
            None => entry.size = Some(size),
            Some(known) if known == size => {}
            Some((w, h)) => {
                let reason =
                    format!("{image}: size {}×{} conflicts with the size {w}×{h} stated earlier", size.0, size.1);
                self.spoil(image, reason);
            }
        }
    }

    /// A problem that does not cost any image its boxes.
    fn problem(&mut self, reason: String) {
        let file = &self.source;
        self.problems.push_with(|| AnnotationProblem { file: file.clone(), reason });
    }

    /// A problem with one of the image's boxes: the image is left out.
    fn spoil(&mut self, image: &str, reason: String) {
        self.leave_out(image);
        self.problem(reason);
    }

    /// Leaves an image out for a problem already reported under another image.
    fn leave_out(&mut self, image: &str) {
        let entry = self.entry(image);
        entry.spoiled = true;
        entry.boxes = Vec::new();
    }

    fn finish(self) -> ParsedAnnotations {
        let mut names: Vec<Option<Box<str>>> = vec![None; self.entries.len()];
        for (name, at) in self.index {
            names[at] = Some(name);
        }
        let images = (self.entries.into_iter().zip(names))
            .filter(|(entry, _)| !entry.spoiled)
            .map(|(entry, name)| ImageBoxes {
                image: name.map(String::from).unwrap_or_default(),
                size: entry.size,
                boxes: entry.boxes,
            })
            .collect();
        ParsedAnnotations { images, problems: self.problems }
    }
}

/// A finite number written as text ("48", " 48.0 "); `inf` and `NaN`, which Rust
/// would accept, are not coordinates.
fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

fn to_coordinate(name: &str, value: f64) -> Result<f32, String> {
    let coordinate = value as f32;
    if coordinate.is_finite() { Ok(coordinate) } else { Err(format!("{name} {value} is out of range")) }
}

/// A box from corner coordinates, which must enclose a positive area.
fn box_from_corners(x_min: f64, y_min: f64, x_max: f64, y_max: f64) -> Result<PixelBox, String> {
    if x_max <= x_min {
        return Err(format!("xmax {x_max} is not greater than xmin {x_min}"));
    }
    if y_max <= y_min {
        return Err(format!("ymax {y_max} is not greater than ymin {y_min}"));
    }
    Ok(PixelBox {
        x_min: to_coordinate("xmin", x_min)?,
        y_min: to_coordinate("ymin", y_min)?,
        x_max: to_coordinate("xmax", x_max)?,
        y_max: to_coordinate("ymax", y_max)?,
    })
}

/// A box from its top-left corner and size (COCO, VIA): x_min=x, x_max=x+w.
fn box_from_xywh(x: f64, y: f64, w: f64, h: f64) -> Result<PixelBox, String> {
    if w <= 0.0 {
        return Err(format!("width {w} is not positive"));
    }
    if h <= 0.0 {
        return Err(format!("height {h} is not positive"));
    }
    box_from_corners(x, y, x + w, y + h)
}

/// An image size as stated in a file: whole, positive pixels ("500.0" is accepted,
/// as some tools write floats).
fn image_size(width: f64, height: f64) -> Result<(u32, u32), String> {
    let side = |name: &str, v: f64| {
        if v.is_finite() && v >= 1.0 && v.fract() == 0.0 && v <= f64::from(u32::MAX) {
            Ok(v as u32)
        } else {
            Err(format!("{name} {v} is not a positive whole number of pixels"))
        }
    };
    Ok((side("width", width)?, side("height", height)?))
}

/// Short constructors for the parsers' tests.
#[cfg(test)]
mod test_support {
    use super::{ImageBoxes, LabeledBox, PixelBox};

    pub fn pb(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> PixelBox {
        PixelBox { x_min, y_min, x_max, y_max }
    }

    pub fn lb(label: &str, bbox: PixelBox) -> LabeledBox {
        LabeledBox { label: label.into(), bbox }
    }

    pub fn image(name: &str, boxes: Vec<LabeledBox>) -> ImageBoxes {
        ImageBoxes { image: name.into(), size: None, boxes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::annotations::test_support::*;

    fn lb(label: &str, bbox: PixelBox) -> LabeledBox {
        LabeledBox { label: label.to_owned(), bbox }
    }

    #[test]
    fn format_names_round_trip() {
        for (format, name) in [
            (AnnotationFormat::Voc, "voc"),
            (AnnotationFormat::ViaCsv, "via-csv"),
            (AnnotationFormat::ViaJson, "via-json"),
            (AnnotationFormat::Coco, "coco"),
            (AnnotationFormat::Csv, "csv"),
        ] {
            assert_eq!(format.as_str(), name);
            assert_eq!(AnnotationFormat::parse_name(name), Some(format));
            assert_eq!(serde_json::to_string(&format).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<AnnotationFormat>(&format!("\"{name}\"")).unwrap(), format);
        }
        assert_eq!(AnnotationFormat::parse_name(" VIA_JSON "), Some(AnnotationFormat::ViaJson));
        assert_eq!(AnnotationFormat::parse_name("yolo"), None);
        assert_eq!(AnnotationFormat::parse_name(""), None);
    }

    #[test]
    fn pixel_box_measures() {
        let b = pb(10.0, 20.0, 40.0, 60.0);
        assert_eq!(b.width(), 30.0);
        assert_eq!(b.height(), 40.0);
        assert_eq!(b.area(), 1200.0);
        assert_eq!(pb(40.0, 20.0, 10.0, 60.0).area(), 0.0);
        assert_eq!(pb(f32::NAN, 0.0, 1.0, 1.0).area(), 0.0);
    }

    #[test]
    fn detect_recognises_each_format() {
        let voc = br#"<?xml version="1.0"?>
<annotation>
  <folder>images</folder>"#;
        assert_eq!(detect("img1.xml", voc), Some(AnnotationFormat::Voc));
        assert_eq!(detect("DIR/IMG1.XML", b"<annotation verified=\"yes\">"), Some(AnnotationFormat::Voc));

        let coco = br#"{"info": {}, "images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}"#;
        assert_eq!(detect("instances.json", coco), Some(AnnotationFormat::Coco));
        // Cut before "annotations": the categories still tell.
        let coco_prefix = br#"{"categories": [{"id": 1, "name": "cat"}], "images": [{"id": 1"#;
        assert_eq!(detect("instances.json", coco_prefix), Some(AnnotationFormat::Coco));

        let via_export = br#"{"a.jpg123":{"filename":"a.jpg","size":123,"regions":[],"file_attributes":{}}}"#;
        assert_eq!(detect("via_export.json", via_export), Some(AnnotationFormat::ViaJson));
        let via_project = br#"{"_via_settings":{},"_via_img_metadata":{}}"#;
        assert_eq!(detect("project.json", via_project), Some(AnnotationFormat::ViaJson));

        let via_csv =
            b"filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes\n";
        assert_eq!(detect("via.csv", via_csv), Some(AnnotationFormat::ViaCsv));
        assert_eq!(
            detect("boxes.csv", b"filename,label,xmin,ymin,xmax,ymax\na.jpg,cat,1,2,3,4\n"),
            Some(AnnotationFormat::Csv)
        );
        assert_eq!(detect("boxes.CSV", b"a.jpg,cat,1,2,3,4\n"), Some(AnnotationFormat::Csv));
    }

    #[test]
    fn detect_rejects_other_files() {
        assert_eq!(detect("cat.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF"), None);
        assert_eq!(detect("cat.png", b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(detect("README", b"<annotation>"), None);
        assert_eq!(detect("notes.txt", b"0 0.5 0.5 0.2 0.2"), None);
        // CVAT's <annotations> root is another format.
        assert_eq!(detect("cvat.xml", b"<annotations><version>1.1</version>"), None);
        assert_eq!(detect("pom.xml", b"<project></project>"), None);
        assert_eq!(detect("package.json", br#"{"name": "x", "version": "1.0.0"}"#), None);
        assert_eq!(detect("list.json", br#"[{"images": 1, "annotations": 2}]"#), None);
        // "regions" as a value, not a key.
        assert_eq!(detect("labels.json", br#"{"labels": ["regions"], "filename": "a"}"#), None);
    }

    #[test]
    fn fit_keeps_a_box_inside() {
        assert_eq!(fit_to_image(pb(10.0, 20.0, 30.0, 40.0), 100, 50), Ok((pb(10.0, 20.0, 30.0, 40.0), false)));
        // Touching the edges is inside.
        assert_eq!(fit_to_image(pb(0.0, 0.0, 100.0, 50.0), 100, 50), Ok((pb(0.0, 0.0, 100.0, 50.0), false)));
    }

    #[test]
    fn fit_clips_a_box_partly_outside() {
        assert_eq!(fit_to_image(pb(-5.0, 10.0, 30.0, 60.0), 100, 50), Ok((pb(0.0, 10.0, 30.0, 50.0), true)));
        assert_eq!(fit_to_image(pb(90.0, -3.5, 120.0, 20.0), 100, 50), Ok((pb(90.0, 0.0, 100.0, 20.0), true)));
    }

    #[test]
    fn fit_rejects_bad_boxes() {
        // Not finite.
        assert!(fit_to_image(pb(f32::NAN, 0.0, 10.0, 10.0), 100, 100).is_err());
        assert!(fit_to_image(pb(0.0, 0.0, f32::INFINITY, 10.0), 100, 100).is_err());
        // Zero or negative size.
        assert!(fit_to_image(pb(10.0, 10.0, 10.0, 20.0), 100, 100).is_err());
        assert!(fit_to_image(pb(10.0, 30.0, 20.0, 20.0), 100, 100).is_err());
        // Entirely outside, including just touching the far edge.
        assert!(fit_to_image(pb(150.0, 10.0, 180.0, 20.0), 100, 100).is_err());
        assert!(fit_to_image(pb(-30.0, 10.0, -10.0, 20.0), 100, 100).is_err());
        assert!(fit_to_image(pb(10.0, 100.0, 20.0, 120.0), 100, 100).is_err());
        // Under one pixel² once clipped: 0.5 × 1.
        let err = fit_to_image(pb(99.5, 10.0, 130.0, 11.0), 100, 100).unwrap_err();
        assert!(err.contains("less than 1"), "{err}");
        // Under one pixel² without clipping: 0.5 × 0.5.
        assert!(fit_to_image(pb(10.0, 10.0, 10.5, 10.5), 100, 100).is_err());
        // An image with no area.
        assert!(fit_to_image(pb(0.0, 0.0, 10.0, 10.0), 0, 100).is_err());
    }

    #[test]
    fn largest_picks_the_biggest_area_first_on_ties() {
        assert_eq!(largest(&[]), None);
        let boxes = [
            lb("small", pb(0.0, 0.0, 10.0, 10.0)), // 100
            lb("wide", pb(0.0, 0.0, 50.0, 4.0)),   // 200
            lb("tall", pb(0.0, 0.0, 4.0, 50.0)),   // 200, ties with wide
            lb("broken", pb(0.0, 0.0, f32::NAN, 99.0)),
        ];
        assert_eq!(largest(&boxes).map(|b| b.label.as_str()), Some("wide"));
        assert_eq!(largest(&boxes[..1]).map(|b| b.label.as_str()), Some("small"));
    }

    #[test]
    fn oversized_and_non_utf8_files_are_refused() {
        let big = vec![b' '; MAX_ANNOTATION_BYTES + 1];
        for format in AnnotationFormat::ALL {
            assert!(parse(format, "big", &big).is_err());
            assert!(parse(format, "latin1", b"caf\xe9,cat,1,2,3,4\n").is_err());
        }
    }

    #[test]
    fn no_input_panics() {
        // Truncations of valid files of every format must come back as Ok or Err.
        let samples: [(AnnotationFormat, &str); 5] = [
            (AnnotationFormat::Voc, voc::tests::SAMPLE),
            (AnnotationFormat::ViaCsv, via::tests::CSV_SAMPLE),
            (AnnotationFormat::ViaJson, via::tests::JSON_SAMPLE),
            (AnnotationFormat::Coco, coco::tests::SAMPLE),
            (AnnotationFormat::Csv, plain_csv::tests::SAMPLE),
        ];
        for (format, sample) in samples {
            for cut in 0..=sample.len() {
                let bytes = &sample.as_bytes()[..cut];
                let _ = parse(format, "cut", bytes);
                let _ = detect("cut.json", bytes);
                let _ = detect("cut.xml", bytes);
                let _ = detect("cut.csv", bytes);
            }
        }
    }

    #[test]
    fn a_file_of_bad_rows_keeps_the_first_problems_and_counts_the_rest() {
        let rows: String = (0..5000).map(|i| format!("img{i}.jpg,cat,30,0,10,5\n")).collect();
        let parsed = parse(AnnotationFormat::Csv, "bad.csv", rows.as_bytes()).unwrap();
        assert!(parsed.images.is_empty());
        assert_eq!(parsed.problems.total(), 5000);
        assert_eq!(parsed.problems.len(), crate::data::LISTED_PER_KIND);
        assert_eq!(parsed.problems[0].reason, "row 1 (img0.jpg): xmax 10 is not greater than xmin 30");
        assert_eq!(parsed.problems[99].reason, "row 100 (img99.jpg): xmax 10 is not greater than xmin 30");
    }

    #[test]
    fn problems_name_the_source_file() {
        let parsed = parse(AnnotationFormat::Csv, "labels/boxes.csv", b"a.jpg,cat,30,0,10,5\n").unwrap();
        assert_eq!(
            parsed.problems,
            vec![AnnotationProblem {
                file: "labels/boxes.csv".into(),
                reason: "row 1 (a.jpg): xmax 10 is not greater than xmin 30".into()
            }]
        );
        assert!(parsed.images.is_empty());
    }
}
