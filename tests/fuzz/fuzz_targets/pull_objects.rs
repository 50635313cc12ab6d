//! The Git objects a pull receives and a store reads: a commit (as `pull` walks it,
//! and with the signer trailers `log` reads) and a tree.
#![no_main]

use gix::hash::Kind;
use gix::objs::{CommitRef, TreeRef};
use kstack_store::store::{ObjectId, parse_commit_object};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(commit) = CommitRef::from_bytes(data, Kind::Sha1) {
        let _ = commit.tree();
        let _ = commit.parents().count();
    }
    if let Ok(info) = parse_commit_object(ObjectId::null(Kind::Sha1), data, Kind::Sha1) {
        let _ = info.signers();
        let _ = info.summary();
    }
    if let Ok(tree) = TreeRef::from_bytes(data, Kind::Sha1) {
        for entry in &tree.entries {
            let _ = (
                entry.mode.is_tree(),
                entry.mode.is_blob(),
                entry.mode.is_link(),
            );
        }
    }
});
