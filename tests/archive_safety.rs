//! `data::archive`: hostile and broken archives are skipped or refused, never extracted,
//! never allowed to exhaust memory, never a panic. Every archive is built here, in a
//! temporary folder, with the `zip`, `tar` and `flate2` crates (or by hand where those
//! refuse to write something broken).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::hostile::{append_link, append_raw, raw_header};
use flate2::Compression;
use flate2::write::GzEncoder;
use graft::data::archive::{
    ArchiveEntry, ArchiveError, ArchiveFile, ArchiveFormat, ArchiveLimits, ArchiveSummary, read_archive,
};
use tar::{EntryType, Header};
use zip::CompressionMethod;
use zip::write::SimpleFileOptions;

// ---------------------------------------------------------------------------------------------
// helpers

/// Reads `path`, returning the outcome and every entry the visitor saw.
fn read_all(path: &Path, limits: &ArchiveLimits) -> (Result<ArchiveSummary, ArchiveError>, Vec<ArchiveEntry>) {
    let mut seen = Vec::new();
    let result = read_archive(path, limits, &mut |entry| {
        seen.push(entry);
        Ok(())
    });
    (result, seen)
}

fn file(path: &str, bytes: &[u8]) -> ArchiveEntry {
    ArchiveEntry::File(ArchiveFile { path: path.to_owned(), bytes: bytes.to_vec() })
}

fn skipped(path: &str, reason: &str) -> ArchiveEntry {
    ArchiveEntry::Skipped { path: path.to_owned(), reason: reason.to_owned() }
}

/// Deterministic bytes that do not compress.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
}

fn stored() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Stored)
}

/// A zip of `(name, bytes)` files, written with `options`.
fn write_zip(path: &Path, files: &[(&str, &[u8])], options: SimpleFileOptions) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in files {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn append_dir<W: Write>(builder: &mut tar::Builder<W>, name: &str) {
    builder.append(&raw_header(name.as_bytes(), EntryType::Directory, 0), &[][..]).unwrap();
}

/// A tar of `(name, bytes)` files with raw names.
fn write_tar(path: &Path, files: &[(&str, &[u8])]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in files {
        append_raw(&mut builder, name, bytes);
    }
    builder.into_inner().unwrap();
}

/// Gzips the file at `from` into `to`.
fn gzip(from: &Path, to: &Path) {
    let mut encoder = GzEncoder::new(std::fs::File::create(to).unwrap(), Compression::default());
    encoder.write_all(&std::fs::read(from).unwrap()).unwrap();
    encoder.finish().unwrap();
}

/// Sets the sizes that the central directory declares for the entry `name`.
fn patch_central_sizes(zip: &mut [u8], name: &str, compressed: Option<u32>, uncompressed: Option<u32>) {
    let mut patched = false;
    for at in 0..zip.len().saturating_sub(46) {
        if &zip[at..at + 4] != b"PK\x01\x02" {
            continue;
        }
        let name_len = u16::from_le_bytes([zip[at + 28], zip[at + 29]]) as usize;
        if zip.get(at + 46..at + 46 + name_len) != Some(name.as_bytes()) {
            continue;
        }
        if let Some(size) = compressed {
            zip[at + 20..at + 24].copy_from_slice(&size.to_le_bytes());
        }
        if let Some(size) = uncompressed {
            zip[at + 24..at + 28].copy_from_slice(&size.to_le_bytes());
        }
        patched = true;
    }
    assert!(patched, "no central directory entry for {name}");
}

fn limits(max_entries: usize, max_entry_bytes: u64, max_total_bytes: u64) -> ArchiveLimits {
    ArchiveLimits { max_entries, max_entry_bytes, max_total_bytes }
}

fn files_named(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_name() == name {
            found.push(path.clone());
        }
        if entry.file_type().unwrap().is_dir() {
            files_named(&path, name, found);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// well-formed archives

/// The files of a small flower dataset, as the archives below hold them.
fn flowers() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("flower_photos/daisy/100.jpg", noise(1, 3000)),
        ("flower_photos/daisy/101.jpg", noise(2, 10)),
        ("flower_photos/roses/200.jpg", noise(3, 70_000)),
        ("flower_photos/tulips/empty.jpg", Vec::new()),
    ]
}

fn expected_flowers() -> Vec<ArchiveEntry> {
    flowers().iter().map(|(path, bytes)| file(path, bytes)).collect()
}

fn summary(format: ArchiveFormat, files: usize, skipped: usize, total_bytes: u64) -> ArchiveSummary {
    ArchiveSummary { format, files, skipped, total_bytes }
}

#[test]
fn a_zip_yields_its_files_in_order_with_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload.bin");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.add_directory("flower_photos/", deflated()).unwrap();
    zip.add_directory("flower_photos/daisy/", deflated()).unwrap();
    for (i, (name, bytes)) in flowers().iter().enumerate() {
        zip.start_file(*name, if i % 2 == 0 { deflated() } else { stored() }).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 4, 0, 73_010)));
    assert_eq!(seen, expected_flowers());
}

