//! The cumulative module of a stack commit: stored in `cumulative/`, covered by its
//! manifest, `stack.toml` and the signature; bound to exactly the commit's patches;
//! carried by a promotion; and a reason recorded when a stack cannot have one.

mod common;

use std::collections::BTreeMap;

use common::*;
use kstack_store::commit::{CommitError, Cumulative, NewCumulative, Prepared};
use kstack_store::model::{CUMULATIVE_DIR, CUMULATIVE_NAME, PatchSource};
use kstack_store::store::StackId;
use kstack_store::verify::VerifyError;

/// A synthetic cumulative module for the patches of `prepared`.
fn cumulative_for(env: &Env, prepared: &Prepared, functions: &[&str]) -> NewCumulative {
    let made = env
        .store
        .check(prepared.commit, None)
        .expect("a prepared commit verifies");
    NewCumulative {
        patches: made
            .patches
            .iter()
            .map(|p| p.manifest.module_name.clone())
            .collect(),
        module: module("cum_0123456789ab", functions),
        functions: functions
            .iter()
            .map(|f| f.parse().expect("fixture names are valid"))
            .collect(),
        build: BTreeMap::from([("linked_from".to_owned(), "a b".to_owned())]),
        extra: BTreeMap::from([("before.toml".to_owned(), b"# images\n".to_vec())]),
    }
}

#[test]
fn a_cumulative_module_is_stored_verified_and_bound_to_the_patches() {
    let env = Env::new();
    env.add("fix-a", &["cmdline_proc_show"]);
    let prepared = env.prepare(&env.store, "fix-b", &["meminfo_proc_show"]);
    let new = cumulative_for(&env, &prepared, &["cmdline_proc_show", "meminfo_proc_show"]);
    let amended = env
        .store
        .prepare_cumulative(&prepared, Cumulative::Module(new), &author(), &env.key)
        .unwrap();
    assert_eq!(amended.parent, prepared.parent);
    env.store.publish(&amended).unwrap();

    let verified = env
        .store
        .verify(env.head(), Some(&env.stack), &env.policy)
        .unwrap();
    assert_eq!(verified.patches.len(), 2);
    let cumulative = verified.cumulative.as_ref().expect("the cumulative module");
    assert_eq!(cumulative.entry.name, CUMULATIVE_NAME);
    assert_eq!(cumulative.manifest.source, PatchSource::Cumulative);
    assert_eq!(cumulative.manifest.module_name, "kstack_cum_0123456789ab");
    assert_eq!(cumulative.manifest.functions.len(), 2);
    assert_eq!(cumulative.files["before.toml"], b"# images\n");
    let entry = verified.stack.cumulative.as_ref().unwrap();
    assert_eq!(
        entry.patches,
        verified
            .stack
            .patches
            .iter()
            .map(|p| p.manifest_sha256)
            .collect::<Vec<_>>()
    );
    assert_eq!(verified.stack.no_cumulative, None);

    // The module is covered by the manifest, the manifest by stack.toml.
    let module_path = format!("{CUMULATIVE_DIR}/module.ko");
    let mut tampered = read_blob(&env.store, env.head(), &module_path);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let bad = rewrite_blob(&env.store, env.head(), &module_path, &tampered);
    let err = env.store.verify(bad, None, &env.policy).unwrap_err();
    assert!(
        matches!(err, VerifyError::DigestMismatch { ref path, .. } if path == &module_path),
        "{err}"
    );
    let bad = rewrite_blob(
        &env.store,
        env.head(),
        &format!("{CUMULATIVE_DIR}/manifest.toml"),
        b"format = 1\n",
    );
    let err = env.store.verify(bad, None, &env.policy).unwrap_err();
    assert!(matches!(err, VerifyError::DigestMismatch { .. }), "{err}");

    // A commit made on top (without a cumulative module) does not inherit it.
    let head = env.add("fix-c", &["loadavg_proc_show"]);
    let verified = env.store.verify(head, None, &env.policy).unwrap();
    assert!(verified.cumulative.is_none());
    assert!(verified.stack.cumulative.is_none());
}

#[test]
fn a_module_built_for_other_patches_is_refused() {
    let env = Env::new();
    env.add("fix-a", &["cmdline_proc_show"]);
    let prepared = env.prepare(&env.store, "fix-b", &["meminfo_proc_show"]);
    let mut new = cumulative_for(&env, &prepared, &["cmdline_proc_show"]);
    new.patches.pop();
    let err = env
        .store
        .prepare_cumulative(&prepared, Cumulative::Module(new), &author(), &env.key)
        .unwrap_err();
    assert!(
        matches!(err, CommitError::CumulativeMismatch { .. }),
        "{err}"
    );
}

