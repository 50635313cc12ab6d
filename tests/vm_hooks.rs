//! Hooks and shadow state on the real kernel (examples/hooks/): a shadow variable
//! initialised by a pre-apply hook and freed by a post-revert hook, a pre-apply hook
//! that refuses, and two patches whose declared system states are incompatible.

use kstack_tests::{CliStore, sandbox, sections, workspace_root};

fn hooks_dir() -> std::path::PathBuf {
    workspace_root().join("examples/hooks")
}

#[test]
fn shadow_variable_and_refusing_hook() {
    kstack_tests::scenarios::hooks_shadow_variable_and_refusing_hook();
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
