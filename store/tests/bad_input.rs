//! Every kind of bad input the issue names, each with the error it must give.

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use kstack_store::commit::CommitError;
use kstack_store::digest::Sha256Digest;
use kstack_store::keys::{SecretKey, TrustPolicy};
use kstack_store::store::{Store, StoreError};
use kstack_store::verify::VerifyError;

fn short(id: &gix::ObjectId) -> String {
    id.to_hex_with_len(12).to_string()
}

#[test]
fn flipped_byte_in_a_module() {
    let env = Env::new();
    env.add("foo0", &["f0"]);
    let head = env.add("foo", &["f1"]);
    let path = "patches/0002-foo/module.ko";
    let mut bytes = read_blob(&env.store, head, path);
    let good = Sha256Digest::of(&bytes);
    bytes[100] ^= 0x01;
    let bad = Sha256Digest::of(&bytes);
    let tampered = rewrite_blob(&env.store, head, path, &bytes);
    force_ref(&env, tampered);

    let err = env
        .store
        .verify(env.head(), Some(&env.stack), &env.policy)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: patches/0002-foo/module.ko: SHA-256 mismatch: manifest says {good}, content is {bad}",
            short(&tampered)
        )
    );
    // Nothing is built on top of it either.
    let err = env
        .store
        .add_patch(
            &env.stack,
            None,
            patch("bar", &["f2"]),
            "m",
            &author(),
            &env.key,
        )
        .unwrap_err();
    assert!(matches!(err, CommitError::DamagedParent { .. }), "{err}");
}

/// The same flip, but with the object swapped in place under its old Git id, as a
/// SHA-1 collision would: the SHA-256 digests still catch it.
#[test]
fn module_swapped_under_the_same_git_id() {
    let env = Env::new();
    let head = env.add("foo", &["f1"]);
    let path = "patches/0001-foo/module.ko";
    let mut bytes = read_blob(&env.store, head, path);
    bytes[200] ^= 0x80;
    let repo = env.store.repo();
    let tree = repo.find_commit(head).unwrap().tree().unwrap();
    let blob_id = tree
        .lookup_entry_by_path(path)
        .unwrap()
        .unwrap()
        .object_id();
    let file = loose_object_path(&env.store, blob_id);
    let mut raw = format!("blob {}\0", bytes.len()).into_bytes();
    raw.extend_from_slice(&bytes);
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&file, perms).unwrap();
    std::fs::write(&file, enc.finish().unwrap()).unwrap();

    let store = env.reopen();
    let err = store
        .verify(head, Some(&env.stack), &env.policy)
        .unwrap_err();
    assert!(
        matches!(&err, VerifyError::DigestMismatch { path: p, recorded_in: kstack_store::verify::RecordedIn::Manifest, .. } if p == path),
        "{err}"
    );
}

#[test]
fn manifest_whose_digest_does_not_match() {
    let env = Env::new();
    let head = env.add("foo", &["f1"]);
    let path = "patches/0001-foo/manifest.toml";
    let text = String::from_utf8(read_blob(&env.store, head, path)).unwrap();
    // Claim another function: the artifact digests still match, the manifest's not.
    let edited = text.replace("name = \"f1\"", "name = \"f9\"");
    assert_ne!(text, edited);
    let tampered = rewrite_blob(&env.store, head, path, edited.as_bytes());
    force_ref(&env, tampered);
    let err = env.store.verify(env.head(), None, &env.policy).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: patches/0001-foo/manifest.toml: SHA-256 mismatch: stack.toml says {}, content is {}",
            short(&tampered),
            Sha256Digest::of(text.as_bytes()),
            Sha256Digest::of(edited.as_bytes())
        )
    );
}

#[test]
fn edited_stack_toml_breaks_the_signature() {
    let env = Env::new();
    let head = env.add("foo", &["f1"]);
    let text = String::from_utf8(read_blob(&env.store, head, "stack.toml")).unwrap();
    let edited = text.replace("add foo", "add bar");
    let tampered = rewrite_blob(&env.store, head, "stack.toml", edited.as_bytes());
    let err = env.store.verify(tampered, None, &env.policy).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: stack.sig: the signature by {} does not match stack.toml",
            short(&tampered),
            env.key.public()
        )
    );
}

