//! `kstack sync` on the real Debian kernel in QEMU: stacks of real livepatch modules
//! applied, changed, rolled back; failures that leave the host on its previous
//! generation; bad stacks refused before anything reaches the kernel. Every check
//! reads the kernel's own view (/proc files the patches change, /sys/kernel/livepatch,
//! /proc/modules), not only kstack's output.

use kstack_tests::stack::{StackFixture, force_ref, tamper};
use kstack_tests::{build_test_module, sandbox, sections};

const A: &str = "kstack-test-a"; // /proc/cmdline
const B: &str = "kstack-test-b"; // /proc/version
const C: &str = "kstack-test-c"; // /proc/loadavg

/// Prints what the kernel runs: the three /proc files, the livepatch directory, and
/// the test patches' modules in the kernel's own order (`/proc/modules` lists the
/// newest first; it is not sorted here).
const VIEW: &str = r#"view() { echo "== $1"; cat /proc/cmdline /proc/version /proc/loadavg; echo "lp: $(ls /sys/kernel/livepatch | tr '\n' ' ')"; echo "mods: $(cut -d' ' -f1 /proc/modules | grep '^kstack_test_' | tr '\n' ' ')"; }
export KSTACK_STATE_DIR=/var/lib/kstack
"#;

fn run(vm: &kstack_engine::sandbox::Sandbox, script: &str) -> kstack_engine::sandbox::GuestRun {
    let run = vm
        .run(&format!("{VIEW}{script}"))
        .expect("the VM runs the script to its end");
    eprintln!(
        "guest stdout:\n{}\nguest stderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

fn shows(view: &str, marker: &str) -> bool {
    view.lines().any(|l| l == marker)
}

/// The test patches' modules in the order the kernel loaded them, oldest first: the
/// `mods:` line of a view is `/proc/modules` order, newest first.
fn load_order(view: &str) -> Vec<&str> {
    let line = view
        .lines()
        .find_map(|l| l.strip_prefix("mods:"))
        .unwrap_or_else(|| panic!("no mods: line in\n{view}"));
    let mut modules: Vec<&str> = line.split_whitespace().collect();
    modules.reverse();
    modules
}

#[test]
fn sync_changes_resyncs_and_rolls_back() {
    let fx = StackFixture::new();
    let c1 = fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    let _c2 = fx.commit("prod", "b", &build_test_module("kstack_test_b"));
    let c3 = fx.commit("prod", "c", &build_test_module("kstack_test_c"));
    let c4 = fx.revert("prod", "b");
    assert_ne!(c1, c4);

    let mut vm = sandbox();
    fx.install(
        &mut vm,
        &[
            ("abc", fx.config("prod", Some(c3), "10s")),
            ("ac", fx.config("prod", None, "10s")),
        ],
    );
    let run = run(
        &vm,
        r#"
view boot
echo "== sync-abc"; kstack --config /etc/kstack/abc.toml sync; echo "rc=$?"
view abc
echo "== sync-ac"; kstack --config /etc/kstack/ac.toml sync; echo "rc=$?"
view ac
echo "== sync-again"; kstack --config /etc/kstack/ac.toml sync; echo "rc=$?"
echo "== plan-again"; kstack --config /etc/kstack/ac.toml plan; echo "rc=$?"
echo "== plan-abc"; kstack --config /etc/kstack/abc.toml plan; echo "rc=$?"
echo "== rollback"; kstack --config /etc/kstack/ac.toml rollback; echo "rc=$?"
view rolled-back
echo "== generations"; kstack --config /etc/kstack/ac.toml generations
echo "== status"; kstack --config /etc/kstack/ac.toml --json status
"#,
    );
    assert!(run.status.success(), "{:?}", run.status);
    let s = sections(&run.stdout);

    assert!(!shows(&s["boot"], A) && !shows(&s["boot"], B) && !shows(&s["boot"], C));
    assert!(s["sync-abc"].contains("rc=0"), "{}", s["sync-abc"]);
    for m in [A, B, C] {
        assert!(shows(&s["abc"], m), "{m} missing:\n{}", s["abc"]);
    }
    assert!(s["abc"].contains("lp: kstack_test_a kstack_test_b kstack_test_c"));
    // The kernel loaded them in stack order.
    assert_eq!(
        load_order(&s["abc"]),
        ["kstack_test_a", "kstack_test_b", "kstack_test_c"],
        "{}",
        s["abc"]
    );

    // [A,B,C] -> [A,C]: C and B reverted, C applied again, A kept.
    let sync_ac = &s["sync-ac"];
    assert!(sync_ac.contains("rc=0"), "{sync_ac}");
    let order: Vec<&str> = sync_ac
        .lines()
        .filter(|l| l.contains("kstack_test_"))
        .collect();
    assert_eq!(order.len(), 3, "{sync_ac}");
    assert!(
        order[0].contains("- kstack_test_c") && order[0].contains("reverted"),
        "{sync_ac}"
    );
    assert!(
        order[1].contains("- kstack_test_b") && order[1].contains("reverted"),
        "{sync_ac}"
    );
    assert!(
        order[2].contains("+ kstack_test_c") && order[2].contains("applied"),
        "{sync_ac}"
    );
    assert!(
        shows(&s["ac"], A) && shows(&s["ac"], C) && !shows(&s["ac"], B),
        "{}",
        s["ac"]
    );
    assert!(s["ac"].contains("Linux version"), "{}", s["ac"]);
    // C came off and went back on top of A: the kernel's own order says so.
    assert_eq!(
        load_order(&s["ac"]),
        ["kstack_test_a", "kstack_test_c"],
        "{}",
        s["ac"]
    );

    // A second sync does nothing; plan agrees (exit 0), and sees changes for abc (2).
    assert!(s["sync-again"].contains("nothing to do") && s["sync-again"].contains("rc=0"));
    assert!(s["plan-again"].contains("rc=0"), "{}", s["plan-again"]);
    assert!(s["plan-abc"].contains("rc=2"), "{}", s["plan-abc"]);
    assert!(
        s["plan-abc"].contains("+ kstack_test_b"),
        "{}",
        s["plan-abc"]
    );

    // Rollback returns to generation 1 ([A,B,C]).
    assert!(
        s["rollback"].contains("generation 1") && s["rollback"].contains("rc=0"),
        "{}",
        s["rollback"]
    );
    for m in [A, B, C] {
        assert!(shows(&s["rolled-back"], m), "{m}:\n{}", s["rolled-back"]);
    }
    assert_eq!(
        load_order(&s["rolled-back"]),
        ["kstack_test_a", "kstack_test_b", "kstack_test_c"],
        "{}",
        s["rolled-back"]
    );
    let gens = &s["generations"];
    assert!(gens.lines().any(|l| l.starts_with("*   1")), "{gens}");
    assert!(gens.lines().any(|l| l.starts_with("    2")), "{gens}");

    let status: serde_json::Value = serde_json::from_str(s["status"].trim()).unwrap();
    assert_eq!(status["generation"]["number"], 1);
    assert_eq!(status["applied"].as_array().unwrap().len(), 3);
    assert!(status["drift"].as_array().unwrap().is_empty(), "{status}");
    assert!(
        status["taint_flags"].as_str().unwrap().contains('K'),
        "{status}"
    );
}

#[test]
fn a_module_whose_init_fails_leaves_the_previous_generation() {
    let fx = StackFixture::new();
    let good = fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    let _bad = fx.commit("prod", "broken", &build_test_module("kstack_test_fail"));
    let mut vm = sandbox();
    fx.install(
        &mut vm,
        &[
            ("good", fx.config("prod", Some(good), "10s")),
            ("bad", fx.config("prod", None, "10s")),
        ],
    );
    let run = run(
        &vm,
        r#"
kstack --config /etc/kstack/good.toml sync >/dev/null; rc=$?; echo "== first"; echo "rc=$rc"
echo "== bad"; kstack --config /etc/kstack/bad.toml sync 2>&1; echo "rc=$?"
view after
echo "== generations"; kstack --config /etc/kstack/bad.toml generations
"#,
    );
    let s = sections(&run.stdout);
    let bad = &s["bad"];
    assert!(bad.contains("rc=1"), "{bad}");
    assert!(bad.contains("applying kstack_test_fail failed"), "{bad}");
    assert!(bad.contains("No such device"), "{bad}");
    // The kernel's own message about the failure is carried into the error.
    assert!(bad.contains("refusing to load"), "{bad}");
    assert!(bad.contains("previous generation"), "{bad}");
    assert!(shows(&s["after"], A), "{}", s["after"]);
    assert!(s["after"].contains("lp: kstack_test_a "), "{}", s["after"]);
    assert_eq!(load_order(&s["after"]), ["kstack_test_a"], "{}", s["after"]);
    assert!(!s["after"].contains("kstack_test_fail"), "{}", s["after"]);
    assert!(
        s["generations"].lines().any(|l| l.starts_with("*   1")),
        "{}",
        s["generations"]
    );
    assert_eq!(s["generations"].lines().count(), 1, "{}", s["generations"]);
}

#[test]
fn a_stalled_transition_is_reversed_and_the_host_rolled_back() {
    let fx = StackFixture::new();
    fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    let ab = fx.commit("prod", "b", &build_test_module("kstack_test_b"));
    // [A, STALL]: revert B, then apply a patch whose transition cannot finish.
    let c = fx.revert("prod", "b");
    let _ = c;
    fx.commit("prod", "stall", &build_test_module("kstack_test_stall"));
    let parker = build_test_module("kstack_parker");
    let mut vm = sandbox();
    vm.add_host_file("/root/kstack_parker.ko", &parker).unwrap();
    fx.install(
        &mut vm,
        &[
            ("ab", fx.config("prod", Some(ab), "3s")),
            ("stall", fx.config("prod", None, "3s")),
        ],
    );
    let run = run(
        &vm,
        r#"
insmod /root/kstack_parker.ko
kstack --config /etc/kstack/ab.toml sync >/dev/null; rc=$?; echo "== first"; echo "rc=$rc"
echo "== stall"; kstack --config /etc/kstack/stall.toml sync 2>&1; echo "rc=$?"
view after
echo "== transition"; cat /sys/kernel/livepatch/*/transition
echo "== generations"; kstack --config /etc/kstack/stall.toml generations
"#,
    );
    let s = sections(&run.stdout);
    let stall = &s["stall"];
    assert!(stall.contains("rc=1"), "{stall}");
    assert!(stall.contains("did not finish within 3s"), "{stall}");
    // The blocking task and where it sleeps are named.
    assert!(stall.contains("kstack-parked"), "{stall}");
    assert!(stall.contains("kstack_parker_wait"), "{stall}");
    // B was reverted before the stall; the undo applied it again.
    assert!(stall.contains("undone"), "{stall}");
    assert!(
        shows(&s["after"], A) && shows(&s["after"], B),
        "{}",
        s["after"]
    );
    assert!(
        s["after"].contains("lp: kstack_test_a kstack_test_b "),
        "{}",
        s["after"]
    );
    assert_eq!(
        load_order(&s["after"]),
        ["kstack_test_a", "kstack_test_b"],
        "{}",
        s["after"]
    );
    assert!(!s["after"].contains("kstack_test_stall"), "{}", s["after"]);
    assert!(
        s["transition"].lines().all(|l| l == "0"),
        "{}",
        s["transition"]
    );
    assert_eq!(s["generations"].lines().count(), 1, "{}", s["generations"]);
}

#[test]
fn tampered_and_foreign_kernel_stacks_are_refused_before_loading() {
    let fx = StackFixture::new();
    let ko = build_test_module("kstack_test_a");
    let head = fx.commit("prod", "a", &ko);
    // A flipped byte in the module, the manifest and signature left as they were.
    let mut bytes = std::fs::read(&ko).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let dir = fx.store.check(head, None).unwrap().patches[0]
        .entry
        .dir
        .clone();
    let bad = tamper(&fx.store, head, &format!("patches/{dir}/module.ko"), &bytes);
    force_ref(&fx.store, &fx.stack("tampered"), bad);
    // A stack pinned to another kernel's build ID, pulled in by a pinned commit.
    let other = fx.stack("other");
    let other = kstack_store::store::StackId {
        build_id: "00112233445566778899aabbccddeeff00112233".parse().unwrap(),
        ..other
    };
    let foreign = fx.commit_to(&other, "a", &ko);

    let mut vm = sandbox();
    fx.install(
        &mut vm,
        &[
            ("tampered", fx.config("tampered", None, "10s")),
            ("foreign", fx.config("other", Some(foreign), "10s")),
        ],
    );
    let run = run(
        &vm,
        r#"
echo "== tampered"; kstack --config /etc/kstack/tampered.toml sync 2>&1; echo "rc=$?"
echo "== foreign"; kstack --config /etc/kstack/foreign.toml sync 2>&1; echo "rc=$?"
view after
echo "== state"; ls /var/lib/kstack
"#,
    );
    let s = sections(&run.stdout);
    let tampered = &s["tampered"];
    assert!(tampered.contains("rc=65"), "{tampered}");
    assert!(
        tampered.contains("refused before anything was loaded"),
        "{tampered}"
    );
    assert!(tampered.contains("module.ko"), "{tampered}");
    assert!(tampered.contains("SHA-256 mismatch"), "{tampered}");
    let foreign = &s["foreign"];
    assert!(foreign.contains("rc=65"), "{foreign}");
    assert!(
        foreign.contains("00112233445566778899aabbccddeeff00112233"),
        "{foreign}"
    );
    assert!(foreign.contains("running kernel"), "{foreign}");
    // Nothing reached the kernel.
    assert!(
        s["after"].contains("lp: \n") || s["after"].contains("lp: "),
        "{}",
        s["after"]
    );
    assert!(!s["after"].contains("kstack_test"), "{}", s["after"]);
    assert!(!s["state"].contains("state.toml"), "{}", s["state"]);
}

#[test]
fn boot_sync_honours_the_kernel_command_line_off_switch() {
    let fx = StackFixture::new();
    fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    let mut vm = kstack_tests::sandbox_with(|o| o.kernel_args.push("kstack.sync=0".into()));
    fx.install(&mut vm, &[("prod", fx.config("prod", None, "10s"))]);
    let run = run(
        &vm,
        r#"
echo "== boot"; kstack --config /etc/kstack/prod.toml sync --boot 2>&1; echo "rc=$?"
view after-boot
echo "== manual"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
view after-manual
"#,
    );
    let s = sections(&run.stdout);
    assert!(
        s["boot"].contains("skipped, kstack.sync=0"),
        "{}",
        s["boot"]
    );
    assert!(s["boot"].contains("rc=0"), "{}", s["boot"]);
    assert!(!shows(&s["after-boot"], A), "{}", s["after-boot"]);
    // An operator's own sync still works on such a boot.
    assert!(s["manual"].contains("rc=0"), "{}", s["manual"]);
    assert!(shows(&s["after-manual"], A), "{}", s["after-manual"]);
}

#[test]
fn a_second_sync_while_one_runs_is_refused_with_exit_75() {
    let fx = StackFixture::new();
    fx.commit("prod", "stall", &build_test_module("kstack_test_stall"));
    let mut vm = sandbox();
    vm.add_host_file(
        "/root/kstack_parker.ko",
        &build_test_module("kstack_parker"),
    )
    .unwrap();
    fx.install(&mut vm, &[("prod", fx.config("prod", None, "4s"))]);
    let run = run(
        &vm,
        r#"
insmod /root/kstack_parker.ko
kstack --config /etc/kstack/prod.toml sync >/tmp/first.log 2>&1 &
first=$!
# The first sync is waiting on its stalled transition, holding the lock.
while [ ! -e /sys/kernel/livepatch/kstack_test_stall ]; do sleep 0.05; done
echo "== second"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
wait $first; rc=$?; echo "== first"; echo "rc=$rc"; cat /tmp/first.log
view after
"#,
    );
    let s = sections(&run.stdout);
    assert!(s["second"].contains("rc=75"), "{}", s["second"]);
    assert!(
        s["second"].contains("another kstack is running"),
        "{}",
        s["second"]
    );
    assert!(s["first"].contains("rc=1"), "{}", s["first"]);
    assert!(
        s["first"].contains("did not finish within 4s"),
        "{}",
        s["first"]
    );
    assert!(!s["after"].contains("kstack_test_stall"), "{}", s["after"]);
}

#[test]
fn a_foreign_livepatch_is_reported_and_never_touched() {
    let fx = StackFixture::new();
    fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    let mut vm = sandbox();
    vm.add_host_file("/root/vendor_fix.ko", &build_test_module("vendor_fix"))
        .unwrap();
    let empty =
        "[store]\npath = \"/var/lib/kstack/store\"\n[sync]\nstate_dir = \"/var/lib/kstack\"\n";
    fx.install(
        &mut vm,
        &[
            ("prod", fx.config("prod", None, "10s")),
            ("empty", empty.to_owned()),
        ],
    );
    let run = run(
        &vm,
        r#"
insmod /root/vendor_fix.ko
echo "== plan"; kstack --config /etc/kstack/prod.toml plan; echo "rc=$?"
echo "== sync"; kstack --config /etc/kstack/prod.toml sync 2>&1; echo "rc=$?"
echo "== status"; kstack --config /etc/kstack/prod.toml --json status
echo "== empty"; kstack --config /etc/kstack/empty.toml sync 2>&1; echo "rc=$?"
echo "== uptime"; cat /proc/uptime; ls /sys/kernel/livepatch; cat /sys/kernel/livepatch/vendor_fix/enabled
"#,
    );
    let s = sections(&run.stdout);
    assert!(
        s["plan"].contains("! vendor_fix  not kstack's: left alone"),
        "{}",
        s["plan"]
    );
    assert!(s["sync"].contains("rc=0"), "{}", s["sync"]);
    let status: serde_json::Value = serde_json::from_str(s["status"].trim()).unwrap();
    assert_eq!(
        status["foreign"],
        serde_json::json!(["vendor_fix"]),
        "{status}"
    );
    assert_eq!(status["applied"][0]["module"], "kstack_test_a", "{status}");
    // Declaring no stack reverts kstack's patches and only those.
    assert!(s["empty"].contains("- kstack_test_a"), "{}", s["empty"]);
    assert!(!s["empty"].contains("- vendor_fix"), "{}", s["empty"]);
    assert_eq!(
        s["uptime"].lines().collect::<Vec<_>>(),
        ["vendor-fix", "vendor_fix", "1"],
        "{}",
        s["uptime"]
    );
}
