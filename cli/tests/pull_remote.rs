//! `kstack pull` with no URL, as the fleet service runs it: the stacks come from the
//! config's `[store] remote` (here a local bare store, as a Git server's would be).
//! tests/vm_sync.rs runs the whole service, pull then sync, in the VM.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, stderr};

/// Adds `[store] remote = REMOTE` to the env's config.
fn set_remote(env: &Env, remote: &str) {
    let config = env.path("kstack.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("[store]\nremote = {remote:?}\n\n{text}")).unwrap();
}

#[test]
fn pull_without_a_url_fetches_from_the_configured_remote() {
    let upstream = Env::new();
    upstream.commit("a", &["f1"]);
    let host = Env::new();
    let url = format!("file://{}", upstream.path("store").display());
    set_remote(&host, &url);

    let out = host.ok(&["pull"]);
    assert!(out.starts_with("prod (3b43fad50348): new at "), "{out}");
    assert_eq!(
        host.ok(&["log", "--oneline"]),
        upstream.ok(&["log", "--oneline"])
    );
    upstream.commit("b", &["f2"]);
    let out = host.ok(&["pull"]);
    assert!(out.starts_with("prod (3b43fad50348): updated "), "{out}");
    let (code, json) = host.json(&["pull"]);
    assert_eq!(code, 0);
    assert!(
        json.contains(&format!("\"url\": {:?}", host.redact(&url))),
        "{json}"
    );
}

#[test]
fn pull_without_a_url_or_a_remote_says_where_to_set_one() {
    let host = Env::new();
    let out = host.run(&["pull"]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("pull from where?"), "{err}");
    assert!(err.contains("set [store] remote in the config"), "{err}");
}

#[test]
fn a_remote_that_is_gone_fails_the_pull_and_changes_nothing() {
    let host = Env::new();
    host.commit("a", &["f1"]);
    let gone = host.path("gone.git");
    set_remote(&host, &format!("file://{}", gone.display()));
    let before = host.ok(&["log", "--oneline"]);
    let out = host.run(&["pull"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(&gone.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.ok(&["log", "--oneline"]), before);
}