#[test]
fn signature_by_an_untrusted_key() {
    let env = Env::new();
    let stranger = SecretKey::from_seed(&[9; 32]);
    let prepared = env
        .store
        .add_patch(
            &env.stack,
            None,
            patch("foo", &["f"]),
            "m",
            &author(),
            &stranger,
        )
        .unwrap();
    let err = env
        .store
        .verify(prepared.commit, Some(&env.stack), &env.policy)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: signed by {}, which is not a trusted key",
            short(&prepared.commit),
            stranger.public()
        )
    );
    // An empty policy trusts nobody.
    let err = env
        .store
        .verify(prepared.commit, None, &TrustPolicy::default())
        .unwrap_err();
    assert!(matches!(err, VerifyError::Untrusted { .. }), "{err}");
    // Copying a trusted stack.sig next to it does not help.
    let good = Env::new();
    let trusted_head = good.add("foo", &["f"]);
    let sig = read_blob(&good.store, trusted_head, "stack.sig");
    let forged = rewrite_blob(&env.store, prepared.commit, "stack.sig", &sig);
    let err = env.store.verify(forged, None, &env.policy).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err}");
}

#[test]
fn missing_object() {
    let env = Env::new();
    let head = env.add("foo", &["f1"]);
    let repo = env.store.repo();
    let tree = repo.find_commit(head).unwrap().tree().unwrap();
    let blob = tree
        .lookup_entry_by_path("patches/0001-foo/module.ko")
        .unwrap()
        .unwrap()
        .object_id();
    std::fs::remove_file(loose_object_path(&env.store, blob)).unwrap();
    let store = env.reopen();
    let err = store.verify(head, None, &env.policy).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: patches/0001-foo/module.ko: object {blob} is missing from the store",
            short(&head)
        )
    );
    // A missing commit is named too.
    std::fs::remove_file(loose_object_path(&env.store, head)).unwrap();
    let store = env.reopen();
    let err = store.log(head, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: object {head} is missing from the store",
            short(&head)
        )
    );
}

#[test]
fn truncated_pack() {
    require_git();
    let env = Env::new();
    env.add("foo", &["f1"]);
    let head = env.add("bar", &["f2"]);
    git(&env.path(), &["repack", "-a", "-d", "-q"]);
    let pack_dir = env.path().join("objects/pack");
    let pack = std::fs::read_dir(&pack_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    // Verifies while whole.
    env.reopen().verify(head, None, &env.policy).unwrap();
    let len = std::fs::metadata(&pack).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);

    let store = env.reopen();
    let err = store.verify(head, None, &env.policy).unwrap_err();
    let text = kstack_store::error_chain(&err);
    eprintln!("{text}");
    assert!(
        text.contains("cannot be read (corrupt or truncated store)")
            || text.contains("is missing from the store"),
        "{text}"
    );
    assert!(text.starts_with("commit "), "{text}");
}

#[test]
fn ref_pointing_nowhere() {
    let env = Env::new();
    env.add("foo", &["f1"]);
    let nowhere: gix::ObjectId = "0123456789abcdef0123456789abcdef01234567".parse().unwrap();
    force_ref(&env, nowhere);
    let err = env.store.stack_head(&env.stack).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("ref refs/kstack/{BUILD_ID}/prod points to {nowhere}, which is not in the store")
    );
    let err = env.store.resolve("prod", None).unwrap_err();
    assert!(
        err.to_string().contains("which is not in the store"),
        "{err}"
    );
    let err = env
        .store
        .add_patch(
            &env.stack,
            None,
            patch("bar", &["f2"]),
            "m",
            &author(),
            &env.key,
        )
        .unwrap_err();
    assert!(
        matches!(err, CommitError::Store(StoreError::DanglingRef { .. })),
        "{err}"
    );
}

#[test]
fn a_commit_claiming_another_stack() {
    let env = Env::new();
    let head = env.add("foo", &["f1"]);
    let other = kstack_store::store::StackId::new(BUILD_ID.parse().unwrap(), "staging").unwrap();
    let err = env
        .store
        .verify(head, Some(&other), &env.policy)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: stack.toml: belongs to stack {BUILD_ID}/prod, not {BUILD_ID}/staging",
            short(&head)
        )
    );
}

#[test]
fn extra_file_in_a_patch_is_refused() {
    let env = Env::new();
    let head = env.add("foo", &["f1"]);
    let tampered = rewrite_blob(&env.store, head, "patches/0001-foo/evil.sh", b"rm -rf /");
    let err = env.store.verify(tampered, None, &env.policy).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "commit {}: patches/0001-foo/evil.sh: not covered by any digest (not part of a stack)",
            short(&tampered)
        )
    );
}

#[test]
fn concurrent_commits_on_one_stack_lose_cleanly() {
    let env = Env::new();
    let base = env.add("base", &["f0"]);
    // Deterministic: both prepared on the same head, published one after the other.
    let a = env.prepare(&env.store, "a", &["f1"]);
    let other = env.reopen();
    let b = env.prepare(&other, "b", &["f2"]);
    env.store.publish(&a).unwrap();
    let err = other.publish(&b).unwrap_err();
    assert!(
        matches!(err, CommitError::Store(StoreError::StackMoved { .. })),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "stack {BUILD_ID}/prod moved while this command ran (it was {}, now {}); retry",
            short(&base),
            short(&a.commit)
        )
    );
    assert_eq!(env.head(), a.commit);
    // A retry builds on the new head.
    other
        .add_patch(
            &env.stack,
            None,
            patch("b", &["f2"]),
            "b",
            &author(),
            &env.key,
        )
        .unwrap();
    let log = env.store.log(env.head(), None).unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[1].id, a.commit);
}

