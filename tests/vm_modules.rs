//! Live patches for loadable modules, on the real kernel: built from a diff of a
//! module's source, synced while the module is not loaded (the kernel patches it
//! when it loads, and again after a reload), reverted while it is not loaded; a
//! netfilter module synced while it is loaded; one patch for vmlinux and a module
//! together; and a host whose
//! modules lack the target. (Run-pre refusing a module patch built from a changed
//! tree is in `vm_runpre_refuse`.)

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failure is a test failure

use std::path::PathBuf;

use kstack_engine::sandbox::modules::ModuleSet;
use kstack_engine::sandbox::{GuestRun, Sandbox};
use kstack_tests::{CliStore, sandbox, sections};

/// A module example, the test kernel's line's version where it has one.
fn example(name: &str) -> PathBuf {
    kstack_tests::example_for_line("modules", name)
}

/// The guest's view of a patch's objects: `kstack status --json`, one line per
/// applied module with its objects and whether each is patched.
const OBJECTS: &str = "kstack --config /etc/kstack/mods.toml --json status \
     | tr -d ' \\n' | grep -o '\"objects\":\\[[^]]*\\]' || echo none";

/// A sandbox with the kernel's modules `set` and two configs: `mods` runs the stack
/// `mods` of `store`, `none` runs nothing.
fn vm_with_modules(store: &CliStore, set: ModuleSet) -> Sandbox {
    let mut vm = sandbox();
    vm.add_modules(&kstack_tests::kernel().modules_dir(), &set)
        .unwrap();
    store.install(
        &mut vm,
        &[
            ("mods", store.config(Some("mods"), None, "15s")),
            ("none", store.config(None, None, "15s")),
        ],
    );
    vm
}

/// All a run printed, for an assertion's message.
fn context(run: &GuestRun) -> String {
    format!(
        "{}\n--- stderr\n{}\n--- console\n{}",
        run.stdout, run.stderr, run.console
    )
}

