//! `pull` from a local bare repository (path and file://) and from `git daemon` on
//! loopback; a pull of anything that does not verify leaves local refs unchanged.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failure is a test failure

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kstack_store::keys::SecretKey;
use kstack_store::pull::{PullError, PullOutcome};
use kstack_store::store::{QUARANTINE_PREFIX, REF_PREFIX, StackId, Store};

/// A local store and a remote one, sharing the trust policy.
fn pair() -> (Env, Env) {
    (Env::new(), Env::new())
}

fn refs(store: &Store) -> Vec<(String, gix::ObjectId)> {
    let mut all = store.refs_under(REF_PREFIX).unwrap();
    all.extend(store.refs_under(QUARANTINE_PREFIX).unwrap());
    all
}

#[test]
fn pull_from_a_path_then_fast_forward() {
    let (local, remote) = pair();
    remote.add("a", &["f1"]);
    let head = remote.add("b", &["f2"]);
    let url = remote.path().display().to_string();

    let report = local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(report.stacks.len(), 1);
    assert_eq!(report.stacks[0].outcome, PullOutcome::Updated);
    assert_eq!(report.stacks[0].old, None);
    assert_eq!(local.head(), head);
    local
        .store
        .verify(head, Some(&local.stack), &local.policy)
        .unwrap();
    assert!(
        local
            .store
            .refs_under(QUARANTINE_PREFIX)
            .unwrap()
            .is_empty()
    );

    let newer = remote.add("c", &["f3"]);
    let report = local
        .store
        .pull(&format!("file://{url}"), &local.policy)
        .unwrap();
    assert_eq!(report.stacks[0].outcome, PullOutcome::Updated);
    assert_eq!(report.stacks[0].old, Some(head));
    assert_eq!(local.head(), newer);

    let report = local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(report.stacks[0].outcome, PullOutcome::UpToDate);

    // Local work on top stays.
    let mine = local.add("d", &["f4"]);
    let report = local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(report.stacks[0].outcome, PullOutcome::LocalAhead);
    assert_eq!(local.head(), mine);
    {
        require_git();
        git(&local.path(), &["fsck", "--strict", "--no-progress"]);
    }
}

#[test]
fn tampered_stack_is_refused_and_local_refs_stay() {
    let (local, remote) = pair();
    let head = remote.add("foo", &["f1"]);
    let url = remote.path().display().to_string();
    local.store.pull(&url, &local.policy).unwrap();
    let before = refs(&local.store);

    let next = remote.add("bar", &["f2"]);
    let path = "patches/0002-bar/module.ko";
    let mut bytes = read_blob(&remote.store, next, path);
    bytes[64] ^= 0x04;
    let tampered = rewrite_blob(&remote.store, next, path, &bytes);
    force_ref(&remote, tampered);

    let err = local.store.pull(&url, &local.policy).unwrap_err();
    assert!(matches!(err, PullError::Rejected { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("local refs are unchanged"), "{text}");
    assert!(
        text.contains(&format!("{BUILD_ID}/prod: commit ")),
        "{text}"
    );
    assert!(
        text.contains("patches/0002-bar/module.ko: SHA-256 mismatch"),
        "{text}"
    );
    assert_eq!(refs(&local.store), before);
    assert_eq!(local.head(), head);
}

#[test]
fn untrusted_signer_is_refused() {
    let (local, remote) = pair();
    let stranger = SecretKey::from_seed(&[7; 32]);
    remote
        .store
        .add_patch(
            &remote.stack,
            None,
            patch("foo", &["f"]),
            "m",
            &author(),
            &stranger,
        )
        .unwrap();
    let err = local
        .store
        .pull(&remote.path().display().to_string(), &local.policy)
        .unwrap_err();
    assert!(
        err.to_string().contains("which is not a trusted key"),
        "{err}"
    );
    assert!(refs(&local.store).is_empty());
}

#[test]
fn one_bad_stack_refuses_the_whole_pull() {
    let (local, remote) = pair();
    remote.add("good", &["f"]);
    let other = StackId::new(BUILD_ID.parse().unwrap(), "staging").unwrap();
    let stranger = SecretKey::from_seed(&[7; 32]);
    remote
        .store
        .add_patch(&other, None, patch("x", &["f"]), "m", &author(), &stranger)
        .unwrap();
    let err = local
        .store
        .pull(&remote.path().display().to_string(), &local.policy)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("{BUILD_ID}/staging: commit")),
        "{text}"
    );
    assert!(!text.contains("/prod:"), "{text}");
    assert!(
        refs(&local.store).is_empty(),
        "the good stack did not move either"
    );
}

