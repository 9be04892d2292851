//! One set of boxes per image when several annotation files describe it, as labelling tools
//! leave them: a Pascal VOC file beside each image and a CSV export of the same boxes.
//!
//! Files are taken in precedence order (the caller sorts them: the order of
//! [`AnnotationFormat::ALL`](super::AnnotationFormat::ALL), then by path), and the first file
//! that describes an image gives its boxes. Every other file that describes it either agrees
//! (the same boxes, each once) and adds nothing, or disagrees and is reported as a problem that
//! names both files and says whose boxes were used.

use super::{AnnotationProblem, ImageBoxes, LabeledBox, PixelBox};

/// Two boxes are one when their labels match and every corner is within this many pixels:
/// VOC writes whole pixels, CSV and COCO exports often decimals of the same drawing.
pub const SAME_BOX_PIXELS: f32 = 1.0;

/// An image's boxes after merging, each with the file it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedBoxes<'a> {
    /// The chosen file's boxes, identical ones once.
    pub boxes: Vec<LabeledBox>,
    /// The file the boxes come from (`None` when nothing describes the image).
    pub file: Option<&'a str>,
    /// One problem per file whose boxes differ from the chosen file's.
    pub disagreements: Vec<AnnotationProblem>,
}

/// Merges what `found` (annotation file, its boxes for the image at `path`) says, in order of
/// precedence. Entries of one file (an image named twice in a CSV) are one file's boxes.
pub fn merge_boxes<'a>(path: &str, found: &'a [(String, ImageBoxes)]) -> MergedBoxes<'a> {
    let mut by_file: Vec<(&'a str, Vec<LabeledBox>)> = Vec::new();
    for (file, image) in found {
        match by_file.iter_mut().find(|(seen, _)| seen == file) {
            Some((_, boxes)) => boxes.extend(image.boxes.iter().cloned()),
            None => by_file.push((file, image.boxes.clone())),
        }
    }
    let Some((chosen_file, chosen)) = by_file.first() else {
        return MergedBoxes { boxes: Vec::new(), file: None, disagreements: Vec::new() };
    };
    let (chosen_file, boxes) = (*chosen_file, distinct(chosen));
    let disagreements = by_file[1..]
        .iter()
        .filter_map(|(file, others)| {
            let others = distinct(others);
            (!same_set(&boxes, &others)).then(|| AnnotationProblem {
                file: (*file).to_owned(),
                reason: format!(
                    "{path}: {file} gives {} but {chosen_file} gives {}; the boxes of {chosen_file} are used \
                     (its format comes first in the report's annotations)",
                    describe(&others),
                    describe(&boxes)
                ),
            })
        })
        .collect();
    MergedBoxes { boxes, file: Some(chosen_file), disagreements }
}

fn same_box(a: &LabeledBox, b: &LabeledBox) -> bool {
    let corners = |p: &PixelBox| [p.x_min, p.y_min, p.x_max, p.y_max];
    a.label == b.label && corners(&a.bbox).iter().zip(corners(&b.bbox)).all(|(x, y)| (x - y).abs() <= SAME_BOX_PIXELS)
}

/// `boxes` with each box that repeats an earlier one left out.
fn distinct(boxes: &[LabeledBox]) -> Vec<LabeledBox> {
    let mut kept: Vec<LabeledBox> = Vec::with_capacity(boxes.len());
    for candidate in boxes {
        if !kept.iter().any(|k| same_box(k, candidate)) {
            kept.push(candidate.clone());
        }
    }
    kept
}

/// Whether two lists of distinct boxes hold the same boxes, in any order.
fn same_set(a: &[LabeledBox], b: &[LabeledBox]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| same_box(x, y)))
}

