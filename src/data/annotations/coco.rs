//! COCO object-detection JSON: `images`, `annotations` (bbox as [x, y, width,
//! height]) and `categories`, tied together by ids.
//!
//! Ids are compared as text, so 7, 7.0 and "7" name the same image; exporters differ
//! on this. An id that two entries claim with different meanings is ambiguous, and
//! the annotations that use it are refused rather than guessed.

use std::collections::{HashMap, HashSet};

use super::json::Json;
use super::{Collector, box_from_xywh, image_size};

/// Keys whose values boxes do not need; polygons and keypoints can be most of a file.
const SKIPPED: &[&str] = &["segmentation", "keypoints", "licenses", "info"];

pub(super) fn parse(text: &str, out: &mut Collector) -> Result<(), String> {
    let top = Json::parse_skipping(text, SKIPPED)?;
    if top.as_object().is_none() {
        return Err(format!("the top level is {}, not a COCO object", top.kind()));
    }
    let list = |key: &str| -> Result<&[Json], String> {
        let value = top.get(key).ok_or_else(|| format!("there is no \"{key}\" list"))?;
        value.as_array().ok_or_else(|| format!("\"{key}\" is {}, not a list", value.kind()))
    };
    let (images, annotations, categories) = (list("images")?, list("annotations")?, list("categories")?);

    // Category id → name; None marks an id given two different names.
    let mut names: HashMap<String, Option<String>> = HashMap::new();
    for (i, category) in categories.iter().enumerate() {
        let Some(id) = category.get("id").and_then(Json::as_id) else {
            out.problem(format!("category at index {i} has no usable \"id\""));
            continue;
        };
        let Some(name) = category.get("name").and_then(Json::as_str).map(str::trim).filter(|s| !s.is_empty()) else {
            out.problem(format!("category {id} has no \"name\""));
            continue;
        };
        match names.get(&id) {
            None => {
                names.insert(id, Some(name.to_owned()));
            }
            Some(Some(known)) if known == name => {}
            Some(_) => {
                out.problem(format!("category id {id} is given twice with different names"));
                names.insert(id, None);
            }
        }
    }

    // Image id → file name; ambiguous ids go to `clashing`.
    let mut files: HashMap<String, &str> = HashMap::new();
    let mut clashing: HashSet<String> = HashSet::new();
    for (i, entry) in images.iter().enumerate() {
        let Some(id) = entry.get("id").and_then(Json::as_id) else {
            out.problem(format!("image at index {i} has no usable \"id\""));
            continue;
        };
        let Some(file) = entry.get("file_name").and_then(Json::as_str).map(str::trim).filter(|s| !s.is_empty()) else {
            out.problem(format!("image {id} has no \"file_name\""));
            continue;
        };
        out.image(file);
        match files.get(id.as_str()) {
            None => {
                files.insert(id.clone(), file);
            }
            Some(&known) if known == file => {}
            Some(&known) => {
                let reason = format!("image id {id} is given to both {known} and {file}");
                out.spoil(known, reason);
                out.leave_out(file);
                clashing.insert(id.clone());
                continue;
            }
        }
        match (entry.get("width"), entry.get("height")) {
            (None, None) => {}
            (width, height) => {
                let size = match (width.and_then(Json::as_number), height.and_then(Json::as_number)) {
                    (Some(w), Some(h)) => image_size(w, h),
                    _ => Err("width and height are not both numbers".to_owned()),
                };
                out.stated_size(file, &format!("{file} (image {id})"), size);
            }
        }
    }

    for (i, annotation) in annotations.iter().enumerate() {
        let record = match annotation.get("id").and_then(Json::as_id) {
            Some(id) => format!("annotation {id}"),
            None => format!("annotation at index {i}"),
        };
        let Some(image_id) = annotation.get("image_id").and_then(Json::as_id) else {
            out.problem(format!("{record} has no usable \"image_id\""));
            continue;
        };
        if clashing.contains(&image_id) {
            // Already reported with the clash.
            continue;
        }
        let Some(&file) = files.get(&image_id) else {
            out.problem(format!("{record} refers to image_id {image_id} which is not in `images`"));
            continue;
        };
        let at = format!("{file} ({record})");
        let label = match annotation.get("category_id").and_then(Json::as_id) {
            None => Err(format!("{at} has no usable \"category_id\"")),
            Some(category) => match names.get(&category) {
                None => Err(format!("{at}: category_id {category} is not in `categories`")),
                Some(None) => Err(format!("{at}: category_id {category} is ambiguous")),
                Some(Some(name)) => Ok(name),
            },
        };
        let label = match label {
            Ok(label) => label,
            Err(reason) => {
                out.spoil(file, reason);
                continue;
            }
        };
        let bbox = match annotation.get("bbox").and_then(Json::as_array) {
            Some([x, y, w, h]) => match (x.as_number(), y.as_number(), w.as_number(), h.as_number()) {
                (Some(x), Some(y), Some(w), Some(h)) => box_from_xywh(x, y, w, h),
                _ => Err("bbox holds something other than numbers".to_owned()),
            },
            Some(other) => Err(format!("bbox has {} numbers, not 4 ([x, y, width, height])", other.len())),
            None => Err("there is no bbox list".to_owned()),
        };
        match bbox {
            Ok(bbox) => out.add_box(file, label, bbox),
            Err(reason) => out.spoil(file, format!("{at}: {reason}")),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{AnnotationFormat, ImageBoxes, ParsedAnnotations, parse};
    use crate::data::annotations::test_support::*;

    pub(in super::super) const SAMPLE: &str = r#"{
  "info": {"description": "test"},
  "licenses": [],
  "images": [
    {"id": 1, "file_name": "train/0001.jpg", "width": 640, "height": 480},
    {"id": 2, "file_name": "0002.jpg", "width": 320, "height": 240},
    {"id": "3", "file_name": "0003.jpg"}
  ],
  "annotations": [
    {"id": 10, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0,
     "segmentation": [[10, 20, 40, 20, 40, 60]]},
    {"id": 11, "image_id": 1, "category_id": 2, "bbox": [100.5, 50, 20.25, 10], "iscrowd": 0},
    {"id": 12, "image_id": 3, "category_id": 2, "bbox": [0, 0, 5, 5]}
  ],
  "categories": [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog"}]
}"#;

    fn coco(text: &str) -> Result<ParsedAnnotations, String> {
        parse(AnnotationFormat::Coco, "instances.json", text.as_bytes())
    }

    /// A file with one 100×100 image (id 1) and categories 1 = cat, with the given annotations.
    fn with_annotations(annotations: &str) -> ParsedAnnotations {
        coco(&format!(
            r#"{{"images": [{{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}}],
                "categories": [{{"id": 1, "name": "cat"}}], "annotations": [{annotations}]}}"#
        ))
        .unwrap()
    }

    fn reasons(parsed: &ParsedAnnotations) -> Vec<&str> {
        parsed.problems.iter().map(|p| p.reason.as_str()).collect()
    }

    #[test]
    fn reads_coco_file() {
        let parsed = coco(SAMPLE).unwrap();
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(
            parsed.images,
            vec![
                ImageBoxes {
                    image: "train/0001.jpg".into(),
                    size: Some((640, 480)),
                    boxes: vec![lb("cat", pb(10.0, 20.0, 40.0, 60.0)), lb("dog", pb(100.5, 50.0, 120.75, 60.0))],
                },
                ImageBoxes { image: "0002.jpg".into(), size: Some((320, 240)), boxes: vec![] },
                ImageBoxes { image: "0003.jpg".into(), size: None, boxes: vec![lb("dog", pb(0.0, 0.0, 5.0, 5.0))] },
            ]
        );
    }

    #[test]
    fn unknown_image_id_is_a_problem() {
        let parsed = with_annotations(
            r#"{"id": 12, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},
               {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}"#,
        );
        assert_eq!(reasons(&parsed), ["annotation 12 refers to image_id 99 which is not in `images`"]);
        assert_eq!(
            parsed.images,
            vec![ImageBoxes {
                image: "a.jpg".into(),
                size: Some((100, 100)),
                boxes: vec![lb("cat", pb(1.0, 1.0, 3.0, 3.0))]
            }]
        );
    }

    #[test]
    fn bad_annotations_spoil_their_image() {
        for (annotation, reason) in [
            (
                r#"{"id": 5, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]}"#,
                "a.jpg (annotation 5): category_id 7 is not in `categories`",
            ),
            (r#"{"id": 5, "image_id": 1, "bbox": [1, 1, 2, 2]}"#, "a.jpg (annotation 5) has no usable \"category_id\""),
            (
                r#"{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 2]}"#,
                "a.jpg (annotation 5): width 0 is not positive",
            ),
            (
                r#"{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, -2]}"#,
                "a.jpg (annotation 5): height -2 is not positive",
            ),
            (
                r#"{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2]}"#,
                "a.jpg (annotation 5): bbox has 3 numbers, not 4 ([x, y, width, height])",
            ),
            (
                r#"{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, "one", 2, 2]}"#,
                "a.jpg (annotation 5): bbox holds something other than numbers",
            ),
            (r#"{"id": 5, "image_id": 1, "category_id": 1}"#, "a.jpg (annotation 5): there is no bbox list"),
            (
                r#"{"image_id": 1, "category_id": 1, "bbox": {}}"#,
                "a.jpg (annotation at index 0): there is no bbox list",
            ),
        ] {
            let parsed = with_annotations(annotation);
            assert_eq!(reasons(&parsed), [reason]);
            assert!(parsed.images.is_empty(), "{annotation}");
        }
        let parsed = with_annotations(r#"{"id": 5, "category_id": 1, "bbox": [1, 1, 2, 2]}"#);
        assert_eq!(reasons(&parsed), ["annotation 5 has no usable \"image_id\""]);
        assert_eq!(parsed.images.len(), 1);
    }

    #[test]
    fn bad_images_and_categories_are_reported() {
        let parsed = coco(
            r#"{"images": [{"id": 1, "file_name": "a.jpg", "width": 0, "height": 10},
                           {"file_name": "b.jpg"},
                           {"id": 3},
                           {"id": 4, "file_name": "d.jpg", "width": "wide", "height": 10},
                           {"id": 5, "file_name": "e.jpg"}, {"id": 5, "file_name": "f.jpg"}],
                "categories": [{"id": 1, "name": "cat"}, {"id": 2}, {"name": "dog"},
                               {"id": 3, "name": "cow"}, {"id": 3, "name": "ox"}],
                "annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},
                                {"id": 8, "image_id": 4, "category_id": 1, "bbox": [1, 1, 2, 2]},
                                {"id": 7, "image_id": 5, "category_id": 1, "bbox": [1, 1, 2, 2]}]}"#,
        )
        .unwrap();
        assert_eq!(
            reasons(&parsed),
            [
                "category 2 has no \"name\"",
                "category at index 2 has no usable \"id\"",
                "category id 3 is given twice with different names",
                "a.jpg (image 1): width 0 is not a positive whole number of pixels; the size is ignored",
                "image at index 1 has no usable \"id\"",
                "image 3 has no \"file_name\"",
                "d.jpg (image 4): width and height are not both numbers; the size is ignored",
                "image id 5 is given to both e.jpg and f.jpg",
                "a.jpg (annotation 9): category_id 3 is ambiguous",
            ]
        );
        assert_eq!(
            parsed.images,
            vec![ImageBoxes { image: "d.jpg".into(), size: None, boxes: vec![lb("cat", pb(1.0, 1.0, 3.0, 3.0))] }]
        );
    }

    #[test]
    fn unreadable_files_are_errors() {
        assert!(coco("").is_err());
        assert!(coco("{\"images\": [").is_err());
        assert!(coco("[]").unwrap_err().contains("an array"));
        assert!(coco(r#"{"images": [], "categories": []}"#).unwrap_err().contains("\"annotations\""));
        assert!(coco(r#"{"images": {}, "annotations": [], "categories": []}"#).unwrap_err().contains("not a list"));
        // A VIA file is not COCO.
        assert!(coco(r#"{"a.jpg1": {"filename": "a.jpg", "regions": []}}"#).is_err());
    }
}