#[test]
fn racing_threads_never_fork_history() {
    let env = Env::new();
    env.add("base", &["f0"]);
    let path = env.path();
    let rounds = 8;
    for round in 0..rounds {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let barrier = barrier.clone();
                let path = path.clone();
                let stack = env.stack.clone();
                let key = env.key.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    let name = format!("r{round}t{t}");
                    let prepared = store
                        .prepare_add_patch(
                            &stack,
                            None,
                            patch(&name, &["f"]),
                            &name,
                            &author(),
                            &key,
                        )
                        .unwrap();
                    barrier.wait();
                    store.publish(&prepared).map(|()| prepared.commit)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for loser in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(
                    loser,
                    CommitError::Store(StoreError::StackMoved { .. } | StoreError::Locked { .. })
                ),
                "{loser}"
            );
            assert!(loser.to_string().ends_with("retry"), "{loser}");
        }
        assert_eq!(
            env.reopen().stack_head(&env.stack).unwrap(),
            Some(*winners[0])
        );
    }
    // A straight line: base + one winner per round, each verifying.
    let store = env.reopen();
    let head = store.stack_head(&env.stack).unwrap().unwrap();
    assert_eq!(store.log(head, None).unwrap().len(), 1 + rounds);
    assert_eq!(
        store.verify_history(head, None, Some(&env.policy)).unwrap(),
        1 + rounds
    );
    assert_eq!(
        store.verify(head, None, &env.policy).unwrap().patches.len(),
        1 + rounds
    );
}

#[test]
fn crash_between_objects_and_ref() {
    let env = Env::new();
    let head = env.add("foo", &["f1"]);
    let log_before = env.store.log(head, None).unwrap();
    // Write every object of a commit, then "crash" before the ref moves.
    let prepared = env.prepare(&env.store, "bar", &["f2"]);
    let path = env.path();
    drop(env.store);
    let store = Store::open(&path).unwrap();
    assert!(store.has_object(prepared.commit), "objects were written");
    assert_eq!(store.stack_head(&env.stack).unwrap(), Some(head));
    assert_eq!(store.log(head, None).unwrap(), log_before);
    store.verify(head, Some(&env.stack), &env.policy).unwrap();
    // And the next commit proceeds normally.
    store
        .add_patch(
            &env.stack,
            None,
            patch("bar", &["f2"]),
            "m",
            &author(),
            &env.key,
        )
        .unwrap();
    {
        require_git();
        git(&path, &["fsck", "--no-progress"]);
    }
}

#[test]
fn git_reads_the_store() {
    require_git();
    let env = Env::new();
    env.add("foo", &["f1"]);
    env.add("bar", &["f2"]);
    git(&env.path(), &["fsck", "--strict", "--no-progress"]);
    let log = git(&env.path(), &["log", "--format=%s", &env.stack.ref_name()]);
    assert_eq!(log, "add bar\nadd foo\n");
    let files = git(
        &env.path(),
        &["ls-tree", "-r", "--name-only", &env.stack.ref_name()],
    );
    assert_eq!(
        files,
        "patches/0001-foo/manifest.toml\npatches/0001-foo/module.ko\npatches/0001-foo/patch.diff\n\
         patches/0002-bar/manifest.toml\npatches/0002-bar/module.ko\npatches/0002-bar/patch.diff\n\
         stack.sig\nstack.toml\n"
    );
}

#[test]
fn packing_while_another_kstack_commits() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    env.add("base", &["f0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let packer = {
        let stop = stop.clone();
        let path = env.path();
        std::thread::spawn(move || {
            let store = Store::open(&path).unwrap();
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                store.pack(runs % 3 == 2).unwrap();
                runs += 1;
            }
            runs
        })
    };
    for i in 0..12 {
        env.add(&format!("p{i}"), &[&format!("f{}", i + 1)]);
    }
    stop.store(true, Ordering::Relaxed);
    assert!(packer.join().unwrap() > 0);
    let head = env.head();
    for store in [&env.store, &env.reopen()] {
        assert_eq!(
            store.verify(head, None, &env.policy).unwrap().patches.len(),
            13
        );
        assert_eq!(store.verify_history(head, None, None).unwrap(), 13);
    }
    {
        require_git();
        git(&env.path(), &["fsck", "--strict", "--no-progress"]);
    }
}
