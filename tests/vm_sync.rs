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

/// The value of one sample in Prometheus text (`name` with its labels, if any).
fn metric(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
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
echo "== before-abc"; date +%s
echo "== sync-abc"; kstack --config /etc/kstack/abc.toml sync; echo "rc=$?"
echo "== after-abc"; date +%s
view abc
echo "== prom-abc"; kstack --config /etc/kstack/abc.toml status --format prometheus
echo "== sync-ac"; kstack --config /etc/kstack/ac.toml sync; echo "rc=$?"
view ac
echo "== sync-again"; kstack --config /etc/kstack/ac.toml sync; echo "rc=$?"
echo "== plan-again"; kstack --config /etc/kstack/ac.toml plan; echo "rc=$?"
echo "== plan-abc"; kstack --config /etc/kstack/abc.toml plan; echo "rc=$?"
echo "== before-rollback"; date +%s
echo "== rollback"; kstack --config /etc/kstack/ac.toml rollback; echo "rc=$?"
echo "== after-rollback"; date +%s
view rolled-back
mkdir -p /var/lib/prometheus/node-exporter
kstack --config /etc/kstack/ac.toml status --format prometheus --textfile /var/lib/prometheus/node-exporter/kstack.prom
echo "== prom-rollback"; cat /var/lib/prometheus/node-exporter/kstack.prom
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
    // The metrics after each: the generation, its patches, how the last operation
    // ended and when (the guest's clock, read before and after it).
    let when = |name: &str| -> (u64, u64) {
        let at = |sec: &str| s[&format!("{sec}-{name}")].trim().parse::<u64>().unwrap();
        (at("before"), at("after"))
    };
    for (prom, operation, generation, (before, after)) in [
        ("prom-abc", "sync", "1", when("abc")),
        ("prom-rollback", "rollback", "1", when("rollback")),
    ] {
        let text = &s[prom];
        assert_eq!(metric(text, "kstack_generation"), generation, "{text}");
        assert_eq!(metric(text, "kstack_patches_applied"), "3", "{text}");
        assert_eq!(metric(text, "kstack_drift"), "0", "{text}");
        assert_eq!(
            metric(
                text,
                &format!("kstack_last_sync_success{{operation=\"{operation}\"}}")
            ),
            "1",
            "{text}"
        );
        let at: u64 = metric(text, "kstack_last_sync_timestamp_seconds")
            .parse()
            .unwrap();
        assert!(
            before <= at && at <= after,
            "{prom}: {before} <= {at} <= {after}"
        );
        assert!(
            text.contains("kstack_kernel_taint_flag{flag=\"K\"} 1"),
            "{text}"
        );
    }
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
echo "== prom"; kstack --config /etc/kstack/bad.toml status --format prometheus
"#,
    );
    let s = sections(&run.stdout);
    // The failure is exported: the host stayed on generation 1.
    assert_eq!(
        metric(&s["prom"], "kstack_last_sync_success{operation=\"sync\"}"),
        "0",
        "{}",
        s["prom"]
    );
    assert_eq!(metric(&s["prom"], "kstack_generation"), "1");
    assert_eq!(metric(&s["prom"], "kstack_patches_applied"), "1");
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

/// The lines of `examples/systemd/kstack-update.service` that run commands, in the
/// order systemd runs them, as a shell script that does what systemd does with them:
/// ExecStartPre= then each ExecStart= in turn, stopping at the first that fails;
/// then ExecStopPost= whatever happened. A line's `-` prefix (its failure is
/// ignored) is dropped: the last line is run either way. Each line is echoed and its
/// exit code printed.
fn fleet_service_script() -> String {
    let path = kstack_tests::workspace_root().join("examples/systemd/kstack-update.service");
    let unit = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let exec = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|l| l.trim_start_matches('-').to_owned())
            .collect()
    };
    let starts: Vec<String> = exec("ExecStartPre")
        .into_iter()
        .chain(exec("ExecStart"))
        .collect();
    let post = exec("ExecStopPost");
    assert!(starts.len() >= 3 && post.len() == 1, "{unit}");
    let mut script = String::from("failed=\n");
    for line in &starts {
        script.push_str(&format!(
            "if [ -z \"$failed\" ]; then echo \"+ {}\"; {line} 2>&1; rc=$?; echo \"rc=$rc\"; [ $rc = 0 ] || failed=1; fi\n",
            line.replace('"', "'")
        ));
    }
    script.push_str(&format!("{} 2>&1; echo \"post rc=$?\"\n", post[0]));
    script
}

