//! Ingestion: every file of an upload is checked (a decodable image within limits),
//! hashed, stored once per content, placed in its class folder and split. Bad files are
//! skipped and reported with the reason; the dataset is refused only when nothing usable
//! remains. Storage is the caller's (`store_image`), keyed by content hash, so no name
//! from an archive ever becomes a path on disk.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::archive::{ArchiveEntry, ArchiveFile};
use super::layout::{Placement, place_in_classes};
use super::split::{Split, SplitFractions, assign_split};
use crate::vision::{DecodeLimits, decode_image};

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub decode: DecodeLimits,
    pub seed: u64,
    pub splits: SplitFractions,
    /// Classes with fewer images are reported as too small.
    pub min_images_per_class: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self { decode: DecodeLimits::default(), seed: 0, splits: SplitFractions::default(), min_images_per_class: 10 }
    }
}

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

#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub files_seen: usize,
    pub images: usize,
    pub top_folder: Option<String>,
    pub rejected: Vec<Rejected>,
    pub duplicates: Vec<Duplicate>,
    pub warnings: Vec<String>,
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

struct Accepted {
    sha256: String,
    path: String,
    width: u32,
    height: u32,
}

/// Keeps an accepted image's bytes under its sha256; an error ends the ingestion.
pub type StoreImage<'s> = &'s mut dyn FnMut(&str, &[u8]) -> Result<(), String>;

/// Collects entries one at a time (`add`), then decides classes and splits (`finish`).
pub struct Ingestor<'s> {
    options: IngestOptions,
    store_image: StoreImage<'s>,
    accepted: Vec<Accepted>,
    first_path_of: HashMap<String, String>,
    report: IngestReport,
}

impl<'s> Ingestor<'s> {
    /// `store_image(sha256, bytes)` keeps the encoded image; it is called once per new content.
    pub fn new(options: IngestOptions, store_image: StoreImage<'s>) -> Self {
        Self {
            options,
            store_image,
            accepted: Vec::new(),
            first_path_of: HashMap::new(),
            report: IngestReport::default(),
        }
    }

    /// Takes one archive entry. An `Err` is a storage failure and ends the ingestion.
    pub fn add(&mut self, entry: ArchiveEntry) -> Result<(), String> {
        self.report.files_seen += 1;
        let ArchiveFile { path, bytes } = match entry {
            ArchiveEntry::File(file) => file,
            ArchiveEntry::Skipped { path, reason } => {
                self.report.rejected.push(Rejected { path, reason });
                return Ok(());
            }
        };
        let image = match decode_image(&bytes, &self.options.decode) {
            Ok(image) => image,
            Err(error) => {
                self.report.rejected.push(Rejected { path, reason: error.to_string() });
                return Ok(());
            }
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(first) = self.first_path_of.get(&sha256) {
            self.report.duplicates.push(Duplicate { path, same_as: first.clone() });
            return Ok(());
        }
        (self.store_image)(&sha256, &bytes)?;
        self.first_path_of.insert(sha256.clone(), path.clone());
        self.accepted.push(Accepted { sha256, path, width: image.width(), height: image.height() });
        Ok(())
    }

    pub fn finish(mut self) -> Result<IngestOutcome, IngestError> {
        let paths: Vec<&str> = self.accepted.iter().map(|a| a.path.as_str()).collect();
        let (top_folder, placements) = place_in_classes(&paths);
        let mut by_class: BTreeMap<String, Vec<Accepted>> = BTreeMap::new();
        for (accepted, placement) in self.accepted.into_iter().zip(placements) {
            match placement {
                Placement::Class(class) => by_class.entry(class).or_default().push(accepted),
                Placement::Unplaced(reason) => self.report.rejected.push(Rejected { path: accepted.path, reason }),
            }
        }
        if by_class.is_empty() {
            let why = if self.report.rejected.is_empty() {
                "the archive has no files".to_owned()
            } else {
                format!("all {} files were rejected; see the reasons in the report", self.report.rejected.len())
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
}
