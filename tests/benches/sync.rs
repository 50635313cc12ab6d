//! Benchmark: `kstack sync` of a 10-patch stack in the VM against the kpatch way of
//! loading the same modules (one insmod per module, the transition polled once a
//! second), in the same boot, on an idle guest and with two busy tasks.
//!
//! kstack's own time (verification, planning, state) is reported apart from the
//! kernel's (module load and transition), from `kstack sync --json`; wall times are
//! measured in the guest around each whole run.
//!
//! Run: `cargo bench -p kstack-tests --bench sync` (after `cargo xtask setup`).

// A benchmark driver: a failed unwrap is a failed run, with its message.
#![allow(clippy::unwrap_used)]

use kstack_tests::stack::StackFixture;
use kstack_tests::{build_module_cached, clock_helper, sections, workspace_root};

const PATCHES: usize = 10;
const ROUNDS: usize = 3;

fn main() {
    let header = std::fs::read_to_string(workspace_root().join("kmod/test/proc_patch.h")).unwrap();
    let fx = StackFixture::new();
    let mut modules = Vec::new();
    for i in 1..=PATCHES {
        let name = format!("kstack_bench_{i:02}");
        let source = format!(
            "// SPDX-License-Identifier: GPL-2.0\n#define KSTACK_TEST_TARGET cmdline_proc_show\n\
             #define KSTACK_TEST_MARKER \"kstack-bench-{i:02}\"\n#include \"proc_patch.h\"\n"
        );
        let ko = build_module_cached(
            &name,
            &[
                (&format!("{name}.c"), source),
                ("proc_patch.h", header.clone()),
            ],
        );
        fx.commit("bench", &format!("p{i:02}"), &ko);
        modules.push((name, ko));
    }
    let mut vm = kstack_tests::sandbox_with(|o| o.cpu = std::env::var("BENCH_CPU").ok());
    vm.add_host_file("/bin/now", &clock_helper()).unwrap();
    for (name, ko) in &modules {
        vm.add_host_file(&format!("/root/bench/{name}.ko"), ko)
            .unwrap();
    }
    let empty =
        "[store]\npath = \"/var/lib/kstack/store\"\n[sync]\nstate_dir = \"/var/lib/kstack\"\n";
    fx.install(
        &mut vm,
        &[
            ("bench", fx.config("bench", None, "60s")),
            ("empty", empty.to_owned()),
        ],
    );
    let script = format!(
        r#"
export KSTACK_STATE_DIR=/var/lib/kstack
t() {{ now; }}
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
for mode in idle busy; do
  pids=""
  if [ $mode = busy ]; then
    for i in 1 2; do (while :; do :; done) & pids="$pids $!"; done
  fi
  for round in $(seq {ROUNDS}); do
    s=$(t); kstack --config /etc/kstack/bench.toml --json sync > /tmp/sync.json || exit 1; e=$(t)
    echo "== kstack-$mode-$round"; echo "wall_ns=$((e-s))"; cat /tmp/sync.json
    kstack --config /etc/kstack/empty.toml sync > /dev/null || exit 1
    s=$(t); kpatch_style; e=$(t)
    echo "== kpatch-$mode-$round"; echo "wall_ns=$((e-s))"
    [ "$(cat /proc/cmdline)" = kstack-bench-{last:02} ] || {{ echo "wrong top patch"; exit 1; }}
    kpatch_unload
  done
  [ -n "$pids" ] && kill $pids
done
echo "== done"
"#,
        last = PATCHES
    );
    let run = vm.run(&script).unwrap();
    assert!(
        run.status.success(),
        "{:?}\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let s = sections(&run.stdout);
    println!(
        "kstack sync of a {PATCHES}-patch stack vs kpatch-style loading, TCG guest, {ROUNDS} rounds (median)"
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>7}",
        "guest", "wall ms", "kernel ms", "own ms", "own %", "start ms", "kpatch ms", "ratio"
    );
    for mode in ["idle", "busy"] {
        let mut walls = Vec::new();
        let mut kernels = Vec::new();
        let mut owns = Vec::new();
        let mut starts = Vec::new();
        let mut kpatch = Vec::new();
        for round in 1..=ROUNDS {
            let k = &s[&format!("kstack-{mode}-{round}")];
            let wall = wall_ms(k);
            let json: serde_json::Value =
                serde_json::from_str(k.lines().nth(1).expect("the JSON line")).unwrap();
            walls.push(wall);
            kernels.push(json["kernel_ms"].as_f64().unwrap());
            let own = json["kstack_ms"].as_f64().unwrap();
            owns.push(own);
            starts.push(wall - json["kernel_ms"].as_f64().unwrap() - own);
            kpatch.push(wall_ms(&s[&format!("kpatch-{mode}-{round}")]));
        }
        let (wall, kernel, own, start, kp) = (
            median(walls),
            median(kernels),
            median(owns),
            median(starts),
            median(kpatch),
        );
        println!(
            "{mode:<6} {wall:>10.0} {kernel:>10.0} {own:>10.1} {:>9.1}% {start:>10.0} {kp:>12.0} {:>7.2}",
            100.0 * own / wall,
            wall / kp
        );
    }
    println!(
        "own = kstack's own work (identify, verify, plan, state); kernel = module loads and \
         transitions; start = the rest of the wall time (process start, config, output); \
         ratio = kstack wall / kpatch-style wall"
    );
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