/// "no box", or the boxes as `"label" (x_min, y_min, x_max, y_max)`, the first three of them.
fn describe(boxes: &[LabeledBox]) -> String {
    const SHOWN: usize = 3;
    if boxes.is_empty() {
        return "no box".to_owned();
    }
    let shown: Vec<String> = boxes
        .iter()
        .take(SHOWN)
        .map(|b| format!("{:?} ({}, {}, {}, {})", b.label, b.bbox.x_min, b.bbox.y_min, b.bbox.x_max, b.bbox.y_max))
        .collect();
    let more = boxes.len().saturating_sub(SHOWN);
    let noun = if boxes.len() == 1 { "box" } else { "boxes" };
    match more {
        0 => format!("{} {noun} {}", boxes.len(), shown.join(", ")),
        _ => format!("{} {noun} {} and {more} more", boxes.len(), shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labeled(label: &str, x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> LabeledBox {
        LabeledBox { label: label.to_owned(), bbox: PixelBox { x_min, y_min, x_max, y_max } }
    }

    fn from(file: &str, boxes: Vec<LabeledBox>) -> (String, ImageBoxes) {
        (file.to_owned(), ImageBoxes { image: "a.jpg".into(), size: None, boxes })
    }

    #[test]
    fn agreeing_files_give_each_box_once() {
        let found = [
            from("a.xml", vec![labeled("cat", 10.0, 20.0, 30.0, 40.0), labeled("dog", 1.0, 1.0, 5.0, 5.0)]),
            // The same two boxes in the other order, one within a pixel, one row repeated.
            from(
                "boxes.csv",
                vec![
                    labeled("dog", 1.0, 1.0, 5.0, 5.0),
                    labeled("cat", 10.4, 19.6, 30.0, 41.0),
                    labeled("dog", 1.0, 1.0, 5.0, 5.0),
                ],
            ),
        ];
        let merged = merge_boxes("a.jpg", &found);
        assert_eq!(merged.boxes, found[0].1.boxes);
        assert_eq!(merged.file, Some("a.xml"));
        assert!(merged.disagreements.is_empty(), "{:?}", merged.disagreements);
    }

    #[test]
    fn disagreeing_files_are_named_and_the_first_wins() {
        let cat = labeled("cat", 10.0, 20.0, 30.0, 40.0);
        for other in [
            vec![labeled("cat", 10.0, 20.0, 31.5, 40.0)], // a corner 1.5 px away
            vec![labeled("dog", 10.0, 20.0, 30.0, 40.0)], // another label
            vec![cat.clone(), labeled("cat", 50.0, 50.0, 60.0, 60.0)], // one box more
            vec![],                                       // listed without a box
        ] {
            let found = [from("a.xml", vec![cat.clone()]), from("boxes.csv", other.clone())];
            let merged = merge_boxes("img/a.jpg", &found);
            assert_eq!(merged.boxes, vec![cat.clone()], "{other:?}");
            assert_eq!(merged.disagreements.len(), 1, "{other:?}");
            let problem = &merged.disagreements[0];
            assert_eq!(problem.file, "boxes.csv");
            assert!(problem.reason.starts_with("img/a.jpg: boxes.csv gives "), "{}", problem.reason);
            assert!(
                problem.reason.contains("a.xml gives 1 box \"cat\" (10, 20, 30, 40); the boxes of a.xml are used"),
                "{}",
                problem.reason
            );
        }
    }

    #[test]
    fn a_single_file_keeps_its_boxes_once_and_nothing_gives_nothing() {
        let found = [from("a.xml", vec![labeled("cat", 1.0, 1.0, 9.0, 9.0), labeled("cat", 1.0, 1.0, 9.0, 9.0)])];
        let merged = merge_boxes("a.jpg", &found);
        assert_eq!((merged.boxes.len(), merged.disagreements.len()), (1, 0));
        // One file naming the image twice ("a.jpg", "img/a.jpg"): its boxes together.
        let twice = [
            from("b.csv", vec![labeled("cat", 1.0, 1.0, 9.0, 9.0)]),
            from("b.csv", vec![labeled("dog", 2.0, 2.0, 5.0, 5.0)]),
        ];
        let merged = merge_boxes("a.jpg", &twice);
        assert_eq!((merged.boxes.len(), merged.disagreements.len(), merged.file), (2, 0, Some("b.csv")));
        let none = merge_boxes("a.jpg", &[]);
        assert_eq!((none.boxes.len(), none.file), (0, None));
    }

    #[test]
    fn long_lists_are_cut_in_the_message() {
        let many: Vec<LabeledBox> =
            (0..5).map(|i| labeled("cat", i as f32 * 10.0, 0.0, i as f32 * 10.0 + 5.0, 5.0)).collect();
        assert!(describe(&many).starts_with("5 boxes \"cat\" (0, 0, 5, 5), "));
        assert!(describe(&many).ends_with(" and 2 more"));
        assert_eq!(describe(&[]), "no box");
    }
}
