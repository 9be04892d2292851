//! VGG Image Annotator (VIA) exports: the CSV (one row per region, shapes and
//! attributes as JSON strings) and the JSON (export, VIA2 project with
//! `_via_img_metadata`, and VIA1 with regions keyed "0", "1", …).
//!
//! VIA draws polygons, circles and ellipses as well as rectangles; a box head needs
//! a rectangle, so those become their bounding rectangles. A point has no extent and
//! is refused.

use super::json::Json;
use super::{Collector, ParseOptions, PixelBox, box_from_corners, box_from_xywh, parse_number};

const FILENAME: &str = "filename";
const REGION_COUNT: &str = "region_count";
const SHAPE: &str = "region_shape_attributes";
const ATTRIBUTES: &str = "region_attributes";

pub(super) fn parse_csv(text: &str, options: &ParseOptions, out: &mut Collector) -> Result<(), String> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let mut records = reader.records();
    let header = match records.next() {
        Some(header) => header.map_err(|e| format!("not readable as CSV: {e}"))?,
        None => return Err("the file is empty; a VIA CSV starts with a header row".into()),
    };
    // VIA 1 writes "#filename".
    let names: Vec<String> = header.iter().map(|h| h.trim_start_matches('#').trim().to_ascii_lowercase()).collect();
    let column = |name: &str| names.iter().position(|n| n == name);
    let missing: Vec<&str> = [FILENAME, SHAPE, ATTRIBUTES].into_iter().filter(|name| column(name).is_none()).collect();
    if !missing.is_empty() {
        return Err(format!("the header lacks the VIA column(s) {}", missing.join(", ")));
    }
    let (Some(file_col), Some(shape_col), Some(attr_col)) = (column(FILENAME), column(SHAPE), column(ATTRIBUTES))
    else {
        return Err("the header lacks the VIA columns".into());
    };
    let count_col = column(REGION_COUNT);

    for (i, record) in records.enumerate() {
        // Spreadsheet numbering: the header is row 1.
        let row = i + 2;
        let record = record.map_err(|e| format!("row {row} is not readable as CSV: {e}"))?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        let field = |col: usize| record.get(col).unwrap_or("");
        let image = field(file_col);
        if image.is_empty() {
            out.problem(format!("row {row} has no filename"));
            continue;
        }
        let at = format!("row {row} ({image})");
        out.image(image);

        let shape_text = field(shape_col);
        let shape = if shape_text.is_empty() {
            Json::Object(Vec::new())
        } else {
            match Json::parse(shape_text) {
                Ok(shape) => shape,
                Err(e) => {
                    out.spoil(image, format!("{at}: {SHAPE} is {e}"));
                    continue;
                }
            }
        };
        if shape.as_object().is_some_and(<[_]>::is_empty) {
            // An image without regions; VIA writes region_count 0 and "{}".
            let count = count_col.map(field).and_then(parse_number).unwrap_or(0.0);
            if count > 0.0 {
                out.spoil(image, format!("{at}: {REGION_COUNT} is {count} but {SHAPE} is empty"));
            }
            continue;
        }
        let attributes = match field(attr_col) {
            "" => Json::Object(Vec::new()),
            attr_text => match Json::parse(attr_text) {
                Ok(attributes) => attributes,
                Err(e) => {
                    out.spoil(image, format!("{at}: {ATTRIBUTES} is {e}"));
                    continue;
                }
            },
        };
        match region(&shape, &attributes, options) {
            Ok((label, bbox)) => out.add_box(image, &label, bbox),
            Err(reason) => out.spoil(image, format!("{at}: {reason}")),
        }
    }
    Ok(())
}

