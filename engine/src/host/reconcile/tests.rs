//! What the config's stack resolves to, before anything reaches the kernel: the
//! descent rule, validity windows and a commit of another stack, on a store of
//! synthetic modules and a state directory written by hand (no kernel needed).

use std::time::Duration;

use kstack_fixtures::{FakeModule, RELEASE};
use kstack_store::commit::NewPatch;
use kstack_store::keys::{SecretKey, TrustPolicy};
use kstack_store::model::PatchSource;
use kstack_store::store::{Author, ObjectId, StackId, Store};

use super::{Host, SyncError};
use crate::host::config::{Config, ExpiredPolicy, StackConfig};
use crate::host::kernel::KernelIdentity;
use crate::host::kernel::fake::FakeLivepatch;
use crate::host::state::{Generation, State, StateDir};

const BUILD_ID: &str = "3b43fad5034874490492495d552c0af6a5fab235";

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    state: StateDir,
    key: SecretKey,
    config: Config,
}

fn author(time: i64, valid_for: Duration) -> Author {
    Author {
        name: "t".into(),
        email: "t@kstack.invalid".into(),
        time,
        valid_for,
    }
}

fn now() -> i64 {
    kstack_store::validity::Timestamp::now().secs()
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(&dir.path().join("store")).unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let config = Config {
            stack: Some(StackConfig {
                name: "prod".into(),
                commit: None,
            }),
            ..Config::default()
        };
        Env {
            _dir: dir,
            store,
            state,
            key: SecretKey::from_seed(&[5; 32]),
            config,
        }
    }

    fn stack(&self, name: &str) -> StackId {
        StackId::new(BUILD_ID.parse().unwrap(), name).unwrap()
    }

    fn add_as(&self, stack: &str, name: &str, author: &Author) -> ObjectId {
        let patch = NewPatch {
            name: name.into(),
            module: FakeModule::livepatch(&format!("kstack_{name}"), &["f"]).build(),
            module_file: format!("{name}.ko"),
            diff: None,
            functions: Vec::new(),
            build: Default::default(),
            source: PatchSource::Prebuilt,
            extra: Default::default(),
        };
        self.store
            .add_patch(&self.stack(stack), None, patch, name, author, &self.key)
            .unwrap()
            .commit
    }

    fn add(&self, name: &str) -> ObjectId {
        self.add_as("prod", name, &author(now(), Duration::from_secs(86_400)))
    }

    fn host(&self) -> Host<'_> {
        Host {
            config: &self.config,
            store: &self.store,
            state: self.state.clone(),
            trust: TrustPolicy {
                keys: vec![self.key.public()],
                ..TrustPolicy::default()
            },
            livepatch: Box::<FakeLivepatch>::default(),
            allow_downgrade: false,
        }
    }

    /// Records that a sync made `commit` current (as generation `number`).
    fn ran(&self, number: u64, commit: ObjectId, digest: bool) {
        let mut state = self.state.load().unwrap();
        state.generations.push(Generation {
            number,
            commit: commit.to_string(),
            stack: "prod".into(),
            build_id: BUILD_ID.into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            modules: Vec::new(),
            stack_sha256: digest.then(|| self.store.stack_digest(commit).unwrap().to_hex()),
        });
        state.current = Some(number);
        self.state.save(&state).unwrap();
    }

    fn point(&self, commit: ObjectId) {
        let file = self.store.path().join(self.stack("prod").ref_name());
        std::fs::write(file, format!("{commit}\n")).unwrap();
    }
}

fn identity() -> KernelIdentity {
    KernelIdentity {
        build_id: BUILD_ID.parse().unwrap(),
        release: RELEASE.into(),
    }
}

