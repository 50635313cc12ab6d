//! The unified-diff reader of `kstack commit PATCH.diff`.
#![no_main]

use kstack_engine::builder::tree::{changed_files, parse_diff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_diff(data);
    let _ = changed_files(data);
});
