//! The end of a zip file: its end-of-central-directory record, and the ZIP64 record it may
//! point to, read by hand before the zip crate parses the central directory. The crate
//! allocates for every entry the record declares and reads them all before anyone can count
//! them; this refuses an archive that declares more entries than the limit, or a central
//! directory no real archive has, while nothing but these few bytes has been read.
//!
//! A forged count is caught either way: a count larger than the directory's bytes can hold,
//! or a directory far larger than its count needs, is corrupt; and the walk over the entries
//! still counts each one against the limit.

use std::io::{self, Read, Seek, SeekFrom};

use super::ArchiveError;

const EOCD_SIGNATURE: &[u8; 4] = b"PK\x05\x06";
/// The fixed part of the end-of-central-directory record; a comment of up to 65,535 bytes
/// follows it.
const EOCD_BYTES: u64 = 22;
const MAX_COMMENT_BYTES: u64 = u16::MAX as u64;
const LOCATOR_SIGNATURE: &[u8; 4] = b"PK\x06\x07";
const LOCATOR_BYTES: u64 = 20;
const ZIP64_EOCD_SIGNATURE: &[u8; 4] = b"PK\x06\x06";
const ZIP64_EOCD_BYTES: u64 = 56;

/// The fixed part of a central-directory header: no entry takes fewer bytes.
const MIN_HEADER_BYTES: u64 = 46;
/// The most bytes a central-directory header of a real archive takes: its fixed part, a name
/// of up to 4096 bytes (longer ones are skipped anyway) and room for extra fields and a
/// comment, which real archives keep to a few dozen bytes.
pub(super) const MAX_HEADER_BYTES: u64 = 16 * 1024;

/// What one end-of-central-directory record declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Declared {
    pub entries: u64,
    /// Bytes of the central directory.
    pub size: u64,
    /// Whether the figures come from a ZIP64 record.
    pub zip64: bool,
}

/// Refuses the zip in `reader` when an end-of-central-directory record in it declares more
/// than `max_entries` entries or a central directory that cannot be right. Every record in
/// the last 65,557 bytes whose comment fits is checked, since the zip crate falls back from
/// one to an earlier one when the first does not lead to a directory.
pub(super) fn check_declared(reader: &mut (impl Read + Seek), max_entries: usize) -> Result<(), ArchiveError> {
    let io = |e: io::Error| ArchiveError::Io(e.to_string());
    let file_bytes = reader.seek(SeekFrom::End(0)).map_err(io)?;
    let records = declared_records(reader, file_bytes).map_err(io)??;
    if records.is_empty() {
        return Err(ArchiveError::Corrupt(
            "the zip has no end-of-central-directory record: it is truncated, or not a zip".into(),
        ));
    }
    for declared in records {
        check_one(declared, file_bytes, max_entries)?;
    }
    Ok(())
}

fn check_one(declared: Declared, file_bytes: u64, max_entries: usize) -> Result<(), ArchiveError> {
    let Declared { entries, size, zip64 } = declared;
    let record =
        if zip64 { "the ZIP64 end-of-central-directory record" } else { "the end-of-central-directory record" };
    if entries > max_entries as u64 {
        return Err(ArchiveError::TooManyEntries { limit: max_entries });
    }
    if size > file_bytes {
        return Err(ArchiveError::Corrupt(format!(
            "{record} gives the central directory {size} bytes, more than the whole file's {file_bytes}"
        )));
    }
    if entries.saturating_mul(MIN_HEADER_BYTES) > size {
        return Err(ArchiveError::Corrupt(format!(
            "{record} declares {entries} entries, but its central directory of {size} bytes holds at most {}",
            size / MIN_HEADER_BYTES
        )));
    }
    if size > entries.saturating_mul(MAX_HEADER_BYTES) {
        return Err(ArchiveError::Corrupt(format!(
            "{record} declares {entries} entries for a central directory of {size} bytes, more than \
             {MAX_HEADER_BYTES} bytes an entry"
        )));
    }
    Ok(())
}

