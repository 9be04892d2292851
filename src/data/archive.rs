//! Reading an uploaded dataset archive (zip, tar, tar.gz) safely, one entry at a time.
//!
//! Nothing here writes to disk: every entry is read into memory (bounded by
//! [`ArchiveLimits::max_entry_bytes`]) and handed to a visitor, which stores the bytes under a
//! name derived from their content hash. Archive paths are only ever *data* (they name the
//! class folders); they are normalised by [`normalize_entry_path`] and never name a file.
//!
//! What an archive cannot do:
//! - write anywhere: no extraction, and links, devices, absolute paths and `..` are skipped;
//! - exhaust memory: at most one entry is held at a time, read with a hard cap even when its
//!   header lies about its size; tar name/PAX headers are read with a cap of their own;
//! - take unbounded time: the number of entries and the bytes expanded are both bounded; for
//!   zip the entry count the end record declares is checked before the central directory is
//!   parsed (`archive::zip_end`), and the declared sizes before anything is decompressed;
//! - panic the service: the readers run under `catch_unwind` (a panic in the visitor itself is
//!   passed on unchanged).

mod zip_end;

use std::cell::Cell;
use std::fmt::Display;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::rc::Rc;

use zip_end::check_declared;

/// The container formats an upload may use, told apart by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveFormat {
    Zip,
    Tar,
    /// A gzip-compressed tar (`.tar.gz`, `.tgz`).
    TarGz,
}

impl ArchiveFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Zip => "zip",
            Self::Tar => "tar",
            Self::TarGz => "tar.gz",
        }
    }
}

impl Display for ArchiveFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bytes [`read_archive`] looks at to detect the format.
pub const SNIFF_BYTES: usize = 512;

/// Detects the archive format from the first bytes of a file ([`SNIFF_BYTES`] are enough);
/// the file name plays no part.
///
/// A gzip stream is reported as [`ArchiveFormat::TarGz`] without looking inside it;
/// [`read_archive`] checks that the decompressed stream is a tar.
pub fn detect_format(head: &[u8]) -> Option<ArchiveFormat> {
    // Local file header, end of central directory (an empty zip), spanning marker.
    if [b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"].iter().any(|magic| head.starts_with(*magic)) {
        return Some(ArchiveFormat::Zip);
    }
    // ID1, ID2 and CM = 8 (deflate), the only method gzip defines.
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        return Some(ArchiveFormat::TarGz);
    }
    looks_like_tar(head).then_some(ArchiveFormat::Tar)
}

/// Whether `head` starts with a tar header block: the ustar/GNU magic, a valid v7 header
/// checksum, or an all-zero block (the end-of-archive marker of an empty tar).
fn looks_like_tar(head: &[u8]) -> bool {
    let Some(block) = head.get(..512) else { return false };
    if block.iter().all(|&b| b == 0) || &block[257..262] == b"ustar" {
        return true;
    }
    let field = &block[148..156];
    let digits = field.iter().copied().skip_while(|&b| b == b' ').take_while(u8::is_ascii_digit);
    let Some(stored) = digits
        .clone()
        .map(|d| u32::from(d - b'0'))
        .try_fold(0u32, |acc, d| if d > 7 { None } else { acc.checked_mul(8).map(|acc| acc + d) })
    else {
        return false;
    };
    if digits.count() == 0 {
        return false;
    }
    // The checksum counts its own field as eight spaces.
    let sum: u32 =
        block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
    sum == stored
}

/// Limits on what one archive may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Entries of any kind (files, folders, links, ...); more fails the archive.
    pub max_entries: usize,
    /// Bytes of one file; a larger file is skipped.
    pub max_entry_bytes: u64,
    /// Bytes expanded from the archive in all; more fails the archive (a zip bomb). For zip
    /// this counts the files read (skipped ones are never decompressed); for tar it counts
    /// every entry's data, skipped or not, since the stream has to be read through.
    pub max_total_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self { max_entries: 200_000, max_entry_bytes: 64 << 20, max_total_bytes: 8 << 30 }
    }
}

