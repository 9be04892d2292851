//! A plain box list: `filename,label,xmin,ymin,xmax,ymax`, one row per box, with an
//! optional header. With a header, the columns are found by name, which also reads
//! the TensorFlow object-detection layout (`filename,width,height,class,xmin,…`)
//! and takes its image size.
//!
//! A row with a file name and nothing else lists an image without boxes.

use super::{Collector, box_from_corners, image_size, parse_number};

#[derive(Clone, Copy, PartialEq)]
enum Column {
    File,
    Label,
    XMin,
    YMin,
    XMax,
    YMax,
    Width,
    Height,
}

const REQUIRED: [Column; 6] = [Column::File, Column::Label, Column::XMin, Column::YMin, Column::XMax, Column::YMax];

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::File => "filename",
            Column::Label => "label",
            Column::XMin => "xmin",
            Column::YMin => "ymin",
            Column::XMax => "xmax",
            Column::YMax => "ymax",
            Column::Width => "width",
            Column::Height => "height",
        }
    }

    /// Recognises a header cell, ignoring case, spaces, `_`, `-` and a leading `#`.
    fn recognise(cell: &str) -> Option<Column> {
        let key: String =
            cell.chars().filter(|c| !matches!(c, ' ' | '_' | '-' | '#')).collect::<String>().to_ascii_lowercase();
        Some(match key.as_str() {
            "filename" | "file" | "image" | "imagename" | "imagefile" | "imagepath" | "filepath" | "path" => {
                Column::File
            }
            "label" | "class" | "classname" | "category" | "categoryname" => Column::Label,
            "xmin" | "x1" | "left" => Column::XMin,
            "ymin" | "y1" | "top" => Column::YMin,
            "xmax" | "x2" | "right" => Column::XMax,
            "ymax" | "y2" | "bottom" => Column::YMax,
            "width" | "imagewidth" => Column::Width,
            "height" | "imageheight" => Column::Height,
            _ => return None,
        })
    }
}

/// Where each column is; the fixed order when the file has no header.
struct Layout {
    columns: Vec<(Column, usize)>,
}

impl Layout {
    fn fixed() -> Self {
        Self { columns: REQUIRED.iter().copied().zip(0..).collect() }
    }

    /// A header when at least two cells name known columns; then the required ones
    /// must all be there, or the file cannot be read.
    fn from_header(cells: &[&str]) -> Result<Option<Self>, String> {
        let mut columns: Vec<(Column, usize)> = Vec::new();
        for (at, cell) in cells.iter().enumerate() {
            if let Some(column) = Column::recognise(cell)
                && !columns.iter().any(|(known, _)| *known == column)
            {
                columns.push((column, at));
            }
        }
        if columns.len() < 2 {
            return Ok(None);
        }
        let missing: Vec<&str> =
            REQUIRED.iter().filter(|c| !columns.iter().any(|(known, _)| known == *c)).map(|c| c.name()).collect();
        if !missing.is_empty() {
            return Err(format!("the header {:?} lacks the column(s) {}", cells.join(","), missing.join(", ")));
        }
        Ok(Some(Self { columns }))
    }

    fn get<'r>(&self, column: Column, row: &[&'r str]) -> Option<&'r str> {
        let at = self.columns.iter().find(|(known, _)| *known == column)?.1;
        row.get(at).copied()
    }
}

pub(super) fn parse(text: &str, out: &mut Collector) -> Result<(), String> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let mut layout: Option<Layout> = None;
    for (i, record) in reader.records().enumerate() {
        let row = i + 1;
        let record = record.map_err(|e| format!("row {row} is not readable as CSV: {e}"))?;
        let cells: Vec<&str> = record.iter().collect();
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        let layout = match &layout {
            Some(layout) => layout,
            None => match Layout::from_header(&cells)? {
                Some(header) => {
                    layout = Some(header);
                    continue;
                }
                None => layout.insert(Layout::fixed()),
            },
        };
        read_row(row, &cells, layout, out);
    }
    Ok(())
}

