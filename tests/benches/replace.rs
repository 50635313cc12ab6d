//! Benchmark: replace mode against stack mode and against kpatch's way of loading
//! (one insmod per module, the transition polled once a second), in the same boot of
//! the TCG guest, median of rounds:
//!
//! - a 10-patch stack from nothing;
//! - changing the 2nd of 10 patches (stack mode reverts nine and applies nine; replace
//!   mode loads the new cumulative module over the old one).
//!
//! Every module is a small test livepatch of `/proc/cmdline` (`kmod/test/proc_patch.h`)
//! and each stack's last commit carries a cumulative one (`replace = true`), so the
//! numbers are the sync's, not a build's. kstack's own time (`kstack_ms`, with its
//! phases) is reported for the first kstack process of the fresh guest and for the
//! later ones.
//!
//! Run: `cargo bench -p kstack-tests --bench replace` (after `cargo xtask setup`).

// A benchmark driver: a failed unwrap is a failed run, with its message.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kstack_tests::stack::StackFixture;
use kstack_tests::{build_module_cached, clock_helper, sections, workspace_root};

const PATCHES: usize = 10;
const ROUNDS: usize = 5;

fn module(name: &str, marker: &str, replace: bool) -> PathBuf {
    let header = std::fs::read_to_string(workspace_root().join("kmod/test/proc_patch.h")).unwrap();
    let source = format!(
        "// SPDX-License-Identifier: GPL-2.0\n{}#define KSTACK_TEST_TARGET cmdline_proc_show\n\
         #define KSTACK_TEST_MARKER \"{marker}\"\n#include \"proc_patch.h\"\n",
        if replace {
            "#define KSTACK_TEST_REPLACE 1\n"
        } else {
            ""
        }
    );
    build_module_cached(
        name,
        &[(&format!("{name}.c"), source), ("proc_patch.h", header)],
    )
}

