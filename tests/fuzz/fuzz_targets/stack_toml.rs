//! `stack.toml`, as a store or a pull reads it: parsed, checked, and what parses
//! prints back to the same value.
#![no_main]

use kstack_store::model::StackFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(stack) = StackFile::parse(data, "stack.toml") {
        let again = StackFile::parse(stack.to_toml().as_bytes(), "stack.toml")
            .expect("a checked stack.toml prints to one that parses");
        assert_eq!(again, stack);
        let _ = stack.patch("x");
    }
});
