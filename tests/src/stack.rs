//! A store on the host with signed stacks of real livepatch modules, ready to be
//! copied into the sandbox VM with a config that points at it.

use std::collections::BTreeMap;
use std::path::Path;

use kstack_engine::sandbox::Sandbox;
use kstack_store::commit::{Cumulative, NewCumulative, NewPatch};
use kstack_store::ident::{self, BuildId};
use kstack_store::keys::SecretKey;
use kstack_store::model::PatchSource;
use kstack_store::store::{Author, ObjectId, StackId, Store};

/// Where the guest finds the store, the state and the configs.
pub const GUEST_STORE: &str = "/var/lib/kstack/store";
pub const GUEST_STATE: &str = "/var/lib/kstack";
pub const GUEST_CONFIG_DIR: &str = "/etc/kstack";

/// A temporary store with one signing key, pinned to the test kernel's build ID.
#[derive(Debug)]
pub struct StackFixture {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub key: SecretKey,
    pub build_id: BuildId,
    pub release: String,
}

impl Default for StackFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl StackFixture {
    pub fn new() -> StackFixture {
        let kernel = crate::kernel();
        let build_id = ident::image_build_id(&kernel.vmlinuz())
            .unwrap_or_else(|e| panic!("build ID of {}: {e}", kernel.vmlinuz().display()));
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store")).unwrap();
        StackFixture {
            dir,
            store,
            key: SecretKey::from_seed(&[7; 32]),
            build_id,
            release: kernel.release,
        }
    }

    pub fn stack(&self, name: &str) -> StackId {
        StackId::new(self.build_id.clone(), name).unwrap()
    }

    /// Commits the built module `ko` as patch `name` on top of `stack`.
    pub fn commit(&self, stack: &str, name: &str, ko: &Path) -> ObjectId {
        self.commit_to(&self.stack(stack), name, ko)
    }

    /// Commits to a stack of any build ID (for the "another kernel" test).
    pub fn commit_to(&self, stack: &StackId, name: &str, ko: &Path) -> ObjectId {
        let module = std::fs::read(ko).unwrap();
        let patch = NewPatch {
            name: name.into(),
            module,
            module_file: ko.file_name().unwrap().to_string_lossy().into_owned(),
            diff: None,
            functions: Vec::new(),
            build: BTreeMap::new(),
            source: PatchSource::Prebuilt,
            extra: Default::default(),
        };
        self.store
            .add_patch(
                stack,
                Some(&self.release),
                patch,
                &format!("add {name}"),
                &author(),
                &self.key,
            )
            .unwrap_or_else(|e| panic!("commit {name}: {}", kstack_store::error_chain(&e)))
            .commit
    }

    /// Commits the built module `ko` as patch `name` on top of `stack`, made by
    /// `author` (another time or validity window) and signed by `key`.
    pub fn commit_signed(
        &self,
        stack: &str,
        name: &str,
        ko: &Path,
        author: &Author,
        key: &SecretKey,
    ) -> ObjectId {
        let patch = prebuilt_patch(name, ko);
        self.store
            .add_patch(
                &self.stack(stack),
                Some(&self.release),
                patch,
                &format!("add {name}"),
                author,
                key,
            )
            .unwrap_or_else(|e| panic!("commit {name}: {}", kstack_store::error_chain(&e)))
            .commit
    }

    /// Adds `key`'s signature to the head of `stack` (an approval); returns the
    /// approved commit, now the head.
    pub fn approve(&self, stack: &str, key: &SecretKey) -> ObjectId {
        self.store
            .approve(&self.stack(stack), key, &author())
            .unwrap_or_else(|e| panic!("approve {stack}: {}", kstack_store::error_chain(&e)))
            .commit
    }

