//! Blobs — dataset images, cached features, head weights, checkpoints — under validated
//! keys, in one of two backends: files under one storage root (the default), or objects in
//! an S3-compatible store (`--blob-url s3://bucket/prefix`, `s3.rs`). Keys are validated so
//! that no key can name a path outside the root; every write is whole or absent (a
//! temporary file and a rename; one PUT, or a multipart upload completed at once). Uploads
//! are spooled, and S3 blobs that readers need as files are cached, under a local folder.

mod s3;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use s3::MULTIPART_FROM;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    #[error("blob {key}: {reason}")]
    Io { key: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    backend: Backend,
    /// Local files: the blobs themselves (file backend), and the upload spool and the
    /// temporary files (both backends; S3 also keeps its local copies here).
    root: PathBuf,
}

#[derive(Debug, Clone)]
enum Backend {
    Files,
    S3(Arc<s3::S3Blobs>),
}

impl BlobStore {
    /// Blobs as files under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        fs_err::create_dir_all(root.join(".tmp"))
            .map_err(|e| BlobError::Io { key: String::new(), reason: e.to_string() })?;
        Ok(Self { backend: Backend::Files, root })
    }

    /// Blobs in the S3 bucket and prefix of `url` (`s3://bucket/prefix`), configured from
    /// the `AWS_*` variables and then `settings` (`object_store`'s S3 keys, such as
    /// `aws_endpoint`), with `local` for the spool and the local copies.
    pub fn open_s3(url: &str, local: impl Into<PathBuf>, settings: &[(&str, &str)]) -> Result<Self, BlobError> {
        let mut store = Self::open(local)?;
        store.backend = Backend::S3(Arc::new(s3::S3Blobs::open(url, &store.root.join(".s3-cache"), settings)?));
        Ok(store)
    }

    /// The local folder: the file backend's blobs, and the spool and temporary files of both.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where uploads are spooled before they are read (a local folder either way).
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join(".tmp")
    }

    /// Bytes free for this process on the local file system blobs or spooled uploads use
    /// (`None` when the system cannot tell).
    pub fn available_bytes(&self) -> Option<u64> {
        fs4::available_space(&self.root).ok()
    }

    /// A key is `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`, none
    /// starting with a dot.
    fn check(key: &str) -> Result<&str, BlobError> {
        let valid = !key.is_empty()
            && key.len() <= 512
            && key.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && !seg.starts_with('.')
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if valid { Ok(key) } else { Err(BlobError::InvalidKey(key.to_owned())) }
    }

    fn file(&self, key: &str) -> Result<PathBuf, BlobError> {
        Ok(self.root.join(Self::check(key)?))
    }

    /// A file with the blob's bytes, for readers that need a path (ONNX Runtime, streamed
    /// exports): the blob itself, or a local copy of an S3 object.
    pub fn local_path(&self, key: &str) -> Result<PathBuf, BlobError> {
        match &self.backend {
            Backend::Files => self.file(key),
            Backend::S3(s3) => s3.local_copy(Self::check(key)?),
        }
    }

    fn io(key: &str) -> impl Fn(std::io::Error) -> BlobError + '_ {
        move |e| BlobError::Io { key: key.to_owned(), reason: e.to_string() }
    }

    /// Writes `bytes` under `key` whole. Returns false if the blob already existed
    /// (content-addressed keys make that a no-op).
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<bool, BlobError> {
        if self.exists(key)? {
            return Ok(false);
        }
        self.replace(key, bytes)?;
        Ok(true)
    }

    /// Writes `bytes` under `key` whole, replacing what was there.
    pub fn replace(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.file(key)?;
        if let Backend::S3(s3) = &self.backend {
            return s3.replace(key, bytes);
        }
        let parent = path.parent().expect("a key has at least one segment under the root");
        fs_err::create_dir_all(parent).map_err(Self::io(key))?;
        let mut temp = tempfile::NamedTempFile::new_in(self.spool_dir()).map_err(Self::io(key))?;
        temp.write_all(bytes).map_err(Self::io(key))?;
        temp.persist(&path).map_err(|e| Self::io(key)(e.error))?;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        self.try_get(key)?.ok_or_else(|| Self::io(key)(std::io::ErrorKind::NotFound.into()))
    }

    /// `None` when the blob does not exist.
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.file(key)?;
        if let Backend::S3(s3) = &self.backend {
            return s3.try_get(key);
        }
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(key)(e)),
        }
    }

    pub fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let path = self.file(key)?;
        match &self.backend {
            Backend::Files => Ok(path.is_file()),
            Backend::S3(s3) => s3.exists(key),
        }
    }

    /// Removes the blob; a missing blob is not an error.
    pub fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.file(key)?;
        if let Backend::S3(s3) = &self.backend {
            return s3.delete(key);
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::io(key)(e)),
            _ => Ok(()),
        }
    }

    /// Moves the blob out of its key to where no reader finds it (the temporary folder, or
    /// `.aside/` in the bucket), and returns where it went (`None` if there was no blob).
    /// Collection sets a blob aside, checks once more that nothing references it, then
    /// discards or restores it: a writer that looks for the key meanwhile finds it missing
    /// and writes it again.
    pub fn set_aside(&self, key: &str) -> Result<Option<SetAside>, BlobError> {
        let path = self.file(key)?;
        if let Backend::S3(s3) = &self.backend {
            let aside = s3.set_aside(key)?;
            return Ok(aside.map(|object| SetAside { key: key.to_owned(), place: Place::Object(object) }));
        }
        let aside = self.spool_dir().join(format!("aside-{}", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(&path, &aside) {
            Ok(()) => Ok(Some(SetAside { key: key.to_owned(), place: Place::File(aside) })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(key)(e)),
        }
    }

    /// Puts a blob set aside back under its key (the same content if it was written again).
    pub fn restore(&self, aside: SetAside) -> Result<(), BlobError> {
        let path = self.file(&aside.key)?;
        match (&self.backend, &aside.place) {
            (Backend::S3(s3), Place::Object(object)) => s3.restore(object, &aside.key),
            (_, Place::File(file)) => std::fs::rename(file, &path).map_err(Self::io(&aside.key)),
            (Backend::Files, Place::Object(_)) => Err(Self::io(&aside.key)(std::io::ErrorKind::NotFound.into())),
        }
    }

    /// Deletes a blob set aside for good; returns its size in bytes.
    pub fn discard(&self, aside: SetAside) -> Result<u64, BlobError> {
        match (&self.backend, &aside.place) {
            (Backend::S3(s3), Place::Object(object)) => s3.discard(object, &aside.key),
            (_, Place::File(file)) => {
                let size = std::fs::metadata(file).map_or(0, |m| m.len());
                std::fs::remove_file(file).map_err(Self::io(&aside.key))?;
                Ok(size)
            }
            (Backend::Files, Place::Object(_)) => Err(Self::io(&aside.key)(std::io::ErrorKind::NotFound.into())),
        }
    }

    /// Every blob under `prefix` with its size and last write, for collection.
    pub fn entries(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError> {
        let dir = self.file(prefix)?;
        if let Backend::S3(s3) = &self.backend {
            return s3.entries(prefix);
        }
        let mut entries = Vec::new();
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let Ok(listed) = std::fs::read_dir(&dir) else { continue };
            for entry in listed.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path);
                } else if let Ok(relative) = path.strip_prefix(&self.root) {
                    let modified = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                    entries.push(BlobEntry {
                        key: relative.to_string_lossy().into_owned(),
                        size: meta.len(),
                        modified,
                    });
                }
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Deletes the temporary files (staged uploads, half-written blobs of a process that
    /// died) last written before `cutoff`; returns how many and their bytes.
    pub fn sweep_temporary(&self, cutoff: std::time::SystemTime) -> (u64, u64) {
        let (mut files, mut bytes) = (0, 0);
        let Ok(entries) = std::fs::read_dir(self.spool_dir()) else { return (0, 0) };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta.modified().is_ok_and(|m| m < cutoff);
            if meta.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
                files += 1;
                bytes += meta.len();
            }
        }
        (files, bytes)
    }

    /// Every key under `prefix` (a directory key), for tests and cleanup.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        Ok(self.entries(prefix)?.into_iter().map(|entry| entry.key).collect())
    }
}

/// Where a blob set aside by [`BlobStore::set_aside`] waits.
#[derive(Debug)]
enum Place {
    File(PathBuf),
    Object(String),
}

/// A blob moved out of its key by [`BlobStore::set_aside`].
#[derive(Debug)]
pub struct SetAside {
    key: String,
    place: Place,
}

/// One stored blob, as [`BlobStore::entries`] lists it.
#[derive(Debug, Clone)]
pub struct BlobEntry {
    pub key: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    // The backends' shared suite is tests/blob_store.rs.

    #[test]
    fn only_old_temporary_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let temp = dir.path().join("blobs/.tmp");
        fs_err::write(temp.join("old"), b"abc").unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(temp.join("old")).unwrap().set_modified(hour_ago).unwrap();
        fs_err::write(temp.join("fresh"), b"abcdef").unwrap();
        let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        assert_eq!(store.sweep_temporary(cutoff), (1, 3));
        assert!(temp.join("fresh").is_file() && !temp.join("old").exists());
    }
}
