//! Ingestion: every file of an upload is checked (a decodable image within limits),
//! hashed, stored once per content, placed in its class and split. Bad files are
//! skipped and reported with the reason; the dataset is refused only when nothing usable
//! remains. Storage is the caller's (`store_image`), keyed by content hash, so no name
//! from an archive ever becomes a path on disk.
//!
//! The class comes from the class folder, unless the upload carries bounding-box
//! annotations (VOC, VIA, COCO, CSV): then it is a box dataset, every image needs a
//! box, and the class is the label of its (largest) box.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::annotations::{self, AnnotationFormat, AnnotationProblem, ImageBoxes, LabeledBox, PixelBox};
use super::archive::{ArchiveEntry, ArchiveError, ArchiveFile};
use super::layout::{Placement, place_in_classes, shared_top};
pub use super::report::{Capped, Duplicate, IngestReport, Rejected};
use super::split::{Split, SplitFractions, assign_split};
use crate::vision::{DecodeLimits, decode_image};

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub decode: DecodeLimits,
    pub seed: u64,
    pub splits: SplitFractions,
    /// Classes with fewer images are reported as too small.
    pub min_images_per_class: usize,
    /// The annotation format the uploader named. It also claims files that detection
    /// would miss (a CSV or JSON it cannot tell apart); `None` recognises each file.
    pub annotation_format: Option<AnnotationFormat>,
    /// Bytes of all the annotation files of one upload together. They are held in memory
    /// until every image is known; more fails the upload.
    pub max_annotation_bytes: u64,
}

/// The default of [`IngestOptions::max_annotation_bytes`]: four annotation files at the
/// per-file limit ([`annotations::MAX_ANNOTATION_BYTES`]), or a VOC file for each of a quarter
/// of a million images.
pub const DEFAULT_MAX_ANNOTATION_BYTES: u64 = 256 * 1024 * 1024;

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            decode: DecodeLimits::default(),
            seed: 0,
            splits: SplitFractions::default(),
            min_images_per_class: 10,
            annotation_format: None,
            max_annotation_bytes: DEFAULT_MAX_ANNOTATION_BYTES,
        }
    }
}

/// One accepted image.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestedImage {
    pub sha256: String,
    pub path: String,
    pub class_idx: usize,
    pub split: Split,
    pub width: u32,
    pub height: u32,
    /// The image's box in pixels of the upright image, in a box dataset; `None` in a
    /// class-folder dataset.
    pub bbox: Option<PixelBox>,
}

#[derive(Debug)]
pub struct IngestOutcome {
    pub classes: Vec<String>,
    pub images: Vec<IngestedImage>,
    pub report: IngestReport,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the upload holds no usable images ({0})")]
    NoImages(String),
    #[error("a dataset needs at least two classes; found {0}")]
    TooFewClasses(usize),
    #[error("storing an image failed: {0}")]
    Storage(String),
}

/// Why an upload or a folder import made no dataset: the archive could not be read, or
/// what it held could not make a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetRefusal {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

impl DatasetRefusal {
    /// A stable name for the kind of refusal (the problem type's last part).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Archive(ArchiveError::NotAnArchive) => "not-an-archive",
            Self::Archive(ArchiveError::Empty) => "empty-archive",
            Self::Archive(ArchiveError::TooManyEntries { .. }) => "too-many-archive-entries",
            Self::Archive(ArchiveError::TooLarge { .. }) => "archive-too-large",
            Self::Archive(ArchiveError::Corrupt(_)) => "corrupt-archive",
            Self::Archive(ArchiveError::Io(_)) => "unreadable-archive",
            // An entry the ingestion refused: annotations over their budget, a failed store.
            Self::Archive(ArchiveError::Visitor(_)) => "invalid-dataset",
            Self::Ingest(IngestError::NoImages(_)) => "no-usable-images",
            Self::Ingest(IngestError::TooFewClasses(_)) => "too-few-classes",
            Self::Ingest(IngestError::Storage(_)) => "storage-failed",
        }
    }
}

struct Accepted {
    sha256: String,
    path: String,
    width: u32,
    height: u32,
    bbox: Option<PixelBox>,
}

/// An annotation file, held until every image is known so its names can be matched.
struct AnnotationFile {
    path: String,
    format: AnnotationFormat,
    bytes: Vec<u8>,
}

/// Keeps an accepted image's bytes under its sha256; an error ends the ingestion.
pub type StoreImage<'s> = &'s mut dyn FnMut(&str, &[u8]) -> Result<(), String>;

