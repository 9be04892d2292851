//! Blobs in an S3-compatible object store (`object_store`'s Amazon S3 client): endpoint,
//! region and credentials from the usual `AWS_*` variables, every key under one prefix of
//! one bucket. The rest of graft calls the blob store from blocking code, so each call
//! runs on a small runtime of the store's own and the caller waits for its answer. Blobs
//! over `MULTIPART_FROM` bytes are uploaded in parts. Readers that need a file (ONNX Runtime
//! opening a tuned base) get a copy cached under a local folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::{BlobEntry, BlobError};

/// Blobs from this size on are uploaded in parts of `PART_BYTES`.
pub const MULTIPART_FROM: usize = 16 << 20;
const PART_BYTES: usize = 8 << 20;
/// Where set-aside blobs wait under the prefix (no valid key starts with a dot).
const ASIDE: &str = ".aside";

pub(super) struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Local copies for readers that need a path.
    cache: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Blobs").field("prefix", &self.prefix).field("cache", &self.cache).finish()
    }
}

impl Drop for S3Blobs {
    // A runtime dropped inside another's async context would panic; this one is let go.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn failed(key: &str) -> impl Fn(object_store::Error) -> BlobError + '_ {
    move |e| BlobError::Io { key: key.to_owned(), reason: e.to_string() }
}

impl S3Blobs {
    /// `s3://bucket[/prefix]`, with the client configured from `AWS_*` variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, …;
    /// `AWS_ALLOW_HTTP=true` for an endpoint without TLS), then `settings` (the same keys,
    /// e.g. `aws_endpoint`).
    pub(super) fn open(url: &str, cache: &Path, settings: &[(&str, &str)]) -> Result<Self, BlobError> {
        let invalid = |reason: String| BlobError::Io { key: String::new(), reason };
        let rest = url.strip_prefix("s3://").ok_or_else(|| invalid(format!("{url} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid(format!("{url} names no bucket")));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in settings {
            let key = key.parse().map_err(|e| invalid(format!("{key}: {e}")))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder.build().map_err(|e| invalid(format!("{url}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("graft-s3")
            .enable_all()
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        fs_err::create_dir_all(cache).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_owned(),
            cache: cache.to_owned(),
            runtime: Some(runtime),
        })
    }

    /// Runs `work` on the store's runtime and waits for it (from any thread, async or not).
    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, BlobError> {
        let runtime = self.runtime.as_ref().expect("the runtime lives as long as the store");
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = sender.send(work.await);
        });
        receiver.recv().map_err(|_| BlobError::Io { key: String::new(), reason: "the S3 client stopped".into() })
    }

    fn location(&self, key: &str) -> ObjectPath {
        match self.prefix.is_empty() {
            true => ObjectPath::from(key),
            false => ObjectPath::from(format!("{}/{key}", self.prefix)),
        }
    }

    /// The key of a stored location (the prefix taken off).
    fn key_of(&self, location: &ObjectPath) -> String {
        let full = location.as_ref();
        match self.prefix.is_empty() {
            true => full.to_owned(),
            false => full.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(full).to_owned(),
        }
    }

    pub(super) fn exists(&self, key: &str) -> Result<bool, BlobError> {
        let (store, location) = (self.store.clone(), self.location(key));
        match self.run(async move { store.head(&location).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(failed(key)(e)),
        }
    }

    pub(super) fn replace(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let (store, location) = (self.store.clone(), self.location(key));
        let bytes = Bytes::copy_from_slice(bytes);
        let outcome = self.run(async move {
            if bytes.len() < MULTIPART_FROM {
                return store.put(&location, PutPayload::from(bytes)).await.map(|_| ());
            }
            let upload = store.put_multipart(&location).await?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
            parts.write(&bytes);
            parts.finish().await.map(|_| ())
        })?;
        outcome.map_err(failed(key))
    }

    pub(super) fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let (store, location) = (self.store.clone(), self.location(key));
        match self.run(async move { store.get(&location).await?.bytes().await })? {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(key)(e)),
        }
    }

    pub(super) fn delete(&self, key: &str) -> Result<(), BlobError> {
        let (store, location) = (self.store.clone(), self.location(key));
        match self.run(async move { store.delete(&location).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(key)(e)),
        }
    }

    /// Every blob under the key `prefix`, with its size and last write.
    pub(super) fn entries(&self, prefix: &str) -> Result<Vec<BlobEntry>, BlobError> {
        let (store, location) = (self.store.clone(), self.location(prefix));
        let listed = self.run(async move { store.list(Some(&location)).try_collect::<Vec<_>>().await })?;
        let mut entries: Vec<BlobEntry> = listed
            .map_err(failed(prefix))?
            .into_iter()
            .map(|meta| BlobEntry {
                key: self.key_of(&meta.location),
                size: meta.size,
                modified: meta.last_modified.into(),
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Copies `from` to `to` and deletes `from`; false when `from` does not exist.
    fn rename(&self, from: ObjectPath, to: ObjectPath, key: &str) -> Result<bool, BlobError> {
        let store = self.store.clone();
        match self.run(async move {
            store.copy(&from, &to).await?;
            store.delete(&from).await
        })? {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(failed(key)(e)),
        }
    }

    /// Moves the blob under `.aside/`; its name there, or `None` when there was no blob.
    pub(super) fn set_aside(&self, key: &str) -> Result<Option<String>, BlobError> {
        let aside = format!("{ASIDE}/{}", uuid::Uuid::new_v4().simple());
        Ok(self.rename(self.location(key), self.location(&aside), key)?.then_some(aside))
    }

    pub(super) fn restore(&self, aside: &str, key: &str) -> Result<(), BlobError> {
        self.rename(self.location(aside), self.location(key), key).map(|_| ())
    }

    /// Deletes a blob set aside; its size.
    pub(super) fn discard(&self, aside: &str, key: &str) -> Result<u64, BlobError> {
        let (store, location) = (self.store.clone(), self.location(aside));
        let outcome = self.run(async move {
            let size = store.head(&location).await?.size;
            store.delete(&location).await.map(|_| size)
        })?;
        outcome.map_err(failed(key))
    }

    /// A local file with the blob's bytes, downloaded once (blobs under a key never change
    /// but by `replace`, which the readers of paths — tuned bases — do not see).
    pub(super) fn local_copy(&self, key: &str) -> Result<PathBuf, BlobError> {
        let path = self.cache.join(key);
        if path.is_file() {
            return Ok(path);
        }
        let io = |e: std::io::Error| BlobError::Io { key: key.to_owned(), reason: e.to_string() };
        let bytes = self.try_get(key)?.ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
        let parent = path.parent().expect("a key has at least one segment under the cache");
        fs_err::create_dir_all(parent).map_err(io)?;
        let mut temp = tempfile::NamedTempFile::new_in(parent).map_err(io)?;
        std::io::Write::write_all(&mut temp, &bytes).map_err(io)?;
        temp.persist(&path).map_err(|e| io(e.error))?;
        Ok(path)
    }
}
