//! End-to-end scenarios that run on every kernel line: each test binary that
//! wants one calls it, on the kernel [`crate::kernel`] chooses (`vm_build` and
//! `vm_hooks` on the default kernel or `KSTACK_TEST_KERNEL`, `vm_line_612` on
//! Debian's 6.12 cloud kernel).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{CliStore, kernel, kstack_cli, run_ok, sandbox, sections};

/// (relative path, mtime, length) of every generated file of the prepared tree and
/// every file the examples touch: what a build could write through a hard link.
fn snapshot(tree: &Path, extra: &[String]) -> Vec<(String, SystemTime, u64)> {
    let list = std::fs::read_to_string(tree.join(kstack_engine::builder::assets::GENERATED_LIST))
        .expect("the prepared tree lists its generated files");
    list.lines()
        .map(str::to_owned)
        .chain(extra.iter().cloned())
        .map(|rel| {
            let meta = std::fs::metadata(tree.join(&rel)).expect("a file of the tree");
            let modified = meta.modified().expect("mtime");
            (rel, modified, meta.len())
        })
        .collect()
}

/// The check line of an example patch (`<name>.check`, the line's own where it has
/// one, else the one beside the 6.1 version).
fn check_of(patch: &Path) -> PathBuf {
    let name = patch.with_extension("check");
    let name = name.file_name().expect("a patch file has a name");
    crate::example_for_line("patches", &name.to_string_lossy())
}

/// Every example patch of `examples/patches/` (the kernel line's version) is built
/// from its diff with `kstack commit`, stacked, synced in the VM (run-pre proves
/// every replaced function first), checked with its own check line, and reverted
/// (the checks then fail). Building never modifies the shared prepared tree.
pub fn example_patches_build_apply_check_and_revert() {
    example_patches_in(|_| {}, "");
}

/// [`example_patches_build_apply_check_and_revert`] in a VM that `options` sets up
/// (a CPU model, kernel arguments), with `prelude` run in it first (its output is
/// the `prelude` section of the returned sections).
pub fn example_patches_in(
    options: impl FnOnce(&mut kstack_engine::sandbox::SandboxOptions),
    prelude: &str,
) -> std::collections::BTreeMap<String, String> {
    let patches = crate::example_patches();
    assert!(patches.len() >= 4, "{patches:?}");

    let tree = kernel()
        .source()
        .expect("run `cargo xtask setup`: no prepared source");
    let touched: Vec<String> = patches
        .iter()
        .flat_map(|p| kstack_engine::builder::tree::changed_files(&std::fs::read(p).unwrap()))
        .collect();
    let before = snapshot(&tree, &touched);

    let store = CliStore::new();
    let mut checks = Vec::new();
    for patch in &patches {
        let report = store.commit_diff("examples", patch);
        let functions = report["patch"]["functions"].as_array().unwrap();
        assert!(!functions.is_empty(), "{report}");
        let check = std::fs::read_to_string(check_of(patch)).unwrap();
        let name = report["patch"]["name"].as_str().unwrap().to_owned();
        checks.push((name, check.trim().to_owned()));
    }
    assert_eq!(
        before,
        snapshot(&tree, &touched),
        "building changed the shared tree"
    );

    let mut vm = crate::sandbox_with(options);
    store.install(
        &mut vm,
        &[
            ("examples", store.config(Some("examples"), None, "15s")),
            ("none", store.config(None, None, "15s")),
        ],
    );
    let prelude = if prelude.is_empty() {
        String::new()
    } else {
        format!("echo '== prelude'\n{prelude}\n")
    };
    let script = sync_check_revert_script(&prelude, "examples", &checks);
    let run = vm.run(&script).unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    // Run-pre matching proved every replaced function before anything was loaded.
    assert!(
        s["sync"].contains(&format!(
            "run-pre: {} replaced function(s) matched the running code",
            checks.len()
        )),
        "{}",
        s["sync"]
    );
    assert_checks_held_then_gone(&run, &checks);
    s.into_iter().collect()
}

/// The guest script that syncs to `/etc/kstack/<config>.toml`, runs each check while
/// the patches are applied (`== on NAME`: yes or no), syncs to `none.toml` and runs
/// each check again (`== off NAME`). Each check is a shell function run in a
/// subshell, its output discarded: `exit` or `set -e` in one cannot stop the script.
/// `prelude` runs first.
pub fn sync_check_revert_script(
    prelude: &str,
    config: &str,
    checks: &[(String, String)],
) -> String {
    let mut script = format!(
        "export KSTACK_STATE_DIR=/var/lib/kstack\n{prelude}\
         echo '== sync'; kstack --config /etc/kstack/{config}.toml sync 2>&1; echo \"rc=$?\"\n"
    );
    for (i, (_, check)) in checks.iter().enumerate() {
        script.push_str(&format!("check_{i}() {{\n{check}\n}}\n"));
    }
    let run_checks = |script: &mut String, when: &str| {
        for (i, (name, _)) in checks.iter().enumerate() {
            script.push_str(&format!(
                "echo '== {when} {name}'; ( check_{i} ) >/dev/null 2>&1 && echo yes || echo no\n"
            ));
        }
    };
    run_checks(&mut script, "on");
    script.push_str(
        "echo '== revert'; kstack --config /etc/kstack/none.toml sync 2>&1; echo \"rc=$?\"\n\
         echo '== after'; ls /sys/kernel/livepatch | wc -w\n",
    );
    run_checks(&mut script, "off");
    script
}

/// What [`sync_check_revert_script`] must show: the sync and the revert succeeded,
/// every check held while applied and none after, nothing is left loaded, and the
/// kernel never oopsed.
pub fn assert_checks_held_then_gone(
    run: &kstack_engine::sandbox::GuestRun,
    checks: &[(String, String)],
) {
    let s = sections(&run.stdout);
    let ctx = || {
        format!(
            "{}\n--- stderr\n{}\n--- console\n{}",
            run.stdout, run.stderr, run.console
        )
    };
    assert!(s["sync"].contains("rc=0"), "{}", ctx());
    for (name, _) in checks {
        assert_eq!(
            s[&format!("on {name}")].trim(),
            "yes",
            "{name} not active\n{}",
            ctx()
        );
        assert_eq!(
            s[&format!("off {name}")].trim(),
            "no",
            "{name} still active\n{}",
            ctx()
        );
    }
    assert!(s["revert"].contains("rc=0"), "{}", ctx());
    assert_eq!(s["after"].trim(), "0", "{}", ctx());
    assert!(!run.console.contains("Oops"), "{}", ctx());
}

/// examples/hooks/: a shadow variable initialised by a pre-apply hook and freed by a
/// post-revert hook, applied, reverted, applied again; then a pre-apply hook that
/// refuses on a marked host (the host stays on its generation) and accepts on
/// another.
pub fn hooks_shadow_variable_and_refusing_hook() {
    let store = CliStore::new();
    let oom = store.commit_diff(
        "hooks",
        &crate::example_for_line("hooks", "oom-score-reads.diff"),
    );
    let first = oom["commit"].as_str().unwrap().to_owned();
    store.commit_diff(
        "hooks",
        &crate::example_for_line("hooks", "refuse-on-marked-host.diff"),
    );
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