/// Collects entries one at a time (`add`), then decides classes and splits (`finish`).
pub struct Ingestor<'s> {
    options: IngestOptions,
    store_image: StoreImage<'s>,
    accepted: Vec<Accepted>,
    annotation_files: Vec<AnnotationFile>,
    /// Bytes of `annotation_files`.
    annotation_bytes: u64,
    first_path_of: HashMap<String, String>,
    /// Every duplicate's path and the path of the copy kept (the report lists only the
    /// first few): an annotation may name either.
    duplicate_paths: Vec<(String, String)>,
    report: IngestReport,
}

impl<'s> Ingestor<'s> {
    /// `store_image(sha256, bytes)` keeps the encoded image; it is called once per new content.
    pub fn new(options: IngestOptions, store_image: StoreImage<'s>) -> Self {
        Self {
            options,
            store_image,
            accepted: Vec::new(),
            annotation_files: Vec::new(),
            annotation_bytes: 0,
            first_path_of: HashMap::new(),
            duplicate_paths: Vec::new(),
            report: IngestReport::default(),
        }
    }

    /// Takes one archive entry. An `Err` ends the ingestion: a storage failure, or annotation
    /// files over [`IngestOptions::max_annotation_bytes`].
    pub fn add(&mut self, entry: ArchiveEntry) -> Result<(), String> {
        self.report.files_seen += 1;
        let ArchiveFile { path, bytes } = match entry {
            ArchiveEntry::File(file) => file,
            ArchiveEntry::Skipped { path, reason } => {
                self.report.rejected.push(Rejected { path, reason });
                return Ok(());
            }
        };
        if let Some(format) = annotation_format_of(&path, &bytes, self.options.annotation_format) {
            let limit = self.options.max_annotation_bytes;
            self.annotation_bytes = self.annotation_bytes.saturating_add(bytes.len() as u64);
            if self.annotation_bytes > limit {
                return Err(format!(
                    "the annotation files hold more than {limit} bytes in all, the limit per upload \
                     (--max-annotation-bytes); {path} brings them to {}",
                    self.annotation_bytes
                ));
            }
            self.annotation_files.push(AnnotationFile { path, format, bytes });
            return Ok(());
        }
        // A copy of an accepted image is known by its hash alone: no need to decode it again.
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(first) = self.first_path_of.get(&sha256) {
            self.report.duplicates.push(Duplicate { path: path.clone(), same_as: first.clone() });
            self.duplicate_paths.push((path, first.clone()));
            return Ok(());
        }
        let image = match decode_image(&bytes, &self.options.decode) {
            Ok(image) => image,
            Err(error) => {
                self.report.rejected.push(Rejected { path, reason: error.to_string() });
                return Ok(());
            }
        };
        (self.store_image)(&sha256, &bytes)?;
        self.first_path_of.insert(sha256.clone(), path.clone());
        self.accepted.push(Accepted { sha256, path, width: image.width(), height: image.height(), bbox: None });
        Ok(())
    }

    pub fn finish(mut self) -> Result<IngestOutcome, IngestError> {
        let had_annotation_files = !self.annotation_files.is_empty();
        let accepted = std::mem::take(&mut self.accepted);
        let (top_folder, by_class) = match self.read_annotations() {
            Some(described) => self.place_by_boxes(accepted, described),
            None => self.place_by_folders(accepted),
        };
        if by_class.is_empty() {
            let why = if !self.report.rejected.is_empty() {
                format!("all {} files were rejected; see the reasons in the report", self.report.rejected.total())
            } else if had_annotation_files {
                "the archive holds annotation files but no images".to_owned()
            } else {
                "the archive has no files".to_owned()
            };
            return Err(IngestError::NoImages(why));
        }
        if by_class.len() < 2 {
            return Err(IngestError::TooFewClasses(by_class.len()));
        }
        let classes: Vec<String> = by_class.keys().cloned().collect();
        let mut images = Vec::new();
        for (class_idx, (class, members)) in by_class.into_iter().enumerate() {
            let mut per_split = [0usize; 3];
            for accepted in members {
                let split = assign_split(&accepted.sha256, self.options.seed, &self.options.splits);
                per_split[Split::ALL.iter().position(|s| *s == split).unwrap_or(0)] += 1;
                images.push(IngestedImage {
                    sha256: accepted.sha256,
                    path: accepted.path,
                    class_idx,
                    split,
                    width: accepted.width,
                    height: accepted.height,
                    bbox: accepted.bbox,
                });
            }
            let total: usize = per_split.iter().sum();
            if total < self.options.min_images_per_class {
                self.report.warnings.push(format!(
                    "class {class:?} has {total} images, fewer than {}",
                    self.options.min_images_per_class
                ));
            }
            for (split, count) in Split::ALL.iter().zip(per_split) {
                let wanted = match split {
                    Split::Train => self.options.splits.train,
                    Split::Valid => self.options.splits.valid,
                    Split::Test => self.options.splits.test,
                };
                if count == 0 && wanted > 0.0 {
                    self.report.warnings.push(format!("class {class:?} has no images in the {} split", split.as_str()));
                }
            }
        }
        self.report.images = images.len();
        self.report.top_folder = top_folder;
        Ok(IngestOutcome { classes, images, report: self.report })
    }

