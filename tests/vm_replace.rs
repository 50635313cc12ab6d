//! Replace mode on the real kernel (docs/replace-mode.md): each generation is the
//! stack's cumulative module, built by `kstack commit` and `kstack revert` from the
//! example patches, loaded over whatever runs in one transition. Every check reads the
//! kernel's own view: the `/proc` files the patches change, `/sys/kernel/livepatch`
//! (one patch per generation) and `/proc/modules` (the replaced modules are gone).

use kstack_tests::{CliStore, example_patch, kstack_cli, run_ok, sandbox, sections};

/// Prints what the kernel runs: each example patch's check, the livepatches and the
/// kstack modules loaded.
const VIEW: &str = r#"export KSTACK_STATE_DIR=/var/lib/kstack
view() {
  echo "== $1"
  grep -q '^live-patched: proc-version-banner$' /proc/version && echo "on banner"
  dmesg -c >/dev/null; renice -n 5 -p 1 >/dev/null; dmesg | grep -q 'setpriority: .*\[1\] nice -\{0,1\}[0-9]* -> 5' && echo "on setpriority"
  renice -n -5 -p 1 >/dev/null  # busybox: -n adds to the nice value
  grep -q '^LivePatched: ' /proc/meminfo && echo "on meminfo"
  grep -q '^running: [0-9]*%$' /proc/loadavg && echo "on loadavg"
  echo "lp: $(ls /sys/kernel/livepatch | wc -w)"
  echo "mods: $(cut -d' ' -f1 /proc/modules | grep -c '^kstack_')"
}
"#;

/// The `on <patch>` lines of a view.
fn running(view: &str) -> Vec<&str> {
    view.lines().filter_map(|l| l.strip_prefix("on ")).collect()
}

/// A number line (`lp: N`) of a view.
fn count(view: &str, what: &str) -> usize {
    view.lines()
        .find_map(|l| l.strip_prefix(&format!("{what}: ")))
        .unwrap_or_else(|| panic!("no {what}: line in\n{view}"))
        .trim()
        .parse()
        .expect("a count")
}

/// The lines of a sync's report that name a module (`+`, `-`, `~`).
fn steps(report: &str) -> Vec<&str> {
    report
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("+ kstack_") || l.starts_with("- kstack_") || l.starts_with("~ kstack_")
        })
        .collect()
}

fn revert(store: &CliStore, stack: &str, patch: &str) -> serde_json::Value {
    let out = run_ok(
        kstack_cli()
            .arg("--store")
            .arg(&store.store)
            .args([
                "--json", "revert", patch, "-m", "drop it", "--stack", stack, "--key",
            ])
            .arg(&store.key),
    );
    serde_json::from_str(out.trim()).expect("revert --json prints a document")
}

fn stack_mode(config: String) -> String {
    config.replace("[sync]\n", "[sync]\nmode = \"stack\"\n")
}

