//! The dataset report: what an ingestion left out and why, kept small enough to live in the
//! dataset's row and go out with every `GET /v1/datasets`.
//!
//! An upload decides how many files, rows and records it holds, so every list here keeps its
//! first [`LISTED_PER_KIND`] entries and counts the rest ([`Capped`]); the serialized report
//! carries both, as `rejected` and `rejected_total` and so on. [`IngestReport::to_bounded_json`]
//! then enforces a hard bound on the bytes, however long the paths and reasons are.

use serde::Serialize;
use serde::ser::Serializer;

use super::annotations::AnnotationProblem;
pub use super::capped::{Capped, LISTED_PER_KIND};

/// The most bytes a serialized dataset report may have.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;

/// The most bytes of one path, reason or warning in a stored report; longer ones are cut and
/// end with "…".
pub const MAX_TEXT_BYTES: usize = 256;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rejected {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Duplicate {
    pub path: String,
    pub same_as: String,
}

/// What an ingestion saw and left out. [`to_bounded_json`](Self::to_bounded_json) is what
/// gets stored: the fields as named here, with a `<list>_total` beside each list.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    pub files_seen: usize,
    pub images: usize,
    pub top_folder: Option<String>,
    pub rejected: Capped<Rejected>,
    pub duplicates: Capped<Duplicate>,
    pub warnings: Capped<String>,
    /// The annotation format(s) the boxes came from ("voc", or "voc, csv" for a mix), in
    /// precedence order: where files of two formats describe an image differently, the
    /// first format's file gives its boxes. `None` for a class-folder dataset.
    pub annotations: Option<String>,
    /// Annotation files that could not be read, records that were left out, names
    /// that match no image, boxes that were clipped, and files whose boxes for an image
    /// disagree with the file that was used (naming both).
    pub annotation_problems: Capped<AnnotationProblem>,
    /// Boxes that ran past the image edge and were cut to it.
    pub boxes_clipped: usize,
    /// Images annotated with more than one box, of which only the largest is kept.
    pub images_with_several_boxes: usize,
}

/// The report as sent: each list cut to `listed` entries and each text to `text_bytes`.
#[derive(Serialize)]
struct View<'a> {
    files_seen: usize,
    images: usize,
    top_folder: Option<Cut<'a>>,
    rejected: Vec<RejectedView<'a>>,
    rejected_total: usize,
    duplicates: Vec<DuplicateView<'a>>,
    duplicates_total: usize,
    warnings: Vec<Cut<'a>>,
    warnings_total: usize,
    annotations: Option<Cut<'a>>,
    annotation_problems: Vec<ProblemView<'a>>,
    annotation_problems_total: usize,
    boxes_clipped: usize,
    images_with_several_boxes: usize,
}

#[derive(Serialize)]
struct RejectedView<'a> {
    path: Cut<'a>,
    reason: Cut<'a>,
}

#[derive(Serialize)]
struct DuplicateView<'a> {
    path: Cut<'a>,
    same_as: Cut<'a>,
}

#[derive(Serialize)]
struct ProblemView<'a> {
    file: Cut<'a>,
    reason: Cut<'a>,
}

/// A text serialized as at most `max` bytes of it (on a character boundary) and "…" when cut.
struct Cut<'a> {
    text: &'a str,
    max: usize,
}

impl Serialize for Cut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.text.len() <= self.max {
            return serializer.serialize_str(self.text);
        }
        let mut end = self.max;
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        serializer.serialize_str(&format!("{}…", &self.text[..end]))
    }
}

impl IngestReport {
    /// The report as JSON of at most `max_bytes`: lists cut to [`LISTED_PER_KIND`] and texts
    /// to [`MAX_TEXT_BYTES`], then both halved until it fits. The `_total` counts always say
    /// how many entries there were. Without lists the report is a few hundred bytes, so the
    /// bound holds for any `max_bytes` above that.
    pub fn to_bounded_json(&self, max_bytes: usize) -> serde_json::Value {
        let (mut listed, mut text_bytes) = (LISTED_PER_KIND, MAX_TEXT_BYTES);
        loop {
            let view = self.view(listed, text_bytes);
            if listed == 0 || serialized_len(&view) <= max_bytes {
                return serde_json::to_value(&view).unwrap_or_default();
            }
            listed /= 2;
            text_bytes = (text_bytes / 2).max(32);
        }
    }

    fn view(&self, listed: usize, text_bytes: usize) -> View<'_> {
        let cut = |text| Cut { text, max: text_bytes };
        View {
            files_seen: self.files_seen,
            images: self.images,
            top_folder: self.top_folder.as_deref().map(cut),
            rejected: (self.rejected.iter().take(listed))
                .map(|r| RejectedView { path: cut(&r.path), reason: cut(&r.reason) })
                .collect(),
            rejected_total: self.rejected.total(),
            duplicates: (self.duplicates.iter().take(listed))
                .map(|d| DuplicateView { path: cut(&d.path), same_as: cut(&d.same_as) })
                .collect(),
            duplicates_total: self.duplicates.total(),
            warnings: self.warnings.iter().take(listed).map(|w| cut(w)).collect(),
            warnings_total: self.warnings.total(),
            annotations: self.annotations.as_deref().map(cut),
            annotation_problems: (self.annotation_problems.iter().take(listed))
                .map(|p| ProblemView { file: cut(&p.file), reason: cut(&p.reason) })
                .collect(),
            annotation_problems_total: self.annotation_problems.total(),
            boxes_clipped: self.boxes_clipped,
            images_with_several_boxes: self.images_with_several_boxes,
        }
    }
}

