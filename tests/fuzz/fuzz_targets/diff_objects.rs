//! The differ's input: a pre and a post object (the input split at its first byte's
//! share of its length).
#![no_main]

use kstack_engine::builder::diff::{DiffOptions, diff_objects};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = rest.len() * usize::from(split) / 255;
    let (pre, post) = rest.split_at(at);
    let _ = diff_objects(pre, post, &DiffOptions::default());
});
