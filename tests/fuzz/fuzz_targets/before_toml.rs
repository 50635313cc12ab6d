//! A patch's `before.toml` (run-pre images), as sync reads it before loading.
#![no_main]

use kstack_engine::runpre::BeforeFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = BeforeFile::parse(data) {
        for image in &file.functions {
            let _ = image.to_toml();
        }
        let _ = file.to_toml();
    }
});
