//! Importing a folder on the server's disk (`{"path": …}`): only under the configured
//! import root, never following links out of it, with the archive reader's limits.

use std::path::{Path, PathBuf};

use super::archive::{ArchiveEntry, ArchiveError, ArchiveFile, ArchiveLimits};

/// Resolves `requested` (relative to `import_root`, or absolute inside it) to a folder
/// inside the root. The error is a sentence for the user.
pub fn resolve_import(import_root: &Path, requested: &str) -> Result<PathBuf, String> {
    let root = import_root
        .canonicalize()
        .map_err(|e| format!("the import root {} is unusable: {e}", import_root.display()))?;
    let requested_path = Path::new(requested);
    let candidate = if requested_path.is_absolute() { requested_path.to_owned() } else { root.join(requested_path) };
    let resolved =
        candidate.canonicalize().map_err(|_| format!("{requested} is not a folder under the import root"))?;
    if !resolved.starts_with(&root) || !resolved.is_dir() {
        return Err(format!("{requested} is not a folder under the import root"));
    }
    Ok(resolved)
}

/// Counts of a folder import.
#[derive(Debug, Default, Clone, Copy)]
pub struct FolderSummary {
    pub files: usize,
    pub skipped: usize,
    pub total_bytes: u64,
}

/// Walks `dir` in name order, handing every regular file to `visit` like an archive entry.
pub fn read_folder(
    dir: &Path,
    limits: &ArchiveLimits,
    visit: &mut dyn FnMut(ArchiveEntry) -> Result<(), String>,
) -> Result<FolderSummary, ArchiveError> {
    let mut summary = FolderSummary::default();
    let mut entries = 0usize;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let mut children: Vec<_> = std::fs::read_dir(dir.join(&relative))
            .map_err(|e| ArchiveError::Io(e.to_string()))?
            .filter_map(Result::ok)
            .collect();
        children.sort_by_key(|e| e.file_name());
        for child in children.into_iter().rev() {
            entries += 1;
            if entries > limits.max_entries {
                return Err(ArchiveError::TooManyEntries { limit: limits.max_entries });
            }
            let path = relative.join(child.file_name());
            let name = path.to_string_lossy().replace('\\', "/");
            let meta = std::fs::symlink_metadata(child.path()).map_err(|e| ArchiveError::Io(e.to_string()))?;
            let skip = |reason: &str| ArchiveEntry::Skipped { path: name.clone(), reason: reason.into() };
            let entry = if meta.file_type().is_symlink() {
                skip("symbolic links are not followed")
            } else if meta.is_dir() {
                if !name.rsplit('/').next().unwrap_or("").starts_with('.') {
                    stack.push(path);
                }
                continue;
            } else if !meta.is_file() {
                skip("not a regular file")
            } else if name.rsplit('/').next().unwrap_or("").starts_with('.') {
                skip("hidden file")
            } else if meta.len() > limits.max_entry_bytes {
                skip(&format!("the file is larger than {} bytes", limits.max_entry_bytes))
            } else {
                summary.total_bytes += meta.len();
                if summary.total_bytes > limits.max_total_bytes {
                    return Err(ArchiveError::TooLarge { limit: limits.max_total_bytes });
                }
                let bytes = std::fs::read(child.path()).map_err(|e| ArchiveError::Io(e.to_string()))?;
                ArchiveEntry::File(ArchiveFile { path: name.clone(), bytes })
            };
            match &entry {
                ArchiveEntry::File(_) => summary.files += 1,
                ArchiveEntry::Skipped { .. } => summary.skipped += 1,
            }
            visit(entry).map_err(ArchiveError::Visitor)?;
        }
    }
    if summary.files == 0 {
        return Err(ArchiveError::Empty);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_stay_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("flowers/daisy")).unwrap();
        assert!(resolve_import(root.path(), "flowers").is_ok());
        assert!(resolve_import(root.path(), "../").is_err());
        assert!(resolve_import(root.path(), "/etc").is_err());
        assert!(resolve_import(root.path(), "flowers/../../").is_err());
        assert!(resolve_import(root.path(), "missing").is_err());
    }
}