#[test]
fn each_generation_is_one_transition() {
    let store = CliStore::new();
    let mut commits = Vec::new();
    for patch in [
        "0001-proc-version-banner.diff",
        "0002-setpriority-audit.diff",
        "0003-meminfo-sanity-check.diff",
        "0004-loadavg-running-percent.diff",
    ] {
        let report = store.commit_diff("prod", &example_patch(patch));
        let cumulative = &report["cumulative"];
        assert!(cumulative["module_name"].is_string(), "{report}");
        assert_eq!(
            cumulative["none_reason"],
            serde_json::Value::Null,
            "{report}"
        );
        commits.push(report["commit"].as_str().unwrap().to_owned());
    }
    // Dropping the 2nd patch builds a new cumulative module; the patches above it
    // keep their own modules (not rebuilt).
    let dropped = revert(&store, "prod", "setpriority-audit");
    assert_eq!(
        dropped["cumulative"]["patches"],
        serde_json::json!([
            "proc-version-banner",
            "meminfo-sanity-check",
            "loadavg-running-percent"
        ]),
        "{dropped}"
    );

    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[
            (
                "three",
                store.config(Some("prod"), Some(&commits[2]), "15s"),
            ),
            ("four", store.config(Some("prod"), Some(&commits[3]), "15s")),
            ("head", store.config(Some("prod"), None, "15s")),
            (
                "four-stack",
                stack_mode(store.config(Some("prod"), Some(&commits[3]), "15s")),
            ),
            ("none", store.config(None, None, "15s")),
        ],
    );
    let run = vm
        .run(&format!(
            r#"{VIEW}
view boot
echo "== plan-three"; kstack --config /etc/kstack/three.toml plan 2>&1; echo "rc=$?"
echo "== sync-three"; kstack --config /etc/kstack/three.toml sync 2>&1; echo "rc=$?"
view three
echo "== sync-four"; kstack --config /etc/kstack/four.toml sync 2>&1; echo "rc=$?"
view four
echo "== sync-head"; kstack --config /etc/kstack/head.toml sync 2>&1; echo "rc=$?"
view head
echo "== status"; kstack --config /etc/kstack/head.toml --json status
echo "== rollback"; kstack --config /etc/kstack/head.toml rollback 2>&1; echo "rc=$?"
view rolled-back
echo "== to-stack"; kstack --config /etc/kstack/four-stack.toml sync 2>&1; echo "rc=$?"
view stacked
echo "== to-replace"; kstack --config /etc/kstack/four.toml sync 2>&1; echo "rc=$?"
view replaced
echo "== again"; kstack --config /etc/kstack/four.toml sync 2>&1; echo "rc=$?"
echo "== to-none"; kstack --config /etc/kstack/none.toml sync 2>&1; echo "rc=$?"
view none
"#
        ))
        .unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    assert!(running(&s["boot"]).is_empty(), "{}", s["boot"]);

    // The plan names the mode, the cumulative module and what it holds.
    let plan = &s["plan-three"];
    assert!(
        plan.contains("rc=2") && plan.contains("mode replace"),
        "{plan}"
    );
    assert!(
        plan.contains("cumulative: proc-version-banner, setpriority-audit, meminfo-sanity-check"),
        "{plan}"
    );

    // From nothing: one load, one transition, one livepatch.
    let sync = &s["sync-three"];
    assert!(sync.contains("rc=0"), "{sync}");
    assert_eq!(steps(sync).len(), 1, "{sync}");
    assert!(steps(sync)[0].starts_with("~ kstack_"), "{sync}");
    assert!(
        sync.contains("run-pre: 3 replaced function(s) matched"),
        "{sync}"
    );
    assert_eq!(
        running(&s["three"]),
        ["banner", "setpriority", "meminfo"],
        "{}",
        s["three"]
    );
    assert_eq!(
        (count(&s["three"], "lp"), count(&s["three"], "mods")),
        (1, 1),
        "{}",
        s["three"]
    );

    // A 4th patch: the new module replaces the old one, which is unloaded.
    for (section, view, patches) in [
        (
            "sync-four",
            "four",
            vec!["banner", "setpriority", "meminfo", "loadavg"],
        ),
        // The 2nd patch dropped: the other three still patched.
        ("sync-head", "head", vec!["banner", "meminfo", "loadavg"]),
        // Rollback: the same single step back to the older generation's module.
        (
            "rollback",
            "rolled-back",
            vec!["banner", "setpriority", "meminfo", "loadavg"],
        ),
    ] {
        let sync = &s[section];
        assert!(sync.contains("rc=0"), "{sync}");
        let steps = steps(sync);
        assert_eq!(steps.len(), 2, "{sync}");
        assert!(steps[0].starts_with("~ kstack_"), "{sync}");
        assert!(steps[1].contains("replaced and unloaded"), "{sync}");
        assert_eq!(running(&s[view]), patches, "{}", s[view]);
        assert_eq!(
            (count(&s[view], "lp"), count(&s[view], "mods")),
            (1, 1),
            "{}",
            s[view]
        );
    }

    // Status shows the cumulative module and the patches inside it.
    let status: serde_json::Value =
        serde_json::from_str(s["status"].lines().next().expect("the status document")).unwrap();
    assert_eq!(status["mode"], "replace", "{status}");
    assert_eq!(status["drift"], serde_json::json!([]), "{status}");
    let applied = status["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 1, "{status}");
    assert_eq!(applied[0]["patch"], "cumulative", "{status}");
    assert_eq!(
        applied[0]["holds"],
        serde_json::json!([
            "proc-version-banner",
            "meminfo-sanity-check",
            "loadavg-running-percent"
        ]),
        "{status}"
    );

    // Stack mode: the cumulative module comes off, the four patches go on one by one.
    let to_stack = &s["to-stack"];
    assert!(to_stack.contains("rc=0"), "{to_stack}");
    assert_eq!(steps(to_stack).len(), 5, "{to_stack}");
    assert_eq!(running(&s["stacked"]).len(), 4, "{}", s["stacked"]);
    assert_eq!(
        (count(&s["stacked"], "lp"), count(&s["stacked"], "mods")),
        (4, 4)
    );
    // And back: one transition replaces the four.
    let to_replace = &s["to-replace"];
    assert!(to_replace.contains("rc=0"), "{to_replace}");
    assert_eq!(steps(to_replace).len(), 5, "{to_replace}");
    assert_eq!(
        steps(to_replace)
            .iter()
            .filter(|l| l.starts_with('~'))
            .count(),
        1,
        "{to_replace}"
    );
    assert_eq!(running(&s["replaced"]).len(), 4, "{}", s["replaced"]);
    assert_eq!(
        (count(&s["replaced"], "lp"), count(&s["replaced"], "mods")),
        (1, 1)
    );
    assert!(s["again"].contains("nothing to do"), "{}", s["again"]);

    // To no patches: the cumulative module is reverted like any patch.
    assert!(s["to-none"].contains("rc=0"), "{}", s["to-none"]);
    assert_eq!(steps(&s["to-none"]).len(), 1, "{}", s["to-none"]);
    assert!(running(&s["none"]).is_empty(), "{}", s["none"]);
    assert_eq!((count(&s["none"], "lp"), count(&s["none"], "mods")), (0, 0));
    assert!(!run.console.contains("Oops"), "{}", run.console);
}