#[test]
fn a_tar_yields_its_files_in_order_with_normalised_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    append_dir(&mut builder, "./");
    append_dir(&mut builder, "./flower_photos/");
    let flowers = flowers();
    append_raw(&mut builder, "./flower_photos/daisy/100.jpg", &flowers[0].1);
    append_raw(&mut builder, "flower_photos//daisy/101.jpg", &flowers[1].1);
    append_raw(&mut builder, "././flower_photos/./roses/200.jpg", &flowers[2].1);
    append_raw(&mut builder, "flower_photos/tulips/empty.jpg", &flowers[3].1);
    builder.into_inner().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 4, 0, 73_010)));
    assert_eq!(seen, expected_flowers());
}

#[test]
fn a_tar_gz_yields_its_files_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload");
    let encoder = GzEncoder::new(std::fs::File::create(&path).unwrap(), Compression::default());
    let mut builder = tar::Builder::new(encoder);
    append_dir(&mut builder, "flower_photos/");
    for (name, bytes) in flowers() {
        let mut header = Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, &bytes[..]).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::TarGz, 4, 0, 73_010)));
    assert_eq!(seen, expected_flowers());
}

#[test]
fn tar_long_names_and_pax_paths_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.tar");
    let long = format!("flower_photos/{}/1.jpg", "a".repeat(150));
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    // A GNU header: the tar crate writes a GNU long-name entry before it.
    let mut header = Header::new_gnu();
    header.set_size(3);
    builder.append_data(&mut header, &long, &b"one"[..]).unwrap();
    // A PAX header naming the next entry, whose own header says something else.
    builder.append_pax_extensions([("path", "flower_photos/pax/2.jpg".as_bytes())]).unwrap();
    append_raw(&mut builder, "ignored/name.jpg", b"two");
    // A PAX path is checked like any other.
    builder.append_pax_extensions([("path", "../escape.jpg".as_bytes())]).unwrap();
    append_raw(&mut builder, "innocent.jpg", b"three");
    builder.into_inner().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 2, 1, 6)));
    assert_eq!(
        seen,
        vec![
            file(&long, b"one"),
            file("flower_photos/pax/2.jpg", b"two"),
            skipped("../escape.jpg", "the path has a '..' component"),
        ]
    );
}

#[test]
fn an_oversized_tar_long_name_skips_its_entry_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("longname.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let name = vec![b'n'; 2 << 20];
    builder.append(&raw_header(b"././@LongLink", EntryType::GNULongName, name.len() as u64), &name[..]).unwrap();
    append_raw(&mut builder, "top/a/short.jpg", b"data");
    append_raw(&mut builder, "top/b/next.jpg", b"next");
    builder.into_inner().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 1, 1, 4)));
    assert_eq!(
        seen,
        vec![
            skipped("top/a/short.jpg", "its GNU long name has 2097152 bytes, over 1048576"),
            file("top/b/next.jpg", b"next"),
        ]
    );
}

#[test]
fn hidden_files_and_macos_resource_forks_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mac.zip");
    write_zip(
        &path,
        &[
            ("top/classA/x.jpg", b"x"),
            ("__MACOSX/top/classA/._x.jpg", b"fork"),
            ("top/.DS_Store", b"ds"),
            ("top/classA/._y.jpg", b"fork"),
        ],
        deflated(),
    );
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 1, 3, 1)));
    assert_eq!(
        seen,
        vec![
            file("top/classA/x.jpg", b"x"),
            skipped("__MACOSX/top/classA/._x.jpg", "macOS resource fork (__MACOSX)"),
            skipped("top/.DS_Store", "hidden file or folder"),
            skipped("top/classA/._y.jpg", "hidden file or folder"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// path traversal, links

fn assert_no_evil_file(dir: &Path, tmp_evil_existed: bool) {
    let mut found = Vec::new();
    files_named(dir, "evil.txt", &mut found);
    let parent = dir.parent().unwrap();
    for entry in std::fs::read_dir(parent).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "evil.txt" && !(tmp_evil_existed && entry.path() == Path::new("/tmp/evil.txt")) {
            found.push(entry.path());
        }
    }
    if !tmp_evil_existed {
        assert!(!Path::new("/tmp/evil.txt").exists(), "/tmp/evil.txt appeared");
    }
    assert!(found.is_empty(), "evil.txt was written: {found:?}");
}

#[test]
fn zip_paths_that_escape_are_skipped_and_nothing_is_written() {
    let tmp_evil_existed = Path::new("/tmp/evil.txt").exists();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.zip");
    write_zip(
        &path,
        &[
            ("../evil.txt", b"1"),
            ("a/../../evil.txt", b"2"),
            ("/tmp/evil.txt", b"3"),
            ("C:\\evil.txt", b"4"),
            ("top\\..\\..\\evil.txt", b"5"),
            ("top/a\0/evil.txt", b"6"),
            ("top/classA/ok.jpg", b"ok"),
        ],
        deflated(),
    );
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 1, 6, 2)));
    let backslash = "the path contains a backslash, which is ambiguous (a separator or part of a name)";
    assert_eq!(
        seen,
        vec![
            skipped("../evil.txt", "the path has a '..' component"),
            skipped("a/../../evil.txt", "the path has a '..' component"),
            skipped("/tmp/evil.txt", "the path is absolute"),
            skipped("C:\\evil.txt", backslash),
            skipped("top\\..\\..\\evil.txt", backslash),
            skipped("top/a\\u{0}/evil.txt", "the path contains a NUL byte"),
            file("top/classA/ok.jpg", b"ok"),
        ]
    );
    assert_no_evil_file(dir.path(), tmp_evil_existed);
}

