//! The builder end to end: every example patch of `examples/patches/` is built from
//! its diff with `kstack commit`, stacked, synced in the VM on the real kernel,
//! checked there with its own check line, and reverted (the checks then fail).
//! Building must never modify the shared prepared source tree.

use std::path::Path;
use std::time::SystemTime;

use kstack_tests::{CliStore, example_patch, kernel, sandbox, sections};

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

#[test]
fn example_patches_build_apply_check_and_revert() {
    let patches = kstack_tests::example_patches();
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
        let check = std::fs::read_to_string(patch.with_extension("check")).unwrap();
        let name = report["patch"]["name"].as_str().unwrap().to_owned();
        checks.push((name, check.trim().to_owned()));
    }
    assert_eq!(
        before,
        snapshot(&tree, &touched),
        "building changed the shared tree"
    );

    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[
            ("examples", store.config(Some("examples"), None, "15s")),
            ("none", store.config(None, None, "15s")),
        ],
    );
    let mut script = String::from(
        "export KSTACK_STATE_DIR=/var/lib/kstack\n\
         echo '== sync'; kstack --config /etc/kstack/examples.toml sync 2>&1; echo \"rc=$?\"\n",
    );
    for (name, check) in &checks {
        script.push_str(&format!(
            "echo '== on {name}'; ( {check} ) && echo yes || echo no\n"
        ));
    }
    script.push_str(
        "echo '== revert'; kstack --config /etc/kstack/none.toml sync 2>&1; echo \"rc=$?\"\n\
         echo '== after'; ls /sys/kernel/livepatch | wc -w\n",
    );
    for (name, check) in &checks {
        script.push_str(&format!(
            "echo '== off {name}'; ( {check} ) && echo yes || echo no\n"
        ));
    }
    let run = vm.run(&script).unwrap();
    eprintln!("{}\n{}", run.stdout, run.stderr);
    let s = sections(&run.stdout);
    assert!(s["sync"].contains("rc=0"), "{}", s["sync"]);
    // Run-pre matching proved every replaced function before anything was loaded.
    assert!(
        s["sync"].contains(&format!(
            "run-pre: {} replaced function(s) matched the running code",
            checks.len()
        )),
        "{}",
        s["sync"]
    );
    for (name, _) in &checks {
        assert_eq!(s[&format!("on {name}")].trim(), "yes", "{name} not active");
        assert_eq!(
            s[&format!("off {name}")].trim(),
            "no",
            "{name} still active"
        );
    }
    assert!(s["revert"].contains("rc=0"), "{}", s["revert"]);
    assert_eq!(s["after"].trim(), "0");
    assert!(!run.console.contains("Oops"), "{}", run.console);
}

/// A patch on top of another patch of the same function: it is built on the source
/// with the first applied, and run-pre leaves its function to the first's proof (the
/// running kernel still has the original code at the function's address).
#[test]
fn a_patch_on_an_already_patched_function_builds_proves_and_applies() {
    let store = CliStore::new();
    let first = store.commit_diff("same", &example_patch("0001-proc-version-banner.diff"));
    let second = store.dir.path().join("banner-v2.diff");
    std::fs::write(
        &second,
        "proc: second version of the banner\n\n\
         --- a/fs/proc/version.c\n+++ b/fs/proc/version.c\n\
         @@ -14,7 +14,7 @@\n \t\tutsname()->release,\n \t\tutsname()->version);\n \
         \t/* Say that the running code is not the code the kernel booted with. */\n\
         -\tseq_puts(m, \"live-patched: proc-version-banner\\n\");\n\
         +\tseq_puts(m, \"live-patched: proc-version-banner v2\\n\");\n \treturn 0;\n }\n \n",
    )
    .unwrap();
    store.commit_diff("same", &second);
    let mut vm = sandbox();
    store.install(
        &mut vm,
        &[
            (
                "first",
                store.config(Some("same"), first["commit"].as_str(), "15s"),
            ),
            ("both", store.config(Some("same"), None, "15s")),
        ],
    );
    let run = vm
        .run(
            "export KSTACK_STATE_DIR=/var/lib/kstack\n\
             kstack --config /etc/kstack/first.toml sync >/dev/null 2>&1; echo \"== first\"; grep live-patched /proc/version\n\
             echo '== both'; kstack --config /etc/kstack/both.toml sync 2>&1; echo \"rc=$?\"\n\
             echo '== after'; grep live-patched /proc/version\n",
        )
        .unwrap();
    let s = sections(&run.stdout);
    assert_eq!(s["first"].trim(), "live-patched: proc-version-banner");
    assert!(s["both"].contains("rc=0"), "{}", s["both"]);
    assert_eq!(s["after"].trim(), "live-patched: proc-version-banner v2");
}