    /// Class-folder layout: the class is the folder an image sits in.
    fn place_by_folders(&mut self, accepted: Vec<Accepted>) -> (Option<String>, BTreeMap<String, Vec<Accepted>>) {
        let paths: Vec<&str> = accepted.iter().map(|a| a.path.as_str()).collect();
        let (top_folder, placements) = place_in_classes(&paths);
        let mut by_class: BTreeMap<String, Vec<Accepted>> = BTreeMap::new();
        for (accepted, placement) in accepted.into_iter().zip(placements) {
            match placement {
                Placement::Class(class) => by_class.entry(class).or_default().push(accepted),
                Placement::Unplaced(reason) => self.report.rejected.push(Rejected { path: accepted.path, reason }),
            }
        }
        (top_folder, by_class)
    }

    /// Parses the kept annotation files. Returns the images they describe, each with
    /// the annotation file's path, or `None` when no file described any image: then
    /// the upload is a class-folder dataset, as if the files were not there.
    fn read_annotations(&mut self) -> Option<Vec<(String, ImageBoxes)>> {
        let mut described = Vec::new();
        let mut formats: Vec<AnnotationFormat> = Vec::new();
        let mut files = std::mem::take(&mut self.annotation_files);
        // Precedence: where files describe an image differently, the first one's boxes count.
        files.sort_by(|a, b| (precedence(a.format), &a.path).cmp(&(precedence(b.format), &b.path)));
        for file in files {
            match annotations::parse(file.format, &file.path, &file.bytes) {
                Err(reason) => self.report.annotation_problems.push(AnnotationProblem { file: file.path, reason }),
                Ok(parsed) => {
                    self.report.annotation_problems.absorb(parsed.problems);
                    if parsed.images.is_empty() {
                        continue;
                    }
                    if !formats.contains(&file.format) {
                        formats.push(file.format);
                    }
                    described.extend(parsed.images.into_iter().map(|image| (file.path.clone(), image)));
                }
            }
        }
        if described.is_empty() {
            return None;
        }
        formats.sort_by_key(|format| precedence(*format));
        self.report.annotations = Some(formats.iter().map(AnnotationFormat::as_str).collect::<Vec<_>>().join(", "));
        Some(described)
    }

    /// Box layout: each accepted image gets its largest box, and the box's label is its
    /// class; an image without a usable box is rejected.
    fn place_by_boxes(
        &mut self,
        accepted: Vec<Accepted>,
        described: Vec<(String, ImageBoxes)>,
    ) -> (Option<String>, BTreeMap<String, Vec<Accepted>>) {
        let paths: Vec<&str> = accepted.iter().map(|a| a.path.as_str()).collect();
        let position: HashMap<&str, usize> = paths.iter().enumerate().map(|(at, path)| (*path, at)).collect();
        // A duplicate's annotation describes the same pixels, so it counts for the kept copy.
        let aliases: Vec<(&str, usize)> = self
            .duplicate_paths
            .iter()
            .filter_map(|(path, same_as)| position.get(same_as.as_str()).map(|&at| (path.as_str(), at)))
            .collect();
        let index = ImageIndex::new(&paths, &aliases);
        let mut found: Vec<Vec<(String, ImageBoxes)>> = vec![Vec::new(); accepted.len()];
        for (file, image) in described {
            match index.find(&image.image) {
                Ok(at) => found[at].push((file, image)),
                Err(reason) => self.report.annotation_problems.push(AnnotationProblem { file, reason }),
            }
        }
        let top_folder = index.top.clone();

        let mut by_class: BTreeMap<String, Vec<Accepted>> = BTreeMap::new();
        let (mut agreed, mut disagreed) = (0usize, 0usize);
        for (mut image, found) in accepted.into_iter().zip(found) {
            match choose_box(&image.path, image.width, image.height, &found) {
                Ok(chosen) => {
                    if found.len() > 1 {
                        match chosen.disagreements.is_empty() {
                            true => agreed += 1,
                            false => disagreed += 1,
                        }
                    }
                    self.report.annotation_problems.extend(chosen.disagreements);
                    self.report.boxes_clipped += chosen.clipped.total();
                    self.report.annotation_problems.absorb(chosen.clipped);
                    self.report.images_with_several_boxes += usize::from(chosen.several);
                    image.bbox = Some(chosen.bbox);
                    by_class.entry(chosen.label).or_default().push(image);
                }
                Err(reason) => self.report.rejected.push(Rejected { path: image.path, reason }),
            }
        }
        match self.report.images_with_several_boxes {
            0 => {}
            1 => self.report.warnings.push("1 image has several boxes; the largest is used".to_owned()),
            n => self.report.warnings.push(format!("{n} images have several boxes; the largest of each is used")),
        }
        if agreed + disagreed > 0 {
            let first = self.report.annotations.as_deref().and_then(|list| list.split(", ").next()).unwrap_or("");
            self.report.warnings.push(format!(
                "{} images are described by more than one annotation file: {agreed} agree (their boxes are counted \
                 once), {disagreed} disagree (listed under annotation_problems; the first file in the order of \
                 annotations, here {first}, gives the boxes)",
                agreed + disagreed
            ));
        }
        (top_folder, by_class)
    }
}