#[test]
fn a_rewound_or_diverged_remote_is_refused() {
    let (local, remote) = pair();
    remote.add("a", &["f1"]);
    let url = remote.path().display().to_string();
    local.store.pull(&url, &local.policy).unwrap();
    // Both sides add a different patch on the same base.
    let mine = local.add("mine", &["f2"]);
    remote.add("theirs", &["f3"]);
    let err = local.store.pull(&url, &local.policy).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not descend from the local head"),
        "{err}"
    );
    assert_eq!(local.head(), mine);
}

#[test]
fn a_signed_head_under_another_stack_name_is_refused() {
    let (local, remote) = pair();
    let head = remote.add("a", &["f1"]);
    // Copy prod's signed head to a ref that claims another stack.
    let file = remote
        .path()
        .join(format!("refs/kstack/{BUILD_ID}/staging"));
    std::fs::write(file, format!("{head}\n")).unwrap();
    let err = local
        .store
        .pull(&remote.path().display().to_string(), &local.policy)
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "belongs to stack {BUILD_ID}/prod, not {BUILD_ID}/staging"
        )),
        "{err}"
    );
    assert!(refs(&local.store).is_empty());
}

#[test]
fn bad_sources() {
    let local = Env::new();
    let err = local
        .store
        .pull("/nonexistent/store", &local.policy)
        .unwrap_err();
    assert_eq!(err.to_string(), "cannot open /nonexistent/store as a store");
    let err = local
        .store
        .pull("https://example.invalid/store", &local.policy)
        .unwrap_err();
    assert!(err.to_string().contains("unsupported URL"), "{err}");
}

/// `git daemon` serving a directory on a free loopback port; killed on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &std::path::Path) -> Option<Daemon> {
        require_git();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut daemon = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || daemon.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn pull_over_git_daemon() {
    let (local, remote) = pair();
    let base = remote.path().parent().unwrap().to_owned();
    let daemon = Daemon::start(&base).expect("git daemon did not start (run `cargo xtask setup`)");
    remote.add("a", &["f1"]);
    let head = remote.add("b", &["f2"]);
    let url = format!("git://127.0.0.1:{}/store", daemon.port);

    let report = local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(report.stacks[0].outcome, PullOutcome::Updated);
    assert_eq!(local.head(), head);
    local
        .store
        .verify(head, Some(&local.stack), &local.policy)
        .unwrap();
    assert!(
        local
            .store
            .refs_under(QUARANTINE_PREFIX)
            .unwrap()
            .is_empty()
    );

    // A tampered head is fetched, refused, and its quarantine ref removed.
    let next = remote.add("c", &["f3"]);
    let mut bytes = read_blob(&remote.store, next, "patches/0003-c/module.ko");
    bytes[10] ^= 1;
    let tampered = rewrite_blob(&remote.store, next, "patches/0003-c/module.ko", &bytes);
    force_ref(&remote, tampered);
    let before = refs(&local.store);
    let err = local.store.pull(&url, &local.policy).unwrap_err();
    assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
    assert_eq!(refs(&local.store), before);
    assert_eq!(local.head(), head);

    // Fixed upstream: the pull goes through.
    force_ref(&remote, next);
    local.store.pull(&url, &local.policy).unwrap();
    assert_eq!(local.head(), next);
}
