//! Every committed fuzz seed (`fuzz/corpus/<target>/seed-*`) and every input a fuzzer
//! once crashed on (`fuzz/regressions/<target>/*`) through the fuzz target's own checks:
//! no panic, and each target's assertions hold.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn inputs(folder: &Path, seeds_only: bool) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut paths: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| !seeds_only || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
        .collect();
    paths.sort();
    paths
}

#[test]
fn seeds_and_past_crashes_pass_every_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = 0;
    for (target, check) in checks::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target), true);
        assert!(!corpus.is_empty(), "target {target} has no committed seeds");
        seeds += corpus.len();
        for path in corpus.iter().chain(&inputs(&fuzz.join("regressions").join(target), false)) {
            let data = std::fs::read(path).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{target} fails on {}", path.display());
            }
        }
    }
    assert!(seeds >= 8);
}
