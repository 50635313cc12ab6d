//! Promotion from a canary stack to a production stack: the same module bytes and
//! digests, a record of where they came from, checked by verification.

mod common;

use common::*;
use kstack_store::model::MODULE_FILE;
use kstack_store::promote::{PromoteError, promoted_from};
use kstack_store::store::StackId;

#[test]
fn promotion_carries_the_same_patches_and_records_its_source() {
    let env = Env::new(); // stack "prod" is the canary here
    env.add("fix-a", &["cmdline_proc_show"]);
    let canary_head = env.add("fix-b", &["meminfo_proc_show"]);
    let canary = env.store.verify(canary_head, None, &env.policy).unwrap();

    let promoted = env
        .store
        .promote(&canary, "production", "Roll out", &author(), &env.key)
        .unwrap()
        .expect("production had nothing yet");
    let production = StackId::new(env.stack.build_id.clone(), "production").unwrap();
    assert_eq!(
        env.store.stack_head(&production).unwrap(),
        Some(promoted.commit)
    );
    assert_eq!(promoted.parent, None);

    let verified = env
        .store
        .verify(promoted.commit, Some(&production), &env.policy)
        .unwrap();
    // The same patches: entries, manifests, module bytes, Git trees.
    assert_eq!(verified.stack.patches, canary.stack.patches);
    for (p, c) in verified.patches.iter().zip(&canary.patches) {
        assert_eq!(p.manifest, c.manifest);
        assert_eq!(p.module, c.module);
        assert_eq!(p.module_blob, c.module_blob);
        assert_eq!(
            p.manifest.artifact(MODULE_FILE).unwrap().sha256,
            c.manifest.artifact(MODULE_FILE).unwrap().sha256
        );
    }
    let from = verified.stack.promoted_from.as_ref().unwrap();
    assert_eq!(from.stack, "prod");
    assert_eq!(from.commit, canary_head.to_string());
    assert_eq!(from.stack_sha256, canary.stack_sha256);
    assert_eq!(verified.stack.message, "Roll out");

    // `log` sees the promotion from the commit header alone.
    let info = env.store.commit_info(promoted.commit).unwrap();
    assert_eq!(
        promoted_from(&info.message),
        Some(("prod".to_owned(), canary_head.to_string()))
    );

    // Nothing new: nothing to promote.
    assert!(
        env.store
            .promote(&canary, "production", "again", &author(), &env.key)
            .unwrap()
            .is_none()
    );

    // The canary moves on; the next promotion builds on production's history.
    let next_head = env.add("fix-c", &["version_proc_show"]);
    let next = env.store.verify(next_head, None, &env.policy).unwrap();
    let second = env
        .store
        .promote(&next, "production", "Roll out fix-c", &author(), &env.key)
        .unwrap()
        .unwrap();
    assert_eq!(second.parent, Some(promoted.commit));
    assert_eq!(second.stack_file.patches, next.stack.patches);
    assert_eq!(
        env.store
            .verify_history(second.commit, None, Some(&env.policy))
            .unwrap(),
        2
    );
}

#[test]
fn a_stack_cannot_be_promoted_onto_itself() {
    let env = Env::new();
    let head = env.add("fix-a", &["f"]);
    let canary = env.store.verify(head, None, &env.policy).unwrap();
    let err = env
        .store
        .promote(&canary, "prod", "no", &author(), &env.key)
        .unwrap_err();
    assert!(matches!(err, PromoteError::SameStack { .. }), "{err}");
}

#[test]
fn a_trailer_that_disagrees_with_the_signed_record_fails_verification() {
    let env = Env::new();
    let head = env.add("fix-a", &["f"]);
    let canary = env.store.verify(head, None, &env.policy).unwrap();
    let promoted = env
        .store
        .promote(&canary, "production", "Roll out", &author(), &env.key)
        .unwrap()
        .unwrap();
    // Rewrite the Git message to claim another source; stack.toml and its
    // signature stay as they were.
    let repo = env.store.repo();
    let mut commit = repo
        .find_commit(promoted.commit)
        .unwrap()
        .decode()
        .unwrap()
        .to_owned()
        .unwrap();
    let text = commit.message.to_string().replace(" prod ", " staging ");
    commit.message = text.into();
    let forged = repo.write_object(&commit).unwrap().detach();
    let err = env.store.check(forged, None).unwrap_err();
    assert!(err.to_string().contains("promoted_from says prod"), "{err}");
    // And a plain commit whose message grew a promotion trailer.
    let plain = env.head();
    let mut commit = repo
        .find_commit(plain)
        .unwrap()
        .decode()
        .unwrap()
        .to_owned()
        .unwrap();
    let text = commit.message.to_string().replacen(
        "\n\nKstack-Signer",
        &format!("\n\nKstack-Promoted-From: canary {plain}\nKstack-Signer"),
        1,
    );
    commit.message = text.into();
    let forged = repo.write_object(&commit).unwrap().detach();
    let err = env.store.check(forged, None).unwrap_err();
    assert!(err.to_string().contains("promoted_from says none"), "{err}");
}