    /// Commits the built module `ko` as patch `name` on top of `stack`, with `cumulative`
    /// (a module built with `replace = true`) as the new commit's cumulative module.
    pub fn commit_with_cumulative(
        &self,
        stack: &str,
        name: &str,
        ko: &Path,
        cumulative: &Path,
    ) -> ObjectId {
        let stack = self.stack(stack);
        let patch = prebuilt_patch(name, ko);
        let prepared = self
            .store
            .prepare_add_patch(
                &stack,
                Some(&self.release),
                patch,
                &format!("add {name}"),
                &author(),
                &self.key,
            )
            .unwrap();
        let patches = self
            .store
            .check(prepared.commit, None)
            .unwrap()
            .patches
            .iter()
            .map(|p| p.manifest.module_name.clone())
            .collect();
        let amended = self
            .store
            .prepare_cumulative(
                &prepared,
                Cumulative::Module(NewCumulative {
                    patches,
                    module: std::fs::read(cumulative).unwrap(),
                    functions: Vec::new(),
                    build: BTreeMap::new(),
                    extra: BTreeMap::new(),
                }),
                &author(),
                &self.key,
            )
            .unwrap_or_else(|e| panic!("cumulative: {}", kstack_store::error_chain(&e)));
        self.store.publish(&amended).unwrap();
        amended.commit
    }

    /// A commit of `stack` without patch `name`.
    pub fn revert(&self, stack: &str, name: &str) -> ObjectId {
        self.store
            .revert_patch(
                &self.stack(stack),
                name,
                &format!("revert {name}"),
                &author(),
                &self.key,
            )
            .unwrap_or_else(|e| panic!("revert {name}: {}", kstack_store::error_chain(&e)))
            .commit
    }

    /// The public key line that the config trusts.
    pub fn trusted_key(&self) -> String {
        self.key.public().to_string()
    }

    /// A config for the guest: this store, stack `name` (pinned to `commit` if given).
    pub fn config(&self, stack: &str, commit: Option<ObjectId>, timeout: &str) -> String {
        let pin = commit.map_or_else(String::new, |c| format!("commit = \"{c}\"\n"));
        format!(
            "[store]\npath = \"{GUEST_STORE}\"\n\n[stack]\nname = \"{stack}\"\n{pin}\n\
             [trust]\nkeys = [\"{}\"]\n\n[sync]\ntransition_timeout = \"{timeout}\"\nstate_dir = \"{GUEST_STATE}\"\n",
            self.trusted_key()
        )
    }

    /// Copies the store into the VM and writes `configs` as `/etc/kstack/<name>.toml`.
    pub fn install(&self, vm: &mut Sandbox, configs: &[(&str, String)]) {
        vm.add_host_tree(GUEST_STORE, self.store.path()).unwrap();
        for (name, text) in configs {
            vm.add_file(
                &format!("{GUEST_CONFIG_DIR}/{name}.toml"),
                0o644,
                text.clone(),
            )
            .unwrap();
        }
    }
}

/// The fixtures' author: a fixed time (stable commit ids) and a century of validity.
pub fn author() -> Author {
    Author {
        name: "kstack tests".into(),
        email: "tests@kstack.invalid".into(),
        time: 1_700_000_000,
        // A fixed time keeps commit ids stable; a century keeps the commits valid.
        valid_for: std::time::Duration::from_secs(100 * 365 * 86_400),
    }
}

/// Replaces the blob at `path` in `commit`'s tree with `bytes` and writes a commit
/// with the same parent, message and signature file: what someone with write access
/// to the repository, but not the signing key, could do.
pub fn tamper(store: &Store, commit: ObjectId, path: &str, bytes: &[u8]) -> ObjectId {
    let repo = store.repo();
    let old = repo.find_commit(commit).unwrap();
    let blob = repo.write_blob(bytes).unwrap().detach();
    let mut editor = repo.edit_tree(old.tree_id().unwrap().detach()).unwrap();
    editor
        .upsert(path, gix::objs::tree::EntryKind::Blob, blob)
        .unwrap();
    let mut decoded = old.decode().unwrap().to_owned().unwrap();
    decoded.tree = editor.write().unwrap().detach();
    repo.write_object(&decoded).unwrap().detach()
}

/// Points `stack`'s ref at `commit`, bypassing the store.
pub fn force_ref(store: &Store, stack: &StackId, commit: ObjectId) {
    let file = store.path().join(stack.ref_name());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, format!("{commit}\n")).unwrap();
}

/// A prebuilt module `ko` as patch `name`, the way `commit --module` adds one.
fn prebuilt_patch(name: &str, ko: &Path) -> NewPatch {
    NewPatch {
        name: name.into(),
        module: std::fs::read(ko).unwrap(),
        module_file: ko.file_name().unwrap().to_string_lossy().into_owned(),
        diff: None,
        functions: Vec::new(),
        build: BTreeMap::new(),
        source: PatchSource::Prebuilt,
        extra: Default::default(),
    }
}