#[test]
fn tar_paths_that_escape_are_skipped_and_nothing_is_written() {
    let tmp_evil_existed = Path::new("/tmp/evil.txt").exists();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("evil.tar");
    write_tar(
        &path,
        &[
            ("../evil.txt", b"1"),
            ("a/../../evil.txt", b"2"),
            ("/tmp/evil.txt", b"3"),
            ("./../evil.txt", b"4"),
            ("top/classA/ok.jpg", b"ok"),
        ],
    );
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 1, 4, 2)));
    assert_eq!(
        seen,
        vec![
            skipped("../evil.txt", "the path has a '..' component"),
            skipped("a/../../evil.txt", "the path has a '..' component"),
            skipped("/tmp/evil.txt", "the path is absolute"),
            skipped("./../evil.txt", "the path has a '..' component"),
            file("top/classA/ok.jpg", b"ok"),
        ]
    );
    assert_no_evil_file(dir.path(), tmp_evil_existed);
}

#[test]
fn tar_links_and_special_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("links.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    append_link(&mut builder, "top/classA/link.jpg", EntryType::Symlink, "/etc/passwd");
    append_link(&mut builder, "top/classA/hard.jpg", EntryType::Link, "/etc/passwd");
    append_link(&mut builder, "top/up", EntryType::Symlink, "../../..");
    // A file "inside" the symlink is only data: its path names nothing on disk.
    append_raw(&mut builder, "top/up/evil.txt", b"harmless");
    builder.append(&raw_header(b"top/dev", EntryType::Char, 0), &[][..]).unwrap();
    builder.append(&raw_header(b"top/disk", EntryType::Block, 0), &[][..]).unwrap();
    builder.append(&raw_header(b"top/pipe", EntryType::Fifo, 0), &[][..]).unwrap();
    builder.append(&raw_header(b"top/weird", EntryType::new(b'V'), 0), &[][..]).unwrap();
    // A PAX global header (as `git archive` writes) is metadata: not reported at all.
    let global = b"52 comment=0123456789012345678901234567890123456789\n";
    builder.append(&raw_header(b"pax_global_header", EntryType::XGlobalHeader, 52), &global[..]).unwrap();
    append_raw(&mut builder, "top/classA/ok.jpg", b"ok");
    builder.into_inner().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 2, 7, 10)));
    assert_eq!(
        seen,
        vec![
            skipped("top/classA/link.jpg", "symbolic link"),
            skipped("top/classA/hard.jpg", "hard link"),
            skipped("top/up", "symbolic link"),
            file("top/up/evil.txt", b"harmless"),
            skipped("top/dev", "device file"),
            skipped("top/disk", "device file"),
            skipped("top/pipe", "named pipe (FIFO)"),
            skipped("top/weird", "unsupported tar entry type 'V'"),
            file("top/classA/ok.jpg", b"ok"),
        ]
    );
    let mut found = Vec::new();
    files_named(dir.path(), "evil.txt", &mut found);
    assert!(found.is_empty());
}

#[test]
fn zip_symlinks_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("links.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.add_symlink("top/classA/link.jpg", "/etc/passwd", deflated()).unwrap();
    zip.start_file("top/classA/ok.jpg", deflated()).unwrap();
    zip.write_all(b"ok").unwrap();
    zip.finish().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 1, 1, 2)));
    assert_eq!(seen, vec![skipped("top/classA/link.jpg", "symbolic link"), file("top/classA/ok.jpg", b"ok")]);
}

// ---------------------------------------------------------------------------------------------
// bombs and lying sizes

const MIB: u64 = 1 << 20;

/// A zip with a small file and `bomb_bytes` of zeros, deflated.
fn write_bomb(path: &Path, bomb_bytes: usize) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    zip.start_file("top/a/small.jpg", deflated()).unwrap();
    zip.write_all(b"small").unwrap();
    zip.start_file("top/a/bomb.jpg", deflated()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = bomb_bytes;
    while left > 0 {
        let n = left.min(zeros.len());
        zip.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    zip.finish().unwrap();
}

#[test]
fn a_zip_bomb_entry_is_skipped_by_its_declared_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.zip");
    write_bomb(&path, 100_000_000);
    assert!(std::fs::metadata(&path).unwrap().len() < 1_000_000, "the bomb should compress well");

    let (result, seen) = read_all(&path, &limits(100, MIB, 8 << 30));
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 1, 1, 5)));
    assert_eq!(
        seen,
        vec![
            file("top/a/small.jpg", b"small"),
            skipped("top/a/bomb.jpg", "the file has 100000000 bytes, over the limit of 1048576 bytes per file"),
        ]
    );
}

