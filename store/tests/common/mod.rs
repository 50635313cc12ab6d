//! Shared helpers for the store's integration tests: a temporary store, fixed keys
//! and timestamps, and synthetic livepatch modules.
#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used)] // helpers of tests: a failure here is a test failure

use std::path::{Path, PathBuf};

use kstack_fixtures::FakeModule;
use kstack_store::commit::{NewPatch, Prepared};
use kstack_store::keys::{SecretKey, TrustPolicy};
use kstack_store::model::PatchSource;
use kstack_store::store::{Author, ObjectId, StackId, Store};

pub const BUILD_ID: &str = "3b43fad5034874490492495d552c0af6a5fab235";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub key: SecretKey,
    pub policy: TrustPolicy,
    pub stack: StackId,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store")).unwrap();
        let key = SecretKey::from_seed(&[42; 32]);
        let policy = TrustPolicy {
            keys: vec![key.public()],
            ..TrustPolicy::default()
        };
        let stack = StackId::new(BUILD_ID.parse().unwrap(), "prod").unwrap();
        Env {
            dir,
            store,
            key,
            policy,
            stack,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.store.path().to_owned()
    }

    /// Another handle on the same store (as another process would have).
    pub fn reopen(&self) -> Store {
        Store::open(self.store.path()).unwrap()
    }

    /// Commits a synthetic livepatch module replacing `functions`.
    pub fn add(&self, name: &str, functions: &[&str]) -> ObjectId {
        self.store
            .add_patch(
                &self.stack,
                None,
                patch(name, functions),
                &format!("add {name}"),
                &author(),
                &self.key,
            )
            .unwrap()
            .commit
    }

    /// Writes a commit adding a synthetic patch through `store` (this env's, or
    /// another handle on it), without moving the ref.
    pub fn prepare(&self, store: &Store, name: &str, functions: &[&str]) -> Prepared {
        store
            .prepare_add_patch(
                &self.stack,
                None,
                patch(name, functions),
                name,
                &author(),
                &self.key,
            )
            .unwrap()
    }

    pub fn head(&self) -> ObjectId {
        self.store.stack_head(&self.stack).unwrap().unwrap()
    }
}

pub fn author() -> Author {
    Author {
        name: "Test Author".into(),
        email: "test@example.invalid".into(),
        time: 1_700_000_000,
        // Fixed times keep commit ids stable; a century keeps them valid.
        valid_for: std::time::Duration::from_secs(100 * 365 * 86_400),
    }
}

pub fn module(name: &str, functions: &[&str]) -> Vec<u8> {
    let mut m = FakeModule::livepatch(&format!("kstack_{name}"), functions);
    m.padding = 4096;
    m.seed = name.len() as u64;
    m.build()
}

pub fn patch(name: &str, functions: &[&str]) -> NewPatch {
    NewPatch {
        name: name.to_owned(),
        module: module(name, functions),
        module_file: format!("{name}.ko"),
        diff: Some(format!("--- a/x.c\n+++ b/x.c\n@@ {name} @@\n").into_bytes()),
        functions: Vec::new(),
        build: Default::default(),
        source: PatchSource::Prebuilt,
        extra: Default::default(),
    }
}

/// `git` must be on PATH: the tests use it to pack, check and serve stores (the
/// product itself never runs it). Missing, they fail rather than skip.
pub fn require_git() {
    let found = std::process::Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "git is not installed: run `cargo xtask setup`");
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replaces the blob at `path` in `commit`'s tree with `bytes`, writes a new commit
/// with the same parent and message (the store's signature left as it was), and
/// returns it. This is what someone with write access to the repository could do.
pub fn rewrite_blob(store: &Store, commit: ObjectId, path: &str, bytes: &[u8]) -> ObjectId {
    let repo = store.repo();
    let old = repo.find_commit(commit).unwrap();
    let tree = old.tree_id().unwrap().detach();
    let blob = repo.write_blob(bytes).unwrap().detach();
    let mut editor = repo.edit_tree(tree).unwrap();
    editor
        .upsert(path, gix::objs::tree::EntryKind::Blob, blob)
        .unwrap();
    let new_tree = editor.write().unwrap().detach();
    let mut decoded = old.decode().unwrap().to_owned().unwrap();
    decoded.tree = new_tree;
    repo.write_object(&decoded).unwrap().detach()
}

/// Reads the blob at `path` in `commit`.
pub fn read_blob(store: &Store, commit: ObjectId, path: &str) -> Vec<u8> {
    let repo = store.repo();
    let tree = repo.find_commit(commit).unwrap().tree().unwrap();
    let entry = tree.lookup_entry_by_path(path).unwrap().unwrap();
    repo.find_blob(entry.object_id()).unwrap().data.clone()
}

/// Points the stack's ref at `commit` (bypassing the store, as a tamperer would).
pub fn force_ref(env: &Env, commit: ObjectId) {
    let file = env.path().join(env.stack.ref_name());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, format!("{commit}\n")).unwrap();
}

/// The loose object file of `id`.
pub fn loose_object_path(store: &Store, id: ObjectId) -> PathBuf {
    let hex = id.to_string();
    store.path().join("objects").join(&hex[..2]).join(&hex[2..])
}