/// The format to read `path` with when it is an annotation file rather than an image:
/// the named format when the extension fits it, else what [`annotations::detect`]
/// recognises (read as the named format, if one was named). Only `.xml`, `.csv` and
/// `.json` files are looked at, so images are never scanned as text.
fn annotation_format_of(path: &str, bytes: &[u8], named: Option<AnnotationFormat>) -> Option<AnnotationFormat> {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    let extension = file_name.rsplit_once('.')?.1.to_ascii_lowercase();
    if !matches!(extension.as_str(), "xml" | "csv" | "json") {
        return None;
    }
    if let Some(format) = named
        && extension_fits(format, &extension)
    {
        return Some(format);
    }
    let detected = annotations::detect(path, bytes)?;
    Some(named.unwrap_or(detected))
}

/// Whether a file with this (lower-case) extension can be in `format`.
fn extension_fits(format: AnnotationFormat, extension: &str) -> bool {
    match format {
        AnnotationFormat::Voc => extension == "xml",
        AnnotationFormat::ViaCsv | AnnotationFormat::Csv => extension == "csv",
        AnnotationFormat::ViaJson | AnnotationFormat::Coco => extension == "json",
    }
}

/// Finds the accepted image an annotation names. Labelling tools record names
/// relative to wherever the labeller kept the images, so besides the exact archive
/// path a name may omit the top folder that every image shares, or be just the file
/// name, as long as only one accepted image has it.
struct ImageIndex {
    exact: HashMap<String, usize>,
    below_top: HashMap<String, usize>,
    by_file_name: HashMap<String, Vec<usize>>,
    /// The first folder of every accepted image's path, when they all share one.
    top: Option<String>,
}

impl ImageIndex {
    /// `paths[i]` is accepted image `i`; `aliases` are other paths of the same images
    /// (duplicates), which match exactly or below the top folder but not by file name.
    fn new(paths: &[&str], aliases: &[(&str, usize)]) -> Self {
        let top = shared_top(paths);
        let everything = paths.iter().copied().zip(0..).chain(aliases.iter().copied());
        let mut exact = HashMap::new();
        let mut below_top = HashMap::new();
        for (path, at) in everything {
            exact.entry(path.to_owned()).or_insert(at);
            if let Some(rest) = top.as_deref().and_then(|top| path.strip_prefix(top)).and_then(|r| r.strip_prefix('/'))
            {
                below_top.entry(rest.to_owned()).or_insert(at);
            }
        }
        let mut by_file_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (at, path) in paths.iter().enumerate() {
            by_file_name.entry(file_name(path).to_owned()).or_default().push(at);
        }
        Self { exact, below_top, by_file_name, top }
    }

    /// The index of the image `name` means, or why there is none (a sentence for the
    /// annotation problems).
    fn find(&self, name: &str) -> Result<usize, String> {
        let name = name.trim();
        let name = name.strip_prefix("./").unwrap_or(name);
        if let Some(&at) = self.exact.get(name).or_else(|| self.below_top.get(name)) {
            return Ok(at);
        }
        match self.by_file_name.get(file_name(name)).map(Vec::as_slice) {
            Some([at]) => Ok(*at),
            Some(several) => Err(format!(
                "the annotation names image {name:?}, which matches {} images in the upload by file name; \
                 give its path in the archive",
                several.len()
            )),
            None => Err(format!("the annotation names image {name:?}, which is not in the upload")),
        }
    }
}