#[test]
fn a_moved_stack_is_reported_as_such() {
    let env = Env::new();
    env.add("fix-a", &["cmdline_proc_show"]);
    let prepared = env.prepare(&env.store, "fix-b", &["meminfo_proc_show"]);
    let new = cumulative_for(&env, &prepared, &["cmdline_proc_show"]);
    // Another kstack published first.
    env.add("fix-c", &["loadavg_proc_show"]);
    let err = env
        .store
        .prepare_cumulative(&prepared, Cumulative::Module(new), &author(), &env.key)
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommitError::Store(kstack_store::store::StoreError::StackMoved { .. })
        ),
        "{err}"
    );
}

#[test]
fn the_reason_for_having_none_is_signed_and_shown() {
    let env = Env::new();
    let prepared = env.prepare(&env.store, "fix-a", &["cmdline_proc_show"]);
    let amended = env
        .store
        .prepare_cumulative(
            &prepared,
            Cumulative::Impossible("patch fix-a is a prebuilt module".into()),
            &author(),
            &env.key,
        )
        .unwrap();
    env.store.publish(&amended).unwrap();
    let verified = env.store.verify(env.head(), None, &env.policy).unwrap();
    assert!(verified.cumulative.is_none());
    assert_eq!(
        verified.stack.no_cumulative.as_deref(),
        Some("patch fix-a is a prebuilt module")
    );
}

#[test]
fn a_stray_cumulative_directory_is_refused() {
    let env = Env::new();
    let head = env.add("fix-a", &["cmdline_proc_show"]);
    let bad = rewrite_blob(
        &env.store,
        head,
        &format!("{CUMULATIVE_DIR}/module.ko"),
        &module("cum_0123456789ab", &["cmdline_proc_show"]),
    );
    let err = env.store.verify(bad, None, &env.policy).unwrap_err();
    assert!(
        matches!(err, VerifyError::Unexpected { ref path, .. } if path == CUMULATIVE_DIR),
        "{err}"
    );
}

#[test]
fn a_promotion_carries_the_cumulative_module() {
    let env = Env::new();
    let prepared = env.prepare(&env.store, "fix-a", &["cmdline_proc_show"]);
    let new = cumulative_for(&env, &prepared, &["cmdline_proc_show"]);
    let amended = env
        .store
        .prepare_cumulative(&prepared, Cumulative::Module(new), &author(), &env.key)
        .unwrap();
    env.store.publish(&amended).unwrap();
    let canary = env.store.verify(env.head(), None, &env.policy).unwrap();
    let promoted = env
        .store
        .promote(&canary, "production", "Roll out", &author(), &env.key)
        .unwrap()
        .unwrap();
    let production = StackId::new(env.stack.build_id.clone(), "production").unwrap();
    let verified = env
        .store
        .verify(promoted.commit, Some(&production), &env.policy)
        .unwrap();
    let (a, b) = (
        verified.cumulative.as_ref().unwrap(),
        canary.cumulative.as_ref().unwrap(),
    );
    assert_eq!(a.manifest, b.manifest);
    assert_eq!(a.module_blob, b.module_blob);
    assert_eq!(verified.stack.cumulative, canary.stack.cumulative);
}

#[test]
fn a_replace_reads_only_the_cumulative_module() {
    let env = Env::new();
    env.add("fix-a", &["cmdline_proc_show"]);
    let prepared = env.prepare(&env.store, "fix-b", &["meminfo_proc_show"]);
    let new = cumulative_for(&env, &prepared, &["cmdline_proc_show", "meminfo_proc_show"]);
    let amended = env
        .store
        .prepare_cumulative(&prepared, Cumulative::Module(new), &author(), &env.key)
        .unwrap();
    env.store.publish(&amended).unwrap();

    let light = env
        .store
        .verify_for_replace(env.head(), None, &env.policy)
        .unwrap();
    assert!(!light.patch_artifacts);
    assert!(light.patches.iter().all(|p| p.module.is_empty()));
    assert_eq!(light.patches[1].manifest.name, "fix-b");
    assert!(!light.cumulative.as_ref().unwrap().module.is_empty());
    assert!(
        env.store
            .verify(env.head(), None, &env.policy)
            .unwrap()
            .patch_artifacts
    );

    // The cumulative module is checked as always.
    let module_path = format!("{CUMULATIVE_DIR}/module.ko");
    let mut bytes = read_blob(&env.store, env.head(), &module_path);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = rewrite_blob(&env.store, env.head(), &module_path, &bytes);
    let err = env
        .store
        .verify_for_replace(bad, None, &env.policy)
        .unwrap_err();
    assert!(matches!(err, VerifyError::DigestMismatch { .. }), "{err}");

    // A commit without one is verified completely.
    let head = env.add("fix-c", &["loadavg_proc_show"]);
    let full = env
        .store
        .verify_for_replace(head, None, &env.policy)
        .unwrap();
    assert!(full.patch_artifacts);
    assert!(full.patches.iter().all(|p| !p.module.is_empty()));
}
