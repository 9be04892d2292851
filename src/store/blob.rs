//! Blobs — dataset images, cached features, head weights, checkpoints — as files under
//! one storage root. Keys are validated so that no key can name a path outside the
//! root, and writes go through a temporary file and a rename so a reader never sees
//! half a blob. This is the one interface an object store would replace.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    #[error("blob {key}: {reason}")]
    Io { key: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, BlobError> {
        let root = root.into();
        fs_err::create_dir_all(root.join(".tmp"))
            .map_err(|e| BlobError::Io { key: String::new(), reason: e.to_string() })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes free for this process on the storage root's file system (`None` when the
    /// system cannot tell).
    pub fn available_bytes(&self) -> Option<u64> {
        fs4::available_space(&self.root).ok()
    }

    /// The file behind `key`, for readers that need a path (ONNX Runtime, streamed exports).
    /// A key is `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`.
    pub fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        let valid = !key.is_empty()
            && key.len() <= 512
            && key.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && !seg.starts_with('.')
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        if valid { Ok(self.root.join(key)) } else { Err(BlobError::InvalidKey(key.to_owned())) }
    }

    fn io(key: &str) -> impl Fn(std::io::Error) -> BlobError + '_ {
        move |e| BlobError::Io { key: key.to_owned(), reason: e.to_string() }
    }

    /// Writes `bytes` under `key` atomically. Returns false if the blob already existed
    /// (content-addressed keys make that a no-op).
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<bool, BlobError> {
        let path = self.path(key)?;
        if path.is_file() {
            return Ok(false);
        }
        self.replace(key, bytes)?;
        Ok(true)
    }

    /// Writes `bytes` under `key` atomically, replacing what was there.
    pub fn replace(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let parent = path.parent().expect("a key has at least one segment under the root");
        fs_err::create_dir_all(parent).map_err(Self::io(key))?;
        let mut temp = tempfile::NamedTempFile::new_in(self.root.join(".tmp")).map_err(Self::io(key))?;
        temp.write_all(bytes).map_err(Self::io(key))?;
        temp.persist(&path).map_err(|e| Self::io(key)(e.error))?;
        Ok(())
    }

    pub fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        fs_err::read(self.path(key)?).map_err(Self::io(key))
    }

    /// `None` when the blob does not exist.
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        match std::fs::read(self.path(key)?) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(key)(e)),
        }
    }

    pub fn exists(&self, key: &str) -> Result<bool, BlobError> {
        Ok(self.path(key)?.is_file())
    }

    /// Removes the blob; a missing blob is not an error.
    pub fn delete(&self, key: &str) -> Result<(), BlobError> {
        match std::fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Self::io(key)(e)),
            _ => Ok(()),
        }
    }

    /// Moves the blob out of its key into the temporary folder, where no reader finds it,
    /// and returns where it went (`None` if there was no blob). Collection sets a blob
    /// aside, checks once more that nothing references it, then discards or restores it:
    /// a writer that looks for the key meanwhile finds it missing and writes it again.
    pub fn set_aside(&self, key: &str) -> Result<Option<SetAside>, BlobError> {
        let path = self.path(key)?;
        let aside = self.root.join(".tmp").join(format!("aside-{}", uuid::Uuid::new_v4().simple()));
        match std::fs::rename(&path, &aside) {
            Ok(()) => Ok(Some(SetAside { key: key.to_owned(), path: aside })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(key)(e)),
        }
    }

    /// Puts a blob set aside back under its key (the same content if it was written again).
    pub fn restore(&self, aside: SetAside) -> Result<(), BlobError> {
        let path = self.path(&aside.key)?;
        std::fs::rename(&aside.path, &path).map_err(Self::io(&aside.key))
    }

    /// Deletes a blob set aside for good; returns its size in bytes.
    pub fn discard(&self, aside: SetAside) -> Result<u64, BlobError> {
        let size = std::fs::metadata(&aside.path).map_or(0, |m| m.len());
        std::fs::remove_file(&aside.path).map_err(Self::io(&aside.key))?;
        Ok(size)
    }

    /// Every blob under `prefix` with its size and last write, for collection.
    pub fn entries(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError> {
        let mut entries = Vec::new();
        for key in self.list(prefix)? {
            if let Ok(meta) = std::fs::metadata(self.root.join(&key)) {
                let modified = meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                entries.push(BlobEntry { key, size: meta.len(), modified });
            }
        }
        Ok(entries)
    }

    /// Deletes the temporary files (staged uploads, half-written blobs of a process that
    /// died) last written before `cutoff`; returns how many and their bytes.
    pub fn sweep_temporary(&self, cutoff: std::time::SystemTime) -> (u64, u64) {
        let (mut files, mut bytes) = (0, 0);
        let Ok(entries) = std::fs::read_dir(self.root.join(".tmp")) else { return (0, 0) };
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
        let dir = self.path(prefix)?;
        let mut keys = Vec::new();
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    keys.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

/// A blob moved out of its key by [`BlobStore::set_aside`].
#[derive(Debug)]
pub struct SetAside {
    key: String,
    path: PathBuf,
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

    #[test]
    fn keys_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        for key in ["../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b", ".tmp/x", "a\\b", "a/b c"] {
            assert!(matches!(store.put(key, b"x"), Err(BlobError::InvalidKey(_))), "{key}");
        }
        assert!(store.put("images/ab/abcdef", b"hello").unwrap());
        assert!(!store.put("images/ab/abcdef", b"hello").unwrap());
        assert_eq!(store.get("images/ab/abcdef").unwrap(), b"hello");
        assert_eq!(store.list("images").unwrap(), ["images/ab/abcdef"]);
        store.delete("images/ab/abcdef").unwrap();
        assert_eq!(store.try_get("images/ab/abcdef").unwrap(), None);
    }

    #[test]
    fn a_blob_set_aside_is_hidden_then_restored_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        store.put("images/ab/one", b"12345").unwrap();
        let aside = store.set_aside("images/ab/one").unwrap().unwrap();
        assert!(!store.exists("images/ab/one").unwrap(), "a reader no longer finds it");
        // A writer that comes meanwhile writes it again; restoring keeps the content.
        assert!(store.put("images/ab/one", b"12345").unwrap());
        store.restore(aside).unwrap();
        assert_eq!(store.get("images/ab/one").unwrap(), b"12345");

        let aside = store.set_aside("images/ab/one").unwrap().unwrap();
        assert_eq!(store.discard(aside).unwrap(), 5);
        assert!(!store.exists("images/ab/one").unwrap());
        assert!(store.set_aside("images/ab/one").unwrap().is_none(), "nothing to set aside");
        assert!(store.list(".tmp").is_err(), "the temporary folder is not a key");
    }

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
