//! Pascal VOC XML as LabelImg writes it: one `<annotation>` per image with
//! `<filename>`, `<size>` and `<object>`s holding a `<name>` and a `<bndbox>`.
//! Coordinates are taken as written (no VOC 1-based adjustment), since LabelImg and
//! most converters write plain pixel corners.

use roxmltree::{Document, Node};

use super::{Collector, box_from_corners, image_size, parse_number};

/// The most XML nodes (elements, texts, comments) one VOC file may have. An object takes about
/// twenty, so this allows ten thousand boxes on one image, and keeps a file of tiny elements
/// (`<a/><a/>…`, some 70 bytes of tree for every 4 of text) from growing tenfold in memory.
const MAX_NODES: u32 = 200_000;

pub(super) fn parse(text: &str, out: &mut Collector) -> Result<(), String> {
    // roxmltree refuses DTDs by default, so entity expansion cannot blow up.
    let options = roxmltree::ParsingOptions { nodes_limit: MAX_NODES, ..roxmltree::ParsingOptions::default() };
    let doc = Document::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::NodesLimitReached => format!("the file has more than {MAX_NODES} XML nodes"),
        e => format!("not well-formed XML: {e}"),
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "annotation" {
        return Err(format!("the root element is <{}>, not <annotation>", root.tag_name().name()));
    }

    // <path> is the labeller's own disk path; it only stands in when <filename> is missing.
    let image = match child_text(root, "filename")
        .filter(|s| !s.is_empty())
        .or_else(|| child_text(root, "path").filter(|s| !s.is_empty()))
    {
        Some(name) => name,
        None => {
            out.problem("the annotation has no <filename>, so its boxes cannot be matched to an image".into());
            return Ok(());
        }
    };
    out.image(image);

    if let Some(size) = child(root, "size") {
        out.stated_size(image, image, read_size(size));
    }

    for (i, object) in root.children().filter(|n| n.is_element() && n.tag_name().name() == "object").enumerate() {
        let n = i + 1;
        match read_object(object, n) {
            Ok((label, bbox)) => out.add_box(image, label, bbox),
            Err(reason) => out.spoil(image, format!("{image}: {reason}")),
        }
    }
    Ok(())
}

fn child<'a, 'input>(node: Node<'a, 'input>, name: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|n| n.is_element() && n.tag_name().name() == name)
}

/// The trimmed text of the first child element called `name`; "" when it is empty.
fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, name).map(|n| n.text().unwrap_or("").trim())
}

fn read_size(size: Node) -> Result<(u32, u32), String> {
    let mut sides = [0.0; 2];
    for (side, tag) in sides.iter_mut().zip(["width", "height"]) {
        let text = child_text(size, tag).ok_or_else(|| format!("<size> has no <{tag}>"))?;
        *side = parse_number(text).ok_or_else(|| format!("<size> <{tag}> {text:?} is not a number"))?;
    }
    image_size(sides[0], sides[1]).map_err(|e| format!("<size> {e}"))
}