/// A regular file read from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// The normalised relative path: `/`-separated, no empty, `.` or `..` components.
    pub path: String,
    pub bytes: Vec<u8>,
}

/// One entry of an archive, as handed to the visitor of [`read_archive`].
/// Directories are not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveEntry {
    File(ArchiveFile),
    /// An entry that is left out; `path` is the raw path as stored (lossy UTF-8, control
    /// characters escaped), for messages only.
    Skipped {
        path: String,
        reason: String,
    },
}

/// What [`read_archive`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub format: ArchiveFormat,
    /// Files handed to the visitor.
    pub files: usize,
    /// Entries skipped (and handed to the visitor as such).
    pub skipped: usize,
    /// Bytes of the files handed to the visitor.
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    #[error("the file is not a zip, tar or tar.gz archive")]
    NotAnArchive,
    #[error("the archive contains no usable files")]
    Empty,
    #[error("the archive has more than {limit} entries (the limit, --max-archive-entries)")]
    TooManyEntries { limit: usize },
    #[error("the archive expands to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the archive is corrupt or truncated: {0}")]
    Corrupt(String),
    #[error("cannot read the archive: {0}")]
    Io(String),
    #[error("{0}")]
    Visitor(String),
}

/// Reads the archive in `file`, calling `visit` for every file and skipped entry in archive
/// order. The format is detected from the content.
///
/// Each file is read into memory whole (at most `limits.max_entry_bytes`) and handed over
/// before the next one is read. Tar and tar.gz are streamed; zip seeks, and reads its
/// central directory into memory first.
///
/// Returns [`ArchiveError::Visitor`] as soon as `visit` fails, and [`ArchiveError::Empty`]
/// when no file was handed over.
pub fn read_archive(
    file: &Path,
    limits: &ArchiveLimits,
    visit: &mut dyn FnMut(ArchiveEntry) -> Result<(), String>,
) -> Result<ArchiveSummary, ArchiveError> {
    let in_visitor = Cell::new(false);
    let mut guarded = |entry: ArchiveEntry| {
        in_visitor.set(true);
        let result = visit(entry);
        in_visitor.set(false);
        result
    };
    match panic::catch_unwind(AssertUnwindSafe(|| read_unguarded(file, limits, &mut guarded))) {
        Ok(result) => result,
        Err(payload) if in_visitor.get() => panic::resume_unwind(payload),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(ArchiveError::Corrupt(format!("the archive reader failed: {message}")))
        }
    }
}

fn read_unguarded(
    path: &Path,
    limits: &ArchiveLimits,
    visit: &mut dyn FnMut(ArchiveEntry) -> Result<(), String>,
) -> Result<ArchiveSummary, ArchiveError> {
    let source = Rc::new(Watch::default());
    let file = fs_err::File::open(path).map_err(|e| ArchiveError::Io(e.to_string()))?;
    let mut file = Watched { inner: file, watch: source.clone() };
    let head = read_head(&mut file).map_err(|e| ArchiveError::Io(e.to_string()))?;
    let format = detect_format(&head).ok_or(ArchiveError::NotAnArchive)?;
    file.seek(SeekFrom::Start(0)).map_err(|e| ArchiveError::Io(e.to_string()))?;

    let mut walk = Walk {
        limits,
        visit,
        source,
        summary: ArchiveSummary { format, files: 0, skipped: 0, total_bytes: 0 },
        entries: 0,
        expanded: 0,
    };
    match format {
        ArchiveFormat::Zip => walk_zip(&mut walk, file)?,
        ArchiveFormat::Tar => {
            walk_tar(&mut walk, BufReader::new(file))?;
        }
        ArchiveFormat::TarGz => {
            let mut gz = flate2::read::MultiGzDecoder::new(file);
            let head = read_head(&mut gz).map_err(|e| walk.broken(e))?;
            if !looks_like_tar(&head) {
                return Err(ArchiveError::NotAnArchive);
            }
            let mut rest = walk_tar(&mut walk, Cursor::new(head).chain(gz))?;
            // Read the gzip stream to its end, so that its trailer (CRC-32 and length of all
            // the data) is checked: a tar.gz cut after the tar's end-of-archive block is
            // truncated too. What follows the tar counts towards the total.
            let budget = limits.max_total_bytes.saturating_sub(walk.expanded);
            let trailing = io::copy(&mut (&mut rest).take(budget.saturating_add(1)), &mut io::sink())
                .map_err(|e| walk.broken(e))?;
            if trailing > budget {
                return Err(ArchiveError::TooLarge { limit: limits.max_total_bytes });
            }
        }
    }
    if walk.summary.files == 0 {
        return Err(ArchiveError::Empty);
    }
    Ok(walk.summary)
}