/// The figures of every end-of-central-directory record near the end of the file, last
/// first. The outer error is an I/O failure, the inner one a ZIP64 record that is not where
/// its locator says.
fn declared_records(
    reader: &mut (impl Read + Seek),
    file_bytes: u64,
) -> io::Result<Result<Vec<Declared>, ArchiveError>> {
    let tail_start = file_bytes.saturating_sub(EOCD_BYTES + MAX_COMMENT_BYTES);
    let tail = read_at(reader, tail_start, (file_bytes - tail_start) as usize)?;
    let mut records = Vec::new();
    let Some(last) = tail.len().checked_sub(EOCD_BYTES as usize) else {
        return Ok(Ok(records));
    };
    for at in (0..=last).rev() {
        let record = &tail[at..at + EOCD_BYTES as usize];
        if &record[..4] != EOCD_SIGNATURE {
            continue;
        }
        let offset = tail_start + at as u64;
        // The comment must end within the file (the zip crate allows bytes after it).
        if offset + EOCD_BYTES + u64::from(u16_at(record, 20)) > file_bytes {
            continue;
        }
        let (entries, size, dir_offset) = (u16_at(record, 10), u32_at(record, 12), u32_at(record, 16));
        let may_be_zip64 = entries == u16::MAX || size == u32::MAX || dir_offset == u32::MAX;
        let locator = match offset.checked_sub(LOCATOR_BYTES) {
            Some(locator_offset) if may_be_zip64 => {
                let locator = read_at(reader, locator_offset, LOCATOR_BYTES as usize)?;
                (&locator[..4] == LOCATOR_SIGNATURE).then(|| (locator_offset, u64_at(&locator, 8)))
            }
            _ => None,
        };
        let declared = match locator {
            None => Declared { entries: entries.into(), size: size.into(), zip64: false },
            Some((locator_offset, record_offset)) => {
                let fits = record_offset.checked_add(ZIP64_EOCD_BYTES).is_some_and(|end| end <= locator_offset);
                let zip64 = if fits { read_at(reader, record_offset, ZIP64_EOCD_BYTES as usize)? } else { Vec::new() };
                if !fits || &zip64[..4] != ZIP64_EOCD_SIGNATURE {
                    return Ok(Err(ArchiveError::Corrupt(format!(
                        "the ZIP64 end-of-central-directory record is not at offset {record_offset}, where its \
                         locator says"
                    ))));
                }
                Declared { entries: u64_at(&zip64, 32), size: u64_at(&zip64, 40), zip64: true }
            }
        };
        records.push(declared);
    }
    Ok(Ok(records))
}