/// The last component of a path; annotation files written on Windows use `\`.
fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// The box an image is trained with, and what choosing it noticed.
#[derive(Debug, Clone, PartialEq)]
struct Chosen {
    label: String,
    bbox: PixelBox,
    /// More than one box was annotated.
    several: bool,
    /// A note (under the annotation file) for each box that was cut to the image.
    clipped: Capped<AnnotationProblem>,
    /// A problem for each further annotation file whose boxes differ from the used ones.
    disagreements: Vec<AnnotationProblem>,
}

/// A format's rank when several describe the same image: its place in
/// [`AnnotationFormat::ALL`], which puts a file per image (VOC) before a file for many.
fn precedence(format: AnnotationFormat) -> usize {
    AnnotationFormat::ALL.iter().position(|f| *f == format).unwrap_or(usize::MAX)
}

/// Picks the box for the image at `path`, decoded (upright) as `width`×`height`, from
/// the annotations that `found` for it, each with its annotation file. Err is the
/// reason the image is rejected.
fn choose_box(path: &str, width: u32, height: u32, found: &[(String, ImageBoxes)]) -> Result<Chosen, String> {
    if found.is_empty() {
        return Err("no box annotation for this image".to_owned());
    }
    // A stated size that differs means the boxes were drawn on another version of the
    // image (resized, or not turned upright), so their coordinates do not fit these pixels.
    for (file, image) in found {
        if let Some((w, h)) = image.size
            && (w, h) != (width, height)
        {
            return Err(format!(
                "{file} gives the image size as {w}×{h}, but the image is {width}×{height} (upright); \
                 the boxes were drawn on another version of it"
            ));
        }
    }
    let merged = annotations::merge_boxes(path, found);
    let file = merged.file.unwrap_or_default();
    let mut fitted = Vec::new();
    let mut clipped = Capped::default();
    for labeled in &merged.boxes {
        let (bbox, was_clipped) = annotations::fit_to_image(labeled.bbox, width, height)
            .map_err(|reason| format!("{reason} ({:?} in {file})", labeled.label))?;
        if was_clipped {
            clipped.push_with(|| AnnotationProblem {
                file: file.to_owned(),
                reason: format!(
                    "{path}: the {:?} box {} runs past the {width}×{height} image and was clipped to {}",
                    labeled.label,
                    corners(&labeled.bbox),
                    corners(&bbox)
                ),
            });
        }
        fitted.push(LabeledBox { label: labeled.label.clone(), bbox });
    }
    let Some(best) = annotations::largest(&fitted) else {
        return Err(format!("no box annotation for this image ({file} lists it without a box)"));
    };
    if best.label.is_empty() || best.label.chars().count() > 128 {
        return Err("the box label must be 1 to 128 characters".to_owned());
    }
    Ok(Chosen {
        label: best.label.clone(),
        bbox: best.bbox,
        several: fitted.len() > 1,
        clipped,
        disagreements: merged.disagreements,
    })
}