/// Reads up to [`SNIFF_BYTES`], fewer only at the end of the stream.
fn read_head(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    reader.take(SNIFF_BYTES as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// Normalises a path stored in an archive, or says why the entry should be skipped.
///
/// Strips leading `./`, drops empty and `.` components (so `a//b/./c/` is `a/b/c`), and
/// rejects: NUL and other control characters, backslashes (a Windows separator or part of
/// a name: ambiguous), absolute paths (`/x`, `C:x`), `..` components, hidden files and
/// folders (a component starting with `.`, which covers `._x` AppleDouble files) and
/// `__MACOSX` folders.
pub fn normalize_entry_path(raw: &str) -> Result<String, String> {
    if raw.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    if raw.chars().any(char::is_control) {
        return Err("the path contains control characters".into());
    }
    if raw.contains('\\') {
        return Err("the path contains a backslash, which is ambiguous (a separator or part of a name)".into());
    }
    if raw.starts_with('/') {
        return Err("the path is absolute".into());
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("the path has a '..' component".into()),
            _ => {}
        }
        let bytes = part.as_bytes();
        if parts.is_empty() && bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return Err("the path starts with a drive letter".into());
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return Err("the path is empty".into());
    }
    for part in &parts {
        if *part == "__MACOSX" {
            return Err("macOS resource fork (__MACOSX)".into());
        }
        if part.starts_with('.') {
            return Err("hidden file or folder".into());
        }
    }
    Ok(parts.join("/"))
}

/// A raw archive path for messages: lossy UTF-8, control characters escaped.
fn display_path(raw: &[u8]) -> String {
    let lossy = String::from_utf8_lossy(raw);
    if !lossy.chars().any(char::is_control) {
        return lossy.into_owned();
    }
    lossy.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// What an entry is, as far as skipping goes.
enum Kind {
    File,
    Dir,
    /// Anything else: a link, a device, an encrypted file; the reason it is skipped.
    Other(String),
}

enum Plan {
    Dir,
    Skip { path: String, reason: String },
    Read { path: String, size: u64 },
}

/// The longest path an entry may have, in bytes (Linux's PATH_MAX); longer ones are skipped.
/// Paths are kept for every image, so this bounds what a million long names cost.
pub const MAX_PATH_BYTES: usize = 4096;

/// Decides what to do with an entry from its raw path, its kind and its declared size.
fn plan(raw: &[u8], kind: Kind, declared: u64, limits: &ArchiveLimits) -> Plan {
    if raw.len() > MAX_PATH_BYTES {
        // Only the start of the name goes into the report.
        let start = &raw[..raw.len().min(256)];
        return Plan::Skip {
            path: format!("{}…", display_path(start)),
            reason: format!("the path has {} bytes, over the limit of {MAX_PATH_BYTES}", raw.len()),
        };
    }
    let skip = |reason: String| Plan::Skip { path: display_path(raw), reason };
    match kind {
        Kind::Dir => return Plan::Dir,
        Kind::Other(reason) => return skip(reason),
        // Old tars mark folders as regular files with a trailing slash; so may odd zips.
        Kind::File if raw.ends_with(b"/") => return Plan::Dir,
        Kind::File => {}
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return skip("the path is not valid UTF-8".into());
    };
    match normalize_entry_path(text) {
        Err(reason) => skip(reason),
        Ok(_) if declared > limits.max_entry_bytes => skip(too_large(declared, limits)),
        Ok(path) => Plan::Read { path, size: declared },
    }
}

fn too_large(size: u64, limits: &ArchiveLimits) -> String {
    format!("the file has {size} bytes, over the limit of {} bytes per file", limits.max_entry_bytes)
}

/// Reads one entry into memory, at most `limit` bytes; `None` when there are more.
fn read_entry(reader: &mut impl Read, declared: u64, limit: u64) -> io::Result<Option<Vec<u8>>> {
    const PREALLOCATE_MAX: u64 = 8 << 20;
    let mut bytes = Vec::with_capacity(declared.min(limit).min(PREALLOCATE_MAX) as usize);
    // The declared size may lie: read at most one byte over the limit to find out.
    reader.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Records what happened to a stream: a failure of the file itself (an I/O error, as opposed
/// to corrupt content found by a decoder) and the end of the stream.
#[derive(Default)]
struct Watch {
    failed: Cell<bool>,
    ended: Cell<bool>,
}

struct Watched<R> {
    inner: R,
    watch: Rc<Watch>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        match &result {
            Ok(0) if !buf.is_empty() => self.watch.ended.set(true),
            Err(e) if e.kind() != io::ErrorKind::Interrupted => self.watch.failed.set(true),
            _ => {}
        }
        result
    }
}

impl<R: Seek> Seek for Watched<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let result = self.inner.seek(pos);
        if result.is_err() {
            self.watch.failed.set(true);
        }
        result
    }
}

/// The state of one [`read_archive`] call.
struct Walk<'a> {
    limits: &'a ArchiveLimits,
    visit: &'a mut dyn FnMut(ArchiveEntry) -> Result<(), String>,
    /// Watches the archive file itself.
    source: Rc<Watch>,
    summary: ArchiveSummary,
    entries: usize,
    /// Tar only: the entry data the stream has to pass through so far.
    expanded: u64,
}

