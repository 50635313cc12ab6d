//! Inputs the fuzz targets of `tests/fuzz/` found, kept in
//! `tests/fuzz/regressions/<target>/` and replayed here with the target's own calls,
//! so that the fixes hold without a fuzzer (this runs with every test).
//!
//! - `bzimage`: an LZ4 payload whose appended size said 4 GiB made kstack reserve
//!   1 GiB before decompressing anything.
//! - `module`: a relocation at an offset near 2^64 overflowed where the `klp_func`
//!   reader looks for the fields that follow it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kstack_store::{ident, klp};

/// The inputs kept for `target`; at least one.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/regressions")
        .join(target);
    let mut found: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("the regression directory")
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let bytes = std::fs::read(&path).expect("a regression input");
            (path, bytes)
        })
        .collect();
    found.sort();
    assert!(
        !found.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    found
}

/// Each is an error, quickly (the allocation limit is the fuzzer's; here, time).
#[test]
fn bzimage() {
    for (path, data) in inputs("bzimage") {
        let started = Instant::now();
        let _ = ident::bzimage_release(&data);
        assert!(
            ident::bzimage_vmlinux(&data, "fuzz").is_err(),
            "{}",
            path.display()
        );
        let _ = ident::decompress_payload(&data, "fuzz");
        let _ = ident::image_build_id_of(&data, "fuzz");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            path.display()
        );
    }
}

/// No panic.
#[test]
fn module() {
    for (_, data) in inputs("module") {
        if let Ok(info) = ident::modinfo(&data, "fuzz.ko") {
            let _ = (info.vermagic(), info.release(), info.is_livepatch());
        }
        let _ = klp::replaced_functions(&data, "fuzz.ko");
        let _ = ident::elf_build_id(&data, "fuzz.ko");
    }
}
