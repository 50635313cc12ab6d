//! `sync` (also `--boot`, as the systemd unit runs it) and `rollback` refuse, like
//! sshd's StrictModes, a config, store, state directory or key file that a user other
//! than root could change, naming the path (exit 65), before anything else. Past
//! these checks, this host has no livepatch support: exit 69 means "checks passed".

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failure is a test failure

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Env, set_mode, stderr};

fn code_and_stderr(env: &Env, args: &[&str]) -> (i32, String) {
    let out = env
        .command(args)
        // No livepatch here: a sync that passes the checks stops with exit 69.
        .env("KSTACK_LIVEPATCH_SYSFS", env.path("no-livepatch"))
        .output()
        .unwrap();
    (out.status.code().unwrap(), stderr(&out))
}

fn give_away(path: &Path) {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(1000)), None).unwrap();
}

#[test]
fn writable_config_store_state_and_key_are_refused_by_sync_and_rollback() {
    let env = Env::new();
    let (code, err) = code_and_stderr(&env, &["sync"]);
    assert_eq!(code, 69, "{err}");

    // The config, world-writable.
    let config = env.path("kstack.toml");
    set_mode(&config, 0o666);
    for args in [&["sync"][..], &["sync", "--boot"], &["rollback"]] {
        let (code, err) = code_and_stderr(&env, args);
        assert_eq!(code, 65, "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "config {} is writable by every user",
                config.display()
            )),
            "{err}"
        );
        assert!(err.contains("chmod go-w"), "{err}");
    }
    set_mode(&config, 0o644);

    // A ref of the store, group-writable by a group other than root's.
    let refs = env.path("store/refs");
    set_mode(&refs, 0o775);
    nix::unistd::chown(&refs, None, Some(nix::unistd::Gid::from_raw(1000))).unwrap();
    let (code, err) = code_and_stderr(&env, &["sync"]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("store/refs, in store"), "{err}");
    assert!(err.contains("its group"), "{err}");
    set_mode(&refs, 0o755);
    nix::unistd::chown(&refs, None, Some(nix::unistd::Gid::from_raw(0))).unwrap();

    // The state directory (the first sync made it), owned by another user.
    let state = env.path("state");
    give_away(&state);
    let (code, err) = code_and_stderr(&env, &["rollback"]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains(&format!("state directory {}", state.display())),
        "{err}"
    );
    assert!(err.contains("owner uid 1000"), "{err}");
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();

    // The signing key the config names, owned by another user.
    let key = env.path("signing.key");
    give_away(&key);
    let (code, err) = code_and_stderr(&env, &["sync"]);
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains(&format!("key file {}", key.display())),
        "{err}"
    );
    nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();

    let (code, err) = code_and_stderr(&env, &["sync"]);
    assert_eq!(code, 69, "{err}");
}

#[test]
fn sync_creates_the_state_directory_0700_and_the_lock_0600() {
    let env = Env::new();
    let (code, err) = code_and_stderr(&env, &["sync"]);
    assert_eq!(code, 69, "{err}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.path("state")), 0o700);
    assert_eq!(mode(&env.path("state/lock")), 0o600);
}