/// The shadow-counter example (`examples/hooks/oom-score-reads`) in replace mode: its
/// pre-apply hook runs when it is new in a generation, its post-revert hook when a
/// generation drops it (from its old module, which the kernel never calls again),
/// and its per-task counters carry over from one cumulative module to the next.
#[test]
fn hooks_run_when_a_patch_comes_or_goes_and_shadow_state_carries_over() {
    let hooks = kstack_tests::workspace_root().join("examples/hooks");
    let store = CliStore::new();
    let one = store.commit_diff("hooks", &hooks.join("oom-score-reads.diff"));
    let two = store.commit_diff("hooks", &example_patch("0001-proc-version-banner.diff"));
    let three = revert(&store, "hooks", "oom-score-reads");
    let commit = |v: &serde_json::Value| v["commit"].as_str().unwrap().to_owned();
    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[
            (
                "one",
                store.config(Some("hooks"), Some(&commit(&one)), "15s"),
            ),
            (
                "two",
                store.config(Some("hooks"), Some(&commit(&two)), "15s"),
            ),
            (
                "three",
                store.config(Some("hooks"), Some(&commit(&three)), "15s"),
            ),
            (
                "two-stack",
                stack_mode(store.config(Some("hooks"), Some(&commit(&two)), "15s")),
            ),
        ],
    );
    let run = vm
        .run(
            r#"
export KSTACK_STATE_DIR=/var/lib/kstack
reads() { grep '^reads:' /proc/1/oom_score || echo "reads: none"; }
hooklog() { dmesg -c | grep -o 'oom-reads: .*'; }
dmesg -c >/dev/null
echo "== one"; kstack --config /etc/kstack/one.toml sync 2>&1; echo "rc=$?"; reads; reads; hooklog
echo "== two"; kstack --config /etc/kstack/two.toml sync 2>&1; echo "rc=$?"; reads; hooklog
echo "== three"; kstack --config /etc/kstack/three.toml sync 2>&1; echo "rc=$?"; reads; hooklog
grep -c '^live-patched' /proc/version
echo "== two-again"; kstack --config /etc/kstack/two.toml sync 2>&1; echo "rc=$?"; reads; hooklog
echo "== to-stack"; kstack --config /etc/kstack/two-stack.toml sync 2>&1; echo "rc=$?"; reads; hooklog
echo "== to-replace"; kstack --config /etc/kstack/two.toml sync 2>&1; echo "rc=$?"; reads; hooklog
echo "== end"
"#,
        )
        .unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    let reads = |section: &str| -> Vec<String> {
        s[section]
            .lines()
            .filter(|l| l.starts_with("reads:"))
            .map(str::to_owned)
            .collect()
    };
    let hook_lines = |section: &str| -> Vec<String> {
        s[section]
            .lines()
            .filter(|l| l.starts_with("oom-reads:"))
            .map(str::to_owned)
            .collect()
    };
    for section in ["one", "two", "three", "two-again", "to-stack", "to-replace"] {
        assert!(s[section].contains("rc=0"), "{section}: {}", s[section]);
    }
    // New in the generation: the pre-apply hook initialised every task.
    assert_eq!(reads("one"), ["reads: 1", "reads: 2"]);
    let one = hook_lines("one");
    assert_eq!(one.len(), 1, "{one:?}");
    assert!(one[0].ends_with(" 0 stale counters"), "{one:?}");
    // Kept from one cumulative module to the next: no hook ran, the counter went on.
    assert_eq!(reads("two"), ["reads: 3"]);
    assert!(hook_lines("two").is_empty(), "{}", s["two"]);
    // Dropped: its post-revert hook freed the counters, the other patch stays.
    assert_eq!(reads("three"), ["reads: none"]);
    assert_eq!(
        hook_lines("three"),
        ["oom-reads: counters freed"],
        "{}",
        s["three"]
    );
    assert!(s["three"].trim_end().ends_with('1'), "{}", s["three"]);
    // New again: initialised from scratch, nothing stale left behind.
    assert_eq!(reads("two-again"), ["reads: 1"]);
    let again = hook_lines("two-again");
    assert!(
        again.len() == 1 && again[0].ends_with(" 0 stale counters"),
        "{again:?}"
    );
    // To stack mode: the cumulative module is reverted (its hooks run), the patches
    // applied one by one (theirs run).
    let to_stack = hook_lines("to-stack");
    assert_eq!(to_stack.len(), 2, "{to_stack:?}");
    assert_eq!(to_stack[0], "oom-reads: counters freed");
    assert!(to_stack[1].ends_with(" 0 stale counters"), "{to_stack:?}");
    assert_eq!(reads("to-stack"), ["reads: 1"]);
    // Back to replace mode: the per-patch modules are replaced, the patch is kept.
    assert!(hook_lines("to-replace").is_empty(), "{}", s["to-replace"]);
    assert_eq!(reads("to-replace"), ["reads: 2"]);
    assert!(!run.console.contains("Oops"), "{}", run.console);
}