pub(super) fn parse_json(text: &str, options: &ParseOptions, out: &mut Collector) -> Result<(), String> {
    let top = Json::parse(text)?;
    if top.as_object().is_none() {
        return Err(format!("the top level is {}, not a VIA object", top.kind()));
    }
    let entries = match top.get("_via_img_metadata") {
        Some(metadata) => {
            metadata.as_object().ok_or_else(|| format!("_via_img_metadata is {}, not an object", metadata.kind()))?
        }
        None => top.as_object().unwrap_or_default(),
    };
    // Guards against another JSON format (COCO, say) passed as VIA.
    let looks_like_via = |entry: &Json| entry.get("filename").is_some() || entry.get("regions").is_some();
    if !entries.is_empty() && !entries.iter().any(|(_, entry)| looks_like_via(entry)) {
        return Err("no VIA image entries (objects with \"filename\" and \"regions\") at the top level".into());
    }

    for (key, entry) in entries {
        let Some(image) = entry.get("filename").and_then(Json::as_str).map(str::trim).filter(|s| !s.is_empty()) else {
            out.problem(format!("entry {key:?} has no filename"));
            continue;
        };
        out.image(image);
        let regions: Vec<&Json> = match entry.get("regions") {
            Some(Json::Array(regions)) => regions.iter().collect(),
            // VIA 1 keys regions "0", "1", …
            Some(Json::Object(regions)) => regions.iter().map(|(_, region)| region).collect(),
            Some(other) => {
                out.spoil(image, format!("{image}: \"regions\" is {}, not a list", other.kind()));
                continue;
            }
            None => {
                out.spoil(image, format!("{image}: the entry has no \"regions\""));
                continue;
            }
        };
        for (i, region_json) in regions.into_iter().enumerate() {
            let n = i + 1;
            let Some(shape) = region_json.get("shape_attributes") else {
                out.spoil(image, format!("{image}: region {n} has no shape_attributes"));
                continue;
            };
            let empty = Json::Object(Vec::new());
            let attributes = region_json.get("region_attributes").unwrap_or(&empty);
            match region(shape, attributes, options) {
                Ok((label, bbox)) => out.add_box(image, &label, bbox),
                Err(reason) => out.spoil(image, format!("{image}: region {n}: {reason}")),
            }
        }
    }
    Ok(())
}

/// One region's label and box.
fn region(shape: &Json, attributes: &Json, options: &ParseOptions) -> Result<(String, PixelBox), String> {
    let bbox = shape_to_box(shape)?;
    let label = label(attributes, options.label_attribute.as_deref())?;
    Ok((label, bbox))
}