/// `len` bytes from `offset`; fewer only when the file ends first.
fn read_at(reader: &mut (impl Read + Seek), offset: u64, len: usize) -> io::Result<Vec<u8>> {
    reader.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended early"));
    }
    Ok(bytes)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    /// A zip of `n` empty files, built in memory.
    fn zip_of(n: usize) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for i in 0..n {
            zip.start_file(format!("f{i}"), options).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn eocd_at(bytes: &[u8]) -> usize {
        bytes.windows(4).rposition(|w| w == EOCD_SIGNATURE).unwrap()
    }

    fn check(bytes: &[u8], max_entries: usize) -> Result<(), ArchiveError> {
        check_declared(&mut Cursor::new(bytes), max_entries)
    }

    #[test]
    fn a_plain_zip_declares_what_it_holds() {
        let bytes = zip_of(3);
        let file_bytes = bytes.len() as u64;
        let records = declared_records(&mut Cursor::new(&bytes), file_bytes).unwrap().unwrap();
        // Three headers of 46 bytes and a two-byte name each ("f0".."f2"), no extra fields.
        assert_eq!(records, [Declared { entries: 3, size: 3 * 48, zip64: false }]);
        assert!(check(&bytes, 3).is_ok());
        assert_eq!(check(&bytes, 2), Err(ArchiveError::TooManyEntries { limit: 2 }));
    }

    #[test]
    fn a_count_over_what_the_directory_holds_is_corrupt() {
        let mut bytes = zip_of(2);
        let at = eocd_at(&bytes);
        for field in [8, 10] {
            bytes[at + field..at + field + 2].copy_from_slice(&60_000u16.to_le_bytes());
        }
        let err = check(&bytes, 200_000).unwrap_err().to_string();
        assert!(err.contains("declares 60000 entries, but its central directory of 96 bytes holds at most 2"), "{err}");
        // Over the limit, the limit is what the answer names.
        assert_eq!(check(&bytes, 1000), Err(ArchiveError::TooManyEntries { limit: 1000 }));
    }

    #[test]
    fn a_count_far_under_the_directory_is_corrupt() {
        // 1 000 entries of 49 bytes ("f0".."f999") declared as 2.
        let mut bytes = zip_of(1000);
        let at = eocd_at(&bytes);
        for field in [8, 10] {
            bytes[at + field..at + field + 2].copy_from_slice(&2u16.to_le_bytes());
        }
        let size = u32_at(&bytes[at..], 12);
        assert_eq!(size, 10 * 48 + 90 * 49 + 900 * 50);
        let err = check(&bytes, 200_000).unwrap_err().to_string();
        assert!(err.contains(&format!("declares 2 entries for a central directory of {size} bytes")), "{err}");
    }

    #[test]
    fn a_directory_larger_than_the_file_is_corrupt() {
        let mut bytes = zip_of(1);
        let at = eocd_at(&bytes);
        bytes[at + 12..at + 16].copy_from_slice(&1_000_000u32.to_le_bytes());
        let err = check(&bytes, 10).unwrap_err().to_string();
        assert!(err.contains("1000000 bytes, more than the whole file's"), "{err}");
    }

    #[test]
    fn a_truncated_end_record_is_refused() {
        let bytes = zip_of(2);
        let at = eocd_at(&bytes);
        for cut in [at + 3, at + 10, bytes.len() - 1] {
            let err = check(&bytes[..cut], 10).unwrap_err();
            assert!(
                matches!(err, ArchiveError::Corrupt(ref m) if m.contains("no end-of-central-directory")),
                "{cut}: {err}"
            );
        }
        assert!(matches!(check(b"", 10), Err(ArchiveError::Corrupt(_))));
    }

    #[test]
    fn a_comment_that_runs_past_the_end_does_not_count() {
        let mut bytes = zip_of(2);
        let at = eocd_at(&bytes);
        bytes[at + 20..at + 22].copy_from_slice(&10u16.to_le_bytes());
        assert!(matches!(check(&bytes, 10), Err(ArchiveError::Corrupt(m)) if m.contains("no end-of-central")));
    }

    #[test]
    fn every_record_near_the_end_is_checked() {
        // A second record in the comment, declaring a million ZIP64 entries: the zip crate
        // would fall back from one record to another, so both must pass.
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("a", zip::write::SimpleFileOptions::default()).unwrap();
        let mut fake = EOCD_SIGNATURE.to_vec();
        fake.extend_from_slice(&[0; 4]);
        fake.extend_from_slice(&50_000u16.to_le_bytes());
        fake.extend_from_slice(&50_000u16.to_le_bytes());
        fake.extend_from_slice(&(50_000u32 * 46).to_le_bytes());
        fake.extend_from_slice(&0u32.to_le_bytes());
        fake.extend_from_slice(&0u16.to_le_bytes());
        zip.set_raw_comment(fake.into_boxed_slice()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let records = declared_records(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].entries, 50_000);
        assert_eq!(check(&bytes, 1000), Err(ArchiveError::TooManyEntries { limit: 1000 }));
    }

    /// A zip whose end records are ZIP64 ones declaring `entries` entries in a directory of
    /// `size` bytes (the directory itself is the real one, of one entry).
    fn zip64_declaring(entries: u64, size: u64) -> Vec<u8> {
        let mut bytes = zip_of(1);
        let at = eocd_at(&bytes);
        let (dir_size, dir_offset) = (u32_at(&bytes[at..], 12), u32_at(&bytes[at..], 16));
        bytes.truncate(at);
        let record_offset = bytes.len() as u64;
        let mut record = ZIP64_EOCD_SIGNATURE.to_vec();
        record.extend_from_slice(&(ZIP64_EOCD_BYTES - 12).to_le_bytes());
        record.extend_from_slice(&[45, 0, 45, 0]);
        record.extend_from_slice(&[0; 8]);
        record.extend_from_slice(&entries.to_le_bytes());
        record.extend_from_slice(&entries.to_le_bytes());
        record.extend_from_slice(&size.to_le_bytes());
        record.extend_from_slice(&u64::from(dir_offset).to_le_bytes());
        bytes.write_all(&record).unwrap();
        let mut locator = LOCATOR_SIGNATURE.to_vec();
        locator.extend_from_slice(&0u32.to_le_bytes());
        locator.extend_from_slice(&record_offset.to_le_bytes());
        locator.extend_from_slice(&1u32.to_le_bytes());
        bytes.write_all(&locator).unwrap();
        let mut end = EOCD_SIGNATURE.to_vec();
        end.extend_from_slice(&[0; 4]);
        end.extend_from_slice(&u16::MAX.to_le_bytes());
        end.extend_from_slice(&u16::MAX.to_le_bytes());
        end.extend_from_slice(&dir_size.to_le_bytes());
        end.extend_from_slice(&u32::MAX.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        bytes.write_all(&end).unwrap();
        bytes
    }

    #[test]
    fn zip64_records_are_read_and_checked() {
        let one = zip64_declaring(1, 48);
        let records = declared_records(&mut Cursor::new(&one), one.len() as u64).unwrap().unwrap();
        assert_eq!(records, [Declared { entries: 1, size: 48, zip64: true }]);
        assert!(check(&one, 1).is_ok());
        // The zip crate reads it as the archive it is.
        let mut archive = zip::ZipArchive::new(Cursor::new(&one)).unwrap();
        assert_eq!(archive.len(), 1);
        assert_eq!(archive.by_index(0).unwrap().name().unwrap(), "f0");

        let many = zip64_declaring(5_000_000_000, 47);
        assert_eq!(check(&many, 200_000), Err(ArchiveError::TooManyEntries { limit: 200_000 }));
        let huge = zip64_declaring(1, u64::MAX);
        let err = check(&huge, 200_000).unwrap_err().to_string();
        assert!(err.contains("ZIP64") && err.contains("more than the whole file's"), "{err}");
    }

    #[test]
    fn a_zip64_locator_pointing_elsewhere_is_corrupt() {
        let mut bytes = zip64_declaring(1, 48);
        let locator = bytes.len() - EOCD_BYTES as usize - LOCATOR_BYTES as usize;
        bytes[locator + 8..locator + 16].copy_from_slice(&3u64.to_le_bytes());
        let err = check(&bytes, 10).unwrap_err().to_string();
        assert!(err.contains("not at offset 3, where its locator says"), "{err}");
        bytes[locator + 8..locator + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&bytes, 10).unwrap_err().to_string().contains("where its locator says"));
    }
}