#[test]
fn a_zip_whose_central_directory_understates_a_size_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.zip");
    write_bomb(&path, 10_000_000);
    let mut bytes = std::fs::read(&path).unwrap();
    patch_central_sizes(&mut bytes, "top/a/bomb.jpg", None, Some(1000));
    std::fs::write(&path, &bytes).unwrap();

    // Declared 1000 bytes, well under the limit; the data expands to far more. The reader
    // stops right after the declared size instead of expanding 10 MB.
    let (result, seen) = read_all(&path, &limits(100, MIB, 8 << 30));
    assert_eq!(
        result,
        Err(ArchiveError::Corrupt("top/a/bomb.jpg: File is larger than its declared uncompressed size".into()))
    );
    assert_eq!(seen, vec![file("top/a/small.jpg", b"small")]);
}

#[test]
fn a_stored_zip_entry_with_understated_sizes_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.zip");
    write_zip(&path, &[("top/a/x.jpg", &noise(7, 100))], stored());
    let mut bytes = std::fs::read(&path).unwrap();
    patch_central_sizes(&mut bytes, "top/a/x.jpg", Some(10), Some(10));
    std::fs::write(&path, &bytes).unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Err(ArchiveError::Corrupt("top/a/x.jpg: Invalid checksum".into())));
    assert_eq!(seen, vec![]);
}

#[test]
fn a_zip_whose_central_directory_overstates_a_size_is_skipped_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.zip");
    write_zip(&path, &[("top/a/x.jpg", b"xx"), ("top/a/y.jpg", b"yy")], deflated());
    let mut bytes = std::fs::read(&path).unwrap();
    patch_central_sizes(&mut bytes, "top/a/x.jpg", None, Some(0x7000_0000));
    std::fs::write(&path, &bytes).unwrap();

    let (result, seen) = read_all(&path, &limits(100, MIB, 4 * MIB));
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 1, 1, 2)));
    assert_eq!(
        seen,
        vec![
            skipped("top/a/x.jpg", "the file has 1879048192 bytes, over the limit of 1048576 bytes per file"),
            file("top/a/y.jpg", b"yy"),
        ]
    );
}

fn medium_files() -> Vec<(String, Vec<u8>)> {
    (0..10).map(|i| (format!("top/c{}/{i}.jpg", i % 2), noise(i, 100 * 1024))).collect()
}

#[test]
fn a_zip_expanding_past_the_total_limit_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.zip");
    let files = medium_files();
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    write_zip(&path, &files, deflated());

    let (result, seen) = read_all(&path, &limits(100, MIB, 500 * 1024));
    assert_eq!(result, Err(ArchiveError::TooLarge { limit: 500 * 1024 }));
    assert_eq!(seen, vec![], "nothing is decompressed when the declared sizes are over the limit");

    // Exactly at the limit is fine.
    let (result, _) = read_all(&path, &limits(100, MIB, 1000 * 1024));
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 10, 0, 1000 * 1024)));
}

#[test]
fn a_tar_gz_expanding_past_the_total_limit_fails_as_it_streams() {
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("many.tar");
    let files = medium_files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    write_tar(&tar_path, &refs);
    let path = dir.path().join("many.tar.gz");
    gzip(&tar_path, &path);

    let (result, seen) = read_all(&path, &limits(100, MIB, 500 * 1024));
    assert_eq!(result, Err(ArchiveError::TooLarge { limit: 500 * 1024 }));
    let expected: Vec<ArchiveEntry> = files[..5].iter().map(|(n, b)| file(n, b)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn a_tar_gz_of_zeros_counts_skipped_entries_towards_the_total() {
    // 64 MiB of zeros in one entry: skipped (over the per-file limit), but the stream still
    // has to be decompressed to get past it, so it counts towards the total.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zeros.tar.gz");
    let mut builder = tar::Builder::new(GzEncoder::new(std::fs::File::create(&path).unwrap(), Compression::fast()));
    append_raw(&mut builder, "top/a/ok.jpg", b"ok");
    let size = 64 * MIB;
    builder.append(&raw_header(b"top/a/zeros.jpg", EntryType::Regular, size), std::io::repeat(0).take(size)).unwrap();
    builder.into_inner().unwrap().finish().unwrap();

    let (result, seen) = read_all(&path, &limits(100, MIB, 16 * MIB));
    assert_eq!(result, Err(ArchiveError::TooLarge { limit: 16 * MIB }));
    assert_eq!(seen, vec![file("top/a/ok.jpg", b"ok")]);

    let (result, seen) = read_all(&path, &limits(100, MIB, 128 * MIB));
    assert_eq!(result, Ok(summary(ArchiveFormat::TarGz, 1, 1, 2)));
    assert_eq!(
        seen,
        vec![
            file("top/a/ok.jpg", b"ok"),
            skipped("top/a/zeros.jpg", "the file has 67108864 bytes, over the limit of 1048576 bytes per file"),
        ]
    );
}

/// A tar written block by block: a header declaring `declared` bytes, then `data` padded to
/// a block, then the given tail.
fn tar_with_lying_header(declared: u64, data: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut bytes = raw_header(b"top/a/liar.jpg", EntryType::Regular, declared).as_bytes().to_vec();
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes.extend_from_slice(tail);
    bytes
}

#[test]
fn a_tar_header_that_understates_its_size_yields_only_the_declared_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.tar");
    let mut next = raw_header(b"top/b/next.jpg", EntryType::Regular, 4).as_bytes().to_vec();
    next.extend_from_slice(b"next");
    next.resize(1024 + 1024, 0); // the data block, then the end-of-archive marker
    std::fs::write(&path, tar_with_lying_header(5, b"0123456789", &next)).unwrap();

    // Tar has no checksum over data: the rest of the block is padding to a reader.
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 2, 0, 9)));
    assert_eq!(seen, vec![file("top/a/liar.jpg", b"01234"), file("top/b/next.jpg", b"next")]);
}

