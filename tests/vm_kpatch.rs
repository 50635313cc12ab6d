//! kpatch's integration cases for 6.x kernels (`test/integration/linux-6.17.0` in
//! dynup/kpatch), written anew for the Debian 6.1 cloud kernel in
//! `examples/kpatch/` (the README there maps each kpatch case to ours). Like
//! kpatch's `multiple.test`, every case that builds goes onto one stack: built
//! with `kstack commit` (a case's hook file beside its diff comes along), synced
//! in one VM, each case's check run, the stack reverted, and each check run again,
//! now expected to fail. The `-FAIL` cases are refused at build time:
//! `kpatch_fail`.

#![allow(clippy::unwrap_used)] // a test: any failure should stop it loudly

use std::path::PathBuf;
use std::time::Instant;

use kstack_engine::sandbox::modules::ModuleSet;
use kstack_tests::scenarios::{assert_checks_held_then_gone, sync_check_revert_script};
use kstack_tests::{CliStore, example_for_line, kernel, sandbox, workspace_root};

/// The cases expected to build: every `examples/kpatch/*.diff` but the `-FAIL`
/// ones, in name order (the order they are stacked in), each in the kernel line's
/// version where it has one (`examples/kpatch/6.12/`).
fn cases() -> Vec<PathBuf> {
    let dir = workspace_root().join("examples/kpatch");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "diff"))
        .filter(|p| !p.to_string_lossy().ends_with("-FAIL.diff"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| example_for_line("kpatch", name))
        .collect()
}

#[test]
fn kpatch_cases_build_onto_one_stack_apply_check_and_revert() {
    let cases = cases();
    assert!(cases.len() >= 10, "{cases:?}");
    let store = CliStore::new();
    let mut checks = Vec::new();
    for case in &cases {
        let start = Instant::now();
        let report = store.commit_diff("kpatch", case);
        let name = report["patch"]["name"].as_str().unwrap().to_owned();
        eprintln!("built {name} in {:.1?}", start.elapsed());
        let check_file = case.with_extension("check");
        let check_file =
            example_for_line("kpatch", &check_file.file_name().unwrap().to_string_lossy());
        let check = std::fs::read_to_string(&check_file)
            .unwrap_or_else(|e| panic!("{}: {e}", check_file.display()));
        checks.push((name, check.trim().to_owned()));
    }

    let mut vm = sandbox();
    // The `module` case patches xfs.
    vm.add_modules(
        &kernel().modules_dir(),
        &ModuleSet::Named(vec!["xfs".into()]),
    )
    .unwrap();
    store.install(
        &mut vm,
        &[
            ("kpatch", store.config(Some("kpatch"), None, "15s")),
            ("none", store.config(None, None, "15s")),
        ],
    );
    let script = sync_check_revert_script("", "kpatch", &checks);
    let run = vm.run(&script).unwrap();
    assert_checks_held_then_gone(&run, &checks);
    assert!(!run.console.contains("BUG:"), "{}", run.console);
}
