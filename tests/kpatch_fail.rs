//! What kpatch's integration cases for 6.x kernels expect to fail, through `kstack
//! commit` (no VM; the cases that build are applied and checked by `vm_kpatch`):
//!
//! - `warn-detect-FAIL`: a change that only moves lines, so only the `__LINE__` of
//!   WARN and BUG sites changes, is no change at all (exit 3);
//! - kpatch's `data-new` and `new-globals` both change `meminfo_proc_show`. On one
//!   stack the later patch would have to reach the data the earlier one adds, which
//!   lives in the earlier patch's module: it is refused (exit 65), naming that
//!   patch. (`examples/kpatch/new-globals.diff` calls its new function from
//!   `version_proc_show` instead, so that both stack.)
//!
//! (kpatch's `symvers-disagreement-FAIL` builds with kstack, which links against
//! the running kernel's `Module.symvers`: `vm_kpatch` loads it.)

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::path::{Path, PathBuf};

use kstack_tests::{CliStore, kernel, kstack_cli, workspace_root};

fn example(name: &str) -> PathBuf {
    workspace_root().join("examples/kpatch").join(name)
}

/// `kstack commit DIFF --stack STACK` on `store`: its exit status and stderr.
fn commit(store: &CliStore, stack: &str, diff: &Path) -> (Option<i32>, String) {
    let out = kstack_cli()
        .arg("--store")
        .arg(&store.store)
        .args(["commit", "--stack", stack, "--key"])
        .arg(&store.key)
        .arg(diff)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn warn_detect_a_change_of_line_numbers_only_is_no_change() {
    let store = CliStore::new();
    let (code, stderr) = commit(&store, "kpatch", &example("warn-detect-FAIL.diff"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("the change compiles to the same code as before"),
        "{stderr}"
    );
    assert!(stderr.contains("arch/x86/kvm/x86.o"), "{stderr}");
}

#[test]
fn a_later_patch_cannot_reach_data_an_earlier_patch_adds() {
    let store = CliStore::new();
    store.commit_diff("kpatch", &example("data-new.diff"));
    // A second change to meminfo_proc_show, as kpatch's new-globals makes: the
    // function it replaces now reads data-new's `kstack_data_new`.
    let file = "fs/proc/meminfo.c";
    let tree = kernel().source().expect("run `cargo xtask setup`");
    let source = std::fs::read_to_string(tree.join(file)).unwrap();
    let anchor = "\tcommitted = vm_memory_committed();\n";
    let line = source[..source.find(anchor).unwrap()].lines().count() + 1;
    let diff = format!(
        "meminfo: a second change to meminfo_proc_show\n\n\
         --- a/{file}\n+++ b/{file}\n@@ -{line},2 +{line},3 @@\n \
         \tcommitted = vm_memory_committed();\n\
         +\tseq_puts(m, \"KstackSecond:   1\\n\");\n \n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("second.diff");
    std::fs::write(&path, diff).unwrap();
    let (code, stderr) = commit(&store, "kpatch", &path);
    assert_eq!(code, Some(65), "{stderr}");
    assert!(
        stderr.contains(
            "refers to kstack_data_new, which the running kernel does not have: earlier \
             patch data-new of the stack adds it"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("build the two changes as one patch"),
        "{stderr}"
    );
}
