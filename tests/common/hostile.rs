//! Hostile inputs for the robustness tests: images whose headers lie, archives that
//! attack their reader, and the fixture model in every resize mode.

use std::io::{Cursor, Write};
use std::path::Path;

use tar::{EntryType, Header};

use super::fixture_models;

/// A PNG whose header claims `width × height`, followed by the start of pixel data that
/// never finishes: only a decoder that reads the header first can answer "too large".
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    let idat = b"IDAT\x78\x9c\x00\x00\x00\xff\xff".to_vec();
    png.extend(((idat.len() - 4) as u32).to_be_bytes());
    png.extend(&idat);
    png.extend(crc32(&idat).to_be_bytes());
    png
}

/// The fixture model three times over, as `tiny_pad`, `tiny_crop` and `tiny_stretch`.
pub fn models_in_every_mode(dir: &Path) {
    let source = fixture_models();
    let manifest = std::fs::read_to_string(source.join("tiny_nchw.toml")).unwrap();
    assert!(manifest.contains("resize = \"stretch\""), "the fixture manifest changed: {manifest}");
    for file in ["tiny_nchw.onnx", "fixture_labels.tsv"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    for mode in ["pad", "crop", "stretch"] {
        let text = manifest.replace("resize = \"stretch\"", &format!("resize = \"{mode}\""));
        std::fs::write(dir.join(format!("tiny_{mode}.toml")), text).unwrap();
    }
}

/// An 8×8 grayscale progressive JPEG: a DC scan and `ac_scans` AC scans, every
/// coefficient 0, each Huffman table one 1-bit code (so each scan's data is 0x7F).
pub fn progressive_jpeg(ac_scans: u32) -> Vec<u8> {
    let segment = |marker: u8, payload: &[u8]| {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(payload);
        out
    };
    let table = |class_and_id: u8| [&[class_and_id, 1][..], &[0; 15], &[0x00]].concat();
    let mut jpeg = vec![0xFF, 0xD8];
    jpeg.extend(segment(0xDB, &[&[0x00][..], &[1; 64]].concat()));
    jpeg.extend(segment(0xC2, &[8, 0, 8, 0, 8, 1, 1, 0x11, 0]));
    jpeg.extend(segment(0xC4, &table(0x00)));
    jpeg.extend(segment(0xC4, &table(0x10)));
    jpeg.extend(segment(0xDA, &[1, 1, 0x00, 0, 0, 0x00]));
    jpeg.push(0x7F);
    for _ in 0..ac_scans {
        jpeg.extend(segment(0xDA, &[1, 1, 0x00, 1, 63, 0x00]));
        jpeg.push(0x7F);
    }
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    jpeg
}

/// A GNU tar header with the name written as raw bytes: `Header::set_path` refuses `..` and
/// absolute paths, which is exactly what these tests need.
pub fn raw_header(name: &[u8], entry_type: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name);
    }
    header.set_mode(if entry_type == EntryType::Directory { 0o755 } else { 0o644 });
    header.set_mtime(0);
    header.set_size(size);
    header.set_entry_type(entry_type);
    header.set_cksum();
    header
}

pub fn append_raw<W: Write>(builder: &mut tar::Builder<W>, name: &str, bytes: &[u8]) {
    builder.append(&raw_header(name.as_bytes(), EntryType::Regular, bytes.len() as u64), bytes).unwrap();
}

pub fn append_link<W: Write>(builder: &mut tar::Builder<W>, name: &str, entry_type: EntryType, target: &str) {
    let mut header = raw_header(name.as_bytes(), entry_type, 0);
    header.set_link_name_literal(target).unwrap();
    header.set_cksum();
    builder.append(&header, &[][..]).unwrap();
}

/// A tar of `(name, bytes)` files with raw names, and symbolic links `(name, target)`.
pub fn tar_of(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        append_raw(&mut builder, name, bytes);
    }
    for (name, target) in links {
        append_link(&mut builder, name, EntryType::Symlink, target);
    }
    builder.into_inner().unwrap()
}

/// A zip of `(name, bytes)` files, deflated, with the names as given (`..` and `/` included).
pub fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A zip whose one entry inflates to `bytes` zeros (1 GiB is about 1 MB compressed).
pub fn zip_bomb(bytes: usize) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(bytes >= u32::MAX as usize);
    zip.start_file("photos/cat/bomb.png", options).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len());
        zip.write_all(&zeros[..n]).unwrap();
        left -= n;
    }
    zip.finish().unwrap().into_inner()
}

/// A zip of `count` empty stored files.
pub fn zip_of_tiny_entries(count: usize) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..count {
        zip.start_file(format!("c/{i}"), options).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `zip` with the entry counts of its end-of-central-directory record replaced by `count`.
pub fn forge_entry_count(mut zip: Vec<u8>, count: u16) -> Vec<u8> {
    let end = zip.windows(4).rposition(|w| w == [0x50, 0x4b, 0x05, 0x06]).expect("an end record");
    zip[end + 8..end + 10].copy_from_slice(&count.to_le_bytes());
    zip[end + 10..end + 12].copy_from_slice(&count.to_le_bytes());
    zip
}