#[test]
fn a_tar_header_that_overstates_its_size_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.tar");
    std::fs::write(&path, tar_with_lying_header(100_000, b"0123456789", &[0; 1024])).unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(
        result,
        Err(ArchiveError::Corrupt("top/a/liar.jpg: the file has 1536 bytes, its header says 100000".into()))
    );
    assert_eq!(seen, vec![]);
}

#[test]
fn a_tar_entry_over_the_per_file_limit_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tar");
    write_tar(&path, &[("top/a/big.jpg", &noise(1, 2000)), ("top/a/ok.jpg", b"ok")]);
    let (result, seen) = read_all(&path, &limits(100, 1000, MIB));
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 1, 1, 2)));
    assert_eq!(
        seen,
        vec![
            skipped("top/a/big.jpg", "the file has 2000 bytes, over the limit of 1000 bytes per file"),
            file("top/a/ok.jpg", b"ok"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// empty, not an archive, truncated

#[test]
fn empty_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();

    let zip_path = dir.path().join("empty.zip");
    zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap()).finish().unwrap();
    assert_eq!(read_all(&zip_path, &ArchiveLimits::default()), (Err(ArchiveError::Empty), vec![]));

    let tar_path = dir.path().join("empty.tar");
    tar::Builder::new(std::fs::File::create(&tar_path).unwrap()).into_inner().unwrap();
    assert_eq!(std::fs::metadata(&tar_path).unwrap().len(), 1024);
    assert_eq!(read_all(&tar_path, &ArchiveLimits::default()), (Err(ArchiveError::Empty), vec![]));

    let tgz_path = dir.path().join("empty.tar.gz");
    gzip(&tar_path, &tgz_path);
    assert_eq!(read_all(&tgz_path, &ArchiveLimits::default()), (Err(ArchiveError::Empty), vec![]));
}

#[test]
fn archives_with_only_folders_and_skipped_entries_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("folders.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.add_directory("top/", deflated()).unwrap();
    zip.add_directory("top/classA/", deflated()).unwrap();
    zip.start_file("top/.hidden", deflated()).unwrap();
    zip.finish().unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Err(ArchiveError::Empty));
    assert_eq!(seen, vec![skipped("top/.hidden", "hidden file or folder")]);
}

#[test]
fn files_that_are_not_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = noise(42, 10_000);
    random[0] = b'R';
    let text = "daisy,roses,tulips\n".repeat(100);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random.zip", random),
        ("text.tar", text.clone().into_bytes()),
        ("zero.tar.gz", Vec::new()),
        ("short.tar", vec![0; 100]),
        ("pk.zip", b"PK".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(read_all(&path, &ArchiveLimits::default()), (Err(ArchiveError::NotAnArchive), vec![]), "{name}");
    }

    // A gzip stream that holds something other than a tar.
    let plain = dir.path().join("text.txt");
    std::fs::write(&plain, &text).unwrap();
    let gz = dir.path().join("text.tar.gz");
    gzip(&plain, &gz);
    assert_eq!(read_all(&gz, &ArchiveLimits::default()), (Err(ArchiveError::NotAnArchive), vec![]));
}

#[test]
fn a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let (result, seen) = read_all(&dir.path().join("missing.zip"), &ArchiveLimits::default());
    assert!(matches!(result, Err(ArchiveError::Io(_))), "{result:?}");
    assert_eq!(seen, vec![]);
}

fn truncate_to(path: &Path, len: u64) {
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

fn half(path: &Path) {
    truncate_to(path, std::fs::metadata(path).unwrap().len() / 2);
}

fn big_flowers() -> Vec<(String, Vec<u8>)> {
    (0..8).map(|i| (format!("flower_photos/c{}/{i}.jpg", i % 3), noise(100 + i, 20_000))).collect()
}

#[test]
fn a_truncated_zip_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.zip");
    let files = big_flowers();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    write_zip(&path, &refs, deflated());
    half(&path);

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert!(matches!(result, Err(ArchiveError::Corrupt(_))), "{result:?}");
    assert_eq!(seen, vec![], "without its central directory nothing of a zip can be trusted");
}

