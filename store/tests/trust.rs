//! Trust beyond one signature: thresholds and approvals, revoked keys, validity
//! windows and renewals, descent by the signed chain, approvals combined by pull,
//! and stores written before all of that (format 1) still read.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failure is a test failure

mod common;

use std::time::Duration;

use common::*;
use kstack_store::commit::CommitError;
use kstack_store::digest::Sha256Digest;
use kstack_store::keys::{SecretKey, StackSignatures, TrustPolicy};
use kstack_store::lineage::Lineage;
use kstack_store::model::{FORMAT, SIGNATURE_FILE, STACK_FILE, STACK_FORMAT, StackFile};
use kstack_store::pull::PullOutcome;
use kstack_store::store::{Author, ObjectId, SIGNER_TRAILER, Store};
use kstack_store::validity::{Freshness, Timestamp};
use kstack_store::verify::VerifyError;

fn second_key() -> SecretKey {
    SecretKey::from_seed(&[43; 32])
}

fn third_key() -> SecretKey {
    SecretKey::from_seed(&[44; 32])
}

fn two_of_two(env: &Env) -> TrustPolicy {
    TrustPolicy {
        keys: vec![env.key.public(), second_key().public()],
        threshold: 2,
        revoked: Vec::new(),
    }
}

/// Writes `commit` again with `stack.sig` replaced by `sig` and the message's signer
/// trailers made to match: what a tamperer with write access could do.
fn resign_raw(store: &Store, commit: ObjectId, sig: &StackSignatures) -> ObjectId {
    let id = rewrite_blob(store, commit, SIGNATURE_FILE, sig.to_toml().as_bytes());
    let repo = store.repo();
    let mut decoded = repo
        .find_commit(id)
        .unwrap()
        .decode()
        .unwrap()
        .to_owned()
        .unwrap();
    let info = store.commit_info(commit).unwrap();
    let mut message = format!("{}\n", info.message);
    for key in sig.keys() {
        message.push_str(&format!("\n{SIGNER_TRAILER}: {key}"));
    }
    message.push('\n');
    decoded.message = message.into();
    repo.write_object(&decoded).unwrap().detach()
}

#[test]
fn one_of_two_is_refused_two_of_two_verify_and_an_approval_keeps_the_content_digest() {
    let env = Env::new();
    env.add("a", &["f"]);
    let head = env.head();
    let policy = two_of_two(&env);
    let err = env
        .store
        .verify(head, Some(&env.stack), &policy)
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BelowThreshold {
                found: 1,
                threshold: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("threshold requires 2"), "{err}");
    let standing = format!("{} trusted", env.key.public());
    assert!(err.to_string().contains(&standing), "{err}");

    let before = env.store.check(head, None).unwrap();
    let approved = env
        .store
        .approve(&env.stack, &second_key(), &author())
        .unwrap();
    assert_eq!(approved.parent, Some(head));
    assert_eq!(env.head(), approved.commit);
    let v = env
        .store
        .verify(approved.commit, Some(&env.stack), &policy)
        .unwrap();
    assert_eq!(v.stack_sha256, before.stack_sha256, "same content digest");
    assert_eq!(v.signers, vec![env.key.public(), second_key().public()]);
    assert_eq!(v.stack, before.stack);
    // The same Git parent, message and author; one more signer trailer for `log`.
    let info = env.store.commit_info(approved.commit).unwrap();
    let old = env.store.commit_info(head).unwrap();
    assert_eq!(info.parents, old.parents);
    assert_eq!(
        (info.message.as_str(), info.time),
        (old.message.as_str(), old.time)
    );
    assert_eq!(
        info.signers(),
        vec![env.key.public(), second_key().public()]
    );
    let log = env.store.log(approved.commit, Some(1)).unwrap();
    assert_eq!(log[0].approvals, vec![second_key().public()]);
    // An approved head is the same commit to lineage.
    assert_eq!(
        env.store
            .lineage(&before.stack_sha256, approved.commit)
            .unwrap(),
        Lineage::Same
    );

    // A key approves once.
    let err = env
        .store
        .approve(&env.stack, &second_key(), &author())
        .unwrap_err();
    assert!(matches!(err, CommitError::AlreadySigned { .. }), "{err}");
}

#[test]
fn the_same_key_twice_counts_once() {
    let env = Env::new();
    env.add("a", &["f"]);
    let head = env.head();
    let v = env.store.check(head, None).unwrap();
    let twice = StackSignatures {
        stack_sha256: v.stack_sha256,
        signatures: vec![
            env.key.sign_digest(&v.stack_sha256),
            env.key.sign_digest(&v.stack_sha256),
        ],
    };
    let forged = resign_raw(&env.store, head, &twice);
    let checked = env.store.check(forged, None).unwrap();
    assert_eq!(checked.signers, vec![env.key.public()]);
    let err = env
        .store
        .verify(forged, None, &two_of_two(&env))
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::BelowThreshold { found: 1, .. }),
        "{err}"
    );

    // A signature of another key that does not verify spoils the file.
    let mut bad = twice.clone();
    bad.signatures[1] = second_key().sign_digest(&Sha256Digest::of(b"other"));
    let forged = resign_raw(&env.store, head, &bad);
    let err = env.store.check(forged, None).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
}