impl Walk<'_> {
    /// An error from a decoder: [`ArchiveError::Io`] when the file itself failed,
    /// [`ArchiveError::Corrupt`] otherwise.
    fn broken(&self, error: impl Display) -> ArchiveError {
        broken(&self.source, error)
    }

    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries { limit: self.limits.max_entries });
        }
        Ok(())
    }

    fn expand(&mut self, size: u64) -> Result<(), ArchiveError> {
        self.expanded = self.expanded.saturating_add(size);
        if self.expanded > self.limits.max_total_bytes {
            return Err(ArchiveError::TooLarge { limit: self.limits.max_total_bytes });
        }
        Ok(())
    }

    fn skip(&mut self, path: String, reason: String) -> Result<(), ArchiveError> {
        self.summary.skipped += 1;
        (self.visit)(ArchiveEntry::Skipped { path, reason }).map_err(ArchiveError::Visitor)
    }

    fn deliver(&mut self, path: String, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        let total = self.summary.total_bytes.saturating_add(bytes.len() as u64);
        if total > self.limits.max_total_bytes {
            return Err(ArchiveError::TooLarge { limit: self.limits.max_total_bytes });
        }
        self.summary.total_bytes = total;
        self.summary.files += 1;
        (self.visit)(ArchiveEntry::File(ArchiveFile { path, bytes })).map_err(ArchiveError::Visitor)
    }

    /// Reads the file `path` of `declared` bytes from `reader` and hands it over, or skips it
    /// when it turns out larger than the limit.
    fn read_and_deliver(
        &mut self,
        reader: &mut impl Read,
        path: String,
        declared: u64,
        raw_path: &[u8],
    ) -> Result<(), ArchiveError> {
        let limit = self.limits.max_entry_bytes;
        match read_entry(reader, declared, limit)
            .map_err(|e| self.broken(format!("{}: {e}", display_path(raw_path))))?
        {
            None => self.skip(
                display_path(raw_path),
                format!("the file has more than {limit} bytes, the limit per file (its header said {declared})"),
            ),
            Some(bytes) if bytes.len() as u64 != declared => Err(ArchiveError::Corrupt(format!(
                "{}: the file has {} bytes, its header says {declared}",
                display_path(raw_path),
                bytes.len()
            ))),
            Some(bytes) => self.deliver(path, bytes),
        }
    }
}