#[test]
fn a_truncated_tar_gz_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("cut.tar");
    let files = big_flowers();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    write_tar(&tar_path, &refs);
    let path = dir.path().join("cut.tar.gz");
    gzip(&tar_path, &path);
    half(&path);

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert!(matches!(result, Err(ArchiveError::Corrupt(_))), "{result:?}");
    // The entries before the cut were handed over, intact and in order; then the error.
    let expected: Vec<ArchiveEntry> = files.iter().map(|(n, b)| file(n, b)).collect();
    assert!(seen.len() < files.len());
    assert_eq!(seen, expected[..seen.len()]);
}

#[test]
fn a_truncated_tar_is_corrupt_even_at_an_entry_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.tar");
    let files = big_flowers();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    write_tar(&path, &refs);
    let expected: Vec<ArchiveEntry> = files.iter().map(|(n, b)| file(n, b)).collect();

    // In the middle of the fourth entry's data.
    let entry = 512 + 20_000_u64.div_ceil(512) * 512;
    truncate_to(&path, 3 * entry + 512 + 100);
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(
        result,
        Err(ArchiveError::Corrupt("flower_photos/c0/3.jpg: the file has 100 bytes, its header says 20000".into()))
    );
    assert_eq!(seen, expected[..3]);

    // Right after the third entry: no end-of-archive marker.
    truncate_to(&path, 3 * entry);
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Err(ArchiveError::Corrupt("the tar stream ends without its end-of-archive marker".into())));
    assert_eq!(seen, expected[..3]);

    // In the middle of a header.
    truncate_to(&path, 3 * entry + 200);
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert!(matches!(result, Err(ArchiveError::Corrupt(_))), "{result:?}");
    assert_eq!(seen, expected[..3]);
}

#[test]
fn a_zip_naming_one_file_twice_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("twice.zip");
    write_zip(&path, &[("top/a/1.jpg", b"first"), ("top/a/2.jpg", b"second")], deflated());
    let mut bytes = std::fs::read(&path).unwrap();
    // Rename the second entry, in its local header and in the central directory.
    let mut renamed = 0;
    for at in 0..bytes.len() - 11 {
        if &bytes[at..at + 11] == b"top/a/2.jpg" {
            bytes[at..at + 11].copy_from_slice(b"top/a/1.jpg");
            renamed += 1;
        }
    }
    assert_eq!(renamed, 2);
    std::fs::write(&path, &bytes).unwrap();

    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Err(ArchiveError::Corrupt("the central directory names the same file more than once".into())));
    assert_eq!(seen, vec![]);
}

// ---------------------------------------------------------------------------------------------
// entry count, visitor

