//! `kstack status` for monitoring, on a host where sync cannot run (no livepatch:
//! the build machine's kernel, or `KSTACK_LIVEPATCH_SYSFS` pointed away): the failed
//! sync is recorded, and the Prometheus text and `--json` report it.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, stderr, stdout};

fn no_livepatch(env: &Env, args: &[&str]) -> std::process::Output {
    env.command(args)
        .env("KSTACK_LIVEPATCH_SYSFS", env.path("no-livepatch"))
        .output()
        .unwrap()
}

#[test]
fn a_failed_sync_is_recorded_and_exported_for_node_exporter() {
    let env = Env::new();
    let out = no_livepatch(&env, &["sync"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));

    let prom = env.path("textfile/kstack.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    let out = no_livepatch(
        &env,
        &[
            "status",
            "--format",
            "prometheus",
            "--textfile",
            prom.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let text = std::fs::read_to_string(&prom).unwrap();
    for line in [
        "kstack_livepatch_supported 0",
        "kstack_generation 0",
        "kstack_patches_applied 0",
        "kstack_last_sync_success{operation=\"sync\"} 0",
        "# TYPE kstack_last_sync_timestamp_seconds gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
    }
    // Every sample line is `name{labels} value` with a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample {line:?}"));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // No temporary file is left beside it.
    assert_eq!(
        std::fs::read_dir(prom.parent().unwrap()).unwrap().count(),
        1
    );

    let (code, json) = {
        let out = no_livepatch(&env, &["--json", "status"]);
        (out.status.code().unwrap(), stdout(&out))
    };
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let last = &v["last_sync"];
    assert_eq!(last["operation"], "sync");
    assert_eq!(last["ok"], false);
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("no livepatch support"),
        "{last}"
    );
    // --format json is --json.
    let out = no_livepatch(&env, &["status", "--format", "json"]);
    let w: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(w["last_sync"], v["last_sync"]);
    // --textfile needs a machine format.
    let out = no_livepatch(&env, &["status", "--textfile", "x.prom"]);
    assert_eq!(out.status.code(), Some(64));
}