fn read_row(row: usize, cells: &[&str], layout: &Layout, out: &mut Collector) {
    let field = |column| layout.get(column, cells).unwrap_or("");
    let image = field(Column::File);
    if image.is_empty() {
        out.problem(format!("row {row} has no filename"));
        return;
    }
    let at = format!("row {row} ({image})");
    out.image(image);

    let (width, height) = (field(Column::Width), field(Column::Height));
    if !width.is_empty() || !height.is_empty() {
        let size = match (parse_number(width), parse_number(height)) {
            (Some(w), Some(h)) => image_size(w, h),
            _ => Err(format!("width {width:?} and height {height:?} are not both numbers")),
        };
        out.stated_size(image, &at, size);
    }

    let label = field(Column::Label);
    let corners = [Column::XMin, Column::YMin, Column::XMax, Column::YMax];
    if label.is_empty() && corners.iter().all(|c| field(*c).is_empty()) {
        return;
    }
    if label.is_empty() {
        out.spoil(image, format!("{at}: no label"));
        return;
    }
    let mut values = [0.0; 4];
    for (value, column) in values.iter_mut().zip(corners) {
        let name = column.name();
        let Some(text) = layout.get(column, cells).filter(|t| !t.is_empty()) else {
            out.spoil(image, format!("{at}: no {name}"));
            return;
        };
        let Some(number) = parse_number(text) else {
            out.spoil(image, format!("{at}: {name} {text:?} is not a number"));
            return;
        };
        *value = number;
    }
    let [x_min, y_min, x_max, y_max] = values;
    match box_from_corners(x_min, y_min, x_max, y_max) {
        Ok(bbox) => out.add_box(image, label, bbox),
        Err(reason) => out.spoil(image, format!("{at}: {reason}")),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::{AnnotationFormat, ImageBoxes, ParsedAnnotations, parse};
    use crate::data::annotations::test_support::*;

    pub(in super::super) const SAMPLE: &str = "filename,label,xmin,ymin,xmax,ymax
img1.jpg,cat,10,20,110,220
img2.jpg,dog,0.5,1.5,30,40
img1.jpg,dog,5,6,7,8
img3.jpg,,,,,
";

    fn plain(text: &str) -> Result<ParsedAnnotations, String> {
        parse(AnnotationFormat::Csv, "boxes.csv", text.as_bytes())
    }

    fn reasons(text: &str) -> Vec<String> {
        plain(text).unwrap().problems.into_iter().map(|p| p.reason).collect()
    }

    #[test]
    fn reads_csv_with_header() {
        let parsed = plain(SAMPLE).unwrap();
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(
            parsed.images,
            vec![
                image("img1.jpg", vec![lb("cat", pb(10.0, 20.0, 110.0, 220.0)), lb("dog", pb(5.0, 6.0, 7.0, 8.0))]),
                image("img2.jpg", vec![lb("dog", pb(0.5, 1.5, 30.0, 40.0))]),
                image("img3.jpg", vec![]),
            ]
        );
    }

    #[test]
    fn reads_csv_without_header() {
        let parsed = plain("dir/a.png, bird ,1,2,3,4\n\nb.png,cat,10,10,20,30\n").unwrap();
        assert_eq!(parsed.problems, vec![]);
        assert_eq!(
            parsed.images,
            vec![
                image("dir/a.png", vec![lb("bird", pb(1.0, 2.0, 3.0, 4.0))]),
                image("b.png", vec![lb("cat", pb(10.0, 10.0, 20.0, 30.0))])
            ]
        );
    }

    #[test]
    fn header_order_is_followed() {
        // The TensorFlow object-detection layout, with image size.
        let text = "filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,640,480,car,100,50,300,200\n";
        assert_eq!(
            plain(text).unwrap().images,
            vec![ImageBoxes {
                image: "a.jpg".into(),
                size: Some((640, 480)),
                boxes: vec![lb("car", pb(100.0, 50.0, 300.0, 200.0))]
            }]
        );
        let text = "YMAX,XMAX,Label,Image,YMin,XMin\n40,30,cat,a.jpg,20,10\n";
        assert_eq!(plain(text).unwrap().images, vec![image("a.jpg", vec![lb("cat", pb(10.0, 20.0, 30.0, 40.0))])]);
    }

    #[test]
    fn header_missing_columns_is_an_error() {
        let err = plain("filename,label,x,y,w,h\na.jpg,cat,1,2,3,4\n").unwrap_err();
        assert!(err.contains("xmin, ymin, xmax, ymax"), "{err}");
        assert!(plain("filename,xmin,ymin,xmax,ymax\n").unwrap_err().contains("label"));
    }

    #[test]
    fn bad_rows_are_problems() {
        assert_eq!(reasons("a.jpg,cat,30,20,10,40\n"), ["row 1 (a.jpg): xmax 10 is not greater than xmin 30"]);
        assert_eq!(reasons("a.jpg,cat,10,40,30,40\n"), ["row 1 (a.jpg): ymax 40 is not greater than ymin 40"]);
        assert_eq!(reasons("a.jpg,cat,10,x,30,40\n"), ["row 1 (a.jpg): ymin \"x\" is not a number"]);
        assert_eq!(reasons("a.jpg,cat,10,inf,30,40\n"), ["row 1 (a.jpg): ymin \"inf\" is not a number"]);
        assert_eq!(reasons("a.jpg,cat,10,20,30\n"), ["row 1 (a.jpg): no ymax"]);
        assert_eq!(reasons("a.jpg,,10,20,30,40\n"), ["row 1 (a.jpg): no label"]);
        assert_eq!(reasons(",cat,10,20,30,40\n"), ["row 1 has no filename"]);
        assert_eq!(
            reasons("filename,label,xmin,ymin,xmax,ymax\nok.jpg,cat,1,2,3,4\nbad.jpg,cat,1,2,3,-4\n"),
            ["row 3 (bad.jpg): ymax -4 is not greater than ymin 2"]
        );
        assert_eq!(
            reasons("filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,0,480,car,1,2,3,4\n"),
            ["row 2 (a.jpg): width 0 is not a positive whole number of pixels; the size is ignored"]
        );
        assert_eq!(
            reasons(
                "filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,640,480,car,1,2,3,4\na.jpg,320,240,cat,1,2,3,4\n"
            ),
            ["a.jpg: size 320×240 conflicts with the size 640×480 stated earlier"]
        );
    }

    #[test]
    fn one_bad_row_leaves_its_image_out() {
        let parsed = plain("a.jpg,cat,1,2,3,4\nb.jpg,cat,1,2,3,4\na.jpg,dog,9,9,1,1\n").unwrap();
        assert_eq!(parsed.images, vec![image("b.jpg", vec![lb("cat", pb(1.0, 2.0, 3.0, 4.0))])]);
        assert_eq!(parsed.problems.len(), 1);
    }

    #[test]
    fn empty_file_has_nothing() {
        assert_eq!(plain("").unwrap(), ParsedAnnotations::default());
        assert_eq!(plain("filename,label,xmin,ymin,xmax,ymax\n").unwrap(), ParsedAnnotations::default());
    }
}