#[test]
fn too_many_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..11).map(|i| format!("top/c/{i}.jpg")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();

    let zip_path = dir.path().join("many.zip");
    write_zip(&zip_path, &files, deflated());
    let (result, seen) = read_all(&zip_path, &limits(10, MIB, MIB));
    assert_eq!(result, Err(ArchiveError::TooManyEntries { limit: 10 }));
    assert_eq!(seen, vec![], "a zip is refused from its central directory");
    assert_eq!(read_all(&zip_path, &limits(11, MIB, MIB)).0, Ok(summary(ArchiveFormat::Zip, 11, 0, 11)));

    let tar_path = dir.path().join("many.tar");
    write_tar(&tar_path, &files);
    let (result, seen) = read_all(&tar_path, &limits(10, MIB, MIB));
    assert_eq!(result, Err(ArchiveError::TooManyEntries { limit: 10 }));
    assert_eq!(seen.len(), 10, "a tar is refused as it streams");

    // Folders count too.
    let dirs_path = dir.path().join("dirs.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&dirs_path).unwrap());
    for i in 0..10 {
        append_dir(&mut builder, &format!("top/{i}/"));
    }
    append_raw(&mut builder, "top/0/x.jpg", b"x");
    builder.into_inner().unwrap();
    assert_eq!(read_all(&dirs_path, &limits(10, MIB, MIB)), (Err(ArchiveError::TooManyEntries { limit: 10 }), vec![]));
}

/// A zip of `n` empty stored files named `top/c/<i>`, built in memory.
fn tiny_entries_zip(n: usize) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..n {
        zip.start_file(format!("top/c/{i}"), stored()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Where the end-of-central-directory record starts (its signature, searched from the end).
fn eocd_offset(zip: &[u8]) -> usize {
    zip.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap()
}

/// Rewrites the entry counts (this disk's and the total) of the end record.
fn forge_count(zip: &mut [u8], count: u16) {
    let at = eocd_offset(zip);
    zip[at + 8..at + 10].copy_from_slice(&count.to_le_bytes());
    zip[at + 10..at + 12].copy_from_slice(&count.to_le_bytes());
}

#[test]
fn a_zip_of_100000_tiny_entries_is_refused_from_its_end_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.zip");
    // 100 000 entries are more than a u16 holds: the zip crate writes ZIP64 end records.
    let bytes = tiny_entries_zip(100_000);
    std::fs::write(&path, &bytes).unwrap();
    let started = std::time::Instant::now();
    let (result, seen) = read_all(&path, &limits(99_999, MIB, MIB));
    let elapsed = started.elapsed();
    assert_eq!(result, Err(ArchiveError::TooManyEntries { limit: 99_999 }));
    assert_eq!(seen, vec![]);
    println!("100000 entries ({} bytes) refused in {elapsed:?}", bytes.len());
    // Reading the end record is a few small reads, not a pass over 100 000 headers.
    assert!(elapsed < std::time::Duration::from_millis(500), "{elapsed:?}");
    let text = result.unwrap_err().to_string();
    assert!(text.contains("more than 99999 entries") && text.contains("--max-archive-entries"), "{text}");
}

#[test]
fn a_forged_entry_count_is_caught_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.zip");

    // The end record says 5; the directory holds 3 000 headers of 53 to 56 bytes.
    let mut under = tiny_entries_zip(3000);
    forge_count(&mut under, 5);
    std::fs::write(&path, &under).unwrap();
    let (result, seen) = read_all(&path, &limits(10, MIB, MIB));
    assert!(
        matches!(&result, Err(ArchiveError::Corrupt(m)) if m.contains("declares 5 entries for a central directory of")),
        "{result:?}"
    );
    assert_eq!(seen, vec![]);

    // The same, with the directory size forged to fit 5 headers: the zip crate reads five
    // headers at most, so no more than five entries are ever seen.
    let at = eocd_offset(&under);
    under[at + 12..at + 16].copy_from_slice(&(5u32 * 53).to_le_bytes());
    std::fs::write(&path, &under).unwrap();
    let (_, seen) = read_all(&path, &limits(10, MIB, MIB));
    assert!(seen.len() <= 5, "{} entries seen", seen.len());

    // The end record says 60 000; the directory holds 2 headers.
    let mut over = tiny_entries_zip(2);
    forge_count(&mut over, 60_000);
    std::fs::write(&path, &over).unwrap();
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert!(matches!(&result, Err(ArchiveError::Corrupt(m)) if m.contains("declares 60000 entries")), "{result:?}");
    assert_eq!(seen, vec![]);
    assert_eq!(read_all(&path, &limits(1000, MIB, MIB)).0, Err(ArchiveError::TooManyEntries { limit: 1000 }));
}

#[test]
fn a_truncated_or_missing_end_record_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.zip");
    let whole = tiny_entries_zip(3);
    let at = eocd_offset(&whole);
    for cut in [at + 4, at + 21] {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let (result, seen) = read_all(&path, &ArchiveLimits::default());
        assert!(
            matches!(&result, Err(ArchiveError::Corrupt(m)) if m.contains("no end-of-central-directory record")),
            "cut at {cut}: {result:?}"
        );
        assert_eq!(seen, vec![]);
    }
}

#[test]
fn a_zip_path_over_4096_bytes_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.zip");
    let long = format!("top/{}.jpg", "a".repeat(5000));
    write_zip(&path, &[(long.as_str(), b"x"), ("top/ok.jpg", b"ok")], stored());
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Zip, 1, 1, 2)));
    let shown = format!("top/{}…", "a".repeat(252));
    assert_eq!(
        seen,
        vec![skipped(&shown, "the path has 5008 bytes, over the limit of 4096"), file("top/ok.jpg", b"ok")]
    );
}

#[test]
fn tar_sparse_files_and_doubled_extension_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    // A GNU sparse entry, and a PAX one (GNU.sparse.* keys describe a sparse map).
    builder.append(&raw_header(b"top/a/gnu.jpg", EntryType::GNUSparse, 0), &[][..]).unwrap();
    builder.append_pax_extensions([("GNU.sparse.size", "1000000000".as_bytes())]).unwrap();
    append_raw(&mut builder, "top/a/pax.jpg", b"map");
    append_raw(&mut builder, "top/b/ok.jpg", b"ok");
    builder.into_inner().unwrap();
    let (result, seen) = read_all(&path, &ArchiveLimits::default());
    assert_eq!(result, Ok(summary(ArchiveFormat::Tar, 1, 2, 2)));
    assert_eq!(
        seen,
        vec![
            skipped("top/a/gnu.jpg", "sparse file (not supported)"),
            skipped("top/a/pax.jpg", "sparse file (not supported)"),
            file("top/b/ok.jpg", b"ok"),
        ]
    );

    // Two long names for one entry: readers would disagree on its name.
    let doubled = dir.path().join("doubled.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&doubled).unwrap());
    for name in [&b"top/a/first.jpg"[..], b"top/a/second.jpg"] {
        builder.append(&raw_header(b"././@LongLink", EntryType::GNULongName, name.len() as u64), name).unwrap();
    }
    append_raw(&mut builder, "top/a/x.jpg", b"x");
    builder.into_inner().unwrap();
    let (result, seen) = read_all(&doubled, &ArchiveLimits::default());
    assert_eq!(result, Err(ArchiveError::Corrupt("two extension headers of the same kind describe one entry".into())));
    assert_eq!(seen, vec![]);
}