fn broken(source: &Watch, error: impl Display) -> ArchiveError {
    if source.failed.get() { ArchiveError::Io(error.to_string()) } else { ArchiveError::Corrupt(error.to_string()) }
}

// ---------------------------------------------------------------------------------------------
// zip

fn walk_zip(walk: &mut Walk<'_>, mut file: Watched<fs_err::File>) -> Result<(), ArchiveError> {
    let source = walk.source.clone();
    let limits = *walk.limits;
    // The zip crate reads the whole central directory (allocating for every entry it
    // declares) before it can say how many there are: check what the end record declares first.
    check_declared(&mut file, limits.max_entries)?;
    file.seek(SeekFrom::Start(0)).map_err(|e| ArchiveError::Io(e.to_string()))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| broken(&source, e))?;
    if zip.len() > limits.max_entries {
        return Err(ArchiveError::TooManyEntries { limit: limits.max_entries });
    }
    if zip.has_duplicate_names() {
        // The zip crate keeps one entry per name; other tools would show all of them.
        return Err(ArchiveError::Corrupt("the central directory names the same file more than once".into()));
    }

    // The central directory declares every size (and the reader enforces them): refuse a bomb
    // before decompressing anything.
    let mut declared_total: u64 = 0;
    for index in 0..zip.len() {
        let entry = zip.by_index_data(index).map_err(|e| broken(&source, e))?;
        if let Plan::Read { size, .. } = plan_zip(&entry, &limits) {
            declared_total = declared_total.saturating_add(size);
        }
    }
    if declared_total > limits.max_total_bytes {
        return Err(ArchiveError::TooLarge { limit: limits.max_total_bytes });
    }

    for index in 0..zip.len() {
        walk.count_entry()?;
        let (raw_path, plan) = {
            let entry = zip.by_index_data(index).map_err(|e| broken(&source, e))?;
            (entry.name_raw().to_vec(), plan_zip(&entry, &limits))
        };
        match plan {
            Plan::Dir => {}
            Plan::Skip { path, reason } => walk.skip(path, reason)?,
            Plan::Read { path, size } => {
                let mut reader = zip.by_index(index).map_err(|e| broken(&source, format!("{path}: {e}")))?;
                walk.read_and_deliver(&mut reader, path, size, &raw_path)?;
            }
        }
    }
    Ok(())
}

fn plan_zip(entry: &zip::read::ZipFileEntry<'_>, limits: &ArchiveLimits) -> Plan {
    // Names that are not UTF-8 are CP437 by the zip specification; the crate decodes them.
    let name = entry.name();
    let raw: &[u8] = match &name {
        Ok(name) => name.as_bytes(),
        Err(_) => entry.name_raw(),
    };
    let kind = match entry.unix_mode().map(|mode| mode & 0o170_000) {
        _ if entry.is_dir() => Kind::Dir,
        Some(0o040_000) => Kind::Dir,
        Some(0o120_000) => Kind::Other("symbolic link".into()),
        Some(0o020_000 | 0o060_000) => Kind::Other("device file".into()),
        Some(0o010_000) => Kind::Other("named pipe (FIFO)".into()),
        Some(0o140_000) => Kind::Other("socket".into()),
        Some(0 | 0o100_000) | None => {
            if entry.encrypted() {
                Kind::Other("the file is encrypted".into())
            } else if !zip::SUPPORTED_COMPRESSION_METHODS.contains(&entry.compression()) {
                Kind::Other(format!("unsupported compression method {}", entry.compression()))
            } else {
                Kind::File
            }
        }
        Some(other) => Kind::Other(format!("unsupported file type (mode {other:o})")),
    };
    plan(raw, kind, entry.size(), limits)
}