#[test]
fn a_head_signed_only_by_a_revoked_key_is_refused_its_history_still_verifies() {
    let env = Env::new();
    // The first commit is signed by a key that later leaks.
    let leaked = third_key();
    let first = env
        .store
        .add_patch(
            &env.stack,
            None,
            patch("a", &["f"]),
            "a",
            &author(),
            &leaked,
        )
        .unwrap()
        .commit;
    let second = env.add("b", &["g"]);
    let policy = TrustPolicy {
        keys: vec![env.key.public(), leaked.public()],
        threshold: 1,
        revoked: vec![leaked.public()],
    };
    let err = env.store.verify(first, None, &policy).unwrap_err();
    assert!(matches!(err, VerifyError::Revoked { .. }), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    // The newer head is trusted, and vouches for the history it names.
    env.store.verify(second, Some(&env.stack), &policy).unwrap();
    assert_eq!(env.store.verify_history(second, None, None).unwrap(), 2);
    // Checked commit by commit against the policy, the history fails.
    let err = env
        .store
        .verify_history(second, None, Some(&policy))
        .unwrap_err();
    assert!(matches!(err, VerifyError::Revoked { .. }), "{err}");
    // A key removed from [trust] keys (not revoked): the same.
    let removed = TrustPolicy {
        keys: vec![env.key.public()],
        ..TrustPolicy::default()
    };
    env.store.verify(second, None, &removed).unwrap();
    assert!(matches!(
        env.store.verify(first, None, &removed).unwrap_err(),
        VerifyError::Untrusted { .. }
    ));
}

#[test]
fn every_commit_has_a_signed_window_and_renew_moves_it_without_changing_patches() {
    let env = Env::new();
    env.add("a", &["f"]);
    let head = env.head();
    let v = env.store.check(head, None).unwrap();
    assert_eq!(v.stack.format, STACK_FORMAT);
    let window = v.stack.validity.unwrap();
    assert_eq!(window.signed_at, Timestamp::from_secs(author().time));
    assert_eq!(window.expires, window.signed_at.plus(author().valid_for));

    let later = Author {
        time: author().time + 1000,
        valid_for: Duration::from_secs(7 * 86_400),
        ..author()
    };
    let renewed = env
        .store
        .renew(&env.stack, "renew", &later, &env.key)
        .unwrap();
    let r = env.store.check(renewed.commit, Some(&env.stack)).unwrap();
    let new_window = r.stack.validity.unwrap();
    assert_eq!(new_window.signed_at, Timestamp::from_secs(later.time));
    assert_eq!(
        new_window.freshness(Timestamp::from_secs(later.time + 7 * 86_400)),
        Freshness::Expired {
            ago: Duration::ZERO
        }
    );
    assert_eq!(r.stack.patches, v.stack.patches);
    assert_eq!(
        r.patches.iter().map(|p| p.module_blob).collect::<Vec<_>>(),
        v.patches.iter().map(|p| p.module_blob).collect::<Vec<_>>()
    );
    assert_eq!(
        env.store.lineage(&v.stack_sha256, renewed.commit).unwrap(),
        Lineage::Descends(1)
    );
    assert_eq!(
        env.store.lineage(&r.stack_sha256, head).unwrap(),
        Lineage::Unrelated
    );
}

/// A commit as kstack wrote it before windows and approvals: `stack.toml` format 1
/// without `[validity]`, `stack.sig` format 1 with one signature.
fn legacy_commit(env: &Env, commit: ObjectId) -> ObjectId {
    let v = env.store.check(commit, None).unwrap();
    let mut stack: StackFile = v.stack.clone();
    stack.format = FORMAT;
    stack.validity = None;
    let text = stack.to_toml();
    let digest = Sha256Digest::of(text.as_bytes());
    let one = env.key.sign_digest(&digest);
    let sig = format!(
        "format = 1\nalgorithm = \"ed25519\"\nkey = \"{}\"\nstack_sha256 = \"{}\"\nsignature = \"{}\"\n",
        one.key,
        digest.to_hex(),
        one.signature
    );
    let id = rewrite_blob(&env.store, commit, STACK_FILE, text.as_bytes());
    rewrite_blob(&env.store, id, SIGNATURE_FILE, sig.as_bytes())
}

#[test]
fn format_1_commits_still_verify_and_can_be_approved() {
    let env = Env::new();
    env.add("a", &["f"]);
    let legacy = legacy_commit(&env, env.head());
    force_ref(&env, legacy);
    let v = env
        .store
        .verify(legacy, Some(&env.stack), &env.policy)
        .unwrap();
    assert_eq!(v.stack.format, FORMAT);
    assert_eq!(v.stack.validity, None);
    // Approving rewrites stack.sig in format 2; stack.toml stays as it was.
    let approved = env
        .store
        .approve(&env.stack, &second_key(), &author())
        .unwrap();
    let a = env.store.check(approved.commit, None).unwrap();
    assert_eq!(a.stack_sha256, v.stack_sha256);
    assert_eq!(a.signers.len(), 2);
    // A renewal of it is a format 2 commit with a window.
    let renewed = env
        .store
        .renew(&env.stack, "renew", &author(), &env.key)
        .unwrap();
    let r = env.store.check(renewed.commit, None).unwrap();
    assert!(r.stack.validity.is_some());
}

#[test]
fn pull_takes_an_approved_head_and_combines_approvals_made_in_two_places() {
    let (local, remote) = (Env::new(), Env::new());
    remote.add("a", &["f"]);
    let url = remote.path().display().to_string();
    local.store.pull(&url, &local.policy).unwrap();
    let head = local.head();

    // Approved remotely by key 2: the same content, so it fast-forwards.
    remote
        .store
        .approve(&remote.stack, &second_key(), &author())
        .unwrap();
    let report = local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(report.stacks[0].outcome, PullOutcome::Updated);
    assert_eq!(local.head(), remote.head());

    // Approved locally by key 3, remotely not: nothing new to take.
    local
        .store
        .approve(&local.stack, &third_key(), &author())
        .unwrap();
    let report = local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(report.stacks[0].outcome, PullOutcome::LocalAhead);

    // Each side has an approval the other lacks: combined.
    let fourth = SecretKey::from_seed(&[45; 32]);
    remote
        .store
        .approve(&remote.stack, &fourth, &author())
        .unwrap();
    let report = local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(report.stacks[0].outcome, PullOutcome::Updated);
    let merged = local.store.check(local.head(), None).unwrap();
    assert_eq!(
        merged.signers,
        vec![
            local.key.public(),
            second_key().public(),
            third_key().public(),
            fourth.public()
        ]
    );
    assert_eq!(merged.stack_sha256, local.store.stack_digest(head).unwrap());

    // A rewound remote is still refused.
    let older_remote = Env::new();
    let url = older_remote.path().display().to_string();
    older_remote.add("other", &["g"]);
    let err = local.store.pull(&url, &local.policy).unwrap_err();
    assert!(err.to_string().contains("does not descend"), "{err}");
}

#[test]
fn pull_refuses_a_head_below_the_threshold() {
    let (local, remote) = (Env::new(), Env::new());
    remote.add("a", &["f"]);
    let url = remote.path().display().to_string();
    let policy = two_of_two(&local);
    let err = local.store.pull(&url, &policy).unwrap_err();
    assert!(err.to_string().contains("threshold requires 2"), "{err}");
    assert!(local.store.stack_head(&local.stack).unwrap().is_none());
    remote
        .store
        .approve(&remote.stack, &second_key(), &author())
        .unwrap();
    local.store.pull(&url, &policy).unwrap();
    assert_eq!(local.head(), remote.head());
}

/// A promotion is a commit like any other to the trust rules: it needs its
/// approvals under a threshold, an approval keeps its record of the source (in
/// `stack.toml` and in the trailer that verification compares with it), it descends
/// from the destination's previous head, and a renewal of it promotes nothing.
#[test]
fn a_promotion_is_approved_and_renewed_like_any_commit() {
    let env = Env::new(); // "prod" is the canary
    env.add("a", &["f"]);
    let canary_head = env.head();
    let canary = env.store.verify(canary_head, None, &env.policy).unwrap();
    let production =
        kstack_store::store::StackId::new(env.stack.build_id.clone(), "production").unwrap();
    let policy = two_of_two(&env);
    // production's first head, approved, so that the promotion has a parent.
    env.store
        .promote(&canary, "production", "first", &author(), &env.key)
        .unwrap();
    let first = env
        .store
        .approve(&production, &second_key(), &author())
        .unwrap();
    let first_digest = env.store.stack_digest(first.commit).unwrap();

    env.add("b", &["g"]);
    let canary = env.store.verify(env.head(), None, &env.policy).unwrap();
    let promoted = env
        .store
        .promote(&canary, "production", "Roll out", &author(), &env.key)
        .unwrap()
        .unwrap();
    let err = env
        .store
        .verify(promoted.commit, Some(&production), &policy)
        .unwrap_err();
    assert!(matches!(err, VerifyError::BelowThreshold { .. }), "{err}");

    let approved = env
        .store
        .approve(&production, &second_key(), &author())
        .unwrap();
    let v = env
        .store
        .verify(approved.commit, Some(&production), &policy)
        .unwrap();
    let from = v.stack.promoted_from.as_ref().unwrap();
    assert_eq!(from.commit, canary.commit.to_string());
    let info = env.store.commit_info(approved.commit).unwrap();
    assert_eq!(
        kstack_store::promote::promoted_from(&info.message),
        Some(("prod".to_owned(), canary.commit.to_string()))
    );
    assert!(v.stack.validity.is_some());
    assert!(
        env.store
            .lineage(&first_digest, approved.commit)
            .unwrap()
            .contains_base()
    );

    let renewed = env
        .store
        .renew(&production, "renew", &author(), &env.key)
        .unwrap();
    let r = env.store.check(renewed.commit, Some(&production)).unwrap();
    assert_eq!(r.stack.promoted_from, None);
    assert_eq!(r.stack.patches, v.stack.patches);
}