/// The bytes `value` serializes to, counted without keeping them.
fn serialized_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(n: usize, path: &str, reason: &str) -> Capped<Rejected> {
        let mut list = Capped::default();
        for i in 0..n {
            list.push(Rejected { path: format!("{path}{i}"), reason: reason.to_owned() });
        }
        list
    }

    fn json_len(value: &serde_json::Value) -> usize {
        serde_json::to_string(value).unwrap().len()
    }

    #[test]
    fn a_capped_list_keeps_the_first_entries_and_counts_all() {
        let mut list = Capped::new(3);
        for i in 0..5 {
            list.push(i);
        }
        assert_eq!(&*list, &[0, 1, 2]);
        assert_eq!((list.total(), list.omitted()), (5, 2));
        let mut built = 0;
        list.push_with(|| {
            built += 1;
            9
        });
        assert_eq!((built, list.total()), (0, 6), "an entry past the cap is not built");

        // Absorbing keeps order, fills up to the cap, and carries the other's omitted count.
        let mut other = Capped::new(2);
        other.extend([10, 11, 12, 13]);
        let mut room = Capped::new(3);
        room.push(1);
        room.absorb(other);
        assert_eq!(&*room, &[1, 10, 11]);
        assert_eq!(room.total(), 5);
        assert!(room != vec![1, 10, 11], "a list with omitted entries is not equal to its listed ones");
    }

    #[test]
    fn the_report_lists_the_first_hundred_of_each_kind_with_totals() {
        let report = IngestReport {
            files_seen: 100_006,
            images: 6,
            rejected: rejected(100_000, "a/", "not an image"),
            warnings: {
                let mut warnings = Capped::default();
                warnings.extend((0..250).map(|i| format!("class {i} is small")));
                warnings
            },
            ..IngestReport::default()
        };
        let json = report.to_bounded_json(MAX_REPORT_BYTES);
        assert_eq!(json["rejected"].as_array().unwrap().len(), 100);
        assert_eq!(json["rejected"][0], serde_json::json!({"path": "a/0", "reason": "not an image"}));
        assert_eq!(json["rejected"][99]["path"], "a/99");
        assert_eq!(json["rejected_total"], 100_000);
        assert_eq!(json["warnings"].as_array().unwrap().len(), 100);
        assert_eq!(json["warnings_total"], 250);
        assert_eq!((json["duplicates_total"].as_u64(), json["annotation_problems_total"].as_u64()), (Some(0), Some(0)));
        assert_eq!(json["files_seen"], 100_006);
        // 100 entries of {"path":"a/NN","reason":"not an image"} are about 4 KB.
        assert!(json_len(&json) < 12_000, "{}", json_len(&json));
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        // 'é' is two bytes: 1000 of them cut to 256 bytes is 128 characters.
        let long = "é".repeat(1000);
        let report = IngestReport { rejected: rejected(1, &long, &long), ..IngestReport::default() };
        let json = report.to_bounded_json(MAX_REPORT_BYTES);
        let expected = format!("{}…", "é".repeat(128));
        assert_eq!(json["rejected"][0]["reason"], expected.as_str());
        // The path had the index appended after the 1000 characters, so it is cut the same way.
        assert_eq!(json["rejected"][0]["path"], expected.as_str());
        let short = IngestReport { top_folder: Some("top".into()), ..IngestReport::default() };
        assert_eq!(short.to_bounded_json(MAX_REPORT_BYTES)["top_folder"], "top");
    }

    #[test]
    fn the_byte_bound_holds_however_texts_escape() {
        // A control character serializes as six bytes (\u0001): 256 of them per text, two
        // texts an entry, 100 entries in each of four lists is about 1.2 MB before the bound.
        let nasty = "\u{1}".repeat(5000);
        let mut report = IngestReport {
            top_folder: Some(nasty.clone()),
            rejected: rejected(10_000, &nasty, &nasty),
            ..IngestReport::default()
        };
        for i in 0..10_000 {
            report.duplicates.push(Duplicate { path: format!("{nasty}{i}"), same_as: nasty.clone() });
            report.warnings.push(nasty.clone());
            report.annotation_problems.push(AnnotationProblem { file: nasty.clone(), reason: nasty.clone() });
        }
        let whole = serde_json::to_string(&report.view(LISTED_PER_KIND, MAX_TEXT_BYTES)).unwrap().len();
        assert!(whole > 4 * MAX_REPORT_BYTES, "the test starts far over the bound: {whole}");
        for bound in [MAX_REPORT_BYTES, 64 * 1024, 4096] {
            let json = report.to_bounded_json(bound);
            assert!(json_len(&json) <= bound, "{} > {bound}", json_len(&json));
            assert_eq!(json["rejected_total"], 10_000);
            assert_eq!(json["duplicates_total"], 10_000);
            assert_eq!(json["annotation_problems_total"], 10_000);
            assert!(!json["rejected"].as_array().unwrap().is_empty(), "{bound}: some entries still fit");
        }
    }
}
