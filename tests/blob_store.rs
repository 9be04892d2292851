//! One blob-store suite, run on both backends: files under a root, and a real S3 server
//! (SeaweedFS on loopback). Keys that would leave the root are refused; writes are whole;
//! `put` does not overwrite; blobs set aside are hidden, then restored or discarded;
//! listings carry sizes; a blob past the multipart threshold comes back intact; readers
//! that need a file get one with the blob's bytes.

mod common;

use common::s3::SeaweedS3;
use graft::store::{BlobError, BlobStore, MULTIPART_FROM};

fn suite(store: &BlobStore) {
    for key in ["../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b", ".tmp/x", "a\\b", "a/b c", ".aside/x"] {
        assert!(matches!(store.put(key, b"x"), Err(BlobError::InvalidKey(_))), "{key}");
        assert!(matches!(store.get(key), Err(BlobError::InvalidKey(_))), "{key}");
    }
    assert!(store.put("images/ab/abcdef", b"hello").unwrap());
    assert!(!store.put("images/ab/abcdef", b"other").unwrap(), "put leaves an existing blob");
    assert_eq!(store.get("images/ab/abcdef").unwrap(), b"hello");
    store.replace("images/ab/abcdef", b"hello!").unwrap();
    assert_eq!(store.get("images/ab/abcdef").unwrap(), b"hello!");
    assert!(store.exists("images/ab/abcdef").unwrap());
    assert_eq!(store.try_get("images/ab/missing").unwrap(), None);
    assert!(store.get("images/ab/missing").is_err());
    store.put("images/cd/second", b"12345").unwrap();
    store.put("features/m/x", b"f").unwrap();
    assert_eq!(store.list("images").unwrap(), ["images/ab/abcdef", "images/cd/second"]);
    let entries = store.entries("images").unwrap();
    let sizes: Vec<(&str, u64)> = entries.iter().map(|e| (e.key.as_str(), e.size)).collect();
    assert_eq!(sizes, [("images/ab/abcdef", 6), ("images/cd/second", 5)]);
    let age = std::time::SystemTime::now().duration_since(entries[0].modified).unwrap_or_default();
    assert!(age.as_secs() < 300, "last write is now: {age:?}");

    // Set aside: hidden from readers; a writer meanwhile writes it again; restored or discarded.
    let aside = store.set_aside("images/cd/second").unwrap().unwrap();
    assert!(!store.exists("images/cd/second").unwrap());
    assert_eq!(store.list("images").unwrap(), ["images/ab/abcdef"], "not listed while aside");
    assert!(store.put("images/cd/second", b"12345").unwrap());
    store.restore(aside).unwrap();
    assert_eq!(store.get("images/cd/second").unwrap(), b"12345");
    let aside = store.set_aside("images/cd/second").unwrap().unwrap();
    assert_eq!(store.discard(aside).unwrap(), 5);
    assert!(!store.exists("images/cd/second").unwrap());
    assert!(store.set_aside("images/cd/second").unwrap().is_none(), "nothing to set aside");

    // Past the multipart threshold, byte for byte; and as a file for path readers.
    let large: Vec<u8> = (0..MULTIPART_FROM + 3_000_001).map(|i| (i * 7 + i / 4099) as u8).collect();
    store.replace("tuned/job/base", &large).unwrap();
    assert_eq!(store.get("tuned/job/base").unwrap(), large);
    let path = store.local_path("tuned/job/base").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), large);
    assert!(path.starts_with(store.root()), "{} is under the local root", path.display());

    store.delete("images/ab/abcdef").unwrap();
    store.delete("images/ab/abcdef").unwrap();
    assert_eq!(store.try_get("images/ab/abcdef").unwrap(), None);
}

#[test]
fn files_under_a_root() {
    let dir = tempfile::tempdir().unwrap();
    suite(&BlobStore::open(dir.path().join("blobs")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_in_an_s3_server() {
    let server = SeaweedS3::start().await;
    server.bucket("graft-blobs").await;
    let local = tempfile::tempdir().unwrap();
    let settings = server.settings();
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = BlobStore::open_s3("s3://graft-blobs/replica-set", local.path(), &settings).unwrap();
    let started = std::time::Instant::now();
    suite(&store);
    println!("suite on SeaweedFS S3: {:?}", started.elapsed());
    // The keys live under the prefix, in the bucket (read back anonymously by a plain GET).
    store.put("images/zz/seen", b"raw").unwrap();
    let raw = reqwest::get(format!("{}/graft-blobs/replica-set/images/zz/seen", server.endpoint)).await.unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), b"raw");
    // Nothing was written to the local folder but the spool and the copies for path readers.
    let local_files: Vec<_> = walk(local.path());
    assert!(local_files.iter().all(|p| p.contains(".s3-cache") || p.contains(".tmp")), "{local_files:?}");
    drop(store);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}
