//! `graft models pull`: fetch a model file from its manifest's URL (`http(s)://` or
//! `file://`), verify its sha256 and move it into place atomically — a failed or
//! interrupted pull leaves no half file behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::Manifest;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("model {0} has no `url` in its manifest; pass --url")]
    NoUrl(String),
    #[error("unsupported URL {0}: use http://, https:// or file://")]
    Scheme(String),
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("checksum mismatch for {url}: expected sha256 {expected}, got {actual}; nothing was written")]
    Checksum { url: String, expected: String, actual: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// What a pull did.
#[derive(Debug, PartialEq, Eq)]
pub enum PullOutcome {
    AlreadyPresent,
    Downloaded { bytes: u64, sha256: String },
}

/// Fetches `manifest`'s model file from `url` (or the manifest's URL) into `manifest.file`.
pub async fn pull_model(
    manifest: &Manifest,
    url: Option<&str>,
    force: bool,
    show_progress: bool,
) -> Result<(PathBuf, PullOutcome), PullError> {
    let url = url.or(manifest.url.as_deref()).ok_or_else(|| PullError::NoUrl(manifest.name.clone()))?.to_owned();
    let target = manifest.file.clone();
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| PullError::Io { path, reason: e.to_string() }
    };
    if !force
        && target.is_file()
        && let Some(expected) = &manifest.sha256
        && sha256_file(&target).map_err(io(&target))? == *expected
    {
        return Ok((target, PullOutcome::AlreadyPresent));
    }
    let dir = target.parent().unwrap_or(Path::new(".")).to_owned();
    fs_err::create_dir_all(&dir).map_err(io(&dir))?;
    let mut temp = tempfile::Builder::new().prefix(".pull-").suffix(".part").tempfile_in(&dir).map_err(io(&dir))?;
    let mut hasher = Sha256::new();
    let mut sink = |chunk: &[u8], file: &mut std::fs::File| -> std::io::Result<()> {
        hasher.update(chunk);
        file.write_all(chunk)
    };

    let bytes = if let Some(path) = url.strip_prefix("file://") {
        let mut source =
            fs_err::File::open(path).map_err(|e| PullError::Download { url: url.clone(), reason: e.to_string() })?;
        let total = source.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(show_progress, Some(total));
        let mut buffer = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = source
                .read(&mut buffer)
                .map_err(|e| PullError::Download { url: url.clone(), reason: e.to_string() })?;
            if n == 0 {
                break;
            }
            sink(&buffer[..n], temp.as_file_mut()).map_err(io(temp.path()))?;
            done += n as u64;
            bar.set_position(done);
        }
        bar.finish_and_clear();
        done
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let failed = |reason: String| PullError::Download { url: url.clone(), reason };
        let mut response = reqwest::get(&url).await.map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("the server answered {}", response.status())));
        }
        let bar = progress_bar(show_progress, response.content_length());
        let mut done = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
            sink(&chunk, temp.as_file_mut()).map_err(io(temp.path()))?;
            done += chunk.len() as u64;
            bar.set_position(done);
        }
        bar.finish_and_clear();
        done
    } else {
        return Err(PullError::Scheme(url));
    };

    let actual = hex::encode(hasher.finalize());
    match &manifest.sha256 {
        Some(expected) if *expected != actual => {
            return Err(PullError::Checksum { url, expected: expected.clone(), actual });
        }
        Some(_) => {}
        None => tracing::warn!("the manifest of {} has no sha256; the file pulled has sha256 {actual}", manifest.name),
    }
    // Temporary files are private (0600); the model file is an ordinary readable file.
    let mut perms = temp.as_file().metadata().map_err(io(temp.path()))?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    temp.as_file().set_permissions(perms).map_err(io(temp.path()))?;
    temp.as_file().sync_all().map_err(io(temp.path()))?;
    temp.persist(&target).map_err(|e| PullError::Io { path: target.clone(), reason: e.error.to_string() })?;
    Ok((target, PullOutcome::Downloaded { bytes, sha256: actual }))
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs_err::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

fn progress_bar(show: bool, total: Option<u64>) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = total.filter(|t| *t > 0).map_or_else(ProgressBar::new_spinner, ProgressBar::new);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
