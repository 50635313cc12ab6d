//! Benchmark: the cost of run-pre matching. The example patches are built into one
//! stack; in an idle VM, `kstack sync --json` reports how long proving their
//! functions against /proc/kcore took inside the sync (its `run_pre.ms`: reading
//! kallsyms and kcore included), median of five syncs; on the host, `kstack verify
//! --image` of the stack is timed as a whole process (decompressing the image
//! included). The matcher over the whole kernel is `runpre_sweep`.
//!
//! Run: `cargo bench -p kstack-tests --bench runpre` (after `cargo xtask setup`).

// A benchmark driver: a failed unwrap is a failed run, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use kstack_tests::{CliStore, kernel, kstack_cli, sandbox, sections};

const ROUNDS: usize = 5;

fn main() {
    let patches = kstack_tests::example_patches();
    let store = CliStore::new();
    for p in &patches {
        store.commit_diff("bench", p);
    }

    // Offline, on the host.
    let config = store.dir.path().join("host.toml");
    std::fs::write(
        &config,
        store.config(Some("bench"), None, "15s").replace(
            kstack_tests::stack::GUEST_STORE,
            &store.store.display().to_string(),
        ),
    )
    .unwrap();
    let mut offline = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        kstack_tests::run_ok(
            kstack_cli()
                .arg("--config")
                .arg(&config)
                .args(["verify", "bench", "--image"])
                .arg(kernel().vmlinuz()),
        );
        offline.push(started.elapsed().as_secs_f64() * 1e3);
    }

    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[
            ("bench", store.config(Some("bench"), None, "15s")),
            ("none", store.config(None, None, "15s")),
        ],
    );
    let mut script = String::from("export KSTACK_STATE_DIR=/var/lib/kstack\n");
    for round in 0..ROUNDS {
        script.push_str(&format!(
            "echo '== sync{round}'; kstack --config /etc/kstack/bench.toml --json sync\n\
             kstack --config /etc/kstack/none.toml sync >/dev/null\n"
        ));
    }
    let run = vm.run(&script).unwrap();
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    let mut in_sync = Vec::new();
    let mut functions = 0;
    for round in 0..ROUNDS {
        let v: serde_json::Value = serde_json::from_str(s[&format!("sync{round}")].trim()).unwrap();
        in_sync.push(v["run_pre"]["ms"].as_f64().unwrap());
        functions = v["run_pre"]["matched"].as_u64().unwrap();
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let sync_ms = median(in_sync);
    let offline_ms = median(offline);
    println!(
        "run-pre matching of a {}-patch stack ({functions} functions), median of {ROUNDS}",
        patches.len()
    );
    println!(
        "  in sync, idle TCG guest (kallsyms + kcore + matching): {sync_ms:.1} ms, {:.1} ms per function",
        sync_ms / functions as f64
    );
    println!(
        "  kstack verify --image on the host (whole process, image decompression included): {offline_ms:.0} ms"
    );
}
