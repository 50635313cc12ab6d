//! The store's normal life: commit, log, show, verify, revert, revisions.

mod common;

use common::*;
use kstack_store::commit::CommitError;
use kstack_store::model::{DIFF_FILE, MODULE_FILE, PatchSource};
use kstack_store::rev::RevError;
use kstack_store::store::StackId;

#[test]
fn commit_verify_and_log() {
    let env = Env::new();
    let first = env.add("fix-a", &["cmdline_proc_show"]);
    let second = env.add("fix-b", &["meminfo_proc_show"]);
    assert_eq!(env.head(), second);

    let verified = env
        .store
        .verify(second, Some(&env.stack), &env.policy)
        .unwrap();
    assert_eq!(verified.signer, env.key.public());
    assert_eq!(verified.stack.kernel_release, "6.1.0-56-cloud-amd64");
    let names: Vec<_> = verified
        .patches
        .iter()
        .map(|p| p.entry.dir.as_str())
        .collect();
    assert_eq!(names, ["0001-fix-a", "0002-fix-b"]);
    let m = &verified.patches[1].manifest;
    assert_eq!(m.module_name, "kstack_fix-b");
    assert_eq!(m.source, PatchSource::Prebuilt);
    assert_eq!(m.functions[0].to_string(), "vmlinux:meminfo_proc_show");
    assert!(m.artifact(MODULE_FILE).is_some() && m.artifact(DIFF_FILE).is_some());
    assert_eq!(m.created_at, "2023-11-14T22:13:20Z");

    let log = env.store.log(second, None).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].id, second);
    assert_eq!(log[1].id, first);
    assert_eq!(log[0].summary(), "add fix-b");
    assert_eq!(log[0].signer, Some(env.key.public()));
    assert_eq!(
        env.store
            .verify_history(second, None, Some(&env.policy))
            .unwrap(),
        2
    );

    let stacks = env.store.stacks().unwrap();
    assert_eq!(stacks, vec![(env.stack.clone(), second)]);
}

#[test]
fn revert_keeps_independent_patches_in_order() {
    let env = Env::new();
    env.add("a", &["f1"]);
    env.add("b", &["f2"]);
    env.add("c", &["f3", "f4"]);
    let reverted = env
        .store
        .revert_patch(&env.stack, "b", "revert b", &author(), &env.key)
        .unwrap();
    let v = env
        .store
        .verify(reverted.commit, Some(&env.stack), &env.policy)
        .unwrap();
    let dirs: Vec<_> = v.patches.iter().map(|p| p.entry.dir.as_str()).collect();
    assert_eq!(dirs, ["0001-a", "0002-c"]);
    // The module of c is the same blob: only its directory changed.
    assert_eq!(
        read_blob(&env.store, reverted.commit, "patches/0002-c/module.ko"),
        module("c", &["f3", "f4"])
    );
    // The top patch can always go.
    env.store
        .revert_patch(&env.stack, "c", "revert c", &author(), &env.key)
        .unwrap();
    let v = env.store.verify(env.head(), None, &env.policy).unwrap();
    assert_eq!(v.patches.len(), 1);
    env.store
        .revert_patch(&env.stack, "a", "revert a", &author(), &env.key)
        .unwrap();
    let v = env.store.verify(env.head(), None, &env.policy).unwrap();
    assert!(v.patches.is_empty());
    assert_eq!(env.store.log(env.head(), None).unwrap().len(), 6);
}

#[test]
fn revert_refuses_overlapping_functions() {
    let env = Env::new();
    env.add("a", &["f1", "f2"]);
    env.add("b", &["f3"]);
    env.add("c", &["f2", "f5"]);
    let before = env.head();
    let err = env
        .store
        .revert_patch(&env.stack, "a", "revert a", &author(), &env.key)
        .unwrap_err();
    assert!(matches!(err, CommitError::Overlap { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "cannot revert a: patches above it replace the same functions (c: vmlinux:f2); rebuild them without it first"
    );
    assert_eq!(env.head(), before);
    let err = env
        .store
        .revert_patch(&env.stack, "zzz", "m", &author(), &env.key)
        .unwrap_err();
    assert!(err.to_string().contains("it has: a, b, c"), "{err}");
}

#[test]
fn revert_refuses_when_functions_are_unknown() {
    let env = Env::new();
    env.add("a", &[]);
    env.add("b", &["f1"]);
    let err = env
        .store
        .revert_patch(&env.stack, "a", "revert a", &author(), &env.key)
        .unwrap_err();
    assert!(matches!(err, CommitError::UnknownFunctions { .. }), "{err}");
}

#[test]
fn given_functions_are_recorded_with_discovered_ones() {
    let env = Env::new();
    let mut p = patch("a", &["found_one"]);
    p.functions = vec!["given_one".parse().unwrap(), "found_one".parse().unwrap()];
    env.store
        .add_patch(&env.stack, None, p, "add a", &author(), &env.key)
        .unwrap();
    let v = env.store.verify(env.head(), None, &env.policy).unwrap();
    let f: Vec<String> = v.patches[0]
        .manifest
        .functions
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(f, ["vmlinux:given_one", "vmlinux:found_one"]);
}

#[test]
fn commit_refuses_bad_modules() {
    let env = Env::new();
    env.add("a", &["f"]);
    // Another kernel release.
    let mut m = kstack_fixtures::FakeModule::livepatch("other", &["g"]);
    m.vermagic = "6.1.0-99-cloud-amd64 SMP mod_unload modversions ".into();
    let mut p = patch("other", &[]);
    p.module = m.build();
    let err = env
        .store
        .add_patch(&env.stack, None, p, "m", &author(), &env.key)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "other.ko was built for kernel 6.1.0-99-cloud-amd64, but stack {BUILD_ID}/prod is pinned to 6.1.0-56-cloud-amd64"
        )
    );
    // Not a livepatch module.
    let mut m = kstack_fixtures::FakeModule::livepatch("plain", &[]);
    m.livepatch = false;
    let mut p = patch("plain", &[]);
    p.module = m.build();
    let err = env
        .store
        .add_patch(&env.stack, None, p, "m", &author(), &env.key)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plain.ko: not a livepatch module (no livepatch=Y in .modinfo)"
    );
    // Not a module at all.
    let mut p = patch("junk", &[]);
    p.module = b"junk".to_vec();
    let err = env
        .store
        .add_patch(&env.stack, None, p, "m", &author(), &env.key)
        .unwrap_err();
    assert!(err.to_string().starts_with("junk.ko: bad ELF"), "{err}");
    // A name already in the stack.
    let err = env
        .store
        .add_patch(&env.stack, None, patch("a", &[]), "m", &author(), &env.key)
        .unwrap_err();
    assert!(matches!(err, CommitError::PatchExists { .. }), "{err}");
    assert_eq!(env.store.log(env.head(), None).unwrap().len(), 1);
}