fn main() {
    let fx = StackFixture::new();
    let mut modules = Vec::new();
    for i in 1..=PATCHES {
        let name = format!("kstack_bench_{i:02}");
        let ko = module(&name, &format!("kstack-bench-{i:02}"), false);
        modules.push((name, ko));
    }
    let second = module("kstack_bench_02b", "kstack-bench-02b", false);
    // Stack a: the ten patches; stack b: the same with the 2nd changed. Each has its
    // cumulative module on its last commit.
    for (stack, cumulative) in [("a", "kstack_bench_cum_a"), ("b", "kstack_bench_cum_b")] {
        for (i, (_, ko)) in modules.iter().enumerate() {
            let ko = if stack == "b" && i == 1 { &second } else { ko };
            let name = format!("p{:02}", i + 1);
            if i + 1 < PATCHES {
                fx.commit(stack, &name, ko);
            } else {
                let cum = module(cumulative, &format!("kstack-bench-{i:02}-{stack}"), true);
                fx.commit_with_cumulative(stack, &name, ko, &cum);
            }
        }
    }
    let mut vm = kstack_tests::sandbox_with(|o| o.cpu = std::env::var("BENCH_CPU").ok());
    vm.add_host_file("/bin/now", &clock_helper()).unwrap();
    for (name, ko) in &modules {
        vm.add_host_file(&format!("/root/bench/{name}.ko"), ko)
            .unwrap();
    }
    let stack_mode = |c: String| c.replace("[sync]\n", "[sync]\nmode = \"stack\"\n");
    let empty =
        "[store]\npath = \"/var/lib/kstack/store\"\n[sync]\nstate_dir = \"/var/lib/kstack\"\n";
    fx.install(
        &mut vm,
        &[
            ("a", fx.config("a", None, "60s")),
            ("b", fx.config("b", None, "60s")),
            ("a-stack", stack_mode(fx.config("a", None, "60s"))),
            ("b-stack", stack_mode(fx.config("b", None, "60s"))),
            ("empty", empty.to_owned()),
        ],
    );
    let script = format!(
        r#"
export KSTACK_STATE_DIR=/var/lib/kstack
timed() {{ # section config
  s=$(now); kstack --config /etc/kstack/$2.toml --json sync > /tmp/sync.json || exit 1; e=$(now)
  echo "== $1"; echo "wall_ns=$((e-s))"; cat /tmp/sync.json
}}
quiet() {{ kstack --config /etc/kstack/$1.toml sync > /dev/null || exit 1; }}
kpatch_style() {{
  for m in $(ls /root/bench | sort); do
    name=${{m%.ko}}
    insmod /root/bench/$m || exit 1
    # kpatch's wait_for_patch_transition: check, then sleep 1s between checks
    while [ "$(cat /sys/kernel/livepatch/$name/transition)" = 1 ]; do sleep 1; done
  done
}}
kpatch_unload() {{
  for m in $(ls /root/bench | sort -r); do
    name=${{m%.ko}}
    echo 0 > /sys/kernel/livepatch/$name/enabled
    while [ -e /sys/kernel/livepatch/$name ]; do sleep 0.01; done
    until rmmod $name 2>/dev/null; do sleep 0.01; done
  done
}}
for round in $(seq {ROUNDS}); do
  timed replace-nothing-$round a
  [ "$(ls /sys/kernel/livepatch)" = kstack_bench_cum_a ] || {{ echo "not replaced"; exit 1; }}
  quiet empty
  timed stack-nothing-$round a-stack
  [ "$(ls /sys/kernel/livepatch | wc -w)" = {PATCHES} ] || {{ echo "not stacked"; exit 1; }}
  quiet empty
  s=$(now); kpatch_style; e=$(now)
  echo "== kpatch-nothing-$round"; echo "wall_ns=$((e-s))"
  kpatch_unload
  quiet a-stack
  timed stack-second-$round b-stack
  grep -q kstack_bench_02b /proc/modules || {{ echo "2nd not changed"; exit 1; }}
  quiet empty
  quiet a
  timed replace-second-$round b
  [ "$(ls /sys/kernel/livepatch)" = kstack_bench_cum_b ] || {{ echo "not replaced"; exit 1; }}
  quiet empty
done
echo "== done"
"#
    );
    let run = vm.run(&script).unwrap();
    assert!(
        run.status.success() && run.stdout.contains("== done"),
        "{:?}\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let s = sections(&run.stdout);
    println!(
        "{PATCHES}-patch stack, TCG guest, same boot, median of {ROUNDS} rounds (first round's \
         kstack process is the guest's first)"
    );
    println!(
        "{:<34} {:>9} {:>10} {:>10}",
        "scenario", "wall ms", "kernel ms", "kstack ms"
    );
    let mut medians = std::collections::BTreeMap::new();
    for (key, label) in [
        ("replace-nothing", "from nothing, replace mode"),
        ("stack-nothing", "from nothing, stack mode"),
        ("kpatch-nothing", "from nothing, kpatch-style loop"),
        ("replace-second", "change the 2nd, replace mode"),
        ("stack-second", "change the 2nd, stack mode"),
    ] {
        // The first round's replace-nothing is the guest's first kstack process: it
        // is reported apart, and the medians are of the later rounds.
        let rounds: Vec<&String> = (1..=ROUNDS)
            .filter(|r| !(key == "replace-nothing" && *r == 1))
            .map(|r| &s[&format!("{key}-{r}")])
            .collect();
        let wall = median(rounds.iter().map(|t| wall_ms(t)).collect());
        let (kernel, own) = if key.starts_with("kpatch") {
            (f64::NAN, f64::NAN)
        } else {
            (
                median(
                    rounds
                        .iter()
                        .map(|t| json(t)["kernel_ms"].as_f64().unwrap())
                        .collect(),
                ),
                median(
                    rounds
                        .iter()
                        .map(|t| json(t)["kstack_ms"].as_f64().unwrap())
                        .collect(),
                ),
            )
        };
        medians.insert(key, wall);
        println!("{label:<34} {wall:>9.0} {kernel:>10.0} {own:>10.1}");
    }
    println!(
        "ratios: from nothing, kpatch-style / replace = {:.1}x, stack / replace = {:.1}x; \
         change the 2nd, stack / replace = {:.1}x",
        medians["kpatch-nothing"] / medians["replace-nothing"],
        medians["stack-nothing"] / medians["replace-nothing"],
        medians["stack-second"] / medians["replace-second"],
    );
    for (label, section) in [
        (
            "first kstack process of the guest",
            "replace-nothing-1".to_owned(),
        ),
        (
            "a later one (same sync)",
            format!("replace-nothing-{ROUNDS}"),
        ),
    ] {
        let text = &s[&section];
        let v = json(text);
        let phases: Vec<String> = v["kstack_phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1}",
                    p["phase"].as_str().unwrap(),
                    p["ms"].as_f64().unwrap()
                )
            })
            .collect();
        let wall = wall_ms(text);
        let kernel = v["kernel_ms"].as_f64().unwrap();
        let own = v["kstack_ms"].as_f64().unwrap();
        println!(
            "{label}: wall {wall:.0} ms = kernel {kernel:.0} + kstack's own {own:.1} + process \
             start, config and output {:.0}; own: {}",
            wall - kernel - own,
            phases.join(", ")
        );
    }
}

fn json(section: &str) -> serde_json::Value {
    serde_json::from_str(section.lines().nth(1).expect("the JSON line")).unwrap()
}

fn wall_ms(section: &str) -> f64 {
    let ns: f64 = section
        .lines()
        .find_map(|l| l.strip_prefix("wall_ns="))
        .expect("a wall time")
        .parse()
        .unwrap();
    ns / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
