//! `kstack try --config FILE`: the declared stack is synced inside the VM before the
//! command runs, and `status` is shown.

use std::process::Command;

use kstack_tests::build_test_module;
use kstack_tests::stack::StackFixture;

#[test]
fn try_with_a_config_syncs_the_stack_then_runs_the_command() {
    let fx = StackFixture::new();
    fx.commit("prod", "a", &build_test_module("kstack_test_a"));
    fx.commit("prod", "c", &build_test_module("kstack_test_c"));
    let config = fx.dir.path().join("kstack.toml");
    // The config names the store as the host sees it; try copies it into the guest.
    let text = fx.config("prod", None, "10s").replace(
        kstack_tests::stack::GUEST_STORE,
        &fx.store.path().display().to_string(),
    );
    std::fs::write(&config, text).unwrap();

    let kstack = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{}` first", kstack_tests::SETUP));
    let out = Command::new(kstack)
        .arg("--config")
        .arg(&config)
        // The kernel the stack is pinned to (the test kernel, see KSTACK_TEST_KERNEL).
        .args(["try", "--kernel"])
        .arg(kstack_tests::kernel().vmlinuz())
        .args(["--", "cat /proc/cmdline /proc/loadavg"])
        .env(
            "KSTACK_CACHE",
            kstack_engine::builder::assets::Cache::from_env().root(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The command saw the patched kernel.
    assert_eq!(
        stdout, "kstack-test-a\nkstack-test-c\n",
        "stderr:\n{stderr}"
    );
    // And the sync and status inside were shown.
    assert!(stderr.contains("$ kstack sync"), "{stderr}");
    assert!(stderr.contains("now on generation 1"), "{stderr}");
    assert!(
        stderr.contains("kstack_test_c [enabled] patch c"),
        "{stderr}"
    );
    assert!(stderr.contains("vmlinux:loadavg_proc_show"), "{stderr}");
}
