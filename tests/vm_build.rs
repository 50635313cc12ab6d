//! The builder end to end: every example patch of `examples/patches/` is built from
//! its diff with `kstack commit`, stacked, synced in the VM on the real kernel,
//! checked there with its own check line, and reverted (the checks then fail).
//! Building must never modify the shared prepared source tree.

use kstack_tests::{CliStore, example_patch, sandbox, sections};

#[test]
fn example_patches_build_apply_check_and_revert() {
    kstack_tests::scenarios::example_patches_build_apply_check_and_revert();
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