fn read_object<'a>(object: Node<'a, '_>, n: usize) -> Result<(&'a str, super::PixelBox), String> {
    let label = child_text(object, "name").filter(|s| !s.is_empty()).ok_or(format!("object {n} has no <name>"))?;
    let bndbox = child(object, "bndbox").ok_or(format!("object {n} ({label}) has no <bndbox>"))?;
    let mut corners = [0.0; 4];
    for (corner, tag) in corners.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
        let text = child_text(bndbox, tag).ok_or(format!("object {n} ({label}) has no <{tag}>"))?;
        *corner =
            parse_number(text).ok_or_else(|| format!("object {n} ({label}): <{tag}> {text:?} is not a number"))?;
    }
    let [x_min, y_min, x_max, y_max] = corners;
    let bbox = box_from_corners(x_min, y_min, x_max, y_max).map_err(|e| format!("object {n} ({label}): {e}"))?;
    Ok((label, bbox))
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{AnnotationFormat, ImageBoxes, LabeledBox, PixelBox, parse};

    pub(in super::super) const SAMPLE: &str = r#"<annotation>
	<folder>images</folder>
	<filename>dog_001.jpg</filename>
	<path>C:\Users\me\images\dog_001.jpg</path>
	<source>
		<database>Unknown</database>
	</source>
	<size>
		<width>500</width>
		<height>375</height>
		<depth>3</depth>
	</size>
	<segmented>0</segmented>
	<object>
		<name>dog</name>
		<pose>Unspecified</pose>
		<truncated>0</truncated>
		<difficult>0</difficult>
		<bndbox>
			<xmin>48.0</xmin>
			<ymin>240</ymin>
			<xmax>195.5</xmax>
			<ymax>371</ymax>
		</bndbox>
	</object>
	<object>
		<name> person </name>
		<bndbox>
			<xmin>8</xmin>
			<ymin>12</ymin>
			<xmax>352</xmax>
			<ymax>298</ymax>
		</bndbox>
	</object>