// ---------------------------------------------------------------------------------------------
// tar

/// The most bytes of a GNU long name, GNU long link or PAX header that are read into memory.
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// Extension headers seen since the last entry; they describe the next one.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_size: Option<u64>,
    seen_long_name: bool,
    seen_long_link: bool,
    seen_pax: bool,
    /// A reason to skip the next entry (an oversized or malformed extension header).
    problem: Option<String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !(self.seen_long_name || self.seen_long_link || self.seen_pax)
    }
}

/// Walks a tar stream. The tar crate runs in raw mode so that GNU long names and PAX headers
/// come to us as entries: in its normal mode it reads them into memory without a limit.
/// Returns the stream, positioned after the end-of-archive block.
fn walk_tar<R: Read>(walk: &mut Walk<'_>, stream: R) -> Result<R, ArchiveError> {
    let end = Rc::new(Watch::default());
    let mut archive = tar::Archive::new(Watched { inner: stream, watch: end.clone() });
    let entries = archive.entries().map_err(|e| walk.broken(e))?.raw(true);
    let mut pending = Pending::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| walk.broken(e))?;
        let size = entry.size();
        // The stream has to pass through the data whether it is read or skipped.
        walk.expand(size)?;
        let entry_type = entry.header().entry_type();
        match entry_type {
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink | tar::EntryType::XHeader => {
                let seen = match entry_type {
                    tar::EntryType::GNULongName => &mut pending.seen_long_name,
                    tar::EntryType::GNULongLink => &mut pending.seen_long_link,
                    _ => &mut pending.seen_pax,
                };
                if std::mem::replace(seen, true) {
                    return Err(ArchiveError::Corrupt(
                        "two extension headers of the same kind describe one entry".into(),
                    ));
                }
                let what = match entry_type {
                    tar::EntryType::GNULongName => "GNU long name",
                    tar::EntryType::GNULongLink => "GNU long link name",
                    _ => "PAX header",
                };
                if size > MAX_EXTENSION_BYTES {
                    pending.problem = Some(format!("its {what} has {size} bytes, over {MAX_EXTENSION_BYTES}"));
                    continue;
                }
                let Some(bytes) = read_entry(&mut entry, size, MAX_EXTENSION_BYTES).map_err(|e| walk.broken(e))? else {
                    unreachable!("the size was checked")
                };
                if bytes.len() as u64 != size {
                    return Err(ArchiveError::Corrupt(format!("a {what} ends early")));
                }
                match entry_type {
                    tar::EntryType::GNULongName => {
                        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                        pending.long_name = Some(bytes[..end].to_vec());
                    }
                    tar::EntryType::XHeader => read_pax(&bytes, &mut pending),
                    _ => {}
                }
                continue;
            }
            _ => {}
        }

        walk.count_entry()?;
        let pending = std::mem::take(&mut pending);
        if let Some(pax_size) = pending.pax_size
            && pax_size != size
        {
            // Readers that honour the PAX size would see different entries from here on.
            return Err(ArchiveError::Corrupt(format!(
                "a PAX header gives {pax_size} bytes for an entry whose header says {size}"
            )));
        }
        let raw_path: Vec<u8> =
            pending.long_name.or(pending.pax_path).unwrap_or_else(|| entry.header().path_bytes().into_owned());
        if let Some(problem) = pending.problem {
            if !entry_type.is_dir() {
                walk.skip(display_path(&raw_path), problem)?;
            }
            continue;
        }
        let kind = match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Other("symbolic link".into()),
            tar::EntryType::Link => Kind::Other("hard link".into()),
            tar::EntryType::Char | tar::EntryType::Block => Kind::Other("device file".into()),
            tar::EntryType::Fifo => Kind::Other("named pipe (FIFO)".into()),
            tar::EntryType::GNUSparse => Kind::Other("sparse file (not supported)".into()),
            // Archive-wide metadata (`git archive` writes one with the commit id); like a
            // folder it is no file, and not worth a line in a report.
            tar::EntryType::XGlobalHeader => Kind::Dir,
            other => Kind::Other(format!("unsupported tar entry type {:?}", char::from(other.as_byte()))),
        };
        match plan(&raw_path, kind, size, walk.limits) {
            Plan::Dir => {}
            Plan::Skip { path, reason } => walk.skip(path, reason)?,
            Plan::Read { path, size } => walk.read_and_deliver(&mut entry, path, size, &raw_path)?,
        }
    }
    if !pending.is_empty() {
        return Err(ArchiveError::Corrupt("the archive ends with extension headers but no entry for them".into()));
    }
    if end.ended.get() {
        return Err(ArchiveError::Corrupt("the tar stream ends without its end-of-archive marker".into()));
    }
    Ok(archive.into_inner().inner)
}

