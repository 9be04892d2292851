//! Locating and loading the ONNX Runtime shared library (`ort` with `load-dynamic`).
//! The process has one ONNX Runtime environment; it is created once and shared.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The library file inside the `onnxruntime` wheel that `make ort` unpacks.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error(
        "the ONNX Runtime library was not found (looked in {looked}); run `make ort` to fetch it, or pass --ort-library /path/to/{LIBRARY_FILE}"
    )]
    NotFound { looked: String },
    #[error("the ONNX Runtime library {path} could not be loaded ({reason}); run `make ort` to fetch a fresh copy")]
    Unloadable { path: PathBuf, reason: String },
}

/// The library to load: the explicit path (flag or `ORT_DYLIB_PATH`) if given,
/// otherwise `.ort/cpu/` under the working directory, otherwise `lib/` next to the executable
/// (or the checkout's `.ort/cpu/` for a binary in `target/`).
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, LibraryError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(path) => vec![path.to_owned()],
        None => {
            let mut paths = vec![PathBuf::from(".ort/cpu").join(LIBRARY_FILE)];
            if let Some(exe_dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_owned)) {
                paths.push(exe_dir.join("lib").join(LIBRARY_FILE));
                // target/{debug,release}/graft run from anywhere finds the checkout's `make ort`.
                paths.push(exe_dir.join("../../.ort/cpu").join(LIBRARY_FILE));
            }
            paths
        }
    };
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| LibraryError::NotFound {
        looked: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Loads the library and creates the process-wide environment (idempotent: later
/// calls return the first environment, whatever path they pass).
pub fn init_runtime(library: &Path) -> Result<Environment, LibraryError> {
    ENVIRONMENT
        .get_or_init(|| {
            let builder = ort::init_from(library).map_err(|e| e.to_string())?;
            builder.with_name("graft").build().map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|reason| LibraryError::Unloadable { path: library.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_names_the_fix() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err().to_string();
        assert!(err.contains("make ort") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    }
}