/// A replace whose transition cannot finish (a kernel thread sleeps in a function the
/// cumulative module replaces) is reversed: the kernel keeps running the generation
/// it had, and the host stays on it. And a livepatch kstack did not load rules out a
/// replace (it would be disabled too): the plan says so and uses stack mode.
#[test]
fn a_stalled_replace_is_reversed_and_foreign_livepatches_are_never_replaced() {
    use kstack_tests::build_test_module;
    use kstack_tests::stack::StackFixture;

    let fx = StackFixture::new();
    fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    let ab = fx.commit("prod", "b", &build_test_module("kstack_test_b"));
    fx.commit_with_cumulative(
        "stall",
        "a",
        &build_test_module("kstack_test_a"),
        &build_test_module("kstack_test_replace_stall"),
    );
    let mut vm = sandbox();
    vm.add_host_file(
        "/root/kstack_parker.ko",
        &build_test_module("kstack_parker"),
    )
    .unwrap();
    vm.add_host_file("/root/vendor_fix.ko", &build_test_module("vendor_fix"))
        .unwrap();
    fx.install(
        &mut vm,
        &[
            ("ab", fx.config("prod", Some(ab), "3s")),
            ("stall", fx.config("stall", None, "3s")),
        ],
    );
    let run = vm
        .run(
            r#"
export KSTACK_STATE_DIR=/var/lib/kstack
insmod /root/kstack_parker.ko
echo "== ab"; kstack --config /etc/kstack/ab.toml sync 2>&1; echo "rc=$?"
echo "== stall"; kstack --config /etc/kstack/stall.toml sync 2>&1; echo "rc=$?"
echo "== after"; cat /proc/cmdline /proc/version; ls -1 /sys/kernel/livepatch; cat /sys/kernel/livepatch/*/transition
grep -c kstack_test_replace_stall /proc/modules
echo "== generations"; kstack --config /etc/kstack/stall.toml generations
insmod /root/vendor_fix.ko
echo "== foreign"; kstack --config /etc/kstack/stall.toml plan 2>&1; echo "rc=$?"
"#,
        )
        .unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    // Prebuilt modules: no cumulative module, stack mode, and the plan says why.
    assert!(s["ab"].contains("rc=0"), "{}", s["ab"]);
    assert!(
        s["ab"].contains("stack mode: the stack has no cumulative module"),
        "{}",
        s["ab"]
    );
    let stall = &s["stall"];
    assert!(stall.contains("rc=1"), "{stall}");
    assert!(stall.contains("did not finish within 3s"), "{stall}");
    assert!(stall.contains("kstack-parked"), "{stall}");
    assert!(stall.contains("previous generation"), "{stall}");
    let after = &s["after"];
    assert!(
        after.contains("kstack-test-a") && after.contains("kstack-test-b"),
        "{after}"
    );
    assert!(!after.contains("kstack-test-replace-stall"), "{after}");
    assert!(
        after.contains("kstack_test_a\nkstack_test_b\n0\n0\n0\n"),
        "the replaced patches are enabled and settled, the cumulative one is gone:\n{after}"
    );
    assert_eq!(s["generations"].lines().count(), 1, "{}", s["generations"]);
    let foreign = &s["foreign"];
    assert!(foreign.contains("rc=2"), "{foreign}");
    assert!(
        foreign.contains(
            "mode stack (replace mode, but livepatches kstack did not load are enabled (vendor_fix)"
        ),
        "{foreign}"
    );
}
