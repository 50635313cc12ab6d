//! A patch's `manifest.toml`: parsed, checked, printed back to the same value.
#![no_main]

use kstack_store::model::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data, "manifest.toml") {
        let again = Manifest::parse(manifest.to_toml().as_bytes(), "manifest.toml")
            .expect("a checked manifest prints to one that parses");
        assert_eq!(again, manifest);
        for f in &manifest.functions {
            let _ = f.to_string().parse::<kstack_store::model::FunctionRef>();
        }
    }
});