/// Takes `path` and `size` from a PAX header; marks the next entry as one to skip when the
/// header is malformed or describes a sparse file.
fn read_pax(bytes: &[u8], pending: &mut Pending) {
    for extension in tar::PaxExtensions::new(bytes) {
        let Ok(extension) = extension else {
            pending.problem = Some("its PAX header is malformed".into());
            return;
        };
        match extension.key_bytes() {
            b"path" => pending.pax_path = Some(extension.value_bytes().to_vec()),
            b"size" => match extension.value().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(size) => pending.pax_size = Some(size),
                None => pending.problem = Some("its PAX header has a malformed size".into()),
            },
            key if key.starts_with(b"GNU.sparse.") => pending.problem = Some("sparse file (not supported)".into()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize_entry_path(raw).unwrap_or_else(|reason| panic!("{raw:?} was rejected: {reason}"))
    }

    fn rejected(raw: &str) -> String {
        match normalize_entry_path(raw) {
            Ok(path) => panic!("{raw:?} was accepted as {path:?}"),
            Err(reason) => reason,
        }
    }

    #[test]
    fn plain_paths_are_kept() {
        assert_eq!(ok("flower_photos/daisy/123.jpg"), "flower_photos/daisy/123.jpg");
        assert_eq!(ok("x.jpg"), "x.jpg");
        assert_eq!(ok("top/classA/a b (1).jpeg"), "top/classA/a b (1).jpeg");
        assert_eq!(ok("fleurs/pâquerette/été.jpg"), "fleurs/pâquerette/été.jpg");
        assert_eq!(ok("a/b../c..jpg"), "a/b../c..jpg");
    }

    #[test]
    fn dot_slash_and_repeated_slashes_are_collapsed() {
        assert_eq!(ok("./top/classA/x.jpg"), "top/classA/x.jpg");
        assert_eq!(ok("././top//classA///x.jpg"), "top/classA/x.jpg");
        assert_eq!(ok("top/./classA/x.jpg"), "top/classA/x.jpg");
        assert_eq!(ok(".//top/x.jpg"), "top/x.jpg");
        assert_eq!(ok("top/x.jpg/"), "top/x.jpg");
    }

    #[test]
    fn parent_components_are_rejected() {
        assert_eq!(rejected("../evil.txt"), "the path has a '..' component");
        assert_eq!(rejected("a/../../evil.txt"), "the path has a '..' component");
        assert_eq!(rejected("a/../b.txt"), "the path has a '..' component");
        assert_eq!(rejected("./.."), "the path has a '..' component");
        assert_eq!(rejected("a/.."), "the path has a '..' component");
    }

    #[test]
    fn absolute_paths_are_rejected() {
        assert_eq!(rejected("/etc/passwd"), "the path is absolute");
        assert_eq!(rejected("//server/share/x.jpg"), "the path is absolute");
        assert_eq!(rejected("C:/Windows/x.jpg"), "the path starts with a drive letter");
        assert_eq!(rejected("c:x.jpg"), "the path starts with a drive letter");
        assert_eq!(rejected("./C:/x.jpg"), "the path starts with a drive letter");
        assert!(rejected("C:\\Windows\\evil.txt").contains("backslash"));
    }

    #[test]
    fn ambiguous_characters_are_rejected() {
        assert_eq!(rejected("a\0b.jpg"), "the path contains a NUL byte");
        assert_eq!(rejected("a\nb.jpg"), "the path contains control characters");
        assert_eq!(rejected("a\u{7f}b.jpg"), "the path contains control characters");
        assert!(rejected("top\\classA\\x.jpg").contains("backslash"));
        assert!(rejected("..\\evil.txt").contains("backslash"));
    }

    #[test]
    fn hidden_files_and_resource_forks_are_rejected() {
        assert_eq!(rejected(".DS_Store"), "hidden file or folder");
        assert_eq!(rejected("top/.DS_Store"), "hidden file or folder");
        assert_eq!(rejected("top/classA/._x.jpg"), "hidden file or folder");
        assert_eq!(rejected(".git/config"), "hidden file or folder");
        assert_eq!(rejected("__MACOSX/top/._x.jpg"), "macOS resource fork (__MACOSX)");
        assert_eq!(rejected("top/__MACOSX/x.jpg"), "macOS resource fork (__MACOSX)");
    }

    #[test]
    fn empty_paths_are_rejected() {
        for raw in ["", ".", "./", ".//", "./././"] {
            assert_eq!(rejected(raw), "the path is empty", "{raw:?}");
        }
    }

    #[test]
    fn display_path_escapes_control_characters() {
        assert_eq!(display_path(b"a/b.jpg"), "a/b.jpg");
        assert_eq!(display_path(b"a\0b\n"), "a\\u{0}b\\n");
        assert_eq!(display_path(b"a\xffb"), "a\u{fffd}b");
    }

    fn tar_header_block(name: &str) -> Vec<u8> {
        let mut header = tar::Header::new_ustar();
        header.set_path(name).unwrap();
        header.set_size(0);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    #[test]
    fn formats_are_detected_from_magic_bytes() {
        assert_eq!(detect_format(b"PK\x03\x04rest"), Some(ArchiveFormat::Zip));
        assert_eq!(detect_format(b"PK\x05\x06\0\0\0\0"), Some(ArchiveFormat::Zip));
        assert_eq!(detect_format(&[0x1f, 0x8b, 0x08, 0]), Some(ArchiveFormat::TarGz));
        assert_eq!(detect_format(&tar_header_block("a/b.jpg")), Some(ArchiveFormat::Tar));
        assert_eq!(detect_format(&[0u8; 512]), Some(ArchiveFormat::Tar), "an empty tar");
        assert_eq!(detect_format(b""), None);
        assert_eq!(detect_format(b"PK"), None);
        assert_eq!(detect_format(&[0x1f, 0x8b]), None);
        assert_eq!(detect_format(&[b'a'; 600]), None);
        assert_eq!(detect_format(&[0u8; 511]), None, "too short for a tar block");
    }

    #[test]
    fn v7_tar_headers_are_detected_by_their_checksum() {
        let mut block = tar_header_block("a/b.jpg");
        block[257..265].fill(0); // no ustar magic or version
        let mut header = tar::Header::from_byte_slice(&block).clone();
        header.set_cksum();
        let block = header.as_bytes().to_vec();
        assert_eq!(detect_format(&block), Some(ArchiveFormat::Tar));
        let mut broken = block.clone();
        broken[0] ^= 1;
        assert_eq!(detect_format(&broken), None);
    }
}