fn corners(bbox: &PixelBox) -> String {
    format!("({}, {}, {}, {})", bbox.x_min, bbox.y_min, bbox.x_max, bbox.y_max)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn pb(x_min: f32, y_min: f32, x_max: f32, y_max: f32) -> PixelBox {
        PixelBox { x_min, y_min, x_max, y_max }
    }

    fn boxes(image: &str, size: Option<(u32, u32)>, boxes: &[(&str, PixelBox)]) -> ImageBoxes {
        ImageBoxes {
            image: image.to_owned(),
            size,
            boxes: boxes.iter().map(|(label, bbox)| LabeledBox { label: (*label).to_owned(), bbox: *bbox }).collect(),
        }
    }

    #[test]
    fn names_match_exactly_below_the_top_folder_or_by_unique_file_name() {
        let paths = ["data/images/a.jpg", "data/images/b.jpg", "data/more/b.jpg", "data/more/c.png"];
        let index = ImageIndex::new(&paths, &[("data/copies/d.jpg", 3)]);
        assert_eq!(index.top.as_deref(), Some("data"));
        // The exact archive path.
        assert_eq!(index.find("data/images/b.jpg"), Ok(1));
        assert_eq!(index.find("data/more/b.jpg"), Ok(2));
        // The path without the shared top folder.
        assert_eq!(index.find("images/b.jpg"), Ok(1));
        assert_eq!(index.find("./more/b.jpg"), Ok(2));
        // A file name that only one image has, in any folder or none.
        assert_eq!(index.find("a.jpg"), Ok(0));
        assert_eq!(index.find("C:\\labelling\\c.png"), Ok(3));
        assert_eq!(index.find("elsewhere/a.jpg"), Ok(0));
        // A duplicate's path leads to the kept copy, but its bare name does not.
        assert_eq!(index.find("data/copies/d.jpg"), Ok(3));
        assert_eq!(index.find("copies/d.jpg"), Ok(3));
        assert!(index.find("d.jpg").unwrap_err().contains("not in the upload"));
        // A file name that two images have is ambiguous.
        let err = index.find("b.jpg").unwrap_err();
        assert!(err.contains("matches 2 images"), "{err}");
        // Case matters, as it does in the archive.
        assert!(index.find("A.jpg").unwrap_err().contains("\"A.jpg\", which is not in the upload"));
    }

    #[test]
    fn the_top_folder_is_only_dropped_when_every_image_shares_it() {
        assert_eq!(shared_top(&["x/a.jpg", "x/y/b.jpg"]).as_deref(), Some("x"));
        assert_eq!(shared_top(&["x/a.jpg", "y/b.jpg"]), None);
        assert_eq!(shared_top(&["x/a.jpg", "b.jpg"]), None);
        assert_eq!(shared_top(&[]), None);
        let index = ImageIndex::new(&["x/a.jpg", "y/a.jpg"], &[]);
        assert!(index.top.is_none());
        assert_eq!(index.find("x/a.jpg"), Ok(0));
        assert!(index.find("a.jpg").is_err());
    }

    #[test]
    fn the_largest_fitting_box_is_chosen_and_clipping_noted() {
        let found = vec![(
            "ann.xml".to_owned(),
            boxes("a.jpg", Some((40, 30)), &[("cat", pb(1.0, 1.0, 11.0, 11.0)), ("dog", pb(20.0, 10.0, 50.0, 30.0))]),
        )];
        let chosen = choose_box("a.jpg", 40, 30, &found).unwrap();
        // The dog box is 30×20 as drawn, 20×20 once clipped to x ≤ 40: still larger than 10×10.
        assert_eq!(chosen.label, "dog");
        assert_eq!(chosen.bbox, pb(20.0, 10.0, 40.0, 30.0));
        assert!(chosen.several);
        assert_eq!(chosen.clipped.len(), 1);
        assert_eq!(chosen.clipped[0].file, "ann.xml");
        assert!(chosen.clipped[0].reason.contains("clipped to (20, 10, 40, 30)"), "{:?}", chosen.clipped);
    }

    #[test]
    fn images_without_a_usable_box_are_refused() {
        assert_eq!(choose_box("a.jpg", 40, 30, &[]).unwrap_err(), "no box annotation for this image");
        let listed_empty = [("ann.csv".to_owned(), boxes("a.jpg", None, &[]))];
        assert!(choose_box("a.jpg", 40, 30, &listed_empty).unwrap_err().starts_with("no box annotation"));
        let other_size = [("ann.xml".to_owned(), boxes("a.jpg", Some((30, 40)), &[("cat", pb(1.0, 1.0, 5.0, 5.0))]))];
        let err = choose_box("a.jpg", 40, 30, &other_size).unwrap_err();
        assert!(err.contains("30×40") && err.contains("40×30"), "{err}");
        let outside = [("ann.xml".to_owned(), boxes("a.jpg", None, &[("cat", pb(50.0, 1.0, 60.0, 5.0))]))];
        let err = choose_box("a.jpg", 40, 30, &outside).unwrap_err();
        assert!(err.contains("entirely outside") && err.contains("ann.xml"), "{err}");
    }

    fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
        let image = image::RgbImage::from_pixel(width, height, image::Rgb([shade, 100, 200]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn file(path: &str, bytes: Vec<u8>) -> ArchiveEntry {
        ArchiveEntry::File(ArchiveFile { path: path.to_owned(), bytes })
    }

    fn ingest(entries: Vec<ArchiveEntry>, options: IngestOptions) -> Result<IngestOutcome, IngestError> {
        let mut store = |_: &str, _: &[u8]| Ok(());
        let mut ingestor = Ingestor::new(options, &mut store);
        for entry in entries {
            ingestor.add(entry).unwrap();
        }
        ingestor.finish()
    }

    #[test]
    fn a_csv_beside_the_images_makes_a_box_dataset() {
        let csv = "filename,label,xmin,ymin,xmax,ymax\n\
                   one.png,cat,2,2,10,10\n\
                   images/two.png,dog,0,0,20,12\n\
                   two.png,cat,1,1,4,4\n\
                   three.png,dog,5,5,30,30\n\
                   missing.png,cat,1,1,5,5\n";
        let entries = vec![
            file("set/images/one.png", png(20, 16, 1)),
            file("set/images/two.png", png(20, 16, 2)),
            file("set/images/three.png", png(20, 16, 3)),
            file("set/images/four.png", png(20, 16, 4)),
            file("set/boxes.csv", csv.as_bytes().to_vec()),
        ];
        let outcome = ingest(entries, IngestOptions::default()).unwrap();
        let report = &outcome.report;
        assert_eq!(outcome.classes, ["cat", "dog"]);
        assert_eq!(report.annotations.as_deref(), Some("csv"));
        assert_eq!(report.files_seen, 5);
        assert_eq!(report.top_folder.as_deref(), Some("set"));
        let by_path: HashMap<&str, &IngestedImage> = outcome.images.iter().map(|i| (i.path.as_str(), i)).collect();
        assert_eq!(by_path["set/images/one.png"].bbox, Some(pb(2.0, 2.0, 10.0, 10.0)));
        assert_eq!(by_path["set/images/one.png"].class_idx, 0);
        assert_eq!(by_path["set/images/two.png"].bbox, Some(pb(0.0, 0.0, 20.0, 12.0)));
        assert_eq!(by_path["set/images/two.png"].class_idx, 1);
        assert_eq!(by_path["set/images/three.png"].bbox, Some(pb(5.0, 5.0, 20.0, 16.0)));
        assert_eq!(report.images, 3);
        assert_eq!(report.boxes_clipped, 1);
        assert_eq!(report.images_with_several_boxes, 1);
        assert!(report.warnings.contains(&"1 image has several boxes; the largest is used".to_owned()));
        assert_eq!(
            report.rejected,
            vec![Rejected { path: "set/images/four.png".into(), reason: "no box annotation for this image".into() }]
        );
        let problems: Vec<&str> = report.annotation_problems.iter().map(|p| p.reason.as_str()).collect();
        assert!(problems.iter().any(|p| p.contains("\"missing.png\", which is not in the upload")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("clipped")), "{problems:?}");
        assert!(report.annotation_problems.iter().all(|p| p.file == "set/boxes.csv"));
    }

    fn voc(image: &str, label: &str, corners: [u32; 4]) -> Vec<u8> {
        let [x0, y0, x1, y1] = corners;
        format!(
            "<annotation><filename>{image}</filename><size><width>20</width><height>16</height></size>\
             <object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>\
             <ymax>{y1}</ymax></bndbox></object></annotation>"
        )
        .into_bytes()
    }

    #[test]
    fn the_same_box_from_two_files_is_one_box_and_a_disagreement_names_both() {
        // one.png: VOC and CSV agree (the CSV within a pixel, in decimals). two.png: the CSV
        // draws another box and label. The VOC file's boxes count for both images.
        let csv = "filename,label,xmin,ymin,xmax,ymax\n\
                   one.png,cat,2.4,2,10,9.5\n\
                   two.png,cat,1,1,4,4\n";
        let entries = vec![
            file("set/one.png", png(20, 16, 1)),
            file("set/one.xml", voc("one.png", "cat", [2, 2, 10, 10])),
            file("set/two.png", png(20, 16, 2)),
            file("set/two.xml", voc("two.png", "dog", [0, 0, 20, 12])),
            file("set/boxes.csv", csv.as_bytes().to_vec()),
        ];
        let outcome = ingest(entries, IngestOptions::default()).unwrap();
        let report = &outcome.report;
        assert_eq!(report.annotations.as_deref(), Some("voc, csv"));
        assert_eq!(report.images_with_several_boxes, 0, "{report:?}");
        let by_path: HashMap<&str, &IngestedImage> = outcome.images.iter().map(|i| (i.path.as_str(), i)).collect();
        assert_eq!(by_path["set/one.png"].bbox, Some(pb(2.0, 2.0, 10.0, 10.0)));
        assert_eq!(by_path["set/two.png"].bbox, Some(pb(0.0, 0.0, 20.0, 12.0)));
        assert_eq!(outcome.classes, ["cat", "dog"]);
        assert_eq!(by_path["set/two.png"].class_idx, 1);
        assert_eq!(report.annotation_problems.len(), 1, "{:?}", report.annotation_problems);
        let problem = &report.annotation_problems[0];
        assert_eq!(problem.file, "set/boxes.csv");
        assert!(
            problem
                .reason
                .starts_with("set/two.png: set/boxes.csv gives 1 box \"cat\" (1, 1, 4, 4) but set/two.xml gives")
                && problem.reason.contains("the boxes of set/two.xml are used"),
            "{}",
            problem.reason
        );
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.starts_with("2 images are described by more than one annotation file: 1 agree")
                    && w.contains("1 disagree")
                    && w.contains("here voc")),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn class_folders_stay_as_they_were_and_broken_annotations_are_reported() {
        let entries = vec![
            file("red/a.png", png(8, 8, 10)),
            file("blue/b.png", png(8, 8, 20)),
            file("red/notes.xml", b"<annotation><filename>a.png".to_vec()),
        ];
        let outcome = ingest(entries, IngestOptions::default()).unwrap();
        assert_eq!(outcome.classes, ["blue", "red"]);
        assert!(outcome.images.iter().all(|i| i.bbox.is_none()));
        assert_eq!(outcome.report.annotations, None);
        assert!(outcome.report.rejected.is_empty());
        assert_eq!(outcome.report.annotation_problems.len(), 1);
        assert_eq!(outcome.report.annotation_problems[0].file, "red/notes.xml");
        assert_eq!((outcome.report.boxes_clipped, outcome.report.images_with_several_boxes), (0, 0));
    }

    #[test]
    fn annotation_files_over_the_upload_limit_end_the_ingestion() {
        // 1 000 bytes of annotations are allowed, at 18 bytes a row: 396 + 414 bytes fit,
        // and a third file of 198 goes over.
        let options = IngestOptions { max_annotation_bytes: 1000, ..IngestOptions::default() };
        let mut store = |_: &str, _: &[u8]| Ok(());
        let mut ingestor = Ingestor::new(options, &mut store);
        let rows = |n: usize| "a.png,cat,1,1,5,5\n".repeat(n).into_bytes();
        ingestor.add(file("red/a.png", png(8, 8, 1))).unwrap();
        ingestor.add(file("first.csv", rows(22))).unwrap();
        ingestor.add(file("second.csv", rows(23))).unwrap();
        let err = ingestor.add(file("third.csv", rows(11))).unwrap_err();
        assert!(err.contains("more than 1000 bytes") && err.contains("--max-annotation-bytes"), "{err}");
        assert!(err.contains("third.csv brings them to 1008"), "{err}");
        // Images do not count towards it.
        let options = IngestOptions { max_annotation_bytes: 10, ..IngestOptions::default() };
        let mut store = |_: &str, _: &[u8]| Ok(());
        let mut ingestor = Ingestor::new(options, &mut store);
        ingestor.add(file("red/a.png", png(64, 64, 1))).unwrap();
        ingestor.add(file("red/notes.txt", vec![b'x'; 100])).unwrap();
    }

    #[test]
    fn a_report_of_many_rejections_lists_a_hundred_and_counts_all() {
        let mut entries: Vec<ArchiveEntry> = (0..3).map(|i| file(&format!("red/{i}.png"), png(8, 8, i))).collect();
        entries.extend((0..3).map(|i| file(&format!("blue/{i}.png"), png(8, 8, 10 + i))));
        entries.extend((0..500).map(|i| file(&format!("blue/junk{i}.png"), b"not a png".to_vec())));
        entries.extend((0..300).map(|i| file(&format!("blue/copy{i}.png"), png(8, 8, 1))));
        let outcome = ingest(entries, IngestOptions { min_images_per_class: 1, ..IngestOptions::default() }).unwrap();
        let report = &outcome.report;
        assert_eq!((report.rejected.len(), report.rejected.total()), (100, 500));
        assert_eq!(report.rejected[0].path, "blue/junk0.png");
        assert_eq!((report.duplicates.len(), report.duplicates.total()), (100, 300));
        assert_eq!(report.duplicates[0], Duplicate { path: "blue/copy0.png".into(), same_as: "red/1.png".into() });
        assert_eq!(outcome.images.len(), 6);
        let json = report.to_bounded_json(crate::data::MAX_REPORT_BYTES);
        assert_eq!((json["rejected_total"].as_u64(), json["duplicates_total"].as_u64()), (Some(500), Some(300)));
    }

    #[test]
    fn a_named_format_claims_files_by_extension() {
        assert_eq!(annotation_format_of("a/labels.json", b"[]", None), None);
        assert_eq!(
            annotation_format_of("a/labels.json", b"[]", Some(AnnotationFormat::Coco)),
            Some(AnnotationFormat::Coco)
        );
        assert_eq!(annotation_format_of("a/labels.xml", b"<x/>", Some(AnnotationFormat::Coco)), None);
        assert_eq!(
            annotation_format_of("b.csv", b"filename,label", Some(AnnotationFormat::ViaCsv)),
            Some(AnnotationFormat::ViaCsv)
        );
        assert_eq!(annotation_format_of("b.csv", b"a.jpg,cat,1,2,3,4", None), Some(AnnotationFormat::Csv));
        assert_eq!(annotation_format_of("a.png", b"<annotation>", Some(AnnotationFormat::Voc)), None);
        assert_eq!(annotation_format_of("noextension", b"<annotation>", None), None);
    }
}