#[test]
fn a_tar_is_refused_at_the_limit_before_the_next_entry_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("count.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for i in 0..3 {
        append_raw(&mut builder, &format!("top/a/{i}.jpg"), b"x");
    }
    // The fourth entry's data would be the per-file maximum; it is never read.
    let big = vec![1u8; MIB as usize];
    append_raw(&mut builder, "top/a/big.jpg", &big);
    builder.into_inner().unwrap();
    let mut delivered = 0u64;
    let result = read_archive(&path, &limits(3, MIB, 16 * MIB), &mut |entry| {
        if let ArchiveEntry::File(file) = entry {
            delivered += file.bytes.len() as u64;
        }
        Ok(())
    });
    assert_eq!(result, Err(ArchiveError::TooManyEntries { limit: 3 }));
    assert_eq!(delivered, 3);
}

#[test]
fn a_visitor_error_stops_the_reading() {
    let dir = tempfile::tempdir().unwrap();
    let files = [("top/a/1.jpg", &b"1"[..]), ("top/a/.hidden", b"h"), ("top/a/2.jpg", b"2"), ("top/a/3.jpg", b"3")];
    let zip_path = dir.path().join("v.zip");
    write_zip(&zip_path, &files, deflated());
    let tar_path = dir.path().join("v.tar");
    write_tar(&tar_path, &files);

    for path in [zip_path, tar_path] {
        let mut seen = Vec::new();
        let result = read_archive(&path, &ArchiveLimits::default(), &mut |entry| {
            seen.push(entry);
            if seen.len() == 3 { Err("the disk is full".to_owned()) } else { Ok(()) }
        });
        assert_eq!(result, Err(ArchiveError::Visitor("the disk is full".into())));
        assert_eq!(
            seen,
            vec![
                file("top/a/1.jpg", b"1"),
                skipped("top/a/.hidden", "hidden file or folder"),
                file("top/a/2.jpg", b"2")
            ]
        );
    }
}

#[test]
fn a_panicking_visitor_panics_out_of_read_archive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.zip");
    write_zip(&path, &[("top/a/1.jpg", b"1")], deflated());
    let outcome =
        std::panic::catch_unwind(|| read_archive(&path, &ArchiveLimits::default(), &mut |_| panic!("visitor bug")));
    let payload = outcome.expect_err("the visitor's panic is not swallowed");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"visitor bug"));
}

// ---------------------------------------------------------------------------------------------
// mangled archives never panic

/// Flips bytes all over `original` and cuts it at many lengths: every outcome is a result,
/// never a panic (which `read_archive` would report as "the archive reader failed"). Cuts
/// shorter than `complete_from` bytes must be errors.
fn assert_survives_mutations(name: &str, original: &[u8], complete_from: usize, dir: &Path) {
    let path = dir.join(name);
    let mut mutations = 0;
    let step = (original.len() / 150).max(1);
    for at in (0..original.len()).step_by(step) {
        for flip in [0xff_u8, 0x01, 0x80] {
            let mut bytes = original.to_vec();
            bytes[at] ^= flip;
            std::fs::write(&path, &bytes).unwrap();
            let (result, _) = read_all(&path, &limits(1000, MIB, 16 * MIB));
            if let Err(ArchiveError::Corrupt(message)) = &result {
                assert!(!message.contains("the archive reader failed"), "{name} flipped at {at}: {message}");
            }
            mutations += 1;
        }
    }
    // Cut at every length step too.
    for len in (0..complete_from).step_by(step).chain(complete_from.saturating_sub(20)..complete_from) {
        std::fs::write(&path, &original[..len]).unwrap();
        let (result, _) = read_all(&path, &limits(1000, MIB, 16 * MIB));
        assert!(result.is_err(), "{name} cut to {len} bytes was accepted: {result:?}");
        if let Err(ArchiveError::Corrupt(message)) = &result {
            assert!(!message.contains("the archive reader failed"), "{name} cut at {len}: {message}");
        }
    }
    assert!(mutations > 100);
}

#[test]
fn mangled_archives_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let files = [("top/a/1.jpg", noise(1, 300)), ("top/b/2.jpg", vec![7; 2000]), ("top/b/3.jpg", noise(3, 50))];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (*n, b.as_slice())).collect();

    let zip_path = dir.path().join("m.zip");
    write_zip(&zip_path, &refs, deflated());
    let tar_path = dir.path().join("m.tar");
    write_tar(&tar_path, &refs);
    let tgz_path = dir.path().join("m.tar.gz");
    gzip(&tar_path, &tgz_path);

    let zip = std::fs::read(&zip_path).unwrap();
    assert_survives_mutations("zip", &zip, zip.len(), dir.path());
    // One zero block ends a tar: the second one of the end-of-archive marker is optional.
    let tar = std::fs::read(&tar_path).unwrap();
    assert_survives_mutations("tar", &tar, tar.len() - 512, dir.path());
    // The gzip trailer is checked, so a tar.gz is complete only with all of its bytes.
    let tgz = std::fs::read(&tgz_path).unwrap();
    assert_survives_mutations("tar.gz", &tgz, tgz.len(), dir.path());
}