#[test]
fn revisions() {
    let env = Env::new();
    let first = env.add("a", &["f1"]);
    let second = env.add("b", &["f2"]);
    let third = env.add("c", &["f3"]);
    let r = |rev: &str| env.store.resolve(rev, None).map(|r| r.commit);
    assert_eq!(r("prod").unwrap(), third);
    assert_eq!(r("prod~").unwrap(), second);
    assert_eq!(r("prod~2").unwrap(), first);
    assert_eq!(r(&format!("{BUILD_ID}/prod~1")).unwrap(), second);
    assert_eq!(r(&first.to_string()).unwrap(), first);
    assert_eq!(r(&first.to_hex_with_len(8).to_string()).unwrap(), first);
    assert_eq!(
        r(&format!("{}~1", third.to_hex_with_len(10))).unwrap(),
        second
    );
    assert!(matches!(
        r("prod~3"),
        Err(RevError::TooFarBack { available: 2, .. })
    ));
    assert!(matches!(r("nope"), Err(RevError::NotFound { .. })));
    assert_eq!(
        env.store.resolve("prod", None).unwrap().stack,
        Some(env.stack.clone())
    );

    // The same name for another kernel makes the bare name ambiguous.
    let other = StackId::new("00ff00ff".parse().unwrap(), "prod").unwrap();
    env.store
        .add_patch(&other, None, patch("x", &["f"]), "x", &author(), &env.key)
        .unwrap();
    let err = r("prod").unwrap_err();
    assert!(err.to_string().contains("pass --kernel"), "{err}");
    let picked = env.store.resolve("prod", Some(&other.build_id)).unwrap();
    assert_eq!(picked.stack, Some(other));
    assert_eq!(
        env.store
            .resolve("prod", Some(&env.stack.build_id))
            .unwrap()
            .commit,
        third
    );
}

#[test]
fn a_new_stack_takes_the_given_release_and_refuses_other_modules() {
    let env = Env::new();
    let err = env
        .store
        .add_patch(
            &env.stack,
            Some("6.1.0-57-cloud-amd64"),
            patch("a", &["f"]),
            "m",
            &author(),
            &env.key,
        )
        .unwrap_err();
    assert!(matches!(err, CommitError::WrongRelease { .. }), "{err}");
    assert!(env.store.stack_head(&env.stack).unwrap().is_none());
    env.store
        .add_patch(
            &env.stack,
            Some("6.1.0-56-cloud-amd64"),
            patch("a", &["f"]),
            "m",
            &author(),
            &env.key,
        )
        .unwrap();
}

#[test]
fn packing_keeps_everything_readable() {
    let env = Env::new();
    for i in 0..6 {
        env.add(&format!("p{i}"), &[&format!("f{i}")]);
    }
    let old_handle = env.reopen();
    let head = env.head();
    let report = env.store.pack(false).unwrap().unwrap();
    assert!(
        report.packed > 20 && report.loose_removed == report.packed,
        "{report:?}"
    );
    env.add("after", &["g"]);
    let report = env.store.pack(false).unwrap().unwrap();
    assert!(report.packed > 0, "{report:?}");
    let report = env.store.pack(true).unwrap().unwrap();
    assert_eq!(report.packs_removed, 2, "{report:?}");
    // Handles opened before packing and fresh ones read the same.
    for store in [&old_handle, &env.store, &env.reopen()] {
        store.verify(head, Some(&env.stack), &env.policy).unwrap();
        assert_eq!(store.log(head, None).unwrap().len(), 6);
    }
    let now = env.head();
    env.reopen().verify(now, None, &env.policy).unwrap();
    {
        require_git();
        git(&env.path(), &["fsck", "--strict", "--no-progress"]);
        let count = git(&env.path(), &["count-objects", "-v"]);
        assert!(
            count.contains("count: 0\n") && count.contains("packs: 1\n"),
            "{count}"
        );
    }
}
