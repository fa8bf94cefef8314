//! Shared by the proptest-based fuzz targets (`fuzz_*.rs` in `sdk/tests` and `server/tests`):
//! bounded case counts that `PROPTEST_CASES` overrides, and the committed seed corpora under
//! `testdata/fuzz/<target>/`, which every target replays before generating inputs.
//!
//! See docs/fuzzing.md for how to run the targets longer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use proptest::test_runner::{Config, TestRunner};

/// `default` cases unless `PROPTEST_CASES` says otherwise (long local runs).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runner for `default` cases (see [`cases`]) whose failures are saved, shrunk, to
/// `<source_file minus .rs>.proptest-regressions` and replayed first on the next run, as the
/// `proptest!` macro does.
pub fn runner(default: u32, source_file: &'static str) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        source_file: Some(source_file),
        // Shrinking a server round trip is slow; a few thousand steps find a small input.
        max_shrink_iters: 2_048,
        ..Config::default()
    })
}

/// The workspace's `testdata/fuzz/<target>` directory.
pub fn corpus_dir(target: &str) -> PathBuf {
    // Both crates that use this module sit one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/fuzz")
        .join(target)
}

/// Every file of the target's seed corpus, sorted by name; fails if there is none, so a moved
/// directory cannot silently turn the replay into a no-op.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}
