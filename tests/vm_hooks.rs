//! Hooks and shadow state on the real kernel (examples/hooks/): a shadow variable
//! initialised by a pre-apply hook and freed by a post-revert hook, a pre-apply hook
//! that refuses, and two patches whose declared system states are incompatible.

use kstack_tests::{CliStore, kstack_cli, run_ok, sandbox, sections, workspace_root};

fn hooks_dir() -> std::path::PathBuf {
    workspace_root().join("examples/hooks")
}

#[test]
fn shadow_variable_and_refusing_hook() {
    let store = CliStore::new();
    let oom = store.commit_diff("hooks", &hooks_dir().join("oom-score-reads.diff"));
    let first = oom["commit"].as_str().unwrap().to_owned();
    store.commit_diff("hooks", &hooks_dir().join("refuse-on-marked-host.diff"));
    // The hook file travels with the patch, covered by the manifest.
    let show = run_ok(
        kstack_cli()
            .arg("--store")
            .arg(&store.store)
            .args(["show", "hooks"]),
    );
    assert_eq!(show.matches("hooks.c").count(), 2, "{show}");

    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[
            ("oom", store.config(Some("hooks"), Some(&first), "15s")),
            ("both", store.config(Some("hooks"), None, "15s")),
            ("none", store.config(None, None, "15s")),
        ],
    );
    let run = vm
        .run(
            r#"
export KSTACK_STATE_DIR=/var/lib/kstack
echo "== apply"; kstack --config /etc/kstack/oom.toml sync 2>&1; echo "rc=$?"
echo "== reads"; cat /proc/1/oom_score; cat /proc/1/oom_score
echo "== log1"; dmesg | grep oom-reads
echo "== revert"; kstack --config /etc/kstack/none.toml sync 2>&1; echo "rc=$?"
echo "== unpatched"; cat /proc/1/oom_score
echo "== reapply"; kstack --config /etc/kstack/oom.toml sync 2>&1; echo "rc=$?"
echo "== reads2"; cat /proc/1/oom_score
echo "== log2"; dmesg | grep oom-reads
hostname kstack-refuse
echo "== refused"; kstack --config /etc/kstack/both.toml sync 2>&1; echo "rc=$?"
echo "== gens1"; kstack --config /etc/kstack/both.toml generations
echo "== view1"; cat /proc/uptime; ls /sys/kernel/livepatch | wc -w
hostname kstack-ok
echo "== accepted"; kstack --config /etc/kstack/both.toml sync 2>&1; echo "rc=$?"
echo "== view2"; cat /proc/uptime; ls /sys/kernel/livepatch | wc -w
"#,
        )
        .unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    assert!(s["apply"].contains("rc=0"), "{}", s["apply"]);
    let reads: Vec<&str> = s["reads"]
        .lines()
        .filter(|l| l.starts_with("reads:"))
        .collect();
    assert_eq!(reads, ["reads: 1", "reads: 2"], "{}", s["reads"]);
    assert!(s["log1"].contains(" 0 stale counters"), "{}", s["log1"]);
    assert!(s["revert"].contains("rc=0"), "{}", s["revert"]);
    assert!(!s["unpatched"].contains("reads:"), "{}", s["unpatched"]);
    // The post-revert hook freed every counter: a new application finds none left.
    assert!(s["log2"].contains("counters freed"), "{}", s["log2"]);
    assert_eq!(
        s["log2"].matches(" 0 stale counters").count(),
        2,
        "{}",
        s["log2"]
    );
    assert!(s["reads2"].contains("reads: 1"), "{}", s["reads2"]);

    // The refusing hook: a failed step with the hook's own message, host unchanged.
    let refused = &s["refused"];
    assert!(refused.contains("rc=1"), "{refused}");
    assert!(
        refused.contains("refused: host kstack-refuse is marked kstack-refuse"),
        "{refused}"
    );
    assert!(refused.contains("previous generation"), "{refused}");
    assert!(
        !s["view1"].contains("uptime: live-patched"),
        "{}",
        s["view1"]
    );
    assert_eq!(s["view1"].lines().last(), Some("1"), "{}", s["view1"]);
    let current: Vec<&str> = s["gens1"].lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(current.len(), 1, "{}", s["gens1"]);
    assert!(current[0].starts_with("*   3"), "{}", s["gens1"]);
    assert!(s["accepted"].contains("rc=0"), "{}", s["accepted"]);
    assert!(
        s["view2"].contains("uptime: live-patched"),
        "{}",
        s["view2"]
    );
}

#[test]
fn incompatible_states_are_refused_by_the_kernel() {
    let store = CliStore::new();
    store.commit_diff("states", &hooks_dir().join("state-v2.diff"));
    store.commit_diff("states", &hooks_dir().join("state-v1.diff"));
    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[("states", store.config(Some("states"), None, "15s"))],
    );
    let run = vm
        .run(
            r#"
export KSTACK_STATE_DIR=/var/lib/kstack
echo "== sync"; kstack --config /etc/kstack/states.toml sync 2>&1; echo "rc=$?"
echo "== after"; cat /proc/cmdline; ls /sys/kernel/livepatch | wc -w
"#,
        )
        .unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    let sync = &s["sync"];
    assert!(sync.contains("rc=1"), "{sync}");
    // The kernel's own verdict, carried into kstack's error.
    assert!(sync.contains("not compatible"), "{sync}");
    assert!(sync.contains("undone"), "{sync}");
    assert!(!s["after"].contains("state="), "{}", s["after"]);
    assert_eq!(s["after"].lines().last(), Some("0"), "{}", s["after"]);
}