</annotation>
"#;

    fn voc(text: &str) -> Result<super::super::ParsedAnnotations, String> {
        parse(AnnotationFormat::Voc, "dog_001.xml", text.as_bytes())
    }

    fn reasons(text: &str) -> Vec<String> {
        voc(text).unwrap().problems.into_iter().map(|p| p.reason).collect()
    }

    /// A one-object file with the given bndbox body.
    fn with_bndbox(bndbox: &str) -> String {
        format!(
            "<annotation><filename>a.jpg</filename><object><name>cat</name><bndbox>{bndbox}</bndbox></object></annotation>"
        )
    }

    #[test]
    fn reads_labelimg_file() {
        let parsed = voc(SAMPLE).unwrap();
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(
            parsed.images,
            vec![ImageBoxes {
                image: "dog_001.jpg".into(),
                size: Some((500, 375)),
                boxes: vec![
                    LabeledBox {
                        label: "dog".into(),
                        bbox: PixelBox { x_min: 48.0, y_min: 240.0, x_max: 195.5, y_max: 371.0 }
                    },
                    LabeledBox {
                        label: "person".into(),
                        bbox: PixelBox { x_min: 8.0, y_min: 12.0, x_max: 352.0, y_max: 298.0 }
                    },
                ],
            }]
        );
    }

    #[test]
    fn image_without_objects_or_size_is_a_negative_example() {
        let parsed = voc("<annotation><filename>empty.png</filename></annotation>").unwrap();
        assert_eq!(parsed.images, vec![ImageBoxes { image: "empty.png".into(), size: None, boxes: vec![] }]);
        assert!(parsed.problems.is_empty());
    }

    #[test]
    fn path_stands_in_for_a_missing_filename() {
        let parsed = voc("<annotation><path>/data/x/b.jpg</path><object><name>cat</name>\
             <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>")
        .unwrap();
        assert_eq!(parsed.images.len(), 1);
        assert_eq!(parsed.images[0].image, "/data/x/b.jpg");
        assert_eq!(parsed.images[0].boxes[0].bbox, PixelBox { x_min: 1.0, y_min: 2.0, x_max: 3.0, y_max: 4.0 });
    }

    #[test]
    fn missing_filename_is_a_problem() {
        let parsed = voc("<annotation><size><width>5</width><height>5</height></size></annotation>").unwrap();
        assert!(parsed.images.is_empty());
        assert_eq!(parsed.problems.len(), 1);
        assert_eq!(parsed.problems[0].file, "dog_001.xml");
        assert!(parsed.problems[0].reason.contains("no <filename>"));
    }

    #[test]
    fn missing_coordinate_spoils_the_image() {
        let text = "<annotation><filename>img3.jpg</filename>\
            <object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>\
            <object><name>dog</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax></bndbox></object>\
            </annotation>";
        let parsed = voc(text).unwrap();
        assert!(parsed.images.is_empty(), "an image with a broken box is left out whole");
        assert_eq!(parsed.problems[0].reason, "img3.jpg: object 2 (dog) has no <ymax>");
    }

    #[test]
    fn malformed_objects_are_reported() {
        assert_eq!(
            reasons(&with_bndbox("<xmin>abc</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>")),
            ["a.jpg: object 1 (cat): <xmin> \"abc\" is not a number"]
        );
        assert_eq!(
            reasons(&with_bndbox("<xmin>30</xmin><ymin>2</ymin><xmax>10</xmax><ymax>4</ymax>")),
            ["a.jpg: object 1 (cat): xmax 10 is not greater than xmin 30"]
        );
        assert_eq!(
            reasons(&with_bndbox("<xmin>1</xmin><ymin>4</ymin><xmax>10</xmax><ymax>4</ymax>")),
            ["a.jpg: object 1 (cat): ymax 4 is not greater than ymin 4"]
        );
        assert_eq!(
            reasons(&with_bndbox("<xmin>nan</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>")),
            ["a.jpg: object 1 (cat): <xmin> \"nan\" is not a number"]
        );
        assert_eq!(
            reasons(&with_bndbox("<xmin></xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>")),
            ["a.jpg: object 1 (cat): <xmin> \"\" is not a number"]
        );
        assert_eq!(
            reasons("<annotation><filename>a.jpg</filename><object><bndbox/></object></annotation>"),
            ["a.jpg: object 1 has no <name>"]
        );
        assert_eq!(
            reasons("<annotation><filename>a.jpg</filename><object><name>cat</name></object></annotation>"),
            ["a.jpg: object 1 (cat) has no <bndbox>"]
        );
    }

    #[test]
    fn bad_size_is_dropped_but_boxes_stay() {
        for (size, reason) in [
            ("<width>0</width><height>0</height>", "a.jpg: <size> width 0 is not a positive whole number of pixels"),
            ("<width>-5</width><height>10</height>", "a.jpg: <size> width -5 is not a positive whole number of pixels"),
            ("<width>640</width>", "a.jpg: <size> has no <height>"),
            ("<width>640</width><height>wide</height>", "a.jpg: <size> <height> \"wide\" is not a number"),
        ] {
            let text = format!(
                "<annotation><filename>a.jpg</filename><size>{size}</size><object><name>cat</name>\
                 <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object></annotation>"
            );
            let parsed = voc(&text).unwrap();
            assert_eq!(parsed.problems.len(), 1);
            assert_eq!(parsed.problems[0].reason, format!("{reason}; the size is ignored"));
            assert_eq!(parsed.images.len(), 1);
            assert_eq!(parsed.images[0].size, None);
            assert_eq!(parsed.images[0].boxes.len(), 1);
        }
        // Floats written by some tools are whole sizes.
        let parsed = voc(
            "<annotation><filename>a.jpg</filename><size><width>640.0</width><height>480</height></size></annotation>",
        )
        .unwrap();
        assert_eq!(parsed.images[0].size, Some((640, 480)));
    }

    #[test]
    fn unreadable_files_are_errors() {
        assert!(voc("").is_err());
        assert!(voc("<annotation><filename>a.jpg</filename>").is_err());
        assert!(voc("not xml at all").is_err());
        assert!(voc("<annotations><image name=\"a.jpg\"/></annotations>").unwrap_err().contains("<annotations>"));
        // DTDs (and so entity expansion) are refused.
        let dtd =
            "<?xml version=\"1.0\"?><!DOCTYPE a [<!ENTITY x \"xx\">]><annotation><filename>&x;</filename></annotation>";
        assert!(voc(dtd).is_err());
    }

    #[test]
    fn a_file_of_too_many_nodes_is_refused() {
        let of = |n: usize| format!("<annotation><filename>a.jpg</filename>{}</annotation>", "<a/>".repeat(n));
        assert!(voc(&of(150_000)).is_ok());
        assert_eq!(voc(&of(250_000)).unwrap_err(), "the file has more than 200000 XML nodes");
    }
}
