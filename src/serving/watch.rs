//! `--watch-models`: the model folder polled for manifests that appear, change or go. A new
//! or changed manifest (or model file) is loaded (a model in standby under
//! `--max-model-memory` takes it on its next load); a removed manifest's model is unloaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::registry::ModelRegistry;
use crate::zoo::Manifest;

/// What tells one version of a model from the next: its manifest's and its model file's
/// modification times and sizes.
type Stamp = [Option<(SystemTime, u64)>; 2];

/// Polls `dir` every `every` until the task is dropped. Models already registered are taken
/// as they are now: only later changes act.
pub async fn watch_models(registry: Arc<ModelRegistry>, dir: PathBuf, every: Duration) {
    let mut seen = snapshot(&dir);
    loop {
        tokio::time::sleep(every).await;
        let now = snapshot(&dir);
        for (name, stamp) in &now {
            if seen.get(name) == Some(stamp) {
                continue;
            }
            let manifest = match Manifest::load(&dir.join(format!("{name}.toml"))) {
                Ok(manifest) if manifest.file.is_file() => manifest,
                Ok(_) => continue, // its model file is not there (yet)
                Err(e) => {
                    tracing::warn!(model = %name, "--watch-models: the manifest is invalid: {e}");
                    continue;
                }
            };
            let registry = registry.clone();
            tracing::info!(model = %name, "--watch-models: loading");
            let _ = tokio::task::spawn_blocking(move || registry.refresh(manifest)).await;
        }
        for name in seen.keys().filter(|name| !now.contains_key(*name)) {
            tracing::info!(model = %name, "--watch-models: the manifest is gone; unloading");
            registry.unload(name);
        }
        seen = now;
    }
}

/// Every manifest in `dir` by model name, with its stamp.
fn snapshot(dir: &Path) -> BTreeMap<String, Stamp> {
    let stamp = |path: &Path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_owned();
            let file = Manifest::load(&path).ok().map(|m| m.file);
            Some((name, [stamp(&path), file.as_deref().and_then(stamp)]))
        })
        .collect()
}
