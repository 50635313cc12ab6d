//! Inputs the `before_toml` fuzz target found, kept in
//! `tests/fuzz/regressions/before_toml/` and replayed here with the target's calls.
//!
//! - `hex-split-inside-a-character`: a `code` string with a multi-byte character
//!   was sliced inside it (a panic) instead of being refused as bad hex.

use std::path::Path;

use kstack_engine::runpre::BeforeFile;

#[test]
fn before_toml_inputs_are_errors_not_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/regressions/before_toml");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the regression directory") {
        let path = entry.expect("a directory entry").path();
        let bytes = std::fs::read(&path).expect("a regression input");
        let error = BeforeFile::parse(&bytes).expect_err(&path.display().to_string());
        assert!(error.contains("hex"), "{}: {error}", path.display());
        seen += 1;
    }
    assert!(seen > 0, "no regression inputs in {}", dir.display());
}
