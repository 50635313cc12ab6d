//! The classes of change the builder takes beyond a self-contained function, each an
//! example in `examples/cases/` with its check: built from its diff with `kstack
//! commit`, synced in the VM on the real kernel, checked, reverted, checked again.
//!
//! - `percpu-dentry-state`: a static per-CPU variable (class 1);
//! - `new-static-counter`: new static data the patch module allocates (class 2);
//! - `print-once`: a once-only flag, carried as a fresh copy (class 3);
//! - `shared-globals`: a new global variable and function of one file used from
//!   another file of the same diff (class 5);
//! - `syscall-newuname`: a `SYSCALL_DEFINE` body without fentry, reached through
//!   its patched callers (class 6);
//! - `sched-text-nanosleep`: a function of `.sched.text`, carried alone (class 8).

#![allow(clippy::unwrap_used)] // a test: any failure should stop it loudly

use std::path::PathBuf;

use kstack_tests::scenarios::{assert_checks_held_then_gone, sync_check_revert_script};
use kstack_tests::{CliStore, sandbox, workspace_root};

fn cases() -> Vec<PathBuf> {
    let dir = workspace_root().join("examples/cases");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "diff"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn each_class_of_change_builds_applies_checks_and_reverts() {
    let cases = cases();
    assert!(cases.len() >= 6, "{cases:?}");
    let store = CliStore::new();
    let mut checks = Vec::new();
    for case in &cases {
        let report = store.commit_diff("cases", case);
        let name = report["patch"]["name"].as_str().unwrap().to_owned();
        let check = std::fs::read_to_string(case.with_extension("check")).unwrap();
        checks.push((name, check.trim().to_owned()));
    }

    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[
            ("cases", store.config(Some("cases"), None, "15s")),
            ("none", store.config(None, None, "15s")),
        ],
    );
    let script = sync_check_revert_script(
        "for c in 1 2 3; do cat /proc/version /proc/cmdline /proc/uptime \
         /proc/sys/fs/dentry-state >/dev/null; done\n",
        "cases",
        &checks,
    );
    let run = vm.run(&script).unwrap();
    assert_checks_held_then_gone(&run, &checks);
}
