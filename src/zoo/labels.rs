//! Class labels: a TSV of `index, WordNet id, name` with a header line.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Label {
    pub index: usize,
    pub class_id: String,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels(Vec<Label>);

impl Labels {
    pub fn new(labels: Vec<Label>) -> Self {
        Self(labels)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Label> {
        self.0.get(index)
    }

    /// Reads a label TSV. Rows must be numbered 0, 1, 2, … in order.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = fs_err::read_to_string(path).map_err(|e| e.to_string())?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut labels = Vec::new();
        for (line_no, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let [index, class_id, label] = fields[..] else {
                return Err(format!("line {}: expected 3 tab-separated fields (index, class id, name)", line_no + 1));
            };
            let index: usize =
                index.trim().parse().map_err(|_| format!("line {}: index {index:?} is not a number", line_no + 1))?;
            if index != labels.len() {
                return Err(format!("line {}: expected index {}, found {index}", line_no + 1, labels.len()));
            }
            labels.push(Label { index, class_id: class_id.trim().to_owned(), label: label.trim().to_owned() });
        }
        if labels.is_empty() {
            return Err("no labels after the header line".into());
        }
        Ok(Self(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_in_order() {
        let labels = Labels::parse("index\twnid\tname\n0\tn01\tcat\n1\tn02\tdog\n").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels.get(1).unwrap().label, "dog");
    }

    #[test]
    fn refuses_gaps_and_short_rows() {
        assert!(Labels::parse("h\n0\tn01\tcat\n2\tn02\tdog\n").unwrap_err().contains("expected index 1"));
        assert!(Labels::parse("h\n0\tcat\n").unwrap_err().contains("3 tab-separated"));
    }
}