/// The bounding rectangle of a VIA shape.
fn shape_to_box(shape: &Json) -> Result<PixelBox, String> {
    if shape.as_object().is_none() {
        return Err(format!("the shape is {}, not an object", shape.kind()));
    }
    let name = shape.get("name").and_then(Json::as_str).ok_or("the shape has no \"name\"")?;
    let number = |key: &str| -> Result<f64, String> {
        match shape.get(key) {
            None => Err(format!("{name} has no \"{key}\"")),
            Some(value) => {
                value.as_number().ok_or_else(|| format!("{name} \"{key}\" {} is not a number", value.brief()))
            }
        }
    };
    match name {
        "rect" => box_from_xywh(number("x")?, number("y")?, number("width")?, number("height")?),
        "circle" => {
            let (cx, cy, r) = (number("cx")?, number("cy")?, number("r")?);
            if r <= 0.0 {
                return Err(format!("circle radius {r} is not positive"));
            }
            box_from_corners(cx - r, cy - r, cx + r, cy + r)
        }
        "ellipse" => {
            let (cx, cy, rx, ry) = (number("cx")?, number("cy")?, number("rx")?, number("ry")?);
            if rx <= 0.0 || ry <= 0.0 {
                return Err(format!("ellipse radii {rx}, {ry} are not both positive"));
            }
            // VIA 2 may rotate an ellipse by theta (radians); the bounding box of the
            // rotated ellipse has half-sides √(rx²cos²θ + ry²sin²θ) and √(rx²sin²θ + ry²cos²θ).
            let theta = match shape.get("theta") {
                None => 0.0,
                Some(_) => number("theta")?,
            };
            let (sin, cos) = theta.sin_cos();
            let half_w = (rx * rx * cos * cos + ry * ry * sin * sin).sqrt();
            let half_h = (rx * rx * sin * sin + ry * ry * cos * cos).sqrt();
            box_from_corners(cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        }
        "polygon" | "polyline" => {
            let points = |key: &str| -> Result<Vec<f64>, String> {
                let list = shape.get(key).ok_or_else(|| format!("{name} has no \"{key}\""))?;
                let list = list.as_array().ok_or_else(|| format!("{name} \"{key}\" is {}, not a list", list.kind()))?;
                list.iter()
                    .map(|v| v.as_number().ok_or_else(|| format!("{name} \"{key}\" holds {}, not a number", v.brief())))
                    .collect()
            };
            let (xs, ys) = (points("all_points_x")?, points("all_points_y")?);
            if xs.len() != ys.len() {
                return Err(format!("{name} has {} x and {} y coordinates", xs.len(), ys.len()));
            }
            if xs.is_empty() {
                return Err(format!("{name} has no points"));
            }
            let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            box_from_corners(min(&xs), min(&ys), max(&xs), max(&ys))
        }
        "point" => Err("a point has no extent, and a box is needed".into()),
        other => Err(format!("the shape {other:?} is not supported (rect, polygon, polyline, circle, ellipse are)")),
    }
}

/// The label from region attributes: the named attribute, or else the first whose
/// value can be a label. Text is a label; a checkbox attribute (an object of
/// option → true/false) is one when exactly one option is ticked.
fn label(attributes: &Json, wanted: Option<&str>) -> Result<String, String> {
    let fields =
        attributes.as_object().ok_or_else(|| format!("region attributes are {}, not an object", attributes.kind()))?;
    match wanted {
        Some(wanted) => {
            let value = attributes.get(wanted).ok_or_else(|| format!("region attributes have no {wanted:?}"))?;
            label_value(value).ok_or_else(|| format!("region attribute {wanted:?} ({}) is not a label", value.brief()))
        }
        None if fields.is_empty() => Err("region attributes are empty; a label is needed".into()),
        None => fields
            .iter()
            .find_map(|(_, value)| label_value(value))
            .ok_or_else(|| "no region attribute holds a label".to_owned()),
    }
}

fn label_value(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Json::Number(n) => Some(n.to_string()),
        Json::Object(options) => {
            let mut ticked = options.iter().filter(|(_, v)| *v == Json::Bool(true)).map(|(k, _)| k.trim());
            match (ticked.next(), ticked.next()) {
                (Some(only), None) if !only.is_empty() => Some(only.to_owned()),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{AnnotationFormat, ParseOptions, ParsedAnnotations, parse, parse_with_options};
    use crate::data::annotations::test_support::*;

    pub(in super::super) const CSV_SAMPLE: &str = r#"filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes
img1.jpg,12345,"{}",2,0,"{""name"":""rect"",""x"":10,""y"":20,""width"":30,""height"":40}","{""label"":""cat""}"
img1.jpg,12345,"{}",2,1,"{""name"":""polygon"",""all_points_x"":[5,25,15,8],""all_points_y"":[40,42,60,55]}","{""label"":""dog""}"
img2.jpg,999,"{}",0,0,"{}","{}"
img3.jpg,777,"{}",1,0,"{""name"":""circle"",""cx"":50,""cy"":60,""r"":10}","{""type"":""animal"",""label"":""bird""}"
img4.jpg,555,"{}",1,0,"{""name"":""ellipse"",""cx"":100,""cy"":80,""rx"":20,""ry"":10}","{""label"":""fish""}"
"#;

    pub(in super::super) const JSON_SAMPLE: &str = r#"{
  "img1.jpg12345": {
    "filename": "img1.jpg",
    "size": 12345,
    "regions": [
      {"shape_attributes": {"name": "rect", "x": 10, "y": 20, "width": 30.5, "height": 40},
       "region_attributes": {"label": "cat"}},
      {"shape_attributes": {"name": "polyline", "all_points_x": [100, 140, 120], "all_points_y": [10, 12, 30]},
       "region_attributes": {"species": {"dog": true, "cat": false}}}
    ],
    "file_attributes": {}
  },
  "img2.jpg999": {"filename": "img2.jpg", "size": 999, "regions": [], "file_attributes": {}}
}"#;

    const CSV_HEADER: &str =
        "filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes\n";

    /// A VIA CSV with one region row per (shape, attributes) pair, all for a.jpg;
    /// JSON is written with plain quotes and escaped here.
    fn csv_rows(rows: &[(&str, &str)]) -> String {
        let mut text = CSV_HEADER.to_owned();
        for (i, (shape, attributes)) in rows.iter().enumerate() {
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            text.push_str(&format!("a.jpg,100,{{}},{},{i},{},{}\n", rows.len(), quote(shape), quote(attributes)));
        }
        text
    }

    fn via_csv(text: &str) -> ParsedAnnotations {
        parse(AnnotationFormat::ViaCsv, "via.csv", text.as_bytes()).unwrap()
    }

    fn csv_reasons(text: &str) -> Vec<String> {
        via_csv(text).problems.into_iter().map(|p| p.reason).collect()
    }

    fn via_json(text: &str) -> Result<ParsedAnnotations, String> {
        parse(AnnotationFormat::ViaJson, "via.json", text.as_bytes())
    }

    #[test]
    fn reads_via_csv_export() {
        let parsed = via_csv(CSV_SAMPLE);
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(
            parsed.images,
            vec![
                image(
                    "img1.jpg",
                    vec![
                        // x=10, y=20, w=30, h=40.
                        lb("cat", pb(10.0, 20.0, 40.0, 60.0)),
                        // Polygon x in {5,25,15,8}, y in {40,42,60,55}.
                        lb("dog", pb(5.0, 40.0, 25.0, 60.0)),
                    ]
                ),
                image("img2.jpg", vec![]),
                // Circle at (50, 60), radius 10; "label" is named after "type" but the
                // first attribute wins without an option.
                image("img3.jpg", vec![lb("animal", pb(40.0, 50.0, 60.0, 70.0))]),
                // Unrotated ellipse at (100, 80), radii 20 and 10.
                image("img4.jpg", vec![lb("fish", pb(80.0, 70.0, 120.0, 90.0))]),
            ]
        );
    }

    #[test]
    fn named_label_attribute_is_used() {
        let options = ParseOptions { label_attribute: Some("label".into()) };
        let parsed = parse_with_options(AnnotationFormat::ViaCsv, "via.csv", CSV_SAMPLE.as_bytes(), &options).unwrap();
        let img3 = parsed.images.iter().find(|i| i.image == "img3.jpg").unwrap();
        assert_eq!(img3.boxes, vec![lb("bird", pb(40.0, 50.0, 60.0, 70.0))]);

        let options = ParseOptions { label_attribute: Some("species".into()) };
        let parsed = parse_with_options(AnnotationFormat::ViaCsv, "via.csv", CSV_SAMPLE.as_bytes(), &options).unwrap();
        assert_eq!(parsed.problems.len(), 4);
        assert_eq!(parsed.problems[0].reason, "row 2 (img1.jpg): region attributes have no \"species\"");
        assert_eq!(parsed.images, vec![image("img2.jpg", vec![])]);
    }

    #[test]
    fn via1_csv_header_with_hash() {
        let text = "#filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes\n\
                    a.jpg,1,{},1,0,\"{\"\"name\"\":\"\"rect\"\",\"\"x\"\":0,\"\"y\"\":0,\"\"width\"\":5,\"\"height\"\":6}\",\"{\"\"name\"\":\"\"cup\"\"}\"\n";
        assert_eq!(via_csv(text).images, vec![image("a.jpg", vec![lb("cup", pb(0.0, 0.0, 5.0, 6.0))])]);
    }

    #[test]
    fn via_csv_shape_problems() {
        let cat = r#"{"label":"cat"}"#;
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"point","cx":5,"cy":5}"#, cat)])),
            ["row 2 (a.jpg): a point has no extent, and a box is needed"]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"rect","x":10,"y":20,"width":0,"height":40}"#, cat)])),
            ["row 2 (a.jpg): width 0 is not positive"]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"rect","x":10,"y":20,"width":30,"height":-4}"#, cat)])),
            ["row 2 (a.jpg): height -4 is not positive"]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"rect","x":10,"y":20,"width":30}"#, cat)])),
            ["row 2 (a.jpg): rect has no \"height\""]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"rect","x":"ten","y":20,"width":30,"height":4}"#, cat)])),
            ["row 2 (a.jpg): rect \"x\" \"ten\" is not a number"]
        );
        assert_eq!(csv_reasons(&csv_rows(&[(r#"{"x":1}"#, cat)])), ["row 2 (a.jpg): the shape has no \"name\""]);
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"star"}"#, cat)])),
            ["row 2 (a.jpg): the shape \"star\" is not supported (rect, polygon, polyline, circle, ellipse are)"]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"polygon","all_points_x":[1,2,3],"all_points_y":[1,2]}"#, cat)])),
            ["row 2 (a.jpg): polygon has 3 x and 2 y coordinates"]
        );
        // All points on one line: no height.
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"polygon","all_points_x":[1,5,9],"all_points_y":[7,7,7]}"#, cat)])),
            ["row 2 (a.jpg): ymax 7 is not greater than ymin 7"]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(r#"{"name":"circle","cx":5,"cy":5,"r":0}"#, cat)])),
            ["row 2 (a.jpg): circle radius 0 is not positive"]
        );
        assert_eq!(csv_reasons(&csv_rows(&[(r#"{"name":"rect""#, cat)])).len(), 1);
    }

    #[test]
    fn via_csv_label_problems() {
        let rect = r#"{"name":"rect","x":1,"y":2,"width":3,"height":4}"#;
        assert_eq!(
            csv_reasons(&csv_rows(&[(rect, "{}")])),
            ["row 2 (a.jpg): region attributes are empty; a label is needed"]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(rect, r#"{"label":""}"#)])),
            ["row 2 (a.jpg): no region attribute holds a label"]
        );
        // Two ticked checkboxes do not make one label.
        assert_eq!(
            csv_reasons(&csv_rows(&[(rect, r#"{"kind":{"cat":true,"dog":true}}"#)])),
            ["row 2 (a.jpg): no region attribute holds a label"]
        );
        assert_eq!(
            csv_reasons(&csv_rows(&[(rect, "[1]")])),
            ["row 2 (a.jpg): region attributes are an array, not an object"]
        );
        // A good region and a bad one for the same image: the image is left out.
        let parsed = via_csv(&csv_rows(&[(rect, r#"{"label":"cat"}"#), (rect, "{}")]));
        assert!(parsed.images.is_empty());
        assert_eq!(parsed.problems.len(), 1);
        assert!(parsed.problems[0].reason.starts_with("row 3 (a.jpg)"));
    }

    #[test]
    fn via_csv_row_problems() {
        let text = format!("{CSV_HEADER},1,{{}},0,0,\"{{}}\",\"{{}}\"\nb.jpg,1,{{}},2,0,\"{{}}\",\"{{}}\"\nc.jpg,1\n");
        let parsed = via_csv(&text);
        assert_eq!(
            parsed.problems.iter().map(|p| p.reason.as_str()).collect::<Vec<_>>(),
            ["row 2 has no filename", "row 3 (b.jpg): region_count is 2 but region_shape_attributes is empty"]
        );
        // A short row has no regions.
        assert_eq!(parsed.images, vec![image("c.jpg", vec![])]);
    }

    #[test]
    fn via_csv_unreadable_files() {
        assert!(parse(AnnotationFormat::ViaCsv, "via.csv", b"").is_err());
        let err = parse(AnnotationFormat::ViaCsv, "via.csv", b"filename,label,xmin,ymin,xmax,ymax\n").unwrap_err();
        assert!(err.contains("region_shape_attributes") && err.contains("region_attributes"), "{err}");
    }

    #[test]
    fn reads_via_json_export() {
        let parsed = via_json(JSON_SAMPLE).unwrap();
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(
            parsed.images,
            vec![
                image(
                    "img1.jpg",
                    vec![
                        lb("cat", pb(10.0, 20.0, 40.5, 60.0)),
                        // Polyline x in {100,140,120}, y in {10,12,30}; a ticked checkbox.
                        lb("dog", pb(100.0, 10.0, 140.0, 30.0)),
                    ]
                ),
                image("img2.jpg", vec![]),
            ]
        );
    }

    #[test]
    fn reads_via2_project_and_via1_regions() {
        let project = r#"{
          "_via_settings": {"ui": {}},
          "_via_img_metadata": {
            "b.png42": {"filename": "b.png", "size": 42, "file_attributes": {},
              "regions": [{"shape_attributes": {"name": "rect", "x": 0, "y": 0, "width": 8, "height": 9},
                           "region_attributes": {"class": "mug"}}]},
            "a.png7": {"filename": "a.png", "size": 7, "file_attributes": {},
              "regions": {"0": {"shape_attributes": {"name": "circle", "cx": 4, "cy": 4, "r": 2},
                                "region_attributes": {"class": "coin"}},
                          "1": {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 2, "height": 2},
                                "region_attributes": {"class": "pin"}}}}
          },
          "_via_attributes": {"region": {}, "file": {}}
        }"#;
        let parsed = via_json(project).unwrap();
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(
            parsed.images,
            vec![
                // File order, not key order.
                image("b.png", vec![lb("mug", pb(0.0, 0.0, 8.0, 9.0))]),
                image("a.png", vec![lb("coin", pb(2.0, 2.0, 6.0, 6.0)), lb("pin", pb(1.0, 1.0, 3.0, 3.0))]),
            ]
        );
    }

    #[test]
    fn rotated_ellipse_gets_its_bounding_box() {
        // Radii 20 and 10 turned by 90°: the box is 20 wide, 40 tall.
        let text = r#"{"a": {"filename": "a.jpg", "regions": [{"shape_attributes":
            {"name": "ellipse", "cx": 100, "cy": 80, "rx": 20, "ry": 10, "theta": 1.5707963267948966},
            "region_attributes": {"l": "egg"}}]}}"#;
        let parsed = via_json(text).unwrap();
        let b = parsed.images[0].boxes[0].bbox;
        for (got, want) in [(b.x_min, 90.0), (b.y_min, 60.0), (b.x_max, 110.0), (b.y_max, 100.0)] {
            assert!((got - want).abs() < 1e-3, "{b:?}");
        }
    }

    #[test]
    fn via_json_problems() {
        let text = r#"{
          "x1": {"size": 3, "regions": []},
          "x2": {"filename": "p.jpg", "regions": [{"shape_attributes": {"name": "point", "cx": 3, "cy": 4},
                                                  "region_attributes": {"l": "dot"}}]},
          "x3": {"filename": "q.jpg", "regions": [{"region_attributes": {"l": "dot"}}]},
          "x4": {"filename": "r.jpg"},
          "x5": {"filename": "s.jpg", "regions": 5},
          "x6": {"filename": "t.jpg", "regions": [{"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 2, "height": 2}}]},
          "x7": {"filename": "ok.jpg", "regions": []}
        }"#;
        let parsed = via_json(text).unwrap();
        assert_eq!(
            parsed.problems.iter().map(|p| p.reason.as_str()).collect::<Vec<_>>(),
            [
                "entry \"x1\" has no filename",
                "p.jpg: region 1: a point has no extent, and a box is needed",
                "q.jpg: region 1 has no shape_attributes",
                "r.jpg: the entry has no \"regions\"",
                "s.jpg: \"regions\" is a number, not a list",
                "t.jpg: region 1: region attributes are empty; a label is needed",
            ]
        );
        assert_eq!(parsed.images, vec![image("ok.jpg", vec![])]);
    }

    #[test]
    fn via_json_unreadable_files() {
        assert!(via_json("").is_err());
        assert!(via_json("{\"a\": ").is_err());
        assert!(via_json("[1, 2]").unwrap_err().contains("an array"));
        assert!(via_json(r#"{"_via_img_metadata": []}"#).is_err());
        // A COCO file is not VIA.
        assert!(via_json(r#"{"images": [], "annotations": [], "categories": []}"#).is_err());
        // An export of a project without images is empty, not broken.
        assert_eq!(via_json("{}").unwrap(), ParsedAnnotations::default());
    }
}