#[test]
fn the_fleet_service_pulls_from_the_configured_remote_syncs_and_writes_the_textfile() {
    let fx = StackFixture::new();
    let first = fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    fx.commit("prod", "b", &build_test_module("kstack_test_b"));
    // `init` creates the store with gix, which seeds its random numbers from
    // getrandom(2): that blocks until the kernel's CRNG is ready, which QEMU's default
    // CPU (no RDRAND) and no RNG device delay for minutes; a real host's is ready at
    // boot. QEMU's "max" CPU has RDRAND, which the kernel trusts at boot.
    let mut vm = kstack_tests::sandbox_with(|o| o.cpu = Some("max".into()));
    // The host has no store yet: the service's `init` makes it, `pull` (no URL)
    // fetches from [store] remote, a bare store on a local path as a Git server's
    // would be.
    vm.add_host_tree("/srv/kstack.git", fx.store.path())
        .unwrap();
    let config = fx.config("prod", None, "10s").replacen(
        "[store]\n",
        "[store]\nremote = \"file:///srv/kstack.git\"\n",
        1,
    );
    assert!(config.contains("remote = "), "{config}");
    vm.add_file("/etc/kstack/kstack.toml", 0o644, config.clone())
        .unwrap();
    // The second run: the remote is gone, and the config pins the first commit, so a
    // sync that ran anyway would revert B.
    let broken = config
        .replace("file:///srv/kstack.git", "file:///srv/gone.git")
        .replace(
            "name = \"prod\"\n",
            &format!("name = \"prod\"\ncommit = \"{first}\"\n"),
        );
    vm.add_file("/root/broken.toml", 0o644, broken).unwrap();
    let service = fleet_service_script();
    let prom = "/var/lib/prometheus/node-exporter/kstack.prom";
    let run = run(
        &vm,
        &format!(
            r#"
# The unit's paths: /usr/bin/kstack, and the textfile collector's directory.
mkdir -p /usr/bin /var/lib/prometheus/node-exporter
[ -e /usr/bin/kstack ] || ln -s "$(command -v kstack)" /usr/bin/kstack
echo "== before"; date +%s
echo "== service"
{service}
echo "== after"; date +%s
view synced
echo "== textfile"; cat {prom}
echo "== stacks"; kstack log --oneline prod
cp /root/broken.toml /etc/kstack/kstack.toml
rm {prom}
echo "== broken"
{service}
view kept
echo "== textfile2"; cat {prom}
"#
        ),
    );
    let s = sections(&run.stdout);
    let service = &s["service"];
    // init, pull, sync each succeeded, then the textfile was written.
    assert_eq!(
        service.lines().filter(|l| *l == "rc=0").count(),
        3,
        "{service}"
    );
    assert!(
        service.contains("+ /usr/bin/kstack --quiet pull"),
        "{service}"
    );
    assert!(service.contains("post rc=0"), "{service}");
    for m in [A, B] {
        assert!(shows(&s["synced"], m), "{m} missing:\n{}", s["synced"]);
    }
    assert_eq!(
        load_order(&s["synced"]),
        ["kstack_test_a", "kstack_test_b"],
        "{}",
        s["synced"]
    );
    let before: u64 = s["before"].trim().parse().unwrap();
    let after: u64 = s["after"].trim().parse().unwrap();
    let text = &s["textfile"];
    assert_eq!(metric(text, "kstack_generation"), "1");
    assert_eq!(metric(text, "kstack_patches_applied"), "2");
    assert_eq!(metric(text, "kstack_drift"), "0");
    assert_eq!(
        metric(text, "kstack_last_sync_success{operation=\"sync\"}"),
        "1"
    );
    let at: u64 = metric(text, "kstack_last_sync_timestamp_seconds")
        .parse()
        .unwrap();
    assert!(before <= at && at <= after, "{before} {at} {after}");
    assert!(
        text.contains("kstack_kernel_taint_flag{flag=\"K\"} 1"),
        "{text}"
    );

    // A pull that fails stops the service before sync: the kernel keeps B, and the
    // textfile is still written, with the earlier sync's result.
    let broken = &s["broken"];
    assert!(
        broken.contains("+ /usr/bin/kstack --quiet pull"),
        "{broken}"
    );
    assert!(!broken.contains("--quiet sync"), "{broken}");
    assert!(broken.contains("gone.git"), "{broken}");
    assert!(broken.contains("post rc=0"), "{broken}");
    assert!(shows(&s["kept"], B), "{}", s["kept"]);
    let text2 = &s["textfile2"];
    assert_eq!(metric(text2, "kstack_generation"), "1");
    assert_eq!(
        metric(text2, "kstack_last_sync_timestamp_seconds"),
        at.to_string()
    );
}