/// Commits `diff` to stack `mods` and checks it replaces exactly `function`.
fn commit_one(store: &CliStore, diff: &str, function: &str) {
    let report = store.commit_diff("mods", &example(diff));
    let functions = report["patch"]["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 1, "{report}");
    assert_eq!(functions[0], function, "{report}");
}

#[test]
fn a_module_patch_waits_for_its_module_and_survives_a_reload() {
    let store = CliStore::new();
    commit_one(&store, "xfs-stats-marker.diff", "xfs:xfs_stats_format");
    let vm = vm_with_modules(&store, ModuleSet::All);
    let stats = "tail -n 1 /sys/fs/xfs/stats/stats";
    let script = format!(
        "export KSTACK_STATE_DIR=/var/lib/kstack\n\
         echo '== sync'; kstack --config /etc/kstack/mods.toml sync 2>&1; echo \"rc=$?\"\n\
         echo '== loaded before'; grep -c '^xfs ' /proc/modules\n\
         echo '== status'; kstack --config /etc/kstack/mods.toml status 2>&1\n\
         echo '== objects waiting'; {OBJECTS}\n\
         echo '== modprobe'; modprobe xfs && echo ok\n\
         echo '== objects loaded'; {OBJECTS}\n\
         echo '== patched'; {stats}\n\
         echo '== reload'; rmmod xfs && modprobe xfs && echo ok\n\
         echo '== patched again'; {stats}\n\
         rmmod xfs\n\
         echo '== revert'; kstack --config /etc/kstack/none.toml sync 2>&1; echo \"rc=$?\"\n\
         modprobe xfs\n\
         echo '== reverted'; {stats}\n\
         echo '== livepatches'; ls /sys/kernel/livepatch | wc -w\n"
    );
    let run = vm.run(&script).unwrap();
    let s = sections(&run.stdout);
    let ctx = || context(&run);
    assert!(s["sync"].contains("rc=0"), "{}", ctx());
    assert_eq!(s["loaded before"].trim(), "0", "{}", ctx());
    assert!(s["status"].contains("waiting for xfs"), "{}", ctx());
    assert!(
        s["objects waiting"].contains("\"name\":\"xfs\",\"patched\":false"),
        "{}",
        ctx()
    );
    assert_eq!(s["modprobe"].trim(), "ok", "{}", ctx());
    assert!(
        s["objects loaded"].contains("\"name\":\"xfs\",\"patched\":true"),
        "{}",
        ctx()
    );
    assert_eq!(s["patched"].trim(), "live-patched 1", "{}", ctx());
    assert_eq!(s["reload"].trim(), "ok", "{}", ctx());
    assert_eq!(s["patched again"].trim(), "live-patched 1", "{}", ctx());
    assert!(s["revert"].contains("rc=0"), "{}", ctx());
    assert!(s["reverted"].trim().starts_with("debug "), "{}", ctx());
    assert_eq!(s["livepatches"].trim(), "0", "{}", ctx());
    assert!(!run.console.contains("Oops"), "{}", ctx());
    assert!(!run.console.contains("Call Trace"), "{}", ctx());
}

/// A netfilter module the host loaded before the patch was synced is patched at
/// once, its status shows the object patched (text and JSON), its new print-once
/// message prints once, and reverting restores its code.
#[test]
fn a_netfilter_module_loaded_before_sync_is_patched_at_once() {
    let store = CliStore::new();
    commit_one(
        &store,
        "nf-conntrack-stat-header.diff",
        "nf_conntrack:ct_cpu_seq_show",
    );
    let vm = vm_with_modules(&store, ModuleSet::All);
    let header = "head -n 1 /proc/net/stat/nf_conntrack | cut -d' ' -f1";
    let script = format!(
        "export KSTACK_STATE_DIR=/var/lib/kstack\n\
         modprobe nf_conntrack && echo loaded\n\
         echo '== before'; {header}\n\
         echo '== sync'; kstack --config /etc/kstack/mods.toml sync 2>&1; echo \"rc=$?\"\n\
         echo '== status'; kstack --config /etc/kstack/mods.toml status 2>&1\n\
         echo '== objects'; {OBJECTS}\n\
         echo '== patched'; {header}\n\
         {header} >/dev/null\n\
         echo '== printed'; dmesg | grep -c 'statistics read by live-patched code'\n\
         echo '== revert'; kstack --config /etc/kstack/none.toml sync 2>&1; echo \"rc=$?\"\n\
         echo '== reverted'; {header}\n\
         echo '== still loaded'; grep -c '^nf_conntrack ' /proc/modules\n"
    );
    let run = vm.run(&script).unwrap();
    let s = sections(&run.stdout);
    let ctx = || context(&run);
    assert_eq!(s["before"].trim(), "entries", "{}", ctx());
    assert!(s["sync"].contains("rc=0"), "{}", ctx());
    assert!(!s["status"].contains("waiting for"), "{}", ctx());
    assert!(
        s["objects"].contains("\"name\":\"nf_conntrack\",\"patched\":true"),
        "{}",
        ctx()
    );
    assert_eq!(s["patched"].trim(), "entries(live-patched)", "{}", ctx());
    // The patched module code's print-once flag is the patch's own: read twice,
    // printed once.
    assert_eq!(s["printed"].trim(), "1", "{}", ctx());
    assert!(s["revert"].contains("rc=0"), "{}", ctx());
    assert_eq!(s["reverted"].trim(), "entries", "{}", ctx());
    assert_eq!(s["still loaded"].trim(), "1", "{}", ctx());
    assert!(!run.console.contains("Call Trace"), "{}", ctx());
}

#[test]
fn a_loaded_module_and_vmlinux_are_patched_together() {
    let store = CliStore::new();
    // One diff for vmlinux (fs/proc/version.c) and a module (fs/binfmt_misc.c).
    let mut both = std::fs::read(example("binfmt-misc-status.diff")).unwrap();
    both.extend(
        std::fs::read(kstack_tests::example_patch("0001-proc-version-banner.diff")).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let diff = dir.path().join("vmlinux-and-binfmt-misc.diff");
    std::fs::write(&diff, both).unwrap();
    let report = store.commit_diff("mods", &diff);
    let mut functions: Vec<&str> = report["patch"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    functions.sort_unstable();
    assert_eq!(
        functions,
        ["binfmt_misc:bm_status_read", "vmlinux:version_proc_show"],
        "{report}"
    );

    let vm = vm_with_modules(&store, ModuleSet::Named(vec!["binfmt_misc".into()]));
    let status = "cat /proc/sys/fs/binfmt_misc/status";
    let script = format!(
        "export KSTACK_STATE_DIR=/var/lib/kstack\n\
         modprobe binfmt_misc && mount -t binfmt_misc none /proc/sys/fs/binfmt_misc\n\
         echo '== before'; {status}\n\
         echo '== sync'; kstack --config /etc/kstack/mods.toml sync 2>&1; echo \"rc=$?\"\n\
         echo '== objects'; {OBJECTS}\n\
         echo '== module'; {status}\n\
         echo '== vmlinux'; grep -c 'live-patched: proc-version-banner' /proc/version\n\
         echo '== revert'; kstack --config /etc/kstack/none.toml sync 2>&1; echo \"rc=$?\"\n\
         echo '== module after'; {status}\n\
         echo '== vmlinux after'; grep -c 'live-patched' /proc/version\n"
    );
    let run = vm.run(&script).unwrap();
    let s = sections(&run.stdout);
    let ctx = || context(&run);
    assert_eq!(s["before"].trim(), "enabled", "{}", ctx());
    assert!(s["sync"].contains("rc=0"), "{}", ctx());
    assert!(
        s["objects"].contains(
            "{\"name\":\"vmlinux\",\"patched\":true},{\"name\":\"binfmt_misc\",\"patched\":true}"
        ),
        "{}",
        ctx()
    );
    assert_eq!(s["module"].trim(), "enabled (live-patched)", "{}", ctx());
    assert_eq!(s["vmlinux"].trim(), "1", "{}", ctx());
    assert!(s["revert"].contains("rc=0"), "{}", ctx());
    assert_eq!(s["module after"].trim(), "enabled", "{}", ctx());
    assert_eq!(s["vmlinux after"].trim(), "0", "{}", ctx());
}

/// A host that does not have the module a patch targets (not loaded, no `.ko` under
/// `/lib/modules`) cannot prove the patch: sync refuses it, loads nothing, and says
/// why (exit 69: something needed is missing).
#[test]
fn a_host_without_the_target_module_refuses_the_patch() {
    let store = CliStore::new();
    store.commit_diff("mods", &example("xfs-stats-marker.diff"));
    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[("mods", store.config(Some("mods"), None, "15s"))],
    );
    let run = vm
        .run(
            "export KSTACK_STATE_DIR=/var/lib/kstack\n\
             echo '== sync'; kstack --config /etc/kstack/mods.toml sync 2>&1; echo \"rc=$?\"\n\
             echo '== after'; ls /sys/kernel/livepatch | wc -w\n",
        )
        .unwrap();
    let s = sections(&run.stdout);
    assert!(s["sync"].contains("rc=69"), "{}", run.stdout);
    assert!(
        s["sync"].contains("module xfs, which is not loaded and has no .ko"),
        "{}",
        run.stdout
    );
    assert_eq!(s["after"].trim(), "0", "{}", run.stdout);
}