#[test]
fn a_head_that_does_not_descend_from_what_the_host_ran_is_refused() {
    let env = Env::new();
    let a = env.add("a");
    let ab = env.add("b");
    let head = env
        .store
        .revert_patch(
            &env.stack("prod"),
            "b",
            "revert b",
            &author(now(), Duration::from_secs(86_400)),
            &env.key,
        )
        .unwrap()
        .commit;
    // No generation yet: anything the policy accepts.
    env.host().desired(&identity()).unwrap();
    // The host runs the head; the ref is moved back to the commit that still has b.
    for digest in [true, false] {
        env.state.save(&State::default()).unwrap();
        env.ran(1, head, digest);
        env.point(ab);
        let err = env.host().desired(&identity()).unwrap_err();
        let SyncError::Downgrade { declared, base, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(declared, &ab.to_hex_with_len(12).to_string());
        assert_eq!(base, &head.to_hex_with_len(12).to_string());
    }
    // Forward is fine: the head, or a descendant of what runs.
    env.point(head);
    env.host().desired(&identity()).unwrap();
    env.state.save(&State::default()).unwrap();
    env.ran(1, a, true);
    env.host().desired(&identity()).unwrap();

    // --allow-downgrade: a warning.
    env.ran(2, head, true);
    env.point(ab);
    let mut host = env.host();
    host.allow_downgrade = true;
    let desired = host.desired(&identity()).unwrap();
    assert!(
        desired.warnings[0].contains("--allow-downgrade"),
        "{:?}",
        desired.warnings
    );
}

#[test]
fn after_a_rollback_the_head_must_still_descend_from_the_newest_generation() {
    let env = Env::new();
    let a = env.add("a");
    let ab = env.add("b");
    let head = env.add("c");
    env.ran(1, a, true);
    env.ran(2, head, true);
    // Rolled back to generation 1; someone points the ref at [a, b].
    let mut state = env.state.load().unwrap();
    state.current = Some(1);
    env.state.save(&state).unwrap();
    env.point(ab);
    let err = env.host().desired(&identity()).unwrap_err();
    assert!(
        err.to_string().contains("the newest generation synced, 2"),
        "{err}"
    );
    env.point(head);
    env.host().desired(&identity()).unwrap();
}

#[test]
fn a_pin_goes_back_on_purpose_and_other_stacks_do_not_count() {
    let mut env = Env::new();
    let a = env.add("a");
    let head = env.add("b");
    env.ran(1, head, true);
    env.config.stack = Some(StackConfig {
        name: "prod".into(),
        commit: Some(a.to_string()),
    });
    env.host().desired(&identity()).unwrap();
    // Another stack: its own line.
    env.add_as("canary", "x", &author(now(), Duration::from_secs(86_400)));
    env.config.stack = Some(StackConfig {
        name: "canary".into(),
        commit: None,
    });
    env.host().desired(&identity()).unwrap();
}

#[test]
fn an_expired_head_is_refused_or_warned_and_a_pinned_one_warned() {
    let mut env = Env::new();
    let old = env.add_as(
        "prod",
        "a",
        &author(now() - 10 * 86_400, Duration::from_secs(86_400)),
    );
    let err = env.host().desired(&identity()).unwrap_err();
    assert!(matches!(err, SyncError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired at"), "{err}");
    env.config.trust.expired = ExpiredPolicy::Warn;
    let desired = env.host().desired(&identity()).unwrap();
    assert!(
        desired.warnings[0].contains("expired at"),
        "{:?}",
        desired.warnings
    );
    env.config.trust.expired = ExpiredPolicy::Refuse;
    env.config.stack = Some(StackConfig {
        name: "prod".into(),
        commit: Some(old.to_string()),
    });
    let desired = env.host().desired(&identity()).unwrap();
    assert!(
        desired.warnings[0].contains("pinned commit"),
        "{:?}",
        desired.warnings
    );
}

#[test]
fn a_ref_that_carries_another_stacks_commit_is_refused() {
    let env = Env::new();
    env.add("a");
    let canary = env.add_as("canary", "x", &author(now(), Duration::from_secs(86_400)));
    env.point(canary);
    let err = env.host().desired(&identity()).unwrap_err();
    assert!(matches!(err, SyncError::WrongStack { .. }), "{err}");
}
